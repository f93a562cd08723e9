package ipvs

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	libipvs "github.com/moby/ipvs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/twin6"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// requirePrivilegedIPVS skips unless the test runs as root on a kernel
// with IPVS and dummy interfaces; the skip message is the probe's, which
// names what the kernel lacks. On such a kernel every later failure fails.
func requirePrivilegedIPVS(t *testing.T) {
	t.Helper()
	baselinetest.RequireRoot(t, "creates network namespaces, dummy links and IPVS services")
	f, err := datapath.Lookup("ipvs")
	require.NoError(t, err)
	if err := f.Probe(); err != nil {
		require.ErrorIs(t, err, datapath.ErrUnsupported, "probe failed for another reason than a missing kernel feature")
		t.Skip(err.Error())
	}
}

// The probe must say what is missing, whichever answer it gives here.
func TestProbe(t *testing.T) {
	baselinetest.RequireRoot(t, "the probe creates a network namespace")
	err := probe()
	if err == nil {
		return
	}
	require.ErrorIs(t, err, datapath.ErrUnsupported)
	assert.Regexp(t, `^ipvs: kernel lacks (IP_VS|dummy interfaces|IP_VS and dummy interfaces) \(`, err.Error())
	t.Log(err)
}

// kernelView reads the node's IPVS table and kube-ipvs0 with handles of the
// test's own, independent of the datapath's.
type kernelView struct {
	services map[vsKey]*libipvs.Service
	dests    map[vsKey][]*libipvs.Destination
	linkUp   bool
	link     bool
	addrs    []string
}

func readKernel(t *testing.T, ns *nsutil.NS) kernelView {
	t.Helper()
	h, err := libipvs.New(ns.Path())
	require.NoError(t, err)
	defer h.Close()
	v := kernelView{services: map[vsKey]*libipvs.Service{}, dests: map[vsKey][]*libipvs.Destination{}}
	svcs, err := h.GetServices()
	require.NoError(t, err)
	for _, s := range svcs {
		vs, ok := fromIPVSService(s)
		require.True(t, ok, "unexpected IPVS service %+v", s)
		v.services[vs.key] = s
		ds, err := h.GetDestinations(s)
		require.NoError(t, err)
		v.dests[vs.key] = ds
	}
	nh, err := ns.NetlinkHandle()
	require.NoError(t, err)
	defer nh.Close()
	l, err := nh.LinkByName(linkName)
	if err != nil {
		return v
	}
	v.link = true
	v.linkUp = l.Attrs().Flags&net.FlagUp != 0
	assert.Equal(t, "dummy", l.Type(), "%s's type", linkName)
	as, err := nh.AddrList(l, unix.AF_UNSPEC)
	require.NoError(t, err)
	for _, a := range as {
		v.addrs = append(v.addrs, a.IPNet.String())
	}
	slices.Sort(v.addrs)
	return v
}

func destAddrs(ds []*libipvs.Destination) []string {
	var out []string
	for _, d := range ds {
		rs, err := fromIPVSDest(d)
		if err == nil {
			out = append(out, rs.addr.String())
		}
	}
	slices.Sort(out)
	return out
}

