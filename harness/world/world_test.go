package world_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	_ "svclab/datapath/all"
	"svclab/harness/bench"
	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/harness/world"
	"svclab/scenarios"
)

// Every registered datapath, through real sockets in a real topology: a
// client reaches all 12 backends and nothing else, and a connection to a
// pod's own address (not a service) is left alone. One test for all
// datapaths: a new datapath is covered by registering it.
func TestPrivilegedEveryDatapathReachesAllBackends(t *testing.T) {
	harnesstest.RequireRoot(t)
	sc, err := scenarios.Load("default")
	require.NoError(t, err)
	for _, name := range datapath.Names() {
		t.Run(name, func(t *testing.T) {
			f, err := datapath.Lookup(name)
			require.NoError(t, err)
			if f.Probe != nil {
				if err := f.Probe(); err != nil {
					require.ErrorIs(t, err, datapath.ErrUnsupported, "probe failed for another reason than a missing feature")
					t.Skip(err.Error())
				}
			}
			for _, proto := range []string{"TCP", "UDP"} {
				t.Run(proto, func(t *testing.T) {
					reachAllBackends(t, sc, f, proto, 0, 1)
				})
			}
			// Two nodes, one datapath instance on each: half the
			// backends are across the underlay, and the client's node
			// translates.
			for _, proto := range []string{"TCP", "UDP"} {
				t.Run(proto+" two nodes", func(t *testing.T) {
					reachAllBackends(t, sc, f, proto, 0, 2)
				})
			}
			// The endpoint sweep's extra pod addresses (three per pod
			// here) are endpoints like any other.
			t.Run("TCP extra endpoints", func(t *testing.T) {
				reachAllBackends(t, sc, f, "TCP", 3*sc.Topology.Backends, 1)
			})
		})
	}
}

// reachAllBackends runs the check for one datapath and protocol in a fresh
// topology: every backend reached, nothing else, no error, replies from the
// address the client sent to, and a pod's own address left alone.
//
// With endpoints > 0 the service has that many endpoints: the pods' own
// addresses, then extra addresses on the pods.
func reachAllBackends(t *testing.T, base *scenarios.Scenario, f datapath.Factory, proto string, endpoints, nodes int) {
	sc := *base
	sc.Topology.Nodes = nodes
	sc.Datapaths = []string{f.Name}
	sc.Service.Protocol = proto
	udpMode := ""
	if proto == "UDP" {
		udpMode = loadgen.UDPSocketPerRequest
	}
	plan, err := bench.NewPlan(&sc)
	require.NoError(t, err)
	run := harnesstest.NewRun(t)
	tc := plan.Topology
	tc.Prefix = run.Prefix + "-dp"
	if endpoints == 0 {
		endpoints = tc.Backends
	}
	tc.ExtraEndpoints = max(0, endpoints-tc.Backends)
	wd, err := world.Build(context.Background(), world.Spec{Topology: tc, Port: plan.Port.TargetPort, Datapath: &f})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, wd.Close()) })
	topo, dp := wd.Topology, wd.Datapath
	require.Len(t, wd.Nodes(), nodes, "one datapath instance per node")
	st, err := plan.State(topo, 1, endpoints)
	require.NoError(t, err)
	require.NoError(t, dp.Apply(context.Background(), st))

	w, err := loadgen.RunClientProcess(context.Background(), topo.Clients[0].NS, topo.ClientCgroup.Path, loadgen.ClientSpec{
		Targets: dp.Targets(st.Services[0], plan.Port), Concurrency: 4, Duration: 20 * time.Second, Connections: 1200,
		Protocol: proto, UDPMode: udpMode,
	})
	require.NoError(t, err)
	assert.Empty(t, w.Errors)
	assert.Zero(t, w.WrongSource, "every UDP reply must come from the ClusterIP:port the client sent to")
	want := map[string]bool{}
	for _, b := range topo.Backends {
		want[b.Name] = true
	}
	for pod, n := range w.PerBackend {
		assert.True(t, want[pod], "reply from %q, which is not a backend of the service", pod)
		// 1200 connections over 12 backends: 100 expected each;
		// fewer than 40 means the spread is broken, not unlucky
		// (binomial p≈1e-12).
		assert.Greater(t, n, int64(40), "backend %s got %d of %d connections", pod, n, w.Connections)
	}
	assert.Len(t, w.PerBackend, len(topo.Backends), "backends reached: %v", w.PerBackend)

	// A pod's own address is not a service: the datapath must not
	// redirect it.
	b := topo.Backends[3]
	w, err = loadgen.RunClientProcess(context.Background(), topo.Clients[0].NS, topo.ClientCgroup.Path, loadgen.ClientSpec{
		Targets: []netip.AddrPort{netip.AddrPortFrom(b.Addr, plan.Port.TargetPort)}, Concurrency: 2,
		Protocol: proto, UDPMode: udpMode,
		Duration: 20 * time.Second, Connections: 100,
	})
	require.NoError(t, err)
	assert.Empty(t, w.Errors)
	assert.Equal(t, map[string]int64{b.Name: w.Connections}, w.PerBackend, "a non-service address must be untouched")
}
