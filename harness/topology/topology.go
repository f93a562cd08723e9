// Package topology builds the node a run measures: a node network namespace
// with client and backend pod namespaces routed to it over veth pairs (as
// Calico routes pods), the pods' cgroups, and extra endpoint addresses for
// scale sweeps. It is sealed: nothing in it links to the root namespace.
package topology

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"svclab/internal/cgroup2"

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

// The IPv6 counterparts in a dual-stack topology: link-local next hops that
// exist only as permanent neighbour entries, like the IPv4 ones.
var (
	podGateway6  = netip.MustParseAddr("fe80::1")
	sinkGateway6 = netip.MustParseAddr("fe80::2")
)

// Config describes one node with its pods.
type Config struct {
	// Prefix names every object (netns, cgroup) of this topology; it must
	// start with the run's prefix so stale-object cleanup can find it.
	Prefix      string
	Clients     int
	Backends    int
	PodCIDR     netip.Prefix
	ServiceCIDR netip.Prefix
	// PodCIDR6 and ServiceCIDR6 make the topology dual-stack: every pod
	// also gets an IPv6 address from PodCIDR6, routed like the IPv4 one,
	// and ServiceCIDR6 is routed to the sink. Leave both zero for an
	// IPv4-only topology.
	PodCIDR6     netip.Prefix
	ServiceCIDR6 netip.Prefix
	// ExtraEndpoints is the number of IPv4 endpoint addresses beyond the
	// backend pods' own, spread round-robin over the backend pods (extra j
	// is answered by backend j % Backends): an endpoint sweep to 1,000
	// endpoints without 1,000 pod namespaces. They come from the upper
	// part of PodCIDR; see Topology.Endpoints.
	ExtraEndpoints int
	// Nodes is the number of nodes (0 or 1: one node, built exactly as
	// before there were several). With more, each node gets an equal
	// share of PodCIDR (and PodCIDR6), the nodes are joined by an
	// underlay from UnderlayCIDR (default DefaultUnderlayCIDR), backends
	// are spread round-robin (NodeOfBackend) and clients stay on node 0.
	Nodes        int
	UnderlayCIDR netip.Prefix
}

// DefaultPodCIDR and DefaultServiceCIDR are the ranges of the conformance
// runs and the lab (kubeadm's defaults, cut to one node's /24).
var (
	DefaultPodCIDR     = netip.MustParsePrefix("10.244.0.0/24")
	DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
)

// Default is an IPv4 topology named prefix with one client and n backends
// in the default ranges.
func Default(prefix string, backends int) Config {
	return Config{Prefix: prefix, Clients: 1, Backends: backends, PodCIDR: DefaultPodCIDR, ServiceCIDR: DefaultServiceCIDR}
}

// DualStack reports whether the configuration asks for IPv6 as well.
func (c Config) DualStack() bool { return c.PodCIDR6.IsValid() || c.ServiceCIDR6.IsValid() }

// Limits on topology size are the scenario's.
const (
	MaxBackends = scenarios.MaxBackends
	MaxClients  = scenarios.MaxClients
)

