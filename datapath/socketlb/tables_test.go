package socketlb

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/lbmaps"
	"svclab/internal/lbmaps/lbmapstest"
)

// rawBytes returns a map key or value exactly as cilium/ebpf hands it to the
// kernel: its in-memory representation.
func rawBytes[T any](v T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&v)), unsafe.Sizeof(v))
}

func ep(pod, addr string) datapath.Endpoint {
	return datapath.Endpoint{Pod: pod, Addr: netip.MustParseAddr(addr), Ready: true, Serving: true}
}

// svc builds a one-port TCP service.
func svc(name, vip string, port, target uint16, eps ...datapath.Endpoint) datapath.Service {
	return svcProto(name, vip, datapath.TCP, port, target, eps...)
}

// svcProto builds a one-port service of the given protocol.
func svcProto(name, vip string, proto datapath.Protocol, port, target uint16, eps ...datapath.Endpoint) datapath.Service {
	s := datapath.Service{Namespace: "ns", Name: name, Ports: []datapath.ServicePort{{Name: "p", Protocol: proto, Port: port, TargetPort: target}}, Endpoints: eps}
	if vip != "" {
		s.ClusterIP = netip.MustParseAddr(vip)
	}
	return s
}

func TestEntryByteOrder(t *testing.T) {
	mapped := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{"IPv4 service key is v4-mapped", rawBytes(svcKey(netip.MustParseAddr("10.96.0.10"), 80, ipprotoTCP)), append(slices.Clone(mapped), 10, 96, 0, 10, 0, 80, 6, 0)},
		{"v4-mapped address gives the same key", rawBytes(svcKey(netip.MustParseAddr("::ffff:10.96.0.10"), 80, ipprotoTCP)), append(slices.Clone(mapped), 10, 96, 0, 10, 0, 80, 6, 0)},
		{"IPv6 service key", rawBytes(svcKey(netip.MustParseAddr("fd00::1:2"), 0x1f90, ipprotoUDP)), []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0x1f, 0x90, 17, 0}},
		{"backend entry", rawBytes(backendEntry(netip.MustParseAddrPort("10.244.1.5:8080"))), append(slices.Clone(mapped), 10, 244, 1, 5, 0x1f, 0x90, 0, 0)},
		{"backend key", rawBytes(socketlbBackendKey{SvcId: 0x01020304, Slot: 5}), []byte{4, 3, 2, 1, 5, 0, 0, 0}},
		{"service entry with affinity", rawBytes(socketlbSvcEntry{Id: 7, Count: 3, Flags: svcFlagAffinity, AffinityTimeoutMs: 1000}), []byte{7, 0, 0, 0, 3, 0, 1, 0, 0xe8, 3, 0, 0}},
		{"member key", rawBytes(memberKey(2, backendEntry(netip.MustParseAddrPort("10.0.0.1:53")))), append(append([]byte{2, 0, 0, 0}, mapped...), 10, 0, 0, 1, 0, 53, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.got)
		})
	}

	t.Run("round trips", func(t *testing.T) {
		for _, s := range []string{"192.168.7.9:65534", "[fd00::7]:53"} {
			ap := netip.MustParseAddrPort(s)
			assert.Equal(t, ap, backendEntry(ap).addrPort())
			assert.Equal(t, ap, svcKey(ap.Addr(), ap.Port(), ipprotoTCP).addrPort())
		}
	})
}

