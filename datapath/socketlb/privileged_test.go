package socketlb

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/datapath"
)

func TestPrivilegedTCP(t *testing.T) {
	f := newFixture(t)
	dp := f.dp

	info := dp.Info()
	assert.Equal(t, "bpf_link", info["attach"])
	assert.Equal(t, "ECONNREFUSED", info["no_endpoints_errno"], "bpf_set_retval should be usable on this kernel")
	assert.Equal(t, "connect4,connect6,sendmsg4,sendmsg6,recvmsg4,recvmsg6,getpeername4,getpeername6", info["hooks"])

	var progIDs []ebpf.ProgramID
	for _, h := range hooks {
		pi, err := dp.progs[h.prog].Info()
		require.NoError(t, err)
		id, ok := pi.ID()
		require.True(t, ok, "kernel reports no program ID")
		assert.True(t, strings.HasPrefix(pi.Name, "svclab_"), "program name %q carries the svclab_ prefix", pi.Name)
		progIDs = append(progIDs, id)
	}
	var mapIDs []ebpf.MapID
	for _, m := range []*ebpf.Map{dp.maps.SvclabServices, dp.maps.SvclabBackends, dp.maps.SvclabMembers, dp.maps.SvclabAffinity,
		dp.maps.SvclabRevnat, dp.maps.SvclabSock, dp.maps.SvclabSvcCtr, dp.maps.SvclabBeCtr} {
		mi, err := m.Info()
		require.NoError(t, err)
		id, ok := mi.ID()
		require.True(t, ok)
		assert.True(t, strings.HasPrefix(mi.Name, "svclab_"), "map name %q carries the svclab_ prefix", mi.Name)
		mapIDs = append(mapIDs, id)
	}

	web := svc("web", "10.96.0.10", 80, 8080, be("a"), be("b"), be("c"))
	web6 := svc("web6", "fd00:96::10", 80, 8080, be("a6"), be("b6"), be("c6"))
	empty := svc("empty", "10.96.0.11", 80, 8080)
	empty6 := svc("empty6", "fd00:96::11", 80, 8080)
	multi := withPorts(svc("multi", "10.96.0.20", 80, 8080, be("a"), be("b")), datapath.ServicePort{Name: "alt", Protocol: datapath.TCP, Port: 81, TargetPort: 8081})
	f.apply(web, web6, empty, empty6, multi)
	assert.Equal(t, dp.installed, readTables(t, dp), "cache must equal the kernel maps")

	c := f.client()
	// 60 connections miss one of three backends with probability 3*(2/3)^60.
	tests := []struct {
		name  string
		cmd   clientCmd
		check func(t *testing.T, r clientRes)
	}{
		{"IPv4 VIP reaches all three backends and getpeername says VIP", clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 60}, func(t *testing.T, r clientRes) {
			assert.Equal(t, []string{"a", "b", "c"}, keysOf(r.Replies), "replies: %v errors: %v", r.Replies, r.Errors)
			assert.Equal(t, map[string]int{"10.96.0.10:80": 60}, r.Peers)
		}},
		{"IPv6 VIP reaches all three backends and getpeername says VIP", clientCmd{Op: "tcp", Net: "tcp6", Addr: "[fd00:96::10]:80", N: 60}, func(t *testing.T, r clientRes) {
			assert.Equal(t, []string{"a6", "b6", "c6"}, keysOf(r.Replies), "replies: %v errors: %v", r.Replies, r.Errors)
			assert.Equal(t, map[string]int{"[fd00:96::10]:80": 60}, r.Peers)
		}},
		{"AF_INET6 socket to a v4-mapped VIP uses the IPv4 service", clientCmd{Op: "tcp", Net: "tcp6", Addr: "[::ffff:10.96.0.10]:80", N: 60}, func(t *testing.T, r clientRes) {
			assert.Equal(t, []string{"a", "b", "c"}, keysOf(r.Replies), "replies: %v errors: %v", r.Replies, r.Errors)
			assert.Equal(t, map[string]int{"[::ffff:10.96.0.10]:80": 60}, r.Peers)
		}},
		{"a backend's own address is left alone", clientCmd{Op: "tcp", Net: "tcp4", Addr: addr("b", 8080), N: 3}, func(t *testing.T, r clientRes) {
			assert.Equal(t, map[string]int{"b": 3}, r.Replies)
			assert.Equal(t, map[string]int{addr("b", 8080): 3}, r.Peers)
		}},
		{"an IPv6 backend's own address is left alone", clientCmd{Op: "tcp", Net: "tcp6", Addr: addr("b6", 8080), N: 3}, func(t *testing.T, r clientRes) {
			assert.Equal(t, map[string]int{"b6": 3}, r.Replies)
		}},
		{"a port the service does not have is left alone", clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:81", N: 1}, func(t *testing.T, r clientRes) {
			assert.Equal(t, map[string]int{"ENETUNREACH": 1}, r.Errors)
		}},
		{"IPv4 service without endpoints refuses promptly", clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.11:80", N: 3}, func(t *testing.T, r clientRes) {
			assert.Equal(t, map[string]int{"ECONNREFUSED": 3}, r.Errors)
			assert.Less(t, r.Elapsed, 500*time.Millisecond, "refusal must come from connect() itself")
		}},
		{"IPv6 service without endpoints refuses promptly", clientCmd{Op: "tcp", Net: "tcp6", Addr: "[fd00:96::11]:80", N: 3}, func(t *testing.T, r clientRes) {
			assert.Equal(t, map[string]int{"ECONNREFUSED": 3}, r.Errors)
		}},
		{"v4-mapped service without endpoints refuses", clientCmd{Op: "tcp", Net: "tcp6", Addr: "[::ffff:10.96.0.11]:80", N: 1}, func(t *testing.T, r clientRes) {
			assert.Equal(t, map[string]int{"ECONNREFUSED": 1}, r.Errors)
		}},
		{"each port of a multi-port service has its own target port", clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.20:81", N: 40}, func(t *testing.T, r clientRes) {
			assert.Equal(t, []string{"a/8081", "b/8081"}, keysOf(r.Replies), "errors: %v", r.Errors)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, c.do(tt.cmd)) })
	}

	t.Run("resync drops a removed endpoint and its slot", func(t *testing.T) {
		web2 := svc("web", "10.96.0.10", 80, 8080, be("a"), be("b"))
		f.apply(web2, web6, empty, empty6, multi)
		kernel := readTables(t, dp)
		assert.Equal(t, dp.installed, kernel)
		r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 40})
		assert.Equal(t, []string{"a", "b"}, keysOf(r.Replies), "errors: %v", r.Errors)
	})

	t.Run("removing a port stops it, the other port keeps working", func(t *testing.T) {
		f.apply(svc("multi", "10.96.0.20", 80, 8080, be("a"), be("b")))
		r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.20:81", N: 1})
		assert.Equal(t, map[string]int{"ENETUNREACH": 1}, r.Errors)
		r = c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.20:80", N: 10})
		assert.Empty(t, r.Errors)
	})

	t.Run("empty state empties the maps", func(t *testing.T) {
		f.apply()
		kernel := readTables(t, dp)
		assert.Empty(t, kernel.services)
		assert.Empty(t, kernel.backends)
		assert.Empty(t, kernel.members)
	})

	t.Run("close leaves nothing behind", func(t *testing.T) {
		require.NoError(t, dp.Close())
		require.NoError(t, dp.Close(), "second Close")
		assert.ErrorIs(t, dp.Apply(context.Background(), datapath.State{}), ErrNotSetUp)

		for _, h := range hooks {
			q, err := link.QueryPrograms(link.QueryOptions{Target: f.cg.fd, Attach: h.attach})
			require.NoError(t, err)
			assert.Empty(t, q.Programs, "%s programs still attached to %s", h.name, f.cg.path)
		}
		// Freeing is asynchronous once the last reference is gone.
		for _, id := range progIDs {
			assert.Eventually(t, func() bool {
				p, err := ebpf.NewProgramFromID(id)
				if err == nil {
					p.Close()
					return false
				}
				return errors.Is(err, os.ErrNotExist)
			}, 5*time.Second, 20*time.Millisecond, "program %d still loaded", id)
		}
		for _, id := range mapIDs {
			assert.Eventually(t, func() bool {
				m, err := ebpf.NewMapFromID(id)
				if err == nil {
					m.Close()
					return false
				}
				return errors.Is(err, os.ErrNotExist)
			}, 5*time.Second, 20*time.Millisecond, "map %d still exists", id)
		}

		// And the client is back to an untranslated world.
		r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 1})
		assert.Equal(t, map[string]int{"ENETUNREACH": 1}, r.Errors)
	})
}

