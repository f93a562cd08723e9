package results

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/perf/benchfmt"
)

// TestWriteBenchFormat checks what benchstat sees: the machine-kind
// configuration, unit directions, one line per trial with the sub-name
// keys, and per-run details kept out of the configuration (they would
// split benchstat's tables between two runs).
func TestWriteBenchFormat(t *testing.T) {
	run := sampleRun()
	run.Trials[0].Workload.CPU = &CPUUsage{PerConnectionUS: 287.5}
	run.Trials[1].Services, run.Trials[1].Endpoints = 1000, 12
	var buf bytes.Buffer
	require.NoError(t, WriteBenchFormat(&buf, run))
	out := buf.String()

	assert.Contains(t, out, "# svclab run 20260301-101500-a1b2 (started 2026-03-01T10:15:00Z), git abc1234, host bench-1\n")
	assert.Contains(t, out, "# datapath socketlb: prog=cgroup/connect4\n")
	assert.Contains(t, out, "# datapath ipvs: skipped: kernel module ip_vs not available\n")
	assert.Contains(t, out, "\ncpu: AMD EPYC 7B13\n")
	assert.Contains(t, out, "\nkernel: 6.1.0-18-amd64\n")
	assert.Contains(t, out, "\nsysctl-net.ipv4.ip_local_port_range: 1024 65535\n", "tab folded")
	assert.NotContains(t, out, "\nrun:")
	assert.Contains(t, out, "Unit conn/s better=higher\n")
	assert.Contains(t, out, "Unit p90-µs better=lower\n")
	// direct, rep 0, conc 1: 30000×0.12×0.97 = 3492 conn/s over 10 s.
	assert.Contains(t, out, "\nBenchmarkSvc/dp=direct/conc=1-2 34920 286368.8 ns/conn 3492 conn/s ")
	assert.Contains(t, out, " 287.5 cpu-µs/conn\n")
	assert.Contains(t, out, "\nBenchmarkSvc/dp=socketlb/conc=1/svcs=1000/eps=12-2 ")
	assert.Contains(t, out, "\nBenchmarkGenerator/conc=64-2 520000 ")

	// benchfmt's own reader parses every line: nothing is a syntax error.
	r := benchfmt.NewReader(strings.NewReader(out), "bench.txt")
	n := 0
	for r.Scan() {
		switch rec := r.Result().(type) {
		case *benchfmt.SyntaxError:
			t.Errorf("syntax error: %v", rec)
		case *benchfmt.Result:
			n++
			assert.Equal(t, "linux", rec.GetConfig("goos"))
			v, ok := rec.Value("sec/conn")
			assert.True(t, ok, "ns/conn is tidied to sec/conn")
			assert.Greater(t, v, 0.0)
		}
	}
	require.NoError(t, r.Err())
	assert.Equal(t, len(run.Trials)+1, n, "one line per trial plus the generator")

	assert.Error(t, WriteBenchFormat(&buf, nil))
	bad := sampleRun()
	bad.Trials[0].Datapath = "a/b"
	assert.ErrorContains(t, WriteBenchFormat(&bytes.Buffer{}, bad), `datapath name "a/b"`)
}

