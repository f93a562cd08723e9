// Package userspace is the kube-proxy userspace-mode baseline: a proxy
// process in the node network namespace accepts connections (and receives
// datagrams) addressed to a ClusterIP and relays them to an endpoint it
// picks round robin, so every byte crosses user space (or, for TCP, at least
// the proxy's splice(2) calls) twice.
//
// The proxy runs as a separate child process (the svclab binary re-executed
// with ProxyRole), so its CPU is its own, as a real kube-proxy's was, and a
// stuck proxy cannot stall the harness. Apply sends it the complete set of
// frontends as one JSON line on its stdin and waits for its ack on stdout.
//
// kube-proxy's userspace mode listened on a random port and steered
// ClusterIP traffic to it with iptables REDIRECT. Here each ClusterIP is
// instead a /32 (IPv6: /128) address on the node's lo and the proxy listens on
// ClusterIP:port itself. The proxying (accept, pick, dial, copy both ways)
// is the same; the difference is that no nat-table rule and no conntrack
// NAT entry sit in front of the proxy, so the measurement is the userspace
// relay alone, and the client's peer address is the VIP without any
// translation.
package userspace

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
	"svclab/internal/child"
	"svclab/internal/nsutil"
)

// Timeouts for the proxy process.
const (
	// startTimeout bounds the proxy's start-up (exec and first ack).
	startTimeout = 30 * time.Second
	// ackTimeout bounds one Apply's wait for the proxy when the caller's
	// context has no earlier deadline.
	ackTimeout = 30 * time.Second
	// exitTimeout is how long Close lets the proxy exit on its own after
	// closing its stdin before killing it.
	exitTimeout = 5 * time.Second
)

// nodeSysctls are set in the node namespace for the proxy's own outgoing
// connections to the backends: the proxy closes its backend leg first
// (passing on the client's FIN), so TIME_WAIT piles up on the node, to a
// few backend addresses. These are the values client pods get, for the
// same reason. Close restores the previous values.
var nodeSysctls = nsutil.ClientSysctls

func init() {
	datapath.Register(datapath.Factory{
		Name:        "userspace",
		Description: "kube-proxy userspace mode: a proxy process on the node accepts on ClusterIP:port and splices to an endpoint (round robin)",
		Probe:       probe,
		New:         func() datapath.Datapath { return &Datapath{} },
	})
}

// probe checks that the proxy process can be started: the datapath needs
// nothing from the kernel beyond sockets and local addresses.
func probe() error {
	if _, err := os.Executable(); err != nil {
		return datapath.Unsupportedf("userspace: cannot find own executable to start the proxy: %v", err)
	}
	return nil
}

// Datapath is one userspace proxy serving one node namespace.
type Datapath struct {
	mu  sync.Mutex
	env *datapath.Env
	nl  *netlink.Handle
	lo  netlink.Link
	// restore holds the node sysctls Setup changed, with their old values.
	restore map[string]string

	cmd     *exec.Cmd
	stdin   io.WriteCloser
	acks    chan proxyAck
	exited  chan struct{} // closed once the proxy has been reaped
	waitErr error
	seq     uint64

	// vips are the ClusterIP addresses this datapath added to lo.
	vips      map[netip.Addr]bool
	listening int
}

// Setup tunes the node namespace for the proxy's outgoing connections and
// starts the proxy process in it, waiting until it is ready.
func (d *Datapath) Setup(ctx context.Context, env *datapath.Env) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if env == nil || env.Node == nil {
		return errors.New("userspace setup: env has no node namespace")
	}
	if d.env != nil {
		return fmt.Errorf("userspace setup: already set up in %s", d.env.Node.Name)
	}
	d.env = env
	d.vips = map[netip.Addr]bool{}
	d.restore = map[string]string{}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.closeLocked())
		}
	}()
	if d.nl, err = env.Node.NetlinkHandle(); err != nil {
		return fmt.Errorf("userspace setup: %w", err)
	}
	if d.lo, err = d.nl.LinkByName("lo"); err != nil {
		return fmt.Errorf("userspace setup: find lo in %s: %w", env.Node.Name, err)
	}
	if err := kubeproxy.SetSysctls(env.Node, nodeSysctls, d.restore); err != nil {
		return fmt.Errorf("userspace setup: %w", err)
	}
	return d.start(ctx)
}

