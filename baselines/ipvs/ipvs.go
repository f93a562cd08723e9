// Package ipvs is the kube-proxy IPVS-mode baseline: every ClusterIP is a
// /32 (IPv6: /128) address on a dummy interface kube-ipvs0 in the node
// network namespace (so traffic to it is delivered locally, where IPVS
// intercepts it), and
// every service port is an IPVS virtual server with the round-robin
// scheduler and one masquerade real server of weight 1 per endpoint. IPVS
// picks a real server per new connection and rewrites the destination; the
// replies pass back through the node, where IPVS restores the VIP as their
// source.
//
// Apply is declarative like a kube-proxy sync: it reads the virtual and real
// servers and the addresses that are in the kernel, computes the
// difference from the desired state and sends only the netlink commands
// that close it (over moby/ipvs's generic netlink client).
//
// kube-proxy's IPVS mode also installs iptables rules, with ipsets, for
// masquerading: traffic to a ClusterIP from outside the cluster CIDR, and
// hairpin traffic (a pod reaching itself through its service). Neither
// occurs in svclab's topology, where clients are pods in the pod CIDR and
// never backends of the service they call, and pod to ClusterIP traffic in
// masquerade mode needs no SNAT (replies route back through the node), so
// this baseline installs no iptables rule.
// TODO: the masquerade rules for off-cluster and hairpin sources, and the
// KUBE-IPVS-FILTER rule that drops traffic to ClusterIP ports that are no
// service, when a scenario needs them.
package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// linkName is the dummy interface carrying the ClusterIPs, named as
// kube-proxy names it.
const linkName = "kube-ipvs0"

// nodeSysctls are the IPVS settings kube-proxy's IPVS mode makes: conntrack
// for IPVS connections (so netfilter sees them, as masquerade rules need),
// and dropping connections whose real server was deleted or quiesced
// instead of forwarding more packets to it. They exist per namespace once
// the kernel has IPVS. Close restores the previous values.
var nodeSysctls = []kubeproxy.Sysctl{
	{Key: "net/ipv4/vs/conntrack", Value: "1"},
	{Key: "net/ipv4/vs/expire_nodest_conn", Value: "1"},
	{Key: "net/ipv4/vs/expire_quiescent_template", Value: "1"},
}

func init() {
	datapath.Register(datapath.Factory{
		InNetfilter: true,
		Name:        "ipvs",
		Description: "kube-proxy IPVS mode (deprecated since Kubernetes v1.35): ClusterIPs on a dummy kube-ipvs0, IPVS virtual servers, rr, masquerade",
		Probe:       probe,
		New:         func() datapath.Datapath { return &Datapath{} },
	})
}

var (
	probeOnce sync.Once
	probeErr  error
)

// probe checks, in a throw-away namespace, that the kernel can create a
// dummy interface and has IPVS (its generic netlink family answers).
func probe() error {
	probeOnce.Do(func() { probeErr = runProbe() })
	return probeErr
}

func runProbe() error {
	ns, err := kubeproxy.ProbeNS("ipvs")
	if err != nil {
		return err
	}
	defer ns.Close()
	nh, err := ns.NetlinkHandle()
	if err != nil {
		return fmt.Errorf("ipvs probe: %w", err)
	}
	defer nh.Close()
	var missing, why []string
	if err := checkIPVS(nh); err != nil {
		missing = append(missing, "IP_VS")
		why = append(why, err.Error())
	} else if err := checkHandle(ns); err != nil {
		return fmt.Errorf("ipvs probe: %w", err)
	}
	if err := nh.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: linkName}}); err != nil {
		missing = append(missing, "dummy interfaces")
		why = append(why, fmt.Sprintf("create dummy link: %v", err))
	}
	if len(missing) > 0 {
		return datapath.Unsupportedf("ipvs: kernel lacks %s (%s)", strings.Join(missing, " and "), strings.Join(why, "; "))
	}
	return nil
}

// checkIPVS asks the kernel for the IPVS generic netlink family (which
// makes it load the ip_vs module if it is one). It must be asked first:
// moby/ipvs looks the family up once per process and, if it is missing,
// sends every later command to family 0, which the kernel acknowledges
// without doing anything.
func checkIPVS(nh *netlink.Handle) error {
	if _, err := nh.GenlFamilyGet("IPVS"); err != nil {
		return fmt.Errorf("generic netlink family IPVS: %w", err)
	}
	return nil
}

// checkHandle opens an IPVS handle in ns and lists its services.
func checkHandle(ns *nsutil.NS) error {
	h, err := libipvs.New(ns.Path())
	if err != nil {
		return fmt.Errorf("ipvs handle in %s: %w", ns.Name, err)
	}
	defer h.Close()
	if _, err := h.GetServices(); err != nil {
		return fmt.Errorf("list IPVS services in %s: %w", ns.Name, err)
	}
	return nil
}