func TestMapSpecsMatchGoSide(t *testing.T) {
	spec, err := loadSocketlb()
	require.NoError(t, err)

	tests := []struct {
		name       string
		typ        ebpf.MapType
		maxEntries uint32
		key, value any
		noPrealloc bool
	}{
		{socketlbMapSvclabServices, ebpf.Hash, maxServices, socketlbSvcKey{}, socketlbSvcEntry{}, true},
		{socketlbMapSvclabBackends, ebpf.Hash, maxBackends, socketlbBackendKey{}, socketlbBackendEntry{}, true},
		{socketlbMapSvclabMembers, ebpf.Hash, maxBackends, socketlbMemberKey{}, uint32(0), true},
		{socketlbMapSvclabAffinity, ebpf.LRUHash, maxAffinity, socketlbAffinityKey{}, socketlbAffinityEntry{}, false},
		{socketlbMapSvclabRevnat, ebpf.LRUHash, maxRevNAT, socketlbRevnatKey{}, socketlbRevnatEntry{}, false},
		{socketlbMapSvclabSock, ebpf.SkStorage, 0, int32(0), socketlbSockState{}, true},
		{socketlbMapSvclabSvcCtr, ebpf.PerCPUHash, maxServices, uint32(0), socketlbSvcCounter{}, true},
		{socketlbMapSvclabBeCtr, ebpf.PerCPUHash, maxBackends, socketlbMemberKey{}, uint64(0), true},
	}
	require.Len(t, spec.Maps, len(tests)+1, "every map is checked here (plus .rodata)")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := spec.Maps[tt.name]
			require.NotNil(t, m, "map %s missing from the ELF", tt.name)
			assert.Equal(t, tt.typ, m.Type)
			assert.Equal(t, tt.maxEntries, m.MaxEntries, "max_entries must match the Go capacity check")
			assert.Equal(t, uint32(reflect.TypeOf(tt.key).Size()), m.KeySize)
			assert.Equal(t, uint32(reflect.TypeOf(tt.value).Size()), m.ValueSize)
			assert.Equal(t, tt.noPrealloc, m.Flags&unix.BPF_F_NO_PREALLOC != 0, "BPF_F_NO_PREALLOC")
			assert.LessOrEqual(t, len(m.Name), 15, "kernel object names are cut at 15 bytes")
		})
	}

	var progs []string
	for name, p := range spec.Programs {
		progs = append(progs, name)
		assert.Regexp(t, `^svclab_`, name)
		if name == socketlbProgSvclabUdpDestroy {
			assert.Equal(t, ebpf.Tracing, p.Type)
			assert.Equal(t, ebpf.AttachTraceIter, p.AttachType)
			assert.Equal(t, "udp", p.AttachTo)
			continue
		}
		assert.Equal(t, ebpf.CGroupSockAddr, p.Type, name)
	}
	assert.Len(t, progs, len(hooks)+1)
	for _, h := range hooks {
		p := spec.Programs[h.prog]
		require.NotNil(t, p, "program for hook %s", h.name)
		assert.Equal(t, h.attach, p.AttachType, h.name)
	}
}

