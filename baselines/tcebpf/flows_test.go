package tcebpf

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

// udpSvc builds a one-port UDP service.
func udpSvc(name, vip string, port, target uint16, eps ...datapath.Endpoint) datapath.Service {
	s := svc(name, vip, port, target, eps...)
	s.Ports[0].Protocol = datapath.UDP
	return s
}

// TestStaleUDPFlows: after a resync, exactly the UDP flows whose backend
// left their service are stale; TCP flows and flows of untouched services
// never are.
func TestStaleUDPFlows(t *testing.T) {
	a, b, c := ep("a", "10.0.0.1"), ep("b", "10.0.0.2"), ep("c", "10.0.0.3")
	st := func(svcs ...datapath.Service) datapath.State { return datapath.State{Services: svcs} }
	client := netip.MustParseAddrPort("10.244.0.1:40000")
	dns := netip.MustParseAddrPort("10.96.0.53:53")
	web := netip.MustParseAddrPort("10.96.0.10:80")
	fwd := func(addr string, port uint16) tcebpfConnFwd {
		return tcebpfConnFwd{Addr: be32(netip.MustParseAddr(addr)), Port: be16(port)}
	}

	type flow struct {
		key tcebpfConnKey
		val tcebpfConnFwd
	}
	udpToA := flow{connKey(client, dns, ipprotoUDP), fwd("10.0.0.1", 5353)}
	udpToB := flow{connKey(client, dns, ipprotoUDP), fwd("10.0.0.2", 5353)}
	tcpToA := flow{connKey(client, web, ipprotoTCP), fwd("10.0.0.1", 8080)}

	tests := []struct {
		name     string
		before   datapath.State
		after    datapath.State
		wantLost bool
		stale    []flow
		notStale []flow
	}{
		{
			name:   "nothing removed: no walk of the flow map",
			before: st(udpSvc("dns", "10.96.0.53", 53, 5353, a, b)),
			after:  st(udpSvc("dns", "10.96.0.53", 53, 5353, a, b, c)),
		},
		{
			name:     "removed UDP backend: its flows only",
			before:   st(udpSvc("dns", "10.96.0.53", 53, 5353, a, b)),
			after:    st(udpSvc("dns", "10.96.0.53", 53, 5353, b)),
			wantLost: true,
			stale:    []flow{udpToA},
			notStale: []flow{udpToB},
		},
		{
			name:     "service lost every endpoint",
			before:   st(udpSvc("dns", "10.96.0.53", 53, 5353, a, b)),
			after:    st(udpSvc("dns", "10.96.0.53", 53, 5353)),
			wantLost: true,
			stale:    []flow{udpToA, udpToB},
		},
		{
			name:     "service removed",
			before:   st(udpSvc("dns", "10.96.0.53", 53, 5353, a)),
			after:    st(),
			wantLost: true,
			stale:    []flow{udpToA},
		},
		{
			name:     "target port change makes every old flow stale",
			before:   st(udpSvc("dns", "10.96.0.53", 53, 5353, a, b)),
			after:    st(udpSvc("dns", "10.96.0.53", 53, 5354, a, b)),
			wantLost: true,
			stale:    []flow{udpToA, udpToB},
		},
		{
			// Established TCP connections finish on their backend, as
			// they do under conntrack.
			name:     "TCP flows are never flushed",
			before:   st(svc("web", "10.96.0.10", 80, 8080, a, b), udpSvc("dns", "10.96.0.53", 53, 5353, a)),
			after:    st(svc("web", "10.96.0.10", 80, 8080, b), udpSvc("dns", "10.96.0.53", 53, 5353)),
			wantLost: true,
			stale:    []flow{udpToA},
			notStale: []flow{tcpToA},
		},
		{
			name:     "TCP-only change: no walk",
			before:   st(svc("web", "10.96.0.10", 80, 8080, a, b)),
			after:    st(svc("web", "10.96.0.10", 80, 8080, b)),
			notStale: []flow{tcpToA},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installed := newTables()
			m := newFakeMaps()
			_, err := syncMaps(context.Background(), &installed, tt.before, m.services(), m.backends())
			require.NoError(t, err)
			lost, err := syncMaps(context.Background(), &installed, tt.after, m.services(), m.backends())
			require.NoError(t, err)
			assert.Equal(t, tt.wantLost, lost != nil, "lost: %v", lost)
			for _, f := range tt.stale {
				assert.True(t, staleFlow(lost, f.key, f.val), "%s -> %s should be stale", f.key, f.val.backend())
			}
			for _, f := range tt.notStale {
				assert.False(t, staleFlow(lost, f.key, f.val), "%s -> %s should be kept", f.key, f.val.backend())
			}
		})
	}
}
