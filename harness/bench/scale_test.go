package bench

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/results"
	"svclab/scenarios"
)

// slowApplyName is a test datapath: direct, except that an Apply of
// slowApplyAt services or more blocks until its context ends, as an
// iptables-restore of a huge ruleset does.
const (
	slowApplyName = "test-slow-apply"
	slowApplyAt   = 3
)

type slowApply struct{ datapath.Datapath }

func (s slowApply) Apply(ctx context.Context, st datapath.State) error {
	if len(st.Services) >= slowApplyAt {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Datapath.Apply(ctx, st)
}

// withSlowApply is datapath.Lookup plus the slow-apply test datapath, which
// is not registered so that tests of every datapath do not see it.
func withSlowApply(name string) (datapath.Factory, error) {
	if name != slowApplyName {
		return datapath.Lookup(name)
	}
	direct, err := datapath.Lookup("direct")
	if err != nil {
		return datapath.Factory{}, err
	}
	return datapath.Factory{Name: slowApplyName, Description: "test: direct with an Apply that stalls at scale",
		New: func() datapath.Datapath { return slowApply{direct.New()} }}, nil
}

// A scale schedule visits every point for every datapath in every
// repetition, the services sweep first, with one cost trial per point.
func TestScheduleScalePoints(t *testing.T) {
	sc, err := scenarios.Load("scale")
	require.NoError(t, err)
	p := &Plan{Scenario: sc, Factories: []datapath.Factory{{Name: "a"}, {Name: "b"}}}
	type key struct {
		dp       string
		svc, eps int
	}
	seen := map[key]int{}
	order := map[int][]scenarios.ScalePoint{}
	costs := map[key]int{}
	for _, ts := range p.Schedule() {
		if ts.Cost {
			costs[key{ts.Factory.Name, ts.Services, ts.Endpoints}]++
			continue
		}
		seen[key{ts.Factory.Name, ts.Services, ts.Endpoints}]++
		if ts.Factory.Name == "a" {
			order[ts.Repetition] = append(order[ts.Repetition], scenarios.ScalePoint{Services: ts.Services, Endpoints: ts.Endpoints})
		}
	}
	// Up, then down: a steady drift of the machine tilts no sweep.
	assert.Equal(t, sc.ScalePoints(), order[0])
	down := slices.Clone(sc.ScalePoints())
	slices.Reverse(down)
	assert.Equal(t, down, order[1])
	for _, pt := range sc.ScalePoints() {
		for _, dp := range []string{"a", "b"} {
			assert.Equal(t, sc.Workload.Repetitions*len(sc.Workload.Concurrency), seen[key{dp, pt.Services, pt.Endpoints}], "%s at %+v", dp, pt)
			assert.Equal(t, sc.Workload.Repetitions, costs[key{dp, pt.Services, pt.Endpoints}], "one cost trial of %s at %+v per repetition", dp, pt)
		}
	}
}

// A limit rules out the points that are at least as large in both
// dimensions, for that datapath only.
func TestLimitedAt(t *testing.T) {
	limits := []results.ScaleLimit{{Datapath: "a", Services: 1000, Endpoints: 12}, {Datapath: "b", Services: 1, Endpoints: 100}}
	tests := []struct {
		dp       string
		svc, eps int
		want     bool
	}{
		{"a", 100, 12, false},
		{"a", 1000, 12, true},
		{"a", 10000, 12, true},
		{"a", 1, 1000, false},
		{"b", 1, 12, false},
		{"b", 1, 1000, true},
		{"b", 100, 12, false},
		{"c", 10000, 12, false},
	}
	for _, tt := range tests {
		_, got := limitedAt(limits, TrialSpec{Factory: datapath.Factory{Name: tt.dp}, Services: tt.svc, Endpoints: tt.eps})
		assert.Equal(t, tt.want, got, "%s at %d×%d", tt.dp, tt.svc, tt.eps)
	}
}

// A datapath whose Apply stalls at a scale point is stopped at the apply
// timeout, recorded as limited there and not tried at larger points, and
// the run goes on: the other datapath is measured everywhere, the endpoint
// sweep (extra pod addresses) included, and the scale charts are written.
func TestPrivilegedScaleApplyTimeout(t *testing.T) {
	harnesstest.RequireRoot(t)
	sc, err := scenarios.Load("scale")
	require.NoError(t, err)
	sc.Topology.Backends = 4
	sc.Scale = &scenarios.Scale{Services: []int{1, slowApplyAt, 5}, Endpoints: 2, EndpointSweep: []int{2, 20},
		MeasureChange: true, ApplyTimeout: scenarios.Duration(300 * time.Millisecond)}
	sc.Workload = scenarios.Workload{Concurrency: []int{2}, Duration: scenarios.Duration(300 * time.Millisecond), Repetitions: 2}
	sc.Datapaths = []string{slowApplyName, "direct"}
	require.NoError(t, sc.Validate())

	out := t.TempDir()
	plan, err := NewPlanWith(sc, withSlowApply)
	require.NoError(t, err)
	run, dir, err := Run(context.Background(), Config{Plan: plan, OutputDir: out, Log: io.Discard})
	require.NoError(t, err)

	require.Len(t, run.ScaleLimits, 1, "the limit is found once; the second repetition does not try again")
	l := run.ScaleLimits[0]
	assert.Equal(t, slowApplyName, l.Datapath)
	assert.Equal(t, slowApplyAt, l.Services)
	assert.Equal(t, 2, l.Endpoints)
	assert.Contains(t, l.Reason, "did not finish within 300ms")
	assert.GreaterOrEqual(t, l.ApplySeconds, 0.3)

	got, gotCost := map[string][]scenarios.ScalePoint{}, map[string][]scenarios.ScalePoint{}
	for _, tr := range run.Trials {
		pt := scenarios.ScalePoint{Services: tr.Services, Endpoints: tr.Endpoints}
		assert.Empty(t, tr.Workload.Errors, "%s at %d×%d", tr.Datapath, tr.Services, tr.Endpoints)
		assert.Positive(t, tr.Workload.Connections)
		if tr.Model == results.ModelCost {
			if tr.Repetition == 0 {
				gotCost[tr.Datapath] = append(gotCost[tr.Datapath], pt)
			}
			require.NotNil(t, tr.Cost, "a cost trial has its cost")
			assert.Equal(t, tr.Workload.Connections+loadgen.SumErrors(tr.Workload.Errors)+tr.Workload.EdgeWarmup, tr.Cost.Connections, "divided by the connections between the edges: the window's and the warm-up's the parent's snapshot let in")
			assert.Zero(t, tr.ApplyChangeSeconds, "the change is timed in the plain trial")
			continue
		}
		if tr.Repetition == 0 {
			got[tr.Datapath] = append(got[tr.Datapath], pt)
		}
		assert.Nil(t, tr.Cost, "plain trials carry no probes")
		assert.Positive(t, tr.ApplyChangeSeconds, "the one-endpoint change is timed at every point")
	}
	want := map[string][]scenarios.ScalePoint{
		slowApplyName: {{Services: 1, Endpoints: 2}, {Services: 1, Endpoints: 20}},
		"direct":      {{Services: 1, Endpoints: 2}, {Services: 3, Endpoints: 2}, {Services: 5, Endpoints: 2}, {Services: 1, Endpoints: 20}},
	}
	assert.Equal(t, want, got)
	assert.Equal(t, want, gotCost, "one cost trial per point, not at the limited ones")

	// 20 endpoints on 4 pods: every pod answered on its extra addresses.
	for _, tr := range run.Trials {
		if tr.Endpoints == 20 {
			assert.Len(t, tr.Workload.PerBackend, 4, "%s: %v", tr.Datapath, tr.Workload.PerBackend)
		}
	}
	for _, f := range []string{"results.json", "scale-services-qps.png", "scale-endpoints-p90.png"} {
		_, err := os.Stat(filepath.Join(dir, f))
		assert.NoError(t, err, f)
	}
}

// results reads the state size under the keys the datapaths write it.
func TestStateKeysAgree(t *testing.T) {
	assert.Equal(t, datapath.InfoStateObjects, results.StateObjects)
	assert.Equal(t, datapath.InfoStateBytes, results.StateBytes)
}
