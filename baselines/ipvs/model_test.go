package ipvs

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	libipvs "github.com/moby/ipvs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/baselines/internal/twin6"
	"svclab/datapath"
)

func endpoints(n int, prefix string) []datapath.Endpoint {
	var eps []datapath.Endpoint
	for i := range n {
		eps = append(eps, datapath.Endpoint{Pod: fmt.Sprintf("b%02d", i), Addr: netip.MustParseAddr(fmt.Sprintf("%s.%d", prefix, i+1)), Ready: true, Serving: true})
	}
	return eps
}

func webService(n int) datapath.Service {
	return datapath.Service{Namespace: "bench", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}},
		Endpoints: endpoints(n, "10.244.1")}
}

func dnsService() datapath.Service {
	return datapath.Service{Namespace: "kube-system", Name: "dns", ClusterIP: netip.MustParseAddr("10.96.0.2"),
		Ports: []datapath.ServicePort{
			{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353},
			{Name: "dns-tcp", Protocol: datapath.TCP, Port: 53, TargetPort: 5353},
		},
		Endpoints: endpoints(2, "10.244.2")}
}

func emptyService() datapath.Service {
	return datapath.Service{Namespace: "bench", Name: "empty", ClusterIP: netip.MustParseAddr("10.96.0.20"),
		Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}}}
}

func opStrings(ops []op) []string {
	out := []string{}
	for _, o := range ops {
		out = append(out, o.String())
	}
	return out
}

func addrStrings(as []netip.Addr) []string {
	out := []string{}
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// What a State becomes in IPVS, shown as the commands that program it from
// an empty kernel.
func TestDesired(t *testing.T) {
	draining := webService(0)
	draining.Endpoints = []datapath.Endpoint{
		{Pod: "old", Addr: netip.MustParseAddr("10.244.3.1"), Serving: true, Terminating: true},
		{Pod: "new", Addr: netip.MustParseAddr("10.244.3.2"), Ready: true, Serving: true},
	}
	onlyTerminating := webService(0)
	onlyTerminating.Endpoints = []datapath.Endpoint{
		{Pod: "old", Addr: netip.MustParseAddr("10.244.3.1"), Serving: true, Terminating: true},
	}
	tests := []struct {
		name     string
		services []datapath.Service
		ops      []string
		vips     []string
	}{
		{"empty state", nil, []string{}, []string{}},
		{"one service, two endpoints", []datapath.Service{webService(2)}, []string{
			"add-service 10.96.0.10:80/TCP rr flags=0x0 timeout=0",
			"add-dest 10.96.0.10:80/TCP -> 10.244.1.1:8080 weight=1 fwd=0",
			"add-dest 10.96.0.10:80/TCP -> 10.244.1.2:8080 weight=1 fwd=0",
		}, []string{"10.96.0.10"}},
		{"same port on TCP and UDP, sorted by VIP, port, protocol", []datapath.Service{webService(1), dnsService()}, []string{
			"add-service 10.96.0.2:53/TCP rr flags=0x0 timeout=0",
			"add-dest 10.96.0.2:53/TCP -> 10.244.2.1:5353 weight=1 fwd=0",
			"add-dest 10.96.0.2:53/TCP -> 10.244.2.2:5353 weight=1 fwd=0",
			"add-service 10.96.0.2:53/UDP rr flags=0x0 timeout=0",
			"add-dest 10.96.0.2:53/UDP -> 10.244.2.1:5353 weight=1 fwd=0",
			"add-dest 10.96.0.2:53/UDP -> 10.244.2.2:5353 weight=1 fwd=0",
			"add-service 10.96.0.10:80/TCP rr flags=0x0 timeout=0",
			"add-dest 10.96.0.10:80/TCP -> 10.244.1.1:8080 weight=1 fwd=0",
		}, []string{"10.96.0.2", "10.96.0.10"}},
		{"no endpoints: a virtual server without real servers", []datapath.Service{emptyService()}, []string{
			"add-service 10.96.0.20:80/TCP rr flags=0x0 timeout=0",
		}, []string{"10.96.0.20"}},
		{"terminating endpoint left out while one is ready", []datapath.Service{draining}, []string{
			"add-service 10.96.0.10:80/TCP rr flags=0x0 timeout=0",
			"add-dest 10.96.0.10:80/TCP -> 10.244.3.2:8080 weight=1 fwd=0",
		}, []string{"10.96.0.10"}},
		{"only terminating endpoints still serve", []datapath.Service{onlyTerminating}, []string{
			"add-service 10.96.0.10:80/TCP rr flags=0x0 timeout=0",
			"add-dest 10.96.0.10:80/TCP -> 10.244.3.1:8080 weight=1 fwd=0",
		}, []string{"10.96.0.10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, vips, err := desired(datapath.State{Services: tt.services})
			require.NoError(t, err)
			assert.Equal(t, tt.ops, opStrings(diff(nil, want)))
			assert.Equal(t, tt.vips, addrStrings(vips))
		})
	}
}

func TestDesiredRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*datapath.State)
		errHas string
	}{
		{"IPv6 cluster IP, IPv4 endpoints", func(st *datapath.State) { st.Services[0].ClusterIP = netip.MustParseAddr("fd00::10") }, "service bench/web: endpoint 10.244.1.1 (b00) is not IPv6"},
		{"missing cluster IP", func(st *datapath.State) { st.Services[0].ClusterIP = netip.Addr{} }, "cluster IP invalid IP"},
		{"IPv6 endpoint", func(st *datapath.State) { st.Services[0].Endpoints[0].Addr = netip.MustParseAddr("fd00::1") }, "endpoint fd00::1 (b00) is not IPv4"},
		{"SCTP", func(st *datapath.State) { st.Services[0].Ports[0].Protocol = "SCTP" }, `protocol "SCTP"`},
		{"port 0", func(st *datapath.State) { st.Services[0].Ports[0].Port = 0 }, `port "http": port is 0`},
		{"target port 0", func(st *datapath.State) { st.Services[0].Ports[0].TargetPort = 0 }, "bench/web:80: target port is 0"},
		{"two services on one virtual server", func(st *datapath.State) {
			other := webService(1)
			other.Name = "other"
			st.Services = append(st.Services, other)
		}, "bench/other:80: virtual server 10.96.0.10:80/TCP already used by bench/web:80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := datapath.State{Services: []datapath.Service{webService(1)}}
			tt.mutate(&st)
			_, _, err := desired(st)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.errHas)
		})
	}
}

