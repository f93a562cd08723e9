package harness

import (
	"bytes"
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
	"svclab/results"
	"svclab/scenarios"
)

// Reference values of the chi-square distribution's upper tail (critical
// values from standard tables).
func TestChiSquareP(t *testing.T) {
	tests := []struct {
		x    float64
		df   int
		want float64
	}{
		{0, 11, 1},
		{19.675, 11, 0.05},
		{31.264, 11, 0.001},
		{3.841, 1, 0.05},
		{6.635, 1, 0.01},
		{124.342, 100, 0.05},
		{200, 11, 0},
	}
	for _, tt := range tests {
		p := ChiSquareP(tt.x, tt.df)
		assert.InDelta(t, tt.want, p, 2e-4, "x=%v df=%d", tt.x, tt.df)
	}
}

// fakeCell is a cell with a topology that exists only as data, for the
// expectation logic.
func fakeCell(backends int) *cellRun {
	sc := &scenarios.Conformance{Name: "fake", Family: "ipv4", Backends: backends}
	topo := &Topology{}
	for i := range backends {
		topo.Backends = append(topo.Backends, datapath.Pod{Name: "backend-0" + string(rune('0'+i)),
			Addr: netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)})})
	}
	return &cellRun{sc: sc, topo: topo, starts: map[string]time.Time{}, marks: map[string]time.Time{}, cell: &ConformCell{}}
}

func ok(start time.Time, backend string) ProbeAttempt {
	return ProbeAttempt{Start: start.UnixNano(), Dialed: "10.96.0.10:80", Reply: backend + ":8080", Peer: "10.96.0.10:80", From: "10.96.0.10:80"}
}