func TestPrivilegedUDP(t *testing.T) {
	f := newFixture(t)
	dns := withPorts(svcProto("dns", "10.96.0.53", datapath.UDP, 53, 5353, be("a"), be("b"), be("c")),
		datapath.ServicePort{Name: "tcp", Protocol: datapath.TCP, Port: 53, TargetPort: 8080})
	dns6 := svcProto("dns6", "fd00:96::53", datapath.UDP, 53, 5353, be("a6"), be("b6"), be("c6"))
	empty := svcProto("empty", "10.96.0.54", datapath.UDP, 53, 5353)
	empty6 := svcProto("empty6", "fd00:96::54", datapath.UDP, 53, 5353)
	f.apply(dns, dns6, empty, empty6)
	c := f.client()

	families := []struct {
		name, net, vip string
		backends       []string
	}{
		{"IPv4", "udp4", "10.96.0.53:53", []string{"a", "b", "c"}},
		{"IPv6", "udp6", "[fd00:96::53]:53", []string{"a6", "b6", "c6"}},
		{"v4-mapped on AF_INET6", "udp6", "[::ffff:10.96.0.53]:53", []string{"a", "b", "c"}},
	}
	for _, fam := range families {
		t.Run(fam.name+": fresh unconnected sockets spread and every reply comes from the VIP", func(t *testing.T) {
			r := c.do(clientCmd{Op: "udp", Net: fam.net, Addr: fam.vip, N: 60})
			assert.Equal(t, fam.backends, keysOf(r.Replies), "errors: %v", r.Errors)
			// Every reply that arrives comes from the VIP. UDP may lose a
			// datagram on a loaded machine; losing more than a few is a
			// datapath fault, not load.
			assert.Equal(t, []string{fam.vip}, keysOf(r.Froms))
			assert.GreaterOrEqual(t, r.Froms[fam.vip], 57, "replies of 60 (errors: %v)", r.Errors)
		})
		t.Run(fam.name+": one unconnected socket keeps its backend", func(t *testing.T) {
			id := "u-" + fam.name
			require.Empty(t, c.do(clientCmd{Op: "open", ID: id, Net: fam.net}).Err)
			r := c.do(clientCmd{Op: "sendto", ID: id, Addr: fam.vip, N: 20})
			only(t, r.Replies, "replies of one socket")
			assert.Equal(t, map[string]int{fam.vip: 20}, r.Froms)
			c.do(clientCmd{Op: "close", ID: id})
		})
		t.Run(fam.name+": connected socket: getpeername and replies say VIP", func(t *testing.T) {
			id := "c-" + fam.name
			require.Empty(t, c.do(clientCmd{Op: "open", ID: id, Net: fam.net}).Err)
			r := c.do(clientCmd{Op: "connect", ID: id, Addr: fam.vip})
			require.Empty(t, r.Err)
			assert.Equal(t, fam.vip, r.Peer)
			r = c.do(clientCmd{Op: "send", ID: id, N: 10})
			only(t, r.Replies, "replies of one connected socket")
			assert.Equal(t, map[string]int{fam.vip: 10}, r.Froms)
			c.do(clientCmd{Op: "close", ID: id})
		})
	}

	t.Run("same port over TCP reaches the TCP target port", func(t *testing.T) {
		r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.53:53", N: 30})
		assert.Equal(t, []string{"a", "b", "c"}, keysOf(r.Replies), "errors: %v", r.Errors)
	})

	t.Run("no endpoints: sendmsg and connect fail with ECONNREFUSED", func(t *testing.T) {
		for _, vip := range []string{"10.96.0.54:53", "[fd00:96::54]:53"} {
			net := "udp4"
			if strings.HasPrefix(vip, "[") {
				net = "udp6"
			}
			r := c.do(clientCmd{Op: "udp", Net: net, Addr: vip, N: 2})
			assert.Equal(t, map[string]int{"ECONNREFUSED": 2}, r.Errors, vip)
			require.Empty(t, c.do(clientCmd{Op: "open", ID: "e", Net: net}).Err)
			r = c.do(clientCmd{Op: "connect", ID: "e", Addr: vip})
			assert.Equal(t, unix.ECONNREFUSED, r.Errno, "connect %s: %s", vip, r.Err)
			c.do(clientCmd{Op: "close", ID: "e"})
		}
	})

	t.Run("a backend's own address is left alone", func(t *testing.T) {
		r := c.do(clientCmd{Op: "udp", Net: "udp4", Addr: addr("b", 5353), N: 2})
		assert.Equal(t, map[string]int{"b": 2}, r.Replies)
		assert.Equal(t, map[string]int{addr("b", 5353): 2}, r.Froms)
	})

	t.Run("a deleted service's VIP is untranslated again", func(t *testing.T) {
		require.Empty(t, c.do(clientCmd{Op: "open", ID: "d", Net: "udp4"}).Err)
		r := c.do(clientCmd{Op: "sendto", ID: "d", Addr: "10.96.0.53:53"})
		require.Empty(t, r.Err)
		f.apply(dns6)
		r = c.do(clientCmd{Op: "sendto", ID: "d", Addr: "10.96.0.53:53"})
		assert.Equal(t, unix.ENETUNREACH, r.Errno, r.Err)
	})
}

