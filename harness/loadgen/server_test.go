package loadgen

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/harness/internal/harnesstest"
	"svclab/internal/nsutil"
)

// startLocalServer runs the event-driven server in this process, on
// loopback in the test's own namespace (no privilege needed), with one
// listener per pod on a free port.
func startLocalServer(t *testing.T, loops int, pods ...string) *server {
	t.Helper()
	return startLocalServerAt(t, "127.0.0.1:0", loops, pods...)
}

// startLocalServerAt is startLocalServer on addr ("[::1]:0" for IPv6
// loopback; the test is skipped where this namespace has no ::1).
func startLocalServerAt(t *testing.T, addr string, loops int, pods ...string) *server {
	t.Helper()
	if netip.MustParseAddrPort(addr).Addr().Is6() {
		if c, err := net.ListenPacket("udp6", addr); err != nil {
			t.Skipf("no IPv6 loopback here: %v", err)
		} else {
			c.Close()
		}
	}
	spec := ServerSpec{Loops: loops}
	for _, p := range pods {
		spec.Listeners = append(spec.Listeners, Listener{Pod: p, Addr: addr})
	}
	s, err := newServer(spec)
	require.NoError(t, err)
	s.start()
	t.Cleanup(s.close)
	return s
}

// The TCP reply is valid HTTP/1.1 (so curl or wrk can be pointed at a
// service) and names the pod in a header and in the body.
func TestResponseIsHTTP(t *testing.T) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(Response("backend-07"))), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode)
	assert.True(t, resp.Close, "Connection: close")
	assert.Equal(t, "backend-07", resp.Header.Get("X-Svclab-Pod"))
	assert.Equal(t, "backend-07\n", string(body))
	assert.Equal(t, []byte("backend-07\n"), UDPResponse("backend-07"))
}

func TestScanBlankLine(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   uint8
	}{
		{"whole request", []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}, 4},
		{"split in the terminator", []string{"GET / HTTP/1.1\r\n", "Host: x\r", "\n\r", "\n"}, 4},
		{"one byte at a time", strings.Split("GET /\r\n\r\n", ""), 4},
		{"stray CR before the terminator", []string{"a\r\r\n\r\n"}, 4},
		{"only one line end", []string{"GET / HTTP/1.1\r\n"}, 2},
		{"LF LF is not a blank line", []string{"GET /\n\n"}, 0},
		{"CR LF CR then other", []string{"a\r\n\rb"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m uint8
			for _, c := range tt.chunks {
				if m == 4 {
					break
				}
				m = scanBlankLine([]byte(c), m)
			}
			assert.Equal(t, tt.want, m)
		})
	}
}

func TestNewServerBadSpec(t *testing.T) {
	tests := []struct {
		name string
		spec ServerSpec
		want string
	}{
		{"no listeners", ServerSpec{}, "listeners: none given"},
		{"not ip:port", ServerSpec{Listeners: []Listener{{Pod: "a", Addr: "127.0.0.1"}}}, "listeners[0].addr"},
		{"IPv6 without brackets", ServerSpec{Listeners: []Listener{{Pod: "a", Addr: "::1:80"}}}, "listeners[0].addr"},
		{"IPv6 zone", ServerSpec{Listeners: []Listener{{Pod: "a", Addr: "[fe80::1%lo]:80"}}}, "listeners[0].addr \"[fe80::1%lo]:80\": IPv6 zone not supported"},
		{"missing netns", ServerSpec{Listeners: []Listener{{Pod: "a", Addr: "127.0.0.1:0", NetNS: "svclab-test-does-not-exist"}}}, "listeners[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newServer(tt.spec)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// tcpState returns the state (hex, as in /proc/net/tcp: 06 is TIME_WAIT)
// of the socket with this local and remote address in the calling
// thread's namespace, or "" if there is none.
func tcpState(t *testing.T, local, remote netip.AddrPort) string {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/net/tcp")
	require.NoError(t, err)
	hex := func(ap netip.AddrPort) string {
		a := ap.Addr().As4()
		// /proc/net/tcp prints the address as a host-order (little-endian)
		// 32-bit number and the port in plain hex.
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[1] == hex(local) && f[2] == hex(remote) {
			return f[3]
		}
	}
	return ""
}

// The server answers once the blank line has arrived (not before), then
// waits for the client to close first and only then closes: TIME_WAIT ends
// up on the client's side of the connection.
func TestServerTCPClientClosesFirst(t *testing.T) {
	s := startLocalServer(t, 2, "pod-a", "pod-b")
	for i, pod := range []string{"pod-a", "pod-b"} {
		t.Run(pod, func(t *testing.T) {
			c, err := net.Dial("tcp4", s.addrs[i].String())
			require.NoError(t, err)
			defer c.Close()
			// The request arrives in pieces: no reply before the blank line.
			_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n"))
			require.NoError(t, err)
			require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
			_, err = c.Read(make([]byte, 1))
			require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the server answered before the request was complete")
			_, err = c.Write([]byte("\r\n"))
			require.NoError(t, err)
			require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
			r := bufio.NewReader(c)
			resp, err := http.ReadResponse(r, nil)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, pod+"\n", string(body))
			// The reply is complete, yet the server must not close.
			require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
			_, err = r.ReadByte()
			assert.ErrorIs(t, err, os.ErrDeadlineExceeded, "the server closed first (want: it waits for the client's EOF)")

			local := netip.MustParseAddrPort(c.LocalAddr().String())
			require.NoError(t, c.Close())
			// The server reads EOF and closes; our socket goes through
			// FIN_WAIT_2 to TIME_WAIT, and the server's side vanishes.
			var mine, theirs string
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				mine, theirs = tcpState(t, local, s.addrs[i]), tcpState(t, s.addrs[i], local)
				if mine == "06" && theirs == "" {
					break
				}
			}
			assert.Equal(t, "06", mine, "client side should be in TIME_WAIT")
			assert.Empty(t, theirs, "server side should be gone")
		})
	}
}

// A client that half-closes after its request still gets the reply.
func TestServerTCPHalfClose(t *testing.T) {
	s := startLocalServer(t, 1, "pod-a")
	c, err := net.Dial("tcp4", s.addrs[0].String())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write(Request)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, string(Response("pod-a")), string(b))
}

