package bench

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/internal/bpfstats"
	"svclab/internal/nfcost"
	"svclab/results"
	"svclab/scenarios"
)

// The cost of a window is the difference of its edges, net of the probes'
// floor, divided by the connections the window started (completed or
// failed); edges out of order are an error, not a figure.
func TestCostMeterWindow(t *testing.T) {
	var a, b nfcost.Sample
	b[nfcost.PreRouting][nfcost.DNAT] = nfcost.Sum{NS: 5000, Count: 100}
	b[nfcost.PreRouting][nfcost.Floor] = nfcost.Sum{NS: 2000, Count: 100}
	// Before the window: not counted.
	a[nfcost.PreRouting][nfcost.DNAT] = nfcost.Sum{NS: 1000, Count: 50}
	a[nfcost.PreRouting][nfcost.Floor] = nfcost.Sum{NS: 1000, Count: 50}
	info := map[string]string{proxyCPUKey: "1.000"}
	edges := [2]costSnapshot{
		{nf: map[string]nfcost.Sample{"node": a}, bpf: bpfstats.Stats{"connect4": {RunTimeNS: 100, RunCount: 1}}},
		{nf: map[string]nfcost.Sample{"node": b}, bpf: bpfstats.Stats{"connect4": {RunTimeNS: 1100, RunCount: 11}}},
	}
	wk := &results.Workload{Connections: 8, Errors: map[string]int64{"ECONNRESET": 2}}
	m := &costMeter{info: func() map[string]string { return info }, sysctl: "0", inNetfilter: true, edges: edges, seen: [2]bool{true, true}}
	c, err := m.stop(wk)
	require.NoError(t, err)
	assert.Empty(t, c.Beside, "a netfilter datapath owns the bands")
	// Window: DNAT 4000 ns over 50 crossings, floor 1000 ns over 50
	// (20 ns each): 4000 - 50×20 = 3000 ns over 10 connections.
	assert.InDelta(t, 300.0, c.Parts["nf-dnat"], 1e-9)
	assert.InDelta(t, 100.0, c.FloorNS, 1e-9)
	assert.InDelta(t, 100.0, c.Parts["bpf-connect4"], 1e-9)
	assert.Equal(t, int64(10), c.Connections, "completed and failed connections of the window")
	assert.NotContains(t, c.Parts, "nf-floor", "the floor is not a part of the datapath")
	assert.NotContains(t, c.Parts, "proxy-cpu", "no proxy at the edges: no part")
	sum := 0.0
	for _, v := range c.Parts {
		sum += v
	}
	assert.InDelta(t, sum, c.NsPerConn, 1e-9)

	// A datapath that does no work in netfilter: the same bands are
	// reported beside its cost, not in it.
	m = &costMeter{info: func() map[string]string { return info }, sysctl: "0", edges: edges, seen: [2]bool{true, true}}
	c, err = m.stop(wk)
	require.NoError(t, err)
	assert.InDelta(t, 300.0, c.Beside["nf-dnat"], 1e-9)
	assert.NotContains(t, c.Parts, "nf-dnat")
	assert.InDelta(t, 100.0, c.FloorNS, 1e-9, "it pays the same probes' floor")
	assert.InDelta(t, 100.0, c.NsPerConn, 1e-9, "its own BPF program only")

	none, err := (&costMeter{seen: [2]bool{true, true}}).stop(&results.Workload{})
	require.NoError(t, err)
	assert.Nil(t, none, "a window with no connection has no cost")

	tests := []struct {
		name  string
		edges []byte
		ok    bool
	}{
		{"start then end", []byte{loadgen.EdgeStart, loadgen.EdgeEnd}, true},
		{"end first", []byte{loadgen.EdgeEnd}, false},
		{"start twice", []byte{loadgen.EdgeStart, loadgen.EdgeStart}, false},
		{"unknown edge", []byte{'x'}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &costMeter{info: func() map[string]string { return info }}
			var err error
			for _, e := range tt.edges {
				if err = m.edge(e); err != nil {
					break
				}
			}
			if tt.ok {
				require.NoError(t, err)
				assert.True(t, m.edges[1].hasProxy, "the proxy's CPU is read at the edges")
				return
			}
			assert.ErrorIs(t, err, ErrCostEdges)
		})
	}
	_, err = (&costMeter{seen: [2]bool{true, false}}).stop(wk)
	assert.ErrorIs(t, err, ErrCostEdges, "a window without its end edge has no figure")
}

