package socketlb

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/internal/nsutil"
)

// The client side of the privileged tests is this test binary re-executed
// inside the test netns and cgroup (so the hooks see its sockets), driven
// over stdin/stdout one JSON command per line. It uses raw syscalls so that
// each test controls exactly which socket calls happen: connect vs sendto,
// AF_INET vs AF_INET6, connect(AF_UNSPEC), getpeername.

const helperEnv = "SVCLAB_SOCKETLB_TEST_CLIENT"

// clientCmd is one thing for the client to do.
type clientCmd struct {
	// Op is one of:
	//   whoami                           report the client's cgroup
	//   tcp      Net Addr [N]            N fresh TCP connections: connect, getpeername, read the backend's line
	//   udp      Net Addr [N]            N fresh unconnected UDP sockets: sendto, recvfrom
	//   open     ID Net                  create a socket and keep it as ID
	//   connect  ID Addr                 connect ID to Addr; Addr "" is connect(AF_UNSPEC)
	//   peer     ID                      getpeername
	//   read     ID                      read the backend's line from a TCP socket
	//   sendto   ID Addr [N]             N times: sendto Addr, recvfrom
	//   send     ID [N]                  N times: send on a connected socket, recvfrom
	//   sendonly ID Addr                 sendto without waiting for the reply
	//   recv     ID                      recvfrom
	//   soerror  ID                      getsockopt(SO_ERROR)
	//   close    ID
	//   pairs    Net Addr Addr2 N        N fresh UDP sockets each: sendto+recvfrom Addr, then Addr2
	//   loop     Addr Addr2 Ms           for Ms milliseconds, alternate a fresh TCP connection to
	//                                    Addr and a fresh UDP exchange with Addr2 (IPv4)
	Op    string `json:"op"`
	ID    string `json:"id,omitempty"`
	Net   string `json:"net,omitempty"`
	Addr  string `json:"addr,omitempty"`
	Addr2 string `json:"addr2,omitempty"`
	N     int    `json:"n,omitempty"`
	Ms    int    `json:"ms,omitempty"`
}

// clientRes is the outcome of one command. Single operations fill Errno,
// Reply, Peer and From; repeated ones count them in the maps (an error is
// counted in Errors under its errno name or message).
type clientRes struct {
	Cgroup  string         `json:"cgroup,omitempty"`
	Errno   syscall.Errno  `json:"errno,omitempty"`
	Err     string         `json:"err,omitempty"`
	Reply   string         `json:"reply,omitempty"`
	Peer    string         `json:"peer,omitempty"`
	From    string         `json:"from,omitempty"`
	Elapsed time.Duration  `json:"elapsed"`
	Replies map[string]int `json:"replies,omitempty"`
	Peers   map[string]int `json:"peers,omitempty"`
	Froms   map[string]int `json:"froms,omitempty"`
	Errors  map[string]int `json:"errors,omitempty"`
}

// TestHelperProcess is the client. It does nothing in a normal test run.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		return
	}
	h := &helper{socks: map[string]int{}}
	sc := bufio.NewScanner(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var c clientCmd
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			fmt.Fprintln(os.Stderr, "bad command:", err)
			os.Exit(2)
		}
		start := time.Now()
		r := h.do(c)
		r.Elapsed = time.Since(start)
		if err := enc.Encode(r); err != nil {
			os.Exit(2)
		}
	}
	// Exit before the testing package prints its own summary to stdout.
	os.Exit(0)
}

type helper struct {
	socks map[string]int
}