// Validate checks the configuration and names the offending field.
func (c Config) Validate() error {
	switch {
	case c.Clients < 1 || c.Clients > MaxClients:
		return fmt.Errorf("clients: %d is out of range [1, %d]", c.Clients, MaxClients)
	case c.Backends < 1 || c.Backends > MaxBackends:
		return fmt.Errorf("backends: %d is out of range [1, %d]", c.Backends, MaxBackends)
	case !c.PodCIDR.IsValid() || !c.PodCIDR.Addr().Is4():
		return fmt.Errorf("podCIDR: %q is not an IPv4 prefix", c.PodCIDR)
	case !c.ServiceCIDR.IsValid() || !c.ServiceCIDR.Addr().Is4():
		return fmt.Errorf("serviceCIDR: %q is not an IPv4 prefix", c.ServiceCIDR)
	case c.PodCIDR.Overlaps(c.ServiceCIDR):
		return fmt.Errorf("serviceCIDR: %s overlaps podCIDR %s", c.ServiceCIDR, c.PodCIDR)
	case c.PodCIDR.Overlaps(netip.PrefixFrom(podGateway, 16)):
		return fmt.Errorf("podCIDR: %s overlaps the link-local gateway range 169.254.0.0/16", c.PodCIDR)
	}
	if hosts := PrefixHosts(c.PodCIDR); hosts < c.Clients+c.Backends {
		return fmt.Errorf("podCIDR: %s has %d host addresses, %d pods need one each", c.PodCIDR, hosts, c.Clients+c.Backends)
	}
	if PrefixHosts(c.ServiceCIDR) < 1 {
		return fmt.Errorf("serviceCIDR: %s has no host address for a ClusterIP", c.ServiceCIDR)
	}
	if err := c.validateExtra(); err != nil {
		return err
	}
	if err := c.validateNodes(); err != nil {
		return err
	}
	if c.DualStack() {
		return c.validate6()
	}
	return nil
}

func (c Config) validate6() error {
	linkLocal := netip.MustParsePrefix("fe80::/10")
	switch {
	case !c.PodCIDR6.IsValid() || !c.PodCIDR6.Addr().Is6() || c.PodCIDR6.Addr().Is4In6():
		return fmt.Errorf("podCIDR6: %q is not an IPv6 prefix (a dual-stack topology needs both podCIDR6 and serviceCIDR6)", c.PodCIDR6)
	case !c.ServiceCIDR6.IsValid() || !c.ServiceCIDR6.Addr().Is6() || c.ServiceCIDR6.Addr().Is4In6():
		return fmt.Errorf("serviceCIDR6: %q is not an IPv6 prefix (a dual-stack topology needs both podCIDR6 and serviceCIDR6)", c.ServiceCIDR6)
	case c.PodCIDR6.Overlaps(c.ServiceCIDR6):
		return fmt.Errorf("serviceCIDR6: %s overlaps podCIDR6 %s", c.ServiceCIDR6, c.PodCIDR6)
	case c.PodCIDR6.Overlaps(linkLocal) || c.ServiceCIDR6.Overlaps(linkLocal):
		return fmt.Errorf("podCIDR6: %s or serviceCIDR6 %s overlaps the link-local range fe80::/10", c.PodCIDR6, c.ServiceCIDR6)
	}
	if hosts := PrefixHosts(c.PodCIDR6); hosts < c.Clients+c.Backends {
		return fmt.Errorf("podCIDR6: %s has %d host addresses, %d pods need one each", c.PodCIDR6, hosts, c.Clients+c.Backends)
	}
	if PrefixHosts(c.ServiceCIDR6) < 1 {
		return fmt.Errorf("serviceCIDR6: %s has no host address for a ClusterIP", c.ServiceCIDR6)
	}
	return nil
}

