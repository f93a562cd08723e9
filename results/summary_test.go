package results

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNewStat pins the plain median the README documents, so a reader can
// check any figure by hand from the per-repetition values.
func TestNewStat(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []float64
		want   Stat
	}{
		{"odd", []float64{3, 1, 2}, Stat{Median: 2, Min: 1, Max: 3, Values: []float64{3, 1, 2}}},
		{"even: mean of the middle two", []float64{10, 40, 20, 30}, Stat{Median: 25, Min: 10, Max: 40, Values: []float64{10, 40, 20, 30}}},
		{"single", []float64{7}, Stat{Median: 7, Min: 7, Max: 7, Values: []float64{7}}},
		{"empty", nil, Stat{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, NewStat(tc.values))
		})
	}
}

// TestSummarize covers grouping, per-repetition order, medians, errors and
// ratios to direct, the figures the table and the charts are built from.
func TestSummarize(t *testing.T) {
	// Repetitions given out of order: Values must still come in
	// repetition order so drift across repetitions stays visible.
	trials := []Trial{
		trial("socketlb", 8, 2, 90, 11, 22, 33, 0.3, 1),
		trial("direct", 8, 0, 100, 10, 20, 30, 0.1, 0),
		trial("socketlb", 8, 0, 70, 13, 26, 39, 0.1, 2),
		trial("direct", 8, 1, 120, 8, 16, 24, 0.2, 0),
		trial("socketlb", 8, 1, 80, 12, 24, 36, 0.2, 0),
	}
	got := Summarize(trials)
	require.Len(t, got, 2)

	sl := got[0]
	assert.Equal(t, "socketlb", sl.Datapath, "first-appearance datapath order")
	assert.Equal(t, 3, sl.Repetitions)
	assert.Equal(t, Stat{Median: 80, Min: 70, Max: 90, Values: []float64{70, 80, 90}}, sl.QPS)
	assert.Equal(t, []float64{13, 12, 11}, sl.P50.Values)
	assert.Equal(t, 24.0, sl.P90.Median)
	assert.Equal(t, 36.0, sl.P99.Median)
	assert.Equal(t, Stat{Median: 0.2, Min: 0.1, Max: 0.3, Values: []float64{0.1, 0.2, 0.3}}, sl.ApplySeconds)
	assert.Equal(t, int64(3), sl.Errors)

	d := got[1]
	assert.Equal(t, 110.0, d.QPS.Median, "even repetitions: mean of the two")
	assert.Equal(t, 18.0, d.P90.Median)
	assert.InDelta(t, 80.0/110, sl.QPSRatioToDirect, 1e-12)
	assert.InDelta(t, 24.0/18, sl.P90RatioToDirect, 1e-12)
	assert.Equal(t, 1.0, d.QPSRatioToDirect, "direct compared with itself")
}

// TestSummarizeOrderAndMissingDirect checks the deterministic order
// (caller's datapath order, then concurrency ascending) and that a ratio
// without a direct baseline is 0, never Inf or NaN (invalid in JSON).
func TestSummarizeOrderAndMissingDirect(t *testing.T) {
	for _, tc := range []struct {
		name      string
		trials    []Trial
		wantOrder [][2]any
		wantRatio []float64
	}{{
		name: "direct only at some levels",
		trials: []Trial{
			trial("iptables", 64, 0, 50, 1, 2, 3, 0, 0),
			trial("direct", 1, 0, 10, 1, 1, 1, 0, 0),
			trial("iptables", 1, 0, 5, 1, 2, 3, 0, 0),
		},
		wantOrder: [][2]any{{"iptables", 1}, {"iptables", 64}, {"direct", 1}},
		wantRatio: []float64{0.5, 0, 1},
	}, {
		name: "no direct at all",
		trials: []Trial{
			trial("socketlb", 8, 0, 50, 1, 2, 3, 0, 0),
			trial("iptables", 8, 0, 40, 1, 2, 3, 0, 0),
		},
		wantOrder: [][2]any{{"socketlb", 8}, {"iptables", 8}},
		wantRatio: []float64{0, 0},
	}, {
		name:      "direct measured zero",
		trials:    []Trial{trial("direct", 8, 0, 0, 0, 0, 0, 0, 5), trial("ipvs", 8, 0, 10, 1, 2, 3, 0, 0)},
		wantOrder: [][2]any{{"direct", 8}, {"ipvs", 8}},
		wantRatio: []float64{0, 0},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := Summarize(tc.trials)
			require.Len(t, got, len(tc.wantOrder))
			for i, s := range got {
				assert.Equal(t, tc.wantOrder[i], [2]any{s.Datapath, s.Concurrency})
				assert.Equal(t, tc.wantRatio[i], s.QPSRatioToDirect)
				if tc.wantRatio[i] == 0 {
					assert.Zero(t, s.P90RatioToDirect)
				}
			}
		})
	}
}

