package results

import (
	"bytes"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// costTrial is a cost trial (the probes attached) of dp at concurrency
// conc: its QPS is the probed one, parts are ns per connection.
func costTrial(dp string, conc, rep int, qps float64, parts map[string]float64, floor float64) Trial {
	t := trial(dp, conc, rep, qps, 50, 80, 120, 0.1, 0)
	t.Model = ModelCost
	sum := 0.0
	for _, v := range parts {
		sum += v
	}
	t.Cost = &Cost{NsPerConn: sum, Parts: parts, Connections: int64(qps * 10), FloorNS: floor}
	// 40 µs of the run's CPU per connection, the floor's share of it
	// included: the datapath's share is NsPerConn ÷ (40,000 − floor).
	t.Workload.CPU = &CPUUsage{RunPerConnectionUS: 40}
	return t
}

// costRun is a run of direct and iptables at concurrency 1 and 8 with six
// repetitions each, and cost trials at concurrency 8: what a bench with
// attribution on writes.
func costRun() *Run {
	run := &Run{SchemaVersion: SchemaVersion, ID: "cost", Env: Env{CPUs: 2, CPUModel: "EPYC", Kernel: "6.18"},
		Datapaths: []DatapathInfo{{Name: DirectDatapath}, {Name: "iptables"}}}
	for rep := range 6 {
		j := float64(rep)
		for _, dp := range []string{DirectDatapath, "iptables"} {
			base := map[string]float64{DirectDatapath: 10000, "iptables": 8000}[dp]
			for _, conc := range []int{1, 8} {
				run.Trials = append(run.Trials, trial(dp, conc, rep, base+100*j, 40, 60, 90, 0.1, 0))
			}
			parts := map[string]float64{"nf-conntrack": 300 + j, "nf-early": -2 + j}
			if dp == "iptables" {
				parts["nf-dnat"] = 2000 + 10*j
				parts["nf-filter"] = 400 + j
			}
			// The probes take 5% off: QPS ÷ the plain trial's is 0.95.
			run.Trials = append(run.Trials, costTrial(dp, 8, rep, 0.95*(base+100*j), parts, 80+j))
		}
	}
	for i := range run.Trials {
		run.Trials[i].Order = i
	}
	run.Summary = Summarize(run.Trials)
	return run
}

// TestSummarizeCostTrials checks the cost trials are kept out of the plain
// figures and feed the datapath ns/conn, the parts, the floor and the
// probes' overhead of the summary at their point.
func TestSummarizeCostTrials(t *testing.T) {
	sums := costRun().Summary
	require.Len(t, sums, 4, "cost trials make no summary of their own")
	byKey := map[string]Summary{}
	for _, s := range sums {
		assert.Empty(t, s.Model)
		byKey[s.name()+pointLabel(pointOf(s))] = s
	}
	ipt8 := byKey["iptablesconc=8"]
	assert.Equal(t, 6, ipt8.Repetitions)
	assert.Equal(t, []float64{8000, 8100, 8200, 8300, 8400, 8500}, ipt8.QPS.Values, "the probed QPS is not in the plain figures")
	// ns/conn per repetition: 300+j - 2+j + 2000+10j + 400+j = 2698 + 13j.
	assert.Equal(t, []float64{2698, 2711, 2724, 2737, 2750, 2763}, ipt8.DatapathNsPerConn.Values)
	assert.InDelta(t, 2730.5, ipt8.DatapathNsPerConn.Median, 1e-9)
	require.NotNil(t, ipt8.DatapathNsPerConn.CI, "the same 95% interval as the other metrics")
	assert.Equal(t, MedianCI(ipt8.DatapathNsPerConn.Values, CIConfidence), ipt8.DatapathNsPerConn.CI)
	require.NotNil(t, ipt8.Cost)
	assert.Equal(t, 6, ipt8.Cost.Repetitions)
	assert.InDelta(t, 2025.0, ipt8.Cost.Parts["nf-dnat"], 1e-9)
	assert.InDelta(t, 0.5, ipt8.Cost.Parts["nf-early"], 1e-9, "a floor-corrected part may be near 0 or negative")
	assert.InDelta(t, 82.5, ipt8.Cost.FloorNS, 1e-9)
	assert.InDelta(t, 0.95, ipt8.Cost.ProbeOverhead.Median, 1e-9)
	assert.Len(t, ipt8.Cost.ProbeOverhead.Values, 6)
	assert.NotNil(t, ipt8.Cost.ProbeOverhead.CI)

	ipt1 := byKey["iptablesconc=1"]
	assert.Nil(t, ipt1.Cost, "no cost trials at concurrency 1")
	assert.Empty(t, ipt1.DatapathNsPerConn.Values)
}

// TestSummarizeCostEdges covers invalid cost trials, a repetition with no
// plain pair, missing parts and runs from before cost trials.
func TestSummarizeCostEdges(t *testing.T) {
	plain := func(rep int, qps float64) Trial { return trial("ipvs", 8, rep, qps, 40, 60, 90, 0.1, 0) }
	parts := map[string]float64{"nf-dnat": 900}
	for _, tc := range []struct {
		name   string
		trials []Trial
		check  func(t *testing.T, s Summary)
	}{{
		name: "invalid cost trial stays out",
		trials: func() []Trial {
			bad := costTrial("ipvs", 8, 1, 5, map[string]float64{"nf-dnat": 99999}, 70)
			bad.Invalid = "no completed connection"
			return []Trial{plain(0, 1000), plain(1, 1000), costTrial("ipvs", 8, 0, 900, parts, 70), bad}
		}(),
		check: func(t *testing.T, s Summary) {
			assert.Equal(t, 2, s.Repetitions)
			assert.Zero(t, s.Invalid, "the plain trials were all valid")
			assert.Equal(t, []float64{900}, s.DatapathNsPerConn.Values)
			assert.Equal(t, 1, s.Cost.Repetitions)
			assert.Equal(t, 1, s.Cost.Invalid)
			assert.Equal(t, []float64{0.9}, s.Cost.ProbeOverhead.Values)
		},
	}, {
		name:   "cost repetition without its plain trial has no overhead",
		trials: []Trial{plain(0, 1000), costTrial("ipvs", 8, 3, 900, parts, 70)},
		check: func(t *testing.T, s Summary) {
			assert.Equal(t, []float64{900}, s.DatapathNsPerConn.Values)
			assert.Empty(t, s.Cost.ProbeOverhead.Values)
		},
	}, {
		name: "missing parts are named once",
		trials: func() []Trial {
			a, b := costTrial("ipvs", 8, 0, 900, parts, 0), costTrial("ipvs", 8, 1, 900, parts, 0)
			a.Cost.Missing, b.Cost.Missing = "netfilter probes need Linux 6.4+", "netfilter probes need Linux 6.4+"
			return []Trial{plain(0, 1000), plain(1, 1000), a, b}
		}(),
		check: func(t *testing.T, s Summary) {
			assert.Equal(t, []string{"netfilter probes need Linux 6.4+"}, s.Cost.Missing)
		},
	}, {
		name: "legacy: Cost inline on plain trials",
		trials: func() []Trial {
			a := plain(0, 1000)
			a.Cost = &Cost{NsPerConn: 900, Parts: parts, Connections: 10000}
			return []Trial{a, plain(1, 1000)}
		}(),
		check: func(t *testing.T, s Summary) {
			assert.Equal(t, 2, s.Repetitions)
			assert.Equal(t, []float64{900}, s.DatapathNsPerConn.Values)
			require.NotNil(t, s.Cost)
			assert.Equal(t, 1, s.Cost.Repetitions)
			assert.Equal(t, 900.0, s.Cost.Parts["nf-dnat"])
			assert.Empty(t, s.Cost.ProbeOverhead.Values, "no probe-free pair to divide by")
		},
	}, {
		name:   "no cost at all",
		trials: []Trial{plain(0, 1000), plain(1, 1000)},
		check: func(t *testing.T, s Summary) {
			assert.Nil(t, s.Cost)
			assert.Empty(t, s.DatapathNsPerConn.Values)
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			sums := Summarize(tc.trials)
			require.Len(t, sums, 1)
			tc.check(t, sums[0])
		})
	}
}

// withCostScaled is run with iptables' cost parts multiplied by f (a
// change in the datapath's own work; its QPS left alone).
func withCostScaled(run *Run, id string, f float64) *Run {
	out := *run
	out.ID = id
	out.Trials = nil
	for _, t := range run.Trials {
		if t.Model == ModelCost && t.Datapath == "iptables" {
			c := *t.Cost
			c.Parts = map[string]float64{}
			c.NsPerConn = 0
			for p, v := range t.Cost.Parts {
				c.Parts[p] = v * f
				c.NsPerConn += v * f
			}
			t.Cost = &c
		}
		out.Trials = append(out.Trials, t)
	}
	out.Summary = Summarize(out.Trials)
	return &out
}

// TestCompareCostTrials checks compare reads the datapath's ns/conn from
// the cost trials and gates it on its absolute value even in ratio mode
// (direct's is ≈ 0 after the floor correction), reports direct's without
// gating it, and never makes rows of the probed QPS.
func TestCompareCostTrials(t *testing.T) {
	base := costRun()
	rowsOf := func(c *Comparison, metric string) map[string]CompareRow {
		out := map[string]CompareRow{}
		for _, r := range c.Rows {
			assert.NotEqual(t, ModelCost, r.Model, "no row of the probed figures: %s", r.Name())
			if r.Metric == metric {
				out[r.Name()] = r
			}
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		factor    float64
		gate      GateMode
		wantIpt   Verdict
		wantFails bool
	}{
		{"A/A", 1, GateRatio, VerdictSame, false},
		{"+20% in ratio mode", 1.2, GateRatio, VerdictRegression, true},
		{"+20% in absolute mode", 1.2, GateAbsolute, VerdictRegression, true},
		{"+5% is within 10%", 1.05, GateRatio, VerdictWorse, false},
		{"-20% is better", 0.8, GateBoth, VerdictBetter, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := DefaultThresholds()
			th.Gate = tc.gate
			c := Compare(base, withCostScaled(base, "new", tc.factor), th)
			rows := rowsOf(c, "datapath_ns_per_conn")
			require.Len(t, rows, 2, "one absolute row per datapath at the cost point, no ratio row: %v", rows)
			ipt := rows["iptables conc=8 datapath_ns_per_conn"]
			assert.True(t, ipt.Gated)
			assert.False(t, ipt.Ratio)
			assert.Equal(t, 6, ipt.New.N)
			assert.NotNil(t, ipt.New.CI)
			assert.Equal(t, tc.wantIpt, ipt.Verdict)
			assert.False(t, rows["direct conc=8 datapath_ns_per_conn"].Gated, "direct's ≈ 0 is reported only")
			assert.Equal(t, tc.wantFails, c.Failed())
			assert.NotContains(t, c.Notes, "datapath ns/conn is missing from one run or both: not compared",
				"cost trials ran at concurrency 8 only, in both runs")
			if tc.gate != GateAbsolute {
				assert.Contains(t, strings.Join(c.Notes, "\n"), "datapath ns/conn is gated on its absolute figures whatever the gate mode")
			}
			// The plain QPS rows compare the plain trials: six each.
			q := rowsOf(c, "qps")["iptables conc=8 qps×direct"]
			assert.Equal(t, 6, q.New.N)
			assert.InDelta(t, 0.8125, q.New.Median, 0.01, "probed QPS left out")
		})
	}
}

// TestCompareCostBenchFormat checks the metric goes through bench.txt:
// the cost trials' lines carry it (and are named apart from the plain
// ones), and compare of two bench.txt files gates it.
func TestCompareCostBenchFormat(t *testing.T) {
	read := func(run *Run) *Run {
		var buf bytes.Buffer
		require.NoError(t, WriteBenchFormat(&buf, run))
		assert.Contains(t, buf.String(), "\nBenchmarkSvc/dp=iptables/conc=8/model=cost-2 ")
		assert.Contains(t, buf.String(), "Unit datapath-nanosec/conn better=lower\n")
		for _, l := range strings.Split(buf.String(), "\n") {
			if strings.HasPrefix(l, "Benchmark") && strings.Contains(l, " datapath-nanosec/conn") {
				assert.Contains(t, l, "/model=cost", "only cost trials carry the metric")
			}
		}
		back, err := ReadBenchFormat(&buf, run.ID)
		require.NoError(t, err)
		return back
	}
	old, slow := read(costRun()), read(withCostScaled(costRun(), "slow", 1.2))
	c := Compare(old, slow, DefaultThresholds())
	var names []string
	for _, r := range c.Regressions() {
		names = append(names, r.Name())
	}
	// The CPU stayed: the share rose with the nanoseconds.
	assert.Equal(t, []string{"iptables conc=8 datapath_ns_per_conn", "iptables conc=8 datapath_cpu_share"}, names)
	s := slices.IndexFunc(old.Summary, func(s Summary) bool { return s.Datapath == "iptables" && s.Concurrency == 8 })
	require.GreaterOrEqual(t, s, 0)
	assert.InDelta(t, 2730.5, old.Summary[s].DatapathNsPerConn.Median, 1e-9)
	assert.InDelta(t, 2730.5/(40000-82.5), old.Summary[s].DatapathCPUShare.Median, 1e-5, "read back from bench.txt")
	assert.InDelta(t, 0.95, old.Summary[s].Cost.ProbeOverhead.Median, 1e-3)
}

// TestCompareCostWithOlderRun checks a run without cost trials (the CI
// reference) compares with one that has them: the metric is named as
// missing, nothing fails for it.
func TestCompareCostWithOlderRun(t *testing.T) {
	old := costRun()
	old.Trials = slices.DeleteFunc(slices.Clone(old.Trials), func(t Trial) bool { return t.Model == ModelCost })
	old.Summary = Summarize(old.Trials)
	c := Compare(old, costRun(), DefaultThresholds())
	assert.False(t, c.Failed())
	assert.Empty(t, c.OnlyNew)
	assert.Contains(t, c.Notes, "datapath ns/conn is missing from one run or both: not compared")
}

// TestWriteTableCost pins the DP ns/C column (median ± its interval in
// ns where the cost trials measured it, "-" elsewhere) and the cost notes:
// the probes' overhead and floor per datapath, missing parts, the parts.
func TestWriteTableCost(t *testing.T) {
	run := costRun()
	for i, tr := range run.Trials {
		if tr.Model == ModelCost && tr.Datapath == DirectDatapath && tr.Repetition == 5 {
			run.Trials[i].Invalid = "no completed connection"
		}
		if tr.Model == ModelCost && tr.Datapath == "iptables" {
			run.Trials[i].Cost.Missing = "bpf stats off"
		}
	}
	run.Summary = Summarize(run.Trials)
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, run))
	got := b.String()
	for _, want := range []string{
		"DATAPATH  CONC  REPS    QPS    ±  QPS×DIR  P50 µs  P90 µs  P99 µs  P90×DIR   DP ns/C  DP %CPU  ERRORS  SYNRTX  APPLY s\n",
		"\ndirect       1     6  10250  ±2%     1.00    40.0    60.0    90.0     1.00         -        -       0       0     0.10\n",
		"\ndirect       8     6  10250  ±2%     1.00    40.0    60.0    90.0     1.00  302 (±4)    0.76%       0       0     0.10\n",
		"\niptables     8     6   8250  ±3%     0.80    40.0    60.0    90.0     1.00  2730 ±32    6.84%       0       0     0.10\n",
		"\nDP ns/C: the datapath's own kernel time per connection in ns, from the cost trials (the attribution probes attached; concurrency 8), the probes' floor subtracted from the netfilter parts; ± is the half-width of its 95% interval in ns ((±x): half the min–max range)\n",
		"\ncost probes (QPS with them ÷ without, same repetition: median [95% interval, or min–max]; floor: their own ns/conn subtracted): direct QPS ×0.95 [0.95–0.95], floor 82 ns, 1 of 6 cost trials invalid; iptables QPS ×0.95 [0.95–0.95], floor 82 ns\n",
		"\nDP %CPU: that time as a share of the cost trial's CPU per connection (its pods' and the datapath process's, the probes' floor taken out), median; it keeps still when the machine runs faster or slower, and is what the CI gate compares\n",
		"\ncost parts not measured (absent, not zero): iptables: bpf stats off\n",
		"\ncost parts of iptables (ns/conn, medians): nf-early 0, nf-conntrack 302, nf-dnat 2025, nf-filter 402\n",
		"\ninvalid, left out of the figures: direct model=cost conc=8 repetition 6: no completed connection\n",
	} {
		assert.Contains(t, got, want)
	}

	// A point where only cost trials ran has no plain figure to print.
	costOnly := costRun()
	costOnly.Trials = slices.DeleteFunc(costOnly.Trials, func(t Trial) bool { return t.Model == "" && t.Concurrency == 8 })
	costOnly.Summary = Summarize(costOnly.Trials)
	b.Reset()
	require.NoError(t, WriteTable(&b, costOnly))
	assert.Contains(t, b.String(), "\niptables     8     0      -    -        -       -       -       -        -  2730 ±32    6.84%       0       0     0.00\n")

	// A run without cost trials keeps its table as it was.
	b.Reset()
	require.NoError(t, WriteTable(&b, sampleRun()))
	assert.NotContains(t, b.String(), "DP ns/C")
	assert.NotContains(t, b.String(), "cost")
}

