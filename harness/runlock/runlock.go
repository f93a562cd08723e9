// Package runlock marks an svclab run as alive and removes what dead runs
// left. Every kernel object a run creates is named svclab-<run id>-…; a run
// holds an flock on /run/svclab/runs/<id>.lock for as long as it lives, and
// the kernel drops the lock however the process dies, so a later run can
// tell a dead run's objects from a live one's.
package runlock

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"svclab/internal/cgroup2"

	"golang.org/x/sys/unix"

	"svclab/internal/nsutil"
)

// lockDir holds one lock file per live run. A run holds an flock on its file
// for as long as it lives; the kernel drops the lock when the process dies,
// however it dies, so a later run can tell a dead run's objects from a live
// one's.
const lockDir = "/run/svclab/runs"

// objectName matches the names svclab gives kernel objects:
// "svclab-<8 hex run id>" optionally followed by "-<more>".
var objectName = regexp.MustCompile(`^svclab-([0-9a-f]{8})(?:-.*)?$`)

// IsRunObject reports whether name is the name of an object of an svclab
// run (live or dead).
func IsRunObject(name string) bool { return objectName.MatchString(name) }

// probeName matches the throw-away namespaces of datapath probes
// (svclab-probe-<pid>-<random>), which run before any run lock exists:
// their owner is the process with that pid.
var probeName = regexp.MustCompile(`^svclab-probe-([0-9]+)-[0-9a-f]+$`)

// deadProbe reports whether name is a probe namespace whose process is
// gone. A reused pid keeps a dead probe's namespace a while longer, never
// the other way round.
func deadProbe(name string) bool {
	m := probeName.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid <= 0 {
		return false
	}
	return errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

// Lock marks a run as alive.
type Lock struct {
	ID     string
	Prefix string
	f      *os.File
}

// New allocates a run id and takes its lock.
func New() (*Lock, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b[:])
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(lockDir, id+".lock"), os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("run lock: %w", err)
	}
	// A concurrent CleanupStale may have taken the file for a dead run's in
	// the instant before our flock and removed it: then our lock guards
	// nothing, so check the path still names our file.
	if fi, err := os.Stat(f.Name()); err != nil || !sameFile(f, fi) {
		f.Close()
		return New()
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return &Lock{ID: id, Prefix: "svclab-" + id, f: f}, nil
}

func sameFile(f *os.File, fi os.FileInfo) bool {
	own, err := f.Stat()
	return err == nil && os.SameFile(own, fi)
}

// Release drops the lock and removes its file.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = os.Remove(l.f.Name())
	_ = l.f.Close()
	l.f = nil
}

// Alive reports whether the run with this id still holds its lock.
func Alive(id string) bool {
	f, err := os.OpenFile(filepath.Join(lockDir, id+".lock"), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	// We got the lock: its owner is gone. Leave the file for removal below.
	return false
}

// CleanupStale removes every network namespace, cgroup and lock file left by
// svclab runs (and datapath probes) that are no longer alive (killed with SIGKILL, crashed, power
// loss). Processes inside those cgroups are killed first. It returns what it
// removed. Objects of live runs are left alone, so two runs can coexist.
func CleanupStale() ([]string, error) {
	var removed []string
	var errs []error
	dead := map[string]bool{}
	isDead := func(name string) bool {
		m := objectName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		d, ok := dead[m[1]]
		if !ok {
			d = !Alive(m[1])
			dead[m[1]] = d
		}
		return d
	}
	// Cgroups first: killing their processes releases the namespaces.
	if mnt, err := cgroup2.Find(); err == nil {
		ents, _ := os.ReadDir(mnt)
		for _, e := range ents {
			if e.IsDir() && isDead(e.Name()) {
				p := filepath.Join(mnt, e.Name())
				if err := cgroup2.RemoveDir(p); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, "cgroup "+p)
				}
			}
		}
	}
	names, err := nsutil.List("svclab-")
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range names {
		if isDead(n) || deadProbe(n) {
			if err := nsutil.Delete(n); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, "netns "+n)
			}
		}
	}
	ents, _ := os.ReadDir(lockDir)
	for _, e := range ents {
		id := strings.TrimSuffix(e.Name(), ".lock")
		if id != e.Name() && !Alive(id) {
			_ = os.Remove(filepath.Join(lockDir, e.Name()))
		}
	}
	return removed, errors.Join(errs...)
}

// Begin is how every run starts: it removes what killed runs left (saying
// so on log) and takes a new run's lock. The caller releases it last.
func Begin(log io.Writer) (*Lock, error) {
	if removed, err := CleanupStale(); err != nil {
		return nil, fmt.Errorf("clean up after earlier runs: %w", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(log, "removed %d objects left by killed svclab runs\n", len(removed))
	}
	return New()
}

// RunID is the id of a run that started at started: sortable by time, and
// unique by the lock's id.
func (l *Lock) RunID(started time.Time) string {
	return started.UTC().Format("20060102-150405") + "-" + l.ID
}

// DropEmptyDir removes a run's output directory when the run failed or was
// interrupted before writing anything into it, so that no empty
// <output>/<run-id>/ is left beside a message saying everything was
// removed. A directory with files in it is kept (os.Remove refuses it): a
// partial run is worth a look.
func DropEmptyDir(dir string, err error) {
	if err != nil && dir != "" {
		_ = os.Remove(dir)
	}
}

// LiveRuns returns the ids of the live runs other than except's, sorted: a
// cheap scan of the lock files (one open and a non-blocking flock each) that
// a run makes before each trial to warn that another run shares the machine.
func LiveRuns(except string) []string {
	ents, _ := os.ReadDir(lockDir)
	var ids []string
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".lock")
		if ok && id != except && Alive(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}
