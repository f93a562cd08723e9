package harness

import (
	"bufio"
	"bytes"
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
)

// startLocalServer runs the event-driven server in this process, on
// loopback in the test's own namespace (no privilege needed), with one
// listener per pod on a free port.
func startLocalServer(t *testing.T, loops int, pods ...string) *server {
	t.Helper()
	spec := ServerSpec{Loops: loops}
	for _, p := range pods {
		spec.Listeners = append(spec.Listeners, Listener{Pod: p, Addr: "127.0.0.1:0"})
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
		{"IPv6", ServerSpec{Listeners: []Listener{{Pod: "a", Addr: "[::1]:80"}}}, "listeners[0].addr"},
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
	_, err = c.Write(request)
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
