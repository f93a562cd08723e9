// Package socketlb is svclab's reference Service datapath: a socket-level
// load balancer that translates a ClusterIP to a backend once, in the
// cgroup/connect4 hook, instead of NATing every packet.
//
// The BPF side lives in bpf/socketlb.c. This package loads it, attaches it to
// the client cgroup with a bpf_link (so a crashed harness leaves nothing
// attached) and keeps its two maps equal to the desired datapath.State.
package socketlb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"svclab/datapath"
)

// Name is the datapath's registry name.
const Name = "socketlb"

func init() {
	datapath.Register(datapath.Factory{
		Name:        Name,
		Description: "eBPF socket-level LB: ClusterIP translated once at connect() (cgroup/connect4), no per-packet NAT",
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

// SocketLB is the socket-LB datapath. The zero value is not usable; call New.
type SocketLB struct {
	mu sync.Mutex

	objs   *socketlbObjects
	link   link.Link
	cgroup string
	// attach says how connect4 ended up attached: "bpf_link", or
	// "prog_attach" when link.AttachCgroup had to fall back.
	attach string
	// setRetval records whether rejected connects carry a specific errno
	// (bpf_set_retval) or the kernel's default EPERM.
	setRetval bool

	// installed mirrors the kernel maps entry for entry. Apply diffs the
	// desired state against it, so a resync costs one syscall per changed
	// entry, and it is updated after every successful map write so that it
	// stays exact even when an Apply fails half way.
	installed tables
}

// New returns an unconfigured socket-LB datapath.
func New() *SocketLB { return &SocketLB{} }

var _ datapath.Datapath = (*SocketLB)(nil)

// Setup loads the BPF objects and attaches connect4 to env.ClientCgroup.
func (s *SocketLB) Setup(ctx context.Context, env *datapath.Env) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.objs != nil {
		return ErrAlreadySetUp
	}
	if env == nil || env.ClientCgroup == "" {
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

	spec, err := loadSocketlb()
	if err != nil {
		return err
	}
	setRetval := features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) == nil
	if setRetval {
		v, ok := spec.Variables[socketlbVarSvclabHaveSetRetval]
		if !ok {
			return fmt.Errorf("socketlb object lacks variable %s", socketlbVarSvclabHaveSetRetval)
		}
		if err := v.Set(uint8(1)); err != nil {
			return fmt.Errorf("set %s: %w", socketlbVarSvclabHaveSetRetval, err)
		}
	}

	objs := new(socketlbObjects)
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		return fmt.Errorf("load socketlb objects: %w", err)
	}
	closeOnError := func(c io.Closer) {
		if err != nil {
			_ = c.Close()
		}
	}
	defer closeOnError(objs)

	l, err := link.AttachCgroup(link.CgroupOptions{
		Path:    env.ClientCgroup,
		Attach:  ebpf.AttachCGroupInet4Connect,
		Program: objs.SvclabSock4Connect,
	})
	if err != nil {
		return fmt.Errorf("attach connect4 to %s: %w", env.ClientCgroup, err)
	}
	defer closeOnError(l)

	attach := "bpf_link"
	// Only a real bpf_link has link info; the PROG_ATTACH emulation does not.
	if _, ierr := l.Info(); ierr != nil {
		attach = "prog_attach"
	}

	s.objs, s.link, s.cgroup, s.attach, s.setRetval = objs, l, env.ClientCgroup, attach, setRetval
	s.installed = newTables()
	return nil
}

// Apply makes the maps hold exactly st. Backend slots are written before the
// service entry that points at them and removed only after it stopped
// pointing at them, so a connect() racing with Apply sees either the old or
// the new backend set of a service, never a slot that does not exist (bar a
// lookup already past the service entry when its last slots are deleted).
func (s *SocketLB) Apply(ctx context.Context, st datapath.State) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.objs == nil {
		return ErrNotSetUp
	}
	return syncMaps(ctx, &s.installed, st, s.objs.SvclabServices, s.objs.SvclabBackends)
}

// Targets returns the ClusterIP and port: the client connects to the VIP and
// the connect4 hook picks the backend.
func (s *SocketLB) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info describes the hooks and how they are attached.
func (s *SocketLB) Info() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()

	info := map[string]string{
		"hooks":     "connect4",
		"protocols": "TCP",
	}
	if s.objs == nil {
		return info
	}
	info["attach"] = s.attach
	info["cgroup"] = s.cgroup
	// What connect() to a service without ready endpoints fails with.
	info["no_endpoints_errno"] = "EPERM"
	if s.setRetval {
		info["no_endpoints_errno"] = "ECONNREFUSED"
	}
	return info
}

// Close detaches connect4 and releases the maps and program. Nothing is
// pinned, so nothing of the datapath outlives it. It is safe to call more
// than once and after a failed Setup.
func (s *SocketLB) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()

	var errs []error
	if s.link != nil {
		if err := s.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach connect4 from %s: %w", s.cgroup, err))
		}
		s.link = nil
	}
	if s.objs != nil {
		if err := s.objs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close socketlb objects: %w", err))
		}
		s.objs = nil
	}
	s.installed = tables{}
	s.attach, s.cgroup, s.setRetval = "", "", false
	return errors.Join(errs...)
}

// Probe reports whether this kernel can run the datapath. It needs the
// privileges Setup needs (CAP_BPF and CAP_NET_ADMIN, or root).
func Probe() error {
	checks := []struct {
		what string
		fn   func() error
	}{
		{"BPF program type cgroup/sock_addr with attach type connect4 (Linux 4.17)", func() error {
			return features.HaveProgramType(ebpf.CGroupSockAddr)
		}},
		{"BPF hash maps", func() error { return features.HaveMapType(ebpf.Hash) }},
		{"helper bpf_map_lookup_elem in cgroup/sock_addr programs", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnMapLookupElem)
		}},
		{"helper bpf_get_prandom_u32 in cgroup/sock_addr programs", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetPrandomU32)
		}},
		{"bpf_link attachment of cgroup programs (Linux 5.7)", haveCgroupLink},
		{"a cgroup v2 mount", func() error {
			_, err := cgroup2Mount()
			return err
		}},
	}
	for _, c := range checks {
		if err := c.fn(); err != nil {
			return datapath.Unsupportedf("socketlb needs %s: %v", c.what, err)
		}
	}
	return nil
}

// haveCgroupLink reports whether connect4 programs can be attached with
// BPF_LINK_CREATE. The features package has no such probe, and attaching to
// a real cgroup would be a side effect, so it aims the link at a file that
// is not a cgroup: a kernel with cgroup bpf_links gets that far and answers
// EBADF, an older one rejects the command itself.
func haveCgroupLink() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "svclab_probe",
		Type:       ebpf.CGroupSockAddr,
		AttachType: ebpf.AttachCGroupInet4Connect,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
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
