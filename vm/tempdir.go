package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// A run's temporary directory (the initramfs, the svclab binary or test
// binaries: tens of MB) is os.TempDir()/svclab-vm-*. Its owner holds an
// flock on ownerFile inside for as long as it lives; the kernel drops the
// lock however the process dies, so CleanupStale can tell a killed run's
// directory from a live one's, as runlock does for kernel objects.
const (
	tempPattern = "svclab-vm-"
	ownerFile   = ".owner.lock"
	// unownedAge is how old a directory without an owner file (made by an
	// svclab from before owner files, or killed between creating it and
	// locking) must be before CleanupStale takes it for dead.
	unownedAge = 24 * time.Hour
)

// tempDir is a run's temporary directory and the lock that marks it owned.
type tempDir struct {
	Path string
	lock *os.File
}

// newTempDir creates a temporary directory and takes its owner lock.
func newTempDir() (_ *tempDir, err error) {
	dir, err := os.MkdirTemp("", tempPattern)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	f, err := os.OpenFile(filepath.Join(dir, ownerFile), os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vm temp dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("vm temp dir: %w", err)
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return &tempDir{Path: dir, lock: f}, nil
}

// Remove removes the directory, then drops the lock.
func (t *tempDir) Remove() error {
	err := os.RemoveAll(t.Path)
	return errors.Join(err, t.lock.Close())
}

// CleanupStale removes the temporary directories of svclab vm runs that
// are no longer alive (killed with SIGKILL, crashed) and returns them.
// Directories of live runs are left alone.
func CleanupStale() ([]string, error) {
	return cleanupStaleIn(os.TempDir())
}

func cleanupStaleIn(tmp string) ([]string, error) {
	dirs, err := filepath.Glob(filepath.Join(tmp, tempPattern+"*"))
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, d := range dirs {
		if !staleTempDir(d) {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "vm temp dir "+d)
	}
	return removed, errors.Join(errs...)
}

// staleTempDir reports whether d's owner is gone: its lock can be taken,
// or it has no owner file and is older than unownedAge.
func staleTempDir(d string) bool {
	fi, err := os.Lstat(d)
	if err != nil || !fi.IsDir() {
		return false
	}
	f, err := os.OpenFile(filepath.Join(d, ownerFile), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return time.Since(fi.ModTime()) > unownedAge
	}
	if err != nil {
		return false
	}
	// Closing drops the lock taken here (the file goes with the directory).
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
}
