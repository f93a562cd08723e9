package userspace_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/baselines/internal/baselinetest"
	"svclab/datapath"
	"svclab/harness/loadgen"
	"svclab/harness/runlock"
	"svclab/harness/topology"
	"svclab/internal/child"
	"svclab/internal/nsutil"

	"svclab/baselines/userspace"
)

// TestMain lets the test binary act as the proxy, backend server and load
// generator child processes, as the svclab binary does.
func TestMain(m *testing.M) {
	child.Main(os.Args[1:])
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to build a topology of network namespaces and add addresses in it")
	}
}

// Ports of the test's own backends, next to the harness server's 8080.
const (
	httpPort  = 8080 // harness backend server: HTTP, waits for the client to close
	eofPort   = 9090 // records whether it saw the client's close as EOF
	closePort = 9091 // answers and closes first
	udpPort   = 5353 // UDP echo
)

var (
	webVIP   = netip.MustParseAddr("10.96.0.10")
	eofVIP   = netip.MustParseAddr("10.96.0.11")
	dnsVIP   = netip.MustParseAddr("10.96.0.53")
	emptyVIP = netip.MustParseAddr("10.96.0.20")
)

func endpointsOf(pods []datapath.Pod) []datapath.Endpoint {
	var eps []datapath.Endpoint
	for _, p := range pods {
		eps = append(eps, datapath.Endpoint{Pod: p.Name, Addr: p.Addr, Ready: true, Serving: true})
	}
	return eps
}

func tcpPort(port, target uint16) []datapath.ServicePort {
	return []datapath.ServicePort{{Name: "p", Protocol: datapath.TCP, Port: port, TargetPort: target}}
}

// testState is the services of the test: web (HTTP, every backend), eof
// and closer (one backend each), dns (UDP, every backend) and empty (TCP and
// UDP, no endpoints).
func testState(backends []datapath.Pod) datapath.State {
	return datapath.State{Services: []datapath.Service{
		{Namespace: "bench", Name: "web", ClusterIP: webVIP, Ports: tcpPort(80, httpPort), Endpoints: endpointsOf(backends)},
		{Namespace: "bench", Name: "eof", ClusterIP: eofVIP, Ports: []datapath.ServicePort{
			{Name: "eof", Protocol: datapath.TCP, Port: 80, TargetPort: eofPort},
			{Name: "close", Protocol: datapath.TCP, Port: 81, TargetPort: closePort},
		}, Endpoints: endpointsOf(backends[:1])},
		{Namespace: "kube-system", Name: "dns", ClusterIP: dnsVIP, Ports: []datapath.ServicePort{
			{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: udpPort},
		}, Endpoints: endpointsOf(backends)},
		{Namespace: "bench", Name: "empty", ClusterIP: emptyVIP, Ports: []datapath.ServicePort{
			{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: httpPort},
			{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: udpPort},
		}},
	}}
}

// inNS runs fn with the calling thread in ns; sockets fn creates stay in
// ns for their whole life.
func inNS(t *testing.T, ns *nsutil.NS, fn func() error) {
	t.Helper()
	require.NoError(t, ns.Do(fn))
}

// eofEvent is what the eof backend saw of one connection.
type eofEvent struct {
	peer netip.AddrPort
	eof  bool
}

