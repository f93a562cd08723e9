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