// TestSummarizeHistogramOnly checks that a trial recorded with only its
// histogram still gets percentiles rather than zeros.
func TestSummarizeHistogramOnly(t *testing.T) {
	h := NewHistogram()
	for ns := int64(1000); ns <= 100_000; ns += 1000 {
		h.Record(ns)
	}
	tr := Trial{Datapath: "direct", Concurrency: 1, Workload: Workload{QPS: 1, Histogram: h}}
	got := Summarize([]Trial{tr})
	require.Len(t, got, 1)
	assert.InEpsilon(t, 90.0, got[0].P90.Median, hdrPrecision)
	assert.Empty(t, Summarize(nil))
}

// TestSummarizeScale checks the scale sweep key: summaries per (datapath,
// services, endpoints, concurrency), ratios to direct only at the same
// point, in services/endpoints/concurrency order.
func TestSummarizeScale(t *testing.T) {
	at := func(dp string, svcs, eps, conc int, qps float64) Trial {
		tr := trial(dp, conc, 0, qps, 10, 20, 30, 0, 0)
		tr.Services, tr.Endpoints = svcs, eps
		return tr
	}
	got := Summarize([]Trial{
		at("iptables", 1000, 12, 8, 50),
		at("iptables", 1, 12, 8, 90),
		at("direct", 1, 12, 8, 100),
		at("direct", 1000, 12, 8, 100),
		at("iptables", 1000, 1, 8, 70),
	})
	type row struct {
		dp              string
		svcs, eps, conc int
		ratio           float64
	}
	var rows []row
	for _, s := range got {
		rows = append(rows, row{s.Datapath, s.Services, s.Endpoints, s.Concurrency, s.QPSRatioToDirect})
	}
	assert.Equal(t, []row{
		{"iptables", 1, 12, 8, 0.9},
		{"iptables", 1000, 1, 8, 0}, // no direct at 1000×1
		{"iptables", 1000, 12, 8, 0.5},
		{"direct", 1, 12, 8, 1},
		{"direct", 1000, 12, 8, 1},
	}, rows)
}

// TestSummarizeCIAndCPU checks the figures a gate needs: the 95% CI of the
// median (only from 6 repetitions on; it is then min..max), CPU per
// connection over the trials that measured it, its ratio to direct, and
// the SYN retransmit total.
func TestSummarizeCIAndCPU(t *testing.T) {
	var trials []Trial
	for rep := range 6 {
		for _, dp := range []string{"direct", "socketlb"} {
			tr := trial(dp, 8, rep, 100+float64(rep), 10, 20+float64(rep), 30, 0, 0)
			if rep != 5 { // one repetition without CPU figures
				tr.Workload.CPU = &CPUUsage{PerConnectionUS: map[string]float64{"direct": 200, "socketlb": 210}[dp] + float64(rep)}
			}
			tr.Workload.SynRetrans = 2
			trials = append(trials, tr)
		}
	}
	got := Summarize(trials)
	require.Len(t, got, 2)
	s := got[1]
	require.Equal(t, "socketlb", s.Datapath)
	require.NotNil(t, s.QPS.CI)
	assert.Equal(t, 100.0, s.QPS.CI.Lo)
	assert.Equal(t, 105.0, s.QPS.CI.Hi)
	assert.GreaterOrEqual(t, s.QPS.CI.Confidence, 0.95)
	require.NotNil(t, s.P90.CI)
	assert.Nil(t, s.P50.CI, "CIs only where the gate reads them")
	assert.Equal(t, []float64{210, 211, 212, 213, 214}, s.CPUPerConnUS.Values)
	assert.Nil(t, s.CPUPerConnUS.CI, "5 values: no finite 95% interval")
	assert.InDelta(t, 212.0/202, s.CPURatioToDirect, 1e-12)
	assert.Equal(t, int64(12), s.SynRetrans)

	// Too few repetitions: no interval rather than ±Inf (invalid JSON).
	few := Summarize(trials[:6])
	assert.Nil(t, few[0].QPS.CI)
	// Without any CPU figure the field stays zero (and out of the JSON).
	noCPU := Summarize([]Trial{trial("direct", 1, 0, 1, 1, 1, 1, 0, 0)})
	assert.Zero(t, noCPU[0].CPUPerConnUS.Median)
	assert.Nil(t, noCPU[0].CPUPerConnUS.Values)
}

