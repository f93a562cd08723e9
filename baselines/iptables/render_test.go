package iptables

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
	"svclab/baselines/internal/twin6"
	"svclab/datapath"
)

// TestRenderGolden pins the exact restore text, so any change to the rule
// shape shows up as a reviewable diff of the golden files.
func TestRenderGolden(t *testing.T) {
	baselinetest.CheckGoldenCases(t, func(st datapath.State, prev chainSet) ([]byte, chainSet, error) {
		r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, prev)
		return r.text, r.chains, err
	})

	// The IPv6 ruleset (ip6tables-restore input) of the same cases.
	baselinetest.CheckGoldenCases6(t, func(st datapath.State, prev chainSet) ([]byte, chainSet, error) {
		r, err := renderSync(kubeproxy.IPv6, baselinetest.PodCIDR6, st, prev)
		return r.text, r.chains, err
	})

	t.Run("setup", func(t *testing.T) {
		baselinetest.CheckGolden(t, "setup", renderSetup())
	})
	t.Run("affinity_clientip", func(t *testing.T) {
		r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, affinityState(), nil)
		require.NoError(t, err)
		baselinetest.CheckGolden(t, "affinity_clientip", r.text)
	})
	t.Run("ipv6_affinity_clientip", func(t *testing.T) {
		r, err := renderSync(kubeproxy.IPv6, baselinetest.PodCIDR6, twin6.State(affinityState()), nil)
		require.NoError(t, err)
		baselinetest.CheckGolden(t, "ipv6_affinity_clientip", r.text)
	})
	t.Run("teardown", func(t *testing.T) {
		first, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, baselinetest.TwoServices(), nil)
		require.NoError(t, err)
		baselinetest.CheckGolden(t, "teardown", renderTeardown(first.chains))
	})
}

// affinityState is a three-endpoint web service with ClientIP affinity and
// a 10-minute timeout, next to the multi-port DNS service without, so the
// golden file shows that affinity rules are per service.
func affinityState() datapath.State {
	web := baselinetest.WebService(3)
	web.SessionAffinity = datapath.SessionAffinityClientIP
	web.AffinityTimeout = 10 * time.Minute
	return datapath.State{Services: []datapath.Service{web, baselinetest.DNSService()}}
}

// TestAffinityRules checks the ClientIP shape independent of the golden
// text: one recent-check per endpoint before the cascade, each naming its
// own SEP chain, and a recent-set on every DNAT; nothing for None.
func TestAffinityRules(t *testing.T) {
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, affinityState(), nil)
	require.NoError(t, err)
	var checks, sets, cascadeBeforeCheck int
	seenCascade := false
	for _, line := range strings.Split(string(r.text), "\n") {
		f := splitArgs(t, line)
		if len(f) < 2 || f[0] != "-A" {
			continue
		}
		switch {
		case strings.Contains(line, "--rcheck"):
			checks++
			assert.Contains(t, line, "--seconds 600 --reap")
			assert.Equal(t, f[len(f)-1], f[slicesIndex(f, "--name")+1], "rcheck list is the jump target: %s", line)
			if seenCascade {
				cascadeBeforeCheck++
			}
		case strings.Contains(line, "--set"):
			sets++
			assert.Equal(t, f[1], f[slicesIndex(f, "--name")+1], "set list is the SEP chain itself: %s", line)
			assert.Contains(t, line, "-j DNAT")
		case strings.HasPrefix(f[1], prefixSVC) && strings.Contains(line, "-j "+prefixSEP):
			seenCascade = true
		}
	}
	assert.Equal(t, 3, checks, "one rcheck per web endpoint, none for dns")
	assert.Equal(t, 3, sets, "one set per web endpoint, none for dns")
	assert.Zero(t, cascadeBeforeCheck, "affinity checks come before the statistic cascade")
}

func slicesIndex(f []string, s string) int {
	for i, v := range f {
		if v == s {
			return i
		}
	}
	return -1
}

// TestSecondApplyDeletesOnlyStaleChains checks the -X bookkeeping directly,
// independent of the golden text.
func TestSecondApplyDeletesOnlyStaleChains(t *testing.T) {
	first, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, baselinetest.TwoServices(), nil)
	require.NoError(t, err)
	second, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{baselinetest.WebService(3)}}, first.chains)
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
			svc:  datapath.Service{Namespace: "a", Name: "b", ClusterIP: netip.MustParseAddr("fd00::1"), Ports: []datapath.ServicePort{baselinetest.HTTPPort}},
			want: "is not IPv4",
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
			_, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{tt.svc}}, nil)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestRuleCount(t *testing.T) {
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{baselinetest.WebService(12)}}, nil)
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
	// rcheck marks an affinity rule (-m recent --rcheck): it matches only
	// a client its endpoint's list already holds.
	rcheck bool
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
				case "--rcheck":
					r.rcheck = true
				case "-m", "--comment", "--mode", "--or-mark", "--xor-mark", "--mark", "--name", "--seconds":
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

func (r ipRule) matches(p baselinetest.Packet) bool {
	if r.proto != "" && r.proto != p.Proto {
		return false
	}
	if r.dst.IsValid() && !r.dst.Contains(p.Dst) {
		return false
	}
	if r.src.IsValid() && r.src.Contains(p.Src) == r.negSrc {
		return false
	}
	return r.dport == 0 || r.dport == p.DPort
}

