package loadgen

import (
	"bytes"
	"math"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
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
		{"valid UDP connected", func(s *ClientSpec) { s.Protocol, s.UDPMode = ProtocolUDP, UDPConnected }, ""},
		{"valid IPv6 targets", func(s *ClientSpec) {
			s.Targets = []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:80"), netip.MustParseAddrPort("[fd00::2]:80")}
		}, ""},
		{"mixed families", func(s *ClientSpec) {
			s.Targets = append(s.Targets, netip.MustParseAddrPort("[fd00::1]:80"))
		}, "targets[1]"},
		{"zoned target", func(s *ClientSpec) { s.Targets = []netip.AddrPort{netip.MustParseAddrPort("[fe80::1%eth0]:80")} }, "targets[0]"},
		{"invalid target", func(s *ClientSpec) { s.Targets = []netip.AddrPort{{}} }, "targets[0]"},
		{"zero concurrency", func(s *ClientSpec) { s.Concurrency = 0 }, "concurrency"},
		{"unknown protocol", func(s *ClientSpec) { s.Protocol = "SCTP" }, "protocol"},
		{"unknown UDP mode", func(s *ClientSpec) { s.UDPMode = "connect" }, "udp_mode"},
		{"negative timeout", func(s *ClientSpec) { s.Timeout = -time.Second }, "timeout"},
		{"open loop needs no concurrency", func(s *ClientSpec) { s.Rate, s.Concurrency = 100, 0 }, ""},
		{"open loop, constant arrivals", func(s *ClientSpec) { s.Rate, s.Arrivals, s.MaxInFlight = 100, ArrivalsConstant, 8 }, ""},
		{"negative rate", func(s *ClientSpec) { s.Rate = -1 }, "rate"},
		{"NaN rate", func(s *ClientSpec) { s.Rate = math.NaN() }, "rate"},
		{"absurd rate", func(s *ClientSpec) { s.Rate = 1e12 }, "rate"},
		{"open loop with a count", func(s *ClientSpec) { s.Rate, s.Connections = 100, 10 }, "connections"},
		{"unknown arrivals", func(s *ClientSpec) { s.Rate, s.Arrivals = 100, "bursty" }, "arrivals"},
		{"negative in-flight cap", func(s *ClientSpec) { s.Rate, s.MaxInFlight = 100, -1 }, "max_in_flight"},
		{"open-loop field without a rate", func(s *ClientSpec) { s.MaxInFlight = 10 }, "rate > 0"},
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
			pod, done, bad := ParseReply(tt.in)
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

// TCP and every UDP mode, over IPv4 and IPv6, against the in-process
// server: every request is answered, by every backend, from the right
// address.
func TestClientAgainstServer(t *testing.T) {
	tests := []struct {
		name          string
		protocol, udp string
	}{
		{"TCP", ProtocolTCP, ""},
		{"UDP socket per request", ProtocolUDP, UDPSocketPerRequest},
		{"UDP long-lived", ProtocolUDP, UDPLongLived},
		{"UDP connected", ProtocolUDP, UDPConnected},
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			s := startLocalServerAt(t, addr, 2, "pod-a", "pod-b", "pod-c")
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
						// 600 over 3: 200 expected; under 100 means the
						// spread is broken (binomial p < 1e-12).
						assert.Greater(t, n, int64(100), "backend %s", pod)
						sum += n
					}
					assert.Equal(t, w.Connections, sum)
				})
			}
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
		{"UDP connected", ClientSpec{Targets: []netip.AddrPort{udpTarget}, Protocol: ProtocolUDP, UDPMode: UDPConnected}, "timeout"},
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
	// A connected socket never sees the reply from elsewhere (the kernel
	// takes datagrams from the connected peer only): it times out.
	t.Run(UDPConnected, func(t *testing.T) {
		w, err := RunClient(ClientSpec{Targets: []netip.AddrPort{netip.MustParseAddrPort(in.LocalAddr().String())},
			Concurrency: 2, Duration: 300 * time.Millisecond, Timeout: 50 * time.Millisecond, Protocol: ProtocolUDP, UDPMode: UDPConnected})
		require.NoError(t, err)
		assert.Zero(t, w.Connections)
		assert.Greater(t, w.Errors["timeout"], int64(0), "errors: %v", w.Errors)
		assert.Len(t, w.Errors, 1, "errors: %v", w.Errors)
	})
}