func PrefixHosts(p netip.Prefix) int {
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

// NthHost returns the n-th host address (1-based) of p, IPv4 or IPv6.
func NthHost(p netip.Prefix, n int) netip.Addr {
	if p.Addr().Is4() {
		b := p.Masked().Addr().As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		v += uint32(n)
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	b := p.Masked().Addr().As16()
	carry := uint(n)
	for i := 15; i >= 0 && carry > 0; i-- {
		sum := uint(b[i]) + carry&0xff
		b[i] = byte(sum)
		carry = carry>>8 + sum>>8
	}
	return netip.AddrFrom16(b)
}

// NewLoopback builds the smallest topology: one namespace named prefix in
// which the client and the backend server talk over loopback, with client
// and server cgroups as in a real topology. No veth, no routing, no
// datapath: it measures the load generator's own ceiling.
func NewLoopback(prefix string) (_ *Topology, err error) {
	t := &Topology{cfg: Config{Prefix: prefix}}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	if err := t.makeCgroups(prefix); err != nil {
		return nil, err
	}
	if t.Node, err = nsutil.Create(prefix); err != nil {
		return nil, err
	}
	if err := t.Node.SetSysctls(nsutil.ClientSysctls); err != nil {
		return nil, err
	}
	// The one pod is both the client and the backend.
	pod := datapath.Pod{Name: "loopback", NS: t.Node, Addr: netip.MustParseAddr("127.0.0.1")}
	t.Clients, t.Backends = []datapath.Pod{pod}, []datapath.Pod{pod}
	return t, nil
}

// Topology is a node network namespace with client and backend pod
// namespaces routed to it over veth pairs, and the node's cgroups.
//
// Cgroups (v2), under /<prefix>:
//
//	kubepods/          NodeCgroup: every process the node's Service datapath
//	                   serves, as kubelet's kubepods (socket-LB attaches here)
//	kubepods/clients   ClientCgroup: the client pods' processes
//	kubepods/servers   ServerCgroup: the backend pods' processes
//	kubepods/hostnet   HostCgroup: hostNetwork clients (processes in the node
//	                   namespace; a hostNetwork pod is still a kubepods pod)
//	datapath/          DatapathCgroup: a datapath's own processes (the
//	                   userspace proxy), accounted apart from the pods
//
// The role cgroups keep CPU accounting by role; CgroupDir is their sum.
type Topology struct {
	cfg      Config
	Node     *nsutil.NS
	Clients  []datapath.Pod
	Backends []datapath.Pod
	// Host is the hostNetwork client: processes in the node namespace,
	// from the node's address (the pods' IPv4 gateway, its only one).
	Host         datapath.Pod
	NodeCgroup   *cgroup2.Cgroup
	ClientCgroup *cgroup2.Cgroup
	ServerCgroup *cgroup2.Cgroup
	HostCgroup   *cgroup2.Cgroup
	// DatapathCgroup holds a datapath's own processes, outside kubepods.
	DatapathCgroup *cgroup2.Cgroup
	// Nodes are the topology's nodes; Node, Host and the cgroups above
	// are node 0's, Clients and Backends every node's (in index order).
	// Empty in a loopback topology.
	Nodes []*Node
	// fabric is the namespace of the underlay bridge; nil with one node.
	fabric *nsutil.NS
	pods   []*nsutil.NS
	// extra places the extra endpoints (zero without any).
	extra extraLayout
	// unpin undoes Place.
	unpin []func()
}

// New builds the topology. On error everything built so far is
// removed.
func New(ctx context.Context, cfg Config) (_ *Topology, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Topology{cfg: cfg}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	for i := range cfg.NodeCount() {
		if _, err := t.newNode(i); err != nil {
			return nil, err
		}
	}
	n0 := t.Nodes[0]
	t.Node, t.Host = n0.NS, n0.Host
	t.NodeCgroup, t.ClientCgroup, t.ServerCgroup, t.HostCgroup, t.DatapathCgroup = n0.NodeCgroup, n0.ClientCgroup, n0.ServerCgroup, n0.HostCgroup, n0.DatapathCgroup
	if len(t.Nodes) > 1 {
		if err := t.buildUnderlay(); err != nil {
			return nil, err
		}
	}
	handles := make([]*netlink.Handle, len(t.Nodes))
	defer func() {
		for _, h := range handles {
			if h != nil {
				h.Close()
			}
		}
	}()
	for i, nd := range t.Nodes {
		if handles[i], err = nd.NS.NetlinkHandle(); err != nil {
			return nil, err
		}
	}
	nh := handles[0]
	// addOn adds a pod on node i at that node's next host address (and
	// its IPv6 twin in a dual-stack topology).
	addOn := func(i int, name string, client bool) (datapath.Pod, error) {
		nd := t.Nodes[i]
		host := nd.nextHost
		nd.nextHost++
		var addr6 netip.Addr
		if cfg.DualStack() {
			addr6 = NthHost(nd.PodCIDR6, host)
		}
		return t.addPod(ctx, handles[i], name, NthHost(nd.PodCIDR, host), addr6, client)
	}
	for i := 0; i < cfg.Clients; i++ {
		p, err := addOn(0, fmt.Sprintf("client-%d", i), true)
		if err != nil {
			return nil, err
		}
		t.Clients = append(t.Clients, p)
		n0.Clients = append(n0.Clients, p)
	}
	width := len(fmt.Sprint(cfg.Backends - 1))
	if width < 2 {
		width = 2
	}
	for i := 0; i < cfg.Backends; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ni := NodeOfBackend(i, len(t.Nodes))
		p, err := addOn(ni, fmt.Sprintf("backend-%0*d", width, i), false)
		if err != nil {
			return nil, err
		}
		t.Backends = append(t.Backends, p)
		t.Nodes[ni].Backends = append(t.Nodes[ni].Backends, p)
	}
	if cfg.ExtraEndpoints > 0 {
		if err := t.addExtraEndpoints(nh); err != nil {
			return nil, err
		}
	}
	if err := waitLinksUp(ctx, t, 10*time.Second); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Topology) setupNode(nd *Node) error {
	sysctls := map[string]string{
		"net/ipv4/ip_forward":             "1",
		"net/ipv4/conf/all/rp_filter":     "0",
		"net/ipv4/conf/default/rp_filter": "0",
	}
	if t.cfg.DualStack() {
		// Writing "all" also sets "default", so the veths created later
		// forward too.
		sysctls["net/ipv6/conf/all/forwarding"] = "1"
	}
	for k, v := range sysctls {
		if err := nd.NS.Sysctl(k, v); err != nil {
			return err
		}
	}
	h, err := nd.NS.NetlinkHandle()
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
	sink, err := nsutil.Create(nd.sinkName)
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
	if !t.cfg.DualStack() {
		return nil
	}
	// The same for IPv6; the sink forwards nothing, so it drops these too.
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT,
		IP: net.IP(sinkGateway6.AsSlice()), HardwareAddr: peer.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("node: sink neighbour %s: %w", sinkGateway6, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(t.cfg.ServiceCIDR6), Gw: net.IP(sinkGateway6.AsSlice())}); err != nil {
		return fmt.Errorf("node: route service CIDR %s to the sink: %w", t.cfg.ServiceCIDR6, err)
	}
	return nil
}

