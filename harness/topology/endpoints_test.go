package topology

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/internal/nsutil"
)

func TestTopologyConfigValidateExtraEndpoints(t *testing.T) {
	good := Default("svclab-00000000", 3)
	good.ExtraEndpoints = 40
	require.NoError(t, good.Validate())
	tests := []struct {
		name   string
		mutate func(*Config)
		reason string // "" means valid
	}{
		{"none", func(c *Config) { c.ExtraEndpoints = 0 }, ""},
		{"one", func(c *Config) { c.ExtraEndpoints = 1 }, ""},
		{"negative", func(c *Config) { c.ExtraEndpoints = -1 }, "negative"},
		{"above the limit", func(c *Config) {
			c.PodCIDR = netip.MustParsePrefix("11.0.0.0/8")
			c.ExtraEndpoints = MaxExtraEndpoints + 1
		}, "limit"},
		{"too many for pod CIDR", func(c *Config) { c.ExtraEndpoints = 300 }, "do not fit"},
		// 3 blocks of 64 fill 10.244.0.64/26 .. /24's top; the pods
		// (hosts 1-4) stay below.
		{"fills the upper three quarters", func(c *Config) { c.ExtraEndpoints = 190 }, ""},
		// 3 x 64 exactly: the last block would end on the broadcast
		// address, so the blocks move down by one and reach the pods.
		{"would need the broadcast address", func(c *Config) { c.ExtraEndpoints = 192 }, "do not fit"},
		// In a /28 the pods are hosts 1-4 (one client, three backends).
		{"blocks reach the pods", func(c *Config) {
			c.PodCIDR = netip.MustParsePrefix("10.244.0.0/28")
			c.ExtraEndpoints = 9 // 3 blocks of 4 would start at .4, a pod
		}, "do not fit"},
		{"two per pod in a /28", func(c *Config) {
			c.PodCIDR = netip.MustParsePrefix("10.244.0.0/28")
			c.ExtraEndpoints = 6 // 3 blocks of 2, moved off .15: .8-.13
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mutate(&c)
			err := c.Validate()
			if tt.reason == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "extraEndpoints:"), "error %q should name field extraEndpoints", err)
			assert.Contains(t, err.Error(), tt.reason)
		})
	}
}

// askPod connects from ns to dst over TCP, sends the request the clients
// send and returns the pod the reply names. The handshake itself shows the
// reply came from dst: a SYN-ACK from any other source would not complete
// it.
func askPod(t *testing.T, ns *nsutil.NS, dst netip.AddrPort) string {
	t.Helper()
	var c net.Conn
	require.NoError(t, ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", dst.String(), 5*time.Second)
		return err
	}))
	defer c.Close()
	_, err := c.Write(loadgen.Request)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	pod := resp.Header.Get("X-Svclab-Pod")
	assert.Equal(t, pod+"\n", string(body), "header and body name the same pod")
	return pod
}

// checkRouted checks that every endpoint is routed to its own pod and no
// other: on the node via that pod's host veth, in that pod as a local
// address, and in the other backends out of eth0 like any remote address.
func checkRouted(t *testing.T, topo *Topology, eps []datapath.Endpoint) {
	t.Helper()
	nh, err := topo.Node.NetlinkHandle()
	require.NoError(t, err)
	defer nh.Close()
	podHandles := map[string]*netlink.Handle{}
	veths := map[string]int{}
	for _, b := range topo.Backends {
		h, err := b.NS.NetlinkHandle()
		require.NoError(t, err)
		defer h.Close()
		podHandles[b.Name] = h
		l, err := nh.LinkByName(b.HostVeth)
		require.NoError(t, err)
		veths[b.Name] = l.Attrs().Index
	}
	for _, ep := range eps {
		rs, err := nh.RouteGet(net.IP(ep.Addr.AsSlice()))
		require.NoError(t, err, "node: route to %s", ep.Addr)
		require.Len(t, rs, 1)
		assert.Equal(t, veths[ep.Pod], rs[0].LinkIndex, "node routes %s to %s's veth", ep.Addr, ep.Pod)
		for pod, h := range podHandles {
			rs, err := h.RouteGet(net.IP(ep.Addr.AsSlice()))
			require.NoError(t, err, "pod %s: route to %s", pod, ep.Addr)
			require.Len(t, rs, 1)
			if pod == ep.Pod {
				assert.Equal(t, unix.RTN_LOCAL, rs[0].Type, "%s is local in %s", ep.Addr, pod)
			} else {
				assert.Equal(t, unix.RTN_UNICAST, rs[0].Type, "%s is not local in %s", ep.Addr, pod)
			}
		}
	}
}

