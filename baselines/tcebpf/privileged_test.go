package tcebpf_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/baselines/tcebpf"
	"svclab/datapath"
	"svclab/harness/loadgen"
	"svclab/harness/topology"
	"svclab/internal/child"
	"svclab/internal/nsutil"
)

// TestMain lets the test binary act as the harness's backend server and
// load generator child processes.
func TestMain(m *testing.M) {
	child.Main(os.Args[1:])
	os.Exit(m.Run())
}

const (
	tcpTarget = 8080
	udpTarget = 5353
)

var (
	vip      = netip.MustParseAddr("10.96.0.10")
	emptyVIP = netip.MustParseAddr("10.96.0.11")
)

// newTopology builds a harness topology (one client, twelve backends) whose
// every object is named svclab-test-<random>-…, removed at cleanup.
func newTopology(t *testing.T) *topology.Topology {
	t.Helper()
	var b [4]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	topo, err := topology.New(context.Background(), topology.Config{
		Prefix:      "svclab-test-" + hex.EncodeToString(b[:]),
		Clients:     1,
		Backends:    12,
		PodCIDR:     netip.MustParsePrefix("10.244.0.0/24"),
		ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16"),
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, topo.Close()) })
	return topo
}

// startUDPEcho answers every datagram to a backend's addr:port with the
// backend's name, from sockets opened in each backend namespace. (The
// harness server speaks TCP only.)
func startUDPEcho(t *testing.T, topo *topology.Topology, port uint16) {
	t.Helper()
	var wg sync.WaitGroup
	// Cleanups run last-in first-out: wait only after every socket closed.
	t.Cleanup(wg.Wait)
	for _, b := range topo.Backends {
		var c *net.UDPConn
		require.NoError(t, b.NS.Do(func() error {
			var err error
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Addr, port)))
			return err
		}), "listen udp in %s", b.Name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1500)
			for {
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				_, _ = c.WriteToUDPAddrPort([]byte(b.Name), from)
			}
		}()
		t.Cleanup(func() { c.Close() })
	}
}

// state is the services of the test: TCP and UDP on one ClusterIP, and a
// service without endpoints.
func state(topo *topology.Topology) datapath.State {
	var eps []datapath.Endpoint
	for _, b := range topo.Backends {
		eps = append(eps, datapath.Endpoint{Pod: b.Name, Addr: b.Addr, Ready: true, Serving: true})
	}
	return datapath.State{Services: []datapath.Service{
		{Namespace: "default", Name: "echo", ClusterIP: vip, Endpoints: eps, Ports: []datapath.ServicePort{
			{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: tcpTarget},
			{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: udpTarget},
		}},
		{Namespace: "default", Name: "empty", ClusterIP: emptyVIP, Ports: []datapath.ServicePort{
			{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: tcpTarget},
		}},
	}}
}

// inNS runs fn in ns; sockets created there stay in ns afterwards.
func inNS[T any](t *testing.T, ns *nsutil.NS, fn func() (T, error)) (T, error) {
	t.Helper()
	var v T
	err := ns.Do(func() error {
		var err error
		v, err = fn()
		return err
	})
	return v, err
}

func peerName(t *testing.T, c syscall.Conn) netip.AddrPort {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var sa unix.Sockaddr
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }))
	require.NoError(t, serr, "getpeername")
	sa4, ok := sa.(*unix.SockaddrInet4)
	require.True(t, ok, "peer is %T", sa)
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(sa4.Port))
}

// httpPod sends one request over c and returns the pod that answered.
func httpPod(t *testing.T, c net.Conn) string {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: svclab\r\n\r\n"))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.Header.Get("X-Svclab-Pod")
}

// closeReset closes c with an RST, so it leaves no TIME_WAIT behind.
func closeReset(t *testing.T, c *net.TCPConn) {
	t.Helper()
	require.NoError(t, c.SetLinger(0))
	require.NoError(t, c.Close())
}

