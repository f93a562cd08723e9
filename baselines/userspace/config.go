package userspace

import (
	"cmp"
	"net/netip"
	"slices"

	"svclab/baselines/internal/kubeproxy"
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
	ports, vips, err := kubeproxy.VIPPorts(st, "userspace", "frontend")
	if err != nil {
		return nil, nil, err
	}
	var fes []frontend
	for _, p := range ports {
		fe := frontend{Name: p.Name, Protocol: p.Protocol, VIP: p.VIP}
		for _, ep := range p.Ready {
			fe.Backends = append(fe.Backends, netip.AddrPortFrom(ep.Addr, p.TargetPort))
		}
		fes = append(fes, fe)
	}
	slices.SortFunc(fes, func(a, b frontend) int {
		if c := a.VIP.Compare(b.VIP); c != 0 {
			return c
		}
		return cmp.Compare(a.Protocol, b.Protocol)
	})
	return fes, vips, nil
}
