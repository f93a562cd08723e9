package runlock_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/harness/runlock"
	"svclab/harness/topology"
	"svclab/internal/child"
	"svclab/internal/nsutil"
)

// TestMain lets the test binary act as the backend server.
func TestMain(m *testing.M) {
	child.Main(os.Args[1:])
	os.Exit(m.Run())
}

func TestPrivilegedCleanupStaleRemovesDeadRuns(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	topo, err := topology.New(context.Background(), topology.Default(run.Prefix+"-dead", 2))
	require.NoError(t, err)
	srv, err := loadgen.StartServer(topo.Node, topo.ServerCgroup.Path, loadgen.BackendListeners(topo.Backends, 8080, false))
	require.NoError(t, err)
	defer srv.Stop()
	defer topo.Close()

	// While the run holds its lock its objects are left alone.
	_, err = runlock.CleanupStale()
	require.NoError(t, err)
	require.NotEmpty(t, harnesstest.Leftovers(t, run.Prefix))

	// Dropping the lock is what a killed run looks like.
	run.Release()
	removed, err := runlock.CleanupStale()
	require.NoError(t, err)
	assert.NotEmpty(t, removed)
	assert.Empty(t, harnesstest.Leftovers(t, run.Prefix))
}

// Another run's lock is seen as live, one's own and released ones are not.
func TestPrivilegedLiveRuns(t *testing.T) {
	harnesstest.RequireRoot(t)
	self := harnesstest.NewRun(t)
	other, err := runlock.New()
	require.NoError(t, err)
	assert.Contains(t, runlock.LiveRuns(self.ID), other.ID)
	assert.NotContains(t, runlock.LiveRuns(self.ID), self.ID)
	other.Release()
	assert.NotContains(t, runlock.LiveRuns(self.ID), other.ID)
}

// A failed run's empty directory goes; one with files, or a run that
// succeeded, keeps it.
func TestDropEmptyDir(t *testing.T) {
	tests := []struct {
		name     string
		file     bool
		err      error
		wantKept bool
	}{
		{"failed, empty", false, context.Canceled, false},
		{"failed, partial", true, context.Canceled, true},
		{"succeeded, empty", false, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "20260101-000000-0badf00d")
			require.NoError(t, os.Mkdir(dir, 0o755))
			if tt.file {
				require.NoError(t, os.WriteFile(filepath.Join(dir, "results.json"), nil, 0o644))
			}
			runlock.DropEmptyDir(dir, tt.err)
			if tt.wantKept {
				assert.DirExists(t, dir)
			} else {
				assert.NoDirExists(t, dir)
			}
		})
	}
}

// A killed datapath probe's namespace (named by its pid) goes with
// cleanup; a live process's stays.
func TestPrivilegedCleanupStaleRemovesDeadProbes(t *testing.T) {
	harnesstest.RequireRoot(t)
	// A pid that is gone: a child that has exited and been reaped.
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	dead := fmt.Sprintf("svclab-probe-%d-0badf00d", cmd.Process.Pid)
	live := fmt.Sprintf("svclab-probe-%d-0badf00d", os.Getpid())
	for _, n := range []string{dead, live} {
		ns, err := nsutil.Create(n)
		require.NoError(t, err)
		h := ns.Handle()
		h.Close()
	}
	t.Cleanup(func() { _ = nsutil.Delete(live); _ = nsutil.Delete(dead) })

	removed, err := runlock.CleanupStale()
	require.NoError(t, err)
	assert.Contains(t, removed, "netns "+dead)
	assert.NotContains(t, removed, "netns "+live)
	left, err := nsutil.List("svclab-probe-")
	require.NoError(t, err)
	assert.Contains(t, left, live)
	assert.NotContains(t, left, dead)
}
