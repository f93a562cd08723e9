package results

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteTable checks the rows a reader looks for, the notes on what was
// not measured, and that the table fits a 120-column terminal.
func TestWriteTable(t *testing.T) {
	run := sampleRun()
	withoutSummary := sampleRun()
	withoutSummary.Summary = nil
	for _, tc := range []struct {
		name string
		run  *Run
	}{
		{"with summary", run},
		{"summary computed from trials", withoutSummary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, WriteTable(&buf, tc.run))
			out := buf.String()
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			for _, l := range lines {
				assert.LessOrEqual(t, utf8.RuneCountInString(l), 120, "line too wide: %q", l)
			}
			header := strings.Fields(lines[0])
			assert.Equal(t, []string{"DATAPATH", "CONC", "REPS", "QPS"}, header[:4])

			rows := map[string][]string{}
			for _, l := range lines[1 : 1+len(run.Summary)] {
				f := strings.Fields(l)
				rows[f[0]+"/"+f[1]] = f
			}
			require.Len(t, rows, 9, "one row per datapath and concurrency")
			// socketlb at 64: median 28500 over 27645..29355 (±3%: three
			// repetitions give no finite CI, so half the range), 0.95 of
			// direct.
			assert.Equal(t, []string{"socketlb", "64", "3", "28500", "(±3%)", "0.95"}, rows["socketlb/64"][:6])
			assert.Equal(t, "0.70", rows["iptables/8"][5])
			assert.Equal(t, "1.00", rows["direct/1"][5])

			assert.Contains(t, out, "skipped ipvs: kernel module ip_vs not available")
			assert.Contains(t, out, "generator ceiling (no datapath, loopback): c=64 52000 conn/s (52000–52000), p90 31.0 µs")
			assert.NotContains(t, out, "warning", "no datapath is near the generator ceiling")
		})
	}
}

// TestWriteTableNotes checks the lines that keep a reader from
// misreading the table: a datapath with no rows and a generator-bound result.
func TestWriteTableNotes(t *testing.T) {
	run := sampleRun()
	run.Datapaths = append(run.Datapaths, DatapathInfo{Name: "nftables"})
	// Direct's repetitions at 64 span 29100–30900: a ceiling at 30500 is
	// inside that range, so direct may have measured the generator; socketlb
	// (27645–29355) stays below it.
	run.Generator.Workload.QPS = 30500

	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, run))
	out := buf.String()
	assert.Contains(t, out, "no trials for nftables")
	assert.Contains(t, out, "warning: direct at concurrency 64 reaches the generator's ceiling (QPS up to 30900, ceiling from 30500)")
	assert.NotContains(t, out, "warning: socketlb")
	assert.NotContains(t, out, "warning: iptables")
	assert.NotContains(t, out, "other svclab runs")

	// A loopback ceiling below all of direct's repetitions bounds nothing:
	// said once, and no datapath is flagged against it.
	run.Generator.Workload.QPS = 20000
	buf.Reset()
	require.NoError(t, WriteTable(&buf, run))
	assert.Contains(t, buf.String(), "at concurrency 64 direct through the topology (from 29100 conn/s) beats the loopback ceiling (up to 20000)")
	assert.NotContains(t, buf.String(), "warning: direct")
	assert.NotContains(t, buf.String(), "warning: socketlb")
	run.Generator.Workload.QPS = 30500

	// Another run on the machine during trials is said, with its id.
	run.ConcurrentRuns = []string{"0badf00d"}
	buf.Reset()
	require.NoError(t, WriteTable(&buf, run))
	assert.Contains(t, buf.String(), "warning: other svclab runs were live during trials (0badf00d)")

	// With the ceiling measured at every level and repeated, its own
	// interval is what a datapath's is held against.
	run.Generators = []Trial{genTrial(8, 25000), genTrial(8, 26000), genTrial(8, 27000), genTrial(64, 40000), genTrial(64, 41000), genTrial(64, 42000)}
	buf.Reset()
	require.NoError(t, WriteTable(&buf, run))
	out = buf.String()
	assert.Contains(t, out, "generator ceiling (no datapath, loopback): c=8 26000 conn/s (25000–27000)")
	assert.Contains(t, out, "c=64 41000 conn/s (40000–42000)")
	assert.NotContains(t, out, "may be the bottleneck", "no datapath reaches 25000 at 8 or 40000 at 64")

	assert.Error(t, WriteTable(&buf, nil))
}

func genTrial(conc int, qps float64) Trial {
	return Trial{Datapath: "generator-loopback", Concurrency: conc, Workload: Workload{QPS: qps, Latency: Latency{P90: 31}}}
}

