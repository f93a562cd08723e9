package nftables

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// miniTopology is a node namespace with a client pod and a backend pod on
// their own /24s, enough to send real packets along all three paths the
// ruleset serves: pod → VIP (prerouting/forward), node → VIP (output) and
// backend → VIP → itself (hairpin).
type miniTopology struct {
	node, client, backend *nsutil.NS
}

// Addresses of the mini topology. The service CIDR is routed towards the
// backend pod, which does not forward: untranslated VIP traffic is lost
// there, as on a node whose default route leads nowhere useful.
var (
	miniNodeToClient  = netip.MustParseAddr("10.244.2.254")
	miniNodeToBackend = netip.MustParseAddr("10.244.1.254")
	miniClient        = netip.MustParseAddr("10.244.2.1")
	miniBackend       = netip.MustParseAddr("10.244.1.1")
)

func newMiniTopology(t *testing.T) *miniTopology {
	t.Helper()
	m := &miniTopology{node: baselinetest.NewNS(t), client: baselinetest.NewNS(t), backend: baselinetest.NewNS(t)}
	ctx := context.Background()
	run := func(ns *nsutil.NS, args ...string) {
		t.Helper()
		_, err := ns.Run(ctx, nil, "ip", args...)
		require.NoError(t, err)
	}
	require.NoError(t, m.node.Sysctl("net/ipv4/ip_forward", "1"))
	for _, p := range []struct {
		ns      *nsutil.NS
		veth    string
		pod, gw netip.Addr
	}{
		{m.client, "client0", miniClient, miniNodeToClient},
		{m.backend, "backend0", miniBackend, miniNodeToBackend},
	} {
		// The pair is created in the node namespace with its peer placed
		// straight into the pod's: nothing appears in the root namespace.
		run(m.node, "link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.ns.Name)
		run(m.node, "addr", "add", p.gw.String()+"/24", "dev", p.veth)
		run(m.node, "link", "set", p.veth, "up")
		run(p.ns, "addr", "add", p.pod.String()+"/24", "dev", "eth0")
		run(p.ns, "link", "set", "eth0", "up")
		run(p.ns, "route", "add", "default", "via", p.gw.String())
	}
	run(m.node, "route", "add", "10.96.0.0/12", "via", miniBackend.String())
	return m
}

// serve answers every TCP connection and UDP datagram on the backend with
// the source address the backend saw, so the client learns whether it was
// masqueraded.
func serve(t *testing.T, ns *nsutil.NS, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	require.NoError(t, ns.Do(func() error {
		var err error
		if ln, err = net.Listen("tcp4", addr.String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", addr.String())
		return err
	}))
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			src := c.RemoteAddr().(*net.TCPAddr).IP.String()
			_, _ = c.Write([]byte(src))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(from.(*net.UDPAddr).IP.String()), from)
		}
	}()
}

// ask connects from ns to addr over network, sends a byte and returns the
// reply (the source address the backend saw) or the error.
func ask(ns *nsutil.NS, network string, addr netip.AddrPort) (string, error) {
	var reply string
	err := ns.Do(func() error {
		c, err := net.DialTimeout(network, addr.String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		if _, err := c.Write([]byte("?")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		reply = string(buf[:n])
		if err != nil && n == 0 {
			return err
		}
		return nil
	})
	return reply, err
}

// TestPrivilegedSockets sends real TCP and UDP traffic through the applied
// ruleset: DNAT on every path, masquerade exactly where kube-proxy applies
// it, and ECONNREFUSED for a service without endpoints, both from a pod
// (rejected in forward) and from the node (rejected in output).
func TestPrivilegedSockets(t *testing.T) {
	requireNft(t)
	m := newMiniTopology(t)
	serve(t, m.backend, netip.AddrPortFrom(miniBackend, 8080))
	serve(t, m.backend, netip.AddrPortFrom(miniBackend, 5353))

	one := []datapath.Endpoint{{Pod: "backend", Addr: miniBackend, Ready: true, Serving: true}}
	web, dns, empty := baselinetest.WebService(1), baselinetest.DNSService(), baselinetest.EmptyService()
	web.Endpoints, dns.Endpoints = one, one
	emptyUDP := datapath.Service{Namespace: "bench", Name: "empty-udp", ClusterIP: netip.MustParseAddr("10.96.0.21"),
		Ports: []datapath.ServicePort{baselinetest.DNSUDP}}
	dp := &Datapath{t: nft}
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: m.node, PodCIDR: baselinetest.PodCIDR}))
	t.Cleanup(func() { assert.NoError(t, dp.Close()) })
	require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{web, dns, empty, emptyUDP}}))

	tests := []struct {
		name    string
		from    *nsutil.NS
		network string
		to      string
		// want is the source address the backend must see; empty
		// means the connection must be refused.
		want string
	}{
		{"pod to VIP over TCP keeps the pod's address", m.client, "tcp4", "10.96.0.10:80", miniClient.String()},
		{"pod to VIP over UDP keeps the pod's address", m.client, "udp4", "10.96.0.53:53", miniClient.String()},
		{"pod to the TCP port of a TCP+UDP service", m.client, "tcp4", "10.96.0.53:53", miniClient.String()},
		{"node to VIP is masqueraded", m.node, "tcp4", "10.96.0.10:80", miniNodeToBackend.String()},
		{"hairpin: backend to its own VIP is masqueraded", m.backend, "tcp4", "10.96.0.10:80", miniNodeToBackend.String()},
		{"pod to a service without endpoints is refused (forward)", m.client, "tcp4", "10.96.0.20:80", ""},
		{"node to a service without endpoints is refused (output)", m.node, "tcp4", "10.96.0.20:80", ""},
		// A connected UDP socket sees the ICMP port-unreachable as
		// ECONNREFUSED on its next read.
		{"pod to a UDP service without endpoints is refused", m.client, "udp4", "10.96.0.21:53", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ask(tt.from, tt.network, netip.MustParseAddrPort(tt.to))
			if tt.want == "" {
				assert.True(t, errors.Is(err, syscall.ECONNREFUSED), "want ECONNREFUSED at once, got %v", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, strings.TrimSpace(got), "source address the backend saw")
		})
	}

	// Once the service is gone the VIP is not translated any more: the
	// packets go where the node routes the service CIDR (the backend pod,
	// which has no such address), and the client times out.
	require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{empty}}))
	err := m.client.Do(func() error {
		c, err := net.DialTimeout("tcp4", "10.96.0.10:80", 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	assert.Error(t, err, "a removed service must not answer")
}