// startTestBackends opens, in the backend pods, a UDP echo on every pod and
// on the first pod the eof and close-first TCP backends.
func startTestBackends(t *testing.T, backends []datapath.Pod) chan eofEvent {
	t.Helper()
	events := make(chan eofEvent, 16)
	for i, b := range backends {
		var uc *net.UDPConn
		inNS(t, b.NS, func() (err error) {
			uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Addr, udpPort)))
			return err
		})
		t.Cleanup(func() { _ = uc.Close() })
		go func(name string) {
			buf := make([]byte, 65536)
			for {
				n, from, err := uc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				_, _ = uc.WriteToUDPAddrPort(append([]byte(name+":"), buf[:n]...), from)
			}
		}(b.Name)
		if i != 0 {
			continue
		}
		var eofLn, closeLn net.Listener
		inNS(t, b.NS, func() (err error) {
			if eofLn, err = net.Listen("tcp4", netip.AddrPortFrom(b.Addr, eofPort).String()); err != nil {
				return err
			}
			closeLn, err = net.Listen("tcp4", netip.AddrPortFrom(b.Addr, closePort).String())
			return err
		})
		t.Cleanup(func() { _ = eofLn.Close(); _ = closeLn.Close() })
		go baselinetest.ServeTCP(eofLn, func(c net.Conn) {
			_, _ = c.Write([]byte(b.Name + "\n"))
			_, err := io.Copy(io.Discard, c)
			events <- eofEvent{peer: netip.MustParseAddrPort(c.RemoteAddr().String()), eof: err == nil}
		})
		go baselinetest.ServeTCP(closeLn, func(c net.Conn) { _, _ = c.Write([]byte(b.Name + "\n")) })
	}
	return events
}

// loAddrs lists the addresses (IPv4 and IPv6) on the node's lo.
func loAddrs(t *testing.T, node *nsutil.NS) []string {
	t.Helper()
	h, err := node.NetlinkHandle()
	require.NoError(t, err)
	defer h.Close()
	lo, err := h.LinkByName("lo")
	require.NoError(t, err)
	as, err := h.AddrList(lo, unix.AF_UNSPEC)
	require.NoError(t, err)
	var out []string
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return out
}

func nodeSysctl(t *testing.T, node *nsutil.NS, key string) string {
	t.Helper()
	var v string
	inNS(t, node, func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		v = strings.Join(strings.Fields(string(b)), " ")
		return err
	})
	return v
}

// newTopology builds a topology of one client and backends pods for one
// test, removed when it ends; suffix keeps its objects' names apart.
func newTopology(t *testing.T, suffix string, backends int) *topology.Topology {
	t.Helper()
	run, err := runlock.New()
	require.NoError(t, err)
	t.Cleanup(run.Release)
	topo, err := topology.New(context.Background(), topology.Config{
		Prefix: run.Prefix + "-" + suffix, Clients: 1, Backends: backends,
		PodCIDR: netip.MustParsePrefix("10.244.0.0/24"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16"),
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, topo.Close()) })
	return topo
}

