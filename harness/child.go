package harness

import (
	"encoding/json"
	"io"

	"svclab/internal/child"
)

// Child process roles of the harness: the svclab binary re-executes itself
// with one of these as its first argument to become a backend server, a load
// generator or a probe inside a pod's namespace and cgroup.
const (
	childServe  = "internal-serve"
	childClient = "internal-client"
)

func init() {
	child.Register(childServe, func(in io.Reader, out io.Writer) error {
		var spec ServerSpec
		if err := json.NewDecoder(in).Decode(&spec); err != nil {
			return err
		}
		return Serve(spec, out)
	})
	child.Register(childClient, func(in io.Reader, out io.Writer) error {
		var spec ClientSpec
		if err := json.NewDecoder(in).Decode(&spec); err != nil {
			return err
		}
		w, err := RunClient(spec)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(w)
	})
	child.Register(childProbe, probeMain)
}

// ChildMain runs the child role named by args[0], if it is one, and exits.
// Both the svclab command and test binaries call it first thing, so that
// tests start the same child processes a real run does. Datapaths register
// their own roles (internal/child) in init.
func ChildMain(args []string) { child.Main(args) }