// TestWriteTableEmpty checks a run without trials prints its header and
// notes rather than failing: the skipped reasons are then all there is.
func TestWriteTableEmpty(t *testing.T) {
	run := &Run{Datapaths: []DatapathInfo{{Name: "ipvs", Skipped: "no ip_vs"}}}
	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, run))
	assert.Contains(t, buf.String(), "DATAPATH")
	assert.Contains(t, buf.String(), "skipped ipvs: no ip_vs")
}

// TestWriteTableCIAndCPU checks the columns a CI-grade run adds: a finite
// 95% interval with six repetitions, CPU per connection and its ratio,
// SYN retransmits; and that a one-point scale is a note, not columns.
func TestWriteTableCIAndCPU(t *testing.T) {
	var trials []Trial
	for rep := range 6 {
		for _, dp := range []string{"direct", "iptables"} {
			qps := map[string]float64{"direct": 10000, "iptables": 8000}[dp] * (1 + 0.01*float64(rep))
			tr := trial(dp, 8, rep, qps, 50, 80, 200, 0.01, 0)
			tr.Services, tr.Endpoints = 1, 12
			tr.Workload.CPU = &CPUUsage{PerConnectionUS: map[string]float64{"direct": 200, "iptables": 250}[dp]}
			tr.Workload.SynRetrans = int64(rep % 2)
			trials = append(trials, tr)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, &Run{Trials: trials}))
	out := buf.String()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for _, l := range lines {
		assert.LessOrEqual(t, utf8.RuneCountInString(l), 120, "line too wide: %q", l)
	}
	assert.Equal(t, []string{"DATAPATH", "CONC", "REPS", "QPS", "±", "QPS×DIR", "P50", "µs"}, strings.Fields(lines[0])[:8])
	ipt := strings.Fields(lines[2])
	// Six values 8000..8400 step 80: the 95% interval of the median is
	// min..max (order statistics 1 and 6), i.e. ±2.4% of 8200.
	assert.Equal(t, []string{"iptables", "8", "6", "8200", "±2%", "0.80"}, ipt[:6])
	assert.Contains(t, lines[0], "CPU µs/C")
	assert.Equal(t, []string{"250", "1.25", "0", "3"}, ipt[10:14], "CPU, CPU×DIR, errors, SYN retransmits")
	assert.Contains(t, out, "scale: 1 service(s), 12 endpoint(s) each")
	assert.NotContains(t, out, "(±x%)", "no range fallback when every row has a CI")
}

// TestWriteTableSweep checks a scale sweep gets SVCS and EPS columns.
func TestWriteTableSweep(t *testing.T) {
	var trials []Trial
	for _, svcs := range []int{1, 1000} {
		for _, dp := range []string{"direct", "iptables"} {
			tr := trial(dp, 8, 0, 1000, 50, 80, 200, 0.01, 0)
			tr.Services, tr.Endpoints = svcs, 12
			trials = append(trials, tr)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, &Run{Trials: trials}))
	lines := strings.Split(buf.String(), "\n")
	assert.Equal(t, []string{"DATAPATH", "SVCS", "EPS", "CONC"}, strings.Fields(lines[0])[:4])
	assert.Equal(t, []string{"direct", "1", "12", "8"}, strings.Fields(lines[1])[:4])
	assert.Equal(t, []string{"direct", "1000", "12", "8"}, strings.Fields(lines[2])[:4])
	assert.NotContains(t, buf.String(), "scale:")
}