func TestFrontends(t *testing.T) {
	be := func(s string) socketlbBackendEntry { return backendEntry(netip.MustParseAddrPort(s)) }
	key := func(s string, proto uint8) socketlbSvcKey {
		ap := netip.MustParseAddrPort(s)
		return svcKey(ap.Addr(), ap.Port(), proto)
	}
	meta := func(name, vip string, proto datapath.Protocol) frontendMeta {
		ap := netip.MustParseAddrPort(vip)
		return frontendMeta{service: "ns/" + name, port: ap.Port(), protocol: proto, vip: ap}
	}
	notReady := ep("old", "10.0.0.9")
	notReady.Ready = false
	terminating := ep("term", "10.0.0.8")
	terminating.Terminating = true

	multi := svc("multi", "10.96.0.20", 80, 8080, ep("a", "10.0.0.1"))
	multi.Ports = append(multi.Ports, datapath.ServicePort{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353})
	sticky := svc("sticky", "10.96.0.21", 80, 8080, ep("a", "10.0.0.1"))
	sticky.SessionAffinity = datapath.SessionAffinityClientIP
	stickyShort := sticky
	stickyShort.AffinityTimeout = 1500 * time.Microsecond

	tests := []struct {
		name string
		st   datapath.State
		want []frontend
	}{
		{
			name: "target port applied to every endpoint",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"), ep("b", "10.0.0.2"))}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), meta: meta("web", "10.96.0.10:80", datapath.TCP), backends: []socketlbBackendEntry{be("10.0.0.1:8080"), be("10.0.0.2:8080")}, pods: []string{"a", "b"}}},
		},
		{
			name: "target port defaults to port",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 0, ep("a", "10.0.0.1"))}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), meta: meta("web", "10.96.0.10:80", datapath.TCP), backends: []socketlbBackendEntry{be("10.0.0.1:80")}, pods: []string{"a"}}},
		},
		{
			name: "only ready endpoints, duplicates once",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"), notReady, ep("a2", "10.0.0.1"), terminating)}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), meta: meta("web", "10.96.0.10:80", datapath.TCP), backends: []socketlbBackendEntry{be("10.0.0.1:8080")}, pods: []string{"a"}}},
		},
		{
			name: "serving terminating endpoints when none is ready",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 8080, notReady, terminating)}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), meta: meta("web", "10.96.0.10:80", datapath.TCP), backends: []socketlbBackendEntry{be("10.0.0.8:8080")}, pods: []string{"term"}}},
		},
		{
			name: "no endpoints still installs the service",
			st:   datapath.State{Services: []datapath.Service{svc("empty", "10.96.0.11", 80, 8080)}},
			want: []frontend{{key: key("10.96.0.11:80", ipprotoTCP), meta: meta("empty", "10.96.0.11:80", datapath.TCP)}},
		},
		{
			name: "one frontend per port and protocol",
			st:   datapath.State{Services: []datapath.Service{multi}},
			want: []frontend{
				{key: key("10.96.0.20:80", ipprotoTCP), meta: meta("multi", "10.96.0.20:80", datapath.TCP), backends: []socketlbBackendEntry{be("10.0.0.1:8080")}, pods: []string{"a"}},
				{key: key("10.96.0.20:53", ipprotoUDP), meta: meta("multi", "10.96.0.20:53", datapath.UDP), backends: []socketlbBackendEntry{be("10.0.0.1:5353")}, pods: []string{"a"}},
			},
		},
		{
			name: "IPv6 service",
			st:   datapath.State{Services: []datapath.Service{svc("v6", "fd00:96::10", 80, 8080, ep("a", "fd00:244::1"))}},
			want: []frontend{{key: key("[fd00:96::10]:80", ipprotoTCP), meta: meta("v6", "[fd00:96::10]:80", datapath.TCP), backends: []socketlbBackendEntry{be("[fd00:244::1]:8080")}, pods: []string{"a"}}},
		},
		{
			name: "ClientIP affinity with the Kubernetes default timeout",
			st:   datapath.State{Services: []datapath.Service{sticky}},
			want: []frontend{{key: key("10.96.0.21:80", ipprotoTCP), meta: meta("sticky", "10.96.0.21:80", datapath.TCP), affinityMs: 10800 * 1000, backends: []socketlbBackendEntry{be("10.0.0.1:8080")}, pods: []string{"a"}}},
		},
		{
			name: "affinity timeout rounds up to milliseconds",
			st:   datapath.State{Services: []datapath.Service{stickyShort}},
			want: []frontend{{key: key("10.96.0.21:80", ipprotoTCP), meta: meta("sticky", "10.96.0.21:80", datapath.TCP), affinityMs: 2, backends: []socketlbBackendEntry{be("10.0.0.1:8080")}, pods: []string{"a"}}},
		},
		{
			name: "headless service skipped",
			st:   datapath.State{Services: []datapath.Service{svc("headless", "", 80, 8080, ep("a", "10.0.0.1"))}},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := frontends(tt.st)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestFrontendsRejects(t *testing.T) {
	sctp := svc("sctp", "10.96.0.10", 80, 80)
	sctp.Ports[0].Protocol = "SCTP"
	badAffinity := svc("aff", "10.96.0.10", 80, 80)
	badAffinity.SessionAffinity = "Cookie"
	longAffinity := svc("aff", "10.96.0.10", 80, 80)
	longAffinity.SessionAffinity = datapath.SessionAffinityClientIP
	longAffinity.AffinityTimeout = 86401 * time.Second

	tests := []struct {
		name    string
		st      datapath.State
		wantErr error
		wantMsg string
	}{
		{"IPv6 endpoint of an IPv4 service", datapath.State{Services: []datapath.Service{svc("v6ep", "10.96.0.10", 80, 80, ep("a", "fd00::1"))}}, ErrUnsupportedService, "endpoint fd00::1 (a) is not of the ClusterIP's family"},
		{"IPv4 endpoint of an IPv6 service", datapath.State{Services: []datapath.Service{svc("v4ep", "fd00::10", 80, 80, ep("a", "10.0.0.1"))}}, ErrUnsupportedService, "endpoint 10.0.0.1 (a) is not of the ClusterIP's family"},
		{"unknown protocol", datapath.State{Services: []datapath.Service{sctp}}, ErrUnsupportedService, `protocol "SCTP"`},
		{"unknown affinity", datapath.State{Services: []datapath.Service{badAffinity}}, ErrUnsupportedService, `session affinity "Cookie"`},
		{"affinity timeout beyond Kubernetes' limit", datapath.State{Services: []datapath.Service{longAffinity}}, ErrUnsupportedService, "affinity timeout 24h0m1s"},
		{"port zero", datapath.State{Services: []datapath.Service{svc("zero", "10.96.0.10", 0, 80)}}, ErrUnsupportedService, "port 0"},
		{"duplicate frontend", datapath.State{Services: []datapath.Service{svc("a", "10.96.0.10", 80, 80), svc("b", "10.96.0.10", 80, 81)}}, ErrUnsupportedService, "already used by ns/a:80"},
		{"duplicate frontend through a v4-mapped ClusterIP", datapath.State{Services: []datapath.Service{svc("a", "10.96.0.10", 80, 80), svc("b", "::ffff:10.96.0.10", 80, 81)}}, ErrUnsupportedService, "already used by ns/a:80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := frontends(tt.st)
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.wantErr)
			assert.Contains(t, err.Error(), tt.wantMsg)
		})
	}

	t.Run("too many backends for one service", func(t *testing.T) {
		eps := make([]datapath.Endpoint, maxServiceBackends+1)
		for i := range eps {
			eps[i] = datapath.Endpoint{Addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), Ready: true}
		}
		_, err := frontends(datapath.State{Services: []datapath.Service{svc("big", "10.96.0.10", 80, 80, eps...)}})
		assert.ErrorIs(t, err, ErrCapacity)
	})
}