// TestWriteCostChart checks cost.png is drawn, at the charts' size, for a
// run with cost trials (a stack per datapath, a sweep's per point) and
// not for one without; SVCLAB_CHART_DIR keeps the charts for a look.
func TestWriteCostChart(t *testing.T) {
	dir := os.Getenv("SVCLAB_CHART_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	sweep := costRun()
	for i := range sweep.Trials {
		tr := &sweep.Trials[i]
		tr.Services, tr.Endpoints = []int{1, 1000}[tr.Repetition%2], 12
		if tr.Model == ModelCost && tr.Datapath == "iptables" && tr.Services == 1000 {
			tr.Cost.Parts["nf-dnat"] *= 4
			tr.Cost.NsPerConn += 3 * tr.Cost.Parts["nf-dnat"] / 4
		}
	}
	sweep.Summary = Summarize(sweep.Trials)
	for _, tc := range []struct {
		name string
		run  *Run
		want bool
	}{
		{"cost", costRun(), true},
		{"cost sweep", sweep, true},
		{"no cost trials", sampleRun(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, filepath.Base(t.Name()))
			require.NoError(t, os.MkdirAll(out, 0o755))
			paths, err := WriteCharts(out, tc.run)
			require.NoError(t, err)
			if !tc.want {
				assert.NotContains(t, paths, filepath.Join(out, "cost.png"))
				return
			}
			require.Contains(t, paths, filepath.Join(out, "cost.png"))
			f, err := os.Open(filepath.Join(out, "cost.png"))
			require.NoError(t, err)
			defer f.Close()
			img, err := png.Decode(f)
			require.NoError(t, err)
			assert.Equal(t, 1200, img.Bounds().Dx())
			assert.Equal(t, 675, img.Bounds().Dy())

			// Deterministic: a second rendering is byte for byte the same.
			again := t.TempDir()
			_, err = WriteCharts(again, tc.run)
			require.NoError(t, err)
			a, err := os.ReadFile(filepath.Join(out, "cost.png"))
			require.NoError(t, err)
			b, err := os.ReadFile(filepath.Join(again, "cost.png"))
			require.NoError(t, err)
			assert.True(t, bytes.Equal(a, b), "cost.png differs between renderings")
		})
	}
}

