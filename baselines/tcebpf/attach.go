package tcebpf

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/internal/nsutil"
)

// How the programs are attached to an interface.
const (
	// attachTCX uses tcx bpf_links (Linux 6.6): closing the link detaches,
	// and a crashed harness leaves nothing attached.
	attachTCX = "tcx"
	// attachClsact uses a clsact qdisc with direct-action cls_bpf filters
	// (Linux 4.5), the pre-6.6 way; they live until deleted or until the
	// node namespace goes away.
	attachClsact = "clsact"
)

// clsactFilter is the handle and priority of our cls_bpf filters: one
// filter per direction, so these identify it for deletion.
const (
	clsactFilterHandle   = 1
	clsactFilterPriority = 1
)

// hookSpec is one program for one direction of an interface.
type hookSpec struct {
	prog    *ebpf.Program
	name    string // program name, for filter names and errors
	tcx     ebpf.AttachType
	clsact  uint32 // netlink.HANDLE_MIN_INGRESS or HANDLE_MIN_EGRESS
	dirName string
}

// clsactIface is an interface where our filters sit in a clsact qdisc.
type clsactIface struct {
	name    string
	ifindex int
	// ownQdisc says whether Setup created the qdisc (and Close deletes
	// it, with every filter in it) or found it there (Close deletes only
	// our filters).
	ownQdisc bool
	filters  []*netlink.BpfFilter
}

// attachment is everything Setup attached, in the node namespace.
type attachment struct {
	mode   string
	node   *nsutil.NS
	links  []link.Link
	clsact []clsactIface
}

// attachTCXAll attaches every hook to ifindex with tcx. The kernel resolves
// the ifindex in the calling thread's namespace, so this runs inside the
// node namespace.
func (a *attachment) attachTCXAll(iface string, ifindex int, hooks []hookSpec) error {
	return a.node.Do(func() error {
		for _, h := range hooks {
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog, Attach: h.tcx})
			if err != nil {
				return fmt.Errorf("attach %s to tcx %s of %s: %w", h.name, h.dirName, iface, err)
			}
			a.links = append(a.links, l)
		}
		return nil
	})
}

// attachClsactAll adds a clsact qdisc (unless there is one) and one
// direct-action filter per hook.
func (a *attachment) attachClsactAll(nh *netlink.Handle, iface string, ifindex int, hooks []hookSpec) error {
	ci := clsactIface{name: iface, ifindex: ifindex}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	switch err := nh.QdiscAdd(qdisc); {
	case err == nil:
		ci.ownQdisc = true
	case errors.Is(err, unix.EEXIST):
	default:
		return fmt.Errorf("add clsact qdisc to %s: %w", iface, err)
	}
	// Recorded before the filters, so Close removes a qdisc we created
	// even when a filter fails.
	a.clsact = append(a.clsact, ci)
	last := &a.clsact[len(a.clsact)-1]
	for _, h := range hooks {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex,
				Parent:    h.clsact,
				Handle:    clsactFilterHandle,
				Priority:  clsactFilterPriority,
				Protocol:  unix.ETH_P_ALL,
			},
			Fd:           h.prog.FD(),
			Name:         h.name,
			DirectAction: true,
		}
		if err := nh.FilterAdd(f); err != nil {
			return fmt.Errorf("add %s filter %s to %s: %w", h.dirName, h.name, iface, err)
		}
		last.filters = append(last.filters, f)
	}
	return nil
}

// close detaches everything. Interfaces that are already gone (the
// topology was torn down first) count as detached.
func (a *attachment) close() error {
	var errs []error
	for _, l := range a.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close tcx link: %w", err))
		}
	}
	a.links = nil
	if len(a.clsact) > 0 {
		nh, err := a.node.NetlinkHandle()
		if err != nil {
			errs = append(errs, fmt.Errorf("detach clsact filters: %w", err))
		} else {
			for _, ci := range a.clsact {
				errs = append(errs, ci.remove(nh))
			}
			nh.Close()
		}
	}
	a.clsact = nil
	return errors.Join(errs...)
}

func (ci clsactIface) remove(nh *netlink.Handle) error {
	gone := func(err error) bool { return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) }
	if ci.ownQdisc {
		err := nh.QdiscDel(&netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ci.ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
			QdiscType:  "clsact",
		})
		if err != nil && !gone(err) {
			return fmt.Errorf("delete clsact qdisc of %s: %w", ci.name, err)
		}
		return nil
	}
	var errs []error
	for _, f := range ci.filters {
		if err := nh.FilterDel(f); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete filter %s of %s: %w", f.Name, ci.name, err))
		}
	}
	return errors.Join(errs...)
}

// haveTCX reports whether the kernel has tcx links. It asks for a link on
// an interface index that cannot exist: a kernel with tcx resolves the
// index and answers ENODEV, an older one rejects the attach type. Nothing
// is attached anywhere.
func haveTCX() error {
	prog, err := newProbeProgram()
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	switch {
	case err == nil:
		l.Close()
		return nil
	case errors.Is(err, unix.ENODEV):
		return nil
	default:
		return err
	}
}

// haveClsact reports whether the kernel is new enough for clsact qdiscs
// (4.5). Adding one would need an interface to add it to, and Probe must
// not change any namespace, so this checks the version only; Setup names
// the qdisc or filter if the kernel refuses it anyway.
func haveClsact() error {
	v, err := features.LinuxVersionCode()
	if err != nil {
		return err
	}
	if v < 4<<16|5<<8 {
		return fmt.Errorf("kernel %d.%d is older than 4.5", v>>16, v>>8&0xff)
	}
	return nil
}

func newProbeProgram() (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "svclab_probe",
		Type:    ebpf.SchedCLS,
		License: "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load probe program: %w", err)
	}
	return prog, nil
}
