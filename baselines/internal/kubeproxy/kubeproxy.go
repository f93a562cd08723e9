// Package kubeproxy holds what the kube-proxy-mode baselines (iptables,
// nftables, ipvs, userspace) share and that is not one mode's own rendering:
// kube-proxy's name hashing, the checks that turn a State into the service
// ports a baseline can program, running a ruleset tool inside a namespace,
// the probe in a throw-away namespace, and the node sysctls a mode sets.
package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"svclab/datapath"
)

// NameHash is the first n characters of base32(sha256(s)), the hash
// kube-proxy puts in its chain names (16 characters in iptables mode,
// 8 in nftables mode). It is stable across restarts, which matters because
// kube-proxy (and the baselines) find stale chains by name.
func NameHash(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:n]
}

// Proto is the lower-case protocol name that iptables and nft match on and
// that kube-proxy hashes into chain names. baseline names the datapath in
// the error for any other protocol.
func Proto(p datapath.Protocol, baseline string) (string, error) {
	switch p {
	case datapath.TCP:
		return "tcp", nil
	case datapath.UDP:
		return "udp", nil
	}
	return "", fmt.Errorf("protocol %q not supported by the %s baseline", p, baseline)
}

// SortedServices returns st's services ordered by namespace/name, so a
// rendered ruleset does not depend on the caller's order.
func SortedServices(st datapath.State) []datapath.Service {
	svcs := slices.Clone(st.Services)
	sort.SliceStable(svcs, func(i, j int) bool { return svcs[i].String() < svcs[j].String() })
	return svcs
}

// UniqueEndpoints returns the endpoint addresses in order, without
// duplicates: two EndpointSlice entries for one address would otherwise
// render the same per-endpoint chain twice.
func UniqueEndpoints(eps []datapath.Endpoint) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, ep := range eps {
		if !seen[ep.Addr] {
			seen[ep.Addr] = true
			out = append(out, ep.Addr)
		}
	}
	return out
}

// IPv4Endpoints is FamilyEndpoints for IPv4.
func IPv4Endpoints(svc datapath.Service, baseline string) ([]netip.Addr, error) {
	return FamilyEndpoints(svc, IPv4, baseline)
}

// unsupportedError marks a State the baseline cannot program at all (an
// IPv6 service where the node serves IPv4 only, a service mixing
// families): errors.Is matches datapath.ErrUnsupported, so a harness
// reports a skip with the reason rather than a failure, and the message
// stays the baseline's own.
type unsupportedError struct{ error }

func (e unsupportedError) Is(target error) bool { return target == datapath.ErrUnsupported }
func (e unsupportedError) Unwrap() error        { return e.error }

func unsupported(err error) error { return unsupportedError{err} }

// VIPPort is one service port of a baseline that serves ClusterIP:port on
// the node itself (IPVS virtual servers, the userspace proxy's sockets).
type VIPPort struct {
	// Name is "namespace/name:port", for error messages and logs.
	Name       string
	Protocol   datapath.Protocol
	VIP        netip.AddrPort
	TargetPort uint16
	// Ready are the endpoints that should take new connections.
	Ready []datapath.Endpoint
	// Affinity is the service's session affinity (None when empty), and
	// AffinityTimeout its effective timeout when Affinity is ClientIP.
	Affinity        datapath.SessionAffinity
	AffinityTimeout time.Duration
}

// VIPPorts checks st for a baseline that owns the ClusterIP addresses and
// returns its service ports in st's order, with the ClusterIPs (sorted,
// IPv4 before IPv6) that must be local addresses of the node. It rejects,
// naming the service and field at fault: a cluster IP that is not a usable
// IPv4 or IPv6 address, an endpoint of the other family than its cluster
// IP, a protocol other than TCP and UDP, a zero port or target port, and
// two service ports on one VIP, port and protocol (what names the object
// they would share: "virtual server", "frontend").
func VIPPorts(st datapath.State, baseline, what string) ([]VIPPort, []netip.Addr, error) {
	var out []VIPPort
	owner := map[string]string{}
	vipSet := map[netip.Addr]bool{}
	for _, svc := range st.Services {
		fam := FamilyOf(svc.ClusterIP)
		if !fam.Has(svc.ClusterIP) || svc.ClusterIP.IsUnspecified() {
			return nil, nil, fmt.Errorf("service %s: cluster IP %v is not a usable IPv4 or IPv6 address (the %s baseline)", svc, svc.ClusterIP, baseline)
		}
		ready := svc.ReadyEndpoints()
		for _, ep := range ready {
			if !fam.Has(ep.Addr) {
				return nil, nil, unsupported(fmt.Errorf("service %s: endpoint %s (%s) is not %s like the cluster IP", svc, ep.Addr, ep.Pod, fam))
			}
		}
		for _, p := range svc.Ports {
			name := fmt.Sprintf("%s:%d", svc, p.Port)
			switch {
			case p.Protocol != datapath.TCP && p.Protocol != datapath.UDP:
				return nil, nil, fmt.Errorf("service %s: protocol %q not supported by the %s baseline", name, p.Protocol, baseline)
			case p.Port == 0:
				return nil, nil, fmt.Errorf("service %s port %q: port is 0", svc, p.Name)
			case p.TargetPort == 0:
				return nil, nil, fmt.Errorf("service %s: target port is 0", name)
			}
			vp := VIPPort{Name: name, Protocol: p.Protocol, VIP: netip.AddrPortFrom(svc.ClusterIP, p.Port), TargetPort: p.TargetPort, Ready: ready}
			if svc.SessionAffinity == datapath.SessionAffinityClientIP {
				vp.Affinity = datapath.SessionAffinityClientIP
				vp.AffinityTimeout = svc.EffectiveAffinityTimeout()
			}
			key := vp.VIP.String() + "/" + string(vp.Protocol)
			if other, dup := owner[key]; dup {
				return nil, nil, fmt.Errorf("service %s: %s %s already used by %s", name, what, key, other)
			}
			owner[key] = name
			out = append(out, vp)
			vipSet[svc.ClusterIP] = true
		}
	}
	vips := make([]netip.Addr, 0, len(vipSet))
	for a := range vipSet {
		vips = append(vips, a)
	}
	slices.SortFunc(vips, netip.Addr.Compare)
	return out, vips, nil
}

// AddrDiff returns the addresses to add to have and to remove from it to
// make it want, each sorted.
func AddrDiff(have, want []netip.Addr) (add, remove []netip.Addr) {
	wantSet := map[netip.Addr]bool{}
	for _, a := range want {
		wantSet[a] = true
	}
	haveSet := map[netip.Addr]bool{}
	for _, a := range have {
		haveSet[a] = true
		if !wantSet[a] {
			remove = append(remove, a)
		}
	}
	for _, a := range want {
		if !haveSet[a] {
			add = append(add, a)
		}
	}
	slices.SortFunc(add, netip.Addr.Compare)
	slices.SortFunc(remove, netip.Addr.Compare)
	return add, remove
}
