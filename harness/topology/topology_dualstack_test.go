package topology

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"svclab/harness/internal/harnesstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func dualStackConfig(prefix string, backends int) Config {
	c := Default(prefix, backends)
	c.PodCIDR6 = netip.MustParsePrefix("fd00:10:244::/120")
	c.ServiceCIDR6 = netip.MustParsePrefix("fd00:10:96::/112")
	return c
}

func TestNthHost(t *testing.T) {
	tests := []struct {
		prefix string
		n      int
		want   string
	}{
		{"10.244.0.0/24", 1, "10.244.0.1"},
		{"10.244.0.0/16", 300, "10.244.1.44"},
		{"fd00:10:244::/120", 1, "fd00:10:244::1"},
		{"fd00:10:244::/64", 0x1ff, "fd00:10:244::1ff"},
		{"fd00::ff00/120", 0x100, "fd00::1:0"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			assert.Equal(t, netip.MustParseAddr(tt.want), NthHost(netip.MustParsePrefix(tt.prefix), tt.n))
		})
	}
}

func TestTopologyConfigValidateDualStack(t *testing.T) {
	good := dualStackConfig("svclab-00000000", 12)
	require.NoError(t, good.Validate())
	assert.True(t, good.DualStack())
	assert.False(t, Default("svclab-00000000", 12).DualStack())
	tests := []invalidCase{
		{"pod CIDR6 without service CIDR6", func(c *Config) { c.ServiceCIDR6 = netip.Prefix{} }, "serviceCIDR6"},
		{"service CIDR6 without pod CIDR6", func(c *Config) { c.PodCIDR6 = netip.Prefix{} }, "podCIDR6"},
		{"IPv4 pod CIDR6", func(c *Config) { c.PodCIDR6 = netip.MustParsePrefix("10.1.0.0/16") }, "podCIDR6"},
		{"overlapping CIDR6s", func(c *Config) { c.ServiceCIDR6 = netip.MustParsePrefix("fd00:10:244::/64") }, "serviceCIDR6"},
		{"link-local pod CIDR6", func(c *Config) { c.PodCIDR6 = netip.MustParsePrefix("fe80::/64") }, "podCIDR6"},
		{"pod CIDR6 too small", func(c *Config) { c.PodCIDR6 = netip.MustParsePrefix("fd00:10:244::/125") }, "podCIDR6"},
	}
	checkInvalid(t, good, tests)
}

// globalAddrs lists the non-link-local addresses of a pod's eth0.
func globalAddrs(t *testing.T, h *netlink.Handle, family int) []string {
	t.Helper()
	eth0, err := h.LinkByName("eth0")
	require.NoError(t, err)
	addrs, err := h.AddrList(eth0, family)
	require.NoError(t, err)
	var out []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			out = append(out, a.IPNet.String())
		}
	}
	return out
}

// A dual-stack topology routes IPv6 pod to pod through the node like IPv4,
// and an IPv4-only one has no IPv6 address beyond link-local ones.
func TestPrivilegedTopologyDualStack(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	before := rootLinks(t)

	t.Run("IPv4-only topology has no IPv6 addresses", func(t *testing.T) {
		topo, err := New(context.Background(), Default(run.Prefix+"-v4", 1))
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, topo.Close()) })
		assert.False(t, topo.Clients[0].Addr6.IsValid())
		env := topo.Env()
		assert.False(t, env.PodCIDR6.IsValid())
		assert.False(t, env.ServiceCIDR6.IsValid())
		h, err := topo.Clients[0].NS.NetlinkHandle()
		require.NoError(t, err)
		defer h.Close()
		assert.Empty(t, globalAddrs(t, h, unix.AF_INET6))
	})

	t.Run("dual-stack pods reach each other over IPv6", func(t *testing.T) {
		cfg := dualStackConfig(run.Prefix+"-ds", 2)
		topo, err := New(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, topo.Close()) })
		env := topo.Env()
		assert.Equal(t, cfg.PodCIDR6, env.PodCIDR6)
		assert.Equal(t, cfg.ServiceCIDR6, env.ServiceCIDR6)
		for i, p := range append(topo.Clients, topo.Backends...) {
			assert.Equal(t, NthHost(cfg.PodCIDR6, i+1), p.Addr6, p.Name)
			assert.Equal(t, NthHost(cfg.PodCIDR, i+1), p.Addr, p.Name)
		}

		// A listener in a backend on its IPv6 address, dialled from the
		// client: the path crosses both veths and the node's v6 routes.
		b := topo.Backends[1]
		var l net.Listener
		require.NoError(t, b.NS.Do(func() error {
			var err error
			l, err = net.Listen("tcp6", netip.AddrPortFrom(b.Addr6, 8080).String())
			return err
		}))
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte(c.RemoteAddr().String() + "\n"))
				c.Close()
			}
		}()
		var line string
		require.NoError(t, topo.Clients[0].NS.Do(func() error {
			c, err := net.DialTimeout("tcp6", netip.AddrPortFrom(b.Addr6, 8080).String(), 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			line, err = bufio.NewReader(c).ReadString('\n')
			return err
		}))
		peer, err := netip.ParseAddrPort(strings.TrimSpace(line))
		require.NoError(t, err)
		assert.Equal(t, topo.Clients[0].Addr6, peer.Addr(), "the backend sees the client's own IPv6 address")

		// A ClusterIP of the IPv6 service CIDR is routed (to the sink)
		// rather than unreachable, as in IPv4.
		require.NoError(t, topo.Clients[0].NS.Do(func() error {
			c, err := net.DialTimeout("udp6", netip.AddrPortFrom(NthHost(cfg.ServiceCIDR6, 10), 53).String(), time.Second)
			if err == nil {
				_, err = c.Write([]byte("x"))
				c.Close()
			}
			return err
		}), "sending to an IPv6 ClusterIP must not fail with a routing error")
	})
	assert.Equal(t, before, rootLinks(t), "the root namespace's links must not change")
}
