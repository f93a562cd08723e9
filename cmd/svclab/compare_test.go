package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/results"
)

// compareRun is a run of direct and iptables at concurrency 8 with six
// repetitions; iptablesQPS sets iptables' level (direct stays at 10000).
func compareRun(id string, iptablesQPS float64) *results.Run {
	run := &results.Run{SchemaVersion: results.SchemaVersion, ID: id, Env: results.Env{Kernel: "6.18", CPUModel: "x", CPUs: 2}}
	for rep := range 6 {
		jitter := 1 + 0.01*float64(rep%3)
		for _, dp := range []struct {
			name string
			qps  float64
		}{{"direct", 10000}, {"iptables", iptablesQPS}} {
			run.Trials = append(run.Trials, results.Trial{Datapath: dp.name, Concurrency: 8, Repetition: rep, Order: len(run.Trials),
				Workload: results.Workload{DurationSeconds: 2, QPS: dp.qps * jitter, Connections: int64(2 * dp.qps * jitter),
					Latency: results.Latency{P50: 500, P90: 900, P99: 2000}}})
		}
	}
	run.Summary = results.Summarize(run.Trials)
	return run
}

// writeRun stores run as <dir>/<name>/results.json and bench.txt and
// returns the run directory.
func writeRun(t *testing.T, dir, name string, run *results.Run) string {
	t.Helper()
	d := filepath.Join(dir, name)
	require.NoError(t, os.MkdirAll(d, 0o755))
	require.NoError(t, run.Write(filepath.Join(d, "results.json")))
	var b bytes.Buffer
	require.NoError(t, results.WriteBenchFormat(&b, run))
	require.NoError(t, os.WriteFile(filepath.Join(d, "bench.txt"), b.Bytes(), 0o644))
	return d
}

// TestCompareCommand checks the exit status contract the CI gate relies
// on (0 pass, 1 regression, 2 bad input), both input formats, and flags
// after the positional arguments.
func TestCompareCommand(t *testing.T) {
	dir := t.TempDir()
	base := writeRun(t, dir, "base", compareRun("base", 8000))
	same := writeRun(t, dir, "same", compareRun("same", 8000))
	slow := writeRun(t, dir, "slow", compareRun("slow", 6000))
	onlyBench := filepath.Join(dir, "bench-only")
	require.NoError(t, os.MkdirAll(onlyBench, 0o755))
	b, err := os.ReadFile(filepath.Join(slow, "bench.txt"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(onlyBench, "bench.txt"), b, 0o644))
	badTh := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(badTh, []byte("metrics:\n  p90: fifteen\n"), 0o644))
	// A thresholds file that gates the QPS ratio the slow run loses
	// (ci/thresholds.yaml gates only the cost trials' CPU share).
	qpsTh := filepath.Join(dir, "qps.yaml")
	require.NoError(t, os.WriteFile(qpsTh, []byte("gate: ratio\nmetrics:\n  qps: 5%\n"), 0o644))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.MkdirAll(empty, 0o755))

	for _, tc := range []struct {
		name       string
		args       []string
		wantStatus int
		wantOut    []string
		wantErr    []string
	}{
		{"same figures pass", []string{base, same}, 0, []string{"PASS"}, nil},
		{"results.json files", []string{filepath.Join(base, "results.json"), filepath.Join(same, "results.json")}, 0, []string{"PASS"}, nil},
		{"regression fails", []string{base, slow}, 1, []string{"FAIL: 1 regression(s):", "iptables conc=8 qps×direct: 0.800 → 0.600 (-25.0%"}, nil},
		{"bench.txt against results.json", []string{filepath.Join(base, "results.json"), onlyBench}, 1, []string{"iptables conc=8 qps×direct"}, nil},
		{"thresholds flag after the arguments", []string{base, slow, "--thresholds", qpsTh}, 1, []string{"FAIL", "qps -5%"}, nil},
		// The committed thresholds gate only the cost trials' CPU share,
		// which these runs lack: tested nothing, so never a pass.
		{"nothing gated in both runs", []string{base, slow, "--thresholds", "../../ci/thresholds.yaml"}, 2,
			[]string{"qps off", "datapath_cpu_share +", "NOT COMPARED: no gated figure (datapath share of the run's CPU) was measured in both runs"}, []string{"no gated figure measured in both runs"}},
		{"bad thresholds file", []string{"--thresholds", badTh, base, slow}, 2, nil, []string{"thresholds " + badTh + ": metrics.p90:", "not a percentage"}},
		{"missing thresholds file", []string{"--thresholds", filepath.Join(dir, "nope.yaml"), base, slow}, 2, nil, []string{"nope.yaml"}},
		{"one argument", []string{base}, 2, nil, []string{"want OLD and NEW, got 1"}},
		{"missing run", []string{base, filepath.Join(dir, "nope")}, 2, nil, []string{"NEW:", "nope"}},
		{"directory without results", []string{empty, base}, 2, nil, []string{"OLD:", "neither results.json nor bench.txt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := run(append([]string{"compare"}, tc.args...), &stdout, &stderr)
			assert.Equal(t, tc.wantStatus, status, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			for _, s := range tc.wantOut {
				assert.Contains(t, stdout.String(), s)
			}
			for _, s := range tc.wantErr {
				assert.Contains(t, stderr.String(), s)
			}
		})
	}
}

