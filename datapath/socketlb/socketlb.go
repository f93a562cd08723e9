// Package socketlb is svclab's reference Service datapath: a socket-level
// load balancer that translates a ClusterIP to a backend when the client
// names it in a syscall (connect, sendmsg) and back when the client asks
// who it talks to (recvmsg, getpeername), instead of NATing every packet.
//
// The BPF side lives in bpf/socketlb.c; bpf/README.md describes the hook
// path, the maps and the kernel floors. This package loads the programs,
// attaches them to the client cgroup with bpf_links (so a crashed harness
// leaves nothing attached), keeps the service maps equal to the desired
// datapath.State, destroys connected UDP sockets whose backend went away,
// and reads the per-CPU connection counters.
package socketlb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/cgroup2"
	"svclab/internal/lbmaps"
	"svclab/internal/nsutil"
)

// Name is the datapath's registry name.
const Name = "socketlb"

func init() {
	datapath.Register(datapath.Factory{
		Name:        Name,
		Description: "eBPF socket-level LB: ClusterIP translated at connect()/sendmsg() and back at recvmsg()/getpeername(), no per-packet NAT",
		Probe:       Probe,
		New:         func() datapath.Datapath { return New() },
	})
}

// Errors returned by the datapath; test with errors.Is.
var (
	// ErrNotSetUp is returned by Apply before a successful Setup or after Close.
	ErrNotSetUp = errors.New("socketlb datapath is not set up")
	// ErrAlreadySetUp is returned by a second Setup without Close in between.
	ErrAlreadySetUp = errors.New("socketlb datapath is already set up")
	// ErrNoCgroup is returned by Setup when the Env names no client cgroup.
	ErrNoCgroup = errors.New("env has no client cgroup")
)

// hook is one cgroup sock_addr program and where it attaches.
type hook struct {
	name   string
	prog   string
	attach ebpf.AttachType
	// since is the kernel that introduced the attach type, for Probe.
	since string
}

// hooks are attached in this order; Info lists them in it.
var hooks = []hook{
	{"connect4", socketlbProgSvclabSock4Connect, ebpf.AttachCGroupInet4Connect, "4.17"},
	{"connect6", socketlbProgSvclabSock6Connect, ebpf.AttachCGroupInet6Connect, "4.17"},
	{"sendmsg4", socketlbProgSvclabSock4Sendmsg, ebpf.AttachCGroupUDP4Sendmsg, "4.18"},
	{"sendmsg6", socketlbProgSvclabSock6Sendmsg, ebpf.AttachCGroupUDP6Sendmsg, "4.18"},
	{"recvmsg4", socketlbProgSvclabSock4Recvmsg, ebpf.AttachCGroupUDP4Recvmsg, "5.2"},
	{"recvmsg6", socketlbProgSvclabSock6Recvmsg, ebpf.AttachCGroupUDP6Recvmsg, "5.2"},
	{"getpeername4", socketlbProgSvclabSock4Getpeername, ebpf.AttachCgroupInet4GetPeername, "5.8"},
	{"getpeername6", socketlbProgSvclabSock6Getpeername, ebpf.AttachCgroupInet6GetPeername, "5.8"},
}

func hookNames() string {
	names := make([]string, len(hooks))
	for i, h := range hooks {
		names[i] = h.name
	}
	return strings.Join(names, ",")
}

// destroyMaps are the maps svclab_udp_destroy reads; it is loaded on its
// own, against the maps the hooks use.
var destroyMaps = []string{socketlbMapSvclabSock, socketlbMapSvclabRevnat, socketlbMapSvclabServices, socketlbMapSvclabMembers}

