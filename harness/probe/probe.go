// Package probe runs scripted socket operations (connect, send, receive,
// getpeername) from inside a pod and records what a client observes: the
// conformance checks' eyes.
package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"time"
	"unsafe"

	"svclab/harness/loadgen"
	"svclab/results"

	"golang.org/x/sys/unix"

	"svclab/internal/child"
	"svclab/internal/nsutil"
)

// Role is the child role that runs a Spec (internal/child).
const Role = "internal-probe"

func init() { child.Register(Role, probeMain) }

// Probe operations (Spec.Op).
const (
	// TCP connects, sends an HTTP request, reads the whole reply and
	// closes; getpeername is read right after connect.
	TCP = "tcp"
	// UDP sends a datagram with sendto on an unconnected socket and
	// reads the reply with recvfrom, recording the reply's source.
	UDP = "udp"
	// UDPConnected connects a UDP socket, reads getpeername, sends
	// and receives on it.
	UDPConnected = "udp-connected"
	// UDPReconnect connects a UDP socket to the target, exchanges a
	// datagram, dissolves the association with connect(AF_UNSPEC), connects
	// the same socket to Second and exchanges a datagram again. Each
	// attempt yields two records, phases "first" and "second".
	UDPReconnect = "udp-reconnect"
)

// Error names a probe records besides errno names.
const (
	// ErrnoTimeout: no answer within the attempt's timeout.
	ErrnoTimeout = "timeout"
	// ErrnoBadReply: an answer that is not a backend's reply.
	ErrnoBadReply = "bad-reply"
)