// TestMedianCI pins the distribution-free interval: order statistics of
// the sorted sample, nil below 6 values at 95%, input left unsorted.
func TestMedianCI(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []float64
		want   *Interval
	}{
		{"5 values: none", []float64{5, 4, 3, 2, 1}, nil},
		{"6 values: min..max", []float64{6, 1, 5, 2, 4, 3}, &Interval{Lo: 1, Hi: 6, Confidence: 0.96875}},
		{"9 values: 2nd..8th", []float64{9, 8, 7, 6, 5, 4, 3, 2, 1}, &Interval{Lo: 2, Hi: 8, Confidence: 0.9609375}},
		{"empty", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.values...)
			assert.Equal(t, tc.want, MedianCI(in, 0.95))
			assert.Equal(t, tc.values, in, "caller's slice untouched")
		})
	}
}

// A datapath measured in a VM is compared with direct measured in that VM,
// never with the host's direct.
func TestSummarizeRatiosPerSite(t *testing.T) {
	trial := func(dp, site string, qps float64) Trial {
		return Trial{Datapath: dp, Site: site, Concurrency: 8, Workload: Workload{QPS: qps, Latency: Latency{P90: 1000 / qps}}}
	}
	sums := Summarize([]Trial{
		trial("direct", "", 10000), trial("socketlb", "", 9000),
		trial("direct", "debian-6.12", 800), trial("ipvs", "debian-6.12", 600),
	})
	got := map[string]float64{}
	for _, s := range sums {
		got[SiteName(s.Datapath, s.Site)] = s.QPSRatioToDirect
	}
	assert.Equal(t, map[string]float64{
		"direct": 1, "socketlb": 0.9,
		"direct @ debian-6.12": 1, "ipvs @ debian-6.12": 0.75,
	}, got)
}

// openTrial builds an open-loop trial at a load fraction: concurrency 0,
// an offered rate, overload errors and a start lag, as runOpenLoopPhase
// records them.
func openTrial(dp string, fraction float64, rep int, offered, achieved, p99, lagP99 float64, overload int64) Trial {
	t := trial(dp, 0, rep, achieved, p99/3, p99/2, p99, 0.1, 0)
	t.Model, t.LoadFraction, t.OfferedRate = ModelOpen, fraction, offered
	t.Workload.OfferedRate = offered
	t.Workload.StartLag = &Latency{P50: lagP99 / 4, P99: lagP99}
	if overload > 0 {
		t.Workload.Errors = map[string]int64{overloadError: overload, "ETIMEDOUT": 1}
	}
	return t
}

