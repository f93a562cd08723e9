package userspace

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/datapath"
)

// These tests run the proxy in-process on loopback addresses (all of
// 127.0.0.0/8 is local), so they need no privilege: the privileged tests in
// userspace_test.go run the same code as a child process in a topology.

// tcpBackend is a loopback backend that answers each connection with its
// name and then waits for the client to close, recording that it saw EOF.
type tcpBackend struct {
	name string
	addr netip.AddrPort
	ln   net.Listener
	eof  chan struct{}
}

func startTCPBackend(t *testing.T, name, ip string, closeFirst bool) *tcpBackend {
	t.Helper()
	ln, err := net.Listen("tcp4", ip+":0")
	require.NoError(t, err)
	b := &tcpBackend{name: name, addr: netip.MustParseAddrPort(ln.Addr().String()), ln: ln, eof: make(chan struct{}, 100)}
	t.Cleanup(func() { _ = ln.Close() })
	go baselinetest.ServeTCP(ln, func(c net.Conn) {
		if _, err := c.Write([]byte(b.name + "\n")); err != nil {
			return
		}
		if closeFirst {
			return
		}
		if _, err := io.Copy(io.Discard, c); err == nil {
			b.eof <- struct{}{}
		}
	})
	return b
}

// freeAddr returns a loopback address and port nothing listens on.
func freeAddr(t *testing.T, network, ip string) netip.AddrPort {
	t.Helper()
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp4", ip+":0")
		require.NoError(t, err)
		defer ln.Close()
		return netip.MustParseAddrPort(ln.Addr().String())
	default:
		c, err := net.ListenPacket("udp4", ip+":0")
		require.NoError(t, err)
		defer c.Close()
		return netip.MustParseAddrPort(c.LocalAddr().String())
	}
}

func newTestProxy(t *testing.T) *proxy {
	t.Helper()
	p := newProxy()
	t.Cleanup(p.closeAll)
	return p
}

// fetch connects to vip, reads the backend's name and closes first.
func fetch(t *testing.T, vip netip.AddrPort) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp4", vip.String(), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func addrs(bs []*tcpBackend) []netip.AddrPort {
	var out []netip.AddrPort
	for _, b := range bs {
		out = append(out, b.addr)
	}
	return out
}

// Sequential connections go to the backends strictly in turn.
func TestProxyTCPRoundRobin(t *testing.T) {
	var bs []*tcpBackend
	for i := range 12 {
		bs = append(bs, startTCPBackend(t, fmt.Sprintf("b%02d", i), fmt.Sprintf("127.0.1.%d", i+1), false))
	}
	vip := freeAddr(t, "tcp", "127.0.0.1")
	p := newTestProxy(t)
	require.NoError(t, p.apply([]frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: addrs(bs)}}))
	got := map[string]int{}
	var order []string
	for range 24 {
		name, err := fetch(t, vip)
		require.NoError(t, err)
		got[name]++
		order = append(order, name)
	}
	for _, b := range bs {
		assert.Equal(t, 2, got[b.name], "connections to %s", b.name)
	}
	assert.Equal(t, order[:12], order[12:], "round robin repeats the same order")
}

