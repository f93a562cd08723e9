package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/harness/topology"
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

// The schedule interleaves datapaths and rotates their order; the cost
// trials (on by default) join the rounds of the attribution level.
func TestScheduleInterleaves(t *testing.T) {
	off := false
	tests := []struct {
		name string
		w    scenarios.Workload
		want []string
	}{
		{"attribution off", scenarios.Workload{Concurrency: []int{1, 8}, Repetitions: 2, Attribution: &off}, []string{
			"a", "b", "c", "gen", "b", "c", "gen", "a", // repetition 1: c=1, c=8
			"b", "c", "gen", "a", "c", "gen", "a", "b", // repetition 2
		}},
		{"cost trials at the level nearest 8", scenarios.Workload{Concurrency: []int{1, 8}, Repetitions: 2}, []string{
			"a", "b", "c", "gen", // repetition 1, c=1
			// c=8: each cost trial ($) next to its plain trial, both
			// participants of the round
			"a$", "b", "b$", "c", "c$", "gen", "a",
			"b", "c", "gen", "a", // repetition 2, c=1
			"b", "b$", "c", "c$", "gen", "a", "a$", // c=8
		}},
		{"cost trials at a named level", scenarios.Workload{Concurrency: []int{1, 8}, Repetitions: 1, AttributionConcurrency: 1}, []string{
			"a", "a$", "b", "b$", "c", "c$", "gen", "b", "c", "gen", "a",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Plan{Scenario: &scenarios.Scenario{Workload: tt.w}}
			for _, n := range []string{"a", "b", "c"} {
				p.Factories = append(p.Factories, datapath.Factory{Name: n})
			}
			var got []string
			sched := p.Schedule()
			for _, ts := range sched {
				got = append(got, participant(ts))
				if ts.Cost {
					assert.Equal(t, tt.w.AttributionLevel(), ts.Concurrency)
				}
			}
			assert.Equal(t, tt.want, got)
			n := 0
			for _, ts := range sched {
				if ts.Cost {
					n++
				}
			}
			assert.Equal(t, p.costTrials(), n)
		})
	}
}

// participant names a trial's place in a round: its datapath, "$" after
// a cost trial's, or "gen" for the generator's ceiling.
func participant(ts TrialSpec) string {
	switch {
	case ts.Generator:
		return "gen"
	case ts.Cost:
		return ts.Factory.Name + "$"
	}
	return ts.Factory.Name
}

