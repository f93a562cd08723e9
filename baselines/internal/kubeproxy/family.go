package kubeproxy

import (
	"fmt"
	"net/netip"

	"svclab/datapath"
)

// Family is an IP family. kube-proxy in a dual-stack cluster runs one
// proxier per family (its "MetaProxier"), each programming only the
// services whose ClusterIP is of its family, in its own tables (iptables
// and ip6tables, nft tables `ip kube-proxy` and `ip6 kube-proxy`); the
// ruleset baselines do the same.
type Family int

// The two families.
const (
	IPv4 Family = iota
	IPv6
)

// Families lists both, IPv4 first: the order syncs and teardowns run in.
var Families = []Family{IPv4, IPv6}

// String is "IPv4" or "IPv6", as messages name the family.
func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Has reports whether a is an address of f. An IPv4-mapped IPv6 address
// belongs to neither (kube-proxy never sees one as a ClusterIP or an
// endpoint), so it is refused wherever it is used.
func (f Family) Has(a netip.Addr) bool {
	if f == IPv6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4()
}

// HostBits is the prefix length of one address: 32 or 128.
func (f Family) HostBits() int {
	if f == IPv6 {
		return 128
	}
	return 32
}

// FamilyOf is the family whose proxier programs a service with cluster IP
// a: IPv6 for an IPv6 address, IPv4 for everything else (so an invalid or
// IPv4-mapped address reaches the IPv4 renderer and is refused there with
// the message it always had).
func FamilyOf(a netip.Addr) Family {
	if IPv6.Has(a) {
		return IPv6
	}
	return IPv4
}

// SplitFamilies returns st's services per family (FamilyOf their cluster
// IP), each in st's order. A family without services gets the empty State,
// which its proxier syncs like any other (removing what it had).
func SplitFamilies(st datapath.State) map[Family]datapath.State {
	out := map[Family]datapath.State{IPv4: {}, IPv6: {}}
	for _, svc := range st.Services {
		f := FamilyOf(svc.ClusterIP)
		s := out[f]
		s.Services = append(s.Services, svc)
		out[f] = s
	}
	return out
}

// FamilyEndpoints checks that svc's cluster IP and the endpoints that
// should take new connections are of family f, and returns those
// endpoints' addresses without duplicates. A mismatch is unsupported (a
// harness skips the cell with the message): kube-proxy's EndpointSlices are
// per family, so a State mixing families in one service is not something a
// proxier is ever given. baseline names the datapath in the error.
func FamilyEndpoints(svc datapath.Service, f Family, baseline string) ([]netip.Addr, error) {
	if !f.Has(svc.ClusterIP) {
		return nil, unsupported(fmt.Errorf("service %s: cluster IP %v is not %s (the %s baseline's %s rules)", svc, svc.ClusterIP, f, baseline, f))
	}
	eps := UniqueEndpoints(svc.ReadyEndpoints())
	for _, ep := range eps {
		if !f.Has(ep) {
			return nil, unsupported(fmt.Errorf("service %s: endpoint %v is not %s", svc, ep, f))
		}
	}
	return eps, nil
}

// V6Twin is the IPv6 address the fixtures and the probe give the IPv4
// address a.b.c.d: fd00:a:b:c::d, each byte written in decimal digits so a
// reader of a golden file sees which IPv4 fixture it mirrors
// (10.96.0.10 → fd00:10:96::10, 10.244.1.3 → fd00:10:244:1::3). Any other
// address is returned as it is.
func V6Twin(a netip.Addr) netip.Addr {
	if !a.Is4() {
		return a
	}
	b := a.As4()
	return netip.MustParseAddr(fmt.Sprintf("fd00:%d:%d:%d::%d", b[0], b[1], b[2], b[3]))
}

// V6TwinPrefix is the IPv6 twin of an IPv4 prefix of at most /24 bits:
// the twin of its address with 8 bits of prefix for each IPv4 octet it
// fixes plus the fd00 group (10.244.0.0/16 → fd00:10:244::/48).
func V6TwinPrefix(p netip.Prefix) netip.Prefix {
	if !p.Addr().Is4() {
		return p
	}
	return netip.PrefixFrom(V6Twin(p.Masked().Addr()), 16+16*((p.Bits()+7)/8)).Masked()
}

// V6TwinState is st with every cluster IP and endpoint address replaced by
// its V6Twin: the same services, as the IPv6 proxier of a dual-stack node
// would see their IPv6 counterparts.
func V6TwinState(st datapath.State) datapath.State {
	out := datapath.State{Services: make([]datapath.Service, len(st.Services))}
	for i, svc := range st.Services {
		svc.ClusterIP = V6Twin(svc.ClusterIP)
		eps := make([]datapath.Endpoint, len(svc.Endpoints))
		for j, ep := range svc.Endpoints {
			ep.Addr = V6Twin(ep.Addr)
			eps[j] = ep
		}
		svc.Endpoints = eps
		out.Services[i] = svc
	}
	return out
}
