package topology

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/cgroup2"
	"svclab/internal/nsutil"
	"svclab/scenarios"
)

// MaxNodes bounds Config.Nodes: what a 2-core machine builds in a few
// seconds per trial (see the issue 18 note in the README).
const MaxNodes = scenarios.MaxNodes

// DefaultUnderlayCIDR is where the nodes' underlay addresses come from when
// Config.UnderlayCIDR is unset; DefaultUnderlayCIDR6 is its IPv6 twin in a
// dual-stack topology. Neither is used with one node.
var (
	DefaultUnderlayCIDR  = netip.MustParsePrefix("172.18.0.0/24")
	DefaultUnderlayCIDR6 = netip.MustParsePrefix("fd00:172:18::/64")
)

// underlayLink is each node's link to the fabric, as a node's eth0.
const underlayLink = "underlay"

// Node is one node of the topology: its namespace, pods, cgroups and, with
// more than one node, its place on the underlay.
type Node struct {
	// Name is "node-<index>"; endpoints on this node carry it as their
	// NodeName, as an EndpointSlice's nodeName.
	Name string
	NS   *nsutil.NS
	// PodCIDR (and PodCIDR6 when dual-stack) is this node's share of the
	// topology's pod range: the whole range with one node.
	PodCIDR  netip.Prefix
	PodCIDR6 netip.Prefix
	// Underlay (and Underlay6) is the node's address on the underlay;
	// invalid with one node, which has no underlay.
	Underlay  netip.Addr
	Underlay6 netip.Addr
	Clients   []datapath.Pod
	Backends  []datapath.Pod
	// Host is the node's hostNetwork client (see Topology.Host).
	Host           datapath.Pod
	NodeCgroup     *cgroup2.Cgroup
	ClientCgroup   *cgroup2.Cgroup
	ServerCgroup   *cgroup2.Cgroup
	HostCgroup     *cgroup2.Cgroup
	DatapathCgroup *cgroup2.Cgroup
	// sinkName names the node's sink namespace.
	sinkName string
	// nextHost is the next free host number in PodCIDR.
	nextHost int
}

// NodeCount is the number of nodes: Nodes, or 1 when it is zero.
func (c Config) NodeCount() int { return max(1, c.Nodes) }

// nodeBits is how many bits of the pod range select a node: the smallest b
// with 2^b >= nodes, so that every node gets an aligned, equal share.
func nodeBits(nodes int) int { return bits.Len(uint(nodes - 1)) }

// NodePodCIDR is node i's share of p among nodes: p itself with one node,
// else the i-th of 2^nodeBits equal subnets, as a cluster's node IPAM
// carves node pod CIDRs out of the cluster CIDR.
func NodePodCIDR(p netip.Prefix, nodes, i int) netip.Prefix {
	nb := nodeBits(nodes)
	if nb == 0 {
		return p
	}
	sub := p.Bits() + nb
	size := uint(p.Addr().BitLen() - sub)
	b := p.Masked().Addr().As16()
	if p.Addr().Is4() {
		b4 := p.Masked().Addr().As4()
		v := uint32(b4[0])<<24 | uint32(b4[1])<<16 | uint32(b4[2])<<8 | uint32(b4[3])
		v += uint32(i) << size
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), sub)
	}
	// IPv6: add i << size to the 128-bit address, byte by byte.
	carry := uint(i)
	shift := size
	idx := 15 - int(shift/8)
	carry <<= shift % 8
	for j := idx; j >= 0 && carry > 0; j-- {
		sum := uint(b[j]) + carry&0xff
		b[j] = byte(sum)
		carry = carry>>8 + sum>>8
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), sub)
}

// NodeOfBackend is the node backend i is placed on: round-robin, so 12
// backends on 2 nodes are 6 + 6, and the first n endpoints of a sweep are
// spread over the nodes too.
func NodeOfBackend(i, nodes int) int { return i % max(1, nodes) }

