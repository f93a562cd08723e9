// Package twin6 gives IPv4 fixtures their IPv6 twins: the same services,
// endpoints and prefixes on IPv6 addresses that spell out the IPv4 ones,
// so a test (or a probe) written for IPv4 exercises the IPv6 rules of a
// dual-stack baseline, and a golden file shows which IPv4 case it mirrors.
package twin6

import (
	"fmt"
	"net/netip"

	"svclab/datapath"
)

// Addr is the IPv6 address the fixtures and the probe give the IPv4
// address a.b.c.d: fd00:a:b:c::d, each byte written in decimal digits so a
// reader of a golden file sees which IPv4 fixture it mirrors
// (10.96.0.10 → fd00:10:96::10, 10.244.1.3 → fd00:10:244:1::3). Any other
// address is returned as it is.
func Addr(a netip.Addr) netip.Addr {
	if !a.Is4() {
		return a
	}
	b := a.As4()
	return netip.MustParseAddr(fmt.Sprintf("fd00:%d:%d:%d::%d", b[0], b[1], b[2], b[3]))
}

// Prefix is the IPv6 twin of an IPv4 prefix of at most /24 bits:
// the twin of its address with 8 bits of prefix for each IPv4 octet it
// fixes plus the fd00 group (10.244.0.0/16 → fd00:10:244::/48).
func Prefix(p netip.Prefix) netip.Prefix {
	if !p.Addr().Is4() {
		return p
	}
	return netip.PrefixFrom(Addr(p.Masked().Addr()), 16+16*((p.Bits()+7)/8)).Masked()
}

// State is st with every cluster IP and endpoint address replaced by
// its Addr: the same services, as the IPv6 proxier of a dual-stack node
// would see their IPv6 counterparts.
func State(st datapath.State) datapath.State {
	out := datapath.State{Services: make([]datapath.Service, len(st.Services))}
	for i, svc := range st.Services {
		svc.ClusterIP = Addr(svc.ClusterIP)
		eps := make([]datapath.Endpoint, len(svc.Endpoints))
		for j, ep := range svc.Endpoints {
			ep.Addr = Addr(ep.Addr)
			eps[j] = ep
		}
		svc.Endpoints = eps
		out.Services[i] = svc
	}
	return out
}
