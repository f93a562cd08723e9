package tcebpf

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
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
	s := datapath.Service{Namespace: "ns", Name: name, Ports: []datapath.ServicePort{{Name: "p", Protocol: datapath.TCP, Port: port, TargetPort: target}}, Endpoints: eps}
	if vip != "" {
		s.ClusterIP = netip.MustParseAddr(vip)
	}
	return s
}

func TestEntryByteOrder(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{"service key", rawBytes(svcKey(netip.MustParseAddr("10.96.0.10"), 80, ipprotoTCP)), []byte{10, 96, 0, 10, 0, 80, 6, 0}},
		{"service key high port", rawBytes(svcKey(netip.MustParseAddr("10.96.1.2"), 0x1f90, ipprotoUDP)), []byte{10, 96, 1, 2, 0x1f, 0x90, 17, 0}},
		{"v4-mapped address is unmapped", rawBytes(svcKey(netip.MustParseAddr("::ffff:10.96.0.10"), 443, ipprotoTCP)), []byte{10, 96, 0, 10, 0x01, 0xbb, 6, 0}},
		{"backend entry", rawBytes(backendEntry(netip.MustParseAddrPort("10.244.1.5:8080"))), []byte{10, 244, 1, 5, 0x1f, 0x90, 0, 0}},
		{"backend key", rawBytes(tcebpfBackendKey{SvcId: 0x01020304, Slot: 5}), []byte{4, 3, 2, 1, 5, 0, 0, 0}},
		{"service entry", rawBytes(tcebpfSvcEntry{Id: 7, Count: 3}), []byte{7, 0, 0, 0, 3, 0, 0, 0}},
		// The flow maps are keyed by the packet's tuple as the program reads
		// it from the headers: saddr, daddr, sport, dport, proto, padding.
		{"flow key", rawBytes(connKey(netip.MustParseAddrPort("10.244.0.1:40000"), netip.MustParseAddrPort("10.96.0.10:80"), ipprotoTCP)),
			[]byte{10, 244, 0, 1, 10, 96, 0, 10, 0x9c, 0x40, 0, 80, 6, 0, 0, 0}},
		{"reverse key swaps the client to the destination", rawBytes(revKey(
			connKey(netip.MustParseAddrPort("10.244.0.1:40000"), netip.MustParseAddrPort("10.96.0.10:53"), ipprotoUDP),
			tcebpfConnFwd{Addr: be32(netip.MustParseAddr("10.244.0.7")), Port: be16(5353)})),
			[]byte{10, 244, 0, 7, 10, 244, 0, 1, 0x14, 0xe9, 0x9c, 0x40, 17, 0, 0, 0}},
		{"forward entry", rawBytes(tcebpfConnFwd{Addr: be32(netip.MustParseAddr("10.244.0.7")), Port: be16(8080), SynSeq: 0x01020304}),
			[]byte{10, 244, 0, 7, 0x1f, 0x90, 0, 0, 4, 3, 2, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.got)
		})
	}

	t.Run("backend entry round trip", func(t *testing.T) {
		ap := netip.MustParseAddrPort("192.168.7.9:65534")
		assert.Equal(t, ap, backendEntry(ap).addrPort())
	})

	t.Run("flow key round trip", func(t *testing.T) {
		src, dst := netip.MustParseAddrPort("10.244.0.1:65535"), netip.MustParseAddrPort("10.96.0.10:1")
		k := connKey(src, dst, ipprotoUDP)
		assert.Equal(t, src, k.src())
		assert.Equal(t, dst, k.dst())
		assert.Equal(t, "10.244.0.1:65535->10.96.0.10:1/17", k.String())
	})
}

