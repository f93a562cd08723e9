package tcebpf

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"svclab/datapath"
	"svclab/internal/lbmaps"
)

// The service and backend maps are laid out and synced by internal/lbmaps,
// as datapath/socketlb's are (the same C structs, the same diff-and-order
// plan, no membership map); this file holds the encodings of the Go types
// bpf2go generates for this package.

// Capacities of the BPF maps; they must match SVCLAB_MAX_SERVICES,
// SVCLAB_MAX_BACKENDS and SVCLAB_MAX_FLOWS in bpf/tc_dnat.c (a test checks
// them against the ELF). Apply refuses a state that does not fit instead of
// failing half way.
const (
	maxServices = 65536
	maxBackends = 1 << 20
	// maxFlows is the size of each LRU flow map (forward and reverse).
	maxFlows = 1 << 18
	// maxServiceBackends is bounded by the __u16 count in struct svc_entry.
	maxServiceBackends = 1<<16 - 1
)

// L4 protocol numbers as in the IPv4 header.
const (
	ipprotoTCP = 6
	ipprotoUDP = 17
)

// Errors about states the datapath cannot implement; test with errors.Is.
var (
	// ErrUnsupportedService is returned for a service the maps cannot
	// express (e.g. an IPv6 ClusterIP or an unknown protocol).
	ErrUnsupportedService = errors.New("service not supported by tc-ebpf")
	// ErrCapacity is returned when a state does not fit the BPF maps.
	ErrCapacity = errors.New("state exceeds tc-ebpf map capacity")
)

// svcKey builds the services map key. The program builds its key from the
// packet's IPv4 and L4 headers, i.e. in network byte order, so the key holds
// the address and port bytes in network order. The generated Go fields are
// plain integers written in host order, hence NativeEndian over big-endian
// bytes.
func svcKey(addr netip.Addr, port uint16, proto uint8) tcebpfSvcKey {
	return tcebpfSvcKey{Addr: be32(addr), Port: be16(port), Proto: proto}
}

// backendEntry builds a backends map value, in network byte order like
// svcKey, ready to be stored into the packet's daddr and dport.
func backendEntry(ap netip.AddrPort) tcebpfBackendEntry {
	return tcebpfBackendEntry{Addr: be32(ap.Addr()), Port: be16(ap.Port())}
}

func be32(addr netip.Addr) uint32 {
	a := addr.Unmap().As4()
	return binary.NativeEndian.Uint32(a[:])
}

func be16(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

// addrPort converts a backends map value back; used in errors and tests.
func (e tcebpfBackendEntry) addrPort() netip.AddrPort {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], e.Addr)
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], e.Port)
	return netip.AddrPortFrom(netip.AddrFrom4(a), binary.BigEndian.Uint16(p[:]))
}

func (k tcebpfSvcKey) String() string {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], k.Addr)
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], k.Port)
	return fmt.Sprintf("%s/%d", netip.AddrPortFrom(netip.AddrFrom4(a), binary.BigEndian.Uint16(p[:])), k.Proto)
}

func (k tcebpfBackendKey) String() string {
	return fmt.Sprintf("%d/%d", k.SvcId, k.Slot)
}

// frontend is one service port reduced to what the maps hold.
type frontend struct {
	key tcebpfSvcKey
	// name is "namespace/name:port" for error messages.
	name string
	// backends are deduplicated and in endpoint order.
	backends []tcebpfBackendEntry
}

// rules are what the maps can hold: IPv4 only.
var rules = lbmaps.Rules[struct{}, tcebpfBackendEntry]{
	MaxServices:        maxServices,
	MaxBackends:        maxBackends,
	MaxServiceBackends: maxServiceBackends,
	ErrUnsupported:     ErrUnsupportedService,
	ErrCapacity:        ErrCapacity,
	Backend:            backendEntry,
	Service: func(svc datapath.Service, vip netip.Addr) (struct{}, error) {
		if !vip.Is4() {
			return struct{}{}, fmt.Errorf("service %s: ClusterIP %s is not IPv4: %w (%w)", svc, svc.ClusterIP, ErrUnsupportedService, datapath.ErrUnsupported)
		}
		return struct{}{}, nil
	},
	Endpoint: func(port string, _ netip.Addr, ep datapath.Endpoint) error {
		if !ep.Addr.Unmap().Is4() {
			return fmt.Errorf("service %s: endpoint %s (%s) is not IPv4: %w (%w)", port, ep.Addr, ep.Pod, ErrUnsupportedService, datapath.ErrUnsupported)
		}
		return nil
	},
}

