package probe

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"svclab/harness/internal/harnesstest"
	"svclab/harness/loadgen"
	"svclab/harness/topology"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A probe spec that cannot run is refused before a child is started.
func TestSpecValidate(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	good := Spec{Op: TCP, Targets: []netip.AddrPort{vip}, Count: 1}
	require.NoError(t, good.Validate())
	tests := []struct {
		name   string
		mutate func(*Spec)
		want   string
	}{
		{"op", func(s *Spec) { s.Op = "sctp" }, "op"},
		{"no targets", func(s *Spec) { s.Targets = nil }, "targets"},
		{"no bound", func(s *Spec) { s.Count = 0 }, "count or duration"},
		{"reconnect without second", func(s *Spec) { s.Op = UDPReconnect }, "second"},
		{"mapped v6", func(s *Spec) {
			s.V4Mapped = true
			s.Targets = []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:80")}
		}, "IPv4-mapped"},
		{"long-lived tcp", func(s *Spec) { s.LongLived = true }, "long_lived"},
		{"resend tcp", func(s *Spec) { s.Resend = time.Second }, "resend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.mutate(&s)
			err := s.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// The probe's operations against a real server in real namespaces, without
// any datapath: what each records (reply, peer, reply source, errno).
func TestPrivilegedProbeOperations(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	topo, err := topology.New(context.Background(), topology.Default(run.Prefix+"-probe", 2))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, topo.Close()) })
	spec := loadgen.BackendListeners(topo.Backends, 8080, false)
	srv, err := loadgen.StartServer(topo.Node, topo.ServerCgroup.Path, spec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	b0 := netip.AddrPortFrom(topo.Backends[0].Addr, 8080)
	b1 := netip.AddrPortFrom(topo.Backends[1].Addr, 8080)
	mapped0 := netip.AddrPortFrom(netip.AddrFrom16(b0.Addr().As16()), 8080)
	closed := netip.AddrPortFrom(topo.Backends[0].Addr, 9999)
	// The service CIDR leads to the sink, which drops silently.
	sink := netip.MustParseAddrPort("10.96.0.10:80")

	tests := []struct {
		name  string
		spec  Spec
		check func(t *testing.T, atts []Attempt)
	}{
		{"tcp", Spec{Op: TCP, Targets: []netip.AddrPort{b0}, Count: 3}, func(t *testing.T, atts []Attempt) {
			require.Len(t, atts, 3)
			for _, a := range atts {
				assert.Equal(t, "", a.Errno)
				assert.Equal(t, topo.Backends[0].Name, a.Reply)
				assert.Equal(t, b0.String(), a.Peer)
				assert.True(t, strings.HasPrefix(a.Local, topo.Clients[0].Addr.String()+":"), "local %s", a.Local)
			}
		}},
		{"tcp refused", Spec{Op: TCP, Targets: []netip.AddrPort{closed}, Count: 1}, func(t *testing.T, atts []Attempt) {
			assert.Equal(t, "ECONNREFUSED", atts[0].Errno)
			assert.Equal(t, "connect", atts[0].Stage)
		}},
		{"tcp timeout", Spec{Op: TCP, Targets: []netip.AddrPort{sink}, Count: 1, Timeout: 200 * time.Millisecond}, func(t *testing.T, atts []Attempt) {
			assert.Equal(t, ErrnoTimeout, atts[0].Errno)
			assert.InDelta(t, 200e3, atts[0].ElapsedUS, 100e3)
		}},
		{"tcp v4-mapped", Spec{Op: TCP, Targets: []netip.AddrPort{b0}, V4Mapped: true, Count: 1}, func(t *testing.T, atts []Attempt) {
			assert.Equal(t, topo.Backends[0].Name, atts[0].Reply)
			assert.Equal(t, mapped0.String(), atts[0].Peer)
			assert.Equal(t, mapped0.String(), atts[0].Dialed)
		}},
		{"udp per attempt", Spec{Op: UDP, Targets: []netip.AddrPort{b1}, Count: 3}, func(t *testing.T, atts []Attempt) {
			ports := map[string]bool{}
			for _, a := range atts {
				assert.Equal(t, topo.Backends[1].Name, a.Reply)
				assert.Equal(t, b1.String(), a.From)
				ports[a.Local] = true
			}
			assert.Len(t, ports, 3, "a fresh socket per attempt")
		}},
		{"udp long-lived fixed port", Spec{Op: UDP, Targets: []netip.AddrPort{b1}, Count: 3, LongLived: true, LocalPort: 12345}, func(t *testing.T, atts []Attempt) {
			for _, a := range atts {
				assert.Equal(t, "0.0.0.0:12345", a.Local)
				assert.Equal(t, topo.Backends[1].Name, a.Reply)
			}
		}},
		{"udp connected refused", Spec{Op: UDPConnected, Targets: []netip.AddrPort{closed}, Count: 1}, func(t *testing.T, atts []Attempt) {
			assert.Equal(t, "ECONNREFUSED", atts[0].Errno)
			assert.Equal(t, closed.String(), atts[0].Peer)
		}},
		{"udp resend", Spec{Op: UDP, Targets: []netip.AddrPort{sink}, Count: 1, Timeout: 300 * time.Millisecond, Resend: 100 * time.Millisecond}, func(t *testing.T, atts []Attempt) {
			assert.Equal(t, ErrnoTimeout, atts[0].Errno)
			assert.GreaterOrEqual(t, atts[0].Sends, 2)
		}},
		{"udp reconnect", Spec{Op: UDPReconnect, Targets: []netip.AddrPort{b0}, Second: b1, Count: 2}, func(t *testing.T, atts []Attempt) {
			require.Len(t, atts, 4)
			for i, a := range atts {
				want, addr := topo.Backends[0].Name, b0
				if i%2 == 1 {
					want, addr = topo.Backends[1].Name, b1
				}
				assert.Equal(t, want, a.Reply)
				assert.Equal(t, addr.String(), a.Peer)
				assert.Equal(t, addr.String(), a.From)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			atts, err := RunProcess(context.Background(), topo.Clients[0].NS, topo.ClientCgroup.Path, tt.spec)
			require.NoError(t, err)
			require.NotEmpty(t, atts)
			tt.check(t, atts)
		})
	}
}
