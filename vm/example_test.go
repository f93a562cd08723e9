package vm_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"svclab/vm"
)

// A Go caller fills the Config it means and leaves the rest to the
// defaults; this is how the bench's VM phase runs a scenario under another
// kernel and has the guest write its results into the shared run directory.
func ExampleRun() {
	runDir := "/srv/results/run-1"
	res, err := vm.Run(context.Background(), &vm.Config{
		Kernel: "debian-6.12",
		Shares: []string{runDir},
		Args:   []string{"bench", "--scenario", filepath.Join(runDir, "scenario.json"), "--output", filepath.Join(runDir, "vm-debian-6.12")},
		Stdout: io.Discard,
		Stderr: os.Stderr,
	})
	if err != nil {
		fmt.Println("the guest reported no status:", err)
		return
	}
	fmt.Println("the guest bench exited with status", res.ExitCode)
}