// TestAffinityIsPersistence: ClientIP affinity becomes the persistent
// flag with the timeout in seconds (the default when unset), per virtual
// server of the service; None leaves both zero; turning affinity on or off
// is an update of the service, not a re-creation that would drop its
// connections.
func TestAffinityIsPersistence(t *testing.T) {
	sticky := func(timeout time.Duration) datapath.Service {
		s := webService(2)
		s.SessionAffinity = datapath.SessionAffinityClientIP
		s.AffinityTimeout = timeout
		return s
	}
	k := vsKey{netip.MustParseAddr("10.96.0.10"), 80, datapath.TCP}
	tests := []struct {
		name           string
		svc            datapath.Service
		flags, timeout uint32
	}{
		{"None", webService(2), 0, 0},
		{"ClientIP 10m", sticky(10 * time.Minute), flagPersistent, 600},
		{"ClientIP default timeout", sticky(0), flagPersistent, 10800},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := mustDesired(t, tt.svc)
			assert.Equal(t, tt.flags, want[k].flags)
			assert.Equal(t, tt.timeout, want[k].timeout)
			ipvsSvc := toIPVSService(want[k])
			assert.Equal(t, tt.flags, ipvsSvc.Flags)
			assert.Equal(t, tt.timeout, ipvsSvc.Timeout)
			assert.Equal(t, uint32(netmask4), ipvsSvc.Netmask, "one persistence group per client address")
			back, ok := fromIPVSService(&libipvs.Service{AddressFamily: ipvsSvc.AddressFamily, Address: ipvsSvc.Address, Protocol: ipvsSvc.Protocol,
				Port: ipvsSvc.Port, SchedName: ipvsSvc.SchedName, Flags: ipvsSvc.Flags | flagHashed, Timeout: ipvsSvc.Timeout})
			require.True(t, ok)
			assert.Equal(t, tt.flags, back.flags, "read back without the kernel's hashed flag")
		})
	}
	t.Run("toggling affinity updates the service in place", func(t *testing.T) {
		assert.Equal(t, []string{"update-service 10.96.0.10:80/TCP rr flags=0x1 timeout=600"},
			opStrings(diff(mustDesired(t, webService(2)), mustDesired(t, sticky(10*time.Minute)))))
		assert.Equal(t, []string{"update-service 10.96.0.10:80/TCP rr flags=0x0 timeout=0"},
			opStrings(diff(mustDesired(t, sticky(10*time.Minute)), mustDesired(t, webService(2)))))
	})
	t.Run("sub-second timeout is rejected", func(t *testing.T) {
		_, _, err := desired(datapath.State{Services: []datapath.Service{sticky(time.Millisecond)}})
		assert.ErrorContains(t, err, "affinity timeout 1ms")
	})
}