// udpAsk sends one datagram from c to dst and returns the reply's source
// and payload.
func udpAsk(t *testing.T, c *net.UDPConn, dst netip.AddrPort) (netip.AddrPort, string) {
	t.Helper()
	_, err := c.WriteToUDPAddrPort([]byte("who"), dst)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(3*time.Second)))
	buf := make([]byte, 1500)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	require.NoError(t, err, "reply to a datagram for %s", dst)
	return from, string(buf[:n])
}

// attachedPrograms lists what is attached to iface in the node namespace,
// by tcx and by clsact filters.
func attachedPrograms(t *testing.T, node *nsutil.NS, iface string) []string {
	t.Helper()
	nh, err := node.NetlinkHandle()
	require.NoError(t, err)
	defer nh.Close()
	l, err := nh.LinkByName(iface)
	require.NoError(t, err)
	var out []string
	// The kernel resolves the ifindex in the caller's namespace.
	require.NoError(t, node.Do(func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			q, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
			if err != nil {
				return err
			}
			for _, p := range q.Programs {
				out = append(out, fmt.Sprintf("%s program %d", at, p.ID))
			}
		}
		return nil
	}))
	qdiscs, err := nh.QdiscList(l)
	require.NoError(t, err)
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			out = append(out, "clsact qdisc")
		}
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := nh.FilterList(l, parent)
		require.NoError(t, err)
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok {
				out = append(out, "filter "+bf.Name)
			}
		}
	}
	return out
}

