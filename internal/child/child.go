// Package child lets packages register child-process roles: svclab
// re-executes its own binary with a role name as the first argument to run a
// backend server, a load generator, a probe or a datapath's helper process
// (e.g. the userspace proxy) inside a pod's namespace and cgroup. Roles
// register in init(), so the harness needs no knowledge of any datapath's
// processes. Command, Start, StartRole and Run start a role forked in a
// network namespace and born in a cgroup: the one way svclab starts a child.
package child

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// Func runs a role with the child's stdin and stdout.
type Func func(stdin io.Reader, stdout io.Writer) error

var (
	mu    sync.Mutex
	roles = map[string]Func{}
)

// Register adds a role; role names start with "internal-".
func Register(role string, fn Func) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := roles[role]; dup {
		panic("child: duplicate role " + role)
	}
	roles[role] = fn
}

// Main runs the role named by args[0] and exits, if args[0] is a registered
// role; otherwise it returns. The svclab command and every test binary that
// starts child processes call it first thing.
func Main(args []string) {
	if len(args) == 0 {
		return
	}
	mu.Lock()
	fn, ok := roles[args[0]]
	mu.Unlock()
	if !ok {
		return
	}
	if err := fn(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "svclab %s: %v\n", args[0], err)
		os.Exit(1)
	}
	os.Exit(0)
}