// SocketLB is the socket-LB datapath. The zero value is not usable; call New.
type SocketLB struct {
	mu sync.Mutex
	// node is the node this instance serves (Env.NodeName): Apply keeps
	// the node's endpoints of internalTrafficPolicy Local services.
	node string

	// maps and progs are everything loaded from bpf/socketlb.c but the
	// destroy iterator.
	maps  *socketlbMaps
	progs map[string]*ebpf.Program
	links []link.Link
	// destroy is the iter/udp link; nil when the kernel cannot run it, and
	// destroyWhy then says why.
	destroyProg *ebpf.Program
	destroy     *link.Iter
	destroyWhy  string
	destroyed   uint64
	// netns are the namespaces of the pods and the node, where the
	// iterator looks for sockets (it walks the namespace it is opened in).
	netns []*nsutil.NS

	cgroup string
	// attach says how the hooks ended up attached: "bpf_link", or
	// "prog_attach" when link.AttachCgroup had to fall back.
	attach string
	// setRetval records whether rejected syscalls carry a specific errno
	// (bpf_set_retval) or the kernel's default EPERM.
	setRetval bool

	// installed mirrors the kernel maps entry for entry. Apply diffs the
	// desired state against it and it is updated after every successful
	// map write, so it stays exact even when an Apply fails half way.
	installed tables
	// lastID is the last service id handed out; ids are never reused.
	lastID uint32
	book   counterBook

	// revNATEntries overrides the size of svclab_revnat when non-zero;
	// tests shrink it to put the LRU under pressure.
	revNATEntries uint32
}

// New returns an unconfigured socket-LB datapath.
func New() *SocketLB { return &SocketLB{} }

var (
	_ datapath.Datapath      = (*SocketLB)(nil)
	_ datapath.CounterReader = (*SocketLB)(nil)
)

// Setup loads the BPF objects, attaches the eight sock_addr hooks to
// env.NodeCgroup and, where the kernel allows (6.5+), prepares the
// iter/udp program that destroys connected UDP sockets to removed backends
// in the namespaces of the node and its pods.
func (s *SocketLB) Setup(ctx context.Context, env *datapath.Env) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.maps != nil {
		return ErrAlreadySetUp
	}
	if env == nil || env.NodeCgroup == "" {
		return fmt.Errorf("setup socketlb: %w", ErrNoCgroup)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// A no-op on kernels that account BPF memory to the memcg (5.11+); on
	// older ones maps are charged against RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock rlimit: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.closeLocked())
		}
	}()

	spec, err := loadSocketlb()
	if err != nil {
		return err
	}
	s.setRetval = features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) == nil
	if s.setRetval {
		v, ok := spec.Variables[socketlbVarSvclabHaveSetRetval]
		if !ok {
			return fmt.Errorf("socketlb object lacks variable %s", socketlbVarSvclabHaveSetRetval)
		}
		if err := v.Set(uint8(1)); err != nil {
			return fmt.Errorf("set %s: %w", socketlbVarSvclabHaveSetRetval, err)
		}
	}

	if s.revNATEntries != 0 {
		spec.Maps[socketlbMapSvclabRevnat].MaxEntries = s.revNATEntries
	}

	// The hooks and maps first: a kernel without the destroy iterator
	// must still get everything else.
	hookSpec := spec.Copy()
	delete(hookSpec.Programs, socketlbProgSvclabUdpDestroy)
	coll, err := ebpf.NewCollection(hookSpec)
	if err != nil {
		return fmt.Errorf("load socketlb objects: %w", err)
	}
	s.maps = new(socketlbMaps)
	if err := coll.Assign(s.maps); err != nil {
		coll.Close()
		return fmt.Errorf("assign socketlb maps: %w", err)
	}
	s.progs = coll.Programs
	// Everything Assign did not take is ours to close now.
	for name, m := range coll.Maps {
		if !isAssignedMap(name) {
			m.Close()
		}
	}

	s.cgroup, s.attach, s.node = env.NodeCgroup, "bpf_link", env.NodeName
	for _, h := range hooks {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: env.NodeCgroup, Attach: h.attach, Program: s.progs[h.prog]})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", h.name, env.NodeCgroup, err)
		}
		s.links = append(s.links, l)
		// Only a real bpf_link has link info; the PROG_ATTACH emulation does not.
		if _, ierr := l.Info(); ierr != nil {
			s.attach = "prog_attach"
		}
	}

	s.setupDestroy(spec, env)
	s.installed = newTables()
	s.book = newCounterBook()
	return nil
}