// handle is the part of moby/ipvs's Handle this package uses; the tests
// replace it with an in-memory kernel.
type handle interface {
	GetServices() ([]*libipvs.Service, error)
	GetDestinations(*libipvs.Service) ([]*libipvs.Destination, error)
	NewService(*libipvs.Service) error
	UpdateService(*libipvs.Service) error
	DelService(*libipvs.Service) error
	NewDestination(*libipvs.Service, *libipvs.Destination) error
	UpdateDestination(*libipvs.Service, *libipvs.Destination) error
	DelDestination(*libipvs.Service, *libipvs.Destination) error
	Close()
}

// installed reads the kernel's virtual servers, with their real servers,
// whose VIP owned says is ours.
func installed(h handle, owned func(netip.Addr) bool) (table, error) {
	svcs, err := h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("list IPVS services: %w", err)
	}
	have := table{}
	for _, s := range svcs {
		vs, ok := fromIPVSService(s)
		if !ok || !owned(vs.key.addr) {
			continue
		}
		dests, err := h.GetDestinations(s)
		if err != nil {
			return nil, fmt.Errorf("list real servers of %s: %w", vs.key, err)
		}
		for _, d := range dests {
			rs, err := fromIPVSDest(d)
			if err != nil {
				return nil, fmt.Errorf("real server of %s: %w", vs.key, err)
			}
			vs.dests[rs.addr] = rs
		}
		have[vs.key] = vs
	}
	return have, nil
}

// execute sends ops to the kernel. It goes on after a failed command (the
// next sync diffs against the kernel again and retries what is missing)
// and returns every failure.
func execute(h handle, ops []op) error {
	var errs []error
	for _, o := range ops {
		svc := toIPVSService(o.vs)
		var err error
		switch o.kind {
		case addService:
			err = h.NewService(svc)
		case updateService:
			err = h.UpdateService(svc)
		case delService:
			err = h.DelService(svc)
		case addDest:
			err = h.NewDestination(svc, toIPVSDest(o.rs))
		case updateDest:
			err = h.UpdateDestination(svc, toIPVSDest(o.rs))
		case delDest:
			err = h.DelDestination(svc, toIPVSDest(o.rs))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o, err))
		}
	}
	return errors.Join(errs...)
}

// Datapath is the IPVS baseline in one node namespace.
type Datapath struct {
	mu   sync.Mutex
	env  *datapath.Env
	nl   *netlink.Handle
	ipvs handle
	link netlink.Link
	// restore holds the sysctls Setup changed, with their old values.
	restore map[string]string

	// Sizes of the last sync, for Info.
	services, dests, ops int
}

// Setup creates kube-ipvs0 in the node namespace, opens an IPVS handle
// there and sets kube-proxy's IPVS sysctls. kube-ipvs0 is left down, as
// kube-proxy leaves it: the kernel treats its addresses as local all the
// same.
func (d *Datapath) Setup(_ context.Context, env *datapath.Env) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if env == nil || env.Node == nil {
		return errors.New("ipvs setup: env has no node namespace")
	}
	if d.env != nil {
		return fmt.Errorf("ipvs setup: already set up in %s", d.env.Node.Name)
	}
	d.env = env
	d.restore = map[string]string{}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.closeLocked())
		}
	}()
	if d.nl, err = env.Node.NetlinkHandle(); err != nil {
		return fmt.Errorf("ipvs setup: %w", err)
	}
	if err := checkIPVS(d.nl); err != nil {
		return fmt.Errorf("ipvs setup: %w", datapath.Unsupportedf("kernel lacks IP_VS: %v", err))
	}
	if _, err := d.nl.LinkByName(linkName); err == nil {
		return fmt.Errorf("ipvs setup: %s already exists in %s", linkName, env.Node.Name)
	}
	dummy := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: linkName}}
	if err := d.nl.LinkAdd(dummy); err != nil {
		return fmt.Errorf("ipvs setup: create dummy link %s in %s: %w", linkName, env.Node.Name, err)
	}
	// From here on Close deletes the link, by name if need be.
	d.link = dummy
	if d.link, err = d.nl.LinkByName(linkName); err != nil {
		d.link = dummy
		return fmt.Errorf("ipvs setup: find %s in %s: %w", linkName, env.Node.Name, err)
	}
	h, err := libipvs.New(env.Node.Path())
	if err != nil {
		return fmt.Errorf("ipvs setup: ipvs handle in %s: %w", env.Node.Name, err)
	}
	d.ipvs = h
	if err := kubeproxy.SetSysctls(env.Node, nodeSysctls, d.restore); err != nil {
		return fmt.Errorf("ipvs setup: %w", err)
	}
	return nil
}