func (t *Topology) addPod(_ context.Context, nh *netlink.Handle, name string, addr, addr6 netip.Addr, client bool) (datapath.Pod, error) {
	pod := datapath.Pod{Name: name, Addr: addr, Addr6: addr6, HostVeth: name}
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
	if addr6.IsValid() {
		// IPv6 is routed the same way: a /128 on eth0, a default route via
		// a link-local gateway that is only a permanent neighbour entry,
		// and a /128 route plus neighbour entry on the node. NODAD makes
		// the address usable at once instead of after duplicate address
		// detection.
		steps = append(steps, []struct {
			what string
			fn   func() error
		}{
			{"add pod IPv6 address", func() error {
				return ph.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr6, 128)), Flags: unix.IFA_F_NODAD})
			}},
			{"add IPv6 gateway neighbour", func() error {
				return ph.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT,
					IP: net.IP(podGateway6.AsSlice()), HardwareAddr: hostLink.Attrs().HardwareAddr})
			}},
			{"add IPv6 default route", func() error {
				return ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: net.IP(podGateway6.AsSlice())})
			}},
			{"add node IPv6 route", func() error {
				return nh.RouteAdd(&netlink.Route{LinkIndex: hostLink.Attrs().Index, Dst: ipNet(netip.PrefixFrom(addr6, 128)), Scope: netlink.SCOPE_LINK})
			}},
			{"add node IPv6 neighbour", func() error {
				return nh.NeighAdd(&netlink.Neigh{LinkIndex: hostLink.Attrs().Index, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT,
					IP: net.IP(addr6.AsSlice()), HardwareAddr: eth0.Attrs().HardwareAddr})
			}},
		}...)
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return pod, fmt.Errorf("pod %s: %s: %w", name, s.what, err)
		}
	}
	if client {
		if err := ns.SetSysctls(nsutil.ClientSysctls); err != nil {
			return pod, err
		}
	}
	return pod, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// makeCgroups creates the node cgroup and its role children (see Topology).
