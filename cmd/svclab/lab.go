package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"svclab/harness/lab"
)

// notifyEnv names the descriptor on which a detached lab's supervisor
// (`svclab up --foreground` re-executed by `svclab up`) reports to the
// `svclab up` that started it: one JSON upNotice, then EOF.
const notifyEnv = "SVCLAB_LAB_NOTIFY_FD"

// upNotice is what a lab's supervisor reports: the lab, once it is ready,
// or why it could not be built.
type upNotice struct {
	State *lab.State `json:"state,omitempty"`
	Error string     `json:"error,omitempty"`
}

func cmdUp(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg lab.Config
	fs.StringVar(&cfg.Datapath, "datapath", "socketlb", "datapath implementing the service (see 'svclab datapaths')")
	fs.IntVar(&cfg.Backends, "backends", 3, "number of backend pods, all endpoints of the service")
	fs.IntVar(&cfg.Clients, "clients", 1, "number of client pods")
	fs.BoolVar(&cfg.UDP, "udp", false, "also serve the service port over UDP (backends answer any datagram with their name)")
	affinity := fs.String("affinity", "none", "session affinity: none, clientip or clientip:TIMEOUT (e.g. clientip:30s)")
	foreground := fs.Bool("foreground", false, "keep the lab in this process until Ctrl-C or 'svclab down' (default: return once the lab is ready, kept by a detached supervisor)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: svclab up [flags]\n\nBuilds a lab: client and backend pods, a ClusterIP service default/web (10.96.0.10:80 -> :%d)\nthrough the datapath, and returns once it is ready; a detached supervisor keeps it until\n'svclab down' (with --foreground, this process keeps it until Ctrl-C or 'svclab down').\nBackends answer HTTP/1.1 naming themselves. Run anything in a pod with 'svclab exec POD -- CMD'.\n\n", lab.TargetPort)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return badInput(err)
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	var err error
	if cfg.Affinity, cfg.AffinityTimeout, err = lab.ParseAffinity(*affinity); err != nil {
		return badInput(fmt.Errorf("--%w", err))
	}
	if err := cfg.Validate(); err != nil {
		return badInput(fmt.Errorf("--%w", err))
	}
	if err := requireRoot(); err != nil {
		return err
	}
	if !*foreground {
		return upDetached(args, stdout)
	}
	notify, err := supervisorNotify(&cfg)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	err = lab.Up(ctx, cfg, stderr, func(st *lab.State) {
		lab.Write(stdout, st)
		notify.send(upNotice{State: st})
	})
	if err != nil {
		notify.send(upNotice{Error: err.Error()})
	}
	// Stopped by down (nil) or by a signal with a clean teardown: either
	// way nothing of the lab is left.
	var ie *interruptError
	if err == nil || errors.As(err, &ie) && err == error(ie) {
		fmt.Fprintln(stdout, "lab removed")
	}
	return err
}

// notifier is the supervisor's end of the pipe to the `svclab up` that
// started it; nil in a lab run with --foreground by a person.
type notifier struct{ f *os.File }

// send reports n once; later calls do nothing.
func (n *notifier) send(msg upNotice) {
	if n == nil || n.f == nil {
		return
	}
	_ = json.NewEncoder(n.f).Encode(msg)
	_ = n.f.Close()
	n.f = nil
}

// supervisorNotify sets up a detached lab's supervisor when notifyEnv says
// this process is one: its output goes to its log file (lab.SupervisorLog,
// then <id>.log), and it reports on the descriptor notifyEnv names.
func supervisorNotify(cfg *lab.Config) (*notifier, error) {
	v := os.Getenv(notifyEnv)
	if v == "" {
		return nil, nil
	}
	_ = os.Unsetenv(notifyEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, badInput(fmt.Errorf("%s=%q is not a descriptor", notifyEnv, v))
	}
	// Not inherited by the lab's servers or commands: the parent must
	// see EOF when this process is gone.
	unix.CloseOnExec(fd)
	n := &notifier{f: os.NewFile(uintptr(fd), "notify")}
	cfg.Log = lab.SupervisorLog(os.Getpid())
	if err := os.MkdirAll(filepath.Dir(cfg.Log), 0o755); err != nil {
		n.send(upNotice{Error: err.Error()})
		return nil, err
	}
	logf, err := os.OpenFile(cfg.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		for _, to := range []int{1, 2} {
			if err = unix.Dup3(int(logf.Fd()), to, 0); err != nil {
				break
			}
		}
		logf.Close()
	}
	if err != nil {
		err = fmt.Errorf("lab log %s: %w", cfg.Log, err)
		n.send(upNotice{Error: err.Error()})
		return nil, err
	}
	return n, nil
}