func (h *helper) do(c clientCmd) (r clientRes) {
	fail := func(err error) clientRes {
		r.Err = err.Error()
		errors.As(err, &r.Errno)
		return r
	}
	fd, haveFD := h.socks[c.ID]
	if c.ID != "" && c.Op != "open" && !haveFD {
		return fail(fmt.Errorf("no socket %q", c.ID))
	}
	n := max(c.N, 1)
	switch c.Op {
	case "whoami":
		r.Cgroup = ownCgroup()
	case "tcp":
		for range n {
			reply, peer, err := tcpExchange(c.Net, c.Addr)
			r.count(reply, peer, "", err)
		}
	case "udp":
		for range n {
			reply, from, err := udpExchange(c.Net, c.Addr)
			r.count(reply, "", from, err)
		}
	case "pairs":
		for range n {
			fd, err := openSocket(c.Net)
			if err != nil {
				r.count("", "", "", err)
				continue
			}
			for _, a := range []string{c.Addr, c.Addr2} {
				reply, from, err := sendRecv(fd, c.Net, a)
				r.count(reply, "", from, err)
			}
			unix.Close(fd)
		}
	case "loop":
		deadline := time.Now().Add(time.Duration(c.Ms) * time.Millisecond)
		for time.Now().Before(deadline) {
			reply, peer, err := tcpExchange("tcp4", c.Addr)
			r.count("tcp "+reply, peer, "", err)
			reply, from, err := udpExchange("udp4", c.Addr2)
			r.count("udp "+reply, "", from, err)
		}
	case "open":
		fd, err := openSocket(c.Net)
		if err != nil {
			return fail(err)
		}
		h.socks[c.ID] = fd
	case "connect":
		if c.Addr == "" {
			if err := connectUnspec(fd); err != nil {
				return fail(err)
			}
			break
		}
		if err := connectTo(fd, c.Addr); err != nil {
			return fail(err)
		}
		p, err := peerOf(fd)
		if err != nil {
			return fail(err)
		}
		r.Peer = p
	case "peer":
		p, err := peerOf(fd)
		if err != nil {
			return fail(err)
		}
		r.Peer = p
	case "read":
		reply, err := readLine(fd)
		if err != nil {
			return fail(err)
		}
		r.Reply = reply
	case "sendto":
		for range n {
			reply, from, err := sendRecv(fd, "", c.Addr)
			r.one(reply, from, err, n)
		}
	case "send":
		for range n {
			reply, from, err := sendRecv(fd, "", "")
			r.one(reply, from, err, n)
		}
	case "sendonly":
		if err := sendTo(fd, c.Addr); err != nil {
			return fail(err)
		}
	case "recv":
		reply, from, err := recvFrom(fd)
		if err != nil {
			return fail(err)
		}
		r.Reply, r.From = reply, from
	case "soerror":
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return fail(err)
		}
		if v != 0 {
			return fail(syscall.Errno(v))
		}
	case "close":
		unix.Close(fd)
		delete(h.socks, c.ID)
	default:
		return fail(fmt.Errorf("unknown op %q", c.Op))
	}
	return r
}

// one records a single result directly and, for N > 1, also counts it.
func (r *clientRes) one(reply, from string, err error, n int) {
	if n > 1 {
		r.count(reply, "", from, err)
		return
	}
	r.Reply, r.From = reply, from
	if err != nil {
		r.Err = err.Error()
		errors.As(err, &r.Errno)
	}
}

func (r *clientRes) count(reply, peer, from string, err error) {
	inc := func(m *map[string]int, k string) {
		if *m == nil {
			*m = map[string]int{}
		}
		(*m)[k]++
	}
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			inc(&r.Errors, unix.ErrnoName(errno))
		} else {
			inc(&r.Errors, err.Error())
		}
		return
	}
	inc(&r.Replies, reply)
	if peer != "" {
		inc(&r.Peers, peer)
	}
	if from != "" {
		inc(&r.Froms, from)
	}
}

func ownCgroup() string {
	raw, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err.Error()
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

// ioTimeout bounds every blocking step of the client.
const ioTimeout = 2 * time.Second

// Sockets are non-blocking and every wait is a poll(2) that is retried on
// EINTR: the Go runtime's preemption signals would otherwise surface as
// EINTR from calls that have a socket timeout.
func openSocket(network string) (int, error) {
	fam, typ := unix.AF_INET, unix.SOCK_DGRAM
	if strings.HasSuffix(network, "6") {
		fam = unix.AF_INET6
	}
	if strings.HasPrefix(network, "tcp") {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	return fd, nil
}

// wait polls fd for events until ioTimeout; ETIMEDOUT when nothing came.
func wait(fd int, events int16) error {
	deadline := time.Now().Add(ioTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: events}}, int(left.Milliseconds())+1)
		switch {
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return err
		case n > 0:
			return nil
		}
	}
}

