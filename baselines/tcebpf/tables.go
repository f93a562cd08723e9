package tcebpf

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"svclab/datapath"
)

// The service and backend maps are laid out and synced exactly as
// datapath/socketlb does it (the same C structs, the same diff-and-order
// plan); only the Go types differ, because bpf2go generates them per
// package.

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

// frontend is one service port reduced to what the maps hold.
type frontend struct {
	key tcebpfSvcKey
	// name is "namespace/name:port" for error messages.
	name string
	// backends are deduplicated and in endpoint order.
	backends []tcebpfBackendEntry
}

// frontends converts a State into one frontend per service port, checking
// everything the maps cannot hold before anything is written.
func frontends(st datapath.State) ([]frontend, error) {
	var out []frontend
	seen := map[tcebpfSvcKey]string{}
	total := 0
	for _, svc := range st.Services {
		// A headless service has no ClusterIP to translate.
		if !svc.ClusterIP.IsValid() {
			continue
		}
		vip := svc.ClusterIP.Unmap()
		if !vip.Is4() {
			return nil, fmt.Errorf("service %s: ClusterIP %s is not IPv4: %w", svc, svc.ClusterIP, ErrUnsupportedService)
		}
		ready := svc.ReadyEndpoints()
		for _, p := range svc.Ports {
			name := fmt.Sprintf("%s:%d", svc, p.Port)
			var proto uint8
			switch p.Protocol {
			case datapath.TCP:
				proto = ipprotoTCP
			case datapath.UDP:
				proto = ipprotoUDP
			default:
				return nil, fmt.Errorf("service %s: protocol %q: %w", name, p.Protocol, ErrUnsupportedService)
			}
			if p.Port == 0 {
				return nil, fmt.Errorf("service %s: port 0: %w", name, ErrUnsupportedService)
			}
			target := p.TargetPort
			if target == 0 {
				// Kubernetes defaults targetPort to port.
				target = p.Port
			}

			key := svcKey(vip, p.Port, proto)
			if other, dup := seen[key]; dup {
				return nil, fmt.Errorf("service %s: frontend %s/%s already used by %s: %w", name, netip.AddrPortFrom(vip, p.Port), p.Protocol, other, ErrUnsupportedService)
			}
			seen[key] = name

			f := frontend{key: key, name: name}
			dedup := map[tcebpfBackendEntry]bool{}
			for _, ep := range ready {
				addr := ep.Addr.Unmap()
				if !addr.Is4() {
					return nil, fmt.Errorf("service %s: endpoint %s (%s) is not IPv4: %w", name, ep.Addr, ep.Pod, ErrUnsupportedService)
				}
				be := backendEntry(netip.AddrPortFrom(addr, target))
				if dedup[be] {
					continue
				}
				dedup[be] = true
				f.backends = append(f.backends, be)
			}
			if len(f.backends) > maxServiceBackends {
				return nil, fmt.Errorf("service %s: %d endpoints, at most %d: %w", name, len(f.backends), maxServiceBackends, ErrCapacity)
			}
			total += len(f.backends)
			out = append(out, f)
		}
	}
	if len(out) > maxServices {
		return nil, fmt.Errorf("%d service ports, at most %d: %w", len(out), maxServices, ErrCapacity)
	}
	if total > maxBackends {
		return nil, fmt.Errorf("%d backends, at most %d: %w", total, maxBackends, ErrCapacity)
	}
	return out, nil
}

// tables is the content of both BPF maps.
type tables struct {
	services map[tcebpfSvcKey]tcebpfSvcEntry
	backends map[tcebpfBackendKey]tcebpfBackendEntry
}

func newTables() tables {
	return tables{
		services: map[tcebpfSvcKey]tcebpfSvcEntry{},
		backends: map[tcebpfBackendKey]tcebpfBackendEntry{},
	}
}

// desiredTables lays the frontends out in map entries, reusing as much of
// what is installed as possible: a frontend keeps its service id, and a
// backend that stays keeps its slot, so a resync that adds or removes one
// endpoint rewrites a slot or two, not the whole service.
func desiredTables(installed tables, fronts []frontend) tables {
	// Ids in use by anything installed, including backend slots a failed
	// Apply left without a service: a new frontend must not adopt those
	// until they are deleted, or a live service could briefly see a
	// stranger's backends.
	used := map[uint32]bool{}
	for _, e := range installed.services {
		used[e.Id] = true
	}
	for k := range installed.backends {
		used[k.SvcId] = true
	}

	want := newTables()
	next := uint32(1)
	for _, f := range fronts {
		old, exists := installed.services[f.key]
		id := old.Id
		if !exists {
			for used[next] {
				next++
			}
			id = next
			used[id] = true
		}
		slots := assignSlots(f.backends, func(slot uint32) (tcebpfBackendEntry, bool) {
			if !exists || slot >= uint32(old.Count) {
				return tcebpfBackendEntry{}, false
			}
			be, ok := installed.backends[tcebpfBackendKey{SvcId: id, Slot: slot}]
			return be, ok
		})
		want.services[f.key] = tcebpfSvcEntry{Id: id, Count: uint16(len(slots))}
		for i, be := range slots {
			want.backends[tcebpfBackendKey{SvcId: id, Slot: uint32(i)}] = be
		}
	}
	return want
}