func TestPrivilegedExtraEndpoints(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	before := rootLinks(t)
	cfg := Default(run.Prefix+"-eps", 3)
	cfg.ExtraEndpoints = 40
	topo, err := New(context.Background(), cfg)
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			topo.Close()
		}
	}()

	all := len(topo.Backends) + cfg.ExtraEndpoints
	eps, err := topo.Endpoints(all)
	require.NoError(t, err)
	require.Len(t, eps, all)
	_, err = topo.Endpoints(all + 1)
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprint(all+1), "names n")
	assert.Contains(t, err.Error(), fmt.Sprint(all), "names the limit")
	few, err := topo.Endpoints(5)
	require.NoError(t, err)
	assert.Equal(t, eps[:5], few, "Endpoints(n) is a prefix of the whole list")

	podAddrs := map[netip.Addr]bool{}
	for _, p := range append(append([]datapath.Pod{}, topo.Clients...), topo.Backends...) {
		podAddrs[p.Addr] = true
	}
	seen := map[netip.Addr]bool{}
	// byPod lists each backend's extra addresses in order.
	byPod := map[string][]netip.Addr{}
	for i, ep := range eps {
		assert.True(t, ep.Ready && ep.Serving && !ep.Terminating, "endpoint %d conditions", i)
		assert.False(t, seen[ep.Addr], "endpoint %d: %s listed twice", i, ep.Addr)
		seen[ep.Addr] = true
		assert.True(t, cfg.PodCIDR.Contains(ep.Addr), "endpoint %d: %s in pod CIDR", i, ep.Addr)
		if i < len(topo.Backends) {
			assert.Equal(t, topo.Backends[i].Name, ep.Pod, "endpoint %d: backends first, in order", i)
			assert.Equal(t, topo.Backends[i].Addr, ep.Addr, "endpoint %d: the pod's own address", i)
			continue
		}
		j := i - len(topo.Backends)
		assert.Equal(t, topo.Backends[j%len(topo.Backends)].Name, ep.Pod, "extra %d: round robin", j)
		assert.False(t, podAddrs[ep.Addr], "extra %d: %s is a pod's address", j, ep.Addr)
		if prev := byPod[ep.Pod]; len(prev) > 0 {
			assert.Equal(t, prev[len(prev)-1].Next(), ep.Addr, "extra %d: consecutive within %s", j, ep.Pod)
		}
		byPod[ep.Pod] = append(byPod[ep.Pod], ep.Addr)
	}
	checkRouted(t, topo, eps)

	// Through the server the harness starts: the first, middle and last
	// extra address of each pod, and the pod's own address, each answered
	// by its pod.
	srv, err := startBackends(topo, 8080)
	require.NoError(t, err)
	defer srv.Stop()
	for _, b := range topo.Backends {
		extra := byPod[b.Name]
		require.NotEmpty(t, extra)
		for _, a := range []netip.Addr{b.Addr, extra[0], extra[len(extra)/2], extra[len(extra)-1]} {
			t.Run(b.Name+"/"+a.String(), func(t *testing.T) {
				assert.Equal(t, b.Name, askPod(t, topo.Clients[0].NS, netip.AddrPortFrom(a, 8080)))
			})
		}
	}
	require.NoError(t, srv.Stop())

	closed = true
	require.NoError(t, topo.Close())
	assert.Empty(t, harnesstest.Leftovers(t, run.Prefix))
	assert.Equal(t, before, rootLinks(t), "the root namespace's links must not change")
}