// upDetached is `svclab up` without --foreground: it starts this binary
// again as the lab's supervisor (`up --foreground`, in a session of its
// own, stdio to its log file), waits until that process reports the lab
// ready or failed, prints the lab (or the error) and returns. The
// supervisor holds the lab's run lock; `svclab down` stops it. An
// interruption while the lab is being built stops the supervisor too.
func upDetached(args []string, stdout io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe, append([]string{"up", "--foreground"}, args...)...)
	cmd.Env = append(os.Environ(), notifyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	ctx, stop := signalContext()
	defer stop()
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("up: start the lab's supervisor: %w", err)
	}
	got := make(chan upNotice, 1)
	go func() {
		var n upNotice
		if err := json.NewDecoder(r).Decode(&n); err != nil {
			n = upNotice{} // EOF: the supervisor died without a word
		}
		got <- n
	}()
	var n upNotice
	select {
	case n = <-got:
	case <-ctx.Done():
		// The supervisor tears down what it built so far, as Ctrl-C
		// would in the foreground.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		_ = os.Remove(lab.SupervisorLog(cmd.Process.Pid))
		return context.Cause(ctx)
	}
	if n.State != nil {
		lab.Write(stdout, n.State)
		// The supervisor lives on, in its own session.
		return cmd.Process.Release()
	}
	werr := cmd.Wait()
	code := cmd.ProcessState.ExitCode()
	logName := lab.SupervisorLog(cmd.Process.Pid)
	if n.Error == "" {
		n.Error = fmt.Sprintf("the lab's supervisor (pid %d) ended before the lab was ready (%v)", cmd.Process.Pid, werr)
		if b, err := os.ReadFile(logName); err == nil && len(bytes.TrimSpace(b)) > 0 {
			n.Error += ":\n" + string(bytes.TrimSpace(b))
		}
	}
	_ = os.Remove(logName)
	return &exitStatusError{code: code, err: errors.New(n.Error)}
}

// cmdExec returns the command's exit status; 125 for svclab's own errors
// and 127 for a command that cannot be found, as env(1) and docker do.
func cmdExec(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	labID := fs.String("lab", "", "lab id (default: the only lab that is up)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: svclab exec [--lab ID] POD -- COMMAND [ARG...]\n\nRuns COMMAND in the pod's network namespace and the lab's client cgroup, with\nstdin, stdout and stderr passed through; exits with the command's status.\nExample: svclab exec client-0 -- curl -s http://10.96.0.10/\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 125
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprintln(stderr, "svclab exec: no pod given")
		fs.Usage()
		return 125
	}
	pod, argv := rest[0], rest[1:]
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "svclab exec: no command given (svclab exec POD -- COMMAND)")
		return 125
	}
	st, err := lab.Find(*labID)
	if err != nil {
		fmt.Fprintf(stderr, "svclab exec: %v\n", err)
		return 125
	}
	code, err := st.Exec(pod, argv, os.Stdin, os.Stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "svclab %v\n", err)
		if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "executable file not found") {
			return 127
		}
		return 125
	}
	return code
}

func cmdStatus(stdout io.Writer) error {
	labs, err := lab.List()
	if err != nil {
		return err
	}
	if len(labs) == 0 {
		fmt.Fprintln(stdout, "no lab is up")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDATAPATH\tPID\tUP\tSERVICES\tPODS")
	var dead []*lab.State
	for _, l := range labs {
		if !l.Alive() {
			dead = append(dead, l)
			continue
		}
		var svcs []string
		for _, s := range l.Services {
			svcs = append(svcs, fmt.Sprintf("%s %s %s", s.Name, s.ClusterIP, strings.Join(s.Ports, ",")))
		}
		var pods []string
		for _, p := range l.Pods {
			pods = append(pods, p.Name+"="+p.Addr)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", l.ID, l.Datapath, l.PID, time.Since(l.Started).Round(time.Second),
			strings.Join(svcs, "; "), strings.Join(pods, " "))
	}
	if len(dead) == len(labs) {
		fmt.Fprintln(stdout, "no lab is up")
	} else if err := tw.Flush(); err != nil {
		return err
	}
	// A lab whose svclab up was killed (SIGKILL, OOM) ran no teardown:
	// say what it left and how to remove it.
	for _, l := range dead {
		fmt.Fprintf(stdout, "lab %s (%s, pid %d) is dead, left: %s\n  remove it with: svclab down %s\n",
			l.ID, l.Datapath, l.PID, strings.Join(l.Left(), ", "), l.ID)
	}
	return nil
}

func cmdDown(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for the lab to remove everything")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: svclab down [--timeout D] [ID]\n\nStops a lab (the only one, or ID) and waits until everything it made is removed.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return badInput(err)
	}
	if fs.NArg() > 1 {
		return badInput(fmt.Errorf("unexpected argument %q", fs.Arg(1)))
	}
	st, removed, err := lab.Down(context.Background(), fs.Arg(0), *timeout)
	if err != nil {
		return err
	}
	if removed != nil {
		fmt.Fprintf(stdout, "lab %s was dead (its svclab up was killed); removed what it left: %s\n", st.ID, strings.Join(removed, ", "))
		return nil
	}
	fmt.Fprintf(stdout, "lab %s is down\n", st.ID)
	return nil
}