// TestWriteTableOpenLoop checks the open-loop block that follows the
// closed-loop rows: one row per datapath and load fraction with offered and
// achieved rates, latency, P99 against direct, errors with overload and the
// start lag; and that the closed-loop rows are unchanged by it.
func TestWriteTableOpenLoop(t *testing.T) {
	closedOnly := sampleRun()
	var want bytes.Buffer
	require.NoError(t, WriteTable(&want, closedOnly))

	run := sampleRun()
	for rep := range 3 {
		run.Trials = append(run.Trials,
			openTrial("direct", 0.8, rep, 22800, 22790, 120, 30, 0),
			openTrial("socketlb", 0.8, rep, 22800, 22750, 150+float64(rep), 35, 0),
			openTrial("iptables", 0.8, rep, 22800, 20100, 900, 400, 700))
	}
	run.Summary = Summarize(run.Trials)
	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, run))
	out := buf.String()
	for _, l := range strings.Split(out, "\n") {
		assert.LessOrEqual(t, utf8.RuneCountInString(l), 120, "line too wide: %q", l)
	}

	closedPart, openPart, ok := strings.Cut(out, "\nopen loop")
	require.True(t, ok, "open loop block missing:\n%s", out)
	// The notes begin with the workload line.
	wantTable, _, _ := strings.Cut(want.String(), "workload:")
	// The noise block follows the open-loop one.
	wantTable, _, _ = strings.Cut(wantTable, "\nnoise:")
	assert.True(t, strings.HasPrefix(closedPart, strings.TrimSuffix(wantTable, "\n")),
		"closed-loop rows unchanged:\n%s\nwant:\n%s", closedPart, wantTable)

	lines := strings.Split(openPart, "\n")
	require.GreaterOrEqual(t, len(lines), 5)
	assert.Equal(t, []string{"DATAPATH", "LOAD", "REPS", "OFFERED", "ACHIEVED", "P50", "µs", "P90", "µs", "P99", "µs",
		"P99×DIR", "ERRORS", "OVERLOAD", "LAG", "P99", "µs"}, strings.Fields(lines[1]))
	rows := map[string][]string{}
	for _, l := range lines[2:5] {
		f := strings.Fields(l)
		rows[f[0]] = f
	}
	// iptables: achieved 20100 of 22800 offered, p99 900 µs = 7.5× direct,
	// 3 × (700 overload + 1 timeout) errors, start lag 400 µs.
	assert.Equal(t, []string{"iptables", "0.8", "3", "22800", "20100", "300", "450", "900", "7.50", "2103", "2100", "400"}, rows["iptables"])
	assert.Equal(t, "1.00", rows["direct"][8])
	assert.Equal(t, "151", rows["socketlb"][7], "median p99 of 150, 151, 152")
	// Notes (skipped datapaths, the generator ceiling) still follow.
	assert.Contains(t, openPart, "skipped ipvs: kernel module ip_vs not available")
	assert.Contains(t, openPart, "generator ceiling (no datapath, loopback)")
}

// TestWriteTableClosedLoopOnly checks a run without open-loop trials has no
// open-loop block.
func TestWriteTableClosedLoopOnly(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, sampleRun()))
	assert.NotContains(t, buf.String(), "open loop")
}

// TestSummariesOfClosedLoopOnly checks what the charts plot: the
// closed-loop summaries only (an open-loop row at concurrency 0 would be a
// bar at a concurrency no one measured).
func TestSummariesOfClosedLoopOnly(t *testing.T) {
	run := sampleRun()
	run.Trials = append(run.Trials, openTrial("direct", 0.8, 0, 100, 100, 50, 5, 0))
	for _, withSummary := range []bool{true, false} {
		run.Summary = nil
		if withSummary {
			run.Summary = Summarize(run.Trials)
		}
		sums := summariesOf(run)
		assert.Len(t, sums, 9, "summary precomputed: %v", withSummary)
		for _, s := range sums {
			assert.Empty(t, s.Model)
		}
		assert.Len(t, allSummariesOf(run), 10)
	}
}

