package socketlb

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"svclab/datapath"
)

// Capacities of the BPF maps; they must match the SVCLAB_MAX_* constants in
// bpf/socketlb.c (a test checks them against the ELF). Apply refuses a state
// that does not fit instead of failing half way.
const (
	maxServices = 65536
	maxBackends = 1 << 20
	maxAffinity = 65536
	maxRevNAT   = 65536
	// maxServiceBackends is bounded by the __u16 count in struct svc_entry.
	maxServiceBackends = 1<<16 - 1
	// maxAffinityTimeout is Kubernetes' validation limit for
	// sessionAffinityConfig.clientIP.timeoutSeconds.
	maxAffinityTimeout = 86400 * time.Second
)

// L4 protocol numbers as the kernel reports them in bpf_sock_addr.protocol.
const (
	ipprotoTCP = 6
	ipprotoUDP = 17
)

// svcFlagAffinity is SVC_F_AFFINITY in struct svc_entry.flags.
const svcFlagAffinity = 1

// Errors about states the datapath cannot implement; test with errors.Is.
var (
	// ErrUnsupportedService is returned for a service the maps cannot
	// express (e.g. endpoints of another address family than the
	// ClusterIP, or an unknown protocol).
	ErrUnsupportedService = errors.New("service not supported by socketlb")
	// ErrCapacity is returned when a state does not fit the BPF maps.
	ErrCapacity = errors.New("state exceeds socketlb map capacity")
)

// addrWords is an address as the BPF side holds it: 16 bytes in network
// order, IPv4 as ::ffff:a.b.c.d, in four __be32 words. The generated Go
// fields are plain integers written in host order, hence NativeEndian over
// the big-endian bytes.
func addrWords(addr netip.Addr) [4]uint32 {
	b := addr.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// wordsAddr undoes addrWords; a v4-mapped address comes back as IPv4.
func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// be16 is a port in network byte order, as the BPF side reads user_port.
func be16(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func fromBE16(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}

// svcKey builds the services map key.
func svcKey(addr netip.Addr, port uint16, proto uint8) socketlbSvcKey {
	return socketlbSvcKey{Addr: addrWords(addr), Port: be16(port), Proto: proto}
}

// backendEntry builds a backends map value, ready to be written into
// bpf_sock_addr.user_ip4/user_ip6 and user_port.
func backendEntry(ap netip.AddrPort) socketlbBackendEntry {
	return socketlbBackendEntry{Addr: addrWords(ap.Addr()), Port: be16(ap.Port())}
}

func memberKey(id uint32, be socketlbBackendEntry) socketlbMemberKey {
	return socketlbMemberKey{SvcId: id, Addr: be.Addr, Port: be.Port}
}

func (e socketlbBackendEntry) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(wordsAddr(e.Addr), fromBE16(e.Port))
}

func (k socketlbMemberKey) backend() socketlbBackendEntry {
	return socketlbBackendEntry{Addr: k.Addr, Port: k.Port}
}

func (k socketlbSvcKey) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(wordsAddr(k.Addr), fromBE16(k.Port))
}

func (k socketlbSvcKey) String() string {
	return fmt.Sprintf("%s/%d", k.addrPort(), k.Proto)
}

// frontend is one service port reduced to what the maps hold.
type frontend struct {
	key socketlbSvcKey
	// meta names the frontend in errors and counters.
	meta frontendMeta
	// affinityMs is the ClientIP affinity timeout; 0 means no affinity.
	affinityMs uint32
	// backends are deduplicated and in endpoint order; pods names them.
	backends []socketlbBackendEntry
	pods     []string
}

// frontendMeta is what counters report about a frontend.
type frontendMeta struct {
	service  string
	port     uint16
	protocol datapath.Protocol
	vip      netip.AddrPort
}

func (m frontendMeta) String() string { return fmt.Sprintf("%s:%d", m.service, m.port) }