// fmtOp renders an op with its value, for readable plan expectations.
func fmtOp(o op) string {
	switch o.kind {
	case lbmaps.PutBackend:
		return fmt.Sprintf("%s = %s", o, o.bval.addrPort())
	case lbmaps.PutService:
		s := fmt.Sprintf("%s = id %d count %d", o, o.sval.Id, o.sval.Count)
		if o.sval.Flags&svcFlagAffinity != 0 {
			s += fmt.Sprintf(" affinity %dms", o.sval.AffinityTimeoutMs)
		}
		return s
	case lbmaps.PutMember:
		return fmt.Sprintf("%s = slot %d", o, o.mval)
	default:
		return o.String()
	}
}

func TestPlan(t *testing.T) {
	web := func(eps ...datapath.Endpoint) datapath.Service { return svc("web", "10.96.0.10", 80, 8080, eps...) }
	a, b, c, d := ep("a", "10.0.0.1"), ep("b", "10.0.0.2"), ep("c", "10.0.0.3"), ep("d", "10.0.0.4")
	st := func(svcs ...datapath.Service) datapath.State { return datapath.State{Services: svcs} }
	sticky := web(a)
	sticky.SessionAffinity = datapath.SessionAffinityClientIP
	sticky.AffinityTimeout = 30 * time.Second

	tests := []struct {
		name string
		// before is applied first (its ops are not checked), then after.
		before datapath.State
		after  datapath.State
		want   []string
	}{
		{
			name:  "first apply writes backends and members before the service",
			after: st(web(a, b)),
			want: []string{
				"put backend 1/0 = 10.0.0.1:8080",
				"put backend 1/1 = 10.0.0.2:8080",
				"put member 1/10.0.0.1:8080 = slot 0",
				"put member 1/10.0.0.2:8080 = slot 1",
				"put service 10.96.0.10:80/6 = id 1 count 2",
			},
		},
		{
			name:   "identical state changes nothing",
			before: st(web(a, b, c)),
			after:  st(web(a, b, c)),
			want:   nil,
		},
		{
			name:   "endpoint order alone changes nothing",
			before: st(web(a, b, c)),
			after:  st(web(c, a, b)),
			want:   nil,
		},
		{
			name:   "removing a middle endpoint drops its membership first, then moves the last into its slot",
			before: st(web(a, b, c)),
			after:  st(web(a, c)),
			want: []string{
				"delete member 1/10.0.0.2:8080",
				"put backend 1/1 = 10.0.0.3:8080",
				"put member 1/10.0.0.3:8080 = slot 1",
				"put service 10.96.0.10:80/6 = id 1 count 2",
				"delete backend 1/2",
			},
		},
		{
			name:   "adding an endpoint fills a new slot before growing the count",
			before: st(web(a, b)),
			after:  st(web(a, b, c)),
			want: []string{
				"put backend 1/2 = 10.0.0.3:8080",
				"put member 1/10.0.0.3:8080 = slot 2",
				"put service 10.96.0.10:80/6 = id 1 count 3",
			},
		},
		{
			name:   "replacing an endpoint rewrites only its slot",
			before: st(web(a, b, c)),
			after:  st(web(a, d, c)),
			want: []string{
				"delete member 1/10.0.0.2:8080",
				"put backend 1/1 = 10.0.0.4:8080",
				"put member 1/10.0.0.4:8080 = slot 1",
			},
		},
		{
			name:   "losing all endpoints keeps the service with count 0",
			before: st(web(a, b)),
			after:  st(web()),
			want: []string{
				"delete member 1/10.0.0.1:8080",
				"delete member 1/10.0.0.2:8080",
				"put service 10.96.0.10:80/6 = id 1 count 0",
				"delete backend 1/0",
				"delete backend 1/1",
			},
		},
		{
			name:   "removed service goes before its backends",
			before: st(web(a, b)),
			after:  st(),
			want: []string{
				"delete member 1/10.0.0.1:8080",
				"delete member 1/10.0.0.2:8080",
				"delete service 10.96.0.10:80/6",
				"delete backend 1/0",
				"delete backend 1/1",
			},
		},
		{
			name:   "a service added with another removed does not reuse its id",
			before: st(web(a)),
			after:  st(svc("api", "10.96.0.12", 443, 8443, d)),
			want: []string{
				"delete member 1/10.0.0.1:8080",
				"put backend 2/0 = 10.0.0.4:8443",
				"put member 2/10.0.0.4:8443 = slot 0",
				"put service 10.96.0.12:443/6 = id 2 count 1",
				"delete service 10.96.0.10:80/6",
				"delete backend 1/0",
			},
		},
		{
			name:   "turning on affinity rewrites only the service entry",
			before: st(web(a)),
			after:  st(sticky),
			want:   []string{"put service 10.96.0.10:80/6 = id 1 count 1 affinity 30000ms"},
		},
		{
			name:   "target port change rewrites every slot and membership but not the service",
			before: st(web(a)),
			after:  st(svc("web", "10.96.0.10", 80, 9090, a)),
			want: []string{
				"delete member 1/10.0.0.1:8080",
				"put backend 1/0 = 10.0.0.1:9090",
				"put member 1/10.0.0.1:9090 = slot 0",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installed := newTables()
			var lastID uint32
			m := newFakeMaps()
			require.NoError(t, syncMaps(context.Background(), &installed, &lastID, tt.before, m.set()))

			fronts, err := frontends(tt.after)
			require.NoError(t, err)
			var got []string
			for _, o := range plan(installed, desiredTables(installed, fronts, &lastID)) {
				got = append(got, fmtOp(o))
			}
			assert.Equal(t, tt.want, got)
		})
	}

	t.Run("a service removed and added again gets a new id", func(t *testing.T) {
		installed := newTables()
		var lastID uint32
		m := newFakeMaps()
		ctx := context.Background()
		require.NoError(t, syncMaps(ctx, &installed, &lastID, st(web(a)), m.set()))
		require.NoError(t, syncMaps(ctx, &installed, &lastID, st(), m.set()))
		require.NoError(t, syncMaps(ctx, &installed, &lastID, st(web(a)), m.set()))
		assert.Equal(t, uint32(2), installed.services[svcKey(netip.MustParseAddr("10.96.0.10"), 80, ipprotoTCP)].Id)
	})
}

