package loadgen

import (
	"encoding/json"
	"io"

	"svclab/internal/child"
)

// Child process roles of the load generator: the svclab binary re-executes
// itself with one of these as its first argument to become the backend
// server or the load generator inside a pod's namespace and cgroup.
const (
	RoleServe  = "internal-serve"
	RoleClient = "internal-client"
)

func init() {
	child.Register(RoleServe, func(in io.Reader, out io.Writer) error {
		var spec ServerSpec
		if err := json.NewDecoder(in).Decode(&spec); err != nil {
			return err
		}
		return Serve(spec, out)
	})
	child.Register(RoleClient, func(in io.Reader, out io.Writer) error {
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
}