// trace walks chain with the share w of all packets reaching it and returns
// the share that falls off its end, recording in out where the rest ends
// up: "DNAT ip:port" or "REJECT". A statistic rule splits the share: q of
// it takes the target, the rest continues down the chain.
func trace(tab map[string][]ipRule, chain string, p baselinetest.Packet, w float64, masq bool, out *baselinetest.Flow) float64 {
	for _, r := range tab[chain] {
		if w == 0 {
			break
		}
		if !r.matches(p) || r.rcheck {
			// A traced packet is a client's first: no affinity list
			// holds it yet.
			continue
		}
		taken := w * r.prob
		switch {
		case r.target == "DNAT":
			v := "DNAT " + r.toDest
			out.Prob[v] += taken
			out.Masq[v] = out.Masq[v] || masq
			w -= taken
		case r.target == "REJECT":
			out.Prob["REJECT"] += taken
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
	sticky := baselinetest.WebService(3)
	sticky.Name, sticky.ClusterIP = "sticky", netip.MustParseAddr("10.96.0.30")
	sticky.SessionAffinity = datapath.SessionAffinityClientIP
	st := datapath.State{Services: []datapath.Service{baselinetest.WebService(12), baselinetest.DNSService(), baselinetest.EmptyService(), sticky}}
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, nil)
	require.NoError(t, err)
	rules := parseRuleset(t, renderSetup(), r.text)

	vip := netip.MustParseAddr("10.96.0.10")
	var all12 []string
	for _, ep := range baselinetest.Endpoints(1, 12) {
		all12 = append(all12, "DNAT "+ep.Addr.String()+":8080")
	}
	pod := netip.MustParseAddr("10.244.9.9")
	node := netip.MustParseAddr("192.168.0.1")
	backend1 := netip.MustParseAddr("10.244.1.1")

	tests := []struct {
		name  string
		table string
		hook  string
		pkt   baselinetest.Packet
		want  []string // verdicts, each with equal probability
		masq  func(verdict string) bool
	}{
		{
			name: "pod to VIP reaches all 12 evenly, no masquerade", table: tableNAT, hook: "PREROUTING",
			pkt: baselinetest.NewPacket("tcp", pod, vip, 80), want: all12,
			masq: func(string) bool { return false },
		},
		{
			name: "node to VIP is masqueraded (source outside the pod CIDR)", table: tableNAT, hook: "OUTPUT",
			pkt: baselinetest.NewPacket("tcp", node, vip, 80), want: all12,
			masq: func(string) bool { return true },
		},
		{
			name: "hairpin: only the path back to the sender is masqueraded", table: tableNAT, hook: "PREROUTING",
			pkt: baselinetest.NewPacket("tcp", backend1, vip, 80), want: all12,
			masq: func(v string) bool { return v == "DNAT 10.244.1.1:8080" },
		},
		{
			name: "UDP to a TCP-only port is not translated", table: tableNAT, hook: "PREROUTING",
			pkt: baselinetest.NewPacket("udp", pod, vip, 80),
		},
		{
			name: "TCP to another port is not translated", table: tableNAT, hook: "PREROUTING",
			pkt: baselinetest.NewPacket("tcp", pod, vip, 81),
		},
		{
			name: "UDP port of a multi-port service", table: tableNAT, hook: "PREROUTING",
			pkt:  baselinetest.NewPacket("udp", pod, netip.MustParseAddr("10.96.0.53"), 53),
			want: []string{"DNAT 10.244.2.1:5353", "DNAT 10.244.2.2:5353"},
			masq: func(string) bool { return false },
		},
		{
			name: "service without endpoints is rejected in filter", table: tableFilter, hook: "OUTPUT",
			pkt: baselinetest.NewPacket("tcp", pod, netip.MustParseAddr("10.96.0.20"), 80), want: []string{"REJECT"},
			masq: func(string) bool { return false },
		},
		{
			// The affinity checks come first but hold no one yet, so a
			// new client falls through to the cascade.
			name: "ClientIP affinity: a new client is spread evenly", table: tableNAT, hook: "PREROUTING",
			pkt:  baselinetest.NewPacket("tcp", pod, netip.MustParseAddr("10.96.0.30"), 80),
			want: []string{"DNAT 10.244.1.1:8080", "DNAT 10.244.1.2:8080", "DNAT 10.244.1.3:8080"},
			masq: func(string) bool { return false },
		},
		{
			name: "service without endpoints is not translated in nat", table: tableNAT, hook: "PREROUTING",
			pkt: baselinetest.NewPacket("tcp", pod, netip.MustParseAddr("10.96.0.20"), 80),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := baselinetest.NewFlow()
			rest := trace(rules[tt.table], tt.hook, tt.pkt, 1, false, out)
			baselinetest.CheckFlow(t, out, rest, tt.want, tt.masq)
		})
	}
}

// TestTerminatingFallback: with no ready endpoint, serving terminating ones
// still receive connections (ReadyEndpoints); not-serving ones never do.
func TestTerminatingFallback(t *testing.T) {
	svc := baselinetest.DrainingWebService()
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{svc}}, nil)
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
	got := kubeproxy.FailedLines(errLine, input, "iptables-restore v1.8.9 (legacy): Couldn't load target `NOPE'\n\nError occurred at line: 3\n")
	assert.Contains(t, got, "> 3: -A A -j NOPE")
	assert.Empty(t, kubeproxy.FailedLines(errLine, input, "no line number here"))
}
