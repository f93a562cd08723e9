// Package tcebpf is the tc eBPF baseline: a ClusterIP implemented by
// per-packet DNAT in tc BPF programs on the client pods' host-side veths, as
// cls_bpf Service datapaths did before socket-level load balancing (the
// "tc eBPF" comparison of the socket-LB design this lab measures).
//
// The BPF side lives in bpf/tc_dnat.c: an ingress program rewrites packets
// from a client to a ClusterIP:port to a backend chosen per flow, an egress
// program rewrites the backend's answers back to the ClusterIP:port, and
// both share flow state in LRU maps of their own (no kernel conntrack). The
// service and backend maps are laid out and synced as datapath/socketlb
// does.
package tcebpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"

	"svclab/datapath"
	"svclab/internal/lbmaps"
)

// Name is the datapath's registry name.
const Name = "tc-ebpf"

func init() {
	datapath.Register(datapath.Factory{
		Name:        Name,
		Description: "tc eBPF per-packet DNAT on every pod veth (cls_bpf-era Service datapath), own LRU flow state",
		Probe:       Probe,
		New:         func() datapath.Datapath { return New() },
		// A node process's packet to a ClusterIP is routed by the node's
		// own route for the service range and leaves without crossing a
		// pod veth, so no program of this datapath sees it; per-packet
		// datapaths of this kind served the node with a separate
		// socket-level or host-device path, which this one does not model.
		Scope: datapath.Scope{NoHostNetwork: "tc-ebpf translates on pod veths only: a node process's packets to a ClusterIP cross no pod veth, so hostNetwork clients are not served"},
	})
}

// Errors returned by the datapath; test with errors.Is.
var (
	// ErrNotSetUp is returned by Apply before a successful Setup or after Close.
	ErrNotSetUp = errors.New("tc-ebpf datapath is not set up")
	// ErrAlreadySetUp is returned by a second Setup without Close in between.
	ErrAlreadySetUp = errors.New("tc-ebpf datapath is already set up")
	// ErrNoClients is returned by Setup when the Env has no node namespace
	// or no client veth to attach to.
	ErrNoClients = errors.New("env has no client veths in a node namespace")
)

// Datapath is the tc eBPF datapath. The zero value is not usable; call New.
type Datapath struct {
	mu sync.Mutex
	// node is Env.NodeName: Apply keeps the node's endpoints of
	// internalTrafficPolicy Local services.
	node string

	objs   *tcebpfObjects
	attach attachment
	ifaces []string
	// forceMode, when set before Setup, skips the tcx attempt (tests use
	// it to exercise the clsact fallback on a tcx kernel).
	forceMode string

	// installed mirrors the service and backend maps entry for entry, as
	// in datapath/socketlb.
	installed tables
}

// New returns an unconfigured tc eBPF datapath.
func New() *Datapath { return &Datapath{} }

var _ datapath.Datapath = (*Datapath)(nil)

