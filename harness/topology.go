package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/nsutil"
	"svclab/scenarios"
)

// Pods reach the node through a link-local gateway, as Calico does: the
// address exists only as a static neighbour entry pointing at the node-side
// veth, so no ARP and no address on the node's veths is needed.
var podGateway = netip.MustParseAddr("169.254.1.1")

// sinkGateway is the next hop of the node's route for the service CIDR.
var sinkGateway = netip.MustParseAddr("169.254.1.2")

// TopologyConfig describes one node with its pods.
type TopologyConfig struct {
	// Prefix names every object (netns, cgroup) of this topology; it must
	// start with the run's prefix so stale-object cleanup can find it.
	Prefix      string
	Clients     int
	Backends    int
	PodCIDR     netip.Prefix
	ServiceCIDR netip.Prefix
}

// Limits on topology size are the scenario's.
const (
	MaxBackends = scenarios.MaxBackends
	MaxClients  = scenarios.MaxClients
)

// Validate checks the configuration and names the offending field.
func (c TopologyConfig) Validate() error {
	switch {
	case c.Clients < 1 || c.Clients > MaxClients:
		return fmt.Errorf("clients: %d is out of range [1, %d]", c.Clients, MaxClients)
	case c.Backends < 1 || c.Backends > MaxBackends:
		return fmt.Errorf("backends: %d is out of range [1, %d]", c.Backends, MaxBackends)
	case !c.PodCIDR.IsValid() || !c.PodCIDR.Addr().Is4():
		return fmt.Errorf("pod_cidr: %q is not an IPv4 prefix", c.PodCIDR)
	case !c.ServiceCIDR.IsValid() || !c.ServiceCIDR.Addr().Is4():
		return fmt.Errorf("service_cidr: %q is not an IPv4 prefix", c.ServiceCIDR)
	case c.PodCIDR.Overlaps(c.ServiceCIDR):
		return fmt.Errorf("service_cidr: %s overlaps pod_cidr %s", c.ServiceCIDR, c.PodCIDR)
	case c.PodCIDR.Overlaps(netip.PrefixFrom(podGateway, 16)):
		return fmt.Errorf("pod_cidr: %s overlaps the link-local gateway range 169.254.0.0/16", c.PodCIDR)
	}
	if hosts := prefixHosts(c.PodCIDR); hosts < c.Clients+c.Backends {
		return fmt.Errorf("pod_cidr: %s has %d host addresses, %d pods need one each", c.PodCIDR, hosts, c.Clients+c.Backends)
	}
	if prefixHosts(c.ServiceCIDR) < 1 {
		return fmt.Errorf("service_cidr: %s has no host address for a ClusterIP", c.ServiceCIDR)
	}
	return nil
}

func prefixHosts(p netip.Prefix) int {
	bits := p.Addr().BitLen() - p.Bits()
	if bits >= 30 {
		return 1 << 30
	}
	n := 1<<bits - 2 // network and broadcast
	if n < 0 {
		return 0
	}
	return n
}

// nthHost returns the n-th host address (1-based) of p.
func nthHost(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Topology is a node network namespace with client and backend pod
// namespaces routed to it over veth pairs, and a cgroup for the clients.
type Topology struct {
	cfg          TopologyConfig
	Node         *nsutil.NS
	Clients      []datapath.Pod
	Backends     []datapath.Pod
	ClientCgroup *Cgroup
	ServerCgroup *Cgroup
	pods         []*nsutil.NS
}

// NewTopology builds the topology. On error everything built so far is
// removed.
func NewTopology(ctx context.Context, cfg TopologyConfig) (_ *Topology, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Topology{cfg: cfg}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	if t.ClientCgroup, err = NewCgroup("/" + cfg.Prefix + "/clients"); err != nil {
		return nil, err
	}
	if t.ServerCgroup, err = NewCgroup("/" + cfg.Prefix + "/servers"); err != nil {
		return nil, err
	}
	if t.Node, err = nsutil.Create(cfg.Prefix + "-node"); err != nil {
		return nil, err
	}
	if err := t.setupNode(); err != nil {
		return nil, err
	}
	nh, err := t.Node.NetlinkHandle()
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	host := 1
	for i := 0; i < cfg.Clients; i++ {
		p, err := t.addPod(ctx, nh, fmt.Sprintf("client-%d", i), nthHost(cfg.PodCIDR, host), true)
		if err != nil {
			return nil, err
		}
		t.Clients = append(t.Clients, p)
		host++
	}
	width := len(fmt.Sprint(cfg.Backends - 1))
	if width < 2 {
		width = 2
	}
	for i := 0; i < cfg.Backends; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p, err := t.addPod(ctx, nh, fmt.Sprintf("backend-%0*d", width, i), nthHost(cfg.PodCIDR, host), false)
		if err != nil {
			return nil, err
		}
		t.Backends = append(t.Backends, p)
		host++
	}
	return t, nil
}