// A removed backend gets no new connection and no new datagram from the
// moment Apply returns: unconnected UDP sockets are re-steered on their next
// send, connected ones are destroyed (kernel 6.5+) and reconnect.
func TestPrivilegedBackendRemoved(t *testing.T) {
	f := newFixture(t)
	all := []datapath.Endpoint{be("a"), be("b"), be("c")}
	dnsWith := func(eps ...datapath.Endpoint) datapath.Service {
		return svcProto("dns", "10.96.0.53", datapath.UDP, 53, 5353, eps...)
	}
	f.apply(dnsWith(all...))
	c := f.client()
	const vip = "10.96.0.53:53"

	without := func(gone string) []datapath.Endpoint {
		var out []datapath.Endpoint
		for _, e := range all {
			if e.Pod != gone {
				out = append(out, e)
			}
		}
		return out
	}

	t.Run("unconnected socket is re-steered on its next send", func(t *testing.T) {
		require.Empty(t, c.do(clientCmd{Op: "open", ID: "u", Net: "udp4"}).Err)
		r := c.do(clientCmd{Op: "sendto", ID: "u", Addr: vip, N: 5})
		first := only(t, r.Replies, "before removal")
		f.apply(dnsWith(without(first)...))
		r = c.do(clientCmd{Op: "sendto", ID: "u", Addr: vip, N: 10})
		second := only(t, r.Replies, "after removal the socket sticks to its new backend")
		assert.NotEqual(t, first, second)
		assert.Equal(t, map[string]int{vip: 10}, r.Froms)
		f.apply(dnsWith(all...))
		r = c.do(clientCmd{Op: "sendto", ID: "u", Addr: vip, N: 5})
		assert.Equal(t, map[string]int{second: 5}, r.Replies, "adding a backend does not move a socket that has one")
		c.do(clientCmd{Op: "close", ID: "u"})
	})

	t.Run("connected socket is destroyed and reconnects elsewhere", func(t *testing.T) {
		if f.dp.destroy == nil {
			if kernelAtLeast(6, 5) {
				t.Fatalf("kernel has bpf_sock_destroy but the iterator is unavailable: %s", f.dp.Info()["udp_destroy"])
			}
			t.Skipf("kernel lacks iter/udp with bpf_sock_destroy (6.5): %s", f.dp.Info()["udp_destroy"])
		}
		require.Empty(t, c.do(clientCmd{Op: "open", ID: "k", Net: "udp4"}).Err)
		require.Equal(t, vip, c.do(clientCmd{Op: "connect", ID: "k", Addr: vip}).Peer)
		first := c.do(clientCmd{Op: "send", ID: "k"}).Reply
		require.NotEmpty(t, first)
		// A second connected socket whose backend stays must survive. A
		// socket keeps its backend even across reconnects, so try fresh
		// sockets until one lands elsewhere.
		var kept string
		for range 50 {
			require.Empty(t, c.do(clientCmd{Op: "open", ID: "keep", Net: "udp4"}).Err)
			c.do(clientCmd{Op: "connect", ID: "keep", Addr: vip})
			if kept = c.do(clientCmd{Op: "send", ID: "keep"}).Reply; kept != first {
				break
			}
			c.do(clientCmd{Op: "close", ID: "keep"})
		}
		require.NotEqual(t, first, kept, "could not get a second socket onto another backend")

		before := f.dp.destroyed
		f.apply(dnsWith(without(first)...))
		assert.Equal(t, before+1, f.dp.destroyed, "exactly the socket on the removed backend is destroyed")

		r := c.do(clientCmd{Op: "soerror", ID: "k"})
		assert.Equal(t, unix.ECONNABORTED, r.Errno, "the application learns of it: %s", r.Err)
		r = c.do(clientCmd{Op: "peer", ID: "k"})
		assert.Equal(t, unix.ENOTCONN, r.Errno, "the socket is disconnected: %s", r.Err)
		r = c.do(clientCmd{Op: "connect", ID: "k", Addr: vip})
		require.Empty(t, r.Err)
		r = c.do(clientCmd{Op: "send", ID: "k", N: 5})
		assert.NotContains(t, r.Replies, first)
		assert.Equal(t, map[string]int{vip: 5}, r.Froms)

		r = c.do(clientCmd{Op: "soerror", ID: "keep"})
		assert.Empty(t, r.Err, "the socket on a staying backend is untouched")
		r = c.do(clientCmd{Op: "send", ID: "keep"})
		assert.Equal(t, kept, r.Reply)
		assert.Equal(t, "1", f.dp.Info()["udp_sockets_destroyed"])
	})

	t.Run("TCP: no new connection to a removed backend once Apply returns", func(t *testing.T) {
		web := func(eps ...datapath.Endpoint) datapath.Service { return svc("web", "10.96.0.10", 80, 8080, eps...) }
		f.apply(dnsWith(all...), web(all...))
		f.apply(dnsWith(all...), web(without("b")...))
		r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 40})
		assert.Equal(t, []string{"a", "c"}, keysOf(r.Replies), "errors: %v", r.Errors)
		f.apply(dnsWith(all...), web(be("a"), be("c"), be("d")))
		r = c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 60})
		assert.Equal(t, []string{"a", "c", "d"}, keysOf(r.Replies), "an added backend starts receiving; errors: %v", r.Errors)
	})
}

