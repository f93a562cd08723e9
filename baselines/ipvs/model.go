package ipvs

import (
	"cmp"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"time"

	libipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
)

// What every virtual and real server of this baseline looks like, as
// kube-proxy's IPVS mode programs a ClusterIP without session affinity.
const (
	scheduler = libipvs.RoundRobin
	// forward is the real servers' forwarding method: masquerade (IPVS's
	// "NAT" mode), which rewrites the destination to the endpoint and the
	// replies' source back to the VIP on their way through the node.
	forward = libipvs.ConnectionFlagMasq
	weight  = 1
	// flagHashed is set by the kernel on every service it has hashed into
	// its table (IP_VS_SVC_F_HASHED); it is never ours to set, so it is
	// masked out of what is read back.
	flagHashed = 0x2
	// flagPersistent is IP_VS_SVC_F_PERSISTENT (moby/ipvs v1.1.0 has no
	// name for it): connections from one client address go to the real
	// server it last used until the service's timeout has passed since its
	// last connection ended. It is how kube-proxy's IPVS mode implements
	// ClientIP session affinity.
	flagPersistent = 0x1
	// netmask4 is the netmask attribute of an IPv4 service: with
	// persistence, /32 makes each client address its own persistence
	// group, as ClientIP affinity means.
	netmask4 = 0xffffffff
	// netmask6 is the same for an IPv6 service, where the kernel takes a
	// prefix length (128) rather than a mask, as kube-proxy sets it.
	netmask6 = 128
)