// A FIN passes through the proxy in both directions: the client's close
// reaches the backend as EOF, and a backend that closes first is seen by
// the client as EOF after the reply.
func TestProxyTCPHalfClose(t *testing.T) {
	t.Run("client closes first", func(t *testing.T) {
		b := startTCPBackend(t, "b", "127.0.2.1", false)
		vip := freeAddr(t, "tcp", "127.0.0.1")
		p := newTestProxy(t)
		require.NoError(t, p.apply([]frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: []netip.AddrPort{b.addr}}}))
		name, err := fetch(t, vip)
		require.NoError(t, err)
		assert.Equal(t, "b", name)
		select {
		case <-b.eof:
		case <-time.After(5 * time.Second):
			t.Fatal("the backend did not see the client's close as EOF")
		}
	})
	t.Run("client half-closes and still reads", func(t *testing.T) {
		// An echo backend that replies only after the client's FIN: the
		// reply must still come back over the half-open connection.
		ln, err := net.Listen("tcp4", "127.0.2.2:0")
		require.NoError(t, err)
		t.Cleanup(func() { _ = ln.Close() })
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			data, _ := io.ReadAll(c)
			_, _ = c.Write(append([]byte("echo:"), data...))
		}()
		vip := freeAddr(t, "tcp", "127.0.0.1")
		p := newTestProxy(t)
		require.NoError(t, p.apply([]frontend{{Name: "echo", Protocol: datapath.TCP, VIP: vip, Backends: []netip.AddrPort{netip.MustParseAddrPort(ln.Addr().String())}}}))
		c, err := net.Dial("tcp4", vip.String())
		require.NoError(t, err)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Write([]byte("hello"))
		require.NoError(t, err)
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
		reply, err := io.ReadAll(c)
		require.NoError(t, err, "reading until the backend's close arrives as EOF")
		assert.Equal(t, "echo:hello", string(reply))
	})
	t.Run("backend closes first", func(t *testing.T) {
		b := startTCPBackend(t, "b", "127.0.2.3", true)
		vip := freeAddr(t, "tcp", "127.0.0.1")
		p := newTestProxy(t)
		require.NoError(t, p.apply([]frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: []netip.AddrPort{b.addr}}}))
		c, err := net.Dial("tcp4", vip.String())
		require.NoError(t, err)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		all, err := io.ReadAll(c)
		require.NoError(t, err, "the backend's close must reach the client as EOF")
		assert.Equal(t, "b\n", string(all))
	})
}

// A frontend without backends has no socket: the kernel refuses. Adding a
// backend opens it, removing it closes it again.
func TestProxyNoBackendsRefuses(t *testing.T) {
	b := startTCPBackend(t, "b", "127.0.3.1", false)
	vip := freeAddr(t, "tcp", "127.0.0.1")
	p := newTestProxy(t)
	steps := []struct {
		name     string
		backends []netip.AddrPort
		refused  bool
	}{
		{"no endpoints", nil, true},
		{"one endpoint", []netip.AddrPort{b.addr}, false},
		{"endpoint removed", nil, true},
	}
	for _, s := range steps {
		require.NoError(t, p.apply([]frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: s.backends}}), s.name)
		_, err := fetch(t, vip)
		if s.refused {
			assert.ErrorIs(t, err, syscall.ECONNREFUSED, s.name)
			assert.Equal(t, 0, p.listening(), s.name)
		} else {
			assert.NoError(t, err, s.name)
			assert.Equal(t, 1, p.listening(), s.name)
		}
	}
}

// After an apply that drops a backend, no new connection reaches it, and
// a backend that refuses is skipped for the next one.
func TestProxyApplyChangesBackends(t *testing.T) {
	var bs []*tcpBackend
	for i := range 3 {
		bs = append(bs, startTCPBackend(t, fmt.Sprintf("b%d", i), fmt.Sprintf("127.0.4.%d", i+1), false))
	}
	vip := freeAddr(t, "tcp", "127.0.0.1")
	p := newTestProxy(t)
	require.NoError(t, p.apply([]frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: addrs(bs)}}))
	require.NoError(t, p.apply([]frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: addrs(bs[:2])}}))
	got := map[string]int{}
	for range 20 {
		name, err := fetch(t, vip)
		require.NoError(t, err)
		got[name]++
	}
	assert.Equal(t, map[string]int{"b0": 10, "b1": 10}, got)

	dead := freeAddr(t, "tcp", "127.0.4.9")
	require.NoError(t, p.apply([]frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: []netip.AddrPort{dead, bs[2].addr}}}))
	for range 4 {
		name, err := fetch(t, vip)
		require.NoError(t, err, "a refused dial is retried on the next backend")
		assert.Equal(t, "b2", name)
	}
}

// udpEcho is a loopback UDP backend answering "name:payload".
func startUDPEcho(t *testing.T, name, ip string) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ip+":0")))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(append([]byte(name+":"), buf[:n]...), from)
		}
	}()
	return netip.MustParseAddrPort(c.LocalAddr().String())
}

// exchange sends msg to vip from c and returns the reply and its source.
func exchange(t *testing.T, c *net.UDPConn, vip netip.AddrPort, msg string) (string, netip.AddrPort, error) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte(msg), vip); err != nil {
		return "", netip.AddrPort{}, err
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 65536)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return string(buf[:n]), from, err
}