// Apply while connections run: no lookup may see a half-written service,
// so no connection fails and every reply comes from a backend of some
// state and, for UDP, from the VIP.
func TestPrivilegedApplyDuringTraffic(t *testing.T) {
	f := newFixture(t)
	states := [][]datapath.Endpoint{
		{be("a"), be("b"), be("c")},
		{be("b"), be("c"), be("d")},
		{be("a"), be("d")},
		{be("c")},
		{be("a"), be("b"), be("c"), be("d")},
	}
	state := func(eps []datapath.Endpoint) []datapath.Service {
		return []datapath.Service{
			svc("web", "10.96.0.10", 80, 8080, eps...),
			svcProto("dns", "10.96.0.53", datapath.UDP, 53, 5353, eps...),
		}
	}
	f.apply(state(states[0])...)
	c := f.client()

	wait := c.start(clientCmd{Op: "loop", Addr: "10.96.0.10:80", Addr2: "10.96.0.53:53", Ms: 3000})
	applies := 0
	deadline := time.Now().Add(2900 * time.Millisecond)
	for time.Now().Before(deadline) {
		f.apply(state(states[applies%len(states)])...)
		applies++
		time.Sleep(2 * time.Millisecond)
	}
	r := wait()
	t.Logf("%d applies during %d exchanges", applies, r.Replies["tcp a"]+r.Replies["tcp b"]+r.Replies["tcp c"]+r.Replies["tcp d"])
	assert.Empty(t, r.Errors)
	assert.Equal(t, []string{"10.96.0.53:53"}, keysOf(r.Froms))
	for k := range r.Replies {
		assert.Regexp(t, `^(tcp|udp) [abcd]$`, k)
	}
	assert.Greater(t, applies, 100)
}

