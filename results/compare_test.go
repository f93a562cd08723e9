package results

import (
	"bytes"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// synth describes a synthetic run: per-datapath QPS, p90 and CPU per
// connection, a machine speed factor applied to every datapath alike, and
// multiplicative noise per trial.
type synth struct {
	id    string
	reps  int
	seed  uint64
	noise float64 // relative standard deviation per trial
	speed float64 // 1 = the reference machine; 0.8 = 20% slower
	qps   map[string]float64
	p90   map[string]float64
	cpu   map[string]float64
}

// baseline is a plausible 3-datapath run on a 2-core machine.
func baseline(id string, seed uint64) synth {
	return synth{
		id: id, reps: 6, seed: seed, noise: 0.02, speed: 1,
		qps: map[string]float64{"direct": 12000, "socketlb": 11500, "iptables": 10000},
		p90: map[string]float64{"direct": 1000, "socketlb": 1030, "iptables": 1150},
		cpu: map[string]float64{"direct": 160, "socketlb": 165, "iptables": 190},
	}
}

func (s synth) run() *Run {
	rng := rand.New(rand.NewPCG(s.seed, 7))
	// Each round shares a machine-wide factor (a busy neighbour slows
	// every datapath in it), plus per-trial noise.
	run := &Run{SchemaVersion: SchemaVersion, ID: s.id, Env: Env{Kernel: "6.18", CPUModel: "test CPU", CPUs: 2}}
	order := 0
	for rep := range s.reps {
		round := 1 + s.noise*rng.NormFloat64()
		for _, dp := range []string{"direct", "socketlb", "iptables"} {
			if _, ok := s.qps[dp]; !ok {
				continue
			}
			f := s.speed * round * (1 + s.noise*rng.NormFloat64())
			tr := trial(dp, 8, rep, s.qps[dp]*f, s.p90[dp]/f/1.6, s.p90[dp]/f, s.p90[dp]*2/f, 0.01, 0)
			tr.Workload.CPU = &CPUUsage{PerConnectionUS: s.cpu[dp] / (s.speed * (1 + s.noise*rng.NormFloat64()))}
			tr.Order = order
			order++
			run.Trials = append(run.Trials, tr)
		}
	}
	run.Summary = Summarize(run.Trials)
	return run
}

func rowByName(c *Comparison, name string) (CompareRow, bool) {
	for _, r := range c.Rows {
		if r.Name() == name {
			return r, true
		}
	}
	return CompareRow{}, false
}

func table(t *testing.T, c *Comparison) string {
	var buf bytes.Buffer
	require.NoError(t, c.WriteTable(&buf))
	return buf.String()
}

// TestCompare is the gate's contract on synthetic runs: what passes, what
// fails and which row is named.
func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  synth
		new  func(synth) synth
		th   func(*Thresholds)
		// wantRegressions are the failing rows' names.
		wantRegressions []string
		// wantVerdicts pins rows by name.
		wantVerdicts map[string]Verdict
		wantOut      []string
	}{{
		name: "identical runs pass",
		old:  baseline("a", 1),
		new:  func(s synth) synth { return s },
		wantVerdicts: map[string]Verdict{
			"iptables conc=8 qps×direct": VerdictSame,
			"iptables conc=8 qps":        VerdictSame,
			"direct conc=8 p90":          VerdictSame,
		},
		wantOut: []string{"PASS"},
	}, {
		name: "a clear QPS drop fails, naming the row",
		old:  baseline("a", 1),
		new: func(s synth) synth {
			s.id, s.seed = "b", 2
			s.qps = map[string]float64{"direct": 12000, "socketlb": 11500, "iptables": 7000}
			return s
		},
		wantRegressions: []string{"iptables conc=8 qps×direct"},
		wantVerdicts: map[string]Verdict{
			"iptables conc=8 qps":        VerdictWorseReported,
			"socketlb conc=8 qps×direct": VerdictSame,
		},
		wantOut: []string{"FAIL: 1 regression(s):", "  iptables conc=8 qps×direct: 0.823 → 0.580 (-29.5%, p=0.00216, threshold 10%)"},
	}, {
		name: "noise within thresholds passes",
		old:  baseline("a", 1),
		new: func(s synth) synth {
			s.id, s.seed, s.noise = "b", 3, 0.04
			s.qps = map[string]float64{"direct": 12000, "socketlb": 11500, "iptables": 9600} // -4%
			return s
		},
		wantOut: []string{"PASS"},
	}, {
		name: "latency and CPU rises fail, their falls are better",
		old:  baseline("a", 1),
		new: func(s synth) synth {
			s.id, s.seed = "b", 4
			s.p90 = map[string]float64{"direct": 1000, "socketlb": 1400, "iptables": 800}
			s.cpu = map[string]float64{"direct": 160, "socketlb": 200, "iptables": 190}
			return s
		},
		wantRegressions: []string{"socketlb conc=8 p50×direct", "socketlb conc=8 p90×direct",
			"socketlb conc=8 p99×direct", "socketlb conc=8 cpu_per_conn×direct"},
		wantVerdicts: map[string]Verdict{"iptables conc=8 p90×direct": VerdictBetter},
	}, {
		name: "too few repetitions: n too small, pass, with a note",
		old:  func() synth { s := baseline("a", 1); s.reps = 3; return s }(),
		new: func(s synth) synth {
			s.id, s.seed = "b", 5
			s.qps = map[string]float64{"direct": 12000, "socketlb": 11500, "iptables": 5000}
			return s
		},
		wantVerdicts: map[string]Verdict{"iptables conc=8 qps×direct": VerdictNTooSmall},
		wantOut:      []string{"note: n too small", "PASS"},
	}, {
		name: "a slower machine passes the ratio gate",
		old:  baseline("a", 1),
		new:  func(s synth) synth { s.id, s.seed, s.speed = "b", 6, 0.75; return s },
		wantVerdicts: map[string]Verdict{
			"iptables conc=8 qps×direct": VerdictSame,
			"iptables conc=8 qps":        VerdictWorseReported,
			"direct conc=8 qps":          VerdictWorseReported,
		},
		wantOut: []string{"PASS"},
	}, {
		name:            "the same slower machine fails an absolute gate",
		old:             baseline("a", 1),
		new:             func(s synth) synth { s.id, s.seed, s.speed = "b", 6, 0.75; return s },
		th:              func(th *Thresholds) { th.Gate = GateAbsolute; th.Metrics["p99"] = 0.5 },
		wantRegressions: []string{"direct conc=8 qps", "direct conc=8 p50", "direct conc=8 p90", "direct conc=8 cpu_per_conn", "socketlb conc=8 qps", "socketlb conc=8 p50", "socketlb conc=8 p90", "socketlb conc=8 cpu_per_conn", "iptables conc=8 qps", "iptables conc=8 p50", "iptables conc=8 p90", "iptables conc=8 cpu_per_conn"},
	}, {
		name: "a per-datapath threshold tolerates a known change",
		old:  baseline("a", 1),
		new: func(s synth) synth {
			s.id, s.seed = "b", 2
			s.qps = map[string]float64{"direct": 12000, "socketlb": 11500, "iptables": 8000}
			return s
		},
		th:           func(th *Thresholds) { th.Datapaths = map[string]map[string]float64{"iptables": {"qps": 0.25}} },
		wantVerdicts: map[string]Verdict{"iptables conc=8 qps×direct": VerdictWorse},
		wantOut:      []string{"PASS"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			th := DefaultThresholds()
			if tc.th != nil {
				tc.th(&th)
			}
			c := Compare(tc.old.run(), tc.new(tc.old).run(), th)
			var regs []string
			for _, r := range c.Regressions() {
				regs = append(regs, r.Name())
			}
			assert.Equal(t, tc.wantRegressions, regs)
			for name, want := range tc.wantVerdicts {
				r, ok := rowByName(c, name)
				if assert.True(t, ok, "row %s", name) {
					assert.Equal(t, want, r.Verdict, "%s: change %+.3f p=%.4f", name, r.Change, r.P)
				}
			}
			out := table(t, c)
			for _, s := range tc.wantOut {
				assert.Contains(t, out, s)
			}
		})
	}
}