func TestMapSpecsMatchGoSide(t *testing.T) {
	spec, err := loadTcebpf()
	require.NoError(t, err)

	tests := []struct {
		name       string
		typ        ebpf.MapType
		maxEntries uint32
		keySize    uintptr
		valueSize  uintptr
		// noPrealloc: the service maps charge only what exists; LRU maps
		// cannot be created without preallocation.
		noPrealloc bool
	}{
		{tcebpfMapSvclabServices, ebpf.Hash, maxServices, unsafe.Sizeof(tcebpfSvcKey{}), unsafe.Sizeof(tcebpfSvcEntry{}), true},
		{tcebpfMapSvclabBackends, ebpf.Hash, maxBackends, unsafe.Sizeof(tcebpfBackendKey{}), unsafe.Sizeof(tcebpfBackendEntry{}), true},
		{tcebpfMapSvclabTcFwd, ebpf.LRUHash, maxFlows, unsafe.Sizeof(tcebpfConnKey{}), unsafe.Sizeof(tcebpfConnFwd{}), false},
		{tcebpfMapSvclabTcRev, ebpf.LRUHash, maxFlows, unsafe.Sizeof(tcebpfConnKey{}), unsafe.Sizeof(tcebpfConnRev{}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := spec.Maps[tt.name]
			require.NotNil(t, m, "map %s missing from the ELF", tt.name)
			assert.Equal(t, tt.typ, m.Type)
			assert.Equal(t, tt.maxEntries, m.MaxEntries, "max_entries must match the Go side")
			assert.Equal(t, uint32(tt.keySize), m.KeySize)
			assert.Equal(t, uint32(tt.valueSize), m.ValueSize)
			assert.Equal(t, tt.noPrealloc, m.Flags&unix.BPF_F_NO_PREALLOC != 0, "map flags %#x", m.Flags)
		})
	}

	for _, name := range []string{tcebpfProgSvclabTcIngress, tcebpfProgSvclabTcEgress} {
		t.Run(name, func(t *testing.T) {
			prog := spec.Programs[name]
			require.NotNil(t, prog)
			assert.Equal(t, ebpf.SchedCLS, prog.Type)
			assert.Equal(t, "tc", prog.SectionName)
		})
	}
}