func (t *Topology) makeCgroups(prefix string) error {
	var nd Node
	err := nd.makeCgroups(prefix)
	t.NodeCgroup, t.ClientCgroup, t.ServerCgroup, t.HostCgroup, t.DatapathCgroup = nd.NodeCgroup, nd.ClientCgroup, nd.ServerCgroup, nd.HostCgroup, nd.DatapathCgroup
	return err
}

// cgroupPath is cg's directory, or "" for none.
func cgroupPath(cg *cgroup2.Cgroup) string {
	if cg == nil {
		return ""
	}
	return cg.Path
}

// CPURoles are the role cgroups whose CPU time a trial reports apart.
func (t *Topology) CPURoles() map[string]string {
	roles := map[string]string{}
	for name, cg := range map[string]*cgroup2.Cgroup{"clients": t.ClientCgroup, "servers": t.ServerCgroup,
		"hostnet": t.HostCgroup, "datapath": t.DatapathCgroup} {
		if cg != nil {
			roles[name] = cg.Path
		}
	}
	// Other nodes' roles are reported apart ("servers@node-1"), so that
	// node 0's keep the meaning they have with one node.
	for _, nd := range t.Nodes[min(1, len(t.Nodes)):] {
		for name, cg := range map[string]*cgroup2.Cgroup{"clients": nd.ClientCgroup, "servers": nd.ServerCgroup,
			"hostnet": nd.HostCgroup, "datapath": nd.DatapathCgroup} {
			if cg != nil {
				roles[name+"@"+nd.Name] = cg.Path
			}
		}
	}
	return roles
}

// CgroupDir is the cgroup v2 directory of the whole topology: every role
// cgroup is below it, so its CPU time is the pods'.
func (t *Topology) CgroupDir() string { return filepath.Dir(t.NodeCgroup.Path) }

// PodCgroup is the cgroup a process of pod p runs in: a backend pod's is
// ServerCgroup, a process in the node namespace's (the hostNetwork client)
// HostCgroup, anything else (a client pod) ClientCgroup.
func (t *Topology) PodCgroup(p datapath.Pod) string {
	if nd := t.NodeOf(p); nd != nil && nd != t.nodeZero() {
		// A pod of another node: that node's role cgroups.
		switch {
		case p.NS == nd.NS:
			return nd.HostCgroup.Path
		case slices.ContainsFunc(nd.Backends, func(b datapath.Pod) bool { return b.Name == p.Name }):
			return nd.ServerCgroup.Path
		default:
			return nd.ClientCgroup.Path
		}
	}
	if p.NS != nil && p.NS == t.Node {
		return t.HostCgroup.Path
	}
	for _, b := range t.Backends {
		if b.Name == p.Name && b.NS == p.NS {
			return t.ServerCgroup.Path
		}
	}
	return t.ClientCgroup.Path
}

// nodeZero is node 0, or nil in a loopback topology.
func (t *Topology) nodeZero() *Node {
	if len(t.Nodes) == 0 {
		return nil
	}
	return t.Nodes[0]
}

// Env is what a datapath is set up in: node 0's (see NodeEnv for the
// others).
func (t *Topology) Env() *datapath.Env {
	if len(t.Nodes) > 0 {
		return t.NodeEnv(0)
	}
	return &datapath.Env{
		Node:           t.Node,
		NodeCgroup:     t.NodeCgroup.Path,
		DatapathCgroup: cgroupPath(t.DatapathCgroup),
		Clients:        t.Clients,
		Backends:       t.Backends,
		PodCIDR:        t.cfg.PodCIDR,
		ServiceCIDR:    t.cfg.ServiceCIDR,
		PodCIDR6:       t.cfg.PodCIDR6,
		ServiceCIDR6:   t.cfg.ServiceCIDR6,
	}
}

