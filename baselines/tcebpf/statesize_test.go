package tcebpf_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf/features"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/tcebpf"
	"svclab/datapath"
	"svclab/internal/lbmaps"
)

// stateSize reads the standard state-size keys from Info.
func stateSize(t *testing.T, dp *tcebpf.Datapath) (objects int, bytes uint64) {
	t.Helper()
	objects, bytes, err := lbmaps.ReadStateSize(dp.Info())
	require.NoError(t, err)
	return objects, bytes
}

// TestPrivilegedStateSize checks Info's state size against the maps the
// kernel holds: state_objects must be what a walk of the services and
// backends maps counts, and what the model predicts (per service port one
// service entry, per endpoint one backend slot).
func TestPrivilegedStateSize(t *testing.T) {
	tcebpf.RequirePrivileged(t)
	ctx := context.Background()
	topo := newTopology(t)
	dp := tcebpf.New()
	require.NoError(t, dp.Setup(ctx, topo.Env()))
	t.Cleanup(func() { assert.NoError(t, dp.Close()) })

	assert.NotContains(t, tcebpf.New().Info(), datapath.InfoStateObjects, "no state before Setup")
	objects, emptyBytes := stateSize(t, dp)
	assert.Zero(t, objects, "state_objects right after Setup")

	// services builds n one-port TCP services of k endpoints each, from
	// the topology's backends.
	services := func(n, k int) []datapath.Service {
		var out []datapath.Service
		for i := range n {
			s := datapath.Service{
				Namespace: "default", Name: fmt.Sprintf("s%d", i),
				ClusterIP: netip.AddrFrom4([4]byte{10, 96, 1, byte(i + 1)}),
				Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: tcpTarget}},
			}
			for j := range k {
				b := topo.Backends[(i+j)%len(topo.Backends)]
				s.Endpoints = append(s.Endpoints, datapath.Endpoint{Pod: b.Name, Addr: b.Addr, Ready: true, Serving: true})
			}
			out = append(out, s)
		}
		return out
	}
	kernelVersion, err := features.LinuxVersionCode()
	require.NoError(t, err)

	tests := []struct {
		name          string
		services, eps int
	}{
		{"empty", 0, 0},
		{"3 services x 2 endpoints", 3, 2},
		{"3 services x 1 endpoint", 3, 1},
		{"emptied again", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, dp.Apply(ctx, datapath.State{Services: services(tt.services, tt.eps)}))
			objects, bytes := stateSize(t, dp)
			assert.Equal(t, tt.services*(1+tt.eps), objects, "model: a service entry per port, a slot per endpoint")
			kernel, err := tcebpf.KernelMapEntries(dp)
			require.NoError(t, err)
			assert.Equal(t, kernel, objects, "entries in the kernel maps")
			assert.Positive(t, bytes, "memlock of the maps")
			// Since 6.4 the memlock of a BPF_F_NO_PREALLOC hash map is
			// what its elements use, so entries must show in it.
			if objects > 0 && kernelVersion >= 6<<16|4<<8 {
				assert.Greater(t, bytes, emptyBytes, "state_bytes with %d entries vs empty maps", objects)
			}
		})
	}
}