func mustDesired(t *testing.T, svcs ...datapath.Service) table {
	t.Helper()
	want, _, err := desired(datapath.State{Services: svcs})
	require.NoError(t, err)
	return want
}

// The commands between two states: only what differs, real servers added
// before any is deleted, services deleted last.
func TestDiff(t *testing.T) {
	rr := mustDesired(t, webService(3))
	wrr := mustDesired(t, webService(3))
	wrr[vsKey{netip.MustParseAddr("10.96.0.10"), 80, datapath.TCP}].scheduler = "wrr"
	heavy := mustDesired(t, webService(3))
	k := vsKey{netip.MustParseAddr("10.96.0.10"), 80, datapath.TCP}
	a2 := netip.MustParseAddrPort("10.244.1.2:8080")
	heavy[k].dests[a2] = realServer{addr: a2, weight: 5, forward: forward}
	replaced := mustDesired(t, webService(3))
	delete(replaced[k].dests, a2)
	a9 := netip.MustParseAddrPort("10.244.1.9:8080")
	replaced[k].dests[a9] = realServer{addr: a9, weight: weight, forward: forward}

	tests := []struct {
		name       string
		have, want table
		ops        []string
	}{
		{"identical", mustDesired(t, webService(3), dnsService()), mustDesired(t, webService(3), dnsService()), []string{}},
		{"endpoint added", mustDesired(t, webService(2)), mustDesired(t, webService(3)), []string{
			"add-dest 10.96.0.10:80/TCP -> 10.244.1.3:8080 weight=1 fwd=0",
		}},
		{"endpoints removed", mustDesired(t, webService(12)), mustDesired(t, webService(10)), []string{
			"del-dest 10.96.0.10:80/TCP -> 10.244.1.11:8080",
			"del-dest 10.96.0.10:80/TCP -> 10.244.1.12:8080",
		}},
		{"endpoint replaced: add before delete", rr, replaced, []string{
			"add-dest 10.96.0.10:80/TCP -> 10.244.1.9:8080 weight=1 fwd=0",
			"del-dest 10.96.0.10:80/TCP -> 10.244.1.2:8080",
		}},
		{"scheduler drifted", wrr, rr, []string{"update-service 10.96.0.10:80/TCP rr flags=0x0 timeout=0"}},
		{"weight drifted", heavy, rr, []string{"update-dest 10.96.0.10:80/TCP -> 10.244.1.2:8080 weight=1 fwd=0"}},
		{"service removed", mustDesired(t, webService(1), dnsService()), mustDesired(t, webService(1)), []string{
			"del-service 10.96.0.2:53/TCP",
			"del-service 10.96.0.2:53/UDP",
		}},
		{"everything removed", mustDesired(t, webService(1), emptyService()), nil, []string{
			"del-service 10.96.0.10:80/TCP",
			"del-service 10.96.0.20:80/TCP",
		}},
		{"all endpoints gone: the service stays, empty", mustDesired(t, webService(2)), mustDesired(t, webService(0)), []string{
			"del-dest 10.96.0.10:80/TCP -> 10.244.1.1:8080",
			"del-dest 10.96.0.10:80/TCP -> 10.244.1.2:8080",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.ops, opStrings(diff(tt.have, tt.want)))
		})
	}
}

