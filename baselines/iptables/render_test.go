package iptables

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current renderer")

var testPodCIDR = netip.MustParsePrefix("10.244.0.0/16")

// endpoints returns n ready endpoints 10.244.<subnet>.1 … .n.
func endpoints(subnet, n int) []datapath.Endpoint {
	eps := make([]datapath.Endpoint, n)
	for i := range eps {
		eps[i] = datapath.Endpoint{
			Pod:     fmt.Sprintf("backend-%d-%d", subnet, i),
			Addr:    netip.AddrFrom4([4]byte{10, 244, byte(subnet), byte(i + 1)}),
			Ready:   true,
			Serving: true,
		}
	}
	return eps
}

var (
	httpPort = datapath.ServicePort{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}
	dnsTCP   = datapath.ServicePort{Name: "dns-tcp", Protocol: datapath.TCP, Port: 53, TargetPort: 5353}
	dnsUDP   = datapath.ServicePort{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353}
)

func webService(n int) datapath.Service {
	return datapath.Service{
		Namespace: "bench", Name: "web",
		ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []datapath.ServicePort{httpPort},
		Endpoints: endpoints(1, n),
	}
}

func dnsService() datapath.Service {
	return datapath.Service{
		Namespace: "kube-system", Name: "dns",
		ClusterIP: netip.MustParseAddr("10.96.0.53"),
		Ports:     []datapath.ServicePort{dnsTCP, dnsUDP},
		Endpoints: endpoints(2, 2),
	}
}

func emptyService() datapath.Service {
	return datapath.Service{
		Namespace: "bench", Name: "empty",
		ClusterIP: netip.MustParseAddr("10.96.0.20"),
		Ports:     []datapath.ServicePort{httpPort},
	}
}

// checkGolden compares got with testdata/<name>.golden, or rewrites the
// file under -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "read golden file (run go test -update to create it)")
	assert.Equal(t, string(want), string(got), "rendered ruleset differs from %s (go test -update rewrites it)", path)
}

// TestRenderGolden pins the exact restore text, so any change to the rule
// shape shows up as a reviewable diff of the golden files.
func TestRenderGolden(t *testing.T) {
	twoServices := datapath.State{Services: []datapath.Service{webService(3), dnsService()}}
	first, err := renderSync(testPodCIDR, twoServices, nil)
	require.NoError(t, err)

	tests := []struct {
		name  string
		state datapath.State
		prev  chainSet
	}{
		{name: "one_service_12_endpoints", state: datapath.State{Services: []datapath.Service{webService(12)}}},
		{name: "no_endpoints", state: datapath.State{Services: []datapath.Service{emptyService()}}},
		{name: "two_services_multiport", state: twoServices},
		// The second sync drops kube-system/dns: its SVC and SEP chains
		// must be flushed and deleted in the same transaction.
		{name: "second_apply_drops_service", state: datapath.State{Services: []datapath.Service{webService(3)}}, prev: first.chains},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := renderSync(testPodCIDR, tt.state, tt.prev)
			require.NoError(t, err)
			checkGolden(t, tt.name, r.text)
		})
	}

	t.Run("setup", func(t *testing.T) {
		checkGolden(t, "setup", renderSetup())
	})
	t.Run("teardown", func(t *testing.T) {
		checkGolden(t, "teardown", renderTeardown(first.chains))
	})
}

// TestSecondApplyDeletesOnlyStaleChains checks the -X bookkeeping directly,
// independent of the golden text.
func TestSecondApplyDeletesOnlyStaleChains(t *testing.T) {
	first, err := renderSync(testPodCIDR, datapath.State{Services: []datapath.Service{webService(3), dnsService()}}, nil)
	require.NoError(t, err)
	second, err := renderSync(testPodCIDR, datapath.State{Services: []datapath.Service{webService(3)}}, first.chains)
	require.NoError(t, err)

	deleted := map[string]bool{}
	for _, line := range strings.Split(string(second.text), "\n") {
		if ch, ok := strings.CutPrefix(line, "-X "); ok {
			deleted[ch] = true
		}
	}
	for ch := range first.chains[tableNAT] {
		assert.Equal(t, !second.chains[tableNAT][ch], deleted[ch], "chain %s: deleted iff no longer used", ch)
	}
	// dns has two ports with two endpoints each: 2 SVC + 4 SEP chains.
	assert.Len(t, deleted, 6)
}

