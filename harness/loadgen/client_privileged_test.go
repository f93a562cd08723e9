package loadgen

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"svclab/harness/internal/harnesstest"
	"svclab/harness/topology"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countLines counts the non-empty lines of ss output.
func countLines(b []byte) int {
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

// The generator and the backend server as child processes in a real
// topology (client pod → node → backend pods, no datapath: the client picks
// backends itself, as the direct datapath does).
func TestPrivilegedClientServerInTopology(t *testing.T) {
	harnesstest.RequireRoot(t)
	run := harnesstest.NewRun(t)
	topo, err := topology.New(context.Background(), topology.Default(run.Prefix+"-cs", 3))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, topo.Close()) })
	const port = 8080
	srv, err := StartServer(topo.Node, topo.ServerCgroup.Path, BackendListeners(topo.Backends, port, false))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	var targets []netip.AddrPort
	for _, b := range topo.Backends {
		targets = append(targets, netip.AddrPortFrom(b.Addr, port))
	}
	client := topo.Clients[0].NS
	ctx := context.Background()

	tests := []struct {
		name          string
		protocol, udp string
	}{
		{"TCP", ProtocolTCP, ""},
		{"UDP socket per request", ProtocolUDP, UDPSocketPerRequest},
		{"UDP long-lived", ProtocolUDP, UDPLongLived},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := RunClientProcess(ctx, client, topo.ClientCgroup.Path, ClientSpec{Targets: targets, Concurrency: 8,
				Duration: 20 * time.Second, Connections: 900, Protocol: tt.protocol, UDPMode: tt.udp, CPUCgroup: topo.CgroupDir(), CPURoles: topo.CPURoles()})
			require.NoError(t, err)
			assert.Empty(t, w.Errors)
			// The pods' own CPU time is measured, and is part of the
			// machine's (sampled a moment apart: a little slack).
			require.NotNil(t, w.CPU)
			assert.Positive(t, w.CPU.RunPerConnectionUS)
			assert.LessOrEqual(t, w.CPU.RunSeconds, 1.1*w.CPU.BusySeconds+0.02)
			// The client's and the servers' shares are both there and
			// within the whole (read a moment apart: a little slack).
			assert.Positive(t, w.CPU.RunRoleSeconds["clients"])
			assert.Positive(t, w.CPU.RunRoleSeconds["servers"])
			assert.LessOrEqual(t, w.CPU.RunRoleSeconds["clients"]+w.CPU.RunRoleSeconds["servers"], 1.05*w.CPU.RunSeconds+0.01)
			assert.GreaterOrEqual(t, w.Connections, int64(900))
			// A clean run retransmits (almost) no SYN; a few can happen
			// when a loaded machine delays a SYN-ACK past the 1 s
			// initial RTO, so this checks for systematic loss only.
			assert.LessOrEqual(t, w.SynRetrans*100, w.Connections, "SYN retransmits beyond 1%% of connections mean SYNs are being dropped")
			// Straight to the pods: every reply comes from where the
			// request went.
			assert.Zero(t, w.WrongSource)
			for _, b := range topo.Backends {
				// 900 over 3: 300 expected; under 150 means the spread
				// is broken (binomial p < 1e-12).
				assert.Greater(t, w.PerBackend[b.Name], int64(150), "backend %s: %v", b.Name, w.PerBackend)
			}
		})
	}

	// The client closes first, so every TIME_WAIT of those connections is
	// in the client's namespace and none in a backend's, where it would
	// collide with a later trial's tuples.
	t.Run("TIME_WAIT stays with the client", func(t *testing.T) {
		out, err := client.Run(ctx, nil, "ss", "-Htan", "state", "time-wait")
		require.NoError(t, err)
		assert.GreaterOrEqual(t, countLines(out), 900, "client TIME_WAIT sockets")
		for _, b := range topo.Backends {
			out, err := b.NS.Run(ctx, nil, "ss", "-Htan", "state", "time-wait")
			require.NoError(t, err)
			assert.Zero(t, countLines(out), "TIME_WAIT in backend %s:\n%s", b.Name, out)
		}
	})

	// The window's edges reach the parent while the client waits: the
	// client namespace's TCP active opens between them are exactly the
	// connections the window started (none of the warm-up's, all of the
	// drain's).
	t.Run("window edges", func(t *testing.T) {
		var got []byte
		var opens []int64
		w, err := RunClientProcessEdges(ctx, client, topo.ClientCgroup.Path, ClientSpec{Targets: targets, Concurrency: 8,
			Warmup: 200 * time.Millisecond, Duration: 400 * time.Millisecond}, func(e byte) error {
			got = append(got, e)
			var n int64
			err := client.Do(func() (err error) { n, err = activeOpens(); return err })
			opens = append(opens, n)
			return err
		})
		require.NoError(t, err)
		require.Equal(t, []byte{EdgeStart, EdgeEnd}, got)
		assert.Positive(t, w.Connections)
		// The loops run on while the parent snapshots at the start edge:
		// those warm-up connections are inside the edges, and counted
		// (EdgeWarmup), give or take what the slots start while the edge
		// travels to the parent (before its snapshot) and before the
		// phase change: a few per slot, a tenth of a percent of the
		// window here (12 of 11,620 in one run).
		window, between := w.Connections+SumErrors(w.Errors), opens[1]-opens[0]
		assert.GreaterOrEqual(t, between, window, "every connection of the window is between the edges")
		assert.InEpsilon(t, float64(window+w.EdgeWarmup), float64(between), 0.005, "the warm-up inside the edges is counted")
		assert.Greater(t, w.Started, opens[1]-opens[0], "the warm-up's connections are outside the edges")

		_, err = RunClientProcessEdges(ctx, client, topo.ClientCgroup.Path, ClientSpec{Targets: targets, Concurrency: 1,
			Duration: 100 * time.Millisecond}, func(e byte) error { return errors.New("snapshot failed") })
		assert.ErrorContains(t, err, "snapshot failed", "an edge's failure fails the run")
		_, err = RunClientProcessEdges(ctx, client, topo.ClientCgroup.Path, ClientSpec{Targets: targets, Rate: 10,
			Duration: 100 * time.Millisecond}, func(byte) error { return nil })
		assert.ErrorIs(t, err, ErrEdge, "the open loop has no edges to announce")
	})

	t.Run("refused port", func(t *testing.T) {
		w, err := RunClientProcess(ctx, client, topo.ClientCgroup.Path, ClientSpec{
			Targets: []netip.AddrPort{netip.AddrPortFrom(topo.Backends[0].Addr, port+1)}, Concurrency: 2, Duration: 300 * time.Millisecond})
		require.NoError(t, err)
		assert.Zero(t, w.Connections)
		assert.Greater(t, w.Errors["ECONNREFUSED"], int64(0), "errors: %v", w.Errors)
		assert.Len(t, w.Errors, 1, "errors: %v", w.Errors)
	})

	// Traffic to an address nobody translates ends in the node's sink,
	// which drops it: the client gives up after Timeout instead of hanging.
	t.Run("dropped SYNs time out", func(t *testing.T) {
		start := time.Now()
		w, err := RunClientProcess(ctx, client, topo.ClientCgroup.Path, ClientSpec{
			Targets: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.99:80")}, Concurrency: 2,
			Duration: 500 * time.Millisecond, Timeout: 100 * time.Millisecond})
		require.NoError(t, err)
		assert.Less(t, time.Since(start), 5*time.Second)
		assert.Zero(t, w.Connections)
		assert.Greater(t, w.Errors["ETIMEDOUT"], int64(0), "errors: %v", w.Errors)
		assert.Len(t, w.Errors, 1, "errors: %v", w.Errors)
	})

	// The open loop at a modest rate through the topology: the datapath
	// (here none) keeps up, so the achieved rate is the offered one and
	// every arrival succeeds.
	for _, tt := range tests {
		t.Run("open loop "+tt.name, func(t *testing.T) {
			const rate = 500
			// A fixed seed fixes the schedule, so how many arrivals fall
			// in the window does not vary from run to run.
			w, err := RunClientProcess(ctx, client, topo.ClientCgroup.Path, ClientSpec{Targets: targets, Rate: rate, Seed: 1,
				Loops: 1, Warmup: 200 * time.Millisecond, Duration: 2 * time.Second, Protocol: tt.protocol, UDPMode: tt.udp})
			require.NoError(t, err)
			assert.Empty(t, w.Errors)
			assert.Equal(t, ArrivalsPoisson, w.Arrivals)
			assert.Equal(t, uint64(1), w.ScheduleSeed)
			assert.Equal(t, w.Scheduled, w.Connections, "every arrival of the window succeeded")
			assert.InEpsilon(t, float64(rate), w.QPS, 0.10, "achieved rate against offered")
			assert.Zero(t, w.WrongSource)
			assert.LessOrEqual(t, w.SynRetrans*100, w.Connections, "SYN retransmits beyond 1%% of connections mean SYNs are being dropped")
			assert.Len(t, w.PerBackend, len(topo.Backends), "backends reached: %v", w.PerBackend)
		})
	}
}

// activeOpens reads Tcp ActiveOpens of the calling thread's namespace.
func activeOpens() (int64, error) {
	b, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return 0, err
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "ActiveOpens" && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
	}
	return 0, errors.New("no Tcp ActiveOpens in /proc/thread-self/net/snmp")
}
