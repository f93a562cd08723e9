package harness

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestClientSpecValidate(t *testing.T) {
	ok := ClientSpec{Targets: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:80")}, Concurrency: 1}
	tests := []struct {
		name   string
		change func(*ClientSpec)
		want   string // "" means valid
	}{
		{"valid", func(*ClientSpec) {}, ""},
		{"valid UDP long-lived", func(s *ClientSpec) { s.Protocol, s.UDPMode = ProtocolUDP, UDPLongLived }, ""},
		{"no targets", func(s *ClientSpec) { s.Targets = nil }, "targets"},
		{"IPv6 target", func(s *ClientSpec) { s.Targets = []netip.AddrPort{netip.MustParseAddrPort("[::1]:80")} }, "targets[0]"},
		{"zero concurrency", func(s *ClientSpec) { s.Concurrency = 0 }, "concurrency"},
		{"unknown protocol", func(s *ClientSpec) { s.Protocol = "SCTP" }, "protocol"},
		{"unknown UDP mode", func(s *ClientSpec) { s.UDPMode = "connected" }, "udp_mode"},
		{"negative timeout", func(s *ClientSpec) { s.Timeout = -time.Second }, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.change(&s)
			err := s.validate()
			if tt.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestParseReply(t *testing.T) {
	full := Response("backend-03")
	tests := []struct {
		name      string
		in        []byte
		pod       string
		done, bad bool
	}{
		{"complete", full, "backend-03", true, false},
		{"headers only", full[:len(full)-3], "", false, false},
		{"half a header", full[:20], "", false, false},
		{"no Content-Length", []byte("HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody"), "", false, true},
		{"bad Content-Length", []byte("HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\nbody"), "", false, true},
		{"empty body", []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), "", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, done, bad := parseReply(tt.in)
			assert.Equal(t, tt.pod, string(pod))
			assert.Equal(t, tt.done, done)
			assert.Equal(t, tt.bad, bad)
		})
	}
}

// freePort returns a loopback port that nothing listens on (TCP).
func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	ap := netip.MustParseAddrPort(l.Addr().String())
	require.NoError(t, l.Close())
	return ap
}

// TCP and both UDP modes against the in-process server: every request is
// answered, by every backend, from the right address.
func TestClientAgainstServer(t *testing.T) {
	s := startLocalServer(t, 2, "pod-a", "pod-b", "pod-c")
	tests := []struct {
		name          string
		protocol, udp string
	}{
		{"TCP", ProtocolTCP, ""},
		{"UDP socket per request", ProtocolUDP, UDPSocketPerRequest},
		{"UDP long-lived", ProtocolUDP, UDPLongLived},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := RunClient(ClientSpec{Targets: s.addrs, Concurrency: 6, Loops: 2, Duration: 20 * time.Second,
				Connections: 600, Protocol: tt.protocol, UDPMode: tt.udp})
			require.NoError(t, err)
			assert.Empty(t, w.Errors)
			assert.GreaterOrEqual(t, w.Connections, int64(600))
			assert.Equal(t, w.Connections, w.Histogram.Count(), "one latency per connection")
			assert.Greater(t, w.Latency.P50, 0.0)
			assert.Zero(t, w.WrongSource)
			assert.Len(t, w.PerBackend, 3, "backends reached: %v", w.PerBackend)
			var sum int64
			for pod, n := range w.PerBackend {
				// 600 over 3: 200 expected; under 100 means the spread is
				// broken (binomial p < 1e-12).
				assert.Greater(t, n, int64(100), "backend %s", pod)
				sum += n
			}
			assert.Equal(t, w.Connections, sum)
		})
	}
}

// A refused connection is counted by its errno, promptly, and never hangs
// the run; nothing counts as a success.
func TestClientRefused(t *testing.T) {
	start := time.Now()
	w, err := RunClient(ClientSpec{Targets: []netip.AddrPort{freePort(t)}, Concurrency: 4, Duration: 300 * time.Millisecond})
	require.NoError(t, err)
	assert.Less(t, time.Since(start), 3*time.Second)
	assert.Zero(t, w.Connections)
	assert.Greater(t, w.Errors["ECONNREFUSED"], int64(10), "errors: %v", w.Errors)
	assert.Len(t, w.Errors, 1, "errors: %v", w.Errors)
	assert.Zero(t, w.Histogram.Count())
}

