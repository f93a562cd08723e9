package conform

import (
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/harness/internal/harnesstest"
	"svclab/harness/probe"
	"svclab/harness/topology"
	"svclab/results"
	"svclab/scenarios"
)

// fakeCell is a cell with a topology that exists only as data, for the
// expectation logic.
func fakeCell(backends int) *cellRun {
	sc := &scenarios.Conformance{Name: "fake", Family: "ipv4", Backends: backends}
	topo := &topology.Topology{}
	for i := range backends {
		topo.Backends = append(topo.Backends, datapath.Pod{Name: "backend-0" + string(rune('0'+i)),
			Addr: netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)})})
	}
	return &cellRun{sc: sc, topo: topo, starts: map[string]time.Time{}, marks: map[string]time.Time{}, cell: &results.ConformCell{}}
}

func ok(start time.Time, backend string) probe.Attempt {
	return probe.Attempt{Start: start.UnixNano(), Dialed: "10.96.0.10:80", Reply: backend + ":8080", Peer: "10.96.0.10:80", From: "10.96.0.10:80"}
}

func failed(start time.Time, errno string, elapsed time.Duration) probe.Attempt {
	return probe.Attempt{Start: start.UnixNano(), Dialed: "10.96.0.10:80", Errno: errno, Stage: "connect", ElapsedUS: float64(elapsed.Microseconds())}
}