// validateNodes checks the node count and that every node's share of the
// pod range holds its pods.
func (c Config) validateNodes() error {
	n := c.NodeCount()
	if c.Nodes < 0 || n > MaxNodes {
		return fmt.Errorf("nodes: %d is out of range [1, %d]", c.Nodes, MaxNodes)
	}
	if n == 1 {
		return nil
	}
	if c.ExtraEndpoints > 0 {
		return fmt.Errorf("extraEndpoints: %d extra endpoint addresses need one node (nodes: %d)", c.ExtraEndpoints, n)
	}
	under := c.underlay()
	switch {
	case !under.IsValid() || !under.Addr().Is4():
		return fmt.Errorf("underlayCIDR: %q is not an IPv4 prefix", c.UnderlayCIDR)
	case under.Overlaps(c.PodCIDR) || under.Overlaps(c.ServiceCIDR):
		return fmt.Errorf("underlayCIDR: %s overlaps podCIDR %s or serviceCIDR %s", under, c.PodCIDR, c.ServiceCIDR)
	case PrefixHosts(under) < n:
		return fmt.Errorf("underlayCIDR: %s has %d host addresses, %d nodes need one each", under, PrefixHosts(under), n)
	}
	if c.PodCIDR.Bits()+nodeBits(n) > 32 {
		return fmt.Errorf("podCIDR: %s cannot be split over %d nodes", c.PodCIDR, n)
	}
	for i := range n {
		need := c.backendsOn(i)
		if i == 0 {
			need += c.Clients
		}
		sub := NodePodCIDR(c.PodCIDR, n, i)
		if PrefixHosts(sub) < need {
			return fmt.Errorf("podCIDR: node-%d's share %s of %s has %d host addresses, its %d pods need one each", i, sub, c.PodCIDR, PrefixHosts(sub), need)
		}
		if c.DualStack() && c.PodCIDR6.IsValid() {
			if c.PodCIDR6.Bits()+nodeBits(n) > 128 || PrefixHosts(NodePodCIDR(c.PodCIDR6, n, i)) < need {
				return fmt.Errorf("podCIDR6: %s cannot be split over %d nodes with %d pods on node-%d", c.PodCIDR6, n, need, i)
			}
		}
	}
	return nil
}

// backendsOn counts the backends NodeOfBackend places on node i.
func (c Config) backendsOn(i int) int {
	n := 0
	for b := range c.Backends {
		if NodeOfBackend(b, c.NodeCount()) == i {
			n++
		}
	}
	return n
}

func (c Config) underlay() netip.Prefix {
	if c.UnderlayCIDR.IsValid() {
		return c.UnderlayCIDR
	}
	return DefaultUnderlayCIDR
}

// nodeNSName names node i's namespace: node 0 keeps the one-node name.
func nodeNSName(prefix string, i int) string {
	if i == 0 {
		return prefix + "-node"
	}
	return fmt.Sprintf("%s-node%d", prefix, i)
}

// newNode makes node i's cgroups and namespace (not yet its pods). Node 0's
// cgroups are the one-node layout (/<prefix>/kubepods, /<prefix>/datapath);
// node i's are the same below /<prefix>/node-<i>, so a socket-level
// datapath attached to one node's kubepods serves that node's pods only,
// and the topology's cgroup (/<prefix>) still holds every node's.
func (t *Topology) newNode(i int) (*Node, error) {
	n := t.cfg.NodeCount()
	nd := &Node{Name: fmt.Sprintf("node-%d", i), PodCIDR: NodePodCIDR(t.cfg.PodCIDR, n, i), nextHost: 1, sinkName: t.cfg.Prefix + "-sink"}
	if t.cfg.DualStack() {
		nd.PodCIDR6 = NodePodCIDR(t.cfg.PodCIDR6, n, i)
	}
	base := t.cfg.Prefix
	if i > 0 {
		base = fmt.Sprintf("%s/node-%d", t.cfg.Prefix, i)
		nd.sinkName = nodeNSName(t.cfg.Prefix, i) + "-sink"
	}
	t.Nodes = append(t.Nodes, nd)
	if err := nd.makeCgroups(base); err != nil {
		return nil, err
	}
	var err error
	if nd.NS, err = nsutil.Create(nodeNSName(t.cfg.Prefix, i)); err != nil {
		return nil, err
	}
	if err := t.setupNode(nd); err != nil {
		return nil, err
	}
	nd.Host = datapath.Pod{Name: "host", NS: nd.NS, Addr: podGateway}
	if i > 0 {
		nd.Host.Name = "host-" + nd.Name
	}
	return nd, nil
}

// buildUnderlay joins the nodes: a fabric namespace with a bridge, one veth
// per node (underlay in the node, node-<i> on the bridge), an underlay
// address per node, permanent neighbours (no ARP on the first packet of a
// trial) and, on every node, a route per remote node's pod CIDR via that
// node's underlay address, as a routed CNI (Calico in BGP mode) programs
// them. The fabric is one more namespace of the run: nothing reaches the
// root namespace.
func (t *Topology) buildUnderlay() error {
	fabric, err := nsutil.Create(t.cfg.Prefix + "-fabric")
	if err != nil {
		return err
	}
	t.fabric = fabric
	fh, err := fabric.NetlinkHandle()
	if err != nil {
		return err
	}
	defer fh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := fh.LinkAdd(br); err != nil {
		return fmt.Errorf("fabric: add bridge: %w", err)
	}
	if err := fh.LinkSetUp(br); err != nil {
		return fmt.Errorf("fabric: set bridge up: %w", err)
	}
	under := t.cfg.underlay()
	macs := make([]net.HardwareAddr, len(t.Nodes))
	for i, nd := range t.Nodes {
		nd.Underlay = NthHost(under, i+1)
		if t.cfg.DualStack() {
			nd.Underlay6 = NthHost(DefaultUnderlayCIDR6, i+1)
		}
		port := fmt.Sprintf("node-%d", i)
		nh, err := nd.NS.NetlinkHandle()
		if err != nil {
			return err
		}
		err = func() error {
			defer nh.Close()
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: underlayLink}, PeerName: port, PeerNamespace: netlink.NsFd(int(fabric.Handle()))}
			if err := nh.LinkAdd(veth); err != nil {
				return fmt.Errorf("%s: add underlay veth: %w", nd.Name, err)
			}
			l, err := nh.LinkByName(underlayLink)
			if err != nil {
				return fmt.Errorf("%s: find underlay: %w", nd.Name, err)
			}
			macs[i] = l.Attrs().HardwareAddr
			p, err := fh.LinkByName(port)
			if err != nil {
				return fmt.Errorf("fabric: find %s: %w", port, err)
			}
			steps := []error{
				fh.LinkSetMaster(p, br),
				fh.LinkSetUp(p),
				nh.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(nd.Underlay, under.Bits()))}),
				nh.LinkSetUp(l),
			}
			if nd.Underlay6.IsValid() {
				steps = append(steps, nh.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(nd.Underlay6, DefaultUnderlayCIDR6.Bits())), Flags: unix.IFA_F_NODAD}))
			}
			if err := errors.Join(steps...); err != nil {
				return fmt.Errorf("%s: underlay: %w", nd.Name, err)
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	for i, nd := range t.Nodes {
		if err := t.routeRemotes(i, nd, macs); err != nil {
			return err
		}
	}
	return nil
}