func TestFrontends(t *testing.T) {
	be := func(s string) tcebpfBackendEntry { return backendEntry(netip.MustParseAddrPort(s)) }
	key := func(s string, proto uint8) tcebpfSvcKey {
		ap := netip.MustParseAddrPort(s)
		return svcKey(ap.Addr(), ap.Port(), proto)
	}
	notReady := ep("old", "10.0.0.9")
	notReady.Ready = false
	terminating := ep("term", "10.0.0.8")
	terminating.Terminating = true

	multi := svc("multi", "10.96.0.20", 80, 8080, ep("a", "10.0.0.1"))
	multi.Ports = append(multi.Ports, datapath.ServicePort{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353})

	tests := []struct {
		name string
		st   datapath.State
		want []frontend
	}{
		{
			name: "target port applied to every endpoint",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"), ep("b", "10.0.0.2"))}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), name: "ns/web:80", backends: []tcebpfBackendEntry{be("10.0.0.1:8080"), be("10.0.0.2:8080")}}},
		},
		{
			name: "target port defaults to port",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 0, ep("a", "10.0.0.1"))}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), name: "ns/web:80", backends: []tcebpfBackendEntry{be("10.0.0.1:80")}}},
		},
		{
			name: "only ready endpoints, duplicates once",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"), notReady, ep("a2", "10.0.0.1"), terminating)}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), name: "ns/web:80", backends: []tcebpfBackendEntry{be("10.0.0.1:8080")}}},
		},
		{
			name: "serving terminating endpoints when none is ready",
			st:   datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 8080, notReady, terminating)}},
			want: []frontend{{key: key("10.96.0.10:80", ipprotoTCP), name: "ns/web:80", backends: []tcebpfBackendEntry{be("10.0.0.8:8080")}}},
		},
		{
			name: "no endpoints still installs the service",
			st:   datapath.State{Services: []datapath.Service{svc("empty", "10.96.0.11", 80, 8080)}},
			want: []frontend{{key: key("10.96.0.11:80", ipprotoTCP), name: "ns/empty:80"}},
		},
		{
			name: "one frontend per port and protocol",
			st:   datapath.State{Services: []datapath.Service{multi}},
			want: []frontend{
				{key: key("10.96.0.20:80", ipprotoTCP), name: "ns/multi:80", backends: []tcebpfBackendEntry{be("10.0.0.1:8080")}},
				{key: key("10.96.0.20:53", ipprotoUDP), name: "ns/multi:53", backends: []tcebpfBackendEntry{be("10.0.0.1:5353")}},
			},
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

	tests := []struct {
		name    string
		st      datapath.State
		wantErr error
		wantMsg string
	}{
		{"IPv6 ClusterIP", datapath.State{Services: []datapath.Service{svc("v6", "fd00::10", 80, 80)}}, ErrUnsupportedService, "ns/v6: ClusterIP fd00::10 is not IPv4"},
		{"IPv6 endpoint", datapath.State{Services: []datapath.Service{svc("v6ep", "10.96.0.10", 80, 80, ep("a", "fd00::1"))}}, ErrUnsupportedService, "endpoint fd00::1 (a) is not IPv4"},
		{"unknown protocol", datapath.State{Services: []datapath.Service{sctp}}, ErrUnsupportedService, `protocol "SCTP"`},
		{"port zero", datapath.State{Services: []datapath.Service{svc("zero", "10.96.0.10", 0, 80)}}, ErrUnsupportedService, "port 0"},
		{"duplicate frontend", datapath.State{Services: []datapath.Service{svc("a", "10.96.0.10", 80, 80), svc("b", "10.96.0.10", 80, 81)}}, ErrUnsupportedService, "already used by ns/a:80"},
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
	switch o.Kind {
	case lbmaps.PutBackend:
		return fmt.Sprintf("%s = %s", o, o.Backend.addrPort())
	case lbmaps.PutService:
		return fmt.Sprintf("%s = id %d count %d", o, o.Entry.Id, o.Entry.Count)
	default:
		return o.String()
	}
}

func TestPlan(t *testing.T) {
	web := func(eps ...datapath.Endpoint) datapath.Service { return svc("web", "10.96.0.10", 80, 8080, eps...) }
	a, b, c, d := ep("a", "10.0.0.1"), ep("b", "10.0.0.2"), ep("c", "10.0.0.3"), ep("d", "10.0.0.4")
	st := func(svcs ...datapath.Service) datapath.State { return datapath.State{Services: svcs} }

	tests := []struct {
		name string
		// before is applied first (its ops are not checked), then after.
		before datapath.State
		after  datapath.State
		want   []string
	}{
		{
			name:  "first apply writes backends before the service",
			after: st(web(a, b, c)),
			want: []string{
				"put backend 1/0 = 10.0.0.1:8080",
				"put backend 1/1 = 10.0.0.2:8080",
				"put backend 1/2 = 10.0.0.3:8080",
				"put service 10.96.0.10:80/6 = id 1 count 3",
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
			name:   "removing a middle endpoint moves the last into its slot, shrinks, then deletes",
			before: st(web(a, b, c)),
			after:  st(web(a, c)),
			want: []string{
				"put backend 1/1 = 10.0.0.3:8080",
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
				"put service 10.96.0.10:80/6 = id 1 count 3",
			},
		},
		{
			name:   "replacing an endpoint rewrites only its slot",
			before: st(web(a, b, c)),
			after:  st(web(a, d, c)),
			want:   []string{"put backend 1/1 = 10.0.0.4:8080"},
		},
		{
			name:   "losing all endpoints keeps the service with count 0",
			before: st(web(a, b)),
			after:  st(web()),
			want: []string{
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
				"put backend 2/0 = 10.0.0.4:8443",
				"put service 10.96.0.12:443/6 = id 2 count 1",
				"delete service 10.96.0.10:80/6",
				"delete backend 1/0",
			},
		},
		{
			name:   "target port change rewrites every slot but not the service",
			before: st(web(a, b)),
			after:  st(svc("web", "10.96.0.10", 80, 9090, a, b)),
			want: []string{
				"put backend 1/0 = 10.0.0.1:9090",
				"put backend 1/1 = 10.0.0.2:9090",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installed := newTables()
			m := newFakeMaps()
			_, err := syncMaps(context.Background(), &installed, tt.before, m.services(), m.backends())
			require.NoError(t, err)

			fronts, err := frontends(tt.after)
			require.NoError(t, err)
			var got []string
			for _, o := range plan(installed, desiredTables(installed, fronts)) {
				got = append(got, fmtOp(o))
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

// fakeMaps stands in for both BPF maps (see lbmapstest.Maps); tables are
// the same maps as the package sees them.
type fakeMaps struct {
	*lbmapstest.Maps[tcebpfSvcKey, tcebpfSvcEntry, tcebpfBackendKey, tcebpfBackendEntry, lbmaps.NoMember]
	tables tables
}

func newFakeMaps() *fakeMaps {
	f := lbmapstest.New(&layout)
	return &fakeMaps{Maps: f, tables: fromLB(f.Tables)}
}

func (f *fakeMaps) services() bpfMap { return f.Services() }

func (f *fakeMaps) backends() bpfMap { return f.Backends() }

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
		st.Services = append(st.Services, svc(fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.0.%d", i+1), 80, uint16(8080+r.IntN(2)), eps...))
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

// contents reads maps back as service -> backend addresses.
func contents(tb tables) map[string][]string {
	out := map[string][]string{}
	for k, s := range tb.services {
		var bes []string
		for slot := range uint32(s.Count) {
			if be, ok := tb.backends[tcebpfBackendKey{SvcId: s.Id, Slot: slot}]; ok {
				bes = append(bes, be.addrPort().String())
			}
		}
		out[k.String()] = sortedStrings(bes)
	}
	return out
}

func sortedStrings(s []string) []string {
	slices.Sort(s)
	return s
}

func TestSyncConvergesAndNeverExposesMissingSlots(t *testing.T) {
	tests := []struct {
		name  string
		seed  uint64
		fails bool
	}{
		{"clean resyncs", 1, false},
		{"resyncs with injected failures", 2, true},
		{"more clean resyncs", 3, false},
		{"more injected failures", 4, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(tt.seed, 0))
			installed := newTables()
			m := newFakeMaps()
			for step := range 200 {
				st := randomState(r)
				if tt.fails {
					m.FailAt = m.Writes + 1 + r.IntN(6)
					_, err := syncMaps(context.Background(), &installed, st, m.services(), m.backends())
					if err != nil {
						require.ErrorContains(t, err, "injected map failure")
						// A failed sync must leave the cache exactly equal
						// to the maps so the next one starts from the truth.
						require.Equal(t, m.tables, installed, "step %d: cache diverged from the maps after a failure", step)
					}
					m.FailAt = 0
				}
				_, err := syncMaps(context.Background(), &installed, st, m.services(), m.backends())
				require.NoError(t, err, "step %d", step)
				require.Equal(t, wantTables(t, st), contents(m.tables), "step %d", step)
				require.Equal(t, m.tables, installed, "step %d", step)
				require.Len(t, m.tables.backends, countBackends(m.tables), "step %d: stray backend slots left", step)
				// A second sync of the same state is free.
				fronts, err := frontends(st)
				require.NoError(t, err)
				require.Empty(t, plan(installed, desiredTables(installed, fronts)), "step %d", step)
			}
			assert.Empty(t, m.Violations)
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
	m := newFakeMaps()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := syncMaps(ctx, &installed, datapath.State{Services: []datapath.Service{svc("web", "10.96.0.10", 80, 80, ep("a", "10.0.0.1"))}}, m.services(), m.backends())
	require.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, m.Writes)
}