// TestCompareRowsAndGating checks which rows exist and which are gated:
// ratio rows for every datapath but direct; in ratio mode direct's own
// figures are reported only, since they are the reference.
func TestCompareRowsAndGating(t *testing.T) {
	c := Compare(baseline("a", 1).run(), baseline("b", 2).run(), DefaultThresholds())
	require.Len(t, c.Rows, 5+2*2*5, "direct: 5 absolute; socketlb, iptables: 5 ratio + 5 absolute")
	for _, r := range c.Rows {
		assert.Equal(t, r.Ratio, r.Gated, "%s", r.Name())
		assert.False(t, r.Ratio && r.Datapath == DirectDatapath)
		assert.Equal(t, 6, r.Old.N)
		assert.NotNil(t, r.Old.CI, "6 repetitions give a finite 95% interval")
	}
	out := table(t, c)
	assert.Contains(t, out, "socketlb  conc=8")
	assert.Contains(t, out, "gated: ratios to direct")
	assert.NotContains(t, out, "n too small")
	for _, l := range strings.Split(out, "\n") {
		assert.Equal(t, strings.TrimRight(l, " "), l, "no trailing blanks")
	}
}

// TestCompareMissing checks datapaths or points measured on one side only
// are listed, not an error, and that without direct the absolute figures
// are gated instead.
func TestCompareMissing(t *testing.T) {
	old := baseline("a", 1)
	old.qps = map[string]float64{"direct": 12000, "socketlb": 11500, "iptables": 10000}
	nw := baseline("b", 2)
	nw.qps = map[string]float64{"direct": 12000, "socketlb": 11500} // iptables gone
	nr := nw.run()
	nr.Trials = append(nr.Trials, trial("ipvs", 8, 0, 9000, 500, 900, 2000, 0, 0))
	extra := trial("socketlb", 32, 0, 9000, 500, 900, 2000, 0, 0)
	nr.Trials = append(nr.Trials, extra)
	c := Compare(old.run(), nr, DefaultThresholds())
	assert.Equal(t, []string{"iptables"}, c.OnlyOld)
	assert.Equal(t, []string{"socketlb conc=32", "ipvs"}, c.OnlyNew)
	out := table(t, c)
	assert.Contains(t, out, "only in OLD (not compared): iptables")
	assert.Contains(t, out, "only in NEW (not compared): socketlb conc=32, ipvs")
	assert.Contains(t, out, "PASS")

	// No direct in either run: absolute figures are gated.
	noDirect := func(r *Run) *Run {
		var ts []Trial
		for _, t := range r.Trials {
			if t.Datapath != DirectDatapath {
				ts = append(ts, t)
			}
		}
		r.Trials = ts
		return r
	}
	slow := baseline("b", 2)
	slow.qps = map[string]float64{"direct": 12000, "socketlb": 11500, "iptables": 7000}
	c = Compare(noDirect(baseline("a", 1).run()), noDirect(slow.run()), DefaultThresholds())
	r, ok := rowByName(c, "iptables conc=8 qps")
	require.True(t, ok)
	assert.True(t, r.Gated)
	assert.Equal(t, VerdictRegression, r.Verdict)
	assert.Contains(t, table(t, c), "no direct at conc=8 in both runs")
}