// Each check passes on attempts that meet it and fails, naming what it saw,
// on attempts that do not.
func TestEvaluateChecks(t *testing.T) {
	c := fakeCell(3)
	t0 := time.Now()
	// The change step ran from 0.8 s to 1 s.
	c.starts["change"] = t0.Add(800 * time.Millisecond)
	c.marks["change"] = t0.Add(time.Second)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	spread := func(n0, n1, n2 int) []probe.Attempt {
		var out []probe.Attempt
		for i, n := range []int{n0, n1, n2} {
			for range n {
				out = append(out, ok(t0, c.topo.Backends[i].Name))
			}
		}
		return out
	}
	viaBackend := ok(t0, "backend-01")
	viaBackend.Peer = "10.244.0.3:8080"
	late := func(from ...string) probe.Attempt {
		a := ok(t0, "backend-01")
		a.Late = from
		return a
	}
	tests := []struct {
		name     string
		e        scenarios.Expect
		atts     []probe.Attempt
		pass     bool
		observed string
	}{
		{"ok", scenarios.Expect{Check: "ok"}, spread(1, 1, 1), true, "answered ×3"},
		{"ok with a refusal", scenarios.Expect{Check: "ok"}, append(spread(1, 1, 1), failed(t0, "ECONNREFUSED", 0)), false, "connect ECONNREFUSED ×1"},
		{"errno", scenarios.Expect{Check: "errno", Errno: []string{"ECONNREFUSED"}}, []probe.Attempt{failed(t0, "ECONNREFUSED", 0)}, true, ""},
		{"wrong errno", scenarios.Expect{Check: "errno", Errno: []string{"ECONNREFUSED"}}, []probe.Attempt{failed(t0, "EHOSTUNREACH", 0)}, false, "EHOSTUNREACH"},
		{"fail within", scenarios.Expect{Check: "fail-within", Within: scenarios.Duration(time.Second)}, []probe.Attempt{failed(t0, "timeout", 3*time.Second)}, false, "3000 ms"},
		{"reached", scenarios.Expect{Check: "reached", Pods: "0-2"}, spread(5, 5, 5), true, ""},
		{"reached misses one", scenarios.Expect{Check: "reached", Pods: "0-2"}, spread(5, 0, 5), false, "never reached: backend-01"},
		{"reached stray", scenarios.Expect{Check: "reached", Pods: "0-1"}, spread(5, 5, 1), false, "backend-02 ×1"},
		{"spread uniform", scenarios.Expect{Check: "spread", Pods: "0-2", Alpha: 0.001}, spread(100, 95, 105), true, "p="},
		{"spread skewed", scenarios.Expect{Check: "spread", Pods: "0-2", Alpha: 0.001}, spread(200, 50, 50), false, "chi-square"},
		{"single backend", scenarios.Expect{Check: "single-backend"}, spread(0, 7, 0), true, ""},
		{"not single", scenarios.Expect{Check: "single-backend"}, spread(1, 7, 0), false, "backend-00 ×1"},
		{"distinct", scenarios.Expect{Check: "distinct", Min: 2}, spread(0, 7, 0), false, "1 distinct"},
		{"peer is VIP", scenarios.Expect{Check: "peer", Equals: "dialed"}, spread(1, 1, 1), true, ""},
		{"peer is backend", scenarios.Expect{Check: "peer", Equals: "dialed"}, []probe.Attempt{viaBackend}, false, "10.244.0.3:8080 ×1"},
		{"peer equals backend", scenarios.Expect{Check: "peer", Equals: "backend"}, []probe.Attempt{viaBackend}, true, ""},
		{"target port", scenarios.Expect{Check: "target-port", Port: 8081}, spread(1, 0, 0), false, "8080 ×1"},
		{"not reached after the change", scenarios.Expect{Check: "not-reached", Pods: "0", After: "change"},
			[]probe.Attempt{ok(at(500), "backend-00"), ok(at(1500), "backend-01")}, true, ""},
		{"reached after the change", scenarios.Expect{Check: "not-reached", Pods: "0", After: "change"},
			[]probe.Attempt{ok(at(500), "backend-00"), ok(at(1500), "backend-00")}, false, "backend-00 ×1"},
		{"grace ignores early attempts", scenarios.Expect{Check: "not-reached", Pods: "0", After: "change", Grace: scenarios.Duration(time.Second)},
			[]probe.Attempt{ok(at(1500), "backend-00"), ok(at(2500), "backend-01")}, true, ""},
		{"recovers in time", scenarios.Expect{Check: "recovers", After: "change", Within: scenarios.Duration(time.Second), Pods: "1"},
			[]probe.Attempt{ok(at(500), "backend-00"), failed(at(1200), "timeout", 0), ok(at(1600), "backend-01"), ok(at(1900), "backend-01")}, true, "recovered 600ms"},
		{"recovers late", scenarios.Expect{Check: "recovers", After: "change", Within: scenarios.Duration(time.Second), Pods: "1"},
			[]probe.Attempt{failed(at(1200), "timeout", 0), ok(at(2200), "backend-00"), ok(at(2500), "backend-01")}, false, "recovered 1.5s"},
		{"never recovers", scenarios.Expect{Check: "recovers", After: "change", Within: scenarios.Duration(time.Second), Pods: "1"},
			[]probe.Attempt{ok(at(1500), "backend-01"), failed(at(2200), "timeout", 0)}, false, "not recovered"},
		{"before ends where the change began", scenarios.Expect{Check: "only", Pods: "0", Before: "change"},
			[]probe.Attempt{ok(at(500), "backend-00"), ok(at(900), "backend-01"), ok(at(1500), "backend-01")}, true, ""},
		{"late datagram from the VIP", scenarios.Expect{Check: "late-from", Equals: "dialed"}, []probe.Attempt{late("10.96.0.10:80"), late()}, true, "10.96.0.10:80 ×1"},
		{"no late datagram seen", scenarios.Expect{Check: "late-from", Equals: "dialed"}, spread(1, 1, 0), true, "none"},
		{"late datagram from the backend", scenarios.Expect{Check: "late-from", Equals: "dialed"}, []probe.Attempt{late("10.244.0.2:8080")}, false, "10.244.0.2:8080 ×1"},
		{"empty window", scenarios.Expect{Check: "ok", After: "change"}, []probe.Attempt{ok(at(500), "backend-00")}, false, "no attempts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.evaluate(tt.e, tt.atts)
			assert.Equal(t, tt.pass, r.Pass, "observed: %s", r.Observed)
			assert.Contains(t, r.Observed, tt.observed)
		})
	}
}