// retry runs a non-blocking call until it stops asking to wait.
func retry(fd int, events int16, call func() error) error {
	for {
		err := call()
		switch {
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if err := wait(fd, events); err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// sockaddrFor builds the sockaddr of the socket's own family: an AF_INET6
// socket gets IPv4 addresses in their v4-mapped form.
func sockaddrFor(fd int, s string) (unix.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, err
	}
	if _, v4 := sa.(*unix.SockaddrInet4); v4 {
		a := ap.Addr().Unmap()
		if !a.Is4() {
			return nil, fmt.Errorf("%s on an AF_INET socket", s)
		}
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}, nil
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, nil
}

// fmtSockaddr keeps v4-mapped addresses mapped: the tests check exactly
// what the application sees.
func fmtSockaddr(sa unix.Sockaddr) string {
	switch v := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(v.Addr), uint16(v.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(v.Addr), uint16(v.Port)).String()
	default:
		return fmt.Sprintf("%T", sa)
	}
}

func connectTo(fd int, addr string) error {
	sa, err := sockaddrFor(fd, addr)
	if err != nil {
		return err
	}
	err = unix.Connect(fd, sa)
	for errors.Is(err, unix.EINTR) {
		err = unix.Connect(fd, sa)
	}
	if errors.Is(err, unix.EINPROGRESS) {
		if err = wait(fd, unix.POLLOUT); err == nil {
			var v int
			if v, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
				err = syscall.Errno(v)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("connect %s: %w", addr, err)
	}
	return nil
}

// connectUnspec dissolves a socket's association: connect(AF_UNSPEC).
func connectUnspec(fd int) error {
	var sa unix.RawSockaddr
	sa.Family = unix.AF_UNSPEC
	_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if e != 0 {
		return fmt.Errorf("connect AF_UNSPEC: %w", e)
	}
	return nil
}

func peerOf(fd int) (string, error) {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "", fmt.Errorf("getpeername: %w", err)
	}
	return fmtSockaddr(sa), nil
}

func readLine(fd int) (string, error) {
	var out []byte
	buf := make([]byte, 256)
	for {
		var n int
		err := retry(fd, unix.POLLIN, func() (err error) {
			n, err = unix.Read(fd, buf)
			return err
		})
		if err != nil {
			return "", fmt.Errorf("read: %w", err)
		}
		out = append(out, buf[:n]...)
		if n == 0 || strings.Contains(string(out), "\n") {
			return strings.TrimSpace(string(out)), nil
		}
	}
}

func tcpExchange(network, addr string) (reply, peer string, err error) {
	fd, err := openSocket(network)
	if err != nil {
		return "", "", err
	}
	defer unix.Close(fd)
	if err := connectTo(fd, addr); err != nil {
		return "", "", err
	}
	if peer, err = peerOf(fd); err != nil {
		return "", "", err
	}
	reply, err = readLine(fd)
	return reply, peer, err
}

func udpExchange(network, addr string) (reply, from string, err error) {
	fd, err := openSocket(network)
	if err != nil {
		return "", "", err
	}
	defer unix.Close(fd)
	return sendRecv(fd, network, addr)
}

func sendTo(fd int, addr string) error {
	sa, err := sockaddrFor(fd, addr)
	if err != nil {
		return err
	}
	if err := retry(fd, unix.POLLOUT, func() error { return unix.Sendto(fd, []byte("ping"), 0, sa) }); err != nil {
		return fmt.Errorf("sendto %s: %w", addr, err)
	}
	return nil
}

func recvFrom(fd int) (reply, from string, err error) {
	buf := make([]byte, 256)
	var n int
	var sa unix.Sockaddr
	err = retry(fd, unix.POLLIN, func() (err error) {
		n, sa, err = unix.Recvfrom(fd, buf, 0)
		return err
	})
	if err != nil {
		return "", "", fmt.Errorf("recvfrom: %w", err)
	}
	return strings.TrimSpace(string(buf[:n])), fmtSockaddr(sa), nil
}

// sendRecv sends one datagram (to addr, or on the connected socket when
// addr is empty) and waits for the reply.
func sendRecv(fd int, _ string, addr string) (reply, from string, err error) {
	if addr == "" {
		err := retry(fd, unix.POLLOUT, func() error {
			_, err := unix.Write(fd, []byte("ping"))
			return err
		})
		if err != nil {
			return "", "", fmt.Errorf("send: %w", err)
		}
	} else if err := sendTo(fd, addr); err != nil {
		return "", "", err
	}
	return recvFrom(fd)
}

// client drives one helper process.
type client struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
}

// startClient runs a helper process inside ns and cg; it is stopped at the
// end of the test.
func startClient(t *testing.T, ns *nsutil.NS, cg *testCgroup) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, ns.Start(cmd, cg.fd))
	t.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("client process: %v; stderr: %s", err, stderr.String())
		}
		cancel()
	})
	c := &client{t: t, in: in, out: bufio.NewScanner(out)}
	c.out.Buffer(make([]byte, 1<<20), 1<<20)
	r := c.do(clientCmd{Op: "whoami"})
	require.Equal(t, "/"+filepath.Base(cg.path), r.Cgroup, "client must run inside the test cgroup")
	return c
}

// do runs one command and returns its result.
func (c *client) do(cmd clientCmd) clientRes {
	c.t.Helper()
	return c.start(cmd)()
}

// start sends a command and returns a function that waits for its result,
// so the test can act while a long command runs.
func (c *client) start(cmd clientCmd) func() clientRes {
	c.t.Helper()
	raw, err := json.Marshal(cmd)
	require.NoError(c.t, err)
	_, err = c.in.Write(append(raw, '\n'))
	require.NoError(c.t, err, "send %s to the client", cmd.Op)
	return func() clientRes {
		c.t.Helper()
		require.True(c.t, c.out.Scan(), "client died during %s: %v", cmd.Op, c.out.Err())
		var r clientRes
		require.NoError(c.t, json.Unmarshal(c.out.Bytes(), &r))
		return r
	}
}