// TestCompareNotes checks the notes that keep a reader from trusting a
// comparison blindly: different machines, unclean runs, missing CPU.
func TestCompareNotes(t *testing.T) {
	old, nw := baseline("a", 1).run(), baseline("b", 2).run()
	nw.Env.CPUModel = "other CPU"
	nw.Trials[0].Workload.SynRetrans = 3
	for i := range old.Trials {
		old.Trials[i].Workload.CPU = nil
	}
	out := table(t, Compare(old, nw, DefaultThresholds()))
	assert.Contains(t, out, "different machines or kernels")
	assert.Contains(t, out, "NEW is not clean: 0 failed connections, 3 SYN retransmits")
	assert.Contains(t, out, "cpu µs/conn is missing")
	assert.NotContains(t, out, "too noisy")

	// A noisy machine: the note names the rows that cannot catch a
	// regression of their threshold's size.
	noisy := baseline("c", 3)
	noisy.noise = 0.3
	c := Compare(baseline("a", 1).run(), noisy.run(), DefaultThresholds())
	assert.Contains(t, table(t, c), "too noisy to catch a regression of its threshold's size")
	assert.Contains(t, strings.Join(c.Notes, "\n"), "iptables conc=8 qps×direct")
}

// TestMinUTestP pins the smallest p the exact U test can give: the
// reason 3 repetitions cannot reach 0.05 and 4 can.
func TestMinUTestP(t *testing.T) {
	assert.InDelta(t, 0.1, minUTestP(3, 3), 1e-12)
	assert.InDelta(t, 2.0/70, minUTestP(4, 4), 1e-12)
	assert.InDelta(t, 2.0/924, minUTestP(6, 6), 1e-12)
	assert.Equal(t, 1.0, minUTestP(0, 6))
}

