package main

import (
	"fmt"
	"io"
	"os"

	"svclab/vm"
)

// exitFunc ends the process with the guest command's status (run() maps
// errors to exitCode's statuses); a variable so a test can intercept it.
var exitFunc = os.Exit

// cmdVM runs a svclab command (or compiled tests) under another kernel in
// QEMU; see vm.Usage. The process exits with the guest command's status.
func cmdVM(args []string, stdout, stderr io.Writer) error {
	cfg, err := vm.ParseArgs(args, stderr)
	if err != nil {
		return badInput(err)
	}
	cfg.Stdout, cfg.Stderr = stdout, stderr
	// Any of interruptSignals stops QEMU; Run removes its temporary files.
	ctx, stop := signalContext()
	defer stop()
	res, err := vm.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		fmt.Fprintf(stderr, "svclab vm: the guest command exited with status %d\n", res.ExitCode)
		exitFunc(res.ExitCode)
	}
	return nil
}
