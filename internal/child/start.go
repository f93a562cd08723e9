package child

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"svclab/internal/cgroup2"
	"svclab/internal/nsutil"
)

// Option changes how a child is started.
type Option func(*exec.Cmd)

// NoAsyncPreempt turns off the Go runtime's asynchronous preemption in the
// child: event loops that block only in epoll_wait never need preempting,
// and its signals would only interrupt their system calls.
func NoAsyncPreempt(cmd *exec.Cmd) { cmd.Env = append(cmd.Env, "GODEBUG=asyncpreemptoff=1") }

// Command returns the command that re-executes this binary as role, with
// input, if not nil, JSON-encoded on its standard input. It is not started:
// set its streams, then Start it where it belongs.
func Command(ctx context.Context, role string, input any, opts ...Option) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("%s: find own executable: %w", role, err)
	}
	cmd := exec.CommandContext(ctx, self, role)
	cmd.Env = os.Environ()
	if input != nil {
		in, err := json.Marshal(input)
		if err != nil {
			return nil, fmt.Errorf("%s: encode input: %w", role, err)
		}
		cmd.Stdin = bytes.NewReader(in)
	}
	for _, o := range opts {
		o(cmd)
	}
	return cmd, nil
}

// Start starts cmd forked in ns and, when cgroupDir is not empty, born in
// that cgroup v2 directory (CLONE_INTO_CGROUP: not one instruction of the
// child runs outside it, which matters where a socket-level datapath is
// attached). The child is killed if svclab dies.
//
// A child born in a cgroup that Pin pinned runs on that cgroup's CPUs.
func Start(cmd *exec.Cmd, ns *nsutil.NS, cgroupDir string) error {
	if cgroupDir == "" {
		return ns.Start(cmd, -1)
	}
	f, err := cgroup2.OpenDir(cgroupDir)
	if err != nil {
		return err
	}
	defer f.Close()
	var cpus *unix.CPUSet
	if set, ok := PinnedCPUs(cgroupDir); ok {
		cpus = &set
	}
	return ns.StartOn(cmd, int(f.Fd()), cpus)
}

// Pins are the CPU sets of cgroups, as cgroup v2's cpuset.cpus would give
// them: kept here because the cpuset controller is often not in the v2
// hierarchy (a hybrid host binds it to v1), and svclab must not rebind or
// enable controllers outside its own subtree. Every child of a role is
// started by Start, so the cgroup a child is born in names its CPUs.
var (
	pinMu sync.Mutex
	pins  = map[string]unix.CPUSet{}
)

// Pin makes every child that Start starts in cgroupDir (exactly that
// directory) run on cpus, until unpin is called.
func Pin(cgroupDir string, cpus unix.CPUSet) (unpin func()) {
	dir := filepath.Clean(cgroupDir)
	pinMu.Lock()
	defer pinMu.Unlock()
	pins[dir] = cpus
	return func() {
		pinMu.Lock()
		defer pinMu.Unlock()
		delete(pins, dir)
	}
}

// PinnedCPUs returns the CPUs Pin gave cgroupDir, if any.
func PinnedCPUs(cgroupDir string) (unix.CPUSet, bool) {
	pinMu.Lock()
	defer pinMu.Unlock()
	set, ok := pins[filepath.Clean(cgroupDir)]
	return set, ok
}

// Process is a started child whose output is collected.
type Process struct {
	Cmd    *exec.Cmd
	role   string
	ctx    context.Context
	stdout bytes.Buffer
	stderr bytes.Buffer
}

// StartRole starts role in ns and cgroupDir with input on its stdin,
// collecting its stdout and stderr for Wait.
func StartRole(ctx context.Context, role string, input any, ns *nsutil.NS, cgroupDir string, opts ...Option) (*Process, error) {
	cmd, err := Command(ctx, role, input, opts...)
	if err != nil {
		return nil, err
	}
	p := &Process{Cmd: cmd, role: role, ctx: ctx}
	cmd.Stdout, cmd.Stderr = &p.stdout, &p.stderr
	if err := Start(cmd, ns, cgroupDir); err != nil {
		return nil, err
	}
	return p, nil
}

// Wait waits for the child and decodes its JSON output into output (if not
// nil). A failed child's error carries what it wrote to stderr; a child
// killed because ctx ended returns ctx's error.
func (p *Process) Wait(output any) error {
	if err := p.Cmd.Wait(); err != nil {
		if p.ctx.Err() != nil {
			return p.ctx.Err()
		}
		return fmt.Errorf("%s: %w: %s", p.role, err, strings.TrimSpace(p.stderr.String()))
	}
	if output == nil {
		return nil
	}
	if err := json.Unmarshal(p.stdout.Bytes(), output); err != nil {
		return fmt.Errorf("%s output: %w", p.role, err)
	}
	return nil
}

// Kill kills the child and reaps it; it is safe on a child that has
// already been waited for.
func (p *Process) Kill() {
	if p == nil || p.Cmd.Process == nil || p.Cmd.ProcessState != nil {
		return
	}
	_ = p.Cmd.Process.Kill()
	_ = p.Cmd.Wait()
}

// Run starts role in ns and cgroupDir, waits for it and decodes its JSON
// output into output.
func Run(ctx context.Context, role string, input any, ns *nsutil.NS, cgroupDir string, output any, opts ...Option) error {
	p, err := StartRole(ctx, role, input, ns, cgroupDir, opts...)
	if err != nil {
		return err
	}
	return p.Wait(output)
}