// TestCostBars pins the stacks: one per datapath with parts, parts in the
// order a packet meets them, the median total for the label, and the
// caption's floor and overhead.
func TestCostBars(t *testing.T) {
	run := costRun()
	bars, parts := costBars(run.Summary)
	require.Len(t, bars, 2)
	assert.Equal(t, []string{"nf-early", "nf-conntrack", "nf-dnat", "nf-filter"}, parts)
	assert.Equal(t, "iptables", bars[1].label)
	assert.InDelta(t, 2730.5, bars[1].total.Median, 1e-9)
	st := &stackedBars{bars: bars, parts: parts}
	_, _, ymin, ymax := st.DataRange()
	assert.Equal(t, 0.0, ymin)
	assert.InDelta(t, 0.5+302.5+2025+402.5, ymax, 1e-9)
	_, cut := costAxis(bars, parts)
	capText := costCaption(run, run.Summary, bars, cut)
	assert.Contains(t, capText, "Probe floor subtracted from the netfilter parts: direct 82 ns, iptables 82 ns.")
	assert.Contains(t, capText, "Probes' overhead (QPS with them ÷ without, median): direct ×0.95, iptables ×0.95.")
	assert.Equal(t, []string{"bpf-connect4", "bpf-sendmsg4", "proxy-cpu", "zz"}, costPartNames(map[string]float64{"zz": 1, "proxy-cpu": 1, "bpf-sendmsg4": 1, "bpf-connect4": 1}))
}