// What a datapath leaves out by design decides a cell before anything is
// built: a row that needs a Service is n/a without one, a hostNetwork row
// is skipped (with the reason) for a datapath that does not serve the node.
func TestOutOfScope(t *testing.T) {
	svcRow := &scenarios.Conformance{Name: "aff", NeedsService: true}
	hostRow := &scenarios.Conformance{Name: "host", Steps: []scenarios.Step{{Probe: &scenarios.ProbeStep{From: "host"}}}}
	plainRow := &scenarios.Conformance{Name: "plain", Steps: []scenarios.Step{{Probe: &scenarios.ProbeStep{From: "backend:0"}}}}
	direct := datapath.Factory{Name: "d", Scope: datapath.Scope{NoService: "no Service"}}
	tc := datapath.Factory{Name: "t", Scope: datapath.Scope{NoHostNetwork: "pod veths only"}}
	full := datapath.Factory{Name: "f"}
	tests := []struct {
		sc      *scenarios.Conformance
		f       datapath.Factory
		out     bool
		status  string
		summary string
	}{
		{svcRow, direct, true, results.CellNA, "no Service"},
		{svcRow, tc, false, "", ""},
		{svcRow, full, false, "", ""},
		{hostRow, tc, true, results.CellSkip, "hostNetwork client not served: pod veths only"},
		{hostRow, direct, false, "", ""},
		{hostRow, full, false, "", ""},
		{plainRow, direct, false, "", ""},
		{plainRow, tc, false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.sc.Name+"×"+tt.f.Name, func(t *testing.T) {
			cell, out := outOfScope(tt.sc, tt.f)
			assert.Equal(t, tt.out, out)
			if tt.out {
				assert.Equal(t, tt.status, cell.Status)
				assert.Equal(t, tt.summary, cell.Summary)
				assert.Equal(t, tt.sc.Name, cell.Scenario)
				assert.Equal(t, tt.f.Name, cell.Datapath)
			}
		})
	}
}