// The loops allocate nothing per connection, whatever the protocol, UDP
// mode and family: a run of many connections allocates about as much as a
// run of few.
func TestClientDoesNotAllocatePerConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("timing-dependent; skipped with -short")
	}
	tests := []struct {
		name          string
		addr          string
		protocol, udp string
	}{
		{"TCP", "127.0.0.1:0", ProtocolTCP, ""},
		{"UDP socket per request", "127.0.0.1:0", ProtocolUDP, UDPSocketPerRequest},
		{"UDP connected", "127.0.0.1:0", ProtocolUDP, UDPConnected},
		{"IPv6 TCP", "[::1]:0", ProtocolTCP, ""},
		{"IPv6 UDP connected", "[::1]:0", ProtocolUDP, UDPConnected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startLocalServerAt(t, tt.addr, 1, "pod-a")
			allocs := func(n int64) uint64 {
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				_, err := RunClient(ClientSpec{Targets: s.addrs, Concurrency: 2, Loops: 1, Duration: 20 * time.Second, Connections: n,
					Protocol: tt.protocol, UDPMode: tt.udp})
				require.NoError(t, err)
				runtime.ReadMemStats(&after)
				return after.Mallocs - before.Mallocs
			}
			allocs(10) // warm up lazily initialised runtime state
			few, many := allocs(100), allocs(3000)
			// 2900 more connections: far fewer than one allocation each.
			assert.Less(t, int64(many)-int64(few), int64(300), "allocations: %d for 100 connections, %d for 3000", few, many)
		})
	}
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

// The CPU count that fractions divide by is the machine's (the per-CPU
// lines of /proc/stat, which the "cpu" line sums), not the client's
// affinity: a placed run pins the client to one CPU of two, and its
// busy and outside fractions would double.
func TestParseCPUTimes(t *testing.T) {
	tests := []struct {
		name     string
		stat     string
		want     cpuTimes
		err      string
		fraction float64 // busy fraction of a 1 s window from zero
	}{
		{name: "two CPUs", stat: "cpu  100 0 50 1000 0 0 50 0 0 0\ncpu0 50 0 25 500 0 0 25 0 0 0\ncpu1 50 0 25 500 0 0 25 0 0 0\nintr 1\n",
			want: cpuTimes{user: 100, system: 50, idle: 1000, softirq: 50, cpus: 2}, fraction: 1.0},
		{name: "four CPUs", stat: "cpu  100 0 50 1000 0 0 50 0 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\ncpu2 1 0 0 0 0 0 0 0 0 0\ncpu3 1 0 0 0 0 0 0 0 0 0\n",
			want: cpuTimes{user: 100, system: 50, idle: 1000, softirq: 50, cpus: 4}, fraction: 0.5},
		{name: "no cpu line", stat: "intr 1\n", err: "no cpu line"},
		{name: "short cpu line", stat: "cpu 1 2 3\n", err: "short cpu line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCPUTimes(strings.NewReader(tt.stat))
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			u := cpuUsage(cpuTimes{cpus: got.cpus}, got, 1.0, 1)
			assert.Equal(t, got.cpus, u.CPUs)
			assert.InDelta(t, tt.fraction, u.BusyFraction, 1e-9)
		})
	}
}