// linkAddrs returns the IPv4 and IPv6 addresses on kube-ipvs0, but for
// IPv6 link-local ones: the kernel's own, never a ClusterIP (kube-ipvs0
// stays down, so it has none, but one put there by hand must not be taken
// for a stale VIP and deleted).
func (d *Datapath) linkAddrs() ([]netip.Addr, error) {
	as, err := d.nl.AddrList(d.link, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", linkName, err)
	}
	var out []netip.Addr
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.Unmap().IsLinkLocalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// Apply makes the kernel implement exactly st. The virtual servers it
// manages are those whose VIP is on kube-ipvs0 or wanted now; any other
// IPVS service in the namespace is left alone. New ClusterIPs are put on
// kube-ipvs0 before their virtual servers exist, and old ones are taken
// off only after theirs are gone.
func (d *Datapath) Apply(_ context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ipvs == nil {
		return errors.New("ipvs apply: Setup has not run")
	}
	// This node's view of internalTrafficPolicy Local services (kube-proxy's
	// IPVS mode programs the node's endpoints only, as here).
	st = st.ForNode(d.env.NodeName)
	want, vips, err := desired(st)
	if err != nil {
		return fmt.Errorf("ipvs apply: %w", err)
	}
	bound, err := d.linkAddrs()
	if err != nil {
		return fmt.Errorf("ipvs apply: %w", err)
	}
	have, err := installed(d.ipvs, ownedBy(bound, vips))
	if err != nil {
		return fmt.Errorf("ipvs apply: %w", err)
	}
	add, remove := kubeproxy.AddrDiff(bound, vips)
	for _, a := range add {
		if err := d.nl.AddrAdd(d.link, kubeproxy.HostAddr(a)); err != nil {
			return fmt.Errorf("ipvs apply: add ClusterIP %s to %s: %w", a, linkName, err)
		}
	}
	ops := diff(have, want)
	if err := execute(d.ipvs, ops); err != nil {
		return fmt.Errorf("ipvs apply: %w", err)
	}
	for _, a := range remove {
		if err := d.nl.AddrDel(d.link, kubeproxy.HostAddr(a)); err != nil {
			return fmt.Errorf("ipvs apply: remove ClusterIP %s from %s: %w", a, linkName, err)
		}
	}
	d.services, d.dests, d.ops = len(want), 0, len(ops)
	for _, vs := range want {
		d.dests += len(vs.dests)
	}
	return nil
}

// ownedBy says which VIPs are this datapath's: those on kube-ipvs0 and
// those wanted.
func ownedBy(lists ...[]netip.Addr) func(netip.Addr) bool {
	set := map[netip.Addr]bool{}
	for _, l := range lists {
		for _, a := range l {
			set[a] = true
		}
	}
	return func(a netip.Addr) bool { return set[a] }
}

// Targets is the ClusterIP: IPVS picks the endpoint.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info records the programming model and the size of the last sync.
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return map[string]string{
		"scheduler":         scheduler,
		"forwarding":        "masquerade",
		"vip_interface":     linkName + " (dummy)",
		"virtual_servers":   strconv.Itoa(d.services),
		"real_servers":      strconv.Itoa(d.dests),
		"last_sync_changes": strconv.Itoa(d.ops),
	}
}

// Close deletes the virtual servers on kube-ipvs0's addresses, then the
// link itself (its addresses go with it), and restores the sysctls.
// Calling it again is a no-op.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeLocked()
}

func (d *Datapath) closeLocked() error {
	if d.env == nil {
		return nil
	}
	var errs []error
	if d.ipvs != nil && d.link != nil {
		bound, err := d.linkAddrs()
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs close: %w", err))
		}
		have, err := installed(d.ipvs, ownedBy(bound))
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs close: %w", err))
		}
		if err := execute(d.ipvs, diff(have, nil)); err != nil {
			errs = append(errs, fmt.Errorf("ipvs close: %w", err))
		}
	}
	if d.ipvs != nil {
		d.ipvs.Close()
		d.ipvs = nil
	}
	if d.link != nil {
		if err := d.nl.LinkDel(d.link); err != nil {
			errs = append(errs, fmt.Errorf("ipvs close: delete %s in %s: %w", linkName, d.env.Node.Name, err))
		}
		d.link = nil
	}
	for _, err := range kubeproxy.RestoreSysctls(d.env.Node, d.restore) {
		errs = append(errs, fmt.Errorf("ipvs close: restore: %w", err))
	}
	d.restore = nil
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	d.env = nil
	d.services, d.dests, d.ops = 0, 0, 0
	return errors.Join(errs...)
}