// A file that is not a run is refused, naming the file and what it is not.
func TestCompareRefusesWhatIsNotARun(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content, want string
	}{
		{"other JSON object", `{"foo": 1}`, "is not a results.json: it is a JSON object without schema_version"},
		{"JSON array", `[1, 2]`, "is not a results.json: its JSON is not an object"},
		{"broken JSON", `{"schema_version": `, "is not a results.json: invalid JSON"},
		{"scenario as JSON", `{"name": "default", "topology": {}}`, "it is a scenario file"},
		{"binary", "\x00\x01\xff", "is not a results.json or bench.txt: it is binary"},
		{"empty", "", "is empty"},
		{"other benchmarks", "BenchmarkOther 10 5 ns/op\n", "is not a svclab bench.txt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			require.NoError(t, os.WriteFile(p, []byte(tt.content), 0o644))
			var stdout, stderr bytes.Buffer
			code := run([]string{"compare", p, p}, &stdout, &stderr)
			assert.Equal(t, compareBadInput, code)
			assert.Contains(t, stderr.String(), p+" ")
			assert.Contains(t, stderr.String(), tt.want)
			assert.NotContains(t, stderr.String(), "cannot unmarshal", "no Go internals")
		})
	}
}

// Two runs that do not measure the same thing never PASS (issue 15: a TCP
// run against a UDP one printed "+176 %" and passed, and two runs with
// nothing in common passed): the CI gate would let anything through.
func TestCompareUnrelatedRunsDoNotPass(t *testing.T) {
	dir := t.TempDir()
	withScenario := func(id, scenario string) *results.Run {
		r := compareRun(id, 8000)
		r.Scenario = []byte(scenario)
		return r
	}
	gate := `{"name":"ci-gate","service":{"protocol":"TCP"},"workload":{}}`
	ref := writeRun(t, dir, "ref", withScenario("ref", gate))
	otherScenario := writeRun(t, dir, "scale", withScenario("scale", `{"name":"scale","service":{"protocol":"TCP"},"workload":{}}`))
	udp := writeRun(t, dir, "udp", withScenario("udp", `{"name":"ci-gate","service":{"protocol":"UDP"},"workload":{}}`))
	otherMachine := withScenario("xeon", gate)
	otherMachine.Env.CPUModel, otherMachine.Env.CPUs = "Xeon", 64
	xeon := writeRun(t, dir, "xeon", otherMachine)
	// Same scenario and machine, but no datapath at a common point: the
	// reference measured concurrency 8, this run socketlb at 32 only.
	disjoint := withScenario("disjoint", gate)
	for i := range disjoint.Trials {
		disjoint.Trials[i].Datapath = map[string]string{"direct": "socketlb", "iptables": "ipvs"}[disjoint.Trials[i].Datapath]
		disjoint.Trials[i].Concurrency = 32
	}
	disjoint.Summary = results.Summarize(disjoint.Trials)
	nothingShared := writeRun(t, dir, "disjoint", disjoint)

	for _, tc := range []struct {
		name, new, wantErr string
	}{
		{"other scenario", otherScenario, `scenario "ci-gate" vs "scale"`},
		{"other protocol", udp, `protocol "TCP" vs "UDP"`},
		{"other machine", xeon, "machine x ×2 vs Xeon ×64"},
		{"nothing in common", nothingShared, "nothing measured in both runs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range [][]string{{ref, tc.new}, {"--thresholds", "../../ci/thresholds.yaml", ref, tc.new}} {
				var stdout, stderr bytes.Buffer
				status := run(append([]string{"compare"}, args...), &stdout, &stderr)
				assert.Equal(t, compareBadInput, status, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
				assert.NotContains(t, stdout.String(), "PASS")
				assert.Contains(t, stderr.String(), tc.wantErr)
			}
		})
	}
}