// Setup loads the programs and attaches them to tc ingress (from the
// client) and tc egress (towards the client) of every client pod's
// host-side veth in env.Node: with tcx links where the kernel has them,
// else with a clsact qdisc and direct-action filters.
func (d *Datapath) Setup(ctx context.Context, env *datapath.Env) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()

	if d.objs != nil {
		return ErrAlreadySetUp
	}
	// A node may have only backend pods (a remote node of a multi-node
	// topology): they are clients of services too, so a node with pods
	// of either kind is served. A node of several (NodeName set) may have
	// none at all: its instance then attaches nothing and only keeps its
	// maps, as an agent on a node without pods.
	if env == nil || env.Node == nil || (len(env.Clients)+len(env.Backends) == 0 && env.NodeName == "") {
		return fmt.Errorf("setup tc-ebpf: %w", ErrNoClients)
	}
	for i, c := range env.Clients {
		if c.HostVeth == "" {
			return fmt.Errorf("setup tc-ebpf: clients[%d] (%s): empty host_veth: %w", i, c.Name, ErrNoClients)
		}
	}
	for i, b := range env.Backends {
		if b.HostVeth == "" {
			return fmt.Errorf("setup tc-ebpf: backends[%d] (%s): empty host_veth: %w", i, b.Name, ErrNoClients)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// A no-op on kernels that account BPF memory to the memcg (5.11+).
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock rlimit: %w", err)
	}

	objs := new(tcebpfObjects)
	if err := loadTcebpfObjects(objs, nil); err != nil {
		return fmt.Errorf("load tc-ebpf objects: %w", err)
	}
	att := attachment{node: env.Node, mode: d.forceMode}
	defer func() {
		if err != nil {
			err = errors.Join(err, att.close(), objs.Close())
		}
	}()

	nh, err := env.Node.NetlinkHandle()
	if err != nil {
		return err
	}
	defer nh.Close()

	hooks := []hookSpec{
		{prog: objs.SvclabTcIngress, name: tcebpfProgSvclabTcIngress, tcx: ebpf.AttachTCXIngress, clsact: netlink.HANDLE_MIN_INGRESS, dirName: "ingress"},
		{prog: objs.SvclabTcEgress, name: tcebpfProgSvclabTcEgress, tcx: ebpf.AttachTCXEgress, clsact: netlink.HANDLE_MIN_EGRESS, dirName: "egress"},
	}
	// Every pod's veth, as a per-packet datapath on a real node: backend
	// pods are clients of services too (hairpin, pod-to-pod through a
	// ClusterIP). The node's own processes are not served: their packets
	// pass no pod veth on the way out (a named limitation, see Info).
	var ifaces []string
	for _, c := range append(slices.Clone(env.Clients), env.Backends...) {
		if err := ctx.Err(); err != nil {
			return err
		}
		l, err := nh.LinkByName(c.HostVeth)
		if err != nil {
			return fmt.Errorf("pod %s: find host veth %s in %s: %w", c.Name, c.HostVeth, env.Node.Name, err)
		}
		ifindex := l.Attrs().Index
		if att.mode == "" || att.mode == attachTCX {
			err := att.attachTCXAll(c.HostVeth, ifindex, hooks)
			switch {
			case err == nil:
				att.mode = attachTCX
			case att.mode == "" && errors.Is(err, ebpf.ErrNotSupported):
				// Decided once, on the first interface: no tcx here.
				att.mode = attachClsact
			default:
				return err
			}
		}
		if att.mode == attachClsact {
			if err := att.attachClsactAll(nh, c.HostVeth, ifindex, hooks); err != nil {
				return err
			}
		}
		ifaces = append(ifaces, c.HostVeth)
	}

	d.objs, d.attach, d.ifaces, d.node = objs, att, ifaces, env.NodeName
	d.installed = newTables()
	return nil
}

// Apply makes the service and backend maps hold exactly st, in the order
// datapath/socketlb uses (backend slots before the service entry that
// points at them, stale slots only after nothing points at them). UDP flows
// whose backend left their service are then deleted, so their next
// datagram picks a live backend; TCP flows keep their backend until they
// end, as under conntrack.
func (d *Datapath) Apply(ctx context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()

	if d.objs == nil {
		return ErrNotSetUp
	}
	// This node's view of internalTrafficPolicy Local services.
	st = st.ForNode(d.node)
	lost, err := syncMaps(ctx, &d.installed, st, d.objs.SvclabServices, d.objs.SvclabBackends)
	if len(lost) > 0 {
		_, ferr := flushStaleUDP(lost, d.objs.SvclabTcFwd, d.objs.SvclabTcRev)
		err = errors.Join(err, ferr)
	}
	return err
}