// scaleCostRun is scaleRun with a cost trial per datapath, point and
// repetition: iptables' DNAT band (its rule walk) grows with services,
// socket-LB's connect program and direct's conntrack stay flat.
func scaleCostRun() *Run {
	run := scaleRun()
	var costs []Trial
	for _, tr := range run.Trials {
		j := float64(tr.Repetition)
		parts := map[string]map[string]float64{
			DirectDatapath: {"nf-conntrack": 300 + j, "nf-early": -1 + j},
			"socketlb":     {"bpf-connect4": 150 + j, "nf-conntrack": 300 + j},
			"iptables":     {"nf-conntrack": 300 + j, "nf-dnat": 200 + 0.8*float64(tr.Services) + j, "nf-filter": 50},
		}[tr.Datapath]
		c := costTrial(tr.Datapath, tr.Concurrency, tr.Repetition, 0.96*tr.Workload.QPS, parts, 80)
		c.Services, c.Endpoints = tr.Services, tr.Endpoints
		costs = append(costs, c)
	}
	run.Trials = append(run.Trials, costs...)
	run.Summary = Summarize(run.Trials)
	return run
}

// TestWriteScaleCostCharts checks a sweep with cost trials gets the
// datapath ns/conn line chart per axis and the parts chart, whose lines
// are the parts that matter: iptables' DNAT band rising with services.
func TestWriteScaleCostCharts(t *testing.T) {
	dir := os.Getenv("SVCLAB_CHART_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	out := filepath.Join(dir, "scale-cost")
	require.NoError(t, os.MkdirAll(out, 0o755))
	run := scaleCostRun()
	paths, err := WriteScaleCharts(out, run)
	require.NoError(t, err)
	for _, want := range []string{"scale-services-cost.png", "scale-endpoints-cost.png", "scale-services-cost-parts.png", "scale-endpoints-cost-parts.png"} {
		assert.Contains(t, paths, filepath.Join(out, want))
	}

	sweeps := scaleSweeps(summariesOf(run), run.ScaleLimits)
	require.NotEmpty(t, sweeps)
	require.Equal(t, axisServices, sweeps[0].axis)
	var names []string
	for _, l := range costPartLines(sweeps[0]) {
		names = append(names, l.name)
	}
	assert.Equal(t, []string{"direct nf-conntrack", "socketlb nf-conntrack", "socketlb bpf-connect4", "iptables nf-conntrack", "iptables nf-dnat"}, names,
		"parts under 10% of every total (direct's nf-early, iptables' nf-filter) are left out")
	capText := scaleCaption(run, sweeps[0], mustMetric("datapath_ns_per_conn"))
	assert.Contains(t, capText, "bars: min–max over 3 repetitions of the cost trials")
	assert.Contains(t, capText, "Probes' overhead (QPS with them ÷ without, median): direct ×0.96, socketlb ×0.96, iptables ×0.96.")
}

// TestCostRoundTrip checks results.json keeps the cost trials and their
// summary: Read gives back what Summarize makes of the trials.
func TestCostRoundTrip(t *testing.T) {
	run := costRun()
	path := filepath.Join(t.TempDir(), "results.json")
	require.NoError(t, run.Write(path))
	got, err := Read(path)
	require.NoError(t, err)
	assert.Equal(t, run.Trials, got.Trials)
	assert.Equal(t, Summarize(got.Trials), got.Summary)
	i := slices.IndexFunc(got.Summary, func(s Summary) bool { return s.Cost != nil && s.Datapath == "iptables" })
	require.GreaterOrEqual(t, i, 0)
	assert.InDelta(t, 0.95, got.Summary[i].Cost.ProbeOverhead.Median, 1e-9)
}

// TestCPUShare pins the share the gate compares: the datapath's ns per
// connection over the trial's own CPU per connection less the probes'
// floor, the stored figure (bench.txt's) first, and no figure without
// what it is made of.
func TestCPUShare(t *testing.T) {
	base := func() Trial {
		return Trial{Workload: Workload{CPU: &CPUUsage{RunPerConnectionUS: 50}},
			Cost: &Cost{NsPerConn: 4500, Parts: map[string]float64{"nf-dnat": 4500}, Connections: 100, FloorNS: 5000}}
	}
	for _, tc := range []struct {
		name   string
		change func(*Trial)
		want   float64
		ok     bool
	}{
		{name: "ns over CPU less the floor", change: func(*Trial) {}, want: 0.1, ok: true},
		{name: "stored figure first", change: func(t *Trial) { t.Cost.CPUShare = 0.2 }, want: 0.2, ok: true},
		{name: "no cost", change: func(t *Trial) { t.Cost = nil }},
		{name: "no connections", change: func(t *Trial) { t.Cost.Connections = 0 }},
		{name: "nothing measured", change: func(t *Trial) { t.Cost.Parts, t.Cost.Missing = nil, "no probes" }},
		{name: "no CPU accounting", change: func(t *Trial) { t.Workload.CPU = nil }},
		{name: "floor above the CPU", change: func(t *Trial) { t.Cost.FloorNS = 60000 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := base()
			tc.change(&tr)
			got, ok := tr.CPUShare()
			assert.Equal(t, tc.ok, ok)
			assert.InDelta(t, tc.want, got, 1e-12)
		})
	}
}

// A datapath that does no work in netfilter carries the node hooks' bands
// in Cost.Beside: summarized apart, printed as a check beside its parts,
// never in its DP ns/C.
func TestCostBeside(t *testing.T) {
	run := &Run{SchemaVersion: SchemaVersion, ID: "beside", Env: Env{CPUs: 2, CPUModel: "EPYC", Kernel: "6.18"},
		Datapaths: []DatapathInfo{{Name: "socketlb"}}}
	for rep := range 6 {
		j := float64(rep)
		run.Trials = append(run.Trials, trial("socketlb", 8, rep, 10000, 40, 60, 90, 0.1, 0))
		ct := costTrial("socketlb", 8, rep, 9500, map[string]float64{"bpf-connect4": 450 + j}, 80)
		ct.Cost.Beside = map[string]float64{"nf-conntrack": 3, "nf-dnat": -2 + j}
		run.Trials = append(run.Trials, ct)
	}
	run.Summary = Summarize(run.Trials)
	require.Len(t, run.Summary, 1)
	s := run.Summary[0]
	assert.InDelta(t, 452.5, s.DatapathNsPerConn.Median, 1e-9, "the BPF program alone")
	assert.Equal(t, map[string]float64{"nf-conntrack": 3, "nf-dnat": 0.5}, s.Cost.Beside)
	assert.NotContains(t, s.Cost.Parts, "nf-dnat")
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, run))
	assert.Contains(t, b.String(), "\ncost parts of socketlb (ns/conn, medians): bpf-connect4 452; in the node's netfilter hooks beside it (not its work, not counted): nf-conntrack 3, nf-dnat 0\n")
}

