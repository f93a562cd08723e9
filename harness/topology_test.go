package harness

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/internal/nsutil"
)

// requireRoot skips a privileged test when not root, naming what is missing.
// CI runs as root, where these tests always run.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces and cgroups")
	}
}

// newTestRun takes a run lock whose prefix names every object of the test,
// released at the end of the test.
func newTestRun(t *testing.T) *RunLock {
	t.Helper()
	l, err := NewRun()
	require.NoError(t, err)
	t.Cleanup(l.Release)
	return l
}

func testTopologyConfig(prefix string, backends int) TopologyConfig {
	return TopologyConfig{
		Prefix:      prefix,
		Clients:     1,
		Backends:    backends,
		PodCIDR:     netip.MustParsePrefix("10.244.0.0/24"),
		ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16"),
	}
}

// leftovers lists every kernel object whose name carries prefix.
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	names, err := nsutil.List(prefix)
	require.NoError(t, err)
	for _, n := range names {
		out = append(out, "netns "+n)
	}
	mnt, err := Cgroup2Mount()
	require.NoError(t, err)
	ents, _ := os.ReadDir(mnt)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "cgroup "+filepath.Join(mnt, e.Name()))
		}
	}
	return out
}

func rootLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	require.NoError(t, err)
	return string(out)
}

func TestTopologyConfigValidate(t *testing.T) {
	good := testTopologyConfig("svclab-00000000", 12)
	tests := []struct {
		name   string
		mutate func(*TopologyConfig)
		field  string
	}{
		{"zero backends", func(c *TopologyConfig) { c.Backends = 0 }, "backends"},
		{"10000 backends", func(c *TopologyConfig) { c.Backends = 10000 }, "backends"},
		{"no clients", func(c *TopologyConfig) { c.Clients = 0 }, "clients"},
		{"pod CIDR too small", func(c *TopologyConfig) { c.PodCIDR = netip.MustParsePrefix("10.244.0.0/29") }, "pod_cidr"},
		{"overlapping CIDRs", func(c *TopologyConfig) { c.ServiceCIDR = netip.MustParsePrefix("10.244.0.0/16") }, "service_cidr"},
		{"IPv6 pod CIDR", func(c *TopologyConfig) { c.PodCIDR = netip.MustParsePrefix("fd00::/64") }, "pod_cidr"},
	}
	require.NoError(t, good.Validate())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mutate(&c)
			err := c.Validate()
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), tt.field+":"), "error %q should name field %s", err, tt.field)
		})
	}
}

func TestPrivilegedTopologyLeavesNothing(t *testing.T) {
	requireRoot(t)
	run := newTestRun(t)
	before := rootLinks(t)
	topo, err := NewTopology(context.Background(), testTopologyConfig(run.Prefix+"-topo", 12))
	require.NoError(t, err)
	assert.Len(t, topo.Backends, 12)
	assert.NotEmpty(t, leftovers(t, run.Prefix), "topology objects should exist while it is up")
	assert.Equal(t, before, rootLinks(t), "the root namespace's links must not change")

	// Direct pod-to-pod traffic through the node works: a server in every
	// backend and the client reaching each one.
	srv, err := StartServer(topo.Node, topo.ServerCgroup, BackendListeners(topo, 8080))
	require.NoError(t, err)
	var targets []netip.AddrPort
	for _, b := range topo.Backends {
		targets = append(targets, netip.AddrPortFrom(b.Addr, 8080))
	}
	w, err := RunClientProcess(context.Background(), topo.Clients[0].NS, topo.ClientCgroup,
		ClientSpec{Targets: targets, Concurrency: 4, Duration: 10 * time.Second, Connections: 600})
	require.NoError(t, err)
	assert.Empty(t, w.Errors)
	assert.Len(t, w.PerBackend, 12, "per-backend counts: %v", w.PerBackend)
	require.NoError(t, srv.Stop())

	require.NoError(t, topo.Close())
	assert.Empty(t, leftovers(t, run.Prefix))
	assert.Equal(t, before, rootLinks(t))
}

func TestPrivilegedCleanupStaleRemovesDeadRuns(t *testing.T) {
	requireRoot(t)
	run := newTestRun(t)
	topo, err := NewTopology(context.Background(), testTopologyConfig(run.Prefix+"-dead", 2))
	require.NoError(t, err)
	srv, err := StartServer(topo.Node, topo.ServerCgroup, BackendListeners(topo, 8080))
	require.NoError(t, err)
	defer srv.Stop()

	// While the run holds its lock its objects are left alone.
	_, err = CleanupStale()
	require.NoError(t, err)
	require.NotEmpty(t, leftovers(t, run.Prefix))

	// Dropping the lock is what a killed run looks like.
	run.Release()
	removed, err := CleanupStale()
	require.NoError(t, err)
	assert.NotEmpty(t, removed)
	assert.Empty(t, leftovers(t, run.Prefix))
}
