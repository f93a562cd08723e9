package topology

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/internal/nsutil"
)

func TestNodePodCIDR(t *testing.T) {
	tests := []struct {
		pods  string
		nodes int
		i     int
		want  string
	}{
		{"10.244.0.0/16", 1, 0, "10.244.0.0/16"},
		{"10.244.0.0/16", 2, 0, "10.244.0.0/17"},
		{"10.244.0.0/16", 2, 1, "10.244.128.0/17"},
		{"10.244.0.0/16", 3, 2, "10.244.128.0/18"},
		{"10.244.0.0/24", 8, 7, "10.244.0.224/27"},
		{"fd00:10:244::/120", 2, 1, "fd00:10:244::80/121"},
		{"fd00:10:244::/64", 4, 3, "fd00:10:244:0:c000::/66"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d/%d", tt.pods, tt.nodes, tt.i), func(t *testing.T) {
			assert.Equal(t, netip.MustParsePrefix(tt.want), NodePodCIDR(netip.MustParsePrefix(tt.pods), tt.nodes, tt.i))
		})
	}
}

func TestNodesConfigValidate(t *testing.T) {
	good := Default("svclab-00000000", 12)
	good.Nodes = 2
	tests := []invalidCase{
		{"nine nodes", func(c *Config) { c.Nodes = 9 }, "nodes"},
		{"negative nodes", func(c *Config) { c.Nodes = -1 }, "nodes"},
		{"extra endpoints", func(c *Config) { c.ExtraEndpoints = 12 }, "extraEndpoints"},
		{"underlay overlaps pods", func(c *Config) { c.UnderlayCIDR = netip.MustParsePrefix("10.244.0.0/28") }, "underlayCIDR"},
		{"underlay too small", func(c *Config) { c.Nodes = 8; c.UnderlayCIDR = netip.MustParsePrefix("172.18.0.0/29") }, "underlayCIDR"},
		{"node share too small", func(c *Config) { c.PodCIDR = netip.MustParsePrefix("10.244.0.0/28") }, "podCIDR"},
	}
	checkInvalid(t, good, tests)
}

// Two nodes joined by the underlay: backends spread 6 + 6, each node with
// its own share of the pod range, cgroups and Env, the client on node 0
// reaching every backend on both nodes by pod address, and nothing in the
// root namespace.
func TestPrivilegedTwoNodes(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	before := rootLinks(t)
	cfg := Default(run.Prefix+"-topo", 12)
	cfg.Nodes = 2
	topo, err := New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	require.Len(t, topo.Nodes, 2)
	assert.Len(t, topo.Backends, 12)
	for i, nd := range topo.Nodes {
		assert.Len(t, nd.Backends, 6, nd.Name)
		assert.Equal(t, NodePodCIDR(cfg.PodCIDR, 2, i), nd.PodCIDR)
		for _, b := range nd.Backends {
			assert.True(t, nd.PodCIDR.Contains(b.Addr), "%s %s in %s", b.Name, b.Addr, nd.PodCIDR)
			assert.Equal(t, nd.ServerCgroup.Path, topo.PodCgroup(b), b.Name)
		}
		env := topo.NodeEnv(i)
		assert.Equal(t, nd.NS, env.Node)
		assert.Equal(t, nd.Name, env.NodeName)
		assert.Equal(t, cfg.PodCIDR, env.PodCIDR, "the cluster's pod range, not the node's share")
		assert.True(t, strings.HasPrefix(nd.NodeCgroup.Path, topo.CgroupDir()+"/"), "every node's cgroups are under the topology's: %s", nd.NodeCgroup.Path)
	}
	assert.Equal(t, topo.Nodes[0].NS, topo.Node)
	assert.Len(t, topo.Nodes[0].Clients, 1)
	eps, err := topo.Endpoints(12)
	require.NoError(t, err)
	assert.Equal(t, "node-1", eps[1].NodeName)
	assert.Equal(t, "node-0", eps[2].NodeName)

	srv, err := startBackends(topo, 8080)
	require.NoError(t, err)
	// The first connection across the underlay, right after New, is
	// answered at once: no SYN lost to a link not yet forwarding (a
	// retransmission would take a second).
	first, err := loadgen.RunClientProcess(context.Background(), topo.Clients[0].NS, topo.ClientCgroup.Path,
		loadgen.ClientSpec{Targets: []netip.AddrPort{netip.AddrPortFrom(topo.Nodes[1].Backends[0].Addr, 8080)}, Concurrency: 1, Duration: 10 * time.Second, Connections: 1})
	require.NoError(t, err)
	assert.Empty(t, first.Errors)
	assert.Equal(t, int64(1), first.Connections, "the one connection is in the window")
	assert.Zero(t, first.SynRetrans, "the first cross-node SYN was lost")
	assert.Less(t, first.Latency.Max, 200e3, "first cross-node connection took %.0f µs", first.Latency.Max)
	var targets []netip.AddrPort
	for _, b := range topo.Backends {
		targets = append(targets, netip.AddrPortFrom(b.Addr, 8080))
	}
	w, err := loadgen.RunClientProcess(context.Background(), topo.Clients[0].NS, topo.ClientCgroup.Path,
		loadgen.ClientSpec{Targets: targets, Concurrency: 4, Duration: 10 * time.Second, Connections: 600})
	require.NoError(t, err)
	assert.Empty(t, w.Errors)
	assert.Len(t, w.PerBackend, 12, "per-backend counts: %v", w.PerBackend)
	require.NoError(t, srv.Stop())

	require.NoError(t, topo.Close())
	assert.Empty(t, harnesstest.Leftovers(t, run.Prefix))
	assert.Equal(t, before, rootLinks(t))
}

// A build that fails at a later node removes what it made for the earlier
// ones too (node 0's cgroups are not yet the topology's own fields then).
func TestPrivilegedNodesFailedBuildLeavesNothing(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	cfg := Default(run.Prefix+"-topo", 4)
	cfg.Nodes = 3
	// A namespace already named as node 2's makes its creation fail.
	squat, err := nsutil.Create(nodeNSName(cfg.Prefix, 2))
	require.NoError(t, err)
	_, err = New(context.Background(), cfg)
	require.Error(t, err)
	require.NoError(t, squat.Close())
	assert.Empty(t, harnesstest.Leftovers(t, run.Prefix))
}