// Connections that get no reply are abandoned after Timeout, as ETIMEDOUT
// for TCP and "timeout" for UDP.
func TestClientTimeouts(t *testing.T) {
	// A TCP listener that never accepts: the kernel completes the
	// handshake and takes the request, and no reply ever comes.
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(lfd) })
	require.NoError(t, unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(lfd, 1024))
	sa, err := unix.Getsockname(lfd)
	require.NoError(t, err)
	tcpTarget := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	// A UDP socket that never reads.
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	udpTarget := netip.MustParseAddrPort(u.LocalAddr().String())

	tests := []struct {
		name string
		spec ClientSpec
		kind string
	}{
		{"TCP", ClientSpec{Targets: []netip.AddrPort{tcpTarget}}, "ETIMEDOUT"},
		{"UDP socket per request", ClientSpec{Targets: []netip.AddrPort{udpTarget}, Protocol: ProtocolUDP}, "timeout"},
		{"UDP long-lived", ClientSpec{Targets: []netip.AddrPort{udpTarget}, Protocol: ProtocolUDP, UDPMode: UDPLongLived}, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.spec.Concurrency, tt.spec.Timeout, tt.spec.Duration = 2, 50*time.Millisecond, 500*time.Millisecond
			w, err := RunClient(tt.spec)
			require.NoError(t, err)
			assert.Zero(t, w.Connections)
			// 2 slots, 500 ms, 50 ms each: about 20; the first and last
			// of each slot straddle the window.
			assert.GreaterOrEqual(t, w.Errors[tt.kind], int64(8), "errors: %v", w.Errors)
			assert.Len(t, w.Errors, 1, "errors: %v", w.Errors)
		})
	}
}

// A UDP reply that comes from another address than the request went to is
// counted in WrongSource (a Service must answer from its VIP:port): here a
// responder answers from a second socket on another port.
func TestClientUDPWrongSource(t *testing.T) {
	in, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { in.Close() })
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { out.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := in.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = out.WriteToUDPAddrPort([]byte("elsewhere\n"), from)
		}
	}()
	for _, mode := range []string{UDPSocketPerRequest, UDPLongLived} {
		t.Run(mode, func(t *testing.T) {
			w, err := RunClient(ClientSpec{Targets: []netip.AddrPort{netip.MustParseAddrPort(in.LocalAddr().String())},
				Concurrency: 2, Duration: 10 * time.Second, Connections: 100, Protocol: ProtocolUDP, UDPMode: mode})
			require.NoError(t, err)
			assert.Empty(t, w.Errors)
			assert.GreaterOrEqual(t, w.Connections, int64(100))
			assert.Equal(t, w.Connections, w.WrongSource, "every reply came from the wrong port")
			assert.Equal(t, map[string]int64{"elsewhere": w.Connections}, w.PerBackend)
		})
	}
}

// The loops allocate nothing per connection: a run of many connections
// allocates about as much as a run of few.
func TestClientDoesNotAllocatePerConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("timing-dependent; skipped with -short")
	}
	s := startLocalServer(t, 1, "pod-a")
	allocs := func(n int64) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := RunClient(ClientSpec{Targets: s.addrs, Concurrency: 2, Loops: 1, Duration: 20 * time.Second, Connections: n})
		require.NoError(t, err)
		runtime.ReadMemStats(&after)
		return after.Mallocs - before.Mallocs
	}
	allocs(10) // warm up lazily initialised runtime state
	few, many := allocs(100), allocs(3000)
	// 2900 more connections: far fewer than one allocation each.
	assert.Less(t, int64(many)-int64(few), int64(300), "allocations: %d for 100 connections, %d for 3000", few, many)
}

// CPU per connection is busy time (user, system, irq, softirq, steal; not
// idle) over successful connections.
func TestCPUUsage(t *testing.T) {
	a := cpuTimes{user: 100, nice: 0, system: 200, idle: 1000, iowait: 0, irq: 1, softirq: 50}
	b := cpuTimes{user: 150, nice: 10, system: 300, idle: 1040, iowait: 10, irq: 3, softirq: 80}
	u := cpuUsage(a, b, 1.0, 10000)
	assert.InDelta(t, 0.60, u.UserSeconds, 1e-9)
	assert.InDelta(t, 1.00, u.SystemSeconds, 1e-9)
	assert.InDelta(t, 0.30, u.SoftirqSeconds, 1e-9)
	assert.InDelta(t, 0.50, u.IdleSeconds, 1e-9)
	assert.InDelta(t, 1.92, u.BusySeconds, 1e-9)
	assert.InDelta(t, 192.0, u.PerConnectionUS, 1e-6)
	got, err := readCPUTimes()
	require.NoError(t, err)
	assert.NotZero(t, got.user+got.system+got.idle, "the machine's /proc/stat was read")
}