// TestReadBenchFormat checks the round trip compare relies on: the same
// trials (datapath, point, repetition, the compared figures) and so the
// same summary medians.
func TestReadBenchFormat(t *testing.T) {
	run := sampleRun()
	for i := range run.Trials {
		run.Trials[i].Workload.CPU = &CPUUsage{PerConnectionUS: 200 + float64(i)}
	}
	// A whole group at another scale point (repetitions are numbered in
	// line order per benchmark name, so a group must be complete).
	for i := range run.Trials {
		if tr := &run.Trials[i]; tr.Datapath == "iptables" && tr.Concurrency == 64 {
			tr.Services, tr.Endpoints = 10, 3
			tr.ApplySeconds, tr.ApplyChangeSeconds = 0.25+float64(i), 0.0125
		}
	}
	var buf bytes.Buffer
	require.NoError(t, WriteBenchFormat(&buf, run))
	got, err := ReadBenchFormat(&buf, "bench.txt")
	require.NoError(t, err)

	require.Len(t, got.Trials, len(run.Trials))
	for i, want := range run.Trials {
		g := got.Trials[i]
		assert.Equal(t, [5]any{want.Datapath, want.Concurrency, want.Repetition, want.Services, want.Endpoints},
			[5]any{g.Datapath, g.Concurrency, g.Repetition, g.Services, g.Endpoints}, "trial %d", i)
		assert.InDelta(t, want.Workload.QPS, g.Workload.QPS, 0.05)
		assert.InDelta(t, want.Workload.Latency.P90, g.Workload.Latency.P90, 0.005)
		require.NotNil(t, g.Workload.CPU)
		assert.InDelta(t, want.Workload.CPU.PerConnectionUS, g.Workload.CPU.PerConnectionUS, 0.0005)
		assert.Equal(t, want.Workload.Connections, g.Workload.Connections)
		// Apply times travel with scale points, so a CI gate can compare
		// them; outside a sweep they are not written.
		wantApply := [2]float64{want.ApplySeconds, want.ApplyChangeSeconds}
		if want.Services == 0 {
			wantApply = [2]float64{}
		}
		assert.Equal(t, wantApply, [2]float64{g.ApplySeconds, g.ApplyChangeSeconds}, "trial %d", i)
	}
	assert.Equal(t, Env{Kernel: "6.1.0-18-amd64", CPUModel: "AMD EPYC 7B13", CPUs: 2, GoVersion: "go1.26.0"}, got.Env)
	require.NotNil(t, got.Generator)
	assert.Equal(t, 52000.0, got.Generator.Workload.QPS)
	require.Len(t, got.Summary, len(Summarize(run.Trials)))
	for i, s := range Summarize(run.Trials) {
		assert.InDelta(t, s.QPS.Median, got.Summary[i].QPS.Median, 0.05)
	}
}

// TestReadBenchFormatErrors checks malformed input is refused with the line
// and the part at fault, and that other benchmarks' lines are skipped.
func TestReadBenchFormatErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no svclab lines", "BenchmarkOther 10 5 ns/op\n", "no svclab benchmark lines"},
		{"positional part", "BenchmarkSvc/dp=x/fast-2 10 5 conn/s\n", `part "/fast" is not key=value`},
		{"bad number", "BenchmarkSvc/dp=x/conc=eight-2 10 5 conn/s\n", `conc="eight" is not an integer`},
		{"no qps", "BenchmarkSvc/dp=x/conc=8-2 10 5 p90-µs\n", "has no conn/s value"},
		{"no datapath", "BenchmarkSvc/conc=8-2 10 5 conn/s\n", "has no dp="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadBenchFormat(strings.NewReader(tc.in), "x.txt")
			assert.ErrorContains(t, err, tc.want)
		})
	}
	got, err := ReadBenchFormat(strings.NewReader("BenchmarkOther 10 5 ns/op\nBenchmarkSvc/dp=x/conc=8-2 10 5 conn/s\n"), "x.txt")
	require.NoError(t, err)
	assert.Len(t, got.Trials, 1)
}

// TestBenchFormatOpenLoop checks open-loop trials are named by their load
// model and fraction, so benchstat and compare keep fractions apart, and
// that the names read back into the same groups.
func TestBenchFormatOpenLoop(t *testing.T) {
	run := sampleRun()
	for rep := range 3 {
		run.Trials = append(run.Trials,
			openTrial("direct", 0.8, rep, 1000, 990, 100, 10, 0),
			openTrial("direct", 0.5, rep, 600, 600, 60, 5, 0))
	}
	var buf bytes.Buffer
	require.NoError(t, WriteBenchFormat(&buf, run))
	assert.Contains(t, buf.String(), "BenchmarkSvc/dp=direct/conc=0/model=open/load=0.8-2 ")
	assert.Contains(t, buf.String(), "BenchmarkSvc/dp=direct/conc=0/model=open/load=0.5-2 ")

	got, err := ReadBenchFormat(&buf, "bench.txt")
	require.NoError(t, err)
	want := Summarize(run.Trials)
	require.Len(t, got.Summary, len(want))
	for i, s := range want {
		assert.Equal(t, [3]any{s.Datapath, s.Model, s.LoadFraction},
			[3]any{got.Summary[i].Datapath, got.Summary[i].Model, got.Summary[i].LoadFraction})
		assert.InDelta(t, s.QPS.Median, got.Summary[i].QPS.Median, 0.05)
		assert.Equal(t, s.Repetitions, got.Summary[i].Repetitions)
	}

	_, err = ReadBenchFormat(strings.NewReader("BenchmarkSvc/dp=direct/conc=0/model=open/load=x-2 1 1 ns/conn 1 conn/s\n"), "bench.txt")
	assert.ErrorContains(t, err, `load="x" is not a number`)
}