func failed(start time.Time, errno string, elapsed time.Duration) ProbeAttempt {
	return ProbeAttempt{Start: start.UnixNano(), Dialed: "10.96.0.10:80", Errno: errno, Stage: "connect", ElapsedUS: float64(elapsed.Microseconds())}
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
	spread := func(n0, n1, n2 int) []ProbeAttempt {
		var out []ProbeAttempt
		for i, n := range []int{n0, n1, n2} {
			for range n {
				out = append(out, ok(t0, c.topo.Backends[i].Name))
			}
		}
		return out
	}
	viaBackend := ok(t0, "backend-01")
	viaBackend.Peer = "10.244.0.3:8080"
	tests := []struct {
		name     string
		e        scenarios.Expect
		atts     []ProbeAttempt
		pass     bool
		observed string
	}{
		{"ok", scenarios.Expect{Check: "ok"}, spread(1, 1, 1), true, "answered ×3"},
		{"ok with a refusal", scenarios.Expect{Check: "ok"}, append(spread(1, 1, 1), failed(t0, "ECONNREFUSED", 0)), false, "connect ECONNREFUSED ×1"},
		{"errno", scenarios.Expect{Check: "errno", Errno: []string{"ECONNREFUSED"}}, []ProbeAttempt{failed(t0, "ECONNREFUSED", 0)}, true, ""},
		{"wrong errno", scenarios.Expect{Check: "errno", Errno: []string{"ECONNREFUSED"}}, []ProbeAttempt{failed(t0, "EHOSTUNREACH", 0)}, false, "EHOSTUNREACH"},
		{"fail within", scenarios.Expect{Check: "fail-within", Within: scenarios.Duration(time.Second)}, []ProbeAttempt{failed(t0, "timeout", 3*time.Second)}, false, "3000 ms"},
		{"reached", scenarios.Expect{Check: "reached", Pods: "0-2"}, spread(5, 5, 5), true, ""},
		{"reached misses one", scenarios.Expect{Check: "reached", Pods: "0-2"}, spread(5, 0, 5), false, "never reached: backend-01"},
		{"reached stray", scenarios.Expect{Check: "reached", Pods: "0-1"}, spread(5, 5, 1), false, "backend-02 ×1"},
		{"spread uniform", scenarios.Expect{Check: "spread", Pods: "0-2", Alpha: 0.001}, spread(100, 95, 105), true, "p="},
		{"spread skewed", scenarios.Expect{Check: "spread", Pods: "0-2", Alpha: 0.001}, spread(200, 50, 50), false, "chi-square"},
		{"single backend", scenarios.Expect{Check: "single-backend"}, spread(0, 7, 0), true, ""},
		{"not single", scenarios.Expect{Check: "single-backend"}, spread(1, 7, 0), false, "backend-00 ×1"},
		{"distinct", scenarios.Expect{Check: "distinct", Min: 2}, spread(0, 7, 0), false, "1 distinct"},
		{"peer is VIP", scenarios.Expect{Check: "peer", Equals: "dialed"}, spread(1, 1, 1), true, ""},
		{"peer is backend", scenarios.Expect{Check: "peer", Equals: "dialed"}, []ProbeAttempt{viaBackend}, false, "10.244.0.3:8080 ×1"},
		{"peer equals backend", scenarios.Expect{Check: "peer", Equals: "backend"}, []ProbeAttempt{viaBackend}, true, ""},
		{"target port", scenarios.Expect{Check: "target-port", Port: 8081}, spread(1, 0, 0), false, "8080 ×1"},
		{"not reached after the change", scenarios.Expect{Check: "not-reached", Pods: "0", After: "change"},
			[]ProbeAttempt{ok(at(500), "backend-00"), ok(at(1500), "backend-01")}, true, ""},
		{"reached after the change", scenarios.Expect{Check: "not-reached", Pods: "0", After: "change"},
			[]ProbeAttempt{ok(at(500), "backend-00"), ok(at(1500), "backend-00")}, false, "backend-00 ×1"},
		{"grace ignores early attempts", scenarios.Expect{Check: "not-reached", Pods: "0", After: "change", Grace: scenarios.Duration(time.Second)},
			[]ProbeAttempt{ok(at(1500), "backend-00"), ok(at(2500), "backend-01")}, true, ""},
		{"recovers in time", scenarios.Expect{Check: "recovers", After: "change", Within: scenarios.Duration(time.Second), Pods: "1"},
			[]ProbeAttempt{ok(at(500), "backend-00"), failed(at(1200), "timeout", 0), ok(at(1600), "backend-01"), ok(at(1900), "backend-01")}, true, "recovered 600ms"},
		{"recovers late", scenarios.Expect{Check: "recovers", After: "change", Within: scenarios.Duration(time.Second), Pods: "1"},
			[]ProbeAttempt{failed(at(1200), "timeout", 0), ok(at(2200), "backend-00"), ok(at(2500), "backend-01")}, false, "recovered 1.5s"},
		{"never recovers", scenarios.Expect{Check: "recovers", After: "change", Within: scenarios.Duration(time.Second), Pods: "1"},
			[]ProbeAttempt{ok(at(1500), "backend-01"), failed(at(2200), "timeout", 0)}, false, "not recovered"},
		{"before ends where the change began", scenarios.Expect{Check: "only", Pods: "0", Before: "change"},
			[]ProbeAttempt{ok(at(500), "backend-00"), ok(at(900), "backend-01"), ok(at(1500), "backend-01")}, true, ""},
		{"empty window", scenarios.Expect{Check: "ok", After: "change"}, []ProbeAttempt{ok(at(500), "backend-00")}, false, "no attempts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.evaluate(tt.e, tt.atts)
			assert.Equal(t, tt.pass, r.Pass, "observed: %s", r.Observed)
			assert.Contains(t, r.Observed, tt.observed)
		})
	}
}

// The markdown table has one row per scenario, one column per datapath and
// the status of every cell, with failures' observations in the details.
func TestWriteConformanceMarkdown(t *testing.T) {
	run := &ConformRun{ID: "20260101-000000-00000000",
		Datapaths: []results.DatapathInfo{{Name: "a"}, {Name: "b", Skipped: "no kernel support"}},
		Scenarios: []ConformScenario{{Name: "s1", Behaviour: "does x | y", Source: "e2e z", Family: "ipv4"}},
		Cells: []ConformCell{
			{Scenario: "s1", Datapath: "a", Status: CellFail, Summary: "errno: connect EHOSTUNREACH ×5",
				Checks: []CheckResult{{Step: "steps[0]", Check: "errno", Want: "errno ECONNREFUSED", Observed: "connect EHOSTUNREACH ×5"}}},
			{Scenario: "s1", Datapath: "b", Status: CellSkip, Summary: "datapath unavailable: no kernel support"},
		}}
	var b bytes.Buffer
	require.NoError(t, WriteConformanceMarkdown(&b, run))
	out := b.String()
	assert.Contains(t, out, "| Behaviour | a | b |")
	assert.Contains(t, out, "| `s1`: does x / y | **FAIL**: errno: connect EHOSTUNREACH ×5 | skip: datapath unavailable: no kernel support |")
	assert.Contains(t, out, "want errno ECONNREFUSED; observed connect EHOSTUNREACH ×5")
	assert.Contains(t, out, "Source: e2e z.")
}