// addressFamily is the IPVS address family of a: AF_INET or AF_INET6.
// Virtual servers and real servers of a service are of one family
// (kubeproxy.VIPPorts refuses a service mixing them), as kube-proxy's
// per-family proxiers program them.
func addressFamily(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// vsKey identifies a virtual server: VIP, port and protocol.
type vsKey struct {
	addr  netip.Addr
	port  uint16
	proto datapath.Protocol
}

func (k vsKey) String() string {
	return netip.AddrPortFrom(k.addr, k.port).String() + "/" + string(k.proto)
}

func (k vsKey) compare(o vsKey) int {
	if c := k.addr.Compare(o.addr); c != 0 {
		return c
	}
	if c := cmp.Compare(k.port, o.port); c != 0 {
		return c
	}
	return cmp.Compare(k.proto, o.proto)
}

// virtualServer is an IPVS service with its real servers.
type virtualServer struct {
	key vsKey
	// scheduler, flags and timeout are the service's attributes that an
	// update can change.
	scheduler string
	flags     uint32
	timeout   uint32
	dests     map[netip.AddrPort]realServer
}

// realServer is one IPVS destination.
type realServer struct {
	addr    netip.AddrPort
	weight  int
	forward uint32
}

// table is a set of virtual servers.
type table map[vsKey]*virtualServer

// keys returns the table's keys in order.
func (t table) keys() []vsKey {
	ks := make([]vsKey, 0, len(t))
	for k := range t {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, vsKey.compare)
	return ks
}

// desired is what kube-proxy's IPVS mode would program for st: one virtual
// server per ClusterIP, port and protocol, round robin, with a masquerade
// real server of weight 1 per endpoint that should take new connections.
// A service port without such endpoints is a virtual server without real
// servers: IPVS then answers its clients with ICMP port unreachable, so they
// see ECONNREFUSED, as with the other datapaths. It also returns the
// ClusterIPs, sorted, that must be on the dummy interface.
//
// ClientIP session affinity is IPVS persistence: the persistent flag with
// the affinity timeout in seconds (IPVS counts the timeout from a client's
// last connection's end, Kubernetes from its last packet; close enough for
// the idle-timeout behaviour both describe).
// TODO: kube-proxy does not delete a removed endpoint's real server at once
// but sets its weight to 0 and deletes it when its connections are gone
// (graceful termination); here it is deleted in the same sync.
func desired(st datapath.State) (table, []netip.Addr, error) {
	ports, vips, err := kubeproxy.VIPPorts(st, "ipvs", "virtual server")
	if err != nil {
		return nil, nil, err
	}
	want := table{}
	for _, p := range ports {
		k := vsKey{p.VIP.Addr(), p.VIP.Port(), p.Protocol}
		vs := &virtualServer{key: k, scheduler: scheduler, dests: map[netip.AddrPort]realServer{}}
		if p.Affinity == datapath.SessionAffinityClientIP {
			secs := p.AffinityTimeout / time.Second
			if secs < 1 || secs > math.MaxUint32 {
				return nil, nil, fmt.Errorf("service port %s: affinity timeout %v is outside 1s..%ds", p.Name, p.AffinityTimeout, uint32(math.MaxUint32))
			}
			vs.flags |= flagPersistent
			vs.timeout = uint32(secs)
		}
		for _, ep := range p.Ready {
			a := netip.AddrPortFrom(ep.Addr, p.TargetPort)
			vs.dests[a] = realServer{addr: a, weight: weight, forward: forward}
		}
		want[k] = vs
	}
	return want, vips, nil
}

// opKind is one kind of IPVS netlink command.
type opKind int

const (
	addService opKind = iota
	updateService
	delService
	addDest
	updateDest
	delDest
)

var opNames = map[opKind]string{
	addService: "add-service", updateService: "update-service", delService: "del-service",
	addDest: "add-dest", updateDest: "update-dest", delDest: "del-dest",
}

// op is one command of a sync. For destination ops, vs is the service and
// rs the destination.
type op struct {
	kind opKind
	vs   *virtualServer
	rs   realServer
}

// String renders an op the way the tests compare them.
func (o op) String() string {
	switch o.kind {
	case addService, updateService:
		return fmt.Sprintf("%s %s %s flags=%#x timeout=%d", opNames[o.kind], o.vs.key, o.vs.scheduler, o.vs.flags, o.vs.timeout)
	case delService:
		return fmt.Sprintf("%s %s", opNames[o.kind], o.vs.key)
	case delDest:
		return fmt.Sprintf("%s %s -> %s", opNames[o.kind], o.vs.key, o.rs.addr)
	}
	return fmt.Sprintf("%s %s -> %s weight=%d fwd=%d", opNames[o.kind], o.vs.key, o.rs.addr, o.rs.weight, o.rs.forward)
}

// diff returns the commands that turn have into want, in an order that
// never leaves a service that keeps endpoints without a real server: for
// each wanted service (sorted) it is created or updated, then its new real
// servers are added, changed ones updated, and only then vanished ones
// deleted; services no longer wanted are deleted last (the kernel deletes
// their real servers with them).
func diff(have, want table) []op {
	var ops []op
	for _, k := range want.keys() {
		w := want[k]
		h, ok := have[k]
		switch {
		case !ok:
			ops = append(ops, op{kind: addService, vs: w})
			h = &virtualServer{key: k}
		case h.scheduler != w.scheduler || h.flags != w.flags || h.timeout != w.timeout:
			ops = append(ops, op{kind: updateService, vs: w})
		}
		for _, a := range sortedDests(w.dests) {
			rs := w.dests[a]
			old, ok := h.dests[a]
			switch {
			case !ok:
				ops = append(ops, op{kind: addDest, vs: w, rs: rs})
			case old != rs:
				ops = append(ops, op{kind: updateDest, vs: w, rs: rs})
			}
		}
		for _, a := range sortedDests(h.dests) {
			if _, ok := w.dests[a]; !ok {
				ops = append(ops, op{kind: delDest, vs: w, rs: h.dests[a]})
			}
		}
	}
	for _, k := range have.keys() {
		if _, ok := want[k]; !ok {
			ops = append(ops, op{kind: delService, vs: have[k]})
		}
	}
	return ops
}

func sortedDests(m map[netip.AddrPort]realServer) []netip.AddrPort {
	as := make([]netip.AddrPort, 0, len(m))
	for a := range m {
		as = append(as, a)
	}
	slices.SortFunc(as, netip.AddrPort.Compare)
	return as
}

// Conversions between this package's model and moby/ipvs's netlink
// structures.

var protoNumbers = map[datapath.Protocol]uint16{datapath.TCP: unix.IPPROTO_TCP, datapath.UDP: unix.IPPROTO_UDP}

func toIPVSService(vs *virtualServer) *libipvs.Service {
	netmask := uint32(netmask4)
	if !vs.key.addr.Is4() {
		netmask = netmask6
	}
	return &libipvs.Service{
		AddressFamily: addressFamily(vs.key.addr),
		Address:       net.IP(vs.key.addr.AsSlice()),
		Protocol:      protoNumbers[vs.key.proto],
		Port:          vs.key.port,
		SchedName:     vs.scheduler,
		Flags:         vs.flags,
		Timeout:       vs.timeout,
		Netmask:       netmask,
	}
}

// fromIPVSService converts a service read from the kernel; ok is false for
// services this baseline never creates (firewall-mark, other protocols, an
// address not of the service's family), which it leaves alone.
func fromIPVSService(s *libipvs.Service) (vs *virtualServer, ok bool) {
	if s.FWMark != 0 {
		return nil, false
	}
	addr, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return nil, false
	}
	switch s.AddressFamily {
	case unix.AF_INET:
		// moby/ipvs may hand an IPv4 address back in 16-byte form.
		addr = addr.Unmap()
		if !addr.Is4() {
			return nil, false
		}
	case unix.AF_INET6:
		if !kubeproxy.IPv6.Has(addr) {
			return nil, false
		}
	default:
		return nil, false
	}
	var proto datapath.Protocol
	for p, n := range protoNumbers {
		if n == s.Protocol {
			proto = p
		}
	}
	if proto == "" {
		return nil, false
	}
	return &virtualServer{
		key:       vsKey{addr, s.Port, proto},
		scheduler: s.SchedName,
		flags:     s.Flags &^ flagHashed,
		timeout:   s.Timeout,
		dests:     map[netip.AddrPort]realServer{},
	}, true
}

func toIPVSDest(rs realServer) *libipvs.Destination {
	return &libipvs.Destination{
		AddressFamily:   addressFamily(rs.addr.Addr()),
		Address:         net.IP(rs.addr.Addr().AsSlice()),
		Port:            rs.addr.Port(),
		Weight:          rs.weight,
		ConnectionFlags: rs.forward,
	}
}

func fromIPVSDest(d *libipvs.Destination) (realServer, error) {
	addr, ok := netip.AddrFromSlice(d.Address)
	if !ok {
		return realServer{}, fmt.Errorf("destination address %v is not an IP address", d.Address)
	}
	return realServer{
		addr:    netip.AddrPortFrom(addr.Unmap(), d.Port),
		weight:  d.Weight,
		forward: d.ConnectionFlags & libipvs.ConnectionFlagFwdMask,
	}, nil
}