// The endpoint sweep's largest topology: 12 backend pods answering 1,000
// endpoints. The extras cost one route per pod on the node and one in each
// pod, not one per address, so setup stays about as fast as without them.
func TestPrivilegedEndpointSweepTopology(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	var took [2]time.Duration
	for i, extra := range []int{0, 988} {
		cfg := Default(fmt.Sprintf("%s-sweep%d", run.Prefix, i), 12)
		cfg.PodCIDR = netip.MustParsePrefix("10.244.0.0/16")
		cfg.ExtraEndpoints = extra
		start := time.Now()
		topo, err := New(context.Background(), cfg)
		took[i] = time.Since(start)
		require.NoError(t, err)
		if extra > 0 {
			func() {
				defer topo.Close()
				eps, err := topo.Endpoints(12 + extra)
				require.NoError(t, err)
				// Node routes with a gateway inside the pod CIDR are the
				// per-pod block routes: one per backend.
				nh, err := topo.Node.NetlinkHandle()
				require.NoError(t, err)
				defer nh.Close()
				routes, err := nh.RouteList(nil, unix.AF_INET)
				require.NoError(t, err)
				blocks := 0
				for _, r := range routes {
					if gw, ok := netip.AddrFromSlice(r.Gw); ok && cfg.PodCIDR.Contains(gw) {
						blocks++
					}
				}
				assert.Equal(t, 12, blocks, "block routes on the node")
				checkRouted(t, topo, []datapath.Endpoint{eps[12], eps[len(eps)/2], eps[len(eps)-1]})
				srv, err := startBackends(topo, 8080)
				require.NoError(t, err)
				defer srv.Stop()
				for _, ep := range []datapath.Endpoint{eps[0], eps[12], eps[len(eps)-1]} {
					assert.Equal(t, ep.Pod, askPod(t, topo.Clients[0].NS, netip.AddrPortFrom(ep.Addr, 8080)), "endpoint %s", ep.Addr)
				}
			}()
		} else {
			require.NoError(t, topo.Close())
		}
	}
	t.Logf("New with 12 backends: %s without extra endpoints, %s with 988", took[0], took[1])
	assert.Empty(t, harnesstest.Leftovers(t, run.Prefix))
}

// UDP to an extra address is answered by its pod from that address (the
// wildcard socket replies with IP_PKTINFO): a reply from the pod's own
// address would miss a connected client socket and a datapath's reverse
// translation.
func TestPrivilegedExtraEndpointsUDP(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	cfg := Default(run.Prefix+"-udp", 3)
	cfg.ExtraEndpoints = 40
	topo, err := New(context.Background(), cfg)
	require.NoError(t, err)
	defer topo.Close()
	eps, err := topo.Endpoints(len(topo.Backends) + cfg.ExtraEndpoints)
	require.NoError(t, err)
	srv, err := startBackends(topo, 8080)
	require.NoError(t, err)
	defer srv.Stop()
	var c *net.UDPConn
	require.NoError(t, topo.Clients[0].NS.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
		return err
	}))
	defer c.Close()
	for _, ep := range []datapath.Endpoint{eps[0], eps[len(topo.Backends)], eps[len(eps)/2], eps[len(eps)-1]} {
		dst := netip.AddrPortFrom(ep.Addr, 8080)
		t.Run(dst.String(), func(t *testing.T) {
			_, err := c.WriteToUDPAddrPort([]byte("hello"), dst)
			require.NoError(t, err)
			require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
			buf := make([]byte, 100)
			n, from, err := c.ReadFromUDPAddrPort(buf)
			require.NoError(t, err)
			assert.Equal(t, ep.Pod+"\n", string(buf[:n]))
			assert.Equal(t, dst, from, "reply source")
		})
	}
}