// The netlink structures: what is sent, and what comes back from a kernel
// (which adds the hashed flag and returns IPv4 destinations in 16 bytes),
// for IPv4 services and their IPv6 twins (AF_INET6, netmask 128 as
// kube-proxy sets it).
func TestConversions(t *testing.T) {
	v4 := datapath.State{Services: []datapath.Service{webService(1), dnsService()}}
	tests := []struct {
		name    string
		st      datapath.State
		af      uint16
		netmask uint32
	}{
		{"IPv4", v4, unix.AF_INET, netmask4},
		{"IPv6", twin6.State(v4), unix.AF_INET6, netmask6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, _, err := desired(tt.st)
			require.NoError(t, err)
			require.Len(t, want, 3)
			for _, k := range want.keys() {
				vs := want[k]
				s := toIPVSService(vs)
				assert.Equal(t, tt.af, s.AddressFamily)
				assert.Equal(t, net.IP(k.addr.AsSlice()), s.Address)
				assert.Equal(t, tt.netmask, s.Netmask)
				assert.Equal(t, "rr", s.SchedName)
				fromKernel := *s
				fromKernel.Flags |= flagHashed
				fromKernel.Address = fromKernel.Address.To16()
				back, ok := fromIPVSService(&fromKernel)
				require.True(t, ok, "%s", k)
				assert.Equal(t, k, back.key)
				assert.Equal(t, vs.flags, back.flags, "the hashed flag is the kernel's, not a difference")
				for _, rs := range vs.dests {
					d := toIPVSDest(rs)
					assert.Equal(t, tt.af, d.AddressFamily)
					assert.Equal(t, uint32(libipvs.ConnectionFlagMasq), d.ConnectionFlags)
					assert.Equal(t, 1, d.Weight)
					d.Address = d.Address.To16()
					got, err := fromIPVSDest(d)
					require.NoError(t, err)
					assert.Equal(t, rs, got)
				}
			}
		})
	}
	protoOf := map[datapath.Protocol]uint16{datapath.TCP: unix.IPPROTO_TCP, datapath.UDP: unix.IPPROTO_UDP}
	for p, n := range protoOf {
		assert.Equal(t, n, toIPVSService(&virtualServer{key: vsKey{netip.MustParseAddr("10.96.0.1"), 1, p}}).Protocol)
	}
	// Services this baseline never creates are not read as its own.
	for name, s := range map[string]*libipvs.Service{
		"firewall mark":           {AddressFamily: unix.AF_INET, FWMark: 7, SchedName: "rr"},
		"IPv4-mapped in AF_INET6": {AddressFamily: unix.AF_INET6, Address: net.ParseIP("::ffff:10.96.0.1"), Protocol: unix.IPPROTO_TCP, Port: 80},
		"IPv6 in AF_INET":         {AddressFamily: unix.AF_INET, Address: net.ParseIP("fd00::1"), Protocol: unix.IPPROTO_TCP, Port: 80},
		"SCTP":                    {AddressFamily: unix.AF_INET, Address: net.ParseIP("10.96.0.1").To4(), Protocol: unix.IPPROTO_SCTP, Port: 80},
	} {
		_, ok := fromIPVSService(s)
		assert.False(t, ok, name)
	}
}

// fakeKernel is an in-memory IPVS table that answers like the kernel: it
// refuses duplicates and missing objects, and reads services back with the
// hashed flag set.
type fakeKernel struct {
	svcs  map[string]*fakeService
	order []string
	calls int
}

type fakeService struct {
	s     libipvs.Service
	dests map[string]libipvs.Destination
}

func newFakeKernel() *fakeKernel { return &fakeKernel{svcs: map[string]*fakeService{}} }

func svcID(s *libipvs.Service) string {
	return fmt.Sprintf("%d/%s/%d/%d", s.AddressFamily, net.IP(s.Address), s.Port, s.Protocol)
}

func dstID(d *libipvs.Destination) string { return fmt.Sprintf("%s/%d", d.Address, d.Port) }

func (k *fakeKernel) GetServices() ([]*libipvs.Service, error) {
	var out []*libipvs.Service
	for _, id := range k.order {
		s := k.svcs[id].s
		s.Flags |= flagHashed
		out = append(out, &s)
	}
	return out, nil
}

func (k *fakeKernel) GetDestinations(s *libipvs.Service) ([]*libipvs.Destination, error) {
	fs, ok := k.svcs[svcID(s)]
	if !ok {
		return nil, unix.ESRCH
	}
	var out []*libipvs.Destination
	for _, d := range fs.dests {
		d.Address = d.Address.To16()
		out = append(out, &d)
	}
	return out, nil
}

func (k *fakeKernel) NewService(s *libipvs.Service) error {
	k.calls++
	id := svcID(s)
	if _, ok := k.svcs[id]; ok {
		return unix.EEXIST
	}
	k.svcs[id] = &fakeService{s: *s, dests: map[string]libipvs.Destination{}}
	k.order = append(k.order, id)
	return nil
}

func (k *fakeKernel) UpdateService(s *libipvs.Service) error {
	k.calls++
	fs, ok := k.svcs[svcID(s)]
	if !ok {
		return unix.ESRCH
	}
	fs.s = *s
	return nil
}

func (k *fakeKernel) DelService(s *libipvs.Service) error {
	k.calls++
	id := svcID(s)
	if _, ok := k.svcs[id]; !ok {
		return unix.ESRCH
	}
	delete(k.svcs, id)
	k.order = slices.DeleteFunc(k.order, func(x string) bool { return x == id })
	return nil
}

func (k *fakeKernel) NewDestination(s *libipvs.Service, d *libipvs.Destination) error {
	k.calls++
	fs, ok := k.svcs[svcID(s)]
	if !ok {
		return unix.ESRCH
	}
	if _, ok := fs.dests[dstID(d)]; ok {
		return unix.EEXIST
	}
	fs.dests[dstID(d)] = *d
	return nil
}