// start launches the proxy process in the node namespace.
func (d *Datapath) start(ctx context.Context) error {
	cmd, err := child.Command(context.Background(), ProxyRole, nil)
	if err != nil {
		return fmt.Errorf("userspace setup: %w", err)
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("userspace setup: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		_ = stdin.Close()
		return fmt.Errorf("userspace setup: %w", err)
	}
	if err := child.Start(cmd, d.env.Node, d.env.DatapathCgroup); err != nil {
		_ = stdin.Close()
		return fmt.Errorf("userspace setup: start proxy: %w", err)
	}
	d.cmd, d.stdin = cmd, stdin
	d.acks = make(chan proxyAck, 1)
	d.exited = make(chan struct{})
	go func() {
		// Acks until the proxy's stdout closes; then reap it.
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			var a proxyAck
			if err := json.Unmarshal(s.Bytes(), &a); err != nil {
				a = proxyAck{Seq: ^uint64(0), Error: fmt.Sprintf("unparsable ack %q: %v", s.Text(), err)}
			}
			d.acks <- a
		}
		_, _ = io.Copy(io.Discard, stdout)
		d.waitErr = cmd.Wait()
		close(d.acks)
		close(d.exited)
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if _, err := d.waitAck(ctx, 0); err != nil {
		return fmt.Errorf("userspace setup: proxy did not start: %w", err)
	}
	return nil
}

// waitAck waits for the ack of config seq.
func (d *Datapath) waitAck(ctx context.Context, seq uint64) (proxyAck, error) {
	for {
		select {
		case a, ok := <-d.acks:
			if !ok {
				<-d.exited
				return proxyAck{}, fmt.Errorf("proxy exited: %v", d.waitErr)
			}
			if a.Seq < seq {
				// The late ack of a config whose Apply gave up waiting.
				continue
			}
			if a.Seq != seq {
				return a, fmt.Errorf("proxy acked config %d, expected %d: %s", a.Seq, seq, a.Error)
			}
			if a.Error != "" {
				return a, fmt.Errorf("proxy: %s", a.Error)
			}
			return a, nil
		case <-ctx.Done():
			return proxyAck{}, fmt.Errorf("waiting for the proxy's ack of config %d: %w", seq, ctx.Err())
		}
	}
}

// Apply makes the proxy serve exactly st: ClusterIPs it needs are added to
// lo first, the proxy opens and closes its sockets and acks, and only then
// are ClusterIPs no longer needed removed. Apply returns once the proxy has
// acknowledged, so its duration is the real reconfiguration time.
func (d *Datapath) Apply(ctx context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return errors.New("userspace apply: Setup has not run")
	}
	// This node's view of internalTrafficPolicy Local services.
	st = st.ForNode(d.env.NodeName)
	fes, vips, err := desired(st)
	if err != nil {
		return fmt.Errorf("userspace apply: %w", err)
	}
	add, remove := kubeproxy.AddrDiff(slices.Collect(maps.Keys(d.vips)), vips)
	for _, a := range add {
		if err := d.nl.AddrAdd(d.lo, kubeproxy.HostAddr(a)); err != nil {
			return fmt.Errorf("userspace apply: add ClusterIP %s to lo in %s: %w", a, d.env.Node.Name, err)
		}
		d.vips[a] = true
	}
	d.seq++
	line, err := json.Marshal(proxyConfig{Seq: d.seq, Frontends: fes})
	if err != nil {
		return fmt.Errorf("userspace apply: %w", err)
	}
	if _, err := d.stdin.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("userspace apply: send config %d to the proxy: %w", d.seq, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ackTimeout)
		defer cancel()
	}
	a, err := d.waitAck(ctx, d.seq)
	if err != nil {
		return fmt.Errorf("userspace apply: %w", err)
	}
	d.listening = a.Listening
	for _, a := range remove {
		if err := d.nl.AddrDel(d.lo, kubeproxy.HostAddr(a)); err != nil {
			return fmt.Errorf("userspace apply: remove ClusterIP %s from lo in %s: %w", a, d.env.Node.Name, err)
		}
		delete(d.vips, a)
	}
	return nil
}