func isAssignedMap(name string) bool {
	switch name {
	case socketlbMapSvclabAffinity, socketlbMapSvclabBackends, socketlbMapSvclabBeCtr, socketlbMapSvclabMembers,
		socketlbMapSvclabRevnat, socketlbMapSvclabServices, socketlbMapSvclabSock, socketlbMapSvclabSvcCtr:
		return true
	}
	return false
}

// setupDestroy loads and attaches the UDP destroy iterator. Failing is not
// an error: the datapath then only re-steers unconnected UDP sockets, and
// Info says why connected ones are not destroyed.
func (s *SocketLB) setupDestroy(spec *ebpf.CollectionSpec, env *datapath.Env) {
	// Every namespace a process under env.NodeCgroup may have sockets
	// in: client pods, backend pods (they are clients of services too)
	// and the node's own (hostNetwork pods).
	seen := map[string]bool{}
	add := func(ns *nsutil.NS) {
		if ns != nil && !seen[ns.Name] {
			seen[ns.Name] = true
			s.netns = append(s.netns, ns)
		}
	}
	for _, c := range env.Clients {
		add(c.NS)
	}
	for _, b := range env.Backends {
		add(b.NS)
	}
	add(env.Node)
	repl := map[string]*ebpf.Map{}
	all := map[string]*ebpf.Map{
		socketlbMapSvclabSock: s.maps.SvclabSock, socketlbMapSvclabRevnat: s.maps.SvclabRevnat,
		socketlbMapSvclabServices: s.maps.SvclabServices, socketlbMapSvclabMembers: s.maps.SvclabMembers,
	}
	for _, name := range destroyMaps {
		repl[name] = all[name]
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"svclab_udp_destroy"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		s.destroyWhy = "iter/udp with bpf_sock_destroy (Linux 6.5) not loadable: " + firstLine(err)
		return
	}
	it, err := link.AttachIter(link.IterOptions{Program: objs.Prog})
	if err != nil {
		objs.Prog.Close()
		s.destroyWhy = "attach iter/udp: " + firstLine(err)
		return
	}
	s.destroyProg, s.destroy = objs.Prog, it
}

func firstLine(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return msg
}

// Apply makes the maps hold exactly st; see plan for the order of writes
// that keeps concurrent lookups consistent. When it returns, no new
// connection and no UDP datagram goes to a backend st no longer has, and
// connected UDP sockets of the client namespaces still bound to one are
// destroyed (where the kernel supports it).
func (s *SocketLB) Apply(ctx context.Context, st datapath.State) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.maps == nil {
		return ErrNotSetUp
	}
	// This node's view: a Local service with none of its endpoints here
	// gets none, so its connect() is refused (ECONNREFUSED) where
	// kube-proxy drops; the socket is never connected to another node.
	st = st.ForNode(s.node)
	fronts, err := frontends(st)
	if err != nil {
		return err
	}
	ops := plan(s.installed, desiredTables(s.installed, fronts, &s.lastID))
	execErr := execute(ctx, &s.installed, ops, s.mapSet())

	removedUDP, removed := false, false
	for _, o := range ops {
		switch o.kind {
		case deleteMember:
			removed = true
			removedUDP = removedUDP || s.book.metas[o.mem.SvcId].protocol == datapath.UDP
		case deleteService:
			removed = true
			removedUDP = removedUDP || o.svc.Proto == ipprotoUDP
		}
	}
	var errs []error
	if removed {
		if err := s.book.collect(s.maps.SvclabSvcCtr, s.maps.SvclabBeCtr, s.installed); err != nil {
			errs = append(errs, err)
		}
	}
	s.book.note(fronts, s.installed)
	if execErr != nil {
		return errors.Join(append([]error{execErr}, errs...)...)
	}
	if removedUDP {
		if _, err := s.destroyStaleUDP(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *SocketLB) mapSet() mapSet {
	return mapSet{services: s.maps.SvclabServices, backends: s.maps.SvclabBackends, members: s.maps.SvclabMembers}
}

// destroyStaleUDP runs the iterator in every client namespace; it returns
// how many sockets were destroyed.
func (s *SocketLB) destroyStaleUDP() (int, error) {
	if s.destroy == nil {
		return 0, nil
	}
	total := 0
	var errs []error
	for _, ns := range s.netns {
		err := ns.Do(func() error {
			rd, err := s.destroy.Open()
			if err != nil {
				return err
			}
			defer rd.Close()
			n, err := io.Copy(io.Discard, rd)
			total += int(n)
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("destroy stale UDP sockets in netns %s: %w", ns.Name, err))
		}
	}
	s.destroyed += uint64(total)
	return total, errors.Join(errs...)
}

// Targets returns the ClusterIP and port: the client connects to the VIP and
// the hooks pick the backend.
func (s *SocketLB) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info describes the hooks and how they are attached and, once set up, the
// size of the programmed state (datapath.InfoStateObjects, datapath.InfoStateBytes)
// over the services, backends and members maps; the affinity, reverse-NAT,
// socket-storage and counter maps hold per-connection or accounting state,
// not programmed state, and are not counted.
func (s *SocketLB) Info() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()

	info := map[string]string{
		"hooks":     hookNames(),
		"protocols": "TCP,UDP",
	}
	if s.maps == nil {
		return info
	}
	info["families"] = "IPv4,IPv6,IPv4-mapped IPv6"
	info["attach"] = s.attach
	info["cgroup"] = s.cgroup
	// What connect()/sendmsg() to a service without endpoints fails with.
	info["no_endpoints_errno"] = "EPERM"
	if s.setRetval {
		info["no_endpoints_errno"] = "ECONNREFUSED"
	}
	info["affinity_client_id"] = "netns_cookie"
	if s.destroy != nil {
		info["udp_destroy"] = "iter/udp+bpf_sock_destroy"
		info["udp_sockets_destroyed"] = strconv.FormatUint(s.destroyed, 10)
	} else {
		info["udp_destroy"] = "unavailable: " + s.destroyWhy
	}
	lbmaps.AddStateSize(info, s.installed.entries(), s.maps.SvclabServices, s.maps.SvclabBackends, s.maps.SvclabMembers)
	return info
}

