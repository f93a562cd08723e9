package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Machine is one QEMU boot.
type Machine struct {
	// QEMU is the qemu-system-x86_64 binary.
	QEMU  string
	Accel string // "kvm" or "tcg"
	// TCGThread is QEMU's tcg thread= option, "single" or "multi"; empty
	// is single. See Config.TCGThread.
	TCGThread string
	CPUs      int
	Memory    int // MiB
	Kernel    string
	Initrd    string
	Append    string
	Shares    []Share
	Token     string
	TempDir   string
	// Titles name the guest commands, for the per-command status lines.
	Titles []string

	Stdout, Stderr io.Writer
}

// QEMUArgs returns the command line; the console and the guest's stdout
// are unix sockets in TempDir that the host listens on.
func (m *Machine) QEMUArgs() []string {
	cpu, accel := "max", m.Accel
	if m.Accel == "kvm" {
		cpu = "host"
	}
	if m.Accel == "tcg" {
		accel += ",thread=" + m.tcgThread()
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", accel, "-cpu", cpu,
		"-smp", strconv.Itoa(m.CPUs), "-m", strconv.Itoa(m.Memory),
		"-kernel", m.Kernel, "-initrd", m.Initrd,
		"-append", m.KernelCmdline(),
		"-chardev", "socket,id=console,path=" + filepath.Join(m.TempDir, "console.sock"),
		"-serial", "chardev:console",
		"-chardev", "socket,id=stdout,path=" + filepath.Join(m.TempDir, "stdout.sock"),
		"-serial", "chardev:stdout",
		"-device", "virtio-rng-pci",
	}
	for i, s := range m.Shares {
		args = append(args, "-virtfs", fmt.Sprintf("local,path=%s,mount_tag=%s,security_model=none,id=fs%d", s.Path, s.Tag, i))
	}
	return args
}

func (m *Machine) tcgThread() string {
	if m.TCGThread == "" {
		return "single"
	}
	return m.TCGThread
}

// AccelName is the accelerator as results record it: "kvm", or "tcg"
// with its threading ("tcg,thread=single").
func (m *Machine) AccelName() string {
	if m.Accel == "tcg" {
		return "tcg,thread=" + m.tcgThread()
	}
	return m.Accel
}

// KernelCmdline is the guest kernel's command line: serial console, no
// reboot loop on panic (QEMU exits instead, -no-reboot), an oops is a
// panic (a kernel that oopsed has lost a task and maybe locks: its
// figures are not worth keeping, and the run ends at once instead of at
// the timeout), quiet boot.
func (m *Machine) KernelCmdline() string {
	c := "console=ttyS0,115200 panic=-1 oops=panic quiet loglevel=4 rdinit=/init"
	if m.Append != "" {
		c += " " + m.Append
	}
	return c
}

// BootResult is how a boot ended.
type BootResult struct {
	// ExitCode is the guest command's exit status.
	ExitCode int
	// Boot is the host time from starting QEMU to /init's ready line;
	// GuestUptime the guest's own uptime at that line.
	Boot        time.Duration
	GuestUptime string
	// GuestRelease is what uname -r says in the guest.
	GuestRelease string
	// Commands holds each guest command's status and duration, in order.
	Commands []CommandResult
}

// CommandResult is one guest command's outcome.
type CommandResult struct {
	Title    string
	ExitCode int
	Duration time.Duration
}

// ErrGuestPanic marks a run the guest kernel's crash ended: a panic, or an
// oops (fatal: the command line has oops=panic).
var ErrGuestPanic = errors.New("the guest kernel panicked")

// errKVM marks a boot that failed inside KVM (nested virtualisation that
// cannot run the guest), so an automatic choice can retry with tcg.
var errKVM = errors.New("KVM cannot run this guest (--accel tcg emulates instead)")

// tail keeps the last lines of the console for error messages.
type tail struct {
	mu    sync.Mutex
	lines []string
	max   int
}

func (t *tail) add(l string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, l)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "  (no console output)"
	}
	return "  | " + strings.Join(t.lines, "\n  | ")
}

// console follows the guest's console for the marker lines.
type console struct {
	m       *Machine
	start   time.Time
	tail    *tail
	mu      sync.Mutex
	res     BootResult
	ready   bool
	exited  bool
	setup   string // setup failure message
	panic   string // the "Kernel panic" line
	crash   string // the first line of a kernel crash report (Oops, BUG)
	started map[int]time.Time
	done    chan struct{} // closed when the exit or fail marker arrives
	once    sync.Once
}