// Spec is a scripted list of identical socket operations, run by a
// probe child process inside a pod's namespace and the client cgroup.
type Spec struct {
	Op string `json:"op"`
	// Targets: one is picked at random per socket (several only when the
	// datapath's client picks the endpoint, as with direct).
	Targets []netip.AddrPort `json:"targets"`
	// Second is where UDPReconnect connects after connect(AF_UNSPEC).
	Second netip.AddrPort `json:"second,omitzero"`
	// LongLived keeps one socket for every attempt (UDP operations)
	// instead of a fresh one per attempt.
	LongLived bool `json:"long_lived,omitempty"`
	// V4Mapped uses an AF_INET6 socket and the IPv4-mapped form
	// (::ffff:a.b.c.d) of IPv4 targets.
	V4Mapped bool `json:"v4_mapped,omitempty"`
	// LocalPort, if set, binds every socket to this port (SO_REUSEADDR), as
	// `nc -u -p PORT` does: fresh sockets then share one 5-tuple.
	LocalPort uint16 `json:"local_port,omitempty"`
	// Count and Duration bound the attempts (whichever ends first; at
	// least one must be set). Interval is the time between attempt starts.
	Count    int           `json:"count,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Interval time.Duration `json:"interval,omitempty"`
	// Timeout bounds one attempt (default 1s).
	Timeout time.Duration `json:"timeout,omitempty"`
	// Resend, for UDP, sends the request again on the same socket after
	// this long without a reply, until Timeout, as a stub resolver does
	// (TCP retransmits by itself): one lost datagram on a busy machine is
	// not a datapath's fault.
	Resend time.Duration `json:"resend,omitempty"`
	// ReconnectOnError closes a long-lived socket after an error other
	// than a timeout and opens a new one for the next attempt, as an
	// application that handles ECONNREFUSED or ECONNABORTED would.
	ReconnectOnError bool `json:"reconnect_on_error,omitempty"`
}

// Attempt is what the client observed in one attempt (results.ProbeAttempt:
// it is part of the conformance results' schema).
type Attempt = results.ProbeAttempt

// Validate checks a spec and names the field at fault.
func (s *Spec) Validate() error {
	switch s.Op {
	case TCP, UDP, UDPConnected:
	case UDPReconnect:
		if !s.Second.IsValid() {
			return fmt.Errorf("probe: second: required by op %s", s.Op)
		}
	default:
		return fmt.Errorf("probe: op: %q is not one of %s, %s, %s, %s", s.Op, TCP, UDP, UDPConnected, UDPReconnect)
	}
	if len(s.Targets) == 0 {
		return errors.New("probe: targets: none given")
	}
	for i, t := range s.Targets {
		if !t.IsValid() {
			return fmt.Errorf("probe: targets[%d]: invalid address", i)
		}
		if s.V4Mapped && !t.Addr().Is4() {
			return fmt.Errorf("probe: targets[%d]: %s is not IPv4, so it has no IPv4-mapped form", i, t)
		}
	}
	if s.Count < 0 || s.Duration < 0 || s.Interval < 0 || s.Timeout < 0 {
		return errors.New("probe: count, duration, interval and timeout must not be negative")
	}
	if s.Count == 0 && s.Duration == 0 {
		return errors.New("probe: count or duration: one must be set")
	}
	if s.LongLived && s.Op == TCP {
		return errors.New("probe: long_lived: only for UDP operations")
	}
	if s.Resend < 0 || (s.Resend > 0 && s.Op == TCP) {
		return errors.New("probe: resend: only for UDP operations, and not negative")
	}
	if s.ReconnectOnError && !s.LongLived {
		return errors.New("probe: reconnect_on_error: only with long_lived")
	}
	return nil
}

// RunProbe runs the spec in the calling process (the probe child's body).
func Run(spec Spec) ([]Attempt, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Timeout == 0 {
		spec.Timeout = time.Second
	}
	p := &prober{spec: spec, fd: -1}
	defer p.closeSocket()
	var out []Attempt
	t0 := time.Now()
	for i := 0; spec.Count == 0 || i < spec.Count; i++ {
		next := t0.Add(time.Duration(i) * spec.Interval)
		if spec.Duration > 0 && !next.Before(t0.Add(spec.Duration)) {
			break
		}
		time.Sleep(time.Until(next))
		out = append(out, p.attempt()...)
	}
	return out, nil
}

type prober struct {
	spec Spec
	// fd is the long-lived socket (-1: none yet) and dialed its target.
	fd     int
	dialed netip.AddrPort
	buf    [4096]byte
}

func (p *prober) closeSocket() {
	if p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
	}
}

// pick chooses a target, as a client-side resolver would.
func (p *prober) pick() netip.AddrPort {
	t := p.spec.Targets[rand.IntN(len(p.spec.Targets))]
	return p.mapped(t)
}

func (p *prober) mapped(t netip.AddrPort) netip.AddrPort {
	if p.spec.V4Mapped {
		return netip.AddrPortFrom(netip.AddrFrom16(t.Addr().As16()), t.Port())
	}
	return t
}

func (p *prober) attempt() []Attempt {
	switch p.spec.Op {
	case TCP:
		return []Attempt{p.tcp()}
	case UDP:
		return []Attempt{p.udp()}
	case UDPConnected:
		return []Attempt{p.udpConnected()}
	default:
		return p.udpReconnect()
	}
}

// begin starts an attempt record.
func begin(dialed netip.AddrPort) (Attempt, time.Time) {
	now := time.Now()
	return Attempt{Start: now.UnixNano(), Dialed: dialed.String()}, now
}

func finish(a *Attempt, t0 time.Time, stage string, err error) {
	a.ElapsedUS = float64(time.Since(t0).Nanoseconds()) / 1e3
	if err != nil {
		a.Stage = stage
		a.Errno = errName(err)
	}
}

func errName(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(e))
	}
	if errors.Is(err, errProbeTimeout) {
		return ErrnoTimeout
	}
	if errors.Is(err, errBadReply) {
		return ErrnoBadReply
	}
	return err.Error()
}

// LatePayload is the payload of a late datagram (conformance lateReply
// steps send it): a probe records its source in Attempt.Late instead of
// taking it as the reply it waits for.
var LatePayload = []byte("svclab-late-reply")

var (
	errProbeTimeout = errors.New("timeout")
	errBadReply     = errors.New("bad reply")
)

// socket opens a non-blocking socket for the family of dst, bound to the
// spec's local port if any.
func (p *prober) socket(typ int, dst netip.AddrPort) (int, error) {
	fam := unix.AF_INET
	if dst.Addr().Is6() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if p.spec.LocalPort != 0 {
		var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(p.spec.LocalPort)}
		if fam == unix.AF_INET6 {
			sa = &unix.SockaddrInet6{Port: int(p.spec.LocalPort)}
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func addrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return ""
}

func peerName(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "error: " + errName(err)
	}
	return addrString(sa)
}

func localName(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return ""
	}
	return addrString(sa)
}

// wait polls fd for events until the deadline.
func wait(fd int, events int16, deadline time.Time) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return errProbeTimeout
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// connect connects a non-blocking socket within the deadline.
func connect(fd int, dst netip.AddrPort, deadline time.Time) error {
	err := unix.Connect(fd, sockaddr(dst))
	if err == nil {
		return nil
	}
	if err != unix.EINPROGRESS {
		return err
	}
	if err := wait(fd, unix.POLLOUT, deadline); err != nil {
		return err
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soerr != 0 {
		return unix.Errno(soerr)
	}
	return nil
}

func (p *prober) tcp() Attempt {
	dst := p.pick()
	a, t0 := begin(dst)
	deadline := t0.Add(p.spec.Timeout)
	fd, err := p.socket(unix.SOCK_STREAM, dst)
	if err != nil {
		finish(&a, t0, "socket", err)
		return a
	}
	defer unix.Close(fd)
	if err := connect(fd, dst, deadline); err != nil {
		a.Local = localName(fd)
		finish(&a, t0, "connect", err)
		return a
	}
	a.Peer, a.Local = peerName(fd), localName(fd)
	if _, err := unix.Write(fd, loadgen.Request); err != nil {
		finish(&a, t0, "send", err)
		return a
	}
	var got []byte
	for {
		if err := wait(fd, unix.POLLIN, deadline); err != nil {
			finish(&a, t0, "recv", err)
			return a
		}
		n, err := unix.Read(fd, p.buf[:])
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			finish(&a, t0, "recv", err)
			return a
		}
		got = append(got, p.buf[:n]...)
		if pod, done, bad := loadgen.ParseReply(got); done || bad || n == 0 {
			if !done {
				finish(&a, t0, "recv", errBadReply)
				return a
			}
			a.Reply = string(pod)
			finish(&a, t0, "", nil)
			return a
		}
	}
}

// exchange sends one datagram (to dst with sendto, or on the connected
// socket when dst is invalid) and waits for the reply, recording its
// source.
func (p *prober) exchange(a *Attempt, fd int, dst netip.AddrPort, t0, deadline time.Time) {
	// Drop late replies to earlier attempts on a long-lived socket, but
	// keep the source of every late datagram: where it seems to come
	// from is what a lateReply step checks.
	for {
		n, from, err := unix.Recvfrom(fd, p.buf[:], unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			break
		}
		if bytes.Equal(p.buf[:n], LatePayload) {
			a.Late = append(a.Late, addrString(from))
		}
	}
	send := func() error {
		a.Sends++
		if dst.IsValid() {
			return unix.Sendto(fd, loadgen.UDPRequest, 0, sockaddr(dst))
		}
		_, err := unix.Write(fd, loadgen.UDPRequest)
		return err
	}
	err := send()
	a.Local = localName(fd)
	if err != nil {
		finish(a, t0, "send", err)
		return
	}
	for {
		until := deadline
		resend := p.spec.Resend > 0 && time.Now().Add(p.spec.Resend).Before(deadline)
		if resend {
			until = time.Now().Add(p.spec.Resend)
		}
		if err := wait(fd, unix.POLLIN, until); err != nil {
			if err == errProbeTimeout && resend {
				if err := send(); err != nil {
					finish(a, t0, "send", err)
					return
				}
				continue
			}
			finish(a, t0, "recv", err)
			return
		}
		n, from, err := unix.Recvfrom(fd, p.buf[:], unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			finish(a, t0, "recv", err)
			return
		}
		if bytes.Equal(p.buf[:n], LatePayload) {
			a.Late = append(a.Late, addrString(from))
			continue
		}
		a.From = addrString(from)
		a.Reply = string(bytes.TrimSpace(p.buf[:n]))
		finish(a, t0, "", nil)
		return
	}
}

func (p *prober) udp() Attempt {
	fd, dst := p.fd, p.dialed
	if fd < 0 {
		dst = p.pick()
	}
	a, t0 := begin(dst)
	if fd < 0 {
		var err error
		if fd, err = p.socket(unix.SOCK_DGRAM, dst); err != nil {
			finish(&a, t0, "socket", err)
			return a
		}
		if p.spec.LongLived {
			p.fd, p.dialed = fd, dst
		} else {
			defer unix.Close(fd)
		}
	}
	p.exchange(&a, fd, dst, t0, t0.Add(p.spec.Timeout))
	p.afterError(a)
	return a
}

// afterError drops a long-lived socket that saw an error other than a
// timeout, if the spec says the client reconnects.
func (p *prober) afterError(a Attempt) {
	if p.spec.ReconnectOnError && !a.OK() && a.Errno != ErrnoTimeout {
		p.closeSocket()
	}
}

func (p *prober) udpConnected() Attempt {
	fd, dst := p.fd, p.dialed
	if fd < 0 {
		dst = p.pick()
	}
	a, t0 := begin(dst)
	deadline := t0.Add(p.spec.Timeout)
	if fd < 0 {
		var err error
		if fd, err = p.socket(unix.SOCK_DGRAM, dst); err != nil {
			finish(&a, t0, "socket", err)
			return a
		}
		if err := connect(fd, dst, deadline); err != nil {
			a.Local = localName(fd)
			unix.Close(fd)
			finish(&a, t0, "connect", err)
			return a
		}
		if p.spec.LongLived {
			p.fd, p.dialed = fd, dst
		} else {
			defer unix.Close(fd)
		}
	}
	a.Peer = peerName(fd)
	p.exchange(&a, fd, netip.AddrPort{}, t0, deadline)
	p.afterError(a)
	return a
}

// disconnect dissolves a datagram socket's association: connect() with
// an AF_UNSPEC address.
func disconnect(fd int) error {
	var sa unix.RawSockaddrInet6 // large enough for either family
	sa.Family = unix.AF_UNSPEC
	_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if e != 0 {
		return e
	}
	return nil
}

func (p *prober) udpReconnect() []Attempt {
	dst := p.pick()
	second := p.mapped(p.spec.Second)
	a, t0 := begin(dst)
	a.Phase = "first"
	b := Attempt{Phase: "second", Dialed: second.String()}
	fail := func(stage string, err error) []Attempt {
		finish(&a, t0, stage, err)
		b.Start, b.Errno, b.Stage = a.Start, "skipped", "first phase failed"
		return []Attempt{a, b}
	}
	fd, err := p.socket(unix.SOCK_DGRAM, dst)
	if err != nil {
		return fail("socket", err)
	}
	defer unix.Close(fd)
	if err := connect(fd, dst, t0.Add(p.spec.Timeout)); err != nil {
		return fail("connect", err)
	}
	a.Peer = peerName(fd)
	p.exchange(&a, fd, netip.AddrPort{}, t0, t0.Add(p.spec.Timeout))

	b, t1 := begin(second)
	b.Phase = "second"
	if err := disconnect(fd); err != nil {
		finish(&b, t1, "disconnect", err)
		return []Attempt{a, b}
	}
	if err := connect(fd, second, t1.Add(p.spec.Timeout)); err != nil {
		finish(&b, t1, "connect", err)
		return []Attempt{a, b}
	}
	b.Peer = peerName(fd)
	p.exchange(&b, fd, netip.AddrPort{}, t1, t1.Add(p.spec.Timeout))
	return []Attempt{a, b}
}

// probeMain is the probe child: a Spec on stdin, the attempts as a
// JSON array on stdout.
func probeMain(stdin io.Reader, stdout io.Writer) error {
	var spec Spec
	if err := json.NewDecoder(stdin).Decode(&spec); err != nil {
		return fmt.Errorf("read probe spec: %w", err)
	}
	out, err := Run(spec)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(out)
}

// Process is a probe child that has been started.
type Process struct{ p *child.Process }

// Start starts a probe child forked in ns and born in the cgroup v2
// directory cgroupDir (where socket-level datapaths are attached: in a real
// cluster every pod's processes are under the attached cgroup).
func Start(ctx context.Context, ns *nsutil.NS, cgroupDir string, spec Spec) (*Process, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	p, err := child.StartRole(ctx, Role, spec, ns, cgroupDir)
	if err != nil {
		return nil, err
	}
	return &Process{p}, nil
}

// Wait waits for the probe to finish and returns its attempts.
func (p *Process) Wait() ([]Attempt, error) {
	var out []Attempt
	if err := p.p.Wait(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// Kill stops a probe that is still running and reaps it.
func (p *Process) Kill() { p.p.Kill() }

// RunProcess runs a probe child to completion.
func RunProcess(ctx context.Context, ns *nsutil.NS, cgroupDir string, spec Spec) ([]Attempt, error) {
	p, err := Start(ctx, ns, cgroupDir, spec)
	if err != nil {
		return nil, err
	}
	return p.Wait()
}