// frontends converts a State into one frontend per service port, checking
// everything the maps cannot hold before anything is written. A service is
// single-family, like a Kubernetes EndpointSlice: an IPv4 ClusterIP with
// IPv4 endpoints or an IPv6 one with IPv6 endpoints (a dual-stack Service is
// two Services here).
func frontends(st datapath.State) ([]frontend, error) {
	var out []frontend
	seen := map[socketlbSvcKey]string{}
	total := 0
	for _, svc := range st.Services {
		// A headless service has no ClusterIP to translate.
		if !svc.ClusterIP.IsValid() {
			continue
		}
		vip := svc.ClusterIP.Unmap()
		var affinityMs uint32
		switch svc.SessionAffinity {
		case "", datapath.SessionAffinityNone:
		case datapath.SessionAffinityClientIP:
			timeout := svc.EffectiveAffinityTimeout()
			if timeout < time.Millisecond || timeout > maxAffinityTimeout {
				return nil, fmt.Errorf("service %s: affinity timeout %s is outside [1ms, %s]: %w", svc, timeout, maxAffinityTimeout, ErrUnsupportedService)
			}
			affinityMs = uint32((timeout + time.Millisecond - 1) / time.Millisecond)
		default:
			return nil, fmt.Errorf("service %s: session affinity %q: %w", svc, svc.SessionAffinity, ErrUnsupportedService)
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

			f := frontend{
				key:        key,
				meta:       frontendMeta{service: svc.String(), port: p.Port, protocol: p.Protocol, vip: netip.AddrPortFrom(vip, p.Port)},
				affinityMs: affinityMs,
			}
			var dedup map[socketlbBackendEntry]bool
			if len(ready) > 32 {
				dedup = make(map[socketlbBackendEntry]bool, len(ready))
			}
			for _, ep := range ready {
				addr := ep.Addr.Unmap()
				if addr.Is4() != vip.Is4() {
					return nil, fmt.Errorf("service %s: endpoint %s (%s) is not of the ClusterIP's family (%s): %w", name, ep.Addr, ep.Pod, vip, ErrUnsupportedService)
				}
				be := backendEntry(netip.AddrPortFrom(addr, target))
				if dedup == nil && slices.Contains(f.backends, be) || dedup[be] {
					continue
				}
				if dedup != nil {
					dedup[be] = true
				}
				f.backends = append(f.backends, be)
				f.pods = append(f.pods, ep.Pod)
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

// tables is the content of the three maps Apply programs.
type tables struct {
	services map[socketlbSvcKey]socketlbSvcEntry
	backends map[socketlbBackendKey]socketlbBackendEntry
	// members maps {service id, backend} to its slot.
	members map[socketlbMemberKey]uint32
}

func newTables() tables {
	return tables{
		services: map[socketlbSvcKey]socketlbSvcEntry{},
		backends: map[socketlbBackendKey]socketlbBackendEntry{},
		members:  map[socketlbMemberKey]uint32{},
	}
}

// desiredTables lays the frontends out in map entries, reusing as much of
// what is installed as possible: a frontend keeps its service id, and a
// backend that stays keeps its slot, so a resync that adds or removes one
// endpoint rewrites a slot or two, not the whole service. A new frontend
// takes the next id from *lastID: ids only grow, so no socket's saved state,
// affinity entry or counter can ever be mistaken for another service's.
func desiredTables(installed tables, fronts []frontend, lastID *uint32) tables {
	n := 0
	for _, f := range fronts {
		n += len(f.backends)
	}
	want := tables{
		services: make(map[socketlbSvcKey]socketlbSvcEntry, len(fronts)),
		backends: make(map[socketlbBackendKey]socketlbBackendEntry, n),
		members:  make(map[socketlbMemberKey]uint32, n),
	}
	for _, f := range fronts {
		old, exists := installed.services[f.key]
		id := old.Id
		if !exists {
			*lastID++
			id = *lastID
		}
		slots := assignSlots(f.backends, func(slot uint32) (socketlbBackendEntry, bool) {
			if !exists || slot >= uint32(old.Count) {
				return socketlbBackendEntry{}, false
			}
			be, ok := installed.backends[socketlbBackendKey{SvcId: id, Slot: slot}]
			return be, ok
		})
		e := socketlbSvcEntry{Id: id, Count: uint16(len(slots))}
		if f.affinityMs != 0 {
			e.Flags |= svcFlagAffinity
			e.AffinityTimeoutMs = f.affinityMs
		}
		want.services[f.key] = e
		for i, be := range slots {
			want.backends[socketlbBackendKey{SvcId: id, Slot: uint32(i)}] = be
			want.members[memberKey(id, be)] = uint32(i)
		}
	}
	return want
}

// assignSlots places backends in slots 0..len-1. A backend already live in a
// slot below the new count stays there; the others fill the gaps in order.
func assignSlots(backends []socketlbBackendEntry, live func(slot uint32) (socketlbBackendEntry, bool)) []socketlbBackendEntry {
	n := len(backends)
	out := make([]socketlbBackendEntry, n)
	filled := make([]bool, n)
	placed := make([]bool, n) // placed[i]: backends[i] kept its slot
	index := backendIndex(backends)
	for i := range n {
		if be, ok := live(uint32(i)); ok {
			if j := index(be); j >= 0 && !placed[j] {
				out[i], filled[i], placed[j] = be, true, true
			}
		}
	}
	gap := 0
	for j, be := range backends {
		if placed[j] {
			continue
		}
		for filled[gap] {
			gap++
		}
		out[gap], filled[gap] = be, true
	}
	return out
}

// backendIndex returns a lookup of a backend's position in backends (which
// holds no duplicates), or -1. Services are mostly small, where a scan
// beats building a map.
func backendIndex(backends []socketlbBackendEntry) func(socketlbBackendEntry) int {
	if len(backends) <= 32 {
		return func(be socketlbBackendEntry) int { return slices.Index(backends, be) }
	}
	m := make(map[socketlbBackendEntry]int, len(backends))
	for i, be := range backends {
		m[be] = i
	}
	return func(be socketlbBackendEntry) int {
		if i, ok := m[be]; ok {
			return i
		}
		return -1
	}
}

// opKind orders the steps of a resync; see plan.
type opKind int

const (
	deleteMember opKind = iota
	putBackend
	putMember
	putService
	deleteService
	deleteBackend
)

func (k opKind) String() string {
	return [...]string{"delete member", "put backend", "put member", "put service", "delete service", "delete backend"}[k]
}

// op is one map write.
type op struct {
	kind opKind
	svc  socketlbSvcKey
	sval socketlbSvcEntry
	be   socketlbBackendKey
	bval socketlbBackendEntry
	mem  socketlbMemberKey
	mval uint32
}

// plan returns the map writes that turn have into want, in an order that is
// safe for concurrent lookups:
//
//  1. memberships of backends that leave a service go first, so from then
//     on no UDP socket, affinity entry or reply is steered or translated
//     to them any more;
//  2. new or changed backend slots (no live service points at a slot
//     that does not exist yet);
//  3. new memberships;
//  4. new or changed service entries (each flips to slots already in
//     place);
//  5. removed services;
//  6. slots nothing points at any more.
//
// Within a step keys are sorted so plans are deterministic.
func plan(have, want tables) []op {
	delMembers := sortedDiff(have.members, want.members, false, cmpMemberSlot)
	putBackends := diffSlots(want.backends, have.backends, true)
	putMembers := wantedMembers(want, have.members)
	putServices := sortedDiff(want.services, have.services, true, cmpSvcKey)
	delServices := sortedDiff(have.services, want.services, false, cmpSvcKey)
	delBackends := diffSlots(have.backends, want.backends, false)
	n := len(delMembers) + len(putBackends) + len(putMembers) + len(putServices) + len(delServices) + len(delBackends)
	if n == 0 {
		return nil
	}
	ops := make([]op, 0, n)
	for _, e := range delMembers {
		ops = append(ops, op{kind: deleteMember, mem: e.k})
	}
	for _, k := range putBackends {
		ops = append(ops, op{kind: putBackend, be: k, bval: want.backends[k]})
	}
	for _, e := range putMembers {
		ops = append(ops, op{kind: putMember, mem: e.k, mval: e.v})
	}
	for _, e := range putServices {
		ops = append(ops, op{kind: putService, svc: e.k, sval: e.v})
	}
	for _, e := range delServices {
		ops = append(ops, op{kind: deleteService, svc: e.k})
	}
	for _, k := range delBackends {
		ops = append(ops, op{kind: deleteBackend, be: k})
	}
	return ops
}

// diffSlots returns, in (service id, slot) order, the slots of a that b
// lacks, and with changed also those whose backend differs in b. A slot key
// packs into one integer, so the (possibly 10^5 long) list sorts without a
// comparison function.
func diffSlots(a, b map[socketlbBackendKey]socketlbBackendEntry, changed bool) []socketlbBackendKey {
	var packed []uint64
	for k, v := range a {
		if w, ok := b[k]; !ok || (changed && v != w) {
			packed = append(packed, uint64(k.SvcId)<<32|uint64(k.Slot))
		}
	}
	slices.Sort(packed)
	keys := make([]socketlbBackendKey, len(packed))
	for i, p := range packed {
		keys[i] = socketlbBackendKey{SvcId: uint32(p >> 32), Slot: uint32(p)}
	}
	return keys
}

// wantedMembers returns the memberships of want that have lacks or has with
// another slot, in (service id, slot) order. In want (built by
// desiredTables) every membership is that of the backend in its slot, so
// sorting the packed slot keys and reading the backend back is enough.
func wantedMembers(want tables, have map[socketlbMemberKey]uint32) []kv[socketlbMemberKey, uint32] {
	var packed []uint64
	for k, slot := range want.members {
		if s, ok := have[k]; !ok || s != slot {
			packed = append(packed, uint64(k.SvcId)<<32|uint64(slot))
		}
	}
	slices.Sort(packed)
	out := make([]kv[socketlbMemberKey, uint32], len(packed))
	for i, p := range packed {
		id, slot := uint32(p>>32), uint32(p)
		out[i] = kv[socketlbMemberKey, uint32]{memberKey(id, want.backends[socketlbBackendKey{SvcId: id, Slot: slot}]), slot}
	}
	return out
}

type kv[K, V any] struct {
	k K
	v V
}

// sortedDiff returns, sorted, the entries of a whose key b lacks, and with
// changed also those whose value differs in b.
func sortedDiff[K, V comparable](a, b map[K]V, changed bool, cmp func(x, y kv[K, V]) int) []kv[K, V] {
	var out []kv[K, V]
	if len(b) == 0 {
		out = make([]kv[K, V], 0, len(a))
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || (changed && v != w) {
			out = append(out, kv[K, V]{k, v})
		}
	}
	slices.SortFunc(out, cmp)
	return out
}

func cmpWords(a, b [4]uint32) int {
	for i := range a {
		if a[i] != b[i] {
			return cmp.Compare(a[i], b[i])
		}
	}
	return 0
}

func cmpSvcKey[V any](a, b kv[socketlbSvcKey, V]) int {
	if c := cmpWords(a.k.Addr, b.k.Addr); c != 0 {
		return c
	}
	if a.k.Port != b.k.Port {
		return cmp.Compare(a.k.Port, b.k.Port)
	}
	return cmp.Compare(a.k.Proto, b.k.Proto)
}

// cmpMemberSlot orders memberships like their slots: by service id, then
// slot. A table holds one membership per slot, so the order is total, and
// comparing two integers is much cheaper than comparing addresses.
func cmpMemberSlot(a, b kv[socketlbMemberKey, uint32]) int {
	if a.k.SvcId != b.k.SvcId {
		return cmp.Compare(a.k.SvcId, b.k.SvcId)
	}
	if a.v != b.v {
		return cmp.Compare(a.v, b.v)
	}
	// Only a table left inconsistent by a failed write could get here.
	if c := cmpWords(a.k.Addr, b.k.Addr); c != 0 {
		return c
	}
	return cmp.Compare(a.k.Port, b.k.Port)
}

// bpfMap is the part of *ebpf.Map a resync uses; tests substitute a fake.
type bpfMap interface {
	Put(key, value any) error
	Delete(key any) error
	BatchUpdate(keys, values any, opts *ebpf.BatchOptions) (int, error)
	BatchDelete(keys any, opts *ebpf.BatchOptions) (int, error)
}

// mapSet names the maps a resync writes.
type mapSet struct {
	services, backends, members bpfMap
}

// syncMaps makes the maps hold st and keeps installed equal to them.
func syncMaps(ctx context.Context, installed *tables, lastID *uint32, st datapath.State, m mapSet) error {
	fronts, err := frontends(st)
	if err != nil {
		return err
	}
	return execute(ctx, installed, plan(*installed, desiredTables(*installed, fronts, lastID)), m)
}

// execute performs ops in order and records each successful one in
// installed. Consecutive ops of one kind go to the kernel as one batch
// (BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH, which apply elements one by
// one in order, each atomically), so the ordering argument of plan holds
// element by element. After an error installed still describes the kernel
// exactly and the next sync repairs whatever is left.
func execute(ctx context.Context, installed *tables, ops []op, m mapSet) error {
	for i := 0; i < len(ops); {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("sync socketlb maps: %w", err)
		}
		j := i + 1
		for j < len(ops) && ops[j].kind == ops[i].kind {
			j++
		}
		if err := executeRun(installed, ops[i:j], m); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// executeRun performs ops that all have one kind.
func executeRun(installed *tables, ops []op, m mapSet) error {
	done := func(o op) {
		switch o.kind {
		case putBackend:
			installed.backends[o.be] = o.bval
		case putService:
			installed.services[o.svc] = o.sval
		case putMember:
			installed.members[o.mem] = o.mval
		case deleteService:
			delete(installed.services, o.svc)
		case deleteBackend:
			delete(installed.backends, o.be)
		case deleteMember:
			delete(installed.members, o.mem)
		}
	}
	target, keys, values := batchOf(ops, m)
	for len(ops) > 0 {
		var n int
		var err error
		if values != nil {
			n, err = target.BatchUpdate(keys, values, nil)
		} else {
			n, err = target.BatchDelete(keys, nil)
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			// No batch API (before 5.6): one syscall per element.
			return executeOneByOne(ops, target, done)
		}
		n = min(max(n, 0), len(ops))
		for _, o := range ops[:n] {
			done(o)
		}
		if err == nil {
			return nil
		}
		if values == nil && errors.Is(err, ebpf.ErrKeyNotExist) && n < len(ops) {
			// A delete of something already gone is done.
			done(ops[n])
			n++
		} else {
			failed := "batch"
			if n < len(ops) {
				failed = ops[n].String()
			}
			return fmt.Errorf("%s: %w", failed, err)
		}
		ops = ops[n:]
		keys, values = sliceFrom(keys, n), sliceFrom(values, n)
	}
	return nil
}

func executeOneByOne(ops []op, target bpfMap, done func(op)) error {
	for _, o := range ops {
		var err error
		switch o.kind {
		case putBackend:
			err = target.Put(o.be, o.bval)
		case putService:
			err = target.Put(o.svc, o.sval)
		case putMember:
			err = target.Put(o.mem, o.mval)
		case deleteService:
			err = target.Delete(o.svc)
		case deleteBackend:
			err = target.Delete(o.be)
		case deleteMember:
			err = target.Delete(o.mem)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
		done(o)
	}
	return nil
}

// batchOf returns the map ops of one kind go to, and their keys and values
// as typed slices (values is nil for deletes).
func batchOf(ops []op, m mapSet) (bpfMap, any, any) {
	switch ops[0].kind {
	case putBackend:
		return m.backends, collect(ops, func(o op) socketlbBackendKey { return o.be }), collect(ops, func(o op) socketlbBackendEntry { return o.bval })
	case putService:
		return m.services, collect(ops, func(o op) socketlbSvcKey { return o.svc }), collect(ops, func(o op) socketlbSvcEntry { return o.sval })
	case putMember:
		return m.members, collect(ops, func(o op) socketlbMemberKey { return o.mem }), collect(ops, func(o op) uint32 { return o.mval })
	case deleteService:
		return m.services, collect(ops, func(o op) socketlbSvcKey { return o.svc }), nil
	case deleteBackend:
		return m.backends, collect(ops, func(o op) socketlbBackendKey { return o.be }), nil
	default:
		return m.members, collect(ops, func(o op) socketlbMemberKey { return o.mem }), nil
	}
}

func collect[T any](ops []op, f func(op) T) []T {
	out := make([]T, len(ops))
	for i, o := range ops {
		out[i] = f(o)
	}
	return out
}

// sliceFrom returns s[n:] for the typed slices batchOf builds.
func sliceFrom(s any, n int) any {
	switch v := s.(type) {
	case nil:
		return nil
	case []socketlbBackendKey:
		return v[n:]
	case []socketlbBackendEntry:
		return v[n:]
	case []socketlbSvcKey:
		return v[n:]
	case []socketlbSvcEntry:
		return v[n:]
	case []socketlbMemberKey:
		return v[n:]
	case []uint32:
		return v[n:]
	default:
		panic(fmt.Sprintf("sliceFrom: unexpected %T", s))
	}
}

func (o op) String() string {
	switch o.kind {
	case putBackend, deleteBackend:
		return fmt.Sprintf("%s %d/%d", o.kind, o.be.SvcId, o.be.Slot)
	case putMember, deleteMember:
		return fmt.Sprintf("%s %d/%s", o.kind, o.mem.SvcId, o.mem.backend().addrPort())
	default:
		return fmt.Sprintf("%s %s", o.kind, o.svc)
	}
}