// Every datagram is answered with the pod's name, from the address and
// port it was sent to.
func TestServerUDP(t *testing.T) {
	s := startLocalServer(t, 2, "pod-a", "pod-b")
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	for i, pod := range []string{"pod-a", "pod-b"} {
		for j := range 3 {
			t.Run(pod+"/"+strconv.Itoa(j), func(t *testing.T) {
				_, err := c.WriteToUDPAddrPort([]byte("hello"), s.addrs[i])
				require.NoError(t, err)
				require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
				buf := make([]byte, 100)
				n, from, err := c.ReadFromUDPAddrPort(buf)
				require.NoError(t, err)
				assert.Equal(t, pod+"\n", string(buf[:n]))
				assert.Equal(t, s.addrs[i], from)
			})
		}
	}
}

// An IPv6 listener is an IPv6-only socket bound to its address, and an
// IPv4-mapped address means the IPv4 one.
func TestListenAddr(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"10.244.0.5:8080", "10.244.0.5:8080"},
		{"[fd00::5]:8080", "[fd00::5]:8080"},
		{"[::ffff:10.244.0.5]:8080", "10.244.0.5:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ap, err := listenAddr(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, ap.String())
		})
	}
}

// newV6Namespace creates a namespace for the test with fd00::5 and fd00::6
// on its loopback (no DAD: usable at once), removed at the end of the test.
// It skips when the kernel has no IPv6.
func newV6Namespace(t *testing.T) *nsutil.NS {
	t.Helper()
	harnesstest.RequireRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns, err := nsutil.Create("svclab-test-" + hex.EncodeToString(b))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	h, err := ns.NetlinkHandle()
	require.NoError(t, err)
	defer h.Close()
	lo, err := h.LinkByName("lo")
	require.NoError(t, err)
	for _, a := range []string{"fd00::5/128", "fd00::6/128"} {
		ipn, err := netlink.ParseIPNet(a)
		require.NoError(t, err)
		err = h.AddrAdd(lo, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD})
		if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EACCES) {
			t.Skipf("kernel without IPv6 (adding %s to lo: %v)", a, err)
		}
		require.NoError(t, err, "add %s to lo", a)
	}
	// The kernel makes a new IPv6 address local (its route in the local
	// table) from a workqueue, after AddrAdd returns; a datagram sent
	// before that is lost. Wait until both addresses route locally.
	require.Eventually(t, func() bool {
		for _, a := range []string{"fd00::5", "fd00::6"} {
			rs, err := h.RouteGet(net.ParseIP(a))
			if err != nil || len(rs) == 0 || rs[0].Type != unix.RTN_LOCAL {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond, "fd00::5 and fd00::6 never became local addresses")
	return ns
}

// A pod's IPv6 listener answers TCP and UDP over IPv6, and every UDP reply
// comes from the address and port the datagram was sent to: two pods share
// a port on two addresses of one namespace, next to an IPv4 listener on
// that port, all served by the same loops (whose batch buffers then hold
// sockaddrs of both families).
func TestPrivilegedServerIPv6(t *testing.T) {
	ns := newV6Namespace(t)
	pods := []struct{ pod, addr string }{
		{"pod-a", "[fd00::5]:5353"},
		{"pod-b", "[fd00::6]:5353"},
		{"pod-c", "127.0.0.1:5353"},
	}
	spec := ServerSpec{Loops: 2}
	for _, p := range pods {
		spec.Listeners = append(spec.Listeners, Listener{Pod: p.pod, NetNS: ns.Name, Addr: p.addr})
	}
	s, err := newServer(spec)
	require.NoError(t, err)
	s.start()
	t.Cleanup(s.close)
	for i, p := range pods {
		require.Equal(t, p.addr, s.addrs[i].String())
	}

	// The client sockets are created in the namespace; once created they
	// can be used from any thread.
	var udp4, udp6 *net.UDPConn
	require.NoError(t, ns.Do(func() error {
		var err error
		if udp6, err = net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6unspecified}); err != nil {
			return err
		}
		udp4, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
		return err
	}))
	defer udp6.Close()
	defer udp4.Close()

	for _, p := range pods {
		dst := netip.MustParseAddrPort(p.addr)
		t.Run("udp/"+p.pod, func(t *testing.T) {
			c := udp4
			if dst.Addr().Is6() {
				c = udp6
			}
			// A few datagrams at once, so that a recvmmsg batch may hold
			// more than one.
			for range 4 {
				_, err := c.WriteToUDPAddrPort([]byte("hello"), dst)
				require.NoError(t, err)
			}
			for range 4 {
				require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
				buf := make([]byte, 100)
				n, from, err := c.ReadFromUDPAddrPort(buf)
				require.NoError(t, err)
				assert.Equal(t, p.pod+"\n", string(buf[:n]))
				assert.Equal(t, dst, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), "reply source")
			}
		})
		t.Run("tcp/"+p.pod, func(t *testing.T) {
			var c net.Conn
			require.NoError(t, ns.Do(func() error {
				var err error
				c, err = net.Dial("tcp", dst.String())
				return err
			}))
			defer c.Close()
			_, err := c.Write(Request)
			require.NoError(t, err)
			require.NoError(t, c.(*net.TCPConn).CloseWrite())
			require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
			b, err := io.ReadAll(c)
			require.NoError(t, err)
			assert.Equal(t, string(Response(p.pod)), string(b))
			assert.Equal(t, dst.String(), c.RemoteAddr().String())
		})
	}
}

