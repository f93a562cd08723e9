package socketlb

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"svclab/datapath"
	"svclab/internal/lbmaps"
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

func (k socketlbBackendKey) String() string {
	return fmt.Sprintf("%d/%d", k.SvcId, k.Slot)
}

func (k socketlbMemberKey) String() string {
	return fmt.Sprintf("%d/%s", k.SvcId, k.backend().addrPort())
}

func cmpWords(a, b [4]uint32) int {
	for i := range a {
		if a[i] != b[i] {
			return cmp.Compare(a[i], b[i])
		}
	}
	return 0
}

func cmpSvcKey(a, b socketlbSvcKey) int {
	if c := cmpWords(a.Addr, b.Addr); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return cmp.Compare(a.Port, b.Port)
	}
	return cmp.Compare(a.Proto, b.Proto)
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

// rules are what the maps can hold. A service is single-family, like a
// Kubernetes EndpointSlice: an IPv4 ClusterIP with IPv4 endpoints or an
// IPv6 one with IPv6 endpoints (a dual-stack Service is two Services here).
var rules = lbmaps.Rules[uint32, socketlbBackendEntry]{
	MaxServices:        maxServices,
	MaxBackends:        maxBackends,
	MaxServiceBackends: maxServiceBackends,
	ErrUnsupported:     ErrUnsupportedService,
	ErrCapacity:        ErrCapacity,
	Backend:            backendEntry,
	Service:            affinityMs,
	Endpoint: func(port string, vip netip.Addr, ep datapath.Endpoint) error {
		if ep.Addr.Unmap().Is4() != vip.Is4() {
			return fmt.Errorf("service %s: endpoint %s (%s) is not of the ClusterIP's family (%s): %w", port, ep.Addr, ep.Pod, vip, ErrUnsupportedService)
		}
		return nil
	},
}

// affinityMs returns a service's ClientIP affinity timeout in milliseconds
// (rounded up), or 0 without affinity.
func affinityMs(svc datapath.Service, _ netip.Addr) (uint32, error) {
	switch svc.SessionAffinity {
	case "", datapath.SessionAffinityNone:
		return 0, nil
	case datapath.SessionAffinityClientIP:
		timeout := svc.EffectiveAffinityTimeout()
		if timeout < time.Millisecond || timeout > maxAffinityTimeout {
			return 0, fmt.Errorf("service %s: affinity timeout %s is outside [1ms, %s]: %w", svc, timeout, maxAffinityTimeout, ErrUnsupportedService)
		}
		return uint32((timeout + time.Millisecond - 1) / time.Millisecond), nil
	default:
		return 0, fmt.Errorf("service %s: session affinity %q: %w", svc, svc.SessionAffinity, ErrUnsupportedService)
	}
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
		out = append(out, frontend{
			key:        svcKey(p.Frontend.Addr(), p.Frontend.Port(), p.Protocol),
			meta:       frontendMeta{service: p.Service, port: p.Port.Port, protocol: p.Port.Protocol, vip: p.Frontend},
			affinityMs: p.Info,
			backends:   p.Backends,
			pods:       p.Pods,
		})
	}
	return out, nil
}

// layout is how lbmaps reads and builds the entries of the services,
// backends and members maps.
var layout = lbmaps.Layout[socketlbSvcKey, socketlbSvcEntry, socketlbBackendKey, socketlbBackendEntry, socketlbMemberKey]{
	Name:    "socketlb",
	SlotKey: func(id, slot uint32) socketlbBackendKey { return socketlbBackendKey{SvcId: id, Slot: slot} },
	SlotOf:  func(k socketlbBackendKey) (uint32, uint32) { return k.SvcId, k.Slot },
	Slots:   func(e socketlbSvcEntry) (uint32, uint32) { return e.Id, uint32(e.Count) },
	SetSlots: func(e socketlbSvcEntry, id, count uint32) socketlbSvcEntry {
		e.Id, e.Count = id, uint16(count)
		return e
	},
	CompareServices: cmpSvcKey,
	MemberKey:       memberKey,
	MemberID:        func(k socketlbMemberKey) uint32 { return k.SvcId },
	CompareMembers: func(a, b socketlbMemberKey) int {
		if c := cmpWords(a.Addr, b.Addr); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	},
}

