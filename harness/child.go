package harness

import (
	"encoding/json"
	"fmt"
	"os"
)

// Child process roles: the svclab binary re-executes itself with one of
// these as its first argument to become a backend server or a load
// generator inside a pod's namespace and cgroup.
const (
	childServe  = "internal-serve"
	childClient = "internal-client"
)

// ChildMain runs the child role named by args[0], if it is one, and exits.
// Both the svclab command and test binaries call it first thing, so that
// tests start the same child processes a real run does.
func ChildMain(args []string) {
	if len(args) == 0 {
		return
	}
	var err error
	switch args[0] {
	case childServe:
		var spec ServerSpec
		if err = json.NewDecoder(os.Stdin).Decode(&spec); err == nil {
			err = Serve(spec, os.Stdout)
		}
	case childClient:
		var spec ClientSpec
		if err = json.NewDecoder(os.Stdin).Decode(&spec); err == nil {
			var w any
			if w, err = RunClient(spec); err == nil {
				err = json.NewEncoder(os.Stdout).Encode(w)
			}
		}
	default:
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "svclab %s: %v\n", args[0], err)
		os.Exit(1)
	}
	os.Exit(0)
}