// entries counts the entries of the three load-balancing maps. It counts
// the copy Apply keeps, which equals the kernel maps (also after a failed
// Apply), so Info does not walk 250,000 map entries at scale.
func (t tables) entries() int {
	return len(t.services) + len(t.backends) + len(t.members)
}

// Counters returns the connection counts since Setup: per service port and
// per backend, including removed ones. A connection is one connect() to a
// ClusterIP (TCP or UDP), or one UDP socket starting to send to a backend
// with sendmsg() (a socket that keeps sending to the same backend counts
// once).
func (s *SocketLB) Counters() (datapath.Counters, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.maps == nil {
		return datapath.Counters{}, ErrNotSetUp
	}
	return s.book.read(s.maps.SvclabSvcCtr, s.maps.SvclabBeCtr, s.installed)
}

// Close detaches every hook and releases the maps and programs. Nothing is
// pinned, so nothing of the datapath outlives it. It is safe to call more
// than once and after a failed Setup.
func (s *SocketLB) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeLocked()
}

func (s *SocketLB) closeLocked() error {
	var errs []error
	for i, l := range s.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s from %s: %w", hooks[i].name, s.cgroup, err))
		}
	}
	s.links = nil
	if s.destroy != nil {
		if err := s.destroy.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach iter/udp: %w", err))
		}
		s.destroy = nil
	}
	if s.destroyProg != nil {
		s.destroyProg.Close()
		s.destroyProg = nil
	}
	for name, p := range s.progs {
		if err := p.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close program %s: %w", name, err))
		}
	}
	s.progs = nil
	if s.maps != nil {
		if err := s.maps.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close socketlb maps: %w", err))
		}
		s.maps = nil
	}
	s.installed = tables{}
	s.book = counterBook{}
	s.netns = nil
	s.attach, s.cgroup, s.setRetval, s.destroyWhy, s.destroyed, s.lastID = "", "", false, "", 0, 0
	return errors.Join(errs...)
}

