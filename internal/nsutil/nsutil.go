// Package nsutil creates, enters and removes named network namespaces without
// ever touching the caller's own namespace, and starts processes inside them.
//
// setns(2) changes the namespace of one OS thread, so every operation runs in
// a goroutine locked to its thread. If restoring the original namespace fails
// the thread is left locked, and the Go runtime discards it when the goroutine
// exits instead of reusing a thread that sits in the wrong namespace.
package nsutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/moby/sys/mountinfo"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where iproute2 (and vishvananda/netns) keep named namespaces.
const RunDir = "/var/run/netns"

// NS is a named network namespace.
type NS struct {
	Name string
	h    netns.NsHandle
}

// Path is the bind-mount that keeps the namespace alive.
func (n *NS) Path() string { return filepath.Join(RunDir, n.Name) }

// Handle returns the namespace's file descriptor handle.
func (n *NS) Handle() netns.NsHandle { return n.h }

// locked runs fn on a fresh OS thread and returns its error. The thread's
// network namespace and CPU affinity are restored afterwards (fn may change
// either: StartOn forks from a thread pinned to the child's CPUs); a thread
// that cannot be restored is left locked, so the runtime kills it.
func locked(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		var cpus unix.CPUSet
		if err := unix.SchedGetaffinity(0, &cpus); err != nil {
			errc <- fmt.Errorf("get thread affinity: %w", err)
			runtime.UnlockOSThread()
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime will kill it.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		if err := unix.SchedSetaffinity(0, &cpus); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore thread affinity: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Create makes a new named network namespace with loopback up.
func Create(name string) (*NS, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("netns name %q: must be non-empty and contain no '/'", name)
	}
	if err := runDirMount(); err != nil {
		return nil, err
	}
	var h netns.NsHandle
	err := locked(func() error {
		var err error
		h, err = netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("netns %s: find lo: %w", name, err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("netns %s: set lo up: %w", name, err)
		}
		return nil
	})
	if err != nil {
		if h.IsOpen() {
			h.Close()
		}
		_ = netns.DeleteNamed(name)
		return nil, err
	}
	return &NS{Name: name, h: h}, nil
}

// Open opens an existing named namespace.
func Open(name string) (*NS, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	return &NS{Name: name, h: h}, nil
}

// Close releases the handle and deletes the namespace's name. The namespace
// itself disappears once no process or socket holds it.
func (n *NS) Close() error {
	if n == nil {
		return nil
	}
	if n.h.IsOpen() {
		n.h.Close()
	}
	return Delete(n.Name)
}

// Delete removes a named namespace; a missing one is not an error. A name
// whose bind mount is already gone (a run killed between creating the file
// and mounting it, or between unmounting and removing it) is just a file:
// it is removed too.
func Delete(name string) error {
	p := filepath.Join(RunDir, name)
	err := unix.Unmount(p, unix.MNT_DETACH)
	switch {
	case err == nil, errors.Is(err, unix.EINVAL):
	case errors.Is(err, unix.ENOENT):
		return nil
	default:
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		if errors.Is(err, unix.EBUSY) {
			// Still a mount point, but not one umount could reach: the
			// namespace was mounted before something (`ip netns add`)
			// bind-mounted RunDir onto itself, which hides it.
			return fmt.Errorf("delete netns %s: %w (its mount is hidden under a later bind mount of %s, as `ip netns add` makes; `umount -l %s` while no svclab run is live, then `svclab cleanup`)", name, err, RunDir, RunDir)
		}
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// List returns the names of named namespaces that start with prefix.
func List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Do runs fn with the calling thread inside the namespace.
func (n *NS) Do(fn func() error) error {
	return locked(func() error {
		if err := netns.Set(n.h); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.Name, err)
		}
		return fn()
	})
}

// NetlinkHandle returns a netlink handle bound to the namespace; no setns is
// involved.
func (n *NS) NetlinkHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.Name, err)
	}
	return h, nil
}

// Sysctl writes a per-namespace sysctl such as "net/ipv4/ip_forward".
// /proc/sys/net resolves against the writing thread's namespace.
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		p := filepath.Join("/proc/sys", key)
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s=%s: %w", n.Name, key, value, err)
		}
		return nil
	})
}

// Start starts cmd inside the namespace: the child is forked from a thread
// that sits in the namespace and so inherits it. If cgroupFD is >= 0 the
// child is born inside that cgroup v2 directory (CLONE_INTO_CGROUP), so not
// one of its instructions runs outside it. The child is killed if the
// calling process dies.
func (n *NS) Start(cmd *exec.Cmd, cgroupFD int) error { return n.StartOn(cmd, cgroupFD, nil) }