// A probe spec that cannot run is refused before a child is started.
func TestProbeSpecValidate(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	good := ProbeSpec{Op: ProbeTCP, Targets: []netip.AddrPort{vip}, Count: 1}
	require.NoError(t, good.Validate())
	tests := []struct {
		name   string
		mutate func(*ProbeSpec)
		want   string
	}{
		{"op", func(s *ProbeSpec) { s.Op = "sctp" }, "op"},
		{"no targets", func(s *ProbeSpec) { s.Targets = nil }, "targets"},
		{"no bound", func(s *ProbeSpec) { s.Count = 0 }, "count or duration"},
		{"reconnect without second", func(s *ProbeSpec) { s.Op = ProbeUDPReconnect }, "second"},
		{"mapped v6", func(s *ProbeSpec) {
			s.V4Mapped = true
			s.Targets = []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:80")}
		}, "IPv4-mapped"},
		{"long-lived tcp", func(s *ProbeSpec) { s.LongLived = true }, "long_lived"},
		{"resend tcp", func(s *ProbeSpec) { s.Resend = time.Second }, "resend"},
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
	requireRoot(t)
	run := newTestRun(t)
	topo, err := NewTopology(context.Background(), testTopologyConfig(run.Prefix+"-probe", 2))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, topo.Close()) })
	spec := BackendListeners(topo, 8080)
	srv, err := StartServer(topo.Node, topo.ServerCgroup, spec)
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
		spec  ProbeSpec
		check func(t *testing.T, atts []ProbeAttempt)
	}{
		{"tcp", ProbeSpec{Op: ProbeTCP, Targets: []netip.AddrPort{b0}, Count: 3}, func(t *testing.T, atts []ProbeAttempt) {
			require.Len(t, atts, 3)
			for _, a := range atts {
				assert.Equal(t, "", a.Errno)
				assert.Equal(t, topo.Backends[0].Name, a.Reply)
				assert.Equal(t, b0.String(), a.Peer)
				assert.True(t, strings.HasPrefix(a.Local, topo.Clients[0].Addr.String()+":"), "local %s", a.Local)
			}
		}},
		{"tcp refused", ProbeSpec{Op: ProbeTCP, Targets: []netip.AddrPort{closed}, Count: 1}, func(t *testing.T, atts []ProbeAttempt) {
			assert.Equal(t, "ECONNREFUSED", atts[0].Errno)
			assert.Equal(t, "connect", atts[0].Stage)
		}},
		{"tcp timeout", ProbeSpec{Op: ProbeTCP, Targets: []netip.AddrPort{sink}, Count: 1, Timeout: 200 * time.Millisecond}, func(t *testing.T, atts []ProbeAttempt) {
			assert.Equal(t, ErrnoTimeout, atts[0].Errno)
			assert.InDelta(t, 200e3, atts[0].ElapsedUS, 100e3)
		}},
		{"tcp v4-mapped", ProbeSpec{Op: ProbeTCP, Targets: []netip.AddrPort{b0}, V4Mapped: true, Count: 1}, func(t *testing.T, atts []ProbeAttempt) {
			assert.Equal(t, topo.Backends[0].Name, atts[0].Reply)
			assert.Equal(t, mapped0.String(), atts[0].Peer)
			assert.Equal(t, mapped0.String(), atts[0].Dialed)
		}},
		{"udp per attempt", ProbeSpec{Op: ProbeUDP, Targets: []netip.AddrPort{b1}, Count: 3}, func(t *testing.T, atts []ProbeAttempt) {
			ports := map[string]bool{}
			for _, a := range atts {
				assert.Equal(t, topo.Backends[1].Name, a.Reply)
				assert.Equal(t, b1.String(), a.From)
				ports[a.Local] = true
			}
			assert.Len(t, ports, 3, "a fresh socket per attempt")
		}},
		{"udp long-lived fixed port", ProbeSpec{Op: ProbeUDP, Targets: []netip.AddrPort{b1}, Count: 3, LongLived: true, LocalPort: 12345}, func(t *testing.T, atts []ProbeAttempt) {
			for _, a := range atts {
				assert.Equal(t, "0.0.0.0:12345", a.Local)
				assert.Equal(t, topo.Backends[1].Name, a.Reply)
			}
		}},
		{"udp connected refused", ProbeSpec{Op: ProbeUDPConnected, Targets: []netip.AddrPort{closed}, Count: 1}, func(t *testing.T, atts []ProbeAttempt) {
			assert.Equal(t, "ECONNREFUSED", atts[0].Errno)
			assert.Equal(t, closed.String(), atts[0].Peer)
		}},
		{"udp resend", ProbeSpec{Op: ProbeUDP, Targets: []netip.AddrPort{sink}, Count: 1, Timeout: 300 * time.Millisecond, Resend: 100 * time.Millisecond}, func(t *testing.T, atts []ProbeAttempt) {
			assert.Equal(t, ErrnoTimeout, atts[0].Errno)
			assert.GreaterOrEqual(t, atts[0].Sends, 2)
		}},
		{"udp reconnect", ProbeSpec{Op: ProbeUDPReconnect, Targets: []netip.AddrPort{b0}, Second: b1, Count: 2}, func(t *testing.T, atts []ProbeAttempt) {
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
			atts, err := RunProbeProcess(context.Background(), topo.Clients[0].NS, topo.ClientCgroup, tt.spec)
			require.NoError(t, err)
			require.NotEmpty(t, atts)
			tt.check(t, atts)
		})
	}
}