// TestWriteTableScale checks the scale block of a two-sweep run: a row per
// datapath and scale point with the figures that grow with scale, the
// point a datapath did not reach, and the p90 growth over the services
// sweep, "not reached" for the datapath the apply timeout stopped.
func TestWriteTableScale(t *testing.T) {
	reachedAll := scaleRun()
	reachedAll.ScaleLimits = nil
	for _, tr := range scaleRun().Trials {
		if tr.Datapath == "direct" && tr.Services == 10000 {
			tr.Datapath = "iptables"
			tr.Workload.Latency.P90 *= 3 // iptables three times direct's p90 there
			reachedAll.Trials = append(reachedAll.Trials, tr)
		}
	}
	reachedAll.Summary = Summarize(reachedAll.Trials)
	drifted := scaleRun()
	for i := range drifted.Trials {
		if drifted.Trials[i].Services == 10000 {
			drifted.Trials[i].Workload.Latency.P90 *= 2
		}
	}
	drifted.Summary = Summarize(drifted.Trials)

	for _, tc := range []struct {
		name      string
		run       *Run
		wantLines []string
		wantNot   []string
	}{{
		name: "limited",
		run:  scaleRun(),
		wantLines: []string{
			"iptables: not reached at 10,000 services × 12 endpoints: apply did not finish within 1m0s; larger points not tried",
			"direct: connect p90 at 10,000 services vs 1: ×1.00",
			// 50+12,000/200 = 110 µs p50, p90 1.6× that: 176 vs 80.1 at 1×12.
			"iptables: connect p90 at 10,000 services vs 1: not reached (at 1,000: ×2.20 (×2.20 relative to direct's ×1.00))",
		},
	}, {
		// The machine slowed down by the time the sweep reached 10,000
		// services: direct's p90 doubled too, and the relative factor
		// takes the drift out.
		name: "drift",
		run:  drifted,
		wantLines: []string{
			"direct: connect p90 at 10,000 services vs 1: ×2.00",
			"socketlb: connect p90 at 10,000 services vs 1: ×2.00 (×1.00 relative to direct's ×2.00)",
		},
	}, {
		name: "every point reached",
		run:  reachedAll,
		wantLines: []string{
			"iptables: connect p90 at 10,000 services vs 1: ×2.40 (×2.40 relative to direct's ×1.00)", // 3 × 64 µs vs 80 µs
		},
		wantNot: []string{"not reached"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, WriteTable(&buf, tc.run))
			out := buf.String()
			_, block, ok := strings.Cut(out, "\nscale (")
			require.True(t, ok, "scale block missing:\n%s", out)
			lines := strings.Split(block, "\n")
			for _, l := range lines {
				assert.LessOrEqual(t, utf8.RuneCountInString(l), 120, "line too wide: %q", l)
			}
			assert.Equal(t, []string{"DATAPATH", "SVCS", "EPS", "QPS", "P50", "µs", "P90", "µs", "P99", "µs",
				"CPU", "µs/C", "APPLY", "s", "CHANGE", "s", "STATE", "OBJS"}, strings.Fields(lines[1]))
			rows := map[string][]string{}
			for _, l := range lines[2:] {
				f := strings.Fields(l)
				if len(f) == 11 {
					rows[f[0]+"/"+f[1]+"x"+f[2]] = f
				}
			}
			assert.Len(t, rows, len(tc.run.Summary), "one row per datapath and scale point")
			// iptables at 1,000×12: QPS 8e5/110, latency 110/176/330 µs,
			// CPU 2× p50, apply 0.05+12,000/4,000 s, a change a tenth
			// of it, 12,000 rules + 1,000 services.
			assert.Equal(t, []string{"iptables", "1000", "12", "7273", "110", "176", "330", "220", "3.050", "0.305", "13000"},
				rows["iptables/1000x12"])
			assert.Equal(t, []string{"-", "-"}, rows["direct/1x12"][9:], "direct reports no change or state")
			for _, want := range tc.wantLines {
				assert.Contains(t, lines, want)
			}
			for _, not := range tc.wantNot {
				assert.NotContains(t, block, not)
			}
		})
	}
}

// TestWriteTableNoScaleBlock checks runs that are not sweeps print no scale
// block, and that a limit is still reported when no sweep is left to
// show it in (every datapath stopped after the first point).
func TestWriteTableNoScaleBlock(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, sampleRun()))
	assert.NotContains(t, buf.String(), "scale (")
	assert.NotContains(t, buf.String(), "connect p90 at")

	run := sampleRun()
	run.ScaleLimits = []ScaleLimit{{Datapath: "iptables", Services: 100, Endpoints: 12, Reason: "apply failed: exit status 4"}}
	buf.Reset()
	require.NoError(t, WriteTable(&buf, run))
	assert.NotContains(t, buf.String(), "scale (")
	assert.Contains(t, buf.String(), "iptables: not reached at 100 services × 12 endpoints: apply failed: exit status 4; larger points not tried")

	// A VM phase's limit is named with its site.
	run.ScaleLimits = append(run.ScaleLimits, ScaleLimit{Datapath: "ipvs", Site: "debian-6.12", Services: 100, Endpoints: 12, Reason: "apply did not finish within 1m0s"})
	buf.Reset()
	require.NoError(t, WriteTable(&buf, run))
	assert.Contains(t, buf.String(), "ipvs @ debian-6.12: not reached at 100 services × 12 endpoints: apply did not finish within 1m0s")
}

// The placement heads the table when the run recorded one: split and
// unplaced runs are not to be read alike.
func TestWriteTablePlacement(t *testing.T) {
	tests := []struct {
		name      string
		placement *Placement
		want      string // first line; "" means the header comes first
	}{
		{"not recorded", nil, ""},
		{"none", &Placement{Mode: "none"}, "CPU placement: none (the scheduler's choice)"},
		{"split", &Placement{Mode: "split", ClientCPUs: "0", ServerCPUs: "1", Mechanism: "sched_setaffinity"},
			"CPU placement: split (load generator on CPU 0; backends and datapath processes on CPU 1; sched_setaffinity)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := sampleRun()
			run.Env.Placement = tt.placement
			var buf bytes.Buffer
			require.NoError(t, WriteTable(&buf, run))
			first := strings.SplitN(buf.String(), "\n", 2)[0]
			if tt.want == "" {
				assert.True(t, strings.HasPrefix(first, "DATAPATH"), "first line %q", first)
				return
			}
			assert.Equal(t, tt.want, first)
		})
	}
}
