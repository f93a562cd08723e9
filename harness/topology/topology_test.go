package topology

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"svclab/datapath"
	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func rootLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	require.NoError(t, err)
	return string(out)
}

func TestTopologyConfigValidate(t *testing.T) {
	good := Default("svclab-00000000", 12)
	tests := []invalidCase{
		{"zero backends", func(c *Config) { c.Backends = 0 }, "backends"},
		{"10000 backends", func(c *Config) { c.Backends = 10000 }, "backends"},
		{"no clients", func(c *Config) { c.Clients = 0 }, "clients"},
		{"pod CIDR too small", func(c *Config) { c.PodCIDR = netip.MustParsePrefix("10.244.0.0/29") }, "podCIDR"},
		{"overlapping CIDRs", func(c *Config) { c.ServiceCIDR = netip.MustParsePrefix("10.244.0.0/16") }, "serviceCIDR"},
		{"IPv6 pod CIDR", func(c *Config) { c.PodCIDR = netip.MustParsePrefix("fd00::/64") }, "podCIDR"},
	}
	checkInvalid(t, good, tests)
}

// invalidCase is a change to a valid Config that Validate must refuse,
// naming field.
type invalidCase struct {
	name   string
	mutate func(*Config)
	field  string
}

// checkInvalid checks that good validates and each case's change of it is
// refused with an error that starts with the case's field.
func checkInvalid(t *testing.T, good Config, tests []invalidCase) {
	t.Helper()
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
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	before := rootLinks(t)
	topo, err := New(context.Background(), Default(run.Prefix+"-topo", 12))
	require.NoError(t, err)
	assert.Len(t, topo.Backends, 12)
	assert.NotEmpty(t, harnesstest.Leftovers(t, run.Prefix), "topology objects should exist while it is up")

	// Every pod's processes, and the hostNetwork client's, are under the
	// node cgroup a socket-level datapath attaches to, each role in its
	// own child for CPU accounting.
	assert.Equal(t, topo.NodeCgroup.Path, topo.Env().NodeCgroup)
	assert.Equal(t, topo.CgroupDir(), filepath.Dir(topo.NodeCgroup.Path))
	for _, tc := range []struct {
		pod  datapath.Pod
		want string
	}{
		{topo.Clients[0], topo.ClientCgroup.Path},
		{topo.Backends[3], topo.ServerCgroup.Path},
		{topo.Host, topo.HostCgroup.Path},
	} {
		got := topo.PodCgroup(tc.pod)
		assert.Equal(t, tc.want, got, tc.pod.Name)
		assert.Equal(t, topo.NodeCgroup.Path, filepath.Dir(got), "%s's cgroup is a child of the node cgroup", tc.pod.Name)
	}
	assert.Equal(t, topo.Node, topo.Host.NS, "the hostNetwork client is in the node namespace")
	assert.Equal(t, before, rootLinks(t), "the root namespace's links must not change")

	// Direct pod-to-pod traffic through the node works: a server in every
	// backend and the client reaching each one.
	srv, err := startBackends(topo, 8080)
	require.NoError(t, err)
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

// startBackends starts the backend server answering on port in every
// backend pod of topo, as a world does.
func startBackends(topo *Topology, port uint16) (*loadgen.ServerProcess, error) {
	return loadgen.StartServer(topo.Node, topo.ServerCgroup.Path, loadgen.BackendListeners(topo.Backends, port, topo.ExtraEndpoints() > 0))
}