// Only when no endpoint is ready do serving terminating endpoints get
// traffic, and the maps follow every change.
func TestPrivilegedTerminatingFallback(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	term := func(name string, serving bool) datapath.Endpoint {
		e := be(name)
		e.Ready, e.Serving, e.Terminating = false, serving, true
		return e
	}
	tests := []struct {
		name  string
		eps   []datapath.Endpoint
		want  []string
		errno string
	}{
		{"ready endpoints only", []datapath.Endpoint{be("a"), be("b"), term("c", true)}, []string{"a", "b"}, ""},
		{"no ready endpoint: serving terminating ones", []datapath.Endpoint{term("a", true), term("b", true), term("c", false)}, []string{"a", "b"}, ""},
		{"a ready endpoint appears: only it", []datapath.Endpoint{term("a", true), term("b", true), be("d")}, []string{"d"}, ""},
		{"nothing serving: refused", []datapath.Endpoint{term("a", false), term("b", false)}, nil, "ECONNREFUSED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.apply(svc("web", "10.96.0.10", 80, 8080, tt.eps...))
			r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 40})
			if tt.errno != "" {
				assert.Equal(t, map[string]int{tt.errno: 40}, r.Errors)
				return
			}
			assert.Equal(t, tt.want, keysOf(r.Replies), "errors: %v", r.Errors)
		})
	}
}

func TestPrivilegedSessionAffinity(t *testing.T) {
	f := newFixture(t)
	const timeout = time.Second
	sticky := func(eps ...datapath.Endpoint) datapath.Service {
		s := svc("sticky", "10.96.0.30", 80, 8080, eps...)
		s.SessionAffinity = datapath.SessionAffinityClientIP
		s.AffinityTimeout = timeout
		return s
	}
	stickyUDP := svcProto("sticky-dns", "10.96.0.31", datapath.UDP, 53, 5353, be("a"), be("b"), be("c"))
	stickyUDP.SessionAffinity = datapath.SessionAffinityClientIP
	all := []datapath.Endpoint{be("a"), be("b"), be("c")}
	f.apply(sticky(all...), stickyUDP)
	c := f.client()
	const vip = "10.96.0.30:80"

	r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 20})
	first := only(t, r.Replies, "20 connections of one client")

	t.Run("another process of the same pod gets the same backend", func(t *testing.T) {
		r := f.client().do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 5})
		assert.Equal(t, map[string]int{first: 5}, r.Replies)
	})

	t.Run("UDP sockets of one client share one backend", func(t *testing.T) {
		r := c.do(clientCmd{Op: "udp", Net: "udp4", Addr: "10.96.0.31:53", N: 20})
		only(t, r.Replies, "20 fresh UDP sockets")
		assert.Equal(t, map[string]int{"10.96.0.31:53": 20}, r.Froms)
	})

	t.Run("a busy client keeps its backend past the timeout", func(t *testing.T) {
		for i := range 12 {
			time.Sleep(timeout / 4)
			r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 1})
			require.Equal(t, map[string]int{first: 1}, r.Replies, "connection %d, %s into the run", i, time.Duration(i+1)*timeout/4)
		}
	})

	t.Run("an idle client may get another backend", func(t *testing.T) {
		seen := map[string]bool{}
		// Each try after an idle period picks afresh among three backends:
		// 9 tries land on one backend with probability 3^-8.
		for range 9 {
			time.Sleep(timeout + 200*time.Millisecond)
			r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 3})
			seen[only(t, r.Replies, "a burst after an idle period")] = true
			if len(seen) > 1 {
				break
			}
		}
		assert.Greater(t, len(seen), 1, "always the same backend after idle periods")
	})

	t.Run("the affinity target is removed: the next connection moves and sticks", func(t *testing.T) {
		r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 1})
		cur := only(t, r.Replies, "current")
		var rest []datapath.Endpoint
		for _, e := range all {
			if e.Pod != cur {
				rest = append(rest, e)
			}
		}
		f.apply(sticky(rest...), stickyUDP)
		r = c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 10})
		assert.Empty(t, r.Errors)
		next := only(t, r.Replies, "after removal")
		assert.NotEqual(t, cur, next)
	})

	t.Run("switching affinity off spreads, on again converges", func(t *testing.T) {
		plain := sticky(all...)
		plain.SessionAffinity = datapath.SessionAffinityNone
		f.apply(plain, stickyUDP)
		r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 40})
		assert.Len(t, r.Replies, 3, "None spreads: %v", r.Replies)
		f.apply(sticky(all...), stickyUDP)
		r = c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 20})
		only(t, r.Replies, "ClientIP again")
	})

	t.Run("a client is its network namespace", func(t *testing.T) {
		// A process in a second namespace: its connections translate (to
		// backends that do not exist there, so they are refused), and the
		// affinity map gains an entry for it.
		other := newTestNetNS(t)
		r := startClient(t, other, f.cg).do(clientCmd{Op: "tcp", Net: "tcp4", Addr: vip, N: 1})
		assert.Equal(t, map[string]int{"ECONNREFUSED": 1}, r.Errors, "translated but nobody listens in the other netns")
		id := f.dp.installed.services[svcKey(mustAddr("10.96.0.30"), 80, ipprotoTCP)].Id
		cookies := map[uint64]bool{}
		var k socketlbAffinityKey
		var v socketlbAffinityEntry
		it := f.dp.maps.SvclabAffinity.Iterate()
		for it.Next(&k, &v) {
			if k.SvcId == id {
				cookies[k.NetnsCookie] = true
			}
		}
		require.NoError(t, it.Err())
		assert.Len(t, cookies, 2, "one affinity entry per client netns")
	})
}