// withSpeed sets every cost trial's probe floor per band crossing: the
// machine's speed as compare reads it.
func withSpeed(run *Run, nsPerCrossing float64) *Run {
	out := *run
	out.Trials = slices.Clone(run.Trials)
	for i, t := range out.Trials {
		if t.Cost != nil {
			c := *t.Cost
			c.FloorPerCrossingNS = nsPerCrossing
			out.Trials[i].Cost = &c
		}
	}
	return &out
}

// TestCompareSpeedGuard checks that a datapath with a speed guard is gated
// only while the machine (the probes' own cost per crossing) runs no
// slower than the guard allows against OLD's; beyond it the rows are
// reported, not gated, the comparison says which datapath was not judged
// and why, and with no gated figure left it is not a pass. Without a guard,
// or without a speed in OLD (a reference made before it was recorded), the
// datapath is gated as before.
func TestCompareSpeedGuard(t *testing.T) {
	old := withSpeed(costRun(), 100)
	for _, tc := range []struct {
		name     string
		speed    float64 // NEW's ns per crossing; 0: none recorded in OLD either
		guard    bool
		judged   bool
		unjudged string
	}{
		{"within the guard", 110, true, true, ""},
		{"slower than the guard", 140, true, false, "iptables (the machine ran ×1.40 slower than in OLD; its speed guard is 20%)"},
		// Faster moves such a share towards "better": judged.
		{"faster than the guard", 70, true, true, ""},
		{"no guard", 140, false, true, ""},
		{"OLD has no speed", 0, true, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := DefaultThresholds()
			if tc.guard {
				th.SpeedGuard = map[string]float64{"iptables": 0.2}
			}
			o, n := old, withSpeed(withCostScaled(old, "new", 1.2), tc.speed)
			if tc.speed == 0 {
				o = withSpeed(old, 0)
			}
			c := Compare(o, n, th)
			var row CompareRow
			for _, r := range c.Rows {
				if r.Name() == "iptables conc=8 datapath_ns_per_conn" {
					row = r
				}
			}
			require.Equal(t, "datapath_ns_per_conn", row.Metric)
			var buf bytes.Buffer
			require.NoError(t, c.WriteTable(&buf))
			if tc.judged {
				assert.True(t, row.Gated)
				assert.Equal(t, VerdictRegression, row.Verdict)
				assert.True(t, c.Failed())
				assert.Empty(t, c.Unjudged)
				assert.NotContains(t, buf.String(), "NOT JUDGED")
			} else {
				assert.False(t, row.Gated, "outside the guard: reported only")
				assert.Equal(t, VerdictWorseReported, row.Verdict)
				assert.False(t, c.Failed())
				assert.Equal(t, []string{tc.unjudged}, c.Unjudged)
				assert.Contains(t, buf.String(), "NOT JUDGED: "+tc.unjudged)
				assert.Contains(t, buf.String(), "NOT COMPARED: every gated figure is outside its speed guard", "iptables was the only gated datapath: no pass")
				assert.False(t, c.Gates())
			}
			if tc.speed > 0 {
				assert.Contains(t, strings.Join(c.Notes, "\n"), fmt.Sprintf("machine speed (the attribution probes' own cost per band crossing, median of the cost trials): OLD 100.0 ns, NEW %.1f ns", tc.speed))
			} else {
				assert.Empty(t, c.Speeds)
			}
		})
	}
}