// take draws the arrivals of every loop's share of a schedule that fall
// before end (ns after the origin), merged in time order.
func take(kind string, rate float64, seed uint64, nloops int, end int64) []int64 {
	var out []int64
	for i := range nloops {
		a := newArrivals(kind, rate, seed, i, nloops, 0)
		for t := a.next(); t < end; t = a.next() {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// gapStats returns the mean and the coefficient of variation of the gaps
// between consecutive times.
func gapStats(ts []int64) (mean, cv float64) {
	var sum, sq float64
	n := float64(len(ts) - 1)
	for i := 1; i < len(ts); i++ {
		sum += float64(ts[i] - ts[i-1])
	}
	mean = sum / n
	for i := 1; i < len(ts); i++ {
		d := float64(ts[i]-ts[i-1]) - mean
		sq += d * d
	}
	return mean, math.Sqrt(sq/n) / mean
}

// The schedule: its rate, its count over a window and the shape of its
// gaps, whatever the number of loops sharing it. Times come from the seed
// alone, so a run can be replayed.
func TestArrivals(t *testing.T) {
	const second = int64(time.Second)
	t.Run("constant", func(t *testing.T) {
		for _, loops := range []int{1, 3} {
			ts := take(ArrivalsConstant, 1000, 0, loops, second)
			// Exactly one every millisecond from the origin, however
			// many loops take turns.
			require.Len(t, ts, 1000, "%d loops", loops)
			for i, v := range ts {
				assert.Equal(t, int64(i)*int64(time.Millisecond), v, "%d loops, arrival %d", loops, i)
			}
		}
	})
	t.Run("poisson", func(t *testing.T) {
		const rate, window = 10000.0, 10 * second
		for _, loops := range []int{1, 2} {
			ts := take(ArrivalsPoisson, rate, 42, loops, window)
			// 100,000 expected; a Poisson count's sd is its root (316),
			// so 5 sd is 1.6%.
			assert.InDelta(t, 100000, len(ts), 5*math.Sqrt(100000), "%d loops", loops)
			mean, cv := gapStats(ts)
			assert.InEpsilon(t, 1e9/rate, mean, 0.02, "%d loops: mean gap", loops)
			// Exponential gaps have a CV of 1 (constant ones 0): the
			// merged streams of several loops are Poisson too.
			assert.InDelta(t, 1.0, cv, 0.02, "%d loops: gap CV", loops)
		}
	})
	t.Run("seeded", func(t *testing.T) {
		a := take(ArrivalsPoisson, 5000, 7, 2, second)
		assert.Equal(t, a, take(ArrivalsPoisson, 5000, 7, 2, second), "same seed, same schedule")
		assert.NotEqual(t, a, take(ArrivalsPoisson, 5000, 8, 2, second), "another seed, another schedule")
	})
}

// The open loop starts what its schedule says in the window, whatever the
// protocol, and every start ends as a success; the achieved rate is the
// offered one (constant arrivals: exactly Rate × Duration are due).
func TestOpenLoopRate(t *testing.T) {
	s := startLocalServer(t, 1, "pod-a", "pod-b")
	tests := []struct {
		name          string
		protocol, udp string
		arrivals      string
	}{
		{"TCP constant", ProtocolTCP, "", ArrivalsConstant},
		{"TCP poisson", ProtocolTCP, "", ArrivalsPoisson},
		{"UDP socket per request", ProtocolUDP, UDPSocketPerRequest, ArrivalsConstant},
		{"UDP long-lived", ProtocolUDP, UDPLongLived, ArrivalsConstant},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := RunClient(ClientSpec{Targets: s.addrs, Rate: 2000, Arrivals: tt.arrivals, Loops: 2,
				Warmup: 200 * time.Millisecond, Duration: time.Second, Protocol: tt.protocol, UDPMode: tt.udp})
			require.NoError(t, err)
			assert.Empty(t, w.Errors)
			if tt.arrivals == ArrivalsConstant {
				assert.Equal(t, int64(2000), w.Scheduled)
			} else {
				assert.InDelta(t, 2000, w.Scheduled, 5*math.Sqrt(2000), "a Poisson count within 5 sd")
			}
			assert.Equal(t, w.Scheduled, w.Connections, "every arrival of the window ended as a connection")
			assert.Equal(t, w.Connections, w.Histogram.Count())
			assert.InDelta(t, float64(w.Scheduled), w.QPS, 1e-6, "QPS is the achieved rate over the 1 s window")
			assert.Equal(t, 2000.0, w.OfferedRate)
			assert.Equal(t, tt.arrivals, w.Arrivals)
			assert.NotZero(t, w.ScheduleSeed, "the seed is recorded")
			assert.Equal(t, DefaultMaxInFlight, w.MaxInFlight)
			require.NotNil(t, w.StartLag)
			assert.Len(t, w.PerBackend, 2)
			assert.Zero(t, w.WrongSource)
		})
	}
}

// serialServer answers TCP requests one connection at a time, as a backend
// with a single worker does, and holds its stallAt-th reply for stall.
func serialServer(t *testing.T, stallAt int, stall time.Duration) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		buf := make([]byte, 1024)
		for n := 1; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			got := 0
			for !bytes.Contains(buf[:got], []byte("\r\n\r\n")) && got < len(buf) {
				m, err := c.Read(buf[got:])
				if err != nil {
					break
				}
				got += m
			}
			if n == stallAt {
				time.Sleep(stall)
			}
			_, _ = c.Write(Response("serial"))
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

// The point of the open loop: one slow connection at a backend that
// serves one at a time holds up those behind it, and since latency runs
// from each connection's intended start, all of them show the wait. The
// closed loop, which starts nothing while it waits, records a single slow
// connection (coordinated omission).
func TestOpenLoopLatencyFromIntendedStart(t *testing.T) {
	const stall = 300 * time.Millisecond
	// 200/s, one every 5 ms: the 40th is due at 200 ms, and the 60 due
	// during the stall queue behind it, waiting 300 ms down to 0: about
	// 40 of the 200 wait over 100 ms.
	open, err := RunClient(ClientSpec{Targets: []netip.AddrPort{serialServer(t, 40, stall)}, Rate: 200,
		Arrivals: ArrivalsConstant, Loops: 1, Duration: time.Second})
	require.NoError(t, err)
	assert.Empty(t, open.Errors)
	assert.Equal(t, int64(200), open.Connections)
	assert.GreaterOrEqual(t, open.Latency.Max, 250e3, "the stalled connection")
	assert.GreaterOrEqual(t, open.Latency.P90, 100e3, "those queued behind it: %+v", open.Latency)

	closed, err := RunClient(ClientSpec{Targets: []netip.AddrPort{serialServer(t, 300, stall)}, Concurrency: 1,
		Loops: 1, Duration: 2 * time.Second})
	require.NoError(t, err)
	assert.Empty(t, closed.Errors)
	assert.GreaterOrEqual(t, closed.Latency.Max, 250e3, "the closed loop met the stall too")
	assert.Less(t, closed.Latency.P90, 50e3, "but recorded it once: %+v", closed.Latency)
}

// An arrival that finds MaxInFlight connections in flight is not started
// and counts as "overload"; every arrival of the window is accounted for.
func TestOpenLoopOverload(t *testing.T) {
	// A listener that never accepts: nothing ever completes, so the slots
	// free only when their connection times out.
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(lfd) })
	require.NoError(t, unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(lfd, 1))
	sa, err := unix.Getsockname(lfd)
	require.NoError(t, err)
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))

	w, err := RunClient(ClientSpec{Targets: []netip.AddrPort{target}, Rate: 1000, Arrivals: ArrivalsConstant,
		MaxInFlight: 10, Loops: 1, Timeout: 200 * time.Millisecond, Duration: time.Second})
	require.NoError(t, err)
	assert.Equal(t, int64(1000), w.Scheduled)
	assert.Zero(t, w.Connections)
	// 10 slots each held 200 ms: about 50 started over the second, the
	// other ~950 found no slot.
	assert.Greater(t, w.Errors[ErrOverload], int64(850), "errors: %v", w.Errors)
	assert.InDelta(t, 50, w.Errors["ETIMEDOUT"], 25, "errors: %v", w.Errors)
	assert.Len(t, w.Errors, 2, "errors: %v", w.Errors)
	assert.Equal(t, w.Scheduled, SumErrors(w.Errors), "every arrival accounted for")
	assert.Equal(t, 10, w.MaxInFlight)
}

