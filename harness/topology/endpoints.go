package topology

import (
	"fmt"
	"math/bits"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
)

// MaxExtraEndpoints bounds Config.ExtraEndpoints: far beyond any
// endpoint sweep, small enough that a typo cannot ask for a /8.
const MaxExtraEndpoints = 65536

// extraLayout is where the extra endpoint addresses of a topology live.
//
// Each backend pod owns one aligned block of blockSize addresses in the
// upper part of PodCIDR; extra j belongs to backend j % Backends and is
// address j / Backends of that pod's block. One route per block on the
// node and one local (AnyIP) route per block in the pod replace a route,
// a neighbour and an address per extra endpoint, so setup costs the same
// for 12 extras as for 60,000.
type extraLayout struct {
	blockSize int // a power of two
	// first is the offset of backend 0's block from PodCIDR's network
	// address; backend b's block starts at first + b*blockSize.
	first uint32
}

// layoutExtra places cfg's extra endpoints, or says why they do not fit.
// It reads only ExtraEndpoints, Backends, Clients and PodCIDR, which must
// already be valid.
func layoutExtra(cfg Config) (extraLayout, error) {
	perPod := (cfg.ExtraEndpoints + cfg.Backends - 1) / cfg.Backends
	size := 1 << bits.Len(uint(perPod-1)) // next power of two >= perPod
	hostBits := 32 - cfg.PodCIDR.Bits()
	total := uint64(1) << hostBits
	// The blocks end at the top of PodCIDR, unless the last backend would
	// then use the CIDR's broadcast address (its block's last address):
	// Kubernetes never hands that to a pod, so neither does the topology.
	top := total
	if cfg.ExtraEndpoints/cfg.Backends == size {
		top -= uint64(size)
	}
	need := uint64(cfg.Backends) * uint64(size)
	// The pods' own addresses are hosts 1 .. Clients+Backends.
	pods := uint64(cfg.Clients + cfg.Backends)
	if top < need || top-need <= pods {
		return extraLayout{}, fmt.Errorf("extraEndpoints: %d do not fit in podCIDR %s: %d backends need a block of %d addresses each (%d in all) above the %d pod addresses",
			cfg.ExtraEndpoints, cfg.PodCIDR, cfg.Backends, size, need, pods)
	}
	return extraLayout{blockSize: size, first: uint32(top - need)}, nil
}

// validateExtra checks ExtraEndpoints against the rest of a configuration
// whose other fields are valid.
func (c Config) validateExtra() error {
	switch {
	case c.ExtraEndpoints < 0:
		return fmt.Errorf("extraEndpoints: %d is negative", c.ExtraEndpoints)
	case c.ExtraEndpoints > MaxExtraEndpoints:
		return fmt.Errorf("extraEndpoints: %d is more than the limit of %d", c.ExtraEndpoints, MaxExtraEndpoints)
	case c.ExtraEndpoints == 0:
		return nil
	}
	_, err := layoutExtra(c)
	return err
}

// block returns backend b's block of extra addresses.
func (l extraLayout) block(podCIDR netip.Prefix, b int) netip.Prefix {
	base := NthHost(podCIDR, int(l.first)+b*l.blockSize)
	return netip.PrefixFrom(base, 32-bits.TrailingZeros(uint(l.blockSize)))
}

// addExtraEndpoints routes every backend pod's block: on the node via the
// pod's own address (already a permanent neighbour on the host veth, so no
// ARP for any extra address), and in the pod as a local route on lo, which
// makes the pod accept (and source replies from) every address of the
// block without one being configured (AnyIP).
func (t *Topology) addExtraEndpoints(nh *netlink.Handle) error {
	l, err := layoutExtra(t.cfg)
	if err != nil {
		return err
	}
	t.extra = l
	for i, b := range t.Backends {
		blk := ipNet(l.block(t.cfg.PodCIDR, i))
		host, err := nh.LinkByName(b.HostVeth)
		if err != nil {
			return fmt.Errorf("pod %s: find host veth: %w", b.Name, err)
		}
		if err := nh.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: blk, Gw: net.IP(b.Addr.AsSlice()), Flags: int(netlink.FLAG_ONLINK)}); err != nil {
			return fmt.Errorf("pod %s: node route for extra endpoints %s: %w", b.Name, blk, err)
		}
		if err := addLocalRoute(b, blk); err != nil {
			return err
		}
	}
	return nil
}

func addLocalRoute(b datapath.Pod, blk *net.IPNet) error {
	ph, err := b.NS.NetlinkHandle()
	if err != nil {
		return err
	}
	defer ph.Close()
	lo, err := ph.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("pod %s: find lo: %w", b.Name, err)
	}
	// ip route add local BLK dev lo (table local, scope host).
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: blk, Type: unix.RTN_LOCAL,
		Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST}); err != nil {
		return fmt.Errorf("pod %s: local route for extra endpoints %s: %w", b.Name, blk, err)
	}
	return nil
}

// ExtraEndpoints returns the number of extra endpoint addresses the
// topology was built with.
func (t *Topology) ExtraEndpoints() int { return t.cfg.ExtraEndpoints }

// Endpoints returns the first n endpoints of the topology: the backend
// pods' own IPv4 addresses in backend order, then the extra addresses in
// order (extra j on backend j % Backends), each ready and serving and
// named after the pod that answers on it.
func (t *Topology) Endpoints(n int) ([]datapath.Endpoint, error) {
	limit := len(t.Backends) + t.cfg.ExtraEndpoints
	if n < 0 || n > limit {
		return nil, fmt.Errorf("endpoints: n=%d is out of range [0, %d] (%d backends + %d extra endpoints)", n, limit, len(t.Backends), t.cfg.ExtraEndpoints)
	}
	eps := make([]datapath.Endpoint, 0, n)
	for i := 0; i < n; i++ {
		b, addr := i, netip.Addr{}
		if i < len(t.Backends) {
			addr = t.Backends[i].Addr
		} else {
			j := i - len(t.Backends)
			b = j % len(t.Backends)
			addr = NthHost(t.extra.block(t.cfg.PodCIDR, b), j/len(t.Backends))
		}
		eps = append(eps, datapath.Endpoint{Pod: t.Backends[b].Name, Addr: addr, Ready: true, Serving: true, NodeName: t.BackendNodeName(b)})
	}
	return eps, nil
}

// BackendNodeName is the NodeName of backend b's endpoints: its node's
// name with several nodes, empty with one (where every endpoint is local
// and the datapath's Env.NodeName is empty too).
func (t *Topology) BackendNodeName(b int) string {
	if len(t.Nodes) < 2 {
		return ""
	}
	return t.Nodes[NodeOfBackend(b, len(t.Nodes))].Name
}