type (
	lbTables   = lbmaps.Tables[socketlbSvcKey, socketlbSvcEntry, socketlbBackendKey, socketlbBackendEntry, socketlbMemberKey]
	lbOp       = lbmaps.Op[socketlbSvcKey, socketlbSvcEntry, socketlbBackendKey, socketlbBackendEntry, socketlbMemberKey]
	lbFrontend = lbmaps.Frontend[socketlbSvcKey, socketlbSvcEntry, socketlbBackendEntry]
)

// tables is the content of the three maps Apply programs.
type tables struct {
	services map[socketlbSvcKey]socketlbSvcEntry
	backends map[socketlbBackendKey]socketlbBackendEntry
	// members maps {service id, backend} to its slot.
	members map[socketlbMemberKey]uint32
}

func newTables() tables { return fromLB(layout.NewTables()) }

// lb returns t as lbmaps holds it: the same maps, so what lbmaps writes
// into them t holds too.
func (t tables) lb() lbTables {
	return lbTables{Services: t.services, Backends: t.backends, Members: t.members}
}

func fromLB(t lbTables) tables {
	return tables{services: t.Services, backends: t.Backends, members: t.Members}
}

// desiredTables lays the frontends out in map entries (see
// lbmaps.Layout.Desired). A new frontend takes the next id from *lastID:
// ids only grow, so no socket's saved state, affinity entry or counter can
// ever be mistaken for another service's.
func desiredTables(installed tables, fronts []frontend, lastID *uint32) tables {
	lf := make([]lbFrontend, len(fronts))
	for i, f := range fronts {
		var e socketlbSvcEntry
		if f.affinityMs != 0 {
			e.Flags |= svcFlagAffinity
			e.AffinityTimeoutMs = f.affinityMs
		}
		lf[i] = lbFrontend{Key: f.key, Service: e, Backends: f.backends}
	}
	return fromLB(layout.Desired(installed.lb(), lf, func() uint32 {
		*lastID++
		return *lastID
	}))
}

// opKind orders the steps of a resync; see lbmaps.Layout.Plan.
type opKind = lbmaps.Kind

// The kinds of op Apply looks for.
const (
	deleteMember  = lbmaps.DeleteMember
	deleteService = lbmaps.DeleteService
)

// op is one map write as lbmaps plans it, under the names Apply reads.
type op struct {
	kind opKind
	svc  socketlbSvcKey
	sval socketlbSvcEntry
	be   socketlbBackendKey
	bval socketlbBackendEntry
	mem  socketlbMemberKey
	mval uint32
}

func (o op) lb() lbOp {
	return lbOp{Kind: o.kind, Service: o.svc, Entry: o.sval, Slot: o.be, Backend: o.bval, Member: o.mem, MemberSlot: o.mval}
}

func (o op) String() string { return o.lb().String() }

// plan returns the map writes that turn have into want, in the order of
// lbmaps.Layout.Plan: memberships that go first, then backend slots, new
// memberships, service entries, removed services, and last the slots
// nothing points at any more.
func plan(have, want tables) []op {
	lops := layout.Plan(have.lb(), want.lb())
	if lops == nil {
		return nil
	}
	ops := make([]op, len(lops))
	for i, o := range lops {
		ops[i] = op{kind: o.Kind, svc: o.Service, sval: o.Entry, be: o.Slot, bval: o.Backend, mem: o.Member, mval: o.MemberSlot}
	}
	return ops
}

// bpfMap is the part of *ebpf.Map a resync uses; tests substitute a fake.
type bpfMap = lbmaps.BatchMap

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
// installed (see lbmaps.Layout.Execute). Consecutive ops of one kind go to
// the kernel as one batch.
func execute(ctx context.Context, installed *tables, ops []op, m mapSet) error {
	lops := make([]lbOp, len(ops))
	for i, o := range ops {
		lops[i] = o.lb()
	}
	lb := installed.lb()
	return layout.Execute(ctx, &lb, lops, lbmaps.Maps{Services: m.services, Backends: m.backends, Members: m.members, Batch: true})
}