// frontends converts a State into one frontend per service port, checking
// everything the maps cannot hold before anything is written.
func frontends(st datapath.State) ([]frontend, error) {
	ports, err := rules.Ports(st)
	if err != nil {
		return nil, err
	}
	var out []frontend
	if len(ports) > 0 {
		out = make([]frontend, 0, len(ports))
	}
	for _, p := range ports {
		out = append(out, frontend{key: svcKey(p.Frontend.Addr(), p.Frontend.Port(), p.Protocol), name: p.Name, backends: p.Backends})
	}
	return out, nil
}

// layout is how lbmaps reads and builds the entries of the services and
// backends maps.
var layout = lbmaps.Layout[tcebpfSvcKey, tcebpfSvcEntry, tcebpfBackendKey, tcebpfBackendEntry, lbmaps.NoMember]{
	Name:    "tc-ebpf",
	SlotKey: func(id, slot uint32) tcebpfBackendKey { return tcebpfBackendKey{SvcId: id, Slot: slot} },
	SlotOf:  func(k tcebpfBackendKey) (uint32, uint32) { return k.SvcId, k.Slot },
	Slots:   func(e tcebpfSvcEntry) (uint32, uint32) { return e.Id, uint32(e.Count) },
	SetSlots: func(e tcebpfSvcEntry, id, count uint32) tcebpfSvcEntry {
		e.Id, e.Count = id, uint16(count)
		return e
	},
	CompareServices: func(a, b tcebpfSvcKey) int {
		return cmp.Or(cmp.Compare(a.Addr, b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	},
}

type (
	lbTables = lbmaps.Tables[tcebpfSvcKey, tcebpfSvcEntry, tcebpfBackendKey, tcebpfBackendEntry, lbmaps.NoMember]
	op       = lbmaps.Op[tcebpfSvcKey, tcebpfSvcEntry, tcebpfBackendKey, tcebpfBackendEntry, lbmaps.NoMember]
)

// tables is the content of both BPF maps.
type tables struct {
	services map[tcebpfSvcKey]tcebpfSvcEntry
	backends map[tcebpfBackendKey]tcebpfBackendEntry
}

func newTables() tables { return fromLB(layout.NewTables()) }

// lb returns t as lbmaps holds it: the same maps, so what lbmaps writes
// into them t holds too.
func (t tables) lb() lbTables { return lbTables{Services: t.services, Backends: t.backends} }

func fromLB(t lbTables) tables { return tables{services: t.Services, backends: t.Backends} }

// desiredTables lays the frontends out in map entries (see
// lbmaps.Layout.Desired). A new frontend takes the lowest id that nothing
// installed uses, including backend slots a failed Apply left without a
// service: adopting those before they are deleted could briefly show a
// live service a stranger's backends. Flows hold backends, not ids, so an
// id may be reused once it is gone.
func desiredTables(installed tables, fronts []frontend) tables {
	used := map[uint32]bool{}
	for _, e := range installed.services {
		used[e.Id] = true
	}
	for k := range installed.backends {
		used[k.SvcId] = true
	}
	next := uint32(1)
	newID := func() uint32 {
		for used[next] {
			next++
		}
		used[next] = true
		return next
	}

	lf := make([]lbmaps.Frontend[tcebpfSvcKey, tcebpfSvcEntry, tcebpfBackendEntry], len(fronts))
	for i, f := range fronts {
		lf[i].Key, lf[i].Backends = f.key, f.backends
	}
	return fromLB(layout.Desired(installed.lb(), lf, newID))
}

// plan returns the map writes that turn have into want, in the order of
// lbmaps.Layout.Plan: first every new or changed backend slot, then every
// new or changed service entry, then removed services, and last the slots
// nothing points at any more.
func plan(have, want tables) []op { return layout.Plan(have.lb(), want.lb()) }

// bpfMap is the part of *ebpf.Map a resync uses; tests substitute a fake.
type bpfMap = lbmaps.Map

// syncMaps makes the maps hold st and keeps installed equal to them. It
// also returns the UDP frontends that lose backends (udpLost), whose flows
// the caller flushes, also when the sync failed half way: by then the
// removed backends may be gone from installed, and the next sync could not
// tell any more.
func syncMaps(ctx context.Context, installed *tables, st datapath.State, services, backends bpfMap) (map[tcebpfSvcKey]map[tcebpfBackendEntry]bool, error) {
	fronts, err := frontends(st)
	if err != nil {
		return nil, err
	}
	want := desiredTables(*installed, fronts)
	lost := udpLost(*installed, want)
	return lost, execute(ctx, installed, plan(*installed, want), services, backends)
}

// execute performs ops in order and records each successful one in
// installed (see lbmaps.Layout.Execute), one syscall per element as this
// baseline always has, so its Apply times stay comparable with earlier
// results.
func execute(ctx context.Context, installed *tables, ops []op, services, backends bpfMap) error {
	lb := installed.lb()
	return layout.Execute(ctx, &lb, ops, lbmaps.Maps{Services: services, Backends: backends})
}