// TestPrivilegedApply programs a node namespace through the registered
// datapath: a service with 12 endpoints plus a TCP+UDP service, one
// without endpoints and an IPv6 one (an AF_INET6 virtual server on a /128),
// then a shrinking Apply, then Close, reading the kernel back after each
// step.
func TestPrivilegedApply(t *testing.T) {
	requirePrivilegedIPVS(t)
	ns := baselinetest.NewNS(t)
	f, err := datapath.Lookup("ipvs")
	require.NoError(t, err)
	dp := f.New()
	env := &datapath.Env{Node: ns, PodCIDR: netip.MustParsePrefix("10.244.0.0/16"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16")}
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, env))
	t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

	v := readKernel(t, ns)
	require.True(t, v.link, "Setup creates %s", linkName)
	assert.False(t, v.linkUp, "%s stays down, as kube-proxy leaves it", linkName)
	assert.Empty(t, v.services)

	web := webService(12)
	web6 := twin6.State(datapath.State{Services: []datapath.Service{webService(3)}}).Services[0]
	web6.Name = "web6"
	full := datapath.State{Services: []datapath.Service{web, dnsService(), emptyService(), web6}}
	start := time.Now()
	require.NoError(t, dp.Apply(ctx, full))
	t.Logf("Apply 4 services (5 virtual servers, 19 real servers): %v", time.Since(start).Round(time.Microsecond))

	webKey := vsKey{web.ClusterIP, 80, datapath.TCP}
	v = readKernel(t, ns)
	assert.Equal(t, []string{"10.96.0.10/32", "10.96.0.2/32", "10.96.0.20/32", "fd00:10:96::10/128"}, v.addrs, "every ClusterIP on %s", linkName)
	assert.Len(t, v.services, 5)
	web6Key := vsKey{web6.ClusterIP, 80, datapath.TCP}
	if assert.Contains(t, v.services, web6Key) {
		assert.Equal(t, uint16(unix.AF_INET6), v.services[web6Key].AddressFamily)
		assert.Equal(t, []string{"[fd00:10:244:1::1]:8080", "[fd00:10:244:1::2]:8080", "[fd00:10:244:1::3]:8080"}, destAddrs(v.dests[web6Key]), "IPv6 real servers")
	}
	for k, s := range v.services {
		assert.Equal(t, "rr", s.SchedName, "%s scheduler", k)
		assert.Equal(t, uint32(0), s.Flags&^flagHashed, "%s flags: no persistence", k)
	}
	require.Contains(t, v.dests, webKey)
	var wantWeb []string
	for _, ep := range web.Endpoints {
		wantWeb = append(wantWeb, netip.AddrPortFrom(ep.Addr, 8080).String())
	}
	slices.Sort(wantWeb)
	assert.Equal(t, wantWeb, destAddrs(v.dests[webKey]), "12 real servers on the target port")
	for _, d := range v.dests[webKey] {
		assert.Equal(t, 1, d.Weight)
		assert.Equal(t, uint32(libipvs.ConnectionFlagMasq), d.ConnectionFlags&libipvs.ConnectionFlagFwdMask, "masquerade forwarding")
	}
	assert.Len(t, v.dests[vsKey{netip.MustParseAddr("10.96.0.2"), 53, datapath.UDP}], 2, "UDP dns")
	assert.Len(t, v.dests[vsKey{netip.MustParseAddr("10.96.0.2"), 53, datapath.TCP}], 2, "TCP dns")
	assert.Empty(t, v.dests[vsKey{netip.MustParseAddr("10.96.0.20"), 80, datapath.TCP}], "no endpoints: a virtual server without real servers")
	assert.Equal(t, "19", dp.Info()["real_servers"])

	// The same state again changes nothing: the diff against the kernel
	// is empty.
	require.NoError(t, dp.Apply(ctx, full))
	assert.Equal(t, "0", dp.Info()["last_sync_changes"])

	// Drift is repaired: a real server deleted behind the datapath's back
	// comes back on the next sync.
	h, err := libipvs.New(ns.Path())
	require.NoError(t, err)
	require.NoError(t, h.DelDestination(v.services[webKey], v.dests[webKey][0]))
	h.Close()
	require.NoError(t, dp.Apply(ctx, full))
	assert.Equal(t, "1", dp.Info()["last_sync_changes"])
	assert.Len(t, readKernel(t, ns).dests[webKey], 12)

	// Shrink: 6 endpoints, the other services gone with their addresses.
	shrunk := datapath.State{Services: []datapath.Service{webService(6)}}
	require.NoError(t, dp.Apply(ctx, shrunk))
	v = readKernel(t, ns)
	assert.Equal(t, []string{"10.96.0.10/32"}, v.addrs)
	assert.Len(t, v.services, 1)
	assert.Len(t, v.dests[webKey], 6)
	assert.NotContains(t, destAddrs(v.dests[webKey]), "10.244.1.12:8080")

	require.NoError(t, dp.Close())
	v = readKernel(t, ns)
	assert.Empty(t, v.services, "Close deletes every virtual server")
	assert.False(t, v.link, "Close deletes %s", linkName)
	assert.NoError(t, dp.Close(), "a second Close is a no-op")
}

// Setup on a kernel without IPVS fails with an error that wraps
// ErrUnsupported and names IP_VS, and leaves nothing behind.
func TestPrivilegedSetupWithoutIPVS(t *testing.T) {
	baselinetest.RequireRoot(t, "creates a network namespace")
	ns := baselinetest.NewNS(t)
	nh, err := ns.NetlinkHandle()
	require.NoError(t, err)
	defer nh.Close()
	if checkIPVS(nh) == nil {
		t.Skip("this kernel has IP_VS: the path under test does not occur")
	}
	dp := &Datapath{}
	err = dp.Setup(context.Background(), &datapath.Env{Node: ns})
	require.Error(t, err)
	assert.True(t, errors.Is(err, datapath.ErrUnsupported), "%v", err)
	assert.Contains(t, err.Error(), "kernel lacks IP_VS")
	_, err = nh.LinkByName(linkName)
	assert.Error(t, err, "no %s left behind", linkName)
	assert.NoError(t, dp.Close())
}