// TestCostAxis pins when cost.png cuts a bar: only a minority of bars
// standing costCutRatio times above the next, cut at 1.3 times that one.
func TestCostAxis(t *testing.T) {
	bar := func(total float64) costBar { return costBar{parts: map[string]float64{"a": total / 2, "b": total / 2}} }
	for _, tc := range []struct {
		name    string
		heights []float64
		top     float64
		cut     []int
	}{
		// The default bench's shape: the userspace proxy ~17× iptables.
		{"userspace far above", []float64{554, 5562, 5556, 4753, 4360, 96209}, 1.3 * 5562, []int{5}},
		// iptables ~10× socket-LB: both readable, nothing cut.
		{"socketlb beside iptables", []float64{554, 5562}, 5562, nil},
		// Two bars: cutting one would leave nothing to read beside it.
		{"two bars", []float64{500, 96000}, 96000, nil},
		{"two tall of five", []float64{500, 90000, 600, 700, 80000}, 1.3 * 700, []int{1, 4}},
		{"even", []float64{4000, 5000, 6000}, 6000, nil},
		// Two bars left below: read as they are, not cut to their scale.
		{"three bars", []float64{554, 560, 7000}, 7000, nil},
		{"zeros", []float64{0, 0, 0, 5000}, 5000, nil},
		{"none", nil, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bars := make([]costBar, len(tc.heights))
			for i, h := range tc.heights {
				bars[i] = bar(h)
			}
			top, cut := costAxis(bars, []string{"a", "b"})
			assert.InDelta(t, tc.top, top, 1e-9)
			assert.Equal(t, tc.cut, cut)
		})
	}
}