// TestPrivilegedCostPadding checks the cost trials against what is known,
// end to end through real worlds: N never-matching rules ahead of the
// services (SVCLAB_IPTABLES_PAD_RULES, the CI gate's injected regression)
// raise iptables' DNAT part roughly linearly in N, since nat rules see
// every connection's first packet, while socket-LB's figure, translated at
// connect() with no rule to walk, does not move with the same setting; and
// direct's node hooks, which hold only the probes, come out near 0 once the
// floor is taken out (reported beside its cost of 0).
func TestPrivilegedCostPadding(t *testing.T) {
	harnesstest.RequireRoot(t)
	if err := nfcost.Probe(); err != nil {
		t.Skipf("no BPF netfilter programs here: %v", err)
	}
	lock := harnesstest.NewRun(t)
	sc, err := scenarios.Load("quick")
	require.NoError(t, err)
	sc.Datapaths = []string{"iptables-nft", "socketlb", "direct"}
	plan, err := NewPlan(sc)
	require.NoError(t, err)
	require.Len(t, plan.Factories, 3, "every datapath runs here: %v", plan.Skipped)
	pads := []int{0, 2000, 4000}
	// cost runs three cost trials of datapath i and returns the median
	// one by NsPerConn: noise goes both ways once the floor is taken out
	// (an interrupt inside the floor band makes the others come out
	// low), so the best of several would pick the low outliers.
	n := 0
	cost := func(i int) *results.Cost {
		var got []*results.Cost
		for range 3 {
			ts := TrialSpec{Factory: plan.Factories[i], Services: 1, Endpoints: sc.Topology.Backends, Concurrency: 8, Cost: true}
			tr, _, err := runTrial(context.Background(), fmt.Sprintf("%s-p%d", lock.Prefix, n), plan, ts)
			n++
			require.NoError(t, err)
			require.Equal(t, results.ModelCost, tr.Model)
			require.NotNil(t, tr.Cost)
			require.Empty(t, tr.Cost.Missing)
			got = append(got, tr.Cost)
		}
		slices.SortFunc(got, func(a, b *results.Cost) int { return cmp.Compare(a.NsPerConn, b.NsPerConn) })
		return got[1]
	}
	var ipt, slb []float64
	var iptTotal0 float64
	for _, pad := range pads {
		t.Setenv("SVCLAB_IPTABLES_PAD_RULES", strconv.Itoa(pad))
		ic, sc := cost(0), cost(1)
		ipt = append(ipt, ic.Parts["nf-dnat"])
		if pad == 0 {
			iptTotal0 = ic.NsPerConn
		}
		slb = append(slb, sc.NsPerConn)
		t.Logf("%d padding rules: iptables-nft dnat %.0f ns/conn (total %.0f, floor %.0f); socketlb %.0f ns/conn (connect4 %.0f)",
			pad, ic.Parts["nf-dnat"], ic.NsPerConn, ic.FloorNS, sc.NsPerConn, sc.Parts["bpf-connect4"])
	}
	slope, r2 := fitLine(pads, ipt)
	t.Logf("iptables-nft: %.2f ns per padding rule per connection, R² %.3f", slope, r2)
	assert.Greater(t, slope, 0.5, "each padding rule costs iptables time")
	assert.Greater(t, r2, 0.9, "iptables' cost grows linearly with the rules")
	// Socket-LB does not move: far less than iptables' rise, whatever
	// the noise of a shared machine.
	rise := ipt[len(ipt)-1] - ipt[0]
	for i := range pads {
		assert.Less(t, abs(slb[i]-slb[0]), 0.1*rise, "socketlb at %d padding rules: %.0f vs %.0f ns/conn (iptables rose %.0f)", pads[i], slb[i], slb[0], rise)
	}

	d := cost(2)
	var beside float64
	for _, v := range d.Beside {
		beside += v
	}
	t.Logf("direct: %.0f ns/conn; its node's netfilter hooks %.0f ns/conn after a floor of %.0f", d.NsPerConn, beside, d.FloorNS)
	assert.Positive(t, d.FloorNS, "the probes' own cost was measured and taken out")
	assert.Zero(t, d.NsPerConn, "direct has no datapath: nothing of its own")
	assert.Len(t, d.Beside, int(nfcost.NumCostParts), "its node's hooks are measured beside it")
	assert.Less(t, abs(beside), 0.05*d.FloorNS, "hooks that hold only the probes are near 0 once their floor is out")
	assert.Greater(t, iptTotal0, d.NsPerConn+2000, "iptables-nft is clearly above direct (µs, not noise)")
	assert.Empty(t, harnesstest.Leftovers(t, lock.Prefix))
}

// fitLine is the least-squares line of ys against xs: its slope and R².
func fitLine(xs []int, ys []float64) (slope, r2 float64) {
	var sx, sy, sxx, sxy float64
	n := float64(len(xs))
	for i, x := range xs {
		fx := float64(x)
		sx, sy, sxx, sxy = sx+fx, sy+ys[i], sxx+fx*fx, sxy+fx*ys[i]
	}
	slope = (n*sxy - sx*sy) / (n*sxx - sx*sx)
	icept := (sy - slope*sx) / n
	var ssRes, ssTot float64
	for i, x := range xs {
		r := ys[i] - (icept + slope*float64(x))
		ssRes += r * r
		ssTot += (ys[i] - sy/n) * (ys[i] - sy/n)
	}
	return slope, 1 - ssRes/ssTot
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// A cost trial pairs with the plain trial of the same datapath, site,
// point, concurrency and repetition, whichever ran first; nothing else
// pairs.
func TestPairedQPS(t *testing.T) {
	tr := func(dp, model string, rep int, qps float64) results.Trial {
		return results.Trial{Datapath: dp, Model: model, Concurrency: 8, Services: 1, Endpoints: 12, Repetition: rep,
			Workload: results.Workload{QPS: qps}}
	}
	trials := []results.Trial{
		tr("a", "", 0, 1000), tr("a", results.ModelCost, 0, 800), // a pair
		tr("a", results.ModelCost, 1, 700),                      // its plain trial has not run
		tr("b", results.ModelCost, 0, 600), tr("b", "", 0, 900), // cost first
		tr("a", results.ModelOpen, 0, 500), // open loop: never paired
	}
	site := tr("b", "", 0, 50)
	site.Site = "debian-6.12"
	trials = append(trials, site)
	tests := []struct {
		i       int
		on, off float64
		ok      bool
	}{
		{0, 800, 1000, true}, {1, 800, 1000, true}, {2, 0, 0, false},
		{3, 600, 900, true}, {4, 600, 900, true}, {5, 0, 0, false}, {6, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("trial %d", tt.i), func(t *testing.T) {
			on, off, ok := pairedQPS(trials, tt.i)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.on, on)
			assert.Equal(t, tt.off, off)
		})
	}
}