// TestPrivilegedThroughTopology runs the datapath in a real harness
// topology, attached both ways (tcx, and the clsact fallback forced), and
// checks what a client sees through real sockets.
func TestPrivilegedThroughTopology(t *testing.T) {
	tcebpf.RequirePrivileged(t)
	ctx := context.Background()

	for _, mode := range []string{tcebpf.AttachTCX, tcebpf.AttachClsact} {
		t.Run(mode, func(t *testing.T) {
			topo := newTopology(t)
			srv, err := loadgen.StartServer(topo.Node, topo.ServerCgroup.Path, loadgen.BackendListeners(topo.Backends, tcpTarget, false))
			require.NoError(t, err)
			t.Cleanup(func() { _ = srv.Stop() })
			startUDPEcho(t, topo, udpTarget)
			client := topo.Clients[0]
			backends := map[string]netip.Addr{}
			for _, b := range topo.Backends {
				backends[b.Name] = b.Addr
			}

			dp := tcebpf.New()
			tcebpf.ForceAttachMode(dp, mode)
			require.NoError(t, dp.Setup(ctx, topo.Env()))
			t.Cleanup(func() { assert.NoError(t, dp.Close()) })
			assert.Equal(t, mode, dp.Info()["attach"])
			// Every pod's veth, clients first: backend pods are clients of
			// services too.
			want := []string{client.HostVeth}
			for _, b := range topo.Backends {
				want = append(want, b.HostVeth)
			}
			assert.Equal(t, strings.Join(want, ","), dp.Info()["interfaces"])
			st := state(topo)
			require.NoError(t, dp.Apply(ctx, st))
			stats := func() map[string]uint64 {
				s, err := tcebpf.Stats(dp)
				require.NoError(t, err)
				return s
			}

			t.Run("TCP through the VIP reaches all 12 backends", func(t *testing.T) {
				targets := dp.Targets(st.Services[0], st.Services[0].Ports[0])
				require.Equal(t, []netip.AddrPort{netip.AddrPortFrom(vip, 80)}, targets)
				w, err := loadgen.RunClientProcess(ctx, client.NS, topo.ClientCgroup.Path, loadgen.ClientSpec{
					Targets: targets, Concurrency: 4, Duration: 20 * time.Second, Connections: 1200,
				})
				require.NoError(t, err)
				// No errors also means no flow ever lost its backend mid-way:
				// a packet sent elsewhere would reset the connection.
				assert.Empty(t, w.Errors)
				assert.Len(t, w.PerBackend, 12, "backends reached: %v", w.PerBackend)
				for pod, n := range w.PerBackend {
					_, ok := backends[pod]
					assert.True(t, ok, "reply from %q, not a backend", pod)
					// 100 expected each; fewer than 40 means a broken spread.
					assert.Greater(t, n, int64(40), "backend %s", pod)
				}
			})

			t.Run("getpeername on the client shows the VIP", func(t *testing.T) {
				c, err := inNS(t, client.NS, func() (net.Conn, error) {
					return net.DialTimeout("tcp4", netip.AddrPortFrom(vip, 80).String(), 3*time.Second)
				})
				require.NoError(t, err)
				defer c.Close()
				assert.Equal(t, netip.AddrPortFrom(vip, 80), peerName(t, c.(*net.TCPConn)))
				_, ok := backends[httpPod(t, c)]
				assert.True(t, ok)
			})

			t.Run("UDP replies come from VIP:port and spread over backends", func(t *testing.T) {
				// A fresh socket per request is a new flow each time.
				seen := map[string]int{}
				for range 240 {
					c, err := inNS(t, client.NS, func() (*net.UDPConn, error) { return net.ListenUDP("udp4", nil) })
					require.NoError(t, err)
					from, pod := udpAsk(t, c, netip.AddrPortFrom(vip, 53))
					c.Close()
					assert.Equal(t, netip.AddrPortFrom(vip, 53), from, "reply source")
					seen[pod]++
				}
				// Missing one of 12 in 240 tries: p ≈ 12·(11/12)^240 ≈ 1e-8.
				assert.Len(t, seen, 12, "backends: %v", seen)
			})

			t.Run("one UDP socket stays on one backend", func(t *testing.T) {
				c, err := inNS(t, client.NS, func() (*net.UDPConn, error) { return net.ListenUDP("udp4", nil) })
				require.NoError(t, err)
				defer c.Close()
				seen := map[string]int{}
				for range 20 {
					_, pod := udpAsk(t, c, netip.AddrPortFrom(vip, 53))
					seen[pod]++
				}
				assert.Len(t, seen, 1, "one flow, one backend: %v", seen)
			})

			t.Run("connected UDP socket talks to the VIP", func(t *testing.T) {
				// A connected socket drops datagrams from any other source,
				// so a reply proves the reverse translation.
				c, err := inNS(t, client.NS, func() (net.Conn, error) {
					return net.Dial("udp4", netip.AddrPortFrom(vip, 53).String())
				})
				require.NoError(t, err)
				defer c.Close()
				require.NoError(t, c.SetDeadline(time.Now().Add(3*time.Second)))
				_, err = c.Write([]byte("who"))
				require.NoError(t, err)
				buf := make([]byte, 64)
				n, err := c.Read(buf)
				require.NoError(t, err)
				_, ok := backends[string(buf[:n])]
				assert.True(t, ok, "reply %q", buf[:n])
				assert.Equal(t, netip.AddrPortFrom(vip, 53), peerName(t, c.(*net.UDPConn)))
			})

			t.Run("service without endpoints drops silently", func(t *testing.T) {
				before := stats()["drop_no_backend"]
				_, err := inNS(t, client.NS, func() (net.Conn, error) {
					return net.DialTimeout("tcp4", netip.AddrPortFrom(emptyVIP, 80).String(), 500*time.Millisecond)
				})
				var ne net.Error
				require.True(t, errors.As(err, &ne) && ne.Timeout(), "want a timeout, got %v", err)
				assert.Greater(t, stats()["drop_no_backend"], before)
			})

			t.Run("direct connection from a port a VIP flow used is not rewritten", func(t *testing.T) {
				c, err := inNS(t, client.NS, func() (net.Conn, error) {
					return net.DialTimeout("tcp4", netip.AddrPortFrom(vip, 80).String(), 3*time.Second)
				})
				require.NoError(t, err)
				pod := httpPod(t, c)
				local := netip.MustParseAddrPort(c.LocalAddr().String())
				closeReset(t, c.(*net.TCPConn))

				// Same client port, straight to the backend that served it:
				// on the wire the same tuple as the VIP flow's answers.
				before := stats()["stale_reverse"]
				direct := netip.AddrPortFrom(backends[pod], tcpTarget)
				d, err := inNS(t, client.NS, func() (net.Conn, error) {
					dialer := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(local)}
					return dialer.Dial("tcp4", direct.String())
				})
				require.NoError(t, err, "direct dial from %s to %s", local, direct)
				defer d.Close()
				assert.Equal(t, direct, peerName(t, d.(*net.TCPConn)))
				assert.Equal(t, pod, httpPod(t, d))
				assert.Equal(t, before+1, stats()["stale_reverse"])
			})

			t.Run("close leaves no attachment and no program", func(t *testing.T) {
				ids, err := tcebpf.ProgramIDs(dp)
				require.NoError(t, err)
				require.NotEmpty(t, attachedPrograms(t, topo.Node, client.HostVeth), "attached before Close")

				require.NoError(t, dp.Close())
				require.NoError(t, dp.Close(), "second Close")
				assert.ErrorIs(t, dp.Apply(ctx, st), tcebpf.ErrNotSetUp)
				assert.Empty(t, attachedPrograms(t, topo.Node, client.HostVeth))
				for _, id := range ids {
					// Freeing is asynchronous once the last reference is gone.
					assert.Eventually(t, func() bool {
						p, err := ebpf.NewProgramFromID(id)
						if err == nil {
							p.Close()
							return false
						}
						return errors.Is(err, os.ErrNotExist)
					}, 5*time.Second, 20*time.Millisecond, "program %d still loaded", id)
				}

				// Untranslated, the VIP is routed to the sink and lost.
				_, err = inNS(t, client.NS, func() (net.Conn, error) {
					return net.DialTimeout("tcp4", netip.AddrPortFrom(vip, 80).String(), 300*time.Millisecond)
				})
				assert.Error(t, err, "VIP must be unreachable after Close")
			})
		})
	}
}