// TestSummarizeOpenLoop checks that open-loop trials get one summary per
// datapath and load fraction, after the same datapath's closed-loop ones,
// that their ratios pair with direct at the same fraction only, and that the
// closed-loop summaries are what they were without them.
func TestSummarizeOpenLoop(t *testing.T) {
	closed := []Trial{
		trial("direct", 64, 0, 1000, 10, 20, 30, 0.1, 0),
		trial("iptables", 64, 0, 800, 12, 24, 36, 0.1, 0),
	}
	open := []Trial{
		openTrial("iptables", 0.8, 0, 640, 630, 300, 40, 2),
		openTrial("direct", 0.5, 0, 400, 400, 50, 10, 0),
		openTrial("direct", 0.8, 0, 640, 640, 100, 20, 0),
		openTrial("iptables", 0.8, 1, 660, 650, 500, 60, 0),
		openTrial("iptables", 0.5, 0, 400, 400, 80, 15, 0),
	}
	got := Summarize(append(slices.Clone(closed), open...))
	type row struct {
		dp       string
		model    string
		fraction float64
	}
	var rows []row
	for _, s := range got {
		rows = append(rows, row{s.Datapath, s.Model, s.LoadFraction})
	}
	assert.Equal(t, []row{
		{"direct", "", 0}, {"direct", ModelOpen, 0.5}, {"direct", ModelOpen, 0.8},
		{"iptables", "", 0}, {"iptables", ModelOpen, 0.5}, {"iptables", ModelOpen, 0.8},
	}, rows, "per datapath: closed loop first, then open loop by fraction")

	// The closed-loop summaries are exactly those of the closed-loop
	// trials alone: open-loop trials neither join their groups nor
	// change their ratios.
	wantClosed := Summarize(closed)
	assert.Equal(t, wantClosed, []Summary{got[0], got[3]})

	ip := got[5]
	assert.Equal(t, 2, ip.Repetitions)
	assert.Equal(t, 0, ip.Concurrency)
	assert.Equal(t, 650.0, ip.OfferedRate, "median of 640 and 660")
	assert.Equal(t, 640.0, ip.QPS.Median, "achieved rate")
	assert.Equal(t, 400.0, ip.P99.Median)
	assert.Equal(t, int64(3), ip.Errors, "overload counts as an error")
	assert.Equal(t, int64(2), ip.Overload)
	assert.Equal(t, []float64{40, 60}, ip.StartLagP99.Values)
	assert.InDelta(t, 640.0/640, ip.QPSRatioToDirect, 1e-12, "ratio to direct at 0.8, not 0.5")
	assert.InDelta(t, 200.0/50, ip.P90RatioToDirect, 1e-12)
	assert.InDelta(t, 40.0/25, got[4].P90RatioToDirect, 1e-12, "ratio to direct at 0.5")

	assert.Empty(t, got[0].Model)
	assert.Zero(t, got[0].OfferedRate)
	assert.Empty(t, got[0].StartLagP99.Values, "no start lag in the closed loop")
}

// TestSummarizeChangeAndState checks the scale figures: the one-endpoint
// change over the trials that measured it, and the state counts parsed from
// DatapathState, skipping missing or unparsable values; and that a datapath
// reporting none keeps them zero (absent from results.json).
func TestSummarizeChangeAndState(t *testing.T) {
	at := func(dp string, rep int, change float64, state map[string]string) Trial {
		tr := trial(dp, 8, rep, 100, 10, 20, 30, 0.5, 0)
		tr.Services, tr.Endpoints = 1000, 12
		tr.ApplyChangeSeconds = change
		tr.DatapathState = state
		return tr
	}
	got := Summarize([]Trial{
		at("iptables", 0, 0.03, map[string]string{StateObjects: "24012", StateBytes: "1048576", "chains": "1003"}),
		at("iptables", 1, 0, map[string]string{StateObjects: "24010"}), // change not measured
		at("iptables", 2, 0.05, map[string]string{StateObjects: "lots", StateBytes: " 2097152 "}),
		at("direct", 0, 0, nil),
	})
	require.Len(t, got, 2)
	ipt, direct := got[0], got[1]
	require.Equal(t, "iptables", ipt.Datapath)
	assert.Equal(t, Stat{Median: 0.04, Min: 0.03, Max: 0.05, Values: []float64{0.03, 0.05}}, ipt.ApplyChangeSeconds)
	assert.Equal(t, Stat{Median: 24011, Min: 24010, Max: 24012, Values: []float64{24012, 24010}}, ipt.StateObjects)
	assert.Equal(t, []float64{1048576, 2097152}, ipt.StateBytes.Values, "surrounding spaces tolerated")

	assert.Equal(t, Stat{}, direct.ApplyChangeSeconds)
	assert.Equal(t, Stat{}, direct.StateObjects)
	assert.Equal(t, Stat{}, direct.StateBytes)
	b, err := json.Marshal(direct)
	require.NoError(t, err)
	for _, key := range []string{"apply_change_seconds", "state_objects", "state_bytes"} {
		assert.NotContains(t, string(b), `"`+key+`"`)
	}
	b, err = json.Marshal(ipt)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"state_objects":{"median":24011`)
}