// Close removes the topology: the processes in its cgroups, the pod and node
// namespaces (and with them every veth, route and rule inside) and the
// cgroups. It is safe on a partly built topology.
func (t *Topology) Close() error {
	var errs []error
	for _, u := range t.unpin {
		u()
	}
	t.unpin = nil
	// Kill processes first: a process inside a namespace keeps it alive.
	// (A build that failed at a later node has node 0's cgroups in
	// Nodes[0] but not yet in NodeCgroup.)
	if t.NodeCgroup != nil || len(t.Nodes) > 0 {
		mnt, err := cgroup2.Mount()
		if err == nil {
			errs = append(errs, cgroup2.RemoveDir(mnt+"/"+t.cfg.Prefix))
		} else {
			errs = append(errs, err)
		}
	}
	for _, ns := range t.pods {
		errs = append(errs, ns.Close())
	}
	if len(t.Nodes) == 0 {
		errs = append(errs, t.Node.Close())
	}
	for _, nd := range t.Nodes {
		errs = append(errs, nd.NS.Close())
	}
	errs = append(errs, t.fabric.Close())
	return errors.Join(errs...)
}

// isLocal reports whether a routes locally in h's namespace.
func isLocal(h *netlink.Handle, a netip.Addr) bool {
	rs, err := h.RouteGet(net.IP(a.AsSlice()))
	return err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL
}

// waitLinksUp waits until every link of the topology (the node's veths and
// each pod's eth0) is operationally up. A freshly created veth passes no
// traffic until the kernel's link watcher has activated it, which it does
// asynchronously and, when many links change at once, up to a second
// later: a probe started before that loses its first packets. In a
// dual-stack topology it also waits for each pod's IPv6 address to be
// local.
func waitLinksUp(ctx context.Context, t *Topology, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	nss := []*nsutil.NS{t.Node}
	pods := append(append([]datapath.Pod{}, t.Clients...), t.Backends...)
	// Nodes past the first and the fabric come last, so the pods' indices
	// below stay 1-based.
	var more []*nsutil.NS
	for _, nd := range t.Nodes[min(1, len(t.Nodes)):] {
		more = append(more, nd.NS)
	}
	if t.fabric != nil {
		more = append(more, t.fabric)
	}
	for _, p := range pods {
		nss = append(nss, p.NS)
	}
	nss = append(nss, more...)
	for i, ns := range nss {
		var addr6 netip.Addr
		if i > 0 && i <= len(pods) {
			addr6 = pods[i-1].Addr6
		}
		h, err := ns.NetlinkHandle()
		if err != nil {
			return err
		}
		for {
			down, err := linksDown(h)
			if err == nil && len(down) == 0 && addr6.IsValid() && !isLocal(h, addr6) {
				// The kernel makes a new IPv6 address local from a
				// workqueue, after AddrAdd returned: until then the
				// pod drops what is sent to it.
				down = []string{addr6.String() + " (not yet local)"}
			}
			if err != nil {
				h.Close()
				return fmt.Errorf("netns %s: list links: %w", ns.Name, err)
			}
			if len(down) == 0 {
				break
			}
			if time.Now().After(deadline) {
				h.Close()
				return fmt.Errorf("netns %s: links %s not up after %s", ns.Name, strings.Join(down, ", "), timeout)
			}
			select {
			case <-ctx.Done():
				h.Close()
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
		h.Close()
	}
	return nil
}

// linksDown names the links (other than lo) that are not operationally up.
func linksDown(h *netlink.Handle) ([]string, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	var down []string
	for _, l := range links {
		a := l.Attrs()
		if a.Name == "lo" {
			continue
		}
		if _, ok := l.(*netlink.Bridge); ok {
			// The underlay bridge's own operational state follows its
			// ports through the link watcher's non-urgent queue, up to
			// a second late, but it forwards between its ports as soon
			// as they are up (checked here: they are veths); nothing
			// is sent from the bridge device itself.
			continue
		}
		if a.OperState != netlink.OperUp {
			down = append(down, a.Name)
		}
	}
	return down, nil
}