// assignSlots places backends in slots 0..len-1. A backend already live in a
// slot below the new count stays there; the others fill the gaps in order.
func assignSlots(backends []tcebpfBackendEntry, live func(slot uint32) (tcebpfBackendEntry, bool)) []tcebpfBackendEntry {
	n := len(backends)
	out := make([]tcebpfBackendEntry, n)
	filled := make([]bool, n)
	pending := make(map[tcebpfBackendEntry]bool, n)
	for _, be := range backends {
		pending[be] = true
	}
	for i := range n {
		if be, ok := live(uint32(i)); ok && pending[be] {
			out[i], filled[i] = be, true
			delete(pending, be)
		}
	}
	gap := 0
	for _, be := range backends {
		if !pending[be] {
			continue
		}
		for filled[gap] {
			gap++
		}
		out[gap], filled[gap] = be, true
		delete(pending, be)
	}
	return out
}

// opKind orders the steps of a resync; see plan.
type opKind int

const (
	putBackend opKind = iota
	putService
	deleteService
	deleteBackend
)

func (k opKind) String() string {
	return [...]string{"put backend", "put service", "delete service", "delete backend"}[k]
}

// op is one map write.
type op struct {
	kind opKind
	svc  tcebpfSvcKey
	sval tcebpfSvcEntry
	be   tcebpfBackendKey
	bval tcebpfBackendEntry
}

// plan returns the map writes that turn have into want, in an order that is
// safe for concurrent lookups: first every new or changed backend slot (no
// live service points at a slot that does not exist yet), then every new or
// changed service entry (it flips to slots already in place), then removed
// services, and last the slots nothing points at any more. Within a step
// keys are sorted so plans are deterministic.
func plan(have, want tables) []op {
	var ops []op
	for _, k := range sortedKeys(want.backends, cmpBackendKey) {
		if v, ok := have.backends[k]; !ok || v != want.backends[k] {
			ops = append(ops, op{kind: putBackend, be: k, bval: want.backends[k]})
		}
	}
	for _, k := range sortedKeys(want.services, cmpSvcKey) {
		if v, ok := have.services[k]; !ok || v != want.services[k] {
			ops = append(ops, op{kind: putService, svc: k, sval: want.services[k]})
		}
	}
	for _, k := range sortedKeys(have.services, cmpSvcKey) {
		if _, ok := want.services[k]; !ok {
			ops = append(ops, op{kind: deleteService, svc: k})
		}
	}
	for _, k := range sortedKeys(have.backends, cmpBackendKey) {
		if _, ok := want.backends[k]; !ok {
			ops = append(ops, op{kind: deleteBackend, be: k})
		}
	}
	return ops
}

func sortedKeys[K comparable, V any](m map[K]V, cmp func(a, b K) int) []K {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, cmp)
	return keys
}

func cmpSvcKey(a, b tcebpfSvcKey) int {
	return cmp.Or(cmp.Compare(a.Addr, b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
}

func cmpBackendKey(a, b tcebpfBackendKey) int {
	return cmp.Or(cmp.Compare(a.SvcId, b.SvcId), cmp.Compare(a.Slot, b.Slot))
}

// bpfMap is the part of *ebpf.Map a resync uses; tests substitute a fake.
type bpfMap interface {
	Put(key, value any) error
	Delete(key any) error
}

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
// installed. Every single map update or delete is atomic, so after an error
// installed still describes the kernel exactly and the next sync repairs
// whatever is left.
func execute(ctx context.Context, installed *tables, ops []op, services, backends bpfMap) error {
	for _, o := range ops {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("sync tc-ebpf maps: %w", err)
		}
		var err error
		switch o.kind {
		case putBackend:
			if err = backends.Put(o.be, o.bval); err == nil {
				installed.backends[o.be] = o.bval
			}
		case putService:
			if err = services.Put(o.svc, o.sval); err == nil {
				installed.services[o.svc] = o.sval
			}
		case deleteService:
			if err = services.Delete(o.svc); err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
				err = nil
				delete(installed.services, o.svc)
			}
		case deleteBackend:
			if err = backends.Delete(o.be); err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
				err = nil
				delete(installed.backends, o.be)
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
	}
	return nil
}

func (o op) String() string {
	switch o.kind {
	case putBackend, deleteBackend:
		return fmt.Sprintf("%s %d/%d", o.kind, o.be.SvcId, o.be.Slot)
	default:
		return fmt.Sprintf("%s %s", o.kind, o.svc)
	}
}