// connect(VIP), connect(AF_UNSPEC), connect(backend): the socket now talks
// to the backend itself and must be told so; one socket talking to two
// services gets each service's replies from that service's VIP.
func TestPrivilegedReconnectAndTwoServices(t *testing.T) {
	f := newFixture(t)
	f.apply(
		svc("web", "10.96.0.10", 80, 8080, be("a")),
		svcProto("dns", "10.96.0.53", datapath.UDP, 53, 5353, be("a")),
		svcProto("dns2", "10.96.0.54", datapath.UDP, 53, 5353, be("b")),
	)
	c := f.client()

	for _, tc := range []struct{ net, vip, direct string }{
		{"tcp4", "10.96.0.10:80", addr("a", 8080)},
		{"udp4", "10.96.0.53:53", addr("a", 5353)},
		{"tcp6", "[::ffff:10.96.0.10]:80", "[::ffff:127.0.0.1]:8080"},
	} {
		t.Run(tc.net+" connect VIP, AF_UNSPEC, connect the backend directly", func(t *testing.T) {
			require.Empty(t, c.do(clientCmd{Op: "open", ID: "r", Net: tc.net}).Err)
			defer c.do(clientCmd{Op: "close", ID: "r"})
			r := c.do(clientCmd{Op: "connect", ID: "r", Addr: tc.vip})
			require.Empty(t, r.Err)
			assert.Equal(t, tc.vip, r.Peer)
			r = c.do(clientCmd{Op: "connect", ID: "r", Addr: ""})
			require.Empty(t, r.Err, "AF_UNSPEC")
			r = c.do(clientCmd{Op: "connect", ID: "r", Addr: tc.direct})
			require.Empty(t, r.Err)
			assert.Equal(t, tc.direct, r.Peer, "getpeername must report the backend now")
			if strings.HasPrefix(tc.net, "udp") {
				r = c.do(clientCmd{Op: "send", ID: "r"})
				assert.Equal(t, tc.direct, r.From)
			}
		})
	}

	t.Run("one unconnected socket, two services, interleaved replies", func(t *testing.T) {
		require.Empty(t, c.do(clientCmd{Op: "open", ID: "m", Net: "udp4"}).Err)
		defer c.do(clientCmd{Op: "close", ID: "m"})
		for range 3 {
			require.Empty(t, c.do(clientCmd{Op: "sendonly", ID: "m", Addr: "10.96.0.53:53"}).Err)
			require.Empty(t, c.do(clientCmd{Op: "sendonly", ID: "m", Addr: "10.96.0.54:53"}).Err)
			got := map[string]string{}
			for range 2 {
				r := c.do(clientCmd{Op: "recv", ID: "m"})
				require.Empty(t, r.Err)
				got[r.Reply] = r.From
			}
			assert.Equal(t, map[string]string{"a": "10.96.0.53:53", "b": "10.96.0.54:53"}, got)
		}
	})
}

// Many short-lived UDP sockets churning the reverse-NAT LRU must not break
// a long-lived socket: its mapping lives in its own socket storage.
func TestPrivilegedRevNATPressure(t *testing.T) {
	const lruSize = 64
	f := newFixture(t, func(s *SocketLB) { s.revNATEntries = lruSize })
	f.apply(
		svcProto("dns", "10.96.0.53", datapath.UDP, 53, 5353, be("a"), be("b"), be("c")),
		svcProto("dns2", "10.96.0.54", datapath.UDP, 53, 5353, be("d")),
	)
	c := f.client()
	require.Empty(t, c.do(clientCmd{Op: "open", ID: "long", Net: "udp4"}).Err)
	r := c.do(clientCmd{Op: "sendto", ID: "long", Addr: "10.96.0.53:53"})
	require.Empty(t, r.Err)
	mine := r.Reply

	// Each of these sockets talks to both services, so each leaves one
	// entry in the LRU: 10x its size.
	r = c.do(clientCmd{Op: "pairs", Net: "udp4", Addr: "10.96.0.53:53", Addr2: "10.96.0.54:53", N: 10 * lruSize})
	assert.Empty(t, r.Errors)
	assert.Equal(t, map[string]int{"10.96.0.53:53": 10 * lruSize, "10.96.0.54:53": 10 * lruSize}, r.Froms)
	n := 0
	var k socketlbRevnatKey
	var v socketlbRevnatEntry
	it := f.dp.maps.SvclabRevnat.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	require.NoError(t, it.Err())
	assert.GreaterOrEqual(t, n, lruSize/2, "the LRU should be under pressure")

	r = c.do(clientCmd{Op: "sendto", ID: "long", Addr: "10.96.0.53:53", N: 5})
	assert.Equal(t, map[string]int{mine: 5}, r.Replies, "the long-lived socket keeps its backend")
	assert.Equal(t, map[string]int{"10.96.0.53:53": 5}, r.Froms, "and its replies still come from the VIP")
}