// fakeMaps stands in for the three BPF maps (see lbmapstest.Maps); tables
// are the same maps as the package sees them.
type fakeMaps struct {
	*lbmapstest.Maps[socketlbSvcKey, socketlbSvcEntry, socketlbBackendKey, socketlbBackendEntry, socketlbMemberKey]
	tables tables
}

func newFakeMaps() *fakeMaps {
	f := lbmapstest.New(&layout)
	return &fakeMaps{Maps: f, tables: fromLB(f.Tables)}
}

func (f *fakeMaps) set() mapSet {
	return mapSet{services: f.Services(), backends: f.Backends(), members: f.Members()}
}

// randomState draws services with random endpoint sets from small pools, so
// consecutive states share services, endpoints and ids.
func randomState(r *rand.Rand) datapath.State {
	var st datapath.State
	for i := range 6 {
		if r.IntN(4) == 0 {
			continue
		}
		var eps []datapath.Endpoint
		for j := range 8 {
			if r.IntN(2) == 0 {
				eps = append(eps, ep(fmt.Sprintf("p%d", j), fmt.Sprintf("10.0.0.%d", j+1)))
			}
		}
		r.Shuffle(len(eps), func(x, y int) { eps[x], eps[y] = eps[y], eps[x] })
		proto := datapath.TCP
		if i%2 == 1 {
			proto = datapath.UDP
		}
		s := svcProto(fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.0.%d", i+1), proto, 80, uint16(8080+r.IntN(2)), eps...)
		if r.IntN(3) == 0 {
			s.SessionAffinity = datapath.SessionAffinityClientIP
		}
		st.Services = append(st.Services, s)
	}
	return st
}

// wantTables is what the maps must hold for st, independent of slot order.
func wantTables(t *testing.T, st datapath.State) map[string][]string {
	t.Helper()
	fronts, err := frontends(st)
	require.NoError(t, err)
	out := map[string][]string{}
	for _, f := range fronts {
		var bes []string
		for _, be := range f.backends {
			bes = append(bes, be.addrPort().String())
		}
		out[f.key.String()] = sortedStrings(bes)
	}
	return out
}

// contents reads maps back as service -> backend addresses, and checks that
// the memberships are exactly the slots' backends.
func contents(t *testing.T, tb tables) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	members := 0
	for k, s := range tb.services {
		var bes []string
		for slot := range uint32(s.Count) {
			if be, ok := tb.backends[socketlbBackendKey{SvcId: s.Id, Slot: slot}]; ok {
				bes = append(bes, be.addrPort().String())
				got, ok := tb.members[memberKey(s.Id, be)]
				if assert.True(t, ok, "%s: no membership for slot %d (%s)", k, slot, be.addrPort()) {
					assert.Equal(t, slot, got, "%s: membership of %s names the wrong slot", k, be.addrPort())
				}
				members++
			}
		}
		out[k.String()] = sortedStrings(bes)
	}
	assert.Len(t, tb.members, members, "stray memberships")
	return out
}