// A subset of the conformance matrix on four datapaths that fits in well
// under a minute: the files are written, every cell has a status, and
// cells whose outcome is known hold.
func TestPrivilegedConformSubset(t *testing.T) {
	harnesstest.RequireRoot(t)
	var list []*scenarios.Conformance
	for _, n := range []string{"tcp-spread", "no-endpoints-tcp", "getpeername-tcp", "non-service-address",
		"udp-connected-reply-source", "multi-port", "terminating-fallback", "endpoint-removed-added", "hairpin",
		"host-client-tcp", "host-client-udp"} {
		c, err := scenarios.LoadConformance(n)
		require.NoError(t, err)
		list = append(list, c)
	}
	out := t.TempDir()
	run, dir, err := Run(context.Background(), Config{Scenarios: list,
		Datapaths: []string{"socketlb", "iptables", "nftables", "direct"}, OutputDir: out, Log: io.Discard})
	require.NoError(t, err)
	prefix := "svclab-" + run.ID[strings.LastIndex(run.ID, "-")+1:]
	assert.Empty(t, harnesstest.Leftovers(t, prefix), "conform must remove every topology it built")

	b, err := os.ReadFile(filepath.Join(dir, "conformance.json"))
	require.NoError(t, err)
	var back results.ConformRun
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Len(t, back.Cells, len(list)*4)
	md, err := os.ReadFile(filepath.Join(dir, "conformance.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "| Behaviour | socketlb | iptables | nftables | direct |")

	available := map[string]bool{}
	for _, d := range run.Datapaths {
		available[d.Name] = d.Skipped == ""
	}
	for _, c := range run.Cells {
		assert.Contains(t, []string{results.CellPass, results.CellFail, results.CellSkip, results.CellError, results.CellNA}, c.Status)
		assert.False(t, strings.HasPrefix(c.Summary, "harness:"), "%s × %s: %s", c.Scenario, c.Datapath, c.Summary)
	}
	// Known outcomes: kube-proxy's REJECT answers a SYN to a service
	// without endpoints with an ICMP port unreachable (ECONNREFUSED); the
	// direct baseline reaches every endpoint and has no address for a
	// service without endpoints; a pod's own address is untouched by
	// every datapath.
	known := []struct{ scenario, dp, status string }{
		{"no-endpoints-tcp", "iptables", results.CellPass},
		{"no-endpoints-tcp", "nftables", results.CellPass},
		{"tcp-spread", "direct", results.CellPass},
		{"tcp-spread", "iptables", results.CellPass},
		{"no-endpoints-tcp", "direct", results.CellNA},
		{"endpoint-removed-added", "direct", results.CellNA},
		{"terminating-fallback", "direct", results.CellNA},
		{"non-service-address", "socketlb", results.CellPass},
		{"non-service-address", "iptables", results.CellPass},
		{"non-service-address", "nftables", results.CellPass},
		{"getpeername-tcp", "iptables", results.CellPass},
		{"multi-port", "iptables", results.CellPass},
		{"multi-port", "direct", results.CellPass},
		{"terminating-fallback", "iptables", results.CellPass},
		{"endpoint-removed-added", "iptables", results.CellPass},
		{"hairpin", "direct", results.CellPass},
		// kube-proxy serves the node's own processes from nat OUTPUT
		// (iptables: -A OUTPUT -j KUBE-SERVICES; nftables: the nat-output
		// base chain), socket-LB because the node's processes are under
		// the cgroup it attaches to.
		{"host-client-tcp", "iptables", results.CellPass},
		{"host-client-udp", "iptables", results.CellPass},
		{"host-client-tcp", "nftables", results.CellPass},
		{"host-client-udp", "nftables", results.CellPass},
		{"host-client-tcp", "socketlb", results.CellPass},
		{"host-client-udp", "socketlb", results.CellPass},
	}
	for _, k := range known {
		if !available[k.dp] {
			continue
		}
		c, found := run.Cell(k.scenario, k.dp)
		require.True(t, found, "%s × %s", k.scenario, k.dp)
		assert.Equal(t, k.status, c.Status, "%s × %s: %s", k.scenario, k.dp, c.Summary)
	}
	if c, _ := run.Cell("no-endpoints-tcp", "iptables"); available["iptables"] {
		assert.Contains(t, c.Summary, "ECONNREFUSED", "the table must show the errno")
	}
}

// Every built-in row against the reference socket-LB, as --strict socketlb
// checks it: make test runs the whole socketlb column (about a minute), so
// a change that breaks any Service behaviour of the reference fails CI,
// not just the rows of the subset above. Advisory rows may fail; skips
// must name a reason.
func TestPrivilegedConformSocketLBEveryRow(t *testing.T) {
	harnesstest.RequireRoot(t)
	f, err := datapath.Lookup("socketlb")
	require.NoError(t, err)
	if f.Probe != nil {
		if err := f.Probe(); err != nil {
			t.Skipf("socketlb cannot run here: %v", err)
		}
	}
	all, err := scenarios.LoadAllConformance()
	require.NoError(t, err)
	run, _, err := Run(context.Background(), Config{Scenarios: all, Datapaths: []string{"socketlb"}, OutputDir: t.TempDir(), Log: io.Discard})
	require.NoError(t, err)
	require.Len(t, run.Cells, len(all))
	for _, c := range run.Failing("socketlb") {
		t.Errorf("%s: %s: %s", c.Scenario, c.Status, c.Summary)
	}
	for _, c := range run.Cells {
		if c.Status == results.CellSkip {
			assert.NotEmpty(t, c.Summary, "%s: a skip names its reason", c.Scenario)
		}
	}
}