// TestChainNamesMatchKubeProxy uses chain names that appear in kube-proxy's
// published test expectations, so the hashing is checked against the real
// thing and not only against itself.
func TestChainNamesMatchKubeProxy(t *testing.T) {
	assert.Equal(t, "KUBE-SVC-XPGD46QRK7WJZT7O", svcChainName("ns1/svc1:p80", "tcp"))
	assert.Equal(t, "KUBE-SEP-SXIVWICOYRO3J4NJ", sepChainName("ns1/svc1:p80", "tcp", "10.180.0.1:80"))
	// Protocol is part of the hash: TCP and UDP on one port must not share.
	assert.NotEqual(t, svcChainName("ns1/svc1:p80", "tcp"), svcChainName("ns1/svc1:p80", "udp"))
}

func TestRenderRejects(t *testing.T) {
	tests := []struct {
		name string
		svc  datapath.Service
		want string
	}{
		{
			name: "IPv6 cluster IP",
			svc:  datapath.Service{Namespace: "a", Name: "b", ClusterIP: netip.MustParseAddr("fd00::1"), Ports: []datapath.ServicePort{httpPort}},
			want: "IPv4 only",
		},
		{
			name: "SCTP port",
			svc: datapath.Service{Namespace: "a", Name: "b", ClusterIP: netip.MustParseAddr("10.96.0.1"),
				Ports: []datapath.ServicePort{{Name: "s", Protocol: "SCTP", Port: 9, TargetPort: 9}}},
			want: "not supported",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderSync(testPodCIDR, datapath.State{Services: []datapath.Service{tt.svc}}, nil)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestRuleCount(t *testing.T) {
	r, err := renderSync(testPodCIDR, datapath.State{Services: []datapath.Service{webService(12)}}, nil)
	require.NoError(t, err)
	// 4 fixed (MARK-MASQ 1, POSTROUTING 3) + 1 KUBE-SERVICES + 1 masq +
	// 12 cascade + 2×12 SEP = 42.
	assert.Equal(t, 42, r.rules)
}

// ---- packet-flow tracing over the rendered text ----

// ipRule is one parsed rule: its matches and target.
type ipRule struct {
	proto, target, toDest string
	dst, src              netip.Prefix
	negSrc                bool
	dport                 int
	prob                  float64 // 1 when there is no statistic match
}

// parseRuleset reads restore text into table → chain → rules, honouring
// -A (append) and -I (insert at the head) as iptables-restore does.
func parseRuleset(t *testing.T, texts ...[]byte) map[string]map[string][]ipRule {
	t.Helper()
	tables := map[string]map[string][]ipRule{}
	var table string
	for _, text := range texts {
		for _, line := range strings.Split(string(text), "\n") {
			switch {
			case strings.HasPrefix(line, "*"):
				table = line[1:]
				if tables[table] == nil {
					tables[table] = map[string][]ipRule{}
				}
				continue
			case !strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-I "):
				continue
			}
			f := splitArgs(t, line)
			r := ipRule{prob: 1}
			for i := 2; i < len(f); i++ {
				next := func() string { i++; require.Less(t, i, len(f), "line %q", line); return f[i] }
				switch f[i] {
				case "-p":
					r.proto = next()
				case "-d":
					r.dst = netip.MustParsePrefix(next())
				case "!":
					switch neg := next(); neg {
					case "-s":
						r.negSrc = true
						r.src = netip.MustParsePrefix(next())
					case "--mark":
						next() // only in KUBE-POSTROUTING, which no trace enters
					default:
						t.Fatalf("unexpected negation ! %s in %q", neg, line)
					}
				case "-s":
					r.src = netip.MustParsePrefix(next())
				case "--dport":
					p, err := strconv.Atoi(next())
					require.NoError(t, err)
					r.dport = p
				case "--probability":
					p, err := strconv.ParseFloat(next(), 64)
					require.NoError(t, err)
					r.prob = p
				case "-j":
					r.target = next()
				case "--to-destination":
					r.toDest = next()
				case "-m", "--comment", "--mode", "--or-mark", "--xor-mark", "--mark":
					next()
				}
			}
			chain := tables[table]
			if f[0] == "-I" {
				chain[f[1]] = append([]ipRule{r}, chain[f[1]]...)
			} else {
				chain[f[1]] = append(chain[f[1]], r)
			}
		}
	}
	return tables
}

// splitArgs splits a rule line like a shell would for the quoting
// iptables-restore accepts (double quotes around comments).
func splitArgs(t *testing.T, line string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, c := range line {
		switch {
		case c == '"':
			inQuote, have = !inQuote, true
		case c == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(c)
			have = true
		}
	}
	require.False(t, inQuote, "unbalanced quote in %q", line)
	if have {
		out = append(out, cur.String())
	}
	return out
}

type packet struct {
	proto string
	src   netip.Addr
	dst   netip.Addr
	dport int
}

func (r ipRule) matches(p packet) bool {
	if r.proto != "" && r.proto != p.proto {
		return false
	}
	if r.dst.IsValid() && !r.dst.Contains(p.dst) {
		return false
	}
	if r.src.IsValid() && r.src.Contains(p.src) == r.negSrc {
		return false
	}
	return r.dport == 0 || r.dport == p.dport
}

// flow is where a packet ends up: verdict ("DNAT ip:port", "REJECT") →
// probability, and whether that path marked it for masquerade.
type flow struct {
	prob map[string]float64
	masq map[string]bool
}

// trace walks chain with the share w of all packets reaching it and returns
// the share that falls off its end. A statistic rule splits the share: q of
// it takes the target, the rest continues down the chain.
func trace(tab map[string][]ipRule, chain string, p packet, w float64, masq bool, out *flow) float64 {
	for _, r := range tab[chain] {
		if w == 0 {
			break
		}
		if !r.matches(p) {
			continue
		}
		taken := w * r.prob
		switch {
		case r.target == "DNAT":
			v := "DNAT " + r.toDest
			out.prob[v] += taken
			out.masq[v] = out.masq[v] || masq
			w -= taken
		case r.target == "REJECT":
			out.prob["REJECT"] += taken
			w -= taken
		case r.target == chainMarkMasq:
			// The mark chain never terminates; every later verdict on
			// this path is masqueraded.
			masq = true
		case tab[r.target] != nil:
			w = w - taken + trace(tab, r.target, p, taken, masq, out)
		}
	}
	return w
}

// TestPacketFlow traces packets through the rendered rules from the
// built-in chains, like kube-proxy's packet-flow tests: which backends a
// packet can reach, with which probability, and whether it is masqueraded.
func TestPacketFlow(t *testing.T) {
	st := datapath.State{Services: []datapath.Service{webService(12), dnsService(), emptyService()}}
	r, err := renderSync(testPodCIDR, st, nil)
	require.NoError(t, err)
	rules := parseRuleset(t, renderSetup(), r.text)

	vip := netip.MustParseAddr("10.96.0.10")
	var all12 []string
	for _, ep := range endpoints(1, 12) {
		all12 = append(all12, "DNAT "+ep.Addr.String()+":8080")
	}
	pod := netip.MustParseAddr("10.244.9.9")
	node := netip.MustParseAddr("192.168.0.1")
	backend1 := netip.MustParseAddr("10.244.1.1")

	tests := []struct {
		name  string
		table string
		hook  string
		pkt   packet
		want  []string // verdicts, each with equal probability
		masq  func(verdict string) bool
	}{
		{
			name: "pod to VIP reaches all 12 evenly, no masquerade", table: tableNAT, hook: "PREROUTING",
			pkt: packet{"tcp", pod, vip, 80}, want: all12,
			masq: func(string) bool { return false },
		},
		{
			name: "node to VIP is masqueraded (source outside the pod CIDR)", table: tableNAT, hook: "OUTPUT",
			pkt: packet{"tcp", node, vip, 80}, want: all12,
			masq: func(string) bool { return true },
		},
		{
			name: "hairpin: only the path back to the sender is masqueraded", table: tableNAT, hook: "PREROUTING",
			pkt: packet{"tcp", backend1, vip, 80}, want: all12,
			masq: func(v string) bool { return v == "DNAT 10.244.1.1:8080" },
		},
		{
			name: "UDP to a TCP-only port is not translated", table: tableNAT, hook: "PREROUTING",
			pkt: packet{"udp", pod, vip, 80},
		},
		{
			name: "TCP to another port is not translated", table: tableNAT, hook: "PREROUTING",
			pkt: packet{"tcp", pod, vip, 81},
		},
		{
			name: "UDP port of a multi-port service", table: tableNAT, hook: "PREROUTING",
			pkt:  packet{"udp", pod, netip.MustParseAddr("10.96.0.53"), 53},
			want: []string{"DNAT 10.244.2.1:5353", "DNAT 10.244.2.2:5353"},
			masq: func(string) bool { return false },
		},
		{
			name: "service without endpoints is rejected in filter", table: tableFilter, hook: "OUTPUT",
			pkt: packet{"tcp", pod, netip.MustParseAddr("10.96.0.20"), 80}, want: []string{"REJECT"},
			masq: func(string) bool { return false },
		},
		{
			name: "service without endpoints is not translated in nat", table: tableNAT, hook: "PREROUTING",
			pkt: packet{"tcp", pod, netip.MustParseAddr("10.96.0.20"), 80},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := flow{prob: map[string]float64{}, masq: map[string]bool{}}
			rest := trace(rules[tt.table], tt.hook, tt.pkt, 1, false, &out)
			got := make([]string, 0, len(out.prob))
			for v := range out.prob {
				got = append(got, v)
			}
			assert.ElementsMatch(t, tt.want, got, "verdicts reachable")
			for _, v := range tt.want {
				assert.InDelta(t, 1/float64(len(tt.want)), out.prob[v], 1e-9, "share of %s", v)
				assert.Equal(t, tt.masq(v), out.masq[v], "masquerade on the path to %s", v)
			}
			if len(tt.want) > 0 {
				assert.InDelta(t, 0, rest, 1e-9, "no packet may fall through a service with verdicts")
			} else {
				assert.InDelta(t, 1, rest, 1e-9, "untranslated packets fall through")
			}
		})
	}
}

// TestTerminatingFallback: with no ready endpoint, serving terminating ones
// still receive connections (ReadyEndpoints); not-serving ones never do.
func TestTerminatingFallback(t *testing.T) {
	svc := webService(3)
	for i := range svc.Endpoints {
		svc.Endpoints[i].Ready = false
		svc.Endpoints[i].Terminating = true
	}
	svc.Endpoints[2].Serving = false
	r, err := renderSync(testPodCIDR, datapath.State{Services: []datapath.Service{svc}}, nil)
	require.NoError(t, err)
	text := string(r.text)
	assert.Contains(t, text, "--to-destination 10.244.1.1:8080")
	assert.Contains(t, text, "--to-destination 10.244.1.2:8080")
	assert.NotContains(t, text, "10.244.1.3")
	assert.NotContains(t, text, "REJECT")
}

func TestProbability(t *testing.T) {
	// The cascade's values for 12 endpoints, as listed in the notes.
	want := []string{"0.0833333333", "0.0909090909", "0.1000000000", "0.1111111111", "0.1250000000", "0.1428571429",
		"0.1666666667", "0.2000000000", "0.2500000000", "0.3333333333", "0.5000000000"}
	for i, w := range want {
		assert.Equal(t, w, probability(12-i))
	}
}

func TestFailedLines(t *testing.T) {
	input := []byte("*nat\n:A - [0:0]\n-A A -j NOPE\nCOMMIT\n")
	got := failedLines(input, "iptables-restore v1.8.9 (legacy): Couldn't load target `NOPE'\n\nError occurred at line: 3\n")
	assert.Contains(t, got, "> 3: -A A -j NOPE")
	assert.Empty(t, failedLines(input, "no line number here"))
}