func (t *Topology) setupNode() error {
	for k, v := range map[string]string{
		"net/ipv4/ip_forward":             "1",
		"net/ipv4/conf/all/rp_filter":     "0",
		"net/ipv4/conf/default/rp_filter": "0",
	} {
		if err := t.Node.Sysctl(k, v); err != nil {
			return err
		}
	}
	h, err := t.Node.NetlinkHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	// The node owns the gateway address (on lo) so that ICMP errors it
	// generates (REJECT, unreachable) have a source address.
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("node: find lo: %w", err)
	}
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(podGateway, 32))}); err != nil {
		return fmt.Errorf("node: add gateway address: %w", err)
	}
	// A real node routes ClusterIP traffic somewhere (its default route):
	// here the service CIDR goes to a sink namespace that silently drops
	// it, so per-packet datapaths see the packets in FORWARD and
	// untranslated traffic vanishes inside the topology instead of leaving
	// it. (A dummy device would do, but not every kernel has one.)
	sink, err := nsutil.Create(t.cfg.Prefix + "-sink")
	if err != nil {
		return err
	}
	t.pods = append(t.pods, sink)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "svc-sink"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(sink.Handle()))}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("node: add svc-sink: %w", err)
	}
	host, err := h.LinkByName("svc-sink")
	if err != nil {
		return fmt.Errorf("node: find svc-sink: %w", err)
	}
	sh, err := sink.NetlinkHandle()
	if err != nil {
		return err
	}
	defer sh.Close()
	peer, err := sh.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("sink: find eth0: %w", err)
	}
	if err := errors.Join(h.LinkSetUp(host), sh.LinkSetUp(peer)); err != nil {
		return fmt.Errorf("sink: set links up: %w", err)
	}
	// A permanent neighbour for the sink's gateway: no ARP, hence no
	// "host unreachable" after an ARP timeout; packets are dropped silently
	// in the sink (it forwards nothing), as an upstream router would.
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: net.IP(sinkGateway.AsSlice()), HardwareAddr: peer.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("node: sink neighbour: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(t.cfg.ServiceCIDR), Gw: net.IP(sinkGateway.AsSlice()), Flags: int(netlink.FLAG_ONLINK)}); err != nil {
		return fmt.Errorf("node: route service CIDR to the sink: %w", err)
	}
	return nil
}

func (t *Topology) addPod(_ context.Context, nh *netlink.Handle, name string, addr netip.Addr, client bool) (datapath.Pod, error) {
	pod := datapath.Pod{Name: name, Addr: addr, HostVeth: name}
	ns, err := nsutil.Create(t.cfg.Prefix + "-" + name)
	if err != nil {
		return pod, err
	}
	t.pods = append(t.pods, ns)
	pod.NS = ns
	// The pair is created inside the node namespace with its peer placed
	// directly in the pod namespace: no link ever appears in the caller's
	// (root) namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns.Handle())),
	}
	if err := nh.LinkAdd(veth); err != nil {
		return pod, fmt.Errorf("pod %s: add veth: %w", name, err)
	}
	hostLink, err := nh.LinkByName(name)
	if err != nil {
		return pod, fmt.Errorf("pod %s: find host veth: %w", name, err)
	}
	ph, err := ns.NetlinkHandle()
	if err != nil {
		return pod, err
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		return pod, fmt.Errorf("pod %s: find eth0: %w", name, err)
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"set host veth up", func() error { return nh.LinkSetUp(hostLink) }},
		{"set eth0 up", func() error { return ph.LinkSetUp(eth0) }},
		{"add pod address", func() error {
			return ph.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, 32))})
		}},
		{"add gateway neighbour", func() error {
			return ph.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
				IP: net.IP(podGateway.AsSlice()), HardwareAddr: hostLink.Attrs().HardwareAddr})
		}},
		{"add gateway route", func() error {
			return ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.PrefixFrom(podGateway, 32)), Scope: netlink.SCOPE_LINK})
		}},
		{"add default route", func() error {
			return ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(podGateway.AsSlice()), Flags: int(netlink.FLAG_ONLINK)})
		}},
		{"add node route", func() error {
			return nh.RouteAdd(&netlink.Route{LinkIndex: hostLink.Attrs().Index, Dst: ipNet(netip.PrefixFrom(addr, 32)), Scope: netlink.SCOPE_LINK})
		}},
		{"add node neighbour", func() error {
			return nh.NeighAdd(&netlink.Neigh{LinkIndex: hostLink.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
				IP: net.IP(addr.AsSlice()), HardwareAddr: eth0.Attrs().HardwareAddr})
		}},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return pod, fmt.Errorf("pod %s: %s: %w", name, s.what, err)
		}
	}
	if client {
		// Short-connection clients leave TIME_WAIT behind (they close
		// first, as netperf TCP_CRR does); a wide port range and tw_reuse
		// keep a trial from running out of ports to one ClusterIP.
		for k, v := range map[string]string{
			"net/ipv4/ip_local_port_range": "1024 65535",
			"net/ipv4/tcp_tw_reuse":        "1",
		} {
			if err := ns.Sysctl(k, v); err != nil {
				return pod, err
			}
		}
	}
	return pod, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Env is what a datapath is set up in.
func (t *Topology) Env() *datapath.Env {
	return &datapath.Env{
		Node:         t.Node,
		ClientCgroup: t.ClientCgroup.Path,
		Clients:      t.Clients,
		Backends:     t.Backends,
		PodCIDR:      t.cfg.PodCIDR,
		ServiceCIDR:  t.cfg.ServiceCIDR,
	}
}

// Close removes the topology: the processes in its cgroups, the pod and node
// namespaces (and with them every veth, route and rule inside) and the
// cgroups. It is safe on a partly built topology.
func (t *Topology) Close() error {
	var errs []error
	// Kill processes first: a process inside a namespace keeps it alive.
	if t.ClientCgroup != nil || t.ServerCgroup != nil {
		mnt, err := Cgroup2Mount()
		if err == nil {
			errs = append(errs, removeCgroupDir(mnt+"/"+t.cfg.Prefix))
		} else {
			errs = append(errs, err)
		}
	}
	for _, ns := range t.pods {
		errs = append(errs, ns.Close())
	}
	errs = append(errs, t.Node.Close())
	return errors.Join(errs...)
}