// Targets returns the ClusterIP and port: the client sends to the VIP and
// the ingress program picks the backend.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info describes the hooks and how they are attached and, once set up, the
// size of the programmed state (datapath.InfoStateObjects, datapath.InfoStateBytes)
// over the services and backends maps; the flow maps hold per-connection
// state, not programmed state, and are not counted.
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()

	info := map[string]string{
		"hooks":        "tc ingress (DNAT) + tc egress (reverse) on client host veths",
		"protocols":    "TCP,UDP",
		"flow_state":   "own LRU hash maps, " + strconv.Itoa(maxFlows) + " flows, no conntrack",
		"no_endpoints": "drop (silent; TCP connect times out)",
	}
	if d.objs == nil {
		return info
	}
	info["attach"] = d.attach.mode
	info["interfaces"] = strings.Join(d.ifaces, ",")
	// Named limitation: the node's own processes (hostNetwork pods) send
	// to a ClusterIP through the node's route, never through a pod veth.
	info["host_clients"] = "not served: per-packet DNAT is on pod veths only, which the node's own packets to a ClusterIP never cross"
	lbmaps.AddStateSize(info, len(d.installed.services)+len(d.installed.backends), d.objs.SvclabServices, d.objs.SvclabBackends)
	return info
}

// Close detaches both programs from every interface and releases the maps
// and programs. Nothing is pinned, so nothing of the datapath outlives it.
// It is safe to call more than once and after a failed Setup.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()

	var errs []error
	if err := d.attach.close(); err != nil {
		errs = append(errs, err)
	}
	if d.objs != nil {
		if err := d.objs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close tc-ebpf objects: %w", err))
		}
		d.objs = nil
	}
	d.attach = attachment{}
	d.ifaces = nil
	d.installed = tables{}
	return errors.Join(errs...)
}

// stats reads the programs' event counters, summed over CPUs.
func (d *Datapath) stats() (map[string]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.objs == nil {
		return nil, ErrNotSetUp
	}
	names := []string{"new_flow", "drop_no_backend", "drop_error", "stale_reverse"}
	out := map[string]uint64{}
	for i, n := range names {
		var perCPU []uint64
		if err := d.objs.SvclabTcStats.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read %s[%d]: %w", tcebpfMapSvclabTcStats, i, err)
		}
		for _, v := range perCPU {
			out[n] += v
		}
	}
	return out, nil
}

// Probe reports whether this kernel can run the datapath. It needs the
// privileges Setup needs (CAP_BPF and CAP_NET_ADMIN, or root).
func Probe() error {
	helper := func(fn asm.BuiltinFunc) func() error {
		return func() error { return features.HaveProgramHelper(ebpf.SchedCLS, fn) }
	}
	checks := []struct {
		what string
		fn   func() error
	}{
		{"BPF program type sched_cls (tc, Linux 4.1)", func() error { return features.HaveProgramType(ebpf.SchedCLS) }},
		{"BPF hash maps", func() error { return features.HaveMapType(ebpf.Hash) }},
		{"BPF LRU hash maps (Linux 4.10)", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"BPF per-CPU array maps", func() error { return features.HaveMapType(ebpf.PerCPUArray) }},
		{"helper bpf_skb_load_bytes in sched_cls programs", helper(asm.FnSkbLoadBytes)},
		{"helper bpf_skb_store_bytes in sched_cls programs", helper(asm.FnSkbStoreBytes)},
		{"helper bpf_l3_csum_replace in sched_cls programs", helper(asm.FnL3CsumReplace)},
		{"helper bpf_l4_csum_replace in sched_cls programs", helper(asm.FnL4CsumReplace)},
		{"helper bpf_get_prandom_u32 in sched_cls programs", helper(asm.FnGetPrandomU32)},
		{"helper bpf_map_delete_elem in sched_cls programs", helper(asm.FnMapDeleteElem)},
		{"tcx links (Linux 6.6) or a clsact qdisc (Linux 4.5)", func() error {
			tcxErr := haveTCX()
			if tcxErr == nil {
				return nil
			}
			if err := haveClsact(); err != nil {
				return fmt.Errorf("no tcx (%v) and no clsact: %w", tcxErr, err)
			}
			return nil
		}},
	}
	for _, c := range checks {
		if err := c.fn(); err != nil {
			return datapath.Unsupportedf("tc-ebpf needs %s: %v", c.what, err)
		}
	}
	return nil
}
