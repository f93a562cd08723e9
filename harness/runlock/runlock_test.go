package runlock_test

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/harness/runlock"
	"svclab/harness/topology"
	"svclab/internal/child"
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