// TestPrivilegedUserspace drives the proxy as the harness does, as a child
// process in a real topology of one client and 12 backend pods, through
// real sockets in the pods.
func TestPrivilegedUserspace(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t, "us", 12)
	srv, err := loadgen.StartServer(topo.Node, topo.ServerCgroup.Path, loadgen.BackendListeners(topo.Backends, httpPort, false))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	events := startTestBackends(t, topo.Backends)
	client := topo.Clients[0]
	loBefore := loAddrs(t, topo.Node)
	portRangeBefore := nodeSysctl(t, topo.Node, "net/ipv4/ip_local_port_range")

	f, err := datapath.Lookup("userspace")
	require.NoError(t, err)
	require.NoError(t, f.Probe())
	dp := f.New()
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, topo.Env()))
	t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })
	st := testState(topo.Backends)
	start := time.Now()
	require.NoError(t, dp.Apply(ctx, st))
	t.Logf("first Apply (4 services, 6 frontends, 12 endpoints): %v", time.Since(start).Round(time.Microsecond))
	info := dp.Info()
	assert.Equal(t, "4", info["listening"], "web, eof:80, eof:81 and dns have a socket; empty's two frontends have none")

	t.Run("tcp reaches all 12 backends", func(t *testing.T) {
		w, err := loadgen.RunClientProcess(ctx, client.NS, topo.ClientCgroup.Path, loadgen.ClientSpec{
			Targets: dp.Targets(st.Services[0], st.Services[0].Ports[0]), Concurrency: 4, Duration: 20 * time.Second, Connections: 1200,
		})
		require.NoError(t, err)
		assert.Empty(t, w.Errors)
		assert.Len(t, w.PerBackend, 12, "backends reached: %v", w.PerBackend)
		for pod, n := range w.PerBackend {
			// Round robin: 100 each, give or take the connections the
			// 4 workers had in flight when the run stopped.
			assert.InDelta(t, w.Connections/12, n, 10, "backend %s got %d of %d connections", pod, n, w.Connections)
		}
	})

	t.Run("client closes first, backend sees EOF", func(t *testing.T) {
		var c net.Conn
		inNS(t, client.NS, func() (err error) {
			c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(eofVIP, 80).String(), 5*time.Second)
			return err
		})
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, topo.Backends[0].Name+"\n", line)
		assert.Equal(t, netip.AddrPortFrom(eofVIP, 80).String(), c.RemoteAddr().String(), "the client's peer is the VIP")
		require.NoError(t, c.Close())
		select {
		case ev := <-events:
			assert.True(t, ev.eof, "the backend must see the client's close as EOF, not a reset")
			// The proxy terminates the connection: the backend sees the
			// node, not the client pod (userspace mode loses the source).
			assert.NotEqual(t, client.Addr, ev.peer.Addr(), "backend's peer")
		case <-time.After(5 * time.Second):
			t.Fatal("the backend did not see the client's close within 5s")
		}
	})

	t.Run("backend closes first, client sees EOF", func(t *testing.T) {
		var c net.Conn
		inNS(t, client.NS, func() (err error) {
			c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(eofVIP, 81).String(), 5*time.Second)
			return err
		})
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		all, err := io.ReadAll(c)
		require.NoError(t, err, "the backend's close must reach the client as EOF")
		assert.Equal(t, topo.Backends[0].Name+"\n", string(all))
	})

	t.Run("udp request and reply via the VIP", func(t *testing.T) {
		vip := netip.AddrPortFrom(dnsVIP, 53)
		seen := map[string]int{}
		for i := range 12 {
			// A fresh socket per query: a new client address, hence a
			// new session, hence the next backend.
			var c *net.UDPConn
			inNS(t, client.NS, func() (err error) {
				c, err = net.ListenUDP("udp4", &net.UDPAddr{})
				return err
			})
			q := fmt.Sprintf("query-%d", i)
			_, err := c.WriteToUDPAddrPort([]byte(q), vip)
			require.NoError(t, err)
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 2048)
			n, from, err := c.ReadFromUDPAddrPort(buf)
			_ = c.Close()
			require.NoError(t, err, "reply to %s", q)
			assert.Equal(t, vip, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), "the reply comes from VIP:port")
			pod, payload, _ := strings.Cut(string(buf[:n]), ":")
			assert.Equal(t, q, payload)
			seen[pod]++
		}
		assert.Len(t, seen, 12, "12 sessions round robin over 12 backends: %v", seen)
	})

	t.Run("no endpoints: connection refused", func(t *testing.T) {
		inNS(t, client.NS, func() error {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(emptyVIP, 80).String(), 3*time.Second)
			if err == nil {
				c.Close()
			}
			assert.ErrorIs(t, err, syscall.ECONNREFUSED, "TCP")
			uc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(emptyVIP, 53)))
			if err != nil {
				return err
			}
			defer uc.Close()
			if _, err := uc.Write([]byte("q")); err != nil {
				return err
			}
			_ = uc.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = uc.Read(make([]byte, 64))
			assert.ErrorIs(t, err, syscall.ECONNREFUSED, "UDP (ICMP port unreachable)")
			return nil
		})
	})

	t.Run("apply removes a backend and a service", func(t *testing.T) {
		removed := topo.Backends[3]
		next := testState(append(append([]datapath.Pod{}, topo.Backends[:3]...), topo.Backends[4:]...))
		next.Services = next.Services[:1] // web only: eof, dns and empty are gone
		start := time.Now()
		require.NoError(t, dp.Apply(ctx, next))
		t.Logf("shrinking Apply: %v", time.Since(start).Round(time.Microsecond))
		w, err := loadgen.RunClientProcess(ctx, client.NS, topo.ClientCgroup.Path, loadgen.ClientSpec{
			Targets: dp.Targets(next.Services[0], next.Services[0].Ports[0]), Concurrency: 4, Duration: 20 * time.Second, Connections: 550,
		})
		require.NoError(t, err)
		assert.Empty(t, w.Errors)
		assert.NotContains(t, w.PerBackend, removed.Name, "a removed endpoint gets no new connections")
		assert.Len(t, w.PerBackend, 11)
		assert.ElementsMatch(t, append(append([]string{}, loBefore...), webVIP.String()+"/32"), loAddrs(t, topo.Node),
			"only web's ClusterIP is left on lo")
		assert.Equal(t, "1", dp.Info()["listening"])
	})

	t.Run("close leaves no process and no address", func(t *testing.T) {
		pid := userspace.ProxyPID(dp)
		require.Positive(t, pid)
		cpu, err := strconv.ParseFloat(dp.Info()["proxy_cpu_seconds"], 64)
		require.NoError(t, err)
		assert.Greater(t, cpu, 0.0, "the proxy did the relaying, so it used CPU")
		t.Logf("proxy CPU over the test: %.2fs", cpu)
		require.NoError(t, dp.Close())
		_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
		assert.True(t, os.IsNotExist(err), "proxy process %d must be gone (reaped), stat: %v", pid, err)
		assert.ElementsMatch(t, loBefore, loAddrs(t, topo.Node), "lo as before Setup")
		assert.Equal(t, portRangeBefore, nodeSysctl(t, topo.Node, "net/ipv4/ip_local_port_range"), "node sysctl restored")
		assert.NoError(t, dp.Close(), "a second Close is a no-op")
		inNS(t, client.NS, func() error {
			_, err := net.DialTimeout("tcp4", netip.AddrPortFrom(webVIP, 80).String(), 300*time.Millisecond)
			assert.Error(t, err, "nothing answers on the VIP after Close")
			return nil
		})
	})
}