func (c *console) line(l string) {
	tok := " " + c.m.Token + " "
	if i := strings.Index(l, markerExit+tok); i >= 0 {
		// Only the first field: a kernel message may share the line.
		rc, err := strconv.Atoi(firstField(l[i+len(markerExit+tok):]))
		c.mu.Lock()
		if err == nil {
			c.res.ExitCode, c.exited = rc, true
		}
		c.mu.Unlock()
		c.once.Do(func() { close(c.done) })
		return
	}
	if i := strings.Index(l, markerFail+tok); i >= 0 {
		c.mu.Lock()
		c.setup = strings.TrimSpace(l[i+len(markerFail+tok):])
		c.mu.Unlock()
		c.once.Do(func() { close(c.done) })
		return
	}
	if i := strings.Index(l, markerReady+tok); i >= 0 {
		c.mu.Lock()
		c.ready = true
		c.res.Boot = time.Since(c.start)
		f := strings.Fields(l[i+len(markerReady+tok):])
		if len(f) >= 2 {
			c.res.GuestUptime, c.res.GuestRelease = f[0], f[1]
		}
		c.mu.Unlock()
		fmt.Fprintf(c.m.Stderr, "svclab vm: guest %s ready after %.1fs (guest uptime %ss, %s)\n", c.res.GuestRelease, c.res.Boot.Seconds(), c.res.GuestUptime, c.m.AccelName())
		return
	}
	if i := strings.Index(l, markerStart+tok); i >= 0 {
		n, _ := strconv.Atoi(firstField(l[i+len(markerStart+tok):]))
		c.mu.Lock()
		c.started[n] = time.Now()
		c.mu.Unlock()
		return
	}
	if i := strings.Index(l, markerDone+tok); i >= 0 {
		f := strings.Fields(l[i+len(markerDone+tok):])
		if len(f) >= 2 {
			n, _ := strconv.Atoi(f[0])
			rc, _ := strconv.Atoi(f[1])
			c.mu.Lock()
			r := CommandResult{ExitCode: rc, Duration: time.Since(c.started[n])}
			if n < len(c.m.Titles) {
				r.Title = c.m.Titles[n]
			}
			c.res.Commands = append(c.res.Commands, r)
			c.mu.Unlock()
		}
		return
	}
	c.mu.Lock()
	finished := c.exited
	c.mu.Unlock()
	if finished {
		// "reboot: Power down" and the like: noise after the result.
		return
	}
	l = plainLine(l)
	if i := strings.Index(l, "Kernel panic - not syncing"); i >= 0 {
		c.mu.Lock()
		if c.panic == "" {
			c.panic = l[i:]
		}
		c.mu.Unlock()
	} else if loc := crashLine.FindStringIndex(l); loc != nil {
		c.mu.Lock()
		if c.crash == "" {
			c.crash = strings.TrimSpace(l[loc[0]:])
		}
		c.mu.Unlock()
	}
	c.tail.add(l)
	fmt.Fprintln(c.m.Stderr, l)
}

// crashLine finds the start of a kernel crash report on a console line:
// an oops ("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"), a BUG() or a
// "BUG: ..." detector report, a general protection fault.
var crashLine = regexp.MustCompile(`Oops: |kernel BUG at |BUG: |general protection fault`)

// crashed describes how the guest kernel died, for the error: the first
// crash report and the panic line.
func (c *console) crashed() string {
	switch {
	case c.crash != "" && c.panic != "":
		return c.crash + "; " + c.panic
	case c.panic != "":
		return c.panic
	default:
		return c.crash
	}
}

// csi matches a terminal control sequence (ESC [ … final byte).
var csi = regexp.MustCompile("\x1b\\[[0-9;?]*[ -/]*[@-~]")

// plainLine is a console line as a terminal would show it, without its
// control sequences: what follows the last carriage return (a line
// rewritten in place), escape sequences dropped.
func plainLine(l string) string {
	if i := strings.LastIndexByte(l, '\r'); i >= 0 {
		l = l[i+1:]
	}
	return csi.ReplaceAllString(l, "")
}

// splitLines calls fn for each line of r, without CR and LF; it also
// returns a last line that has no LF.
func splitLines(r io.Reader, fn func(string)) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		s, err := br.ReadString('\n')
		if s != "" {
			fn(strings.TrimRight(s, "\r\n"))
		}
		if err != nil {
			return
		}
	}
}

// crlf strips the CR that a serial line adds before LF, in case the
// guest's tty still translates.
type crlf struct{ w io.Writer }