// TestWriteChartsPerSite checks a guest's figures get charts of their own
// (an emulator's figures would flatten the host's bars), that the host's
// cost chart cuts a bar far above the rest and says so, and that a guest
// chart's caption says where its figures come from.
func TestWriteChartsPerSite(t *testing.T) {
	run := costRun()
	// socket-LB below the others, the userspace proxy far above them, and
	// iptables measured in a guest too, thirty times slower.
	for _, tr := range slices.Clone(run.Trials) {
		if tr.Datapath != "iptables" {
			continue
		}
		sock, proxy, vm := tr, tr, tr
		sock.Datapath, proxy.Datapath, vm.Site = "socketlb", "userspace", "debian-6.12"
		vm.Workload.QPS /= 30
		if tr.Cost != nil {
			sock.Cost = &Cost{NsPerConn: 500, Parts: map[string]float64{"bpf-connect4": 500}, Connections: tr.Cost.Connections}
			proxy.Cost = &Cost{NsPerConn: 90000, Parts: map[string]float64{"proxy-cpu": 90000}, Connections: tr.Cost.Connections}
			c := *tr.Cost
			c.NsPerConn *= 30
			c.Parts = map[string]float64{"nf-dnat": c.NsPerConn}
			vm.Cost = &c
		}
		run.Trials = append(run.Trials, sock, proxy, vm)
	}
	run.Summary = Summarize(run.Trials)
	assert.Equal(t, []string{"", "debian-6.12"}, sitesOf(run.Summary))

	host := sumsAt(run.Summary, "")
	bars, parts := costBars(host)
	var labels []string
	for _, b := range bars {
		labels = append(labels, b.label)
	}
	assert.Equal(t, []string{"direct", "iptables", "socketlb", "userspace"}, labels, "the guest's bar is on a chart of its own")
	_, cut := costAxis(bars, parts)
	assert.Equal(t, []int{3}, cut)
	assert.Contains(t, costCaption(run, host, bars, cut), "Cut at the axis's top (≈), so the other bars stay readable: userspace; the label is the whole total.")
	guest := sumsAt(run.Summary, "debian-6.12")
	require.Len(t, guest, 2)
	guestBars, guestParts := costBars(guest)
	_, guestCut := costAxis(guestBars, guestParts)
	assert.Contains(t, costCaption(run, guest, guestBars, guestCut), "Measured in a QEMU guest running the debian-6.12 kernel")
	assert.Contains(t, caption(run, qpsChart(run, guest, "debian-6.12")), "compare these figures with each other (and direct @ debian-6.12) only")
	assert.NotContains(t, caption(run, qpsChart(run, host, "")), "QEMU")

	dir := t.TempDir()
	paths, err := WriteCharts(dir, run)
	require.NoError(t, err)
	var files []string
	for _, p := range paths {
		files = append(files, filepath.Base(p))
	}
	assert.Equal(t, []string{"qps.png", "p90.png", "cost.png", "qps-debian-6.12.png", "p90-debian-6.12.png", "cost-debian-6.12.png"}, files)
}
