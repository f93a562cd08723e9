package bench

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"svclab/datapath"
	"svclab/harness/topology"
	"svclab/results"
)

func TestSplitByNode(t *testing.T) {
	client := datapath.Pod{Name: "client-0"}
	two := &topology.Topology{Nodes: []*topology.Node{
		{Name: "node-0", Clients: []datapath.Pod{client}, Backends: []datapath.Pod{{Name: "backend-00"}, {Name: "backend-02"}}},
		{Name: "node-1", Backends: []datapath.Pod{{Name: "backend-01"}, {Name: "backend-03"}}},
	}}
	one := &topology.Topology{Nodes: []*topology.Node{{Name: "node-0", Clients: []datapath.Pod{client}}}}
	tests := []struct {
		name        string
		topo        *topology.Topology
		per         map[string]int64
		same, cross int64
		frac        *float64
	}{
		{"one node: untouched", one, map[string]int64{"backend-00": 10}, 0, 0, nil},
		{"two nodes", two, map[string]int64{"backend-00": 10, "backend-02": 20, "backend-01": 30, "backend-03": 40}, 30, 70, ptr(0.7)},
		{"two nodes, nothing answered", two, map[string]int64{}, 0, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &results.Trial{Workload: results.Workload{PerBackend: tt.per}}
			splitByNode(tr, tt.topo, client)
			assert.Equal(t, tt.same, tr.SameNodeConnections)
			assert.Equal(t, tt.cross, tr.CrossNodeConnections)
			if tt.frac == nil {
				assert.Nil(t, tr.CrossNodeFraction)
			} else {
				assert.InDelta(t, *tt.frac, *tr.CrossNodeFraction, 1e-9)
			}
		})
	}
}

func ptr(f float64) *float64 { return &f }
