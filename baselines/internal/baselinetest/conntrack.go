package baselinetest

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/twin6"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// udpTopology is a node namespace routing between a client pod and two
// backend pods, each on its own /24 (and, for IPv6, its own /64: the
// twin6.Addr of the /24).
type udpTopology struct {
	node, client *nsutil.NS
	backends     [2]*nsutil.NS
	backendAddrs [2]netip.Addr
	clientAddr   netip.Addr
}

func newUDPTopology(t *testing.T, v6 bool) *udpTopology {
	t.Helper()
	addr := func(s string) netip.Addr {
		a := netip.MustParseAddr(s)
		if v6 {
			a = twin6.Addr(a)
		}
		return a
	}
	u := &udpTopology{
		node: NewNS(t), client: NewNS(t),
		backends:     [2]*nsutil.NS{NewNS(t), NewNS(t)},
		backendAddrs: [2]netip.Addr{addr("10.244.1.1"), addr("10.244.3.1")},
		clientAddr:   addr("10.244.2.1"),
	}
	ctx := context.Background()
	run := func(ns *nsutil.NS, args ...string) {
		t.Helper()
		_, err := ns.Run(ctx, nil, "ip", args...)
		require.NoError(t, err)
	}
	require.NoError(t, u.node.Sysctl("net/ipv4/ip_forward", "1"))
	require.NoError(t, u.node.Sysctl("net/ipv6/conf/all/forwarding", "1"))
	pods := []struct {
		ns   *nsutil.NS
		veth string
		addr netip.Addr
	}{
		{u.client, "client0", u.clientAddr},
		{u.backends[0], "backend0", u.backendAddrs[0]},
		{u.backends[1], "backend1", u.backendAddrs[1]},
	}
	for _, p := range pods {
		bits, gwAddr := 24, p.addr
		if !v6 {
			gw := p.addr.As4()
			gw[3] = 254
			gwAddr = netip.AddrFrom4(gw)
		} else {
			gw := p.addr.As16()
			gw[15] = 0xfe
			bits, gwAddr = 64, netip.AddrFrom16(gw)
		}
		plen := "/" + strconv.Itoa(bits)
		// Created in the node namespace with the peer placed straight
		// into the pod's: nothing appears in the root namespace.
		run(u.node, "link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.ns.Name)
		// nodad: an IPv6 address is tentative, so unusable, until
		// duplicate address detection ends; there is nothing to detect.
		run(u.node, "addr", "add", gwAddr.String()+plen, "dev", p.veth, "nodad")
		run(u.node, "link", "set", p.veth, "up")
		run(p.ns, "addr", "add", p.addr.String()+plen, "dev", "eth0", "nodad")
		run(p.ns, "link", "set", "eth0", "up")
		run(p.ns, "route", "add", "default", "via", gwAddr.String())
	}
	return u
}

// serveIdentity answers every UDP datagram on addr with addr's IP, so the
// client learns which backend got it.
func serveIdentity(t *testing.T, ns *nsutil.NS, addr netip.AddrPort) {
	t.Helper()
	var pc net.PacketConn
	require.NoError(t, ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(addr.Addr().String()), from)
		}
	}()
}

// exchange sends one datagram from pc to to and returns the reply.
func exchange(pc net.PacketConn, to netip.AddrPort) (string, error) {
	if _, err := pc.WriteTo([]byte("?"), net.UDPAddrFromAddrPort(to)); err != nil {
		return "", err
	}
	if err := pc.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, _, err := pc.ReadFrom(buf)
	return string(buf[:n]), err
}

// UDPConntrackCleanup: a client keeps one unconnected UDP socket (so one
// conntrack entry) and talks to a VIP; when Apply removes the endpoint the
// flow went to, the very next datagram from the same socket must reach the
// remaining endpoint. Both backends keep listening, so without the cleanup
// the stale entry would still deliver to the removed one and the test would
// see its address. dp is an unconfigured datapath of the baseline under test.
// v6 makes the service, the pods and the socket IPv6: then the
// node is dual-stack and the datagrams are real IPv6 ones through the
// datapath's IPv6 rules (DNAT, reply un-NAT and the conntrack cleanup).
func UDPConntrackCleanup(t *testing.T, dp datapath.Datapath, v6 bool) {
	u := newUDPTopology(t, v6)
	for i, ns := range u.backends {
		serveIdentity(t, ns, netip.AddrPortFrom(u.backendAddrs[i], 5353))
	}
	vipAddr := netip.MustParseAddr("10.96.0.53")
	env := &datapath.Env{Node: u.node, PodCIDR: PodCIDR}
	if v6 {
		vipAddr = twin6.Addr(vipAddr)
		env.PodCIDR6, env.ServiceCIDR6 = PodCIDR6, netip.MustParsePrefix("fd00:10:96::/48")
	}
	svc := datapath.Service{Namespace: "bench", Name: "dns", ClusterIP: vipAddr,
		Ports: []datapath.ServicePort{{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353}}}
	for i, a := range u.backendAddrs {
		svc.Endpoints = append(svc.Endpoints, datapath.Endpoint{Pod: []string{"b0", "b1"}[i], Addr: a, Ready: true, Serving: true})
	}
	vip := netip.AddrPortFrom(svc.ClusterIP, 53)

	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, env))
	t.Cleanup(func() { assert.NoError(t, dp.Close()) })
	require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{svc}}))

	var pc net.PacketConn
	require.NoError(t, u.client.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(u.clientAddr, 0).String())
		return err
	}))
	t.Cleanup(func() { pc.Close() })

	first, err := exchange(pc, vip)
	require.NoError(t, err)
	// The conntrack entry pins the flow: a second datagram goes the same way.
	again, err := exchange(pc, vip)
	require.NoError(t, err)
	require.Equal(t, first, again, "one socket, one conntrack entry, one backend")

	// Remove the endpoint the flow went to; the other one stays.
	kept := svc
	kept.Endpoints = nil
	for _, ep := range svc.Endpoints {
		if ep.Addr.String() != first {
			kept.Endpoints = append(kept.Endpoints, ep)
		}
	}
	require.Len(t, kept.Endpoints, 1)
	require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{kept}}))

	got, err := exchange(pc, vip)
	require.NoError(t, err)
	assert.Equal(t, kept.Endpoints[0].Addr.String(), got, "the next datagram from the same socket reaches the remaining endpoint")
}
