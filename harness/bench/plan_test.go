package bench

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/results"
	"svclab/scenarios"
)

// The open-loop phase's rate is the slowest datapath's median closed-loop
// QPS at the highest concurrency; its trials rotate the datapaths like the
// closed loop's and give every datapath of a repetition and fraction the
// same schedule.
func TestOpenLoopPhasePlan(t *testing.T) {
	trial := func(dp string, c int, qps float64) results.Trial {
		return results.Trial{Datapath: dp, Concurrency: c, Workload: results.Workload{QPS: qps}}
	}
	trials := []results.Trial{
		trial("a", 32, 900), trial("a", 32, 1000), trial("a", 32, 1100),
		trial("b", 32, 700), trial("b", 32, 800), trial("b", 32, 5000),
		// Not the highest concurrency, and an open-loop trial: ignored.
		trial("b", 8, 10), {Datapath: "b", Model: results.ModelOpen, Workload: results.Workload{QPS: 1}},
	}
	rate, slowest, err := openLoopCapacity(trials, 32)
	require.NoError(t, err)
	assert.Equal(t, 800.0, rate, "b's median")
	assert.Equal(t, "b", slowest)
	_, _, err = openLoopCapacity(trials, 64)
	assert.ErrorContains(t, err, "concurrency 64")
	_, _, err = openLoopCapacity([]results.Trial{trial("a", 1, 0)}, 1)
	assert.ErrorContains(t, err, "capacity")

	p := &Plan{Scenario: &scenarios.Scenario{Workload: scenarios.Workload{Repetitions: 2, Model: scenarios.ModelOpen,
		LoadFractions: []float64{0.5, 0.8}}}, Factories: []datapath.Factory{{Name: "a"}, {Name: "b"}}}
	sched := p.OpenSchedule(800, 100)
	require.Len(t, sched, p.openTrials())
	var got []string
	for _, ts := range sched {
		got = append(got, fmt.Sprintf("%s r%d %.0f %d", ts.Factory.Name, ts.Repetition, ts.Rate, ts.Seed))
		assert.Zero(t, ts.Concurrency)
	}
	assert.Equal(t, []string{
		"a r0 400 100", "b r0 400 100", "b r0 640 101", "a r0 640 101",
		// The next repetition starts each fraction's round with the
		// other datapath (by rounds, a would have led at 400/s again).
		"b r1 400 102", "a r1 400 102", "a r1 640 103", "b r1 640 103",
	}, got)
}

// A plan refuses unknown datapaths before building anything.
func TestNewPlanUnknownDatapath(t *testing.T) {
	sc, err := scenarios.Load("default")
	require.NoError(t, err)
	sc.Datapaths = []string{"socketlb", "nope"}
	_, err = NewPlan(sc)
	require.Error(t, err)
	assert.True(t, errors.Is(err, datapath.ErrUnknown))
	assert.Contains(t, err.Error(), "datapaths:")
}

// The schedule interleaves datapaths and rotates their order.
func TestScheduleInterleaves(t *testing.T) {
	p := &Plan{Scenario: &scenarios.Scenario{Workload: scenarios.Workload{Concurrency: []int{1, 8}, Repetitions: 2}}}
	for _, n := range []string{"a", "b", "c"} {
		p.Factories = append(p.Factories, datapath.Factory{Name: n})
	}
	var got []string
	for _, ts := range p.Schedule() {
		got = append(got, ts.Factory.Name)
	}
	assert.Equal(t, []string{"a", "b", "c", "b", "c", "a", "b", "c", "a", "c", "a", "b"}, got)
}

// Every datapath takes every position of every round equally often over n
// repetitions (at most one apart over fewer), for any number of datapaths,
// scale points and concurrency levels: the shape that made a rotation by
// rounds stand still (points × levels a multiple of the datapaths) included.
func TestScheduleBalancesPositions(t *testing.T) {
	for ndp := 1; ndp <= 9; ndp++ {
		for nlev := 1; nlev <= 4; nlev++ {
			for npts := 1; npts <= 3; npts++ {
				for _, reps := range []int{ndp, 2 * ndp, ndp + 1} {
					t.Run(fmt.Sprintf("dp=%d/levels=%d/points=%d/reps=%d", ndp, nlev, npts, reps), func(t *testing.T) {
						p := schedulePlan(ndp, nlev, npts, reps)
						sched := p.Schedule()
						require.Len(t, sched, reps*npts*nlev*ndp)
						// count[cell][datapath][slot]
						count := map[string]int{}
						for _, ts := range sched {
							count[fmt.Sprintf("%d/%d/%s/%d", ts.Services, ts.Concurrency, ts.Factory.Name, ts.Slot)]++
						}
						for _, ep := range p.Scenario.ScalePoints() {
							for _, c := range p.Scenario.Workload.Concurrency {
								lo, hi := reps, 0
								for _, f := range p.Factories {
									for slot := range ndp {
										k := count[fmt.Sprintf("%d/%d/%s/%d", ep.Services, c, f.Name, slot)]
										lo, hi = min(lo, k), max(hi, k)
									}
								}
								assert.LessOrEqual(t, hi-lo, 1, "services=%d c=%d: positions taken %d to %d times", ep.Services, c, lo, hi)
								if reps%ndp == 0 {
									assert.Equal(t, lo, hi, "services=%d c=%d: %d repetitions of %d datapaths balance exactly", ep.Services, c, reps, ndp)
								}
							}
						}
					})
				}
			}
		}
	}
}

// schedulePlan is a plan of ndp datapaths at nlev concurrency levels and
// npts scale points (services 1, 10, 100, …).
func schedulePlan(ndp, nlev, npts, reps int) *Plan {
	sc := &scenarios.Scenario{Workload: scenarios.Workload{Repetitions: reps}}
	for i := range nlev {
		sc.Workload.Concurrency = append(sc.Workload.Concurrency, 1<<i)
	}
	if npts > 1 {
		sc.Scale = &scenarios.Scale{}
		for i := range npts {
			sc.Scale.Services = append(sc.Scale.Services, []int{1, 10, 100}[i])
		}
	}
	p := &Plan{Scenario: sc}
	for i := range ndp {
		p.Factories = append(p.Factories, datapath.Factory{Name: string(rune('a' + i))})
	}
	return p
}