// StartOn is Start with the child's CPU affinity set to cpus (nil: the
// caller's). The child is forked from a thread pinned to cpus, and a
// forked task inherits its parent thread's affinity, so, as with
// CLONE_INTO_CGROUP, not one of its instructions runs elsewhere, and every
// thread it makes inherits the set too (which sched_setaffinity on the
// child's pid after the start would not give: it pins one thread).
func (n *NS) StartOn(cmd *exec.Cmd, cgroupFD int, cpus *unix.CPUSet) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &unix.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = unix.SIGKILL
	if cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = cgroupFD
	}
	return n.Do(func() error {
		if cpus != nil {
			if err := unix.SchedSetaffinity(0, cpus); err != nil {
				return fmt.Errorf("start %s in netns %s: pin to CPUs: %w", cmd.Path, n.Name, err)
			}
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s in netns %s: %w", cmd.Path, n.Name, err)
		}
		return nil
	})
}

// Run runs a command to completion inside the namespace and returns its
// combined output; the error includes the output.
func (n *NS) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := n.Start(cmd, -1); err != nil {
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s in netns %s: %w: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// Sysctl is one setting under /proc/sys, by its path ("net/ipv4/tcp_tw_reuse").
// An Optional one is set where the kernel has it and left out where it
// does not.
type Sysctl struct {
	Key, Value string
	Optional   bool
}

// Available reports whether the running kernel has the setting.
func (s Sysctl) Available() bool {
	_, err := os.Stat(filepath.Join("/proc/sys", s.Key))
	return err == nil
}

// Applies reports whether the setting is to be set here: always, unless it
// is Optional and the kernel lacks it.
func (s Sysctl) Applies() bool { return !s.Optional || s.Available() }

// ClientSysctls are set in every namespace a short-connection client runs
// in (client pods, the generator's loopback namespace, the userspace
// proxy's node). Such clients close first, as netperf TCP_CRR does, and so
// keep TIME_WAIT; a wide port range and tw_reuse keep a trial from running
// out of ports to one ClusterIP.
//
// The port range alone is not enough: connect() takes even ports first,
// so one client pod has ~32k ports per destination address, and tw_reuse
// hands a TIME_WAIT port back only after tcp_tw_reuse_delay (1 s by
// default). At one ClusterIP that caps a client pod near 32k conn/s; past
// it, connect() searches the whole range and stalls (measured here: every
// per-packet datapath pinned at 30-33k conn/s with ~10 connections per
// trial taking 21.6 ms and a CPU idle, a narrower range lowering the cap in
// proportion, socket-LB and direct, which connect to 12 backend
// addresses, never). 100 ms lifts the cap to ~320k conn/s. Linux 6.13 has
// the setting; on older kernels the cap stays (see Env.Sysctls).
var ClientSysctls = []Sysctl{
	{Key: "net/ipv4/ip_local_port_range", Value: "1024 65535"},
	{Key: "net/ipv4/tcp_tw_reuse", Value: "1"},
	{Key: "net/ipv4/tcp_tw_reuse_delay", Value: "100", Optional: true},
}

// SetSysctls sets each of set in the namespace (an Optional one only where
// the kernel has it).
func (n *NS) SetSysctls(set []Sysctl) error {
	for _, s := range set {
		if !s.Applies() {
			continue
		}
		if err := n.Sysctl(s.Key, s.Value); err != nil {
			return err
		}
	}
	return nil
}

var (
	runDirOnce sync.Once
	runDirErr  error
)

// runDirMount makes RunDir a mount point of its own (bound onto itself,
// shared), once, as iproute2 does the first time `ip netns add` runs on a
// machine. Without it the first `ip netns add` after svclab made a
// namespace binds RunDir over itself and hides every name made before it:
// a live run can then neither open nor remove its namespaces by name, and
// they leak. Once RunDir is a mount point, `ip netns add` leaves it be.
// The bind stays, as iproute2's does: it is the standard layout of RunDir.
func runDirMount() error {
	runDirOnce.Do(func() {
		if err := os.MkdirAll(RunDir, 0o755); err != nil {
			runDirErr = fmt.Errorf("netns directory %s: %w", RunDir, err)
			return
		}
		dir, err := filepath.EvalSymlinks(RunDir)
		if err != nil {
			runDirErr = fmt.Errorf("netns directory %s: %w", RunDir, err)
			return
		}
		if mounted, err := mountinfo.Mounted(dir); err != nil || mounted {
			// Already a mount point (iproute2 or an earlier run made it),
			// or not knowable: leave it as it is.
			return
		}
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			runDirErr = fmt.Errorf("netns directory %s: bind onto itself: %w", dir, err)
			return
		}
		if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
			runDirErr = fmt.Errorf("netns directory %s: make shared: %w", dir, err)
		}
	})
	return runDirErr
}
