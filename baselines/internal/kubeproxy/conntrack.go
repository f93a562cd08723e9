package kubeproxy

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/nsutil"
)

// UDPEndpoints maps each UDP service port of a state (ClusterIP:port) to
// the endpoints (address:target port) the datapath sends its new flows to;
// the set is empty for a port without such endpoints.
type UDPEndpoints map[netip.AddrPort]map[netip.AddrPort]bool

// UDPServing returns st's UDP service ports with their endpoints, as a
// ruleset baseline programs them (ReadyEndpoints), of both families.
// Services whose cluster IP is neither IPv4 nor IPv6 are left out: no
// baseline programs them.
func UDPServing(st datapath.State) UDPEndpoints {
	out := UDPEndpoints{}
	for _, svc := range st.Services {
		if !IPv4.Has(svc.ClusterIP) && !IPv6.Has(svc.ClusterIP) {
			continue
		}
		ready := svc.ReadyEndpoints()
		for _, p := range svc.Ports {
			if p.Protocol != datapath.UDP {
				continue
			}
			eps := map[netip.AddrPort]bool{}
			for _, ep := range ready {
				eps[netip.AddrPortFrom(ep.Addr, p.TargetPort)] = true
			}
			out[netip.AddrPortFrom(svc.ClusterIP, p.Port)] = eps
		}
	}
	return out
}

// staleUDPFilter matches the UDP conntrack entries that would keep sending
// a client's datagrams where the current state no longer sends new flows:
// the original destination is a service port of before or now, and the
// reply comes from something that is not (any more) one of its endpoints.
// That covers an endpoint that was removed, a service that was removed, and
// a port that had no endpoints (its entry, if any, was never translated, so
// its reply source is the ClusterIP itself) and now has some.
type staleUDPFilter struct {
	// ports is every service port of the previous and the current state,
	// each with its current endpoints (none for a port that is gone).
	ports UDPEndpoints
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f staleUDPFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok := addrPort(flow.Forward.DstIP, flow.Forward.DstPort)
	if !ok {
		return false
	}
	eps, ok := f.ports[dst]
	if !ok {
		return false
	}
	src, ok := addrPort(flow.Reverse.SrcIP, flow.Reverse.SrcPort)
	return !ok || !eps[src]
}

func addrPort(ip []byte, port uint16) (netip.AddrPort, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), port), true
}

// CleanStaleUDP deletes, in ns's conntrack table, the UDP entries that an
// Apply from prev to cur (each from UDPServing) made stale (see staleUDPFilter), and returns how
// many it deleted. Without it a client that keeps its source port (a
// long-lived unconnected socket, or a new socket that happens to reuse the
// port) keeps being translated to a removed endpoint until the entry times
// out, because NAT is decided only for a connection's first packet. TCP
// needs no such cleanup: a removed endpoint answers with a reset or not at
// all, and the client opens a new connection.
func CleanStaleUDP(ns *nsutil.NS, prev, cur UDPEndpoints) (uint, error) {
	ports := UDPEndpoints{}
	for vip, eps := range cur {
		ports[vip] = eps
	}
	for vip := range prev {
		if _, ok := ports[vip]; !ok {
			ports[vip] = map[netip.AddrPort]bool{}
		}
	}
	if len(ports) == 0 {
		return 0, nil
	}
	h, err := ns.NetlinkHandle()
	if err != nil {
		return 0, fmt.Errorf("udp conntrack cleanup: %w", err)
	}
	defer h.Close()
	// The conntrack table is dumped per address family: IPv6 entries are
	// only seen by an AF_INET6 dump, so each family with a port is dumped.
	var total uint
	for _, f := range Families {
		has := false
		for vip := range ports {
			if f.Has(vip.Addr()) {
				has = true
				break
			}
		}
		if !has {
			continue
		}
		af := uint8(unix.AF_INET)
		if f == IPv6 {
			af = unix.AF_INET6
		}
		n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(af), staleUDPFilter{ports: ports})
		total += n
		// An interrupted dump (the table changed while it was read) still
		// deleted every stale entry it saw; one it missed is left to time
		// out, as it would be without this cleanup.
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return total, fmt.Errorf("udp conntrack cleanup (%s) in %s: %w", f, ns.Name, err)
		}
	}
	return total, nil
}
