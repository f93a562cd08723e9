package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A killed run's directory (its lock dropped) and an old one without an
// owner file are removed; a live run's and a fresh unowned one are kept.
func TestCleanupStaleTempDirs(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)

	live, err := newTempDir()
	require.NoError(t, err)
	defer live.Remove()

	killed, err := newTempDir()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(killed.Path, "initrd.cpio.gz"), []byte("x"), 0o644))
	// Closing without removing is what the kernel does to a killed
	// process's lock.
	require.NoError(t, killed.lock.Close())

	oldUnowned := filepath.Join(tmp, tempPattern+"old")
	require.NoError(t, os.Mkdir(oldUnowned, 0o755))
	past := time.Now().Add(-2 * unownedAge)
	require.NoError(t, os.Chtimes(oldUnowned, past, past))
	freshUnowned := filepath.Join(tmp, tempPattern+"fresh")
	require.NoError(t, os.Mkdir(freshUnowned, 0o755))

	removed, err := CleanupStale()
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"vm temp dir " + killed.Path, "vm temp dir " + oldUnowned}, removed)
	assert.DirExists(t, live.Path)
	assert.DirExists(t, freshUnowned)
	assert.NoDirExists(t, killed.Path)

	require.NoError(t, live.Remove())
	assert.NoDirExists(t, live.Path)
}

// The lock is held by the process, not the file: another process sees a
// live owner as live.
func TestTempDirLockSeenByOtherProcess(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("flock(1) not installed")
	}
	t.Setenv("TMPDIR", t.TempDir())
	td, err := newTempDir()
	require.NoError(t, err)
	defer td.Remove()
	err = exec.Command("flock", "-n", filepath.Join(td.Path, ownerFile), "true").Run()
	assert.Error(t, err, "the owner's lock must be held against other processes")
}
