package bench

import (
	"os"
	"testing"

	_ "svclab/datapath/all" // every datapath, as the svclab binary has them
	"svclab/internal/child"
)

// TestMain lets the test binary act as the child processes a run starts
// (backend server, load generator, probe, datapath helpers), as the svclab
// binary does.
func TestMain(m *testing.M) {
	child.Main(os.Args[1:])
	os.Exit(m.Run())
}