// The open loop allocates nothing per connection either.
func TestOpenLoopDoesNotAllocatePerConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("timing-dependent; skipped with -short")
	}
	s := startLocalServer(t, 1, "pod-a")
	allocs := func(rate float64) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := RunClient(ClientSpec{Targets: s.addrs, Rate: rate, Loops: 1, MaxInFlight: 64, Duration: 500 * time.Millisecond})
		require.NoError(t, err)
		runtime.ReadMemStats(&after)
		return after.Mallocs - before.Mallocs
	}
	allocs(100) // warm up lazily initialised runtime state
	few, many := allocs(100), allocs(4000)
	// 1950 more connections: far fewer than one allocation each.
	assert.Less(t, int64(many)-int64(few), int64(300), "allocations: %d at 100/s, %d at 4000/s", few, many)
}

// Every connection started in the window is counted however late it ends:
// here each reply takes 150 ms, the window is 100 ms, and the only
// connections started in it (one per slot, at ~150 ms) end after it. They
// used to be dropped (0 connections); now the loops drain them.
func TestClientCountsWhatTheWindowStarted(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 512)
				_, _ = c.Read(buf)
				time.Sleep(150 * time.Millisecond)
				_, _ = c.Write(Response("slow"))
			}()
		}
	}()
	target := netip.MustParseAddrPort(ln.Addr().String())
	w, err := RunClient(ClientSpec{Targets: []netip.AddrPort{target}, Concurrency: 3,
		Warmup: 100 * time.Millisecond, Duration: 100 * time.Millisecond, Timeout: 2 * time.Second})
	require.NoError(t, err)
	assert.Equal(t, int64(3), w.Connections, "one per slot, started at ~150 ms, ended at ~300 ms")
	assert.Empty(t, w.Errors)
	assert.GreaterOrEqual(t, w.Latency.P50, 140e3, "the slow replies are in the histogram (µs)")
}

// UDP requests without a reply are lost, and their share is the trial's
// loss rate: here a responder drops every tenth request.
func TestClientCountsLostUDP(t *testing.T) {
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	go func() {
		buf := make([]byte, 512)
		for n := 1; ; n++ {
			_, from, err := u.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if n%10 == 0 {
				continue
			}
			_, _ = u.WriteToUDP([]byte("lossy\n"), from)
		}
	}()
	target := netip.MustParseAddrPort(u.LocalAddr().String())
	w, err := RunClient(ClientSpec{Targets: []netip.AddrPort{target}, Protocol: ProtocolUDP, Concurrency: 4,
		Duration: 400 * time.Millisecond, Timeout: 30 * time.Millisecond})
	require.NoError(t, err)
	require.Positive(t, w.Connections)
	assert.Equal(t, w.Errors["timeout"], w.Lost, "every lost request is a timeout")
	assert.InDelta(t, 0.10, w.LossRate, 0.03, "lost %d of %d", w.Lost, w.Connections+w.Lost)
}
