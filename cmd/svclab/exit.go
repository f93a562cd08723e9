package main

import (
	"golang.org/x/sys/unix"

	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync/atomic"
	"syscall"

	"svclab/datapath"
	"svclab/harness/lab"
)

// Exit statuses of every svclab command, so that a script can tell a
// finding from a mistake from an interruption without reading messages.
// `svclab exec` and `svclab vm` pass their command's own status through;
// exec keeps 125–127 for its own failures, as env(1) and docker do, because
// any other number could be the command's.
const (
	exitOK = 0
	// exitFailed: a measured regression (compare), a failed run, or a
	// failed conformance cell of a --strict datapath.
	exitFailed = 1
	// exitBadInput: a usage error, input that can only fail, or an
	// environment the command cannot run in (not root, a missing tool, no
	// datapath that runs here).
	exitBadInput = 2
	// exitInterrupted: SIGINT, SIGTERM, SIGHUP, SIGQUIT (or SIGPIPE,
	// its output gone) ended the run
	// (128 + SIGINT, as shells report Ctrl-C); what it made was removed.
	exitInterrupted = 130
)

const exitCodesUsage = `Exit status (every command; exec and vm pass their command's status through):
  0    success
  1    a measured regression (compare), a failed run, a failed --strict conformance
  2    bad input or an unusable environment (usage, not root, missing tools)
  130  interrupted by SIGINT, SIGTERM, SIGHUP or SIGQUIT (what the run made was removed)
`

var (
	// errBadInput marks an error in what the user gave: flags, files,
	// arguments.
	errBadInput = errors.New("bad input")
	// errUnusable marks an environment the command cannot run in.
	errUnusable = errors.New("unusable environment")
)

// codeError carries its exit status through the error chain while keeping
// the message it wraps.
type codeError struct {
	kind error
	err  error
}

func (e *codeError) Error() string   { return e.err.Error() }
func (e *codeError) Unwrap() []error { return []error{e.kind, e.err} }

// badInput marks err as the user's input at fault (exit 2).
func badInput(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &codeError{kind: errBadInput, err: err}
}

// unusable marks err as the environment at fault (exit 2).
func unusable(err error) error {
	if err == nil {
		return nil
	}
	return &codeError{kind: errUnusable, err: err}
}

// exitStatusError is a failure whose exit status another svclab process
// decided (a detached lab's supervisor): it is passed through.
type exitStatusError struct {
	code int
	err  error
}

func (e *exitStatusError) Error() string { return e.err.Error() }
func (e *exitStatusError) Unwrap() error { return e.err }

// requireRoot is the check every command that builds namespaces makes
// before anything is created.
func requireRoot() error {
	if os.Geteuid() != 0 {
		return unusable(errors.New("needs root (network namespaces, cgroups and BPF): run it with sudo"))
	}
	return nil
}

// interruptSignals end a long-running command the way Ctrl-C does: the
// run stops and removes what it made. SIGHUP is a dropped ssh session and
// SIGQUIT is Ctrl-\; left at their defaults both kill the process like
// SIGKILL would, leaving namespaces, cgroups and the lock file behind.
// SIGPIPE is the same session's `| tee log` gone: Go's default kills the
// process at its next write to stdout or stderr; handled, the write fails
// and the run ends cleanly.
var interruptSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE}

// interrupted is set once one of interruptSignals arrived: the exit status
// is then 130 whatever error the cut-short run returned (a child killed by
// the same signal fails its own way).
var interrupted atomic.Bool

// interruptError is the cause of a context ended by a signal.
type interruptError struct{ sig os.Signal }

func (e *interruptError) Error() string { return fmt.Sprintf("interrupted (%s)", sigName(e.sig)) }

// Is makes an interruption a context.Canceled for code that checks that.
func (e *interruptError) Is(target error) bool { return target == context.Canceled }

func sigName(s os.Signal) string {
	if n, ok := s.(syscall.Signal); ok {
		switch n {
		case syscall.SIGINT:
			return "SIGINT"
		case syscall.SIGTERM:
			return "SIGTERM"
		case syscall.SIGHUP:
			return "SIGHUP"
		case syscall.SIGQUIT:
			return "SIGQUIT"
		case syscall.SIGPIPE:
			return "SIGPIPE"
		}
	}
	return s.String()
}

// signalContext is the context of every long-running command (bench,
// conform, up, vm): cancelled, with an *interruptError cause, by the first
// of interruptSignals. Later signals are swallowed until stop, so a second
// Ctrl-C cannot cut the teardown short.
func signalContext() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, interruptSignals...)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-ch:
				// With SIGPIPE notified, Go delivers it for a broken pipe
				// on any descriptor: a child's stdin (iptables-restore
				// that exited early) raises it too, and that write's
				// EPIPE is already its caller's error. Only our own
				// stdout or stderr gone ends the run.
				if s == syscall.SIGPIPE && !stdioBroken() {
					continue
				}
				interrupted.Store(true)
				cancel(&interruptError{sig: s})
			case <-done:
			}
			return
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		// The error message still to come must not kill the process
		// when its stderr is a pipe that is gone.
		signal.Ignore(syscall.SIGPIPE)
		close(done)
		cancel(nil)
	}
}

// exitCode maps a command's error to its exit status.
func exitCode(err error) int {
	var es *exitStatusError
	switch {
	case err == nil || errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &es) && es.code > 0:
		return es.code
	case interrupted.Load() || errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.Is(err, errBadInput), errors.Is(err, errUnusable),
		errors.Is(err, datapath.ErrUnsupported), errors.Is(err, exec.ErrNotFound), errors.Is(err, lab.ErrNoLab):
		return exitBadInput
	default:
		return exitFailed
	}
}

// stdioBroken reports whether stdout or stderr is a pipe with no reader
// left: poll gives POLLERR on such a pipe's write end.
func stdioBroken() bool {
	fds := []unix.PollFd{{Fd: 1, Events: unix.POLLOUT}, {Fd: 2, Events: unix.POLLOUT}}
	if _, err := unix.Poll(fds, 0); err != nil {
		return false
	}
	for _, f := range fds {
		if f.Revents&unix.POLLERR != 0 {
			return true
		}
	}
	return false
}