// With port 0, an IPv6 listener picks one port free for TCP and UDP, and
// the IPv6 sockets leave the IPv4 side of that port alone (IPV6_V6ONLY): a
// plain IPv4 wildcard socket (no SO_REUSEPORT, which would let it share
// the port anyway) still binds it.
func TestPrivilegedServerIPv6OnlyAndPickedPort(t *testing.T) {
	ns := newV6Namespace(t)
	s, err := newServer(ServerSpec{Loops: 2, Listeners: []Listener{{Pod: "pod-a", NetNS: ns.Name, Addr: "[::]:0"}}})
	require.NoError(t, err)
	t.Cleanup(s.close)
	picked := s.addrs[0]
	require.True(t, picked.Addr().Is6())
	require.NotZero(t, picked.Port())
	v4 := fmt.Sprintf("0.0.0.0:%d", picked.Port())
	require.NoError(t, ns.Do(func() error {
		l, err := net.Listen("tcp4", v4)
		if err != nil {
			return fmt.Errorf("the IPv6 listener took the IPv4 TCP port: %w", err)
		}
		l.Close()
		c, err := net.ListenPacket("udp4", v4)
		if err != nil {
			return fmt.Errorf("the IPv6 listener took the IPv4 UDP port: %w", err)
		}
		return c.Close()
	}))
}

// Without extra endpoints a backend listens on its own addresses, as
// before; with them its IPv4 listener is the namespace's wildcard (which
// takes the AnyIP addresses too) and its IPv6 listener stays as it was.
func TestBackendListenersExtraEndpoints(t *testing.T) {
	pod := datapath.Pod{Name: "backend-00", Addr: netip.MustParseAddr("10.244.0.2"), Addr6: netip.MustParseAddr("fd00::2"),
		NS: &nsutil.NS{Name: "svclab-x-backend-00"}}
	tests := []struct {
		anyAddr bool
		want    []Listener
	}{
		{false, []Listener{
			{Pod: pod.Name, NetNS: pod.NS.Name, Addr: "10.244.0.2:8080"},
			{Pod: pod.Name, NetNS: pod.NS.Name, Addr: "[fd00::2]:8080"},
		}},
		{true, []Listener{
			{Pod: pod.Name, NetNS: pod.NS.Name, Addr: "0.0.0.0:8080"},
			{Pod: pod.Name, NetNS: pod.NS.Name, Addr: "[fd00::2]:8080"},
		}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("anyAddr=%v", tt.anyAddr), func(t *testing.T) {
			assert.Equal(t, tt.want, BackendListeners([]datapath.Pod{pod}, 8080, tt.anyAddr).Listeners)
		})
	}
}