// TestParseThresholds checks the file format and that a bad file is an
// error naming the field at fault.
func TestParseThresholds(t *testing.T) {
	th, err := ParseThresholds([]byte("alpha: 0.01\ngate: both\nmetrics:\n  qps: 7.5%\n  p99: 40%\ndatapaths:\n  iptables:\n    p90: 20%\n"))
	require.NoError(t, err)
	assert.Equal(t, 0.01, th.Alpha)
	assert.Equal(t, GateBoth, th.Gate)
	assert.InDelta(t, 0.075, th.For("socketlb", "qps"), 1e-12)
	assert.InDelta(t, 0.15, th.For("socketlb", "p90"), 1e-12, "default kept")
	assert.InDelta(t, 0.20, th.For("iptables", "p90"), 1e-12)
	assert.InDelta(t, 0.075, th.For("iptables", "qps"), 1e-12, "per-datapath falls back to metrics")
	assert.Empty(t, th.SpeedGuard, "no guard unless asked for")

	guarded, err := ParseThresholds([]byte("speed_guard:\n  socketlb: 20%\n  iptables: off\n"))
	require.NoError(t, err)
	g, ok := guarded.speedGuard(site{datapath: "socketlb"})
	assert.True(t, ok)
	assert.InDelta(t, 0.20, g, 1e-12)
	_, ok = guarded.speedGuard(site{datapath: "iptables"})
	assert.False(t, ok, "off: gated at any speed")
	_, ok = guarded.speedGuard(site{datapath: "direct"})
	assert.False(t, ok)

	empty, err := ParseThresholds(nil)
	require.NoError(t, err)
	assert.Equal(t, DefaultThresholds(), empty)

	for _, tc := range []struct{ name, in, want string }{
		{"unknown field", "alhpa: 0.05\n", "alhpa: unknown field"},
		{"alpha out of range", "alpha: 5\n", "alpha: 5 is not a number between 0 and 1"},
		{"alpha not a number", "alpha: low\n", "alpha:"},
		{"gate", "gate: sometimes\n", `gate: "sometimes" is not one of`},
		{"bare number", "metrics:\n  qps: 10\n", `metrics.qps: 10 is not a percentage`},
		{"unknown metric", "metrics:\n  qsp: 10%\n", "metrics.qsp: unknown metric"},
		{"negative", "metrics:\n  p90: -5%\n", `metrics.p90: "-5%" is not a percentage above 0%`},
		{"per-datapath", "datapaths:\n  iptables:\n    p99: lots\n", "datapaths.iptables.p99:"},
		{"metrics not a mapping", "metrics: 10%\n", "metrics: want a mapping"},
		{"duplicate key", "alpha: 0.05\nalpha: 0.01\n", "not valid YAML"},
		{"speed guard not a percentage", "speed_guard:\n  socketlb: 0.2\n", "speed_guard.socketlb: 0.2 is not a percentage"},
		{"speed guard not a mapping", "speed_guard: 20%\n", "speed_guard: want a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseThresholds([]byte(tc.in))
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

// TestReadThresholdsNamesFile checks the committed CI thresholds parse and
// that errors name the file.
func TestReadThresholdsNamesFile(t *testing.T) {
	_, err := ReadThresholds("../ci/thresholds.yaml")
	require.NoError(t, err)
	p := t.TempDir() + "/t.yaml"
	require.NoError(t, writeFile(p, "metrics:\n  qps: ten\n"))
	_, err = ReadThresholds(p)
	assert.ErrorContains(t, err, "thresholds "+p+": metrics.qps:")
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o644) }

// TestComparePairing pins how the ratio to direct is formed: per round,
// it follows direct trial by trial; per median, it divides by one figure.
func TestComparePairing(t *testing.T) {
	mk := func(id string) *Run {
		r := &Run{ID: id}
		for rep := range 6 {
			load := []float64{1, 2}[rep%2] // every other round twice as fast
			r.Trials = append(r.Trials, trial("direct", 8, rep, 100*load, 10, 20, 30, 0, 0), trial("iptables", 8, rep, 90*load, 10, 20, 30, 0, 0))
		}
		return r
	}
	for _, tc := range []struct {
		pairing Pairing
		want    []float64
	}{
		{PairRound, []float64{0.9, 0.9, 0.9, 0.9, 0.9, 0.9}},
		{PairMedian, []float64{0.6, 1.2, 0.6, 1.2, 0.6, 1.2}},
	} {
		t.Run(string(tc.pairing), func(t *testing.T) {
			th := DefaultThresholds()
			th.Pairing = tc.pairing
			c := Compare(mk("a"), mk("b"), th)
			r, ok := rowByName(c, "iptables conc=8 qps×direct")
			require.True(t, ok)
			assert.InDeltaSlice(t, tc.want, r.New.Values, 1e-12)
			assert.Contains(t, table(t, c), pairingPhrase(tc.pairing))
		})
	}
	_, err := ParseThresholds([]byte("pairing: sometimes\n"))
	assert.ErrorContains(t, err, "pairing:")
}

// TestCompareMetricOff checks a metric set to "off" is reported with its
// verdict but never fails the gate.
func TestCompareMetricOff(t *testing.T) {
	th, err := ParseThresholds([]byte("metrics:\n  p99: off\n"))
	require.NoError(t, err)
	nw := baseline("b", 2)
	nw.p90 = map[string]float64{"direct": 1000, "socketlb": 1030, "iptables": 1600}
	c := Compare(baseline("a", 1).run(), nw.run(), th)
	r, ok := rowByName(c, "iptables conc=8 p99×direct")
	require.True(t, ok)
	assert.False(t, r.Gated)
	assert.Equal(t, VerdictWorseReported, r.Verdict)
	var regs []string
	for _, r := range c.Regressions() {
		regs = append(regs, r.Name())
	}
	assert.Equal(t, []string{"iptables conc=8 p50×direct", "iptables conc=8 p90×direct"}, regs)
	assert.Contains(t, table(t, c), "p99 off")
}

// TestCompareOpenLoop checks open-loop trials are compared per load
// fraction and paired with direct at the same fraction: a p99 rise at 0.8
// must not be averaged away by 0.5, nor compared with the closed loop.
func TestCompareOpenLoop(t *testing.T) {
	mk := func(id string, iptP99At08 float64) *Run {
		r := &Run{ID: id}
		for rep := range 6 {
			r.Trials = append(r.Trials,
				trial("direct", 8, rep, 100, 10, 20, 30, 0, 0),
				trial("iptables", 8, rep, 90, 10, 20, 30, 0, 0),
				openTrial("direct", 0.5, rep, 50, 50, 60, 5, 0),
				openTrial("iptables", 0.5, rep, 50, 50, 60, 5, 0),
				openTrial("direct", 0.8, rep, 80, 80, 90, 5, 0),
				openTrial("iptables", 0.8, rep, 80, 80, iptP99At08+float64(rep), 5, 0))
		}
		return r
	}
	c := Compare(mk("a", 90), mk("b", 180), DefaultThresholds())
	assert.Empty(t, c.OnlyOld)
	assert.Empty(t, c.OnlyNew)
	at08, ok := rowByName(c, "iptables model=open load=0.8 p90×direct")
	require.True(t, ok, "rows: %v", rowNames(c))
	assert.InDelta(t, 2.0, at08.New.Median/at08.Old.Median, 0.05, "p90 (p99/2) doubled at 0.8")
	at05, ok := rowByName(c, "iptables model=open load=0.5 p90×direct")
	require.True(t, ok)
	assert.Equal(t, VerdictSame, at05.Verdict)
	closed, ok := rowByName(c, "iptables conc=8 p90×direct")
	require.True(t, ok)
	assert.Equal(t, VerdictSame, closed.Verdict)
	assert.Contains(t, table(t, c), "iptables  model=open load=0.8")
}

// rowNames lists the comparison's row names, for failure messages.
func rowNames(c *Comparison) []string {
	var names []string
	for _, r := range c.Rows {
		names = append(names, r.Name())
	}
	return names
}
