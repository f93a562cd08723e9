package socketlb

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/internal/lbmaps"
)

// stateSize reads the standard state-size keys from Info.
func stateSize(t *testing.T, s *SocketLB) (objects int, bytes uint64) {
	t.Helper()
	objects, bytes, err := lbmaps.ReadStateSize(s.Info())
	require.NoError(t, err)
	return objects, bytes
}

// TestPrivilegedStateSize checks Info's state size against the maps the
// kernel holds: state_objects must be what a walk of the three
// load-balancing maps counts, and what the model predicts (per service
// port one service entry, per endpoint one backend slot and one
// membership).
func TestPrivilegedStateSize(t *testing.T) {
	f := newFixture(t)

	objects, emptyBytes := stateSize(t, f.dp)
	assert.Zero(t, objects, "state_objects right after Setup")

	tests := []struct {
		name       string
		svcs       []datapath.Service
		ports, eps int
	}{
		{"empty", nil, 0, 0},
		{"3 services x 2 endpoints", []datapath.Service{
			svc("s1", "10.96.0.10", 80, 8080, be("a"), be("b")),
			svc("s2", "10.96.0.11", 80, 8080, be("b"), be("c")),
			svc("s3", "fd00:96::12", 80, 8080, be("a6"), be("b6")),
		}, 3, 6},
		{"an endpoint removed", []datapath.Service{
			svc("s1", "10.96.0.10", 80, 8080, be("a")),
			svc("s2", "10.96.0.11", 80, 8080, be("b"), be("c")),
			svc("s3", "fd00:96::12", 80, 8080, be("a6"), be("b6")),
		}, 3, 5},
		{"emptied again", nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.apply(tt.svcs...)
			objects, bytes := stateSize(t, f.dp)
			assert.Equal(t, tt.ports+2*tt.eps, objects, "model: a service entry per port, a slot and a membership per endpoint")
			assert.Equal(t, readTables(t, f.dp).entries(), objects, "entries in the kernel maps")
			assert.Positive(t, bytes, "memlock of the maps")
			// Since 6.4 the memlock of a BPF_F_NO_PREALLOC hash map is
			// what its elements use, so entries must show in it.
			if objects > 0 && kernelAtLeast(6, 4) {
				assert.Greater(t, bytes, emptyBytes, "state_bytes with %d entries vs empty maps", objects)
			}
		})
	}
}