// Every participant of a round (each datapath, its cost trial in the
// rounds of the attribution level, and the generator's own ceiling in the
// rounds of the first scale point) takes every position
// equally often over as many repetitions as the round has participants (at
// most one apart over fewer), for any number of datapaths, scale points and
// concurrency levels: the shape that made a rotation by rounds stand still
// (points × levels a multiple of the datapaths) included.
func TestScheduleBalancesPositions(t *testing.T) {
	for ndp := 1; ndp <= 9; ndp++ {
		for nlev := 1; nlev <= 4; nlev++ {
			for npts := 1; npts <= 3; npts++ {
				for _, reps := range []int{ndp, ndp + 1, 2 * (ndp + 1)} {
					t.Run(fmt.Sprintf("dp=%d/levels=%d/points=%d/reps=%d", ndp, nlev, npts, reps), func(t *testing.T) {
						p := schedulePlan(ndp, nlev, npts, reps)
						sched := p.Schedule()
						require.Equal(t, reps*nlev*(npts*ndp+1)+reps*npts*ndp, len(sched),
							"every datapath once per round, the generator once per level, a cost trial per datapath at one level and every point")
						type cell struct{ services, conc int }
						count := map[cell]map[string]map[int]int{}
						for _, ts := range sched {
							c := cell{ts.Services, ts.Concurrency}
							who := participant(ts)
							if count[c] == nil {
								count[c] = map[string]map[int]int{}
							}
							if count[c][who] == nil {
								count[c][who] = map[int]int{}
							}
							count[c][who][ts.Slot]++
						}
						for c, byWho := range count {
							m := len(byWho)
							lo, hi := reps, 0
							for _, bySlot := range byWho {
								for slot := range m {
									lo, hi = min(lo, bySlot[slot]), max(hi, bySlot[slot])
								}
							}
							if hi-lo > 1 || (reps%m == 0 && lo != hi) {
								t.Fatalf("services=%d c=%d: %d participants take a position %d to %d times over %d repetitions",
									c.services, c.conc, m, lo, hi, reps)
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

// A trial is invalid when it completed nothing or failed more connections
// than the scenario tolerates; the open loop's own overload does not count.
func TestInvalidReason(t *testing.T) {
	tests := []struct {
		name   string
		conns  int64
		errors map[string]int64
		want   string
	}{
		{"clean", 1000, nil, ""},
		{"within tolerance", 1000, map[string]int64{"ECONNRESET": 10}, ""},
		{"above tolerance", 1000, map[string]int64{"ECONNRESET": 11}, "11 of 1011 connections failed (1.1%, tolerance 1.0%)"},
		{"overload is the generator's", 1000, map[string]int64{"overload": 500}, ""},
		{"nothing completed", 0, map[string]int64{"timeout": 7}, "no completed connection (7 failed)"},
		{"nothing at all", 0, nil, "no completed connection (0 failed)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &results.Workload{Connections: tt.conns, Errors: tt.errors}
			assert.Equal(t, tt.want, invalidReason(w, 0.01))
		})
	}
}

// The programmed state is Apply's; a process's CPU and RSS are the
// traffic's.
func TestAfterTraffic(t *testing.T) {
	applied := map[string]string{datapath.InfoStateObjects: "12", "proxy_cpu_seconds": "0.000"}
	got := afterTraffic(applied, map[string]string{datapath.InfoStateObjects: "99", "proxy_cpu_seconds": "1.250", "proxy_rss_bytes": "8192"})
	assert.Equal(t, map[string]string{datapath.InfoStateObjects: "12", "proxy_cpu_seconds": "1.250", "proxy_rss_bytes": "8192"}, got)
	assert.Nil(t, afterTraffic(nil, nil), "direct reports nothing")
}

// An IPv6 scenario makes the node dual-stack and the service IPv6: its
// ClusterIP from the IPv6 service range, its endpoints the backend pods'
// IPv6 addresses; an IPv4 one is unchanged.
func TestNewPlanFamily(t *testing.T) {
	pods := []datapath.Pod{
		{Name: "backend-00", Addr: netip.MustParseAddr("10.244.0.2"), Addr6: netip.MustParseAddr("fd00:10:244::2")},
		{Name: "backend-01", Addr: netip.MustParseAddr("10.244.0.3"), Addr6: netip.MustParseAddr("fd00:10:244::3")},
	}
	tests := []struct {
		scenario      string
		services      int
		wantDual      bool
		wantClusterIP string
		wantEndpoints []string
	}{
		{"default", 1, false, "10.96.0.10", []string{"10.244.0.2", "10.244.0.3"}},
		{"ipv6", 1, true, "fd00:10:96::a", []string{"fd00:10:244::2", "fd00:10:244::3"}},
		{"udp-connected-ipv6", 1, true, "fd00:10:96::a", []string{"fd00:10:244::2", "fd00:10:244::3"}},
		{"ipv6", 3, true, "fd00:10:96::c", []string{"fd00:10:244::2", "fd00:10:244::3"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %d services", tt.scenario, tt.services), func(t *testing.T) {
			sc, err := scenarios.Load(tt.scenario)
			require.NoError(t, err)
			sc.Topology.Backends = len(pods)
			sc.Datapaths = []string{"direct"}
			p, err := NewPlanWith(sc, func(name string) (datapath.Factory, error) { return datapath.Factory{Name: name}, nil })
			require.NoError(t, err)
			assert.Equal(t, tt.wantDual, p.Topology.DualStack())
			st, err := p.State(&topology.Topology{Backends: pods}, tt.services, len(pods))
			require.NoError(t, err)
			svc := Target(st)
			assert.Equal(t, tt.wantClusterIP, svc.ClusterIP.String())
			var eps []string
			for _, ep := range svc.Endpoints {
				eps = append(eps, ep.Addr.String())
			}
			assert.Equal(t, tt.wantEndpoints, eps)
		})
	}
}

// A datapath's refusal (ErrUnsupported from Setup or Apply) is a skip;
// any other error stays an error.
func TestAsUnsupported(t *testing.T) {
	tests := []struct {
		name string
		err  error
		skip bool
	}{
		{"unsupported", fmt.Errorf("apply: service default/echo: ClusterIP fd00::a is not IPv4: %w", datapath.ErrUnsupported), true},
		{"other", errors.New("apply: exit status 1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var u *unsupportedError
			assert.Equal(t, tt.skip, errors.As(asUnsupported(tt.err), &u))
			assert.ErrorIs(t, asUnsupported(tt.err), tt.err)
		})
	}
}