// TestPrivilegedUserspaceIPv6 serves IPv6 ClusterIPs in a dual-stack
// topology, beside an IPv4 one, through real sockets in the pods: TCP to an
// IPv6 VIP reaches every backend's IPv6 address, UDP is answered from the
// VIP, a VIP without endpoints refuses, and Close removes the /128s.
func TestPrivilegedUserspaceIPv6(t *testing.T) {
	requireRoot(t)
	run, err := runlock.New()
	require.NoError(t, err)
	t.Cleanup(run.Release)
	topo, err := topology.New(context.Background(), topology.Config{
		Prefix: run.Prefix + "-us6", Clients: 1, Backends: 4,
		PodCIDR: netip.MustParsePrefix("10.244.0.0/24"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16"),
		PodCIDR6: netip.MustParsePrefix("fd00:10:244::/120"), ServiceCIDR6: netip.MustParsePrefix("fd00:10:96::/112"),
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, topo.Close()) })
	srv, err := loadgen.StartServer(topo.Node, topo.ServerCgroup.Path, loadgen.BackendListeners(topo.Backends, httpPort, false))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	for _, b := range topo.Backends {
		var uc *net.UDPConn
		inNS(t, b.NS, func() (err error) {
			uc, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Addr6, udpPort)))
			return err
		})
		t.Cleanup(func() { _ = uc.Close() })
		go func(name string) {
			buf := make([]byte, 1500)
			for {
				n, from, err := uc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				_, _ = uc.WriteToUDPAddrPort(append([]byte(name+":"), buf[:n]...), from)
			}
		}(b.Name)
	}
	var eps6 []datapath.Endpoint
	for _, b := range topo.Backends {
		eps6 = append(eps6, datapath.Endpoint{Pod: b.Name, Addr: b.Addr6, Ready: true, Serving: true})
	}
	web6, dns6, empty6 := netip.MustParseAddr("fd00:10:96::a"), netip.MustParseAddr("fd00:10:96::35"), netip.MustParseAddr("fd00:10:96::14")
	st := datapath.State{Services: []datapath.Service{
		{Namespace: "bench", Name: "web", ClusterIP: webVIP, Ports: tcpPort(80, httpPort), Endpoints: endpointsOf(topo.Backends)},
		{Namespace: "bench", Name: "web6", ClusterIP: web6, Ports: tcpPort(80, httpPort), Endpoints: eps6},
		{Namespace: "kube-system", Name: "dns6", ClusterIP: dns6, Ports: []datapath.ServicePort{
			{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: udpPort}}, Endpoints: eps6},
		{Namespace: "bench", Name: "empty6", ClusterIP: empty6, Ports: tcpPort(80, httpPort)},
	}}
	loBefore := loAddrs(t, topo.Node)

	f, err := datapath.Lookup("userspace")
	require.NoError(t, err)
	require.NoError(t, f.Probe())
	dp := f.New()
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, topo.Env()))
	t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })
	require.NoError(t, dp.Apply(ctx, st))
	assert.Equal(t, "3", dp.Info()["listening"], "web, web6 and dns6 have a socket; empty6 has none")
	assert.Subset(t, loAddrs(t, topo.Node), []string{"fd00:10:96::a/128", "fd00:10:96::35/128", "fd00:10:96::14/128"}, "IPv6 ClusterIPs are /128s on lo")
	client := topo.Clients[0]

	tests := []struct {
		name string
		vip  netip.AddrPort
	}{
		{"IPv4 beside IPv6", netip.AddrPortFrom(webVIP, 80)},
		{"IPv6 reaches every backend", netip.AddrPortFrom(web6, 80)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Plain sockets: one request per connection, the reply names
			// the pod (the load generator speaks IPv4 only).
			seen := map[string]int{}
			inNS(t, client.NS, func() error {
				for range 16 {
					c, err := net.DialTimeout("tcp", tt.vip.String(), 3*time.Second)
					if err != nil {
						return err
					}
					_ = c.SetDeadline(time.Now().Add(3 * time.Second))
					_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: svc\r\n\r\n"))
					// The server waits for the client to close first:
					// read until the reply is whole, then close.
					var reply, pod []byte
					done, bad := false, false
					buf := make([]byte, 512)
					for err == nil && !done && !bad {
						var n int
						n, err = c.Read(buf)
						reply = append(reply, buf[:n]...)
						pod, done, bad = loadgen.ParseReply(reply)
					}
					c.Close()
					require.True(t, done && !bad, "reply %q (%v)", reply, err)
					seen[string(pod)]++
				}
				return nil
			})
			assert.Len(t, seen, 4, "16 connections round robin over 4 backends: %v", seen)
		})
	}

	t.Run("IPv6 UDP answered from the VIP", func(t *testing.T) {
		vip := netip.AddrPortFrom(dns6, 53)
		seen := map[string]bool{}
		inNS(t, client.NS, func() error {
			for i := range 8 {
				// A new socket per request: each is a new session, so
				// round robin moves on to the next backend.
				uc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6zero})
				if err != nil {
					return err
				}
				if _, err := uc.WriteToUDPAddrPort([]byte(strconv.Itoa(i)), vip); err != nil {
					uc.Close()
					return err
				}
				_ = uc.SetReadDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 64)
				n, from, err := uc.ReadFromUDPAddrPort(buf)
				uc.Close()
				if err != nil {
					return err
				}
				assert.Equal(t, vip, from, "reply source")
				name, _, _ := strings.Cut(string(buf[:n]), ":")
				seen[name] = true
			}
			return nil
		})
		assert.Len(t, seen, 4, "8 sessions round robin over 4 backends: %v", seen)
	})

	t.Run("IPv6 without endpoints: connection refused", func(t *testing.T) {
		inNS(t, client.NS, func() error {
			c, err := net.DialTimeout("tcp6", netip.AddrPortFrom(empty6, 80).String(), 3*time.Second)
			if err == nil {
				c.Close()
			}
			assert.ErrorIs(t, err, syscall.ECONNREFUSED)
			return nil
		})
	})

	require.NoError(t, dp.Close())
	assert.ElementsMatch(t, loBefore, loAddrs(t, topo.Node), "Close removes every ClusterIP from lo")
}