func TestPrivilegedCounters(t *testing.T) {
	f := newFixture(t)
	web := func(eps ...datapath.Endpoint) datapath.Service { return svc("web", "10.96.0.10", 80, 8080, eps...) }
	dns := svcProto("dns", "10.96.0.53", datapath.UDP, 53, 5353, be("a"))
	empty := svc("empty", "10.96.0.11", 80, 8080)
	f.apply(web(be("a"), be("b"), be("c")), dns, empty)
	c := f.client()

	r := c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 30})
	require.Empty(t, r.Errors)
	c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.11:80", N: 2})
	c.do(clientCmd{Op: "udp", Net: "udp4", Addr: "10.96.0.53:53", N: 4})
	require.Empty(t, c.do(clientCmd{Op: "open", ID: "u", Net: "udp4"}).Err)
	c.do(clientCmd{Op: "sendto", ID: "u", Addr: "10.96.0.53:53", N: 10})

	counts := func() map[string]datapath.ServiceCounters {
		got, err := f.dp.Counters()
		require.NoError(t, err)
		out := map[string]datapath.ServiceCounters{}
		for _, s := range got.Services {
			out[s.Frontend.String()+"/"+string(s.Protocol)] = s
		}
		return out
	}
	perBackend := func(s datapath.ServiceCounters) map[string]uint64 {
		out := map[string]uint64{}
		for _, b := range s.Backends {
			out[b.Pod+"@"+b.Backend.String()] = b.Connections
		}
		return out
	}
	got := counts()
	require.Contains(t, got, "10.96.0.10:80/TCP")
	w := got["10.96.0.10:80/TCP"]
	assert.Equal(t, "ns/web", w.Service)
	assert.Equal(t, uint64(30), w.Connections)
	var sum uint64
	for _, n := range perBackend(w) {
		sum += n
	}
	assert.Equal(t, uint64(30), sum, "per-backend counts add up: %v", perBackend(w))
	assert.Len(t, w.Backends, 3)
	assert.Equal(t, uint64(2), got["10.96.0.11:80/TCP"].Refused)
	assert.Equal(t, uint64(5), got["10.96.0.53:53/UDP"].Connections, "4 fresh sockets + 1 socket sending 10 datagrams")

	t.Run("counts of removed backends and services are kept", func(t *testing.T) {
		before := perBackend(counts()["10.96.0.10:80/TCP"])
		f.apply(web(be("a"), be("c")), dns)
		var k socketlbMemberKey
		var v []uint64
		it := f.dp.maps.SvclabBeCtr.Iterate()
		for it.Next(&k, &v) {
			assert.NotEqual(t, backendEntry(mustAddrPort(addr("b", 8080))), k.backend(), "removed backend's counter is collected from the map")
		}
		require.NoError(t, it.Err())
		got := counts()
		assert.Equal(t, before, perBackend(got["10.96.0.10:80/TCP"]))
		assert.Equal(t, uint64(2), got["10.96.0.11:80/TCP"].Refused, "deleted service still reported")

		f.apply()
		got = counts()
		assert.Equal(t, before, perBackend(got["10.96.0.10:80/TCP"]))
		assert.Equal(t, uint64(30), got["10.96.0.10:80/TCP"].Connections)
		// Re-adding the service continues the same line.
		f.apply(web(be("a")))
		c.do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: 3})
		assert.Equal(t, uint64(33), counts()["10.96.0.10:80/TCP"].Connections)
	})
}

// processCPU is the CPU time (user and system, all threads) this process
// has used: what an Apply costs, independent of how busy the machine is.
func processCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	require.NoError(t, unix.Getrusage(unix.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The scale target: 10,000 services with 12 endpoints in under a second,
// and resyncs after it that cost only what changed. The limit is on the
// CPU time Apply uses (map writes are syscalls, so the kernel's share is
// in it); wall time is logged, and bounded loosely, because the machine
// running the tests may be busy with other work.
func TestPrivilegedScale(t *testing.T) {
	f := newFixture(t)
	st := scaleState(10000, 12)
	ctx := context.Background()
	timed := func(what string, st datapath.State) time.Duration {
		t.Helper()
		wall, cpu := time.Now(), processCPU(t)
		require.NoError(t, f.dp.Apply(ctx, st))
		took, used := time.Since(wall), processCPU(t)-cpu
		t.Logf("%s: %s wall, %s CPU", what, took.Round(time.Millisecond), used.Round(time.Millisecond))
		assert.Less(t, took, 5*time.Second, what)
		return used
	}

	assert.Less(t, timed("first Apply of 10000 services x 12 endpoints", st), time.Second)
	assert.Len(t, f.dp.installed.backends, 120000)
	assert.Equal(t, f.dp.installed, readTables(t, f.dp))

	timed("identical re-Apply", st)
	for i := 0; i < len(st.Services); i += 100 {
		st.Services[i].Endpoints = st.Services[i].Endpoints[1:]
	}
	timed("re-Apply with one endpoint removed from 100 services", st)
	assert.Equal(t, f.dp.installed, readTables(t, f.dp))

	timed("Apply of the empty state", datapath.State{})
	kernel := readTables(t, f.dp)
	assert.Empty(t, kernel.services)
	assert.Empty(t, kernel.backends)
	assert.Empty(t, kernel.members)
}

func TestPrivilegedSetupFailures(t *testing.T) {
	requirePrivileged(t)
	ctx := context.Background()

	t.Run("missing cgroup directory", func(t *testing.T) {
		dp := New()
		missing := filepath.Join(os.TempDir(), randomName(t))
		err := dp.Setup(ctx, &datapath.Env{NodeCgroup: missing})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "attach connect4 to "+missing)
		assert.NoError(t, dp.Close(), "Close after a failed Setup")
		assert.NoError(t, dp.Close(), "second Close")
		assert.ErrorIs(t, dp.Apply(ctx, datapath.State{}), ErrNotSetUp)
	})

	t.Run("setup twice", func(t *testing.T) {
		cg := newTestCgroup(t)
		dp := New()
		require.NoError(t, dp.Setup(ctx, &datapath.Env{NodeCgroup: cg.path}))
		t.Cleanup(func() { assert.NoError(t, dp.Close()) })
		assert.ErrorIs(t, dp.Setup(ctx, &datapath.Env{NodeCgroup: cg.path}), ErrAlreadySetUp)

		for _, h := range hooks {
			q, err := link.QueryPrograms(link.QueryOptions{Target: cg.fd, Attach: h.attach})
			require.NoError(t, err)
			assert.Len(t, q.Programs, 1, "a refused second Setup must not attach %s again", h.name)
		}
	})

	t.Run("apply rejects a state it cannot hold without touching the maps", func(t *testing.T) {
		cg := newTestCgroup(t)
		dp := New()
		require.NoError(t, dp.Setup(ctx, &datapath.Env{NodeCgroup: cg.path}))
		t.Cleanup(func() { assert.NoError(t, dp.Close()) })
		good := svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"))
		require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{good}}))
		before := readTables(t, dp)

		bad := svc("mixed", "fd00::10", 80, 8080, ep("a", "10.0.0.1"))
		err := dp.Apply(ctx, datapath.State{Services: []datapath.Service{good, bad}})
		assert.ErrorIs(t, err, ErrUnsupportedService)
		assert.Equal(t, before, readTables(t, dp))
	})
}