// Probe reports whether this kernel can run the datapath, naming the first
// missing hook, helper or map type. It needs the privileges Setup needs
// (CAP_BPF and CAP_NET_ADMIN, or root). bpf_set_retval (5.18) and the UDP
// destroy iterator (6.5) are optional: without them Setup still works and
// Info records the difference.
func Probe() error {
	checks := []struct {
		what string
		fn   func() error
	}{
		{"BPF program type cgroup/sock_addr (Linux 4.17)", func() error {
			return features.HaveProgramType(ebpf.CGroupSockAddr)
		}},
	}
	for _, h := range hooks {
		checks = append(checks, struct {
			what string
			fn   func() error
		}{fmt.Sprintf("attach type cgroup/%s (Linux %s)", h.name, h.since), func() error { return haveAttachType(h.attach) }})
	}
	for _, m := range []struct {
		t     ebpf.MapType
		since string
	}{{ebpf.Hash, "3.19"}, {ebpf.LRUHash, "4.10"}, {ebpf.PerCPUHash, "4.6"}, {ebpf.SkStorage, "5.2"}} {
		checks = append(checks, struct {
			what string
			fn   func() error
		}{fmt.Sprintf("BPF map type %s (Linux %s)", m.t, m.since), func() error { return features.HaveMapType(m.t) }})
	}
	for _, h := range []struct {
		fn    asm.BuiltinFunc
		since string
	}{
		{asm.FnMapLookupElem, "4.17"},
		{asm.FnGetPrandomU32, "4.17"},
		{asm.FnKtimeGetNs, "4.17"},
		{asm.FnGetSocketCookie, "5.0"},
		{asm.FnGetNetnsCookie, "5.7"},
		{asm.FnSkStorageGet, "5.2"},
	} {
		checks = append(checks, struct {
			what string
			fn   func() error
		}{fmt.Sprintf("helper bpf_%s in cgroup/sock_addr programs (Linux %s)", helperName(h.fn), h.since), func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, h.fn)
		}})
	}
	checks = append(checks,
		struct {
			what string
			fn   func() error
		}{"bpf_link attachment of cgroup programs (Linux 5.7)", haveCgroupLink},
		struct {
			what string
			fn   func() error
		}{"a cgroup v2 mount", func() error {
			_, err := cgroup2.Find()
			return err
		}},
	)
	for _, c := range checks {
		if err := c.fn(); err != nil {
			return datapath.Unsupportedf("socketlb needs %s: %v", c.what, err)
		}
	}
	return nil
}

// helperName turns asm.FnSkStorageGet into "sk_storage_get".
func helperName(fn asm.BuiltinFunc) string {
	name := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	for i, r := range name {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// probeProgram loads a program that only returns 1, with the given
// expected attach type.
func probeProgram(at ebpf.AttachType) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "svclab_probe",
		Type:       ebpf.CGroupSockAddr,
		AttachType: at,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
}

// haveAttachType reports whether the kernel knows a sock_addr attach type:
// it validates the expected attach type when the program is loaded.
func haveAttachType(at ebpf.AttachType) error {
	prog, err := probeProgram(at)
	if err != nil {
		if errors.Is(err, unix.EINVAL) {
			return ebpf.ErrNotSupported
		}
		return err
	}
	return prog.Close()
}

// haveCgroupLink reports whether sock_addr programs can be attached with
// BPF_LINK_CREATE. The features package has no such probe, and attaching to
// a real cgroup would be a side effect, so it aims the link at a file that
// is not a cgroup: a kernel with cgroup bpf_links gets that far and answers
// EBADF, an older one rejects the command itself.
func haveCgroupLink() error {
	prog, err := probeProgram(ebpf.AttachCGroupInet4Connect)
	if err != nil {
		return fmt.Errorf("load probe program: %w", err)
	}
	defer prog.Close()

	notCgroup, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer notCgroup.Close()

	l, err := link.AttachRawLink(link.RawLinkOptions{
		Target:  int(notCgroup.Fd()),
		Program: prog,
		Attach:  ebpf.AttachCGroupInet4Connect,
	})
	switch {
	case err == nil:
		l.Close()
		return nil
	case errors.Is(err, unix.EBADF):
		return nil
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		return ebpf.ErrNotSupported
	default:
		return err
	}
}