func sortedStrings(s []string) []string {
	slices.Sort(s)
	return s
}

func TestSyncConvergesAndNeverExposesMissingSlots(t *testing.T) {
	tests := []struct {
		name    string
		seed    uint64
		fails   bool
		noBatch bool
	}{
		{"clean resyncs", 1, false, false},
		{"resyncs with injected failures", 2, true, false},
		{"more clean resyncs", 3, false, false},
		{"more injected failures", 4, true, false},
		{"no batch API", 5, false, true},
		{"no batch API with injected failures", 6, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(tt.seed, 0))
			installed := newTables()
			var lastID uint32
			m := newFakeMaps()
			m.NoBatch = tt.noBatch
			for step := range 200 {
				st := randomState(r)
				if tt.fails {
					m.FailAt = m.Writes + 1 + r.IntN(6)
					err := syncMaps(context.Background(), &installed, &lastID, st, m.set())
					if err != nil {
						require.ErrorContains(t, err, "injected map failure")
						// A failed sync must leave the cache exactly equal
						// to the maps so the next one starts from the truth.
						require.Equal(t, m.tables, installed, "step %d: cache diverged from the maps after a failure", step)
					}
					m.FailAt = 0
				}
				require.NoError(t, syncMaps(context.Background(), &installed, &lastID, st, m.set()), "step %d", step)
				require.Equal(t, wantTables(t, st), contents(t, m.tables), "step %d", step)
				require.Equal(t, m.tables, installed, "step %d", step)
				require.Len(t, m.tables.backends, countBackends(m.tables), "step %d: stray backend slots left", step)
				// A second sync of the same state is free.
				fronts, err := frontends(st)
				require.NoError(t, err)
				require.Empty(t, plan(installed, desiredTables(installed, fronts, &lastID)), "step %d", step)
			}
			assert.Empty(t, m.Violations)
			if tt.noBatch {
				assert.Zero(t, m.Batches)
			} else {
				assert.NotZero(t, m.Batches)
			}
		})
	}
}

