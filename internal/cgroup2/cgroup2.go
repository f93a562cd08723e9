// Package cgroup2 finds (or mounts) the cgroup v2 hierarchy and manages the
// cgroup directories svclab creates in it. It is the one place that knows
// where cgroup2 lives: hosts differ (unified at /sys/fs/cgroup, hybrid at
// /sys/fs/cgroup/unified, none at all on a pure v1 host), so the mount is
// read from mountinfo, never assumed.
package cgroup2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// ErrNotMounted is returned by Find when no cgroup v2 hierarchy is mounted.
var ErrNotMounted = errors.New("no cgroup2 mount in /proc/self/mountinfo")

// privateMount is where Mount mounts a cgroup2 hierarchy of svclab's own
// when the machine has none mounted (a pure cgroup v1 host).
const privateMount = "/run/svclab/cgroup2"

// Find returns the mount point of the cgroup v2 hierarchy, or ErrNotMounted.
func Find() (string, error) {
	ms, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup2"))
	if err != nil {
		return "", fmt.Errorf("cgroup2: %w", err)
	}
	if len(ms) == 0 {
		return "", ErrNotMounted
	}
	return ms[0].Mountpoint, nil
}

// Mount returns the mount point of the cgroup v2 hierarchy, mounting one at
// /run/svclab/cgroup2 if none is mounted.
func Mount() (string, error) {
	p, err := Find()
	if !errors.Is(err, ErrNotMounted) {
		return p, err
	}
	if err := os.MkdirAll(privateMount, 0o755); err != nil {
		return "", fmt.Errorf("cgroup2: create mount point: %w", err)
	}
	if err := unix.Mount("cgroup2", privateMount, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("cgroup2: no cgroup2 mounted and mounting one at %s failed: %w", privateMount, err)
	}
	return privateMount, nil
}

// Cgroup is a cgroup v2 directory that svclab created.
type Cgroup struct {
	// Path is the directory's absolute path under the mount.
	Path string
}

// New creates group (a path such as "/svclab-1a2b/clients") under the
// cgroup2 mount, mounting one first if there is none.
func New(group string) (*Cgroup, error) {
	mnt, err := Mount()
	if err != nil {
		return nil, err
	}
	if _, err := cgroup2.NewManager(mnt, group, &cgroup2.Resources{}); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", group, err)
	}
	return &Cgroup{Path: filepath.Join(mnt, group)}, nil
}

// OpenFD opens the cgroup directory for CLONE_INTO_CGROUP or BPF attach.
func (c *Cgroup) OpenFD() (*os.File, error) { return OpenDir(c.Path) }

// OpenDir opens a cgroup directory for CLONE_INTO_CGROUP or BPF attach.
func OpenDir(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", path, err)
	}
	return f, nil
}

// Remove kills every process left in the cgroup, waits for them to go and
// removes the directory.
func (c *Cgroup) Remove() error {
	if c == nil {
		return nil
	}
	return RemoveDir(c.Path)
}

// RemoveDir removes a cgroup directory and its children, killing any
// process in them first (cgroup.kill, Linux 5.14+; else SIGKILL each pid).
// A directory that does not exist is not an error.
func RemoveDir(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() {
			errs = append(errs, RemoveDir(filepath.Join(path, e.Name())))
		}
	}
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
		for _, pid := range pids(path) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(path)
		if err == nil || errors.Is(err, unix.ENOENT) {
			break
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", path, err))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// pids lists the processes directly in a cgroup directory.
func pids(path string) []int {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// CPUUsage is the CPU time charged to the cgroup directory dir and its
// descendants since they were created (cpu.stat usage_usec, which cgroup v2
// keeps for every cgroup, controller enabled or not). It reads that one
// file, not the manager's Stat (every controller's files, and mountinfo to
// find the mount): the load generator reads five cgroups at each edge of
// its measured window while its loops run.
func CPUUsage(dir string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			usec, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("cgroup %s: cpu.stat: %w", dir, err)
			}
			return time.Duration(usec) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("cgroup %s: cpu.stat has no usage_usec", dir)
}
