package harness

import (
	"os"
	"testing"
)

// TestMain lets the test binary act as the backend server and load
// generator child processes, as the svclab binary does.
func TestMain(m *testing.M) {
	ChildMain(os.Args[1:])
	os.Exit(m.Run())
}