// Late replies: a datagram a backend sends after the socket's mapping to it
// changed. Re-steered within the same service, the reply answers a datagram
// the application sent to the VIP, so it must come from the VIP (a resolver
// drops a reply whose source is not the server it asked). From a service
// that still exists but has no backend left, the mapping is stale (as in
// Cilium's bpf_sock.c): the reply is not translated and a spilled mapping is
// deleted.
func TestPrivilegedLateReplies(t *testing.T) {
	const vip = "10.96.0.53:53"
	dnsWith := func(eps ...datapath.Endpoint) datapath.Service {
		return svcProto("dns", "10.96.0.53", datapath.UDP, 53, 5353, eps...)
	}
	backendAP := func(name string) netip.AddrPort { return mustAddrPort(addr(name, 5353)) }
	all := []datapath.Endpoint{be("a"), be("b"), be("c")}
	without := func(gone string) []datapath.Endpoint {
		var out []datapath.Endpoint
		for _, e := range all {
			if e.Pod != gone {
				out = append(out, e)
			}
		}
		return out
	}
	spilled := func(f *fixture) int {
		n := 0
		var k socketlbRevnatKey
		var v socketlbRevnatEntry
		it := f.dp.maps.SvclabRevnat.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		require.NoError(t, it.Err())
		return n
	}

	for _, tc := range []struct {
		name string
		// change is applied after the socket reached its first backend.
		change func(first string) []datapath.Endpoint
		// resend: the socket sends to the VIP again after the change.
		resend      bool
		wantFrom    func(first string) string
		wantSpilled int
	}{
		{
			name:        "re-steered to another backend of the same service",
			change:      without,
			resend:      true,
			wantFrom:    func(string) string { return vip },
			wantSpilled: 1,
		},
		{
			name:     "service left without backends",
			change:   func(string) []datapath.Endpoint { return nil },
			wantFrom: func(first string) string { return backendAP(first).String() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.apply(dnsWith(all...))
			c := f.client()
			require.Empty(t, c.do(clientCmd{Op: "open", ID: "u", Net: "udp4"}).Err)
			r := c.do(clientCmd{Op: "sendto", ID: "u", Addr: vip})
			require.Empty(t, r.Err)
			first := r.Reply
			f.apply(dnsWith(tc.change(first)...))
			if tc.resend {
				r = c.do(clientCmd{Op: "sendto", ID: "u", Addr: vip})
				require.Empty(t, r.Err)
				require.NotEqual(t, first, r.Reply, "the socket must have been re-steered")
				require.Equal(t, vip, r.From)
			}
			f.lateReply(backendAP(first), "late-"+first)
			r = c.do(clientCmd{Op: "recv", ID: "u"})
			require.Empty(t, r.Err)
			assert.Equal(t, "late-"+first, r.Reply)
			assert.Equal(t, tc.wantFrom(first), r.From)
			assert.Equal(t, tc.wantSpilled, spilled(f))
		})
	}

	// The spilled mapping of a service drained to no backends is deleted
	// when a reply shows it stale, not kept to match a later one.
	t.Run("spilled mapping of a drained service is dropped", func(t *testing.T) {
		f := newFixture(t)
		f.apply(dnsWith(all...))
		c := f.client()
		require.Empty(t, c.do(clientCmd{Op: "open", ID: "u", Net: "udp4"}).Err)
		first := c.do(clientCmd{Op: "sendto", ID: "u", Addr: vip}).Reply
		f.apply(dnsWith(without(first)...))
		require.Empty(t, c.do(clientCmd{Op: "sendto", ID: "u", Addr: vip}).Err)
		require.Equal(t, 1, spilled(f))
		f.apply(dnsWith())
		f.lateReply(backendAP(first), "late")
		r := c.do(clientCmd{Op: "recv", ID: "u"})
		require.Empty(t, r.Err)
		assert.Equal(t, backendAP(first).String(), r.From)
		assert.Equal(t, 0, spilled(f))
	})
}