func (c crlf) Write(p []byte) (int, error) {
	if _, err := c.w.Write(bytes.ReplaceAll(p, []byte("\r\n"), []byte("\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// acceptOne accepts the one connection QEMU makes to l and hands it to fn.
func acceptOne(l net.Listener, fn func(net.Conn)) {
	conn, err := l.Accept()
	if err != nil {
		return
	}
	defer conn.Close()
	fn(conn)
}

// exitGrace is how long QEMU gets to power off after the exit marker.
const exitGrace = 30 * time.Second

// Boot runs QEMU until the guest powers off, ctx ends or the guest hangs.
// The console streams to Stderr and the guest's stdout to Stdout.
func (m *Machine) Boot(ctx context.Context) (*BootResult, error) {
	ln := func(name string) (net.Listener, error) {
		l, err := net.Listen("unix", filepath.Join(m.TempDir, name))
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		return l, nil
	}
	conL, err := ln("console.sock")
	if err != nil {
		return nil, err
	}
	defer conL.Close()
	outL, err := ln("stdout.sock")
	if err != nil {
		return nil, err
	}
	defer outL.Close()

	c := &console{m: m, tail: &tail{max: 40}, started: map[int]time.Time{}, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		acceptOne(conL, func(conn net.Conn) { splitLines(conn, c.line) })
	}()
	go func() {
		defer wg.Done()
		acceptOne(outL, func(conn net.Conn) { _, _ = io.Copy(crlf{m.Stdout}, conn) })
	}()

	qemuOut := &qemuLog{kvmFail: make(chan struct{})}
	cmd := exec.Command(m.QEMU, m.QEMUArgs()...)
	cmd.Stdin = nil
	cmd.Stdout = qemuOut
	cmd.Stderr = qemuOut
	// Its own process group: a terminal's Ctrl-C reaches svclab, which
	// stops QEMU itself; Pdeathsig stops it if svclab dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", m.QEMU, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var waitErr error
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	select {
	case waitErr = <-exited:
	case <-ctx.Done():
		stop()
		waitErr = <-exited
	case <-qemuOut.kvmFail:
		// QEMU pauses the guest and waits: nothing more will happen.
		stop()
		waitErr = <-exited
	case <-c.done:
		select {
		case waitErr = <-exited:
		case <-time.After(exitGrace):
			fmt.Fprintf(m.Stderr, "svclab vm: the guest did not power off within %s of finishing; stopping QEMU\n", exitGrace)
			stop()
			waitErr = <-exited
		case <-ctx.Done():
			stop()
			waitErr = <-exited
		}
	}
	// QEMU is gone: its sockets are closed, the readers drain and end.
	conL.Close()
	outL.Close()
	wg.Wait()

	c.mu.Lock()
	defer c.mu.Unlock()
	res := c.res
	qout := strings.TrimSpace(qemuOut.String())
	kvmFailed := false
	select {
	case <-qemuOut.kvmFail:
		kvmFailed = true
	default:
	}
	switch {
	case c.exited:
		if c.crash != "" {
			// A report the kernel survived (oops=panic makes an oops
			// fatal): the result stands, the report is named.
			fmt.Fprintf(m.Stderr, "svclab vm: warning: the guest kernel reported %q during the run\n", c.crash)
		}
		return &res, nil
	case c.setup != "":
		return &res, fmt.Errorf("guest setup failed: %s; last console lines:\n%s", c.setup, c.tail)
	case ctx.Err() != nil:
		return &res, fmt.Errorf("QEMU stopped: %w; last console lines:\n%s", ctx.Err(), c.tail)
	case m.Accel == "kvm" && (kvmFailed || (waitErr != nil && !c.ready && strings.Contains(strings.ToLower(qout), "kvm"))):
		return &res, fmt.Errorf("%w: %s; last console lines:\n%s", errKVM, qout, c.tail)
	case c.panic != "" || c.crash != "":
		return &res, fmt.Errorf("%w (%s); last console lines:\n%s", ErrGuestPanic, c.crashed(), c.tail)
	case waitErr != nil && !stopped:
		return &res, fmt.Errorf("qemu failed: %v: %s; last console lines:\n%s", waitErr, qout, c.tail)
	case !c.ready:
		return &res, fmt.Errorf("the guest ended before /init was ready (%s); last console lines:\n%s", orNone(qout), c.tail)
	default:
		return &res, fmt.Errorf("the guest ended without reporting an exit status; last console lines:\n%s", c.tail)
	}
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

func orNone(s string) string {
	if s == "" {
		return "no message from qemu"
	}
	return "qemu: " + s
}

// qemuLog keeps QEMU's own messages and notices a KVM failure, after
// which QEMU would wait forever with the guest paused.
type qemuLog struct {
	mu      sync.Mutex
	b       bytes.Buffer
	once    sync.Once
	kvmFail chan struct{}
}

func (q *qemuLog) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.b.Write(p)
	if q.b.Len() > 1<<20 {
		q.b.Next(q.b.Len() - 1<<20)
	}
	if bytes.Contains(q.b.Bytes(), []byte("KVM internal error")) {
		q.once.Do(func() { close(q.kvmFail) })
	}
	return len(p), nil
}

func (q *qemuLog) String() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.b.String()
}

// ResolveAccel is the accelerator a guest started with Config.Accel accel
// runs under: "auto" becomes "kvm" when KVMUsable, else "tcg" with why
// KVM is not used; "kvm" and "tcg" stay as they are.
func ResolveAccel(accel string) (resolved, why string) {
	if accel != "auto" {
		return accel, ""
	}
	if ok, reason := KVMUsable(); !ok {
		return "tcg", reason
	}
	return "kvm", ""
}

// KVMUsable reports whether -accel kvm can be expected to work: /dev/kvm
// opens and the CPU advertises hardware virtualisation. Some nested setups
// expose /dev/kvm without vmx/svm, and guests then die with "KVM internal
// error"; those get tcg.
func KVMUsable() (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm: %v", err)
	}
	f.Close()
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false, err.Error()
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				if f == "vmx" || f == "svm" {
					return true, ""
				}
			}
			break
		}
	}
	return false, "/dev/kvm exists but the CPU flags have no vmx or svm"
}