// Each client socket gets its own session with its own backend (round
// robin), keeps it while it talks, and every reply comes from the VIP.
func TestProxyUDP(t *testing.T) {
	var backends []netip.AddrPort
	for i := range 4 {
		backends = append(backends, startUDPEcho(t, fmt.Sprintf("u%d", i), fmt.Sprintf("127.0.5.%d", i+1)))
	}
	vip := freeAddr(t, "udp", "127.0.0.1")
	p := newTestProxy(t)
	require.NoError(t, p.apply([]frontend{{Name: "dns", Protocol: datapath.UDP, VIP: vip, Backends: backends}}))

	seen := map[string]bool{}
	for i := range 4 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		defer c.Close()
		reply, from, err := exchange(t, c, vip, fmt.Sprintf("q%d", i))
		require.NoError(t, err)
		assert.Equal(t, vip, from, "the reply must come from the VIP")
		backend, payload, _ := strings.Cut(reply, ":")
		assert.Equal(t, fmt.Sprintf("q%d", i), payload)
		seen[backend] = true
		// Within the idle timeout the same client stays on its backend.
		again, _, err := exchange(t, c, vip, "again")
		require.NoError(t, err)
		assert.Equal(t, backend+":again", again, "a session keeps its backend")
	}
	assert.Len(t, seen, 4, "four clients, four backends in turn: %v", seen)

	// Large datagrams pass whole.
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	big := strings.Repeat("x", 2000)
	reply, _, err := exchange(t, c, vip, big)
	require.NoError(t, err)
	_, payload, _ := strings.Cut(reply, ":")
	assert.Equal(t, big, payload)

	// A session idles out: its backend socket is closed.
	f := p.listeners[frontendKey{datapath.UDP, vip}].(*udpFrontend)
	assert.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.sessions) == 0
	}, 5*time.Second, 20*time.Millisecond, "sessions must end after %v idle", udpIdleTimeout)

	// No backend: the socket is closed and the kernel answers with port
	// unreachable, which a connected socket reports as ECONNREFUSED.
	require.NoError(t, p.apply([]frontend{{Name: "dns", Protocol: datapath.UDP, VIP: vip}}))
	cc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(vip))
	require.NoError(t, err)
	defer cc.Close()
	_, err = cc.Write([]byte("q"))
	require.NoError(t, err)
	_ = cc.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = cc.Read(make([]byte, 100))
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
}

// ProxyMain speaks the line protocol: a ready ack, one ack per config
// (with the error of a frontend it cannot open), and a clean exit at EOF
// that closes every socket.
func TestProxyMainProtocol(t *testing.T) {
	b := startTCPBackend(t, "b", "127.0.6.1", false)
	vip := freeAddr(t, "tcp", "127.0.0.1")
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var mainErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		mainErr = ProxyMain(inR, outW)
		_ = outW.Close()
	}()
	acks := json.NewDecoder(outR)
	next := func() proxyAck {
		var a proxyAck
		require.NoError(t, acks.Decode(&a))
		return a
	}
	send := func(cfg proxyConfig) {
		line, err := json.Marshal(cfg)
		require.NoError(t, err)
		_, err = inW.Write(append(line, '\n'))
		require.NoError(t, err)
	}
	assert.Equal(t, proxyAck{Seq: 0}, next(), "ready")

	send(proxyConfig{Seq: 1, Frontends: []frontend{{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: []netip.AddrPort{b.addr}}}})
	assert.Equal(t, proxyAck{Seq: 1, Listening: 1}, next())
	name, err := fetch(t, vip)
	require.NoError(t, err)
	assert.Equal(t, "b", name)

	// 192.0.2.1 (TEST-NET-1) is not a local address: bind fails, the
	// other frontend stays.
	bad := netip.MustParseAddrPort("192.0.2.1:80")
	send(proxyConfig{Seq: 2, Frontends: []frontend{
		{Name: "web", Protocol: datapath.TCP, VIP: vip, Backends: []netip.AddrPort{b.addr}},
		{Name: "bad", Protocol: datapath.TCP, VIP: bad, Backends: []netip.AddrPort{b.addr}},
	}})
	a := next()
	assert.Equal(t, uint64(2), a.Seq)
	assert.Equal(t, 1, a.Listening)
	assert.Contains(t, a.Error, "frontend 192.0.2.1:80/TCP (bad)")

	require.NoError(t, inW.Close())
	wg.Wait()
	assert.NoError(t, mainErr)
	_, err = fetch(t, vip)
	assert.True(t, errors.Is(err, syscall.ECONNREFUSED), "after EOF the proxy has closed its sockets: %v", err)
}