// Targets is the ClusterIP: the proxy picks the endpoint.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info records the CPU time the proxy process has used so far (user plus
// system, from /proc: the cost of the relay itself, which a per-packet
// datapath pays in softirq instead), its resident memory, and how many
// sockets it listens on ("listening", and the same count as
// datapath.InfoStateObjects).
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	info := map[string]string{
		"vip_binding":      "ClusterIP /32 (IPv6: /128) on the node's lo",
		"udp_idle_timeout": udpIdleTimeout.String(),
		"listening":        strconv.Itoa(d.listening),
		// The listening sockets are the programmed objects. Their kernel
		// memory is not readable, so there is no StateBytes; the proxy's
		// own memory is user memory and is proxy_rss_bytes instead.
		datapath.InfoStateObjects: strconv.Itoa(d.listening),
	}
	if d.cmd != nil && d.cmd.Process != nil {
		if cpu, err := processCPU(d.cmd.Process.Pid); err == nil {
			info["proxy_cpu_seconds"] = strconv.FormatFloat(cpu.Seconds(), 'f', 3, 64)
		}
		if rss, err := processRSS(d.cmd.Process.Pid); err == nil {
			info["proxy_rss_bytes"] = strconv.FormatUint(rss, 10)
		}
	}
	return info
}

// processRSS returns a process's resident set size, from VmRSS in
// /proc/<pid>/status.
func processRSS(pid int) (uint64, error) {
	name := "/proc/" + strconv.Itoa(pid) + "/status"
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	rss, err := parseVmRSS(string(b))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return rss, nil
}

// parseVmRSS reads the VmRSS line of a /proc/<pid>/status text, e.g.
// "VmRSS:\t    1234 kB", in bytes. The kernel always writes it in kB;
// a kernel thread or a zombie has no such line.
func parseVmRSS(status string) (uint64, error) {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS %q: want \"<n> kB\"", strings.TrimSpace(rest))
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS %q: %w", f[0], err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("no VmRSS line")
}

// userHZ is the unit of the times in /proc/<pid>/stat; Linux exports 100
// to user space on every architecture.
const userHZ = 100

// processCPU returns the user plus system CPU time a process has used.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: fields are counted
	// from the closing parenthesis. utime and stime are fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(f))
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// Close stops the proxy (closing its stdin makes it close its sockets and
// exit; it is killed if it does not), removes the ClusterIPs from lo and
// restores the node sysctls. Calling it again is a no-op.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeLocked()
}

func (d *Datapath) closeLocked() error {
	if d.env == nil {
		return nil
	}
	var errs []error
	if d.cmd != nil {
		_ = d.stdin.Close()
		d.awaitExit()
		if d.waitErr != nil && !isKilled(d.waitErr) {
			errs = append(errs, fmt.Errorf("userspace close: proxy: %w", d.waitErr))
		}
		d.cmd = nil
	}
	if d.nl != nil {
		for a := range d.vips {
			if err := d.nl.AddrDel(d.lo, kubeproxy.HostAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("userspace close: remove ClusterIP %s from lo in %s: %w", a, d.env.Node.Name, err))
				continue
			}
			delete(d.vips, a)
		}
		d.nl.Close()
		d.nl = nil
	}
	for _, err := range kubeproxy.RestoreSysctls(d.env.Node, d.restore) {
		errs = append(errs, fmt.Errorf("userspace close: restore: %w", err))
	}
	d.restore = nil
	d.env = nil
	d.listening = 0
	return errors.Join(errs...)
}

// awaitExit waits for the proxy to exit, killing it after exitTimeout. Late
// acks are drained meanwhile so that the reader always gets to reap it.
func (d *Datapath) awaitExit() {
	timer := time.NewTimer(exitTimeout)
	defer timer.Stop()
	acks := d.acks
	for {
		select {
		case <-d.exited:
			return
		case _, ok := <-acks:
			if !ok {
				acks = nil
			}
		case <-timer.C:
			_ = d.cmd.Process.Kill()
		}
	}
}

// isKilled reports whether a Wait error is the SIGKILL Close sent.
func isKilled(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(unix.WaitStatus); ok {
			return ws.Signaled() && ws.Signal() == unix.SIGKILL
		}
	}
	return false
}