// TestPrivilegedSetupFailures: a Setup that cannot complete leaves nothing
// attached and the datapath closable.
func TestPrivilegedSetupFailures(t *testing.T) {
	tcebpf.RequirePrivileged(t)
	ctx := context.Background()
	topo := newTopology(t)

	tests := []struct {
		name    string
		env     *datapath.Env
		wantErr error
		wantMsg string
	}{
		{"no env", nil, tcebpf.ErrNoClients, ""},
		{"no clients", &datapath.Env{Node: topo.Node}, tcebpf.ErrNoClients, ""},
		{"empty host veth", &datapath.Env{Node: topo.Node, Clients: []datapath.Pod{{Name: "c"}}}, tcebpf.ErrNoClients, "clients[0] (c): empty host_veth"},
		// The second veth does not exist: the first one's hooks must be
		// detached again.
		{"missing veth", &datapath.Env{Node: topo.Node, Clients: []datapath.Pod{topo.Clients[0], {Name: "ghost", HostVeth: "ghost"}}}, nil, "find host veth ghost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dp := tcebpf.New()
			err := dp.Setup(ctx, tt.env)
			require.Error(t, err)
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			}
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.Empty(t, attachedPrograms(t, topo.Node, topo.Clients[0].HostVeth))
			assert.NoError(t, dp.Close())
			assert.ErrorIs(t, dp.Apply(ctx, datapath.State{}), tcebpf.ErrNotSetUp)
		})
	}

	t.Run("setup twice", func(t *testing.T) {
		dp := tcebpf.New()
		require.NoError(t, dp.Setup(ctx, topo.Env()))
		t.Cleanup(func() { assert.NoError(t, dp.Close()) })
		assert.ErrorIs(t, dp.Setup(ctx, topo.Env()), tcebpf.ErrAlreadySetUp)
		assert.Len(t, attachedPrograms(t, topo.Node, topo.Clients[0].HostVeth), 2, "a refused second Setup must not attach again")
	})
}

// The datapath is registered under the name users type.
func TestRegistered(t *testing.T) {
	f, err := datapath.Lookup(tcebpf.Name)
	require.NoError(t, err)
	assert.Equal(t, "tc-ebpf", f.Name)
	_, ok := f.New().(*tcebpf.Datapath)
	assert.True(t, ok)
}
