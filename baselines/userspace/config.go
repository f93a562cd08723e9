package userspace

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"svclab/datapath"
)

// proxyConfig is one message from the datapath to the proxy process: the
// complete set of frontends the proxy must serve. Seq is echoed in the ack.
type proxyConfig struct {
	Seq       uint64     `json:"seq"`
	Frontends []frontend `json:"frontends"`
}

// frontend is one service port: where the proxy listens and the endpoints
// it forwards to. A frontend without backends is not listened on, so that
// connections to it are refused by the kernel.
type frontend struct {
	// Name is "namespace/name:port" for error messages.
	Name     string            `json:"name"`
	Protocol datapath.Protocol `json:"protocol"`
	VIP      netip.AddrPort    `json:"vip"`
	Backends []netip.AddrPort  `json:"backends"`
}

// key identifies a frontend's socket: protocol and VIP:port.
func (f frontend) key() frontendKey { return frontendKey{f.Protocol, f.VIP} }

type frontendKey struct {
	proto datapath.Protocol
	vip   netip.AddrPort
}

func (k frontendKey) String() string { return k.vip.String() + "/" + string(k.proto) }

// proxyAck is the proxy's answer to a proxyConfig: the config is in force
// when the ack arrives. Seq 0 is the ack sent once at start-up.
type proxyAck struct {
	Seq uint64 `json:"seq"`
	// Listening is the number of frontend sockets open after the config.
	Listening int    `json:"listening"`
	Error     string `json:"error,omitempty"`
}

// desired turns a State into the proxy's frontends (sorted by VIP, port
// and protocol) and the set of ClusterIPs that must be local addresses of
// the node. It rejects what the proxy cannot serve, naming the service and
// field at fault.
func desired(st datapath.State) ([]frontend, []netip.Addr, error) {
	var fes []frontend
	owner := map[frontendKey]string{}
	vipSet := map[netip.Addr]bool{}
	for _, svc := range st.Services {
		if !svc.ClusterIP.IsValid() || !svc.ClusterIP.Is4() || svc.ClusterIP.IsUnspecified() {
			return nil, nil, fmt.Errorf("service %s: cluster IP %v is not a usable IPv4 address (the userspace baseline is IPv4 only)", svc, svc.ClusterIP)
		}
		ready := svc.ReadyEndpoints()
		for _, ep := range ready {
			if !ep.Addr.Is4() {
				return nil, nil, fmt.Errorf("service %s: endpoint %s (%s) is not IPv4", svc, ep.Addr, ep.Pod)
			}
		}
		for _, p := range svc.Ports {
			name := fmt.Sprintf("%s:%d", svc, p.Port)
			switch {
			case p.Protocol != datapath.TCP && p.Protocol != datapath.UDP:
				return nil, nil, fmt.Errorf("service %s: protocol %q not supported by the userspace baseline", name, p.Protocol)
			case p.Port == 0:
				return nil, nil, fmt.Errorf("service %s port %q: port is 0", svc, p.Name)
			case p.TargetPort == 0:
				return nil, nil, fmt.Errorf("service %s: target port is 0", name)
			}
			fe := frontend{Name: name, Protocol: p.Protocol, VIP: netip.AddrPortFrom(svc.ClusterIP, p.Port)}
			if other, dup := owner[fe.key()]; dup {
				return nil, nil, fmt.Errorf("service %s: frontend %s already used by %s", name, fe.key(), other)
			}
			owner[fe.key()] = name
			for _, ep := range ready {
				fe.Backends = append(fe.Backends, netip.AddrPortFrom(ep.Addr, p.TargetPort))
			}
			fes = append(fes, fe)
			vipSet[svc.ClusterIP] = true
		}
	}
	slices.SortFunc(fes, func(a, b frontend) int {
		if c := a.VIP.Compare(b.VIP); c != 0 {
			return c
		}
		return cmp.Compare(a.Protocol, b.Protocol)
	})
	vips := make([]netip.Addr, 0, len(vipSet))
	for a := range vipSet {
		vips = append(vips, a)
	}
	slices.SortFunc(vips, netip.Addr.Compare)
	return fes, vips, nil
}

// addrDiff returns what to add to and remove from have to make it want.
func addrDiff(have map[netip.Addr]bool, want []netip.Addr) (add, remove []netip.Addr) {
	wantSet := map[netip.Addr]bool{}
	for _, a := range want {
		wantSet[a] = true
		if !have[a] {
			add = append(add, a)
		}
	}
	for a := range have {
		if !wantSet[a] {
			remove = append(remove, a)
		}
	}
	slices.SortFunc(add, netip.Addr.Compare)
	slices.SortFunc(remove, netip.Addr.Compare)
	return add, remove
}
