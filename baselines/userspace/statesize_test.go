package userspace_test

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/userspace"
	"svclab/datapath"
)

// TestPrivilegedStateObjects checks Info's state size: state_objects is
// the proxy's listening sockets (one per frontend that has endpoints), and
// proxy_rss_bytes the proxy's resident memory, not state_bytes.
func TestPrivilegedStateObjects(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t, "uss", 3)

	f, err := datapath.Lookup("userspace")
	require.NoError(t, err)
	require.NoError(t, f.Probe())
	dp := f.New()
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, topo.Env()))
	t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

	// services builds n one-port TCP services; the first withEndpoints
	// of them get two endpoints each, the rest none.
	services := func(n, withEndpoints int) []datapath.Service {
		var out []datapath.Service
		for i := range n {
			s := datapath.Service{
				Namespace: "bench", Name: fmt.Sprintf("s%d", i),
				ClusterIP: netip.AddrFrom4([4]byte{10, 96, 1, byte(i + 1)}),
				Ports:     tcpPort(80, httpPort),
			}
			if i < withEndpoints {
				b := topo.Backends
				s.Endpoints = endpointsOf([]datapath.Pod{b[i%len(b)], b[(i+1)%len(b)]})
			}
			out = append(out, s)
		}
		return out
	}
	tests := []struct {
		name                    string
		services, withEndpoints int
	}{
		{"3 services x 2 endpoints", 3, 3},
		{"one service loses its endpoints", 3, 2},
		{"empty", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := datapath.State{Services: services(tt.services, tt.withEndpoints)}
			require.NoError(t, dp.Apply(ctx, st))
			info := dp.Info()
			assert.Equal(t, strconv.Itoa(tt.withEndpoints), info[datapath.InfoStateObjects], "a listening socket per frontend with endpoints")
			assert.Equal(t, info["listening"], info[datapath.InfoStateObjects])
			assert.NotContains(t, info, datapath.InfoStateBytes, "the proxy's memory is user memory, not state_bytes")
			rss, err := strconv.ParseUint(info["proxy_rss_bytes"], 10, 64)
			require.NoError(t, err, "proxy_rss_bytes = %q", info["proxy_rss_bytes"])
			assert.Positive(t, rss)
			assert.NotZero(t, userspace.ProxyPID(dp), "the proxy whose RSS this is runs")
		})
	}
}