func countBackends(tb tables) int {
	n := 0
	for _, s := range tb.services {
		n += int(s.Count)
	}
	return n
}

func TestSyncStopsOnCancelledContext(t *testing.T) {
	installed := newTables()
	var lastID uint32
	m := newFakeMaps()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := syncMaps(ctx, &installed, &lastID, datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 80, ep("a", "10.0.0.1"))}}, m.set())
	require.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, m.Writes)
}

func TestExecuteToleratesAlreadyDeletedKeys(t *testing.T) {
	installed := newTables()
	var lastID uint32
	m := newFakeMaps()
	ctx := context.Background()
	st := datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 80, ep("a", "10.0.0.1"), ep("b", "10.0.0.2"))}}
	require.NoError(t, syncMaps(ctx, &installed, &lastID, st, m.set()))
	// Someone else already removed one slot: the delete batch must step
	// over the gap instead of failing the resync.
	delete(m.tables.backends, socketlbBackendKey{SvcId: 1, Slot: 0})
	require.NoError(t, syncMaps(ctx, &installed, &lastID, datapath.State{}, m.set()))
	assert.Empty(t, m.tables.backends)
	assert.Empty(t, m.tables.services)
	assert.Empty(t, m.tables.members)
	assert.Equal(t, m.tables, installed)
}

// BenchmarkPlan10kServices measures the Go side of a first Apply of 10,000
// services with 12 endpoints each (the map writes are measured by
// TestPrivilegedScale).
func BenchmarkPlan10kServices(b *testing.B) {
	st := scaleState(10000, 12)
	for b.Loop() {
		installed := newTables()
		var lastID uint32
		fronts, err := frontends(st)
		if err != nil {
			b.Fatal(err)
		}
		_ = plan(installed, desiredTables(installed, fronts, &lastID))
	}
}

// scaleState is n TCP services of k endpoints, ClusterIPs in 10.96/16 and
// endpoints in 10.0/8, with some endpoints shared between services.
func scaleState(n, k int) datapath.State {
	st := datapath.State{Services: make([]datapath.Service, 0, n)}
	for i := range n {
		vip := netip.AddrFrom4([4]byte{10, 96, byte((i + 1) >> 8), byte(i + 1)})
		eps := make([]datapath.Endpoint, k)
		for j := range k {
			h := i*k/2 + j
			eps[j] = datapath.Endpoint{Pod: fmt.Sprintf("pod-%d", h), Addr: netip.AddrFrom4([4]byte{10, byte(h >> 16), byte(h >> 8), byte(h)}), Ready: true, Serving: true}
		}
		st.Services = append(st.Services, datapath.Service{Namespace: "scale", Name: fmt.Sprintf("svc-%d", i), ClusterIP: vip,
			Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}}, Endpoints: eps})
	}
	return st
}
