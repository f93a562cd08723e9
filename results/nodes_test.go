package results

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNodeSplits(t *testing.T) {
	frac := func(f float64) *float64 { return &f }
	trial := func(dp string, qps float64, f *float64, nodes int) Trial {
		return Trial{Datapath: dp, Concurrency: 8, Nodes: nodes, CrossNodeFraction: f, Workload: Workload{QPS: qps}}
	}
	tests := []struct {
		name   string
		trials []Trial
		want   []NodeSplit
	}{
		{"one node: no block", []Trial{trial("direct", 1000, nil, 0)}, []NodeSplit{}},
		{"two nodes with direct", []Trial{
			trial("socketlb", 1000, frac(0.5), 2), trial("socketlb", 1200, frac(0.5), 2),
			trial("direct", 2000, frac(0.25), 2),
		}, []NodeSplit{
			{Datapath: "socketlb", Concurrency: 8, Nodes: 2, Trials: 2, QPS: 1100, SameQPS: 550, CrossQPS: 550, CrossFraction: 0.5, CrossRatioToDirect: 1.1},
			{Datapath: "direct", Concurrency: 8, Nodes: 2, Trials: 1, QPS: 2000, SameQPS: 1500, CrossQPS: 500, CrossFraction: 0.25, CrossRatioToDirect: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NodeSplits(&Run{Trials: tt.trials, Datapaths: []DatapathInfo{{Name: "socketlb"}, {Name: "direct"}}})
			require.Len(t, got, len(tt.want))
			for i := range got {
				assert.InDelta(t, tt.want[i].CrossRatioToDirect, got[i].CrossRatioToDirect, 1e-9)
				got[i].CrossRatioToDirect = tt.want[i].CrossRatioToDirect
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestWriteNodesSaysLatencyIsNotSplit(t *testing.T) {
	f := 0.5
	var buf bytes.Buffer
	require.NoError(t, writeNodes(&buf, &Run{Trials: []Trial{{Datapath: "direct", Concurrency: 1, Nodes: 2, CrossNodeFraction: &f, Workload: Workload{QPS: 100}}}}))
	assert.Contains(t, buf.String(), "same-node vs cross-node (2 nodes")
	assert.Contains(t, buf.String(), "p90 is not measured per class")
	buf.Reset()
	require.NoError(t, writeNodes(&buf, &Run{Trials: []Trial{{Datapath: "direct", Workload: Workload{QPS: 100}}}}))
	assert.Empty(t, buf.String(), "a one-node run's table is unchanged")
}
