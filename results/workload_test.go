package results

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The table's notes and the charts' titles name the workload: protocol,
// UDP mode and family, from the run's scenario.
func TestWorkloadOf(t *testing.T) {
	tests := []struct {
		name      string
		scenario  string
		want      WorkloadKind
		wantTitle string
		wantNote  string
	}{
		{"no scenario (bench.txt)", "", WorkloadKind{"TCP", "", "IPv4"}, "Short-connection TCP",
			"workload: TCP short connections (connect, request, reply, close), IPv4"},
		{"TCP IPv6", `{"service":{"protocol":"TCP","ipFamily":"IPv6"}}`, WorkloadKind{"TCP", "", "IPv6"}, "Short-connection TCP, IPv6",
			"workload: TCP short connections (connect, request, reply, close), IPv6"},
		{"UDP default mode", `{"service":{"protocol":"UDP"}}`, WorkloadKind{"UDP", "socket-per-request", "IPv4"},
			"UDP, unconnected socket per request: sendto, recvfrom, close",
			"workload: UDP socket-per-request (unconnected socket per request: sendto, recvfrom, close), IPv4"},
		{"UDP connected IPv6", `{"service":{"protocol":"UDP","ipFamily":"IPv6"},"workload":{"udpMode":"connected"}}`,
			WorkloadKind{"UDP", "connected", "IPv6"}, "UDP, connected socket per request: connect, send, recv, close, IPv6",
			"workload: UDP connected (connected socket per request: connect, send, recv, close), IPv6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := &Run{Scenario: []byte(tt.scenario)}
			k := WorkloadOf(run)
			assert.Equal(t, tt.want, k)
			assert.Equal(t, tt.wantTitle, k.Title())
			assert.Equal(t, tt.wantNote, k.Note())
			run.Trials = []Trial{{Datapath: DirectDatapath, Concurrency: 1, Workload: Workload{QPS: 100, Connections: 100}}}
			run.Summary = Summarize(run.Trials)
			var b bytes.Buffer
			require.NoError(t, WriteTable(&b, run))
			assert.Contains(t, b.String(), tt.wantNote+"\n", "the table names the workload")
		})
	}
}