func (k *fakeKernel) UpdateDestination(s *libipvs.Service, d *libipvs.Destination) error {
	k.calls++
	fs, ok := k.svcs[svcID(s)]
	if !ok {
		return unix.ESRCH
	}
	if _, ok := fs.dests[dstID(d)]; !ok {
		return unix.ENOENT
	}
	fs.dests[dstID(d)] = *d
	return nil
}

func (k *fakeKernel) DelDestination(s *libipvs.Service, d *libipvs.Destination) error {
	k.calls++
	fs, ok := k.svcs[svcID(s)]
	if !ok {
		return unix.ESRCH
	}
	if _, ok := fs.dests[dstID(d)]; !ok {
		return unix.ENOENT
	}
	delete(fs.dests, dstID(d))
	return nil
}

func (k *fakeKernel) Close() {}

// syncTo is Apply's IPVS half: read what is installed, diff, execute.
func syncTo(t *testing.T, k *fakeKernel, owned func(netip.Addr) bool, want table) int {
	t.Helper()
	have, err := installed(k, owned)
	require.NoError(t, err)
	ops := diff(have, want)
	require.NoError(t, execute(k, ops))
	return len(ops)
}

// A sequence of syncs against the in-memory kernel: the declarative loop
// converges, does nothing when nothing changed, repairs drift, and never
// touches a service it does not own.
func TestSyncAgainstFakeKernel(t *testing.T) {
	k := newFakeKernel()
	foreign := &libipvs.Service{AddressFamily: unix.AF_INET, Address: net.ParseIP("192.0.2.1").To4(), Protocol: unix.IPPROTO_TCP, Port: 443, SchedName: "wlc", Netmask: netmask4}
	require.NoError(t, k.NewService(foreign))
	owned := func(a netip.Addr) bool {
		return netip.MustParsePrefix("10.96.0.0/16").Contains(a) || netip.MustParsePrefix("fd00:10:96::/48").Contains(a)
	}

	full := mustDesired(t, webService(12), dnsService(), emptyService())
	// Dual-stack: web's IPv6 twin beside the IPv4 services.
	web6 := twin6.State(datapath.State{Services: []datapath.Service{webService(3)}}).Services[0]
	web6.Name = "web6"
	dual := mustDesired(t, webService(6), web6)
	steps := []struct {
		name    string
		before  func()
		want    table
		changes int
	}{
		{"first sync: 4 services, 16 real servers", nil, full, 4 + 12 + 2 + 2},
		{"same state again: nothing to do", nil, full, 0},
		{"shrink: 6 endpoints, dns and empty gone", nil, mustDesired(t, webService(6)), 6 + 3},
		{"drift: a real server deleted behind our back is restored", func() {
			s := toIPVSService(full[vsKey{netip.MustParseAddr("10.96.0.10"), 80, datapath.TCP}])
			require.NoError(t, k.DelDestination(s, &libipvs.Destination{Address: net.ParseIP("10.244.1.3").To4(), Port: 8080}))
		}, mustDesired(t, webService(6)), 1},
		{"dual-stack: an IPv6 virtual server with 3 real servers added", nil, dual, 1 + 3},
		{"dual-stack again: nothing to do", nil, dual, 0},
		{"everything removed", nil, nil, 2},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		assert.Equal(t, s.changes, syncTo(t, k, owned, s.want), s.name)
		have, err := installed(k, owned)
		require.NoError(t, err)
		assert.Empty(t, diff(have, s.want), "%s: the kernel holds the wanted state", s.name)
	}
	all, err := k.GetServices()
	require.NoError(t, err)
	require.Len(t, all, 1, "only the foreign service is left")
	assert.Equal(t, "wlc", all[0].SchedName)
}

// A failed command does not stop the others; the error names each failure.
func TestExecuteGoesOnAfterErrors(t *testing.T) {
	k := newFakeKernel()
	want := mustDesired(t, webService(2), emptyService())
	ops := diff(nil, want)
	// Pre-create one service: its add fails with EEXIST, everything else
	// still happens.
	require.NoError(t, k.NewService(toIPVSService(want[vsKey{netip.MustParseAddr("10.96.0.20"), 80, datapath.TCP}])))
	err := execute(k, ops)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "add-service 10.96.0.20:80/TCP rr flags=0x0 timeout=0: file exists")
	have, err := installed(k, func(netip.Addr) bool { return true })
	require.NoError(t, err)
	assert.Empty(t, diff(have, want))
}