// routeRemotes programs node i's neighbours and routes to every other node.
func (t *Topology) routeRemotes(i int, nd *Node, macs []net.HardwareAddr) error {
	nh, err := nd.NS.NetlinkHandle()
	if err != nil {
		return err
	}
	defer nh.Close()
	l, err := nh.LinkByName(underlayLink)
	if err != nil {
		return fmt.Errorf("%s: find underlay: %w", nd.Name, err)
	}
	idx := l.Attrs().Index
	for j, rem := range t.Nodes {
		if j == i {
			continue
		}
		steps := []error{
			nh.NeighAdd(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: net.IP(rem.Underlay.AsSlice()), HardwareAddr: macs[j]}),
			nh.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: ipNet(rem.PodCIDR), Gw: net.IP(rem.Underlay.AsSlice())}),
		}
		if rem.Underlay6.IsValid() {
			steps = append(steps,
				nh.NeighAdd(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT, IP: net.IP(rem.Underlay6.AsSlice()), HardwareAddr: macs[j]}),
				nh.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: ipNet(rem.PodCIDR6), Gw: net.IP(rem.Underlay6.AsSlice())}))
		}
		if err := errors.Join(steps...); err != nil {
			return fmt.Errorf("%s: route to %s: %w", nd.Name, rem.Name, err)
		}
	}
	return nil
}

// makeCgroups creates the node's cgroup and its role children below base
// (see Topology).
func (nd *Node) makeCgroups(base string) (err error) {
	node := "/" + base + "/kubepods"
	if nd.NodeCgroup, err = cgroup2.New(node); err != nil {
		return err
	}
	if nd.ClientCgroup, err = cgroup2.New(node + "/clients"); err != nil {
		return err
	}
	if nd.ServerCgroup, err = cgroup2.New(node + "/servers"); err != nil {
		return err
	}
	if nd.HostCgroup, err = cgroup2.New(node + "/hostnet"); err != nil {
		return err
	}
	nd.DatapathCgroup, err = cgroup2.New("/" + base + "/datapath")
	return err
}

// NodeOf returns the node pod p is on (its namespace is the node's or is
// routed from it), or nil.
func (t *Topology) NodeOf(p datapath.Pod) *Node {
	for _, nd := range t.Nodes {
		if p.NS != nil && p.NS == nd.NS {
			return nd
		}
		for _, q := range append(append([]datapath.Pod{}, nd.Clients...), nd.Backends...) {
			if q.Name == p.Name && q.NS == p.NS {
				return nd
			}
		}
	}
	return nil
}

// NodeEnv is what node i's instance of a datapath is set up in: the node's
// namespace, cgroups and pods, and the cluster-wide ranges (kube-proxy's
// cluster CIDR is the whole pod range, not the node's share, so that
// traffic between pods of different nodes is not masqueraded).
func (t *Topology) NodeEnv(i int) *datapath.Env {
	nd := t.Nodes[i]
	name := nd.Name
	if len(t.Nodes) == 1 {
		// As the endpoints' NodeName: empty with one node.
		name = ""
	}
	return &datapath.Env{
		Node:           nd.NS,
		NodeName:       name,
		NodeCgroup:     nd.NodeCgroup.Path,
		DatapathCgroup: cgroupPath(nd.DatapathCgroup),
		Clients:        nd.Clients,
		Backends:       nd.Backends,
		PodCIDR:        t.cfg.PodCIDR,
		ServiceCIDR:    t.cfg.ServiceCIDR,
		PodCIDR6:       t.cfg.PodCIDR6,
		ServiceCIDR6:   t.cfg.ServiceCIDR6,
	}
}