// A subset of the conformance matrix on four datapaths that fits in well
// under a minute: the files are written, every cell has a status, and
// cells whose outcome is known hold.
func TestPrivilegedConformSubset(t *testing.T) {
	requireRoot(t)
	var list []*scenarios.Conformance
	for _, n := range []string{"tcp-spread", "no-endpoints-tcp", "getpeername-tcp", "non-service-address",
		"udp-connected-reply-source", "multi-port", "terminating-fallback", "endpoint-removed-added", "hairpin"} {
		c, err := scenarios.LoadConformance(n)
		require.NoError(t, err)
		list = append(list, c)
	}
	out := t.TempDir()
	run, dir, err := Conform(context.Background(), ConformConfig{Scenarios: list,
		Datapaths: []string{"socketlb", "iptables", "nftables", "direct"}, OutputDir: out, Log: io.Discard})
	require.NoError(t, err)
	prefix := "svclab-" + run.ID[strings.LastIndex(run.ID, "-")+1:]
	assert.Empty(t, leftovers(t, prefix), "conform must remove every topology it built")

	b, err := os.ReadFile(filepath.Join(dir, "conformance.json"))
	require.NoError(t, err)
	var back ConformRun
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
		assert.Contains(t, []string{CellPass, CellFail, CellSkip, CellError}, c.Status)
		assert.False(t, strings.HasPrefix(c.Summary, "harness:"), "%s × %s: %s", c.Scenario, c.Datapath, c.Summary)
	}
	// Known outcomes: kube-proxy's REJECT answers a SYN to a service
	// without endpoints with an ICMP port unreachable (ECONNREFUSED); the
	// direct baseline reaches every endpoint and has no address for a
	// service without endpoints; a pod's own address is untouched by
	// every datapath.
	known := []struct{ scenario, dp, status string }{
		{"no-endpoints-tcp", "iptables", CellPass},
		{"no-endpoints-tcp", "nftables", CellPass},
		{"tcp-spread", "direct", CellPass},
		{"tcp-spread", "iptables", CellPass},
		{"no-endpoints-tcp", "direct", CellSkip},
		{"non-service-address", "socketlb", CellPass},
		{"non-service-address", "iptables", CellPass},
		{"non-service-address", "nftables", CellPass},
		{"getpeername-tcp", "iptables", CellPass},
		{"multi-port", "iptables", CellPass},
		{"multi-port", "direct", CellPass},
		{"terminating-fallback", "iptables", CellPass},
		{"endpoint-removed-added", "iptables", CellPass},
		{"hairpin", "direct", CellPass},
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

// --strict counts failures and errors of requirements, not of advisory
// scenarios, and never skips.
func TestFailingIgnoresAdvisory(t *testing.T) {
	run := &ConformRun{
		Scenarios: []ConformScenario{{Name: "req"}, {Name: "adv", Advisory: "structural"}, {Name: "other"}},
		Cells: []ConformCell{
			{Scenario: "req", Datapath: "a", Status: CellFail},
			{Scenario: "adv", Datapath: "a", Status: CellFail},
			{Scenario: "other", Datapath: "a", Status: CellSkip},
			{Scenario: "other", Datapath: "b", Status: CellError},
		}}
	got := run.Failing("a")
	require.Len(t, got, 1)
	assert.Equal(t, "req", got[0].Scenario)
	assert.Len(t, run.Failing("b"), 1, "an error counts")
}
