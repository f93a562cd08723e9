package harness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	"golang.org/x/sys/unix"
)

// privateCgroup2 is where svclab mounts a cgroup2 hierarchy of its own when
// the machine has none mounted (a pure cgroup v1 host).
const privateCgroup2 = "/run/svclab/cgroup2"

// Cgroup2Mount returns the mount point of the cgroup v2 hierarchy, mounting
// one at /run/svclab/cgroup2 if none is mounted. Hosts differ (unified at
// /sys/fs/cgroup, hybrid at /sys/fs/cgroup/unified, none at all), so it is
// read from mountinfo rather than assumed.
func Cgroup2Mount() (string, error) {
	if p, err := findCgroup2(); err != nil || p != "" {
		return p, err
	}
	if err := os.MkdirAll(privateCgroup2, 0o755); err != nil {
		return "", fmt.Errorf("cgroup2: create mount point: %w", err)
	}
	if err := unix.Mount("cgroup2", privateCgroup2, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("cgroup2: no cgroup2 mounted and mounting one at %s failed: %w", privateCgroup2, err)
	}
	return privateCgroup2, nil
}

func findCgroup2() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("cgroup2: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: ID parent maj:min root mountpoint opts ... - fstype source superopts
		line := s.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		post := strings.Fields(line[sep+3:])
		pre := strings.Fields(line[:sep])
		if len(post) > 0 && post[0] == "cgroup2" && len(pre) >= 5 {
			return pre[4], nil
		}
	}
	return "", s.Err()
}

// Cgroup is a cgroup v2 directory that svclab created.
type Cgroup struct {
	m    *cgroup2.Manager
	Path string
}

// NewCgroup creates group (a path such as "/svclab-1a2b/client") under the
// cgroup2 mount.
func NewCgroup(group string) (*Cgroup, error) {
	mnt, err := Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	m, err := cgroup2.NewManager(mnt, group, &cgroup2.Resources{})
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", group, err)
	}
	return &Cgroup{m: m, Path: filepath.Join(mnt, group)}, nil
}

// OpenFD opens the cgroup directory for CLONE_INTO_CGROUP or BPF attach.
func (c *Cgroup) OpenFD() (*os.File, error) {
	f, err := os.Open(c.Path)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", c.Path, err)
	}
	return f, nil
}

// Remove kills every process left in the cgroup, waits for them to go and
// removes the directory.
func (c *Cgroup) Remove() error {
	if c == nil {
		return nil
	}
	return removeCgroupDir(c.Path)
}

// removeCgroupDir removes a cgroup directory and its children, killing any
// process in them first (cgroup.kill, Linux 5.14+; else SIGKILL each pid).
func removeCgroupDir(path string) error {
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
			errs = append(errs, removeCgroupDir(filepath.Join(path, e.Name())))
		}
	}
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
		for _, pid := range cgroupPids(path) {
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

func cgroupPids(path string) []int {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
