package nftables

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
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

// TestRenderGolden pins the exact nft text, so any change to the rule shape
// shows up as a reviewable diff of the golden files.
func TestRenderGolden(t *testing.T) {
	baselinetest.CheckGoldenCases(t, func(st datapath.State, prev map[string]bool) ([]byte, map[string]bool, error) {
		r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, prev)
		return r.text, r.chains, err
	})
	// The ip6 table of the same cases, the setup and the affinity sets.
	baselinetest.CheckGoldenCases6(t, func(st datapath.State, prev map[string]bool) ([]byte, map[string]bool, error) {
		r, err := renderSync(kubeproxy.IPv6, baselinetest.PodCIDR6, st, prev)
		return r.text, r.chains, err
	})
	t.Run("ipv6_setup", func(t *testing.T) { baselinetest.CheckGolden(t, "ipv6_setup", renderSetup(kubeproxy.IPv6)) })
	t.Run("ipv6_affinity_clientip", func(t *testing.T) {
		r, err := renderSync(kubeproxy.IPv6, baselinetest.PodCIDR6, twin6.State(affinityState()), nil)
		require.NoError(t, err)
		baselinetest.CheckGolden(t, "ipv6_affinity_clientip", r.text)
	})
	t.Run("setup", func(t *testing.T) { baselinetest.CheckGolden(t, "setup", renderSetup(kubeproxy.IPv4)) })
	t.Run("teardown", func(t *testing.T) { baselinetest.CheckGolden(t, "teardown", renderTeardown(kubeproxy.IPv4)) })
	t.Run("affinity_clientip", func(t *testing.T) {
		r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, affinityState(), nil)
		require.NoError(t, err)
		baselinetest.CheckGolden(t, "affinity_clientip", r.text)
	})
	t.Run("affinity_dropped", func(t *testing.T) {
		// Turning affinity off deletes the sets in the same transaction.
		first, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, affinityState(), nil)
		require.NoError(t, err)
		r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{baselinetest.WebService(3), baselinetest.DNSService()}}, first.chains)
		require.NoError(t, err)
		baselinetest.CheckGolden(t, "affinity_dropped", r.text)
	})
}

// affinityState is a three-endpoint web service with ClientIP affinity and
// a 10-minute timeout, next to the DNS service without, so the golden file
// shows that affinity is per service.
func affinityState() datapath.State {
	web := baselinetest.WebService(3)
	web.SessionAffinity = datapath.SessionAffinityClientIP
	web.AffinityTimeout = 10 * time.Minute
	return datapath.State{Services: []datapath.Service{web, baselinetest.DNSService()}}
}

// TestAffinityRules checks the ClientIP shape independent of the golden
// text: per endpoint a set, a lookup in the service chain before the
// numgen, and an update in the endpoint chain before the dnat.
func TestAffinityRules(t *testing.T) {
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, affinityState(), nil)
	require.NoError(t, err)
	text := string(r.text)
	var sets []string
	for ch := range r.chains {
		if strings.HasPrefix(ch, prefixAffinity) {
			sets = append(sets, ch)
		}
	}
	require.Len(t, sets, 3, "one set per web endpoint, none for dns")
	numgen := strings.Index(text, "numgen random mod 3")
	require.Positive(t, numgen)
	for _, set := range sets {
		assert.Contains(t, text, "set "+set+" {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 600s\n")
		lookup := strings.Index(text, "ip saddr @"+set+" goto endpoint-")
		assert.True(t, lookup > 0 && lookup < numgen, "lookup of %s before the numgen", set)
		assert.Contains(t, text, "update @"+set+" { ip saddr }\n\t\tmeta l4proto tcp dnat to")
	}
}

// TestSecondApplyDeletesOnlyStaleChains checks the delete bookkeeping
// directly, independent of the golden text, and through the model of what
// the kernel holds after both transactions.
func TestSecondApplyDeletesOnlyStaleChains(t *testing.T) {
	first, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, baselinetest.TwoServices(), nil)
	require.NoError(t, err)
	second, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{baselinetest.WebService(3)}}, first.chains)
	require.NoError(t, err)

	deleted := map[string]bool{}
	for _, line := range strings.Split(string(second.text), "\n") {
		if ch, ok := strings.CutPrefix(line, "delete chain ip svclab "); ok {
			deleted[ch] = true
		}
	}
	for ch := range first.chains {
		assert.Equal(t, !second.chains[ch], deleted[ch], "chain %s: deleted iff no longer used", ch)
	}
	// dns has two ports with two endpoints each: 2 service + 4 endpoint
	// chains.
	assert.Len(t, deleted, 6)

	m := parseNft(t, renderSetup(kubeproxy.IPv4), first.text, second.text)
	var left []string
	for ch := range m.chains {
		if strings.HasPrefix(ch, prefixService) || strings.HasPrefix(ch, prefixEndpoint) {
			left = append(left, ch)
		}
	}
	assert.ElementsMatch(t, sortedChains(second.chains), left, "per-service chains after both syncs")
	assert.Len(t, m.maps[mapServiceIPs], 1, "only web's element is left in service-ips")
	for ch := range m.chains {
		assert.NotContains(t, ch, "kube-system/dns")
	}
}

// TestChainNamesMatchKubeProxy uses chain-name bases that appear in
// kube-proxy's nftables sources, so the hashing is checked against the real
// thing and not only against itself.
func TestChainNamesMatchKubeProxy(t *testing.T) {
	svc := datapath.Service{Namespace: "ns1", Name: "svc1"}
	p80 := datapath.ServicePort{Name: "p80", Protocol: datapath.TCP, Port: 80, TargetPort: 80}
	assert.Equal(t, "service-ULMVA6XW-ns1/svc1/tcp/p80", serviceChainName(svc, p80, "tcp"))
	assert.Equal(t, "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
		endpointChainName(svc, p80, "tcp", netip.MustParseAddrPort("10.180.0.1:80")))
	// kube-proxy's IPv6 name (from its dual-stack test expectations): ':'
	// becomes '.'.
	assert.Equal(t, "endpoint-ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80",
		endpointChainName(svc, p80, "tcp", netip.MustParseAddrPort("[fd00:10:180::1]:80")))
	// Protocol is part of the name: TCP and UDP on one port must not
	// share a chain.
	assert.NotEqual(t, serviceChainName(svc, p80, "tcp"), serviceChainName(svc, p80, "udp"))
	// An unnamed port is named by its number.
	assert.Equal(t, "service-"+nameHash("ns1/svc1/udp/53")+"-ns1/svc1/udp/53",
		serviceChainName(svc, datapath.ServicePort{Protocol: datapath.UDP, Port: 53, TargetPort: 53}, "udp"))
	// An overlong name is cut to the kernel's limit and stays unique.
	long := strings.Repeat("a", 300)
	a, b := hashedChain(prefixService, long+"x"), hashedChain(prefixService, long+"y")
	assert.Len(t, a, maxChainName)
	assert.NotEqual(t, a, b)
}

func TestRenderRejects(t *testing.T) {
	ip := netip.MustParseAddr("10.96.0.1")
	tests := []struct {
		name string
		svcs []datapath.Service
		want string
	}{
		{
			name: "IPv6 cluster IP",
			svcs: []datapath.Service{{Namespace: "a", Name: "b", ClusterIP: netip.MustParseAddr("fd00::1"), Ports: []datapath.ServicePort{baselinetest.HTTPPort}}},
			want: "cluster IP fd00::1 is not IPv4",
		},
		{
			name: "IPv6 endpoint",
			svcs: []datapath.Service{{Namespace: "a", Name: "b", ClusterIP: ip, Ports: []datapath.ServicePort{baselinetest.HTTPPort},
				Endpoints: []datapath.Endpoint{{Addr: netip.MustParseAddr("fd00::2"), Ready: true}}}},
			want: "endpoint fd00::2 is not IPv4",
		},
		{
			name: "SCTP port",
			svcs: []datapath.Service{{Namespace: "a", Name: "b", ClusterIP: ip,
				Ports: []datapath.ServicePort{{Name: "s", Protocol: "SCTP", Port: 9, TargetPort: 9}}}},
			want: `protocol "SCTP" not supported`,
		},
		{
			name: "zero target port",
			svcs: []datapath.Service{{Namespace: "a", Name: "b", ClusterIP: ip,
				Ports: []datapath.ServicePort{{Name: "s", Protocol: datapath.TCP, Port: 9}}}},
			want: "must both be non-zero",
		},
		{
			name: "two services on one VIP and port",
			svcs: []datapath.Service{
				{Namespace: "a", Name: "b", ClusterIP: ip, Ports: []datapath.ServicePort{baselinetest.HTTPPort}},
				{Namespace: "a", Name: "c", ClusterIP: ip, Ports: []datapath.ServicePort{baselinetest.HTTPPort}},
			},
			want: "10.96.0.1:80 is already used by a/b/tcp/http",
		},
		{
			name: "two ports with one name",
			svcs: []datapath.Service{{Namespace: "a", Name: "b", ClusterIP: ip, Endpoints: baselinetest.Endpoints(1, 1), Ports: []datapath.ServicePort{
				baselinetest.HTTPPort, {Name: "http", Protocol: datapath.TCP, Port: 81, TargetPort: 8080},
			}}},
			want: "is rendered twice",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: tt.svcs}, nil)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestRuleCount(t *testing.T) {
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{baselinetest.WebService(12)}}, nil)
	require.NoError(t, err)
	// 6 base-chain jumps + 7 fixed (services 1, endpoints-check 1,
	// reject 1, mark 1, masquerading 3) + service chain 2 (masquerade
	// mark, numgen) + 12 endpoint chains × 2 = 39.
	assert.Equal(t, 39, r.rules)
	assert.Len(t, r.chains, 13, "1 service chain + 12 endpoint chains")
}

// ---- a model of the rendered ruleset, and packet-flow tracing over it ----

// hook names a base chain's place: "nat prerouting", "filter forward", ….
type nftModel struct {
	chains map[string][]string
	hooks  map[string]string
	maps   map[string]map[string]string // map → key → verdict
	sets   map[string]string            // affinity set → its timeout
}

var (
	reChainOpen = regexp.MustCompile(`^\tchain (\S+) \{$`)
	reMapOpen   = regexp.MustCompile(`^\tmap (\S+) \{$`)
	reSetOpen   = regexp.MustCompile(`^\tset (\S+) \{$`)
	reHookLine  = regexp.MustCompile(`^type (filter|nat) hook (\w+) priority -?\d+; policy accept;$`)
	reAddElems  = regexp.MustCompile(`^add element ip svclab (\S+) \{$`)
	reDelElems  = regexp.MustCompile(`^delete element ip svclab (\S+) \{$`)
	reElement   = regexp.MustCompile(`^\t(\S+ \. (?:tcp|udp) \. \d+)(?: comment "[^"]*")? : (goto \S+?),?$`)
	reElemKey   = regexp.MustCompile(`^\t(\S+ \. (?:tcp|udp) \. \d+),?$`)
	reAddSet    = regexp.MustCompile(`^add set ip svclab (\S+) \{ type ipv4_addr; flags dynamic,timeout; timeout (\d+s); \}$`)
	reAddRule   = regexp.MustCompile(`^add rule ip svclab (\S+) (.+)$`)
	reTimeout   = regexp.MustCompile(`^timeout (\d+s)$`)
	reChainRef  = regexp.MustCompile(`\b(?:jump|goto) ([^\s,}]+)`)
	reSetRef    = regexp.MustCompile(`@(\S+)`)
)

// checkRefs fails unless every chain and set that rule names exists in m.
func (m *nftModel) checkRefs(t *testing.T, chain, rule string) {
	t.Helper()
	for _, g := range reChainRef.FindAllStringSubmatch(rule, -1) {
		require.Contains(t, m.chains, g[1], "chain %s: rule %q names a chain that does not exist", chain, rule)
	}
	for _, g := range reSetRef.FindAllStringSubmatch(rule, -1) {
		_, isMap := m.maps[g[1]]
		_, isSet := m.sets[g[1]]
		require.True(t, isMap || isSet, "chain %s: rule %q names a set that does not exist", chain, rule)
	}
}

// referrers is every rule and map element that names obj.
func (m *nftModel) referrers(obj string) []string {
	var out []string
	for ch, rules := range m.chains {
		for _, r := range rules {
			for _, g := range reChainRef.FindAllStringSubmatch(r, -1) {
				if g[1] == obj {
					out = append(out, ch+": "+r)
				}
			}
			for _, g := range reSetRef.FindAllStringSubmatch(r, -1) {
				if g[1] == obj {
					out = append(out, ch+": "+r)
				}
			}
		}
	}
	for mp, elems := range m.maps {
		for k, v := range elems {
			if v == "goto "+obj {
				out = append(out, mp+"["+k+"]")
			}
		}
	}
	return out
}

// parseNft applies rendered transactions in order to a model of the table,
// with the semantics nft gives the commands the renderer writes, and checks
// that every reference is valid where the kernel checks it: a rule or
// element may name only chains and sets that exist, and a chain or set may
// be deleted only when nothing names it. Any line it does not know fails
// the test, so the model cannot silently drift from the renderer. An ip6
// table's text is read as the ip table it mirrors (the family words are
// swapped back), so one model checks both families' references; the
// addresses themselves stay IPv6.
func parseNft(t *testing.T, texts ...[]byte) *nftModel {
	t.Helper()
	m := &nftModel{chains: map[string][]string{}, hooks: map[string]string{}, maps: map[string]map[string]string{}, sets: map[string]string{}}
	asIPv4 := strings.NewReplacer(" ip6 svclab", " ip svclab", "ipv6_addr", "ipv4_addr", "ip6 saddr", "ip saddr", "ip6 daddr", "ip daddr")
	for _, text := range texts {
		text = []byte(asIPv4.Replace(string(text)))
		var chain, elemMap, delMap, set string
		inTable, inMap := false, false
		for _, line := range strings.Split(strings.TrimRight(string(text), "\n"), "\n") {
			switch {
			case elemMap != "":
				if line == "}" {
					elemMap = ""
					continue
				}
				e := reElement.FindStringSubmatch(line)
				require.NotNil(t, e, "element line %q", line)
				_, dup := m.maps[elemMap][e[1]]
				require.False(t, dup, "element %s added twice to %s", e[1], elemMap)
				require.Contains(t, m.chains, strings.TrimPrefix(e[2], "goto "), "element %s of %s names a chain that does not exist", e[1], elemMap)
				m.maps[elemMap][e[1]] = e[2]
			case delMap != "":
				if line == "}" {
					delMap = ""
					continue
				}
				e := reElemKey.FindStringSubmatch(line)
				require.NotNil(t, e, "element key line %q", line)
				require.Contains(t, m.maps[delMap], e[1], "delete of element %s that %s does not hold", e[1], delMap)
				delete(m.maps[delMap], e[1])
			case chain != "":
				if line == "\t}" {
					chain = ""
					continue
				}
				r := strings.TrimPrefix(line, "\t\t")
				if h := reHookLine.FindStringSubmatch(r); h != nil {
					m.hooks[h[1]+" "+h[2]] = chain
					continue
				}
				m.chains[chain] = append(m.chains[chain], r)
			case set != "":
				if line == "\t}" {
					set = ""
					continue
				}
				if g := reTimeout.FindStringSubmatch(strings.TrimPrefix(line, "\t\t")); g != nil {
					m.sets[set] = g[1]
				}
			case inMap:
				if line == "\t}" {
					inMap = false
				}
			case inTable:
				if line == "}" {
					inTable = false
					// Names inside one table block may refer forward:
					// nft resolves them once the block is read.
					for ch, rules := range m.chains {
						for _, r := range rules {
							m.checkRefs(t, ch, r)
						}
					}
				} else if c := reChainOpen.FindStringSubmatch(line); c != nil {
					chain = c[1]
					if m.chains[chain] == nil {
						m.chains[chain] = []string{}
					}
				} else if c := reMapOpen.FindStringSubmatch(line); c != nil {
					inMap = true
					if m.maps[c[1]] == nil {
						m.maps[c[1]] = map[string]string{}
					}
				} else if c := reSetOpen.FindStringSubmatch(line); c != nil {
					set = c[1]
					m.sets[set] = ""
				} else {
					t.Fatalf("unexpected line in table block: %q", line)
				}
			case line == "table ip svclab {":
				inTable = true
			case line == "add table ip svclab":
			case line == "delete table ip svclab":
				m.chains, m.hooks, m.maps, m.sets = map[string][]string{}, map[string]string{}, map[string]map[string]string{}, map[string]string{}
			case line == "flush table ip svclab":
				for ch := range m.chains {
					m.chains[ch] = []string{}
				}
			case strings.HasPrefix(line, "flush map ip svclab "):
				name := strings.TrimPrefix(line, "flush map ip svclab ")
				require.Contains(t, m.maps, name, "flush of a map that does not exist")
				m.maps[name] = map[string]string{}
			case strings.HasPrefix(line, "add chain ip svclab "):
				name := strings.TrimPrefix(line, "add chain ip svclab ")
				require.NotContains(t, m.chains, name, "add of chain %s that exists (the partial sync thinks it is new)", name)
				m.chains[name] = []string{}
			case strings.HasPrefix(line, "flush chain ip svclab "):
				name := strings.TrimPrefix(line, "flush chain ip svclab ")
				require.Contains(t, m.chains, name, "flush of a chain that does not exist")
				m.chains[name] = []string{}
			case strings.HasPrefix(line, "delete chain ip svclab "):
				name := strings.TrimPrefix(line, "delete chain ip svclab ")
				require.Contains(t, m.chains, name, "delete of a chain that does not exist")
				require.Empty(t, m.chains[name], "delete of chain %s that still has rules", name)
				require.Empty(t, m.referrers(name), "delete of chain %s that is still named", name)
				delete(m.chains, name)
			case strings.HasPrefix(line, "delete set ip svclab "):
				name := strings.TrimPrefix(line, "delete set ip svclab ")
				require.Contains(t, m.sets, name, "delete of a set that does not exist")
				require.Empty(t, m.referrers(name), "delete of set %s that is still named", name)
				delete(m.sets, name)
			default:
				if e := reAddElems.FindStringSubmatch(line); e != nil {
					require.Contains(t, m.maps, e[1], "elements for a map that does not exist")
					elemMap = e[1]
					continue
				}
				if e := reDelElems.FindStringSubmatch(line); e != nil {
					require.Contains(t, m.maps, e[1], "element deletion in a map that does not exist")
					delMap = e[1]
					continue
				}
				if s := reAddSet.FindStringSubmatch(line); s != nil {
					require.NotContains(t, m.sets, s[1], "add of set %s that exists", s[1])
					m.sets[s[1]] = s[2]
					continue
				}
				if r := reAddRule.FindStringSubmatch(line); r != nil {
					require.Contains(t, m.chains, r[1], "rule for a chain that does not exist")
					m.checkRefs(t, r[1], r[2])
					m.chains[r[1]] = append(m.chains[r[1]], r[2])
					continue
				}
				t.Fatalf("unexpected line: %q", line)
			}
		}
	}
	return m
}

var (
	reJump        = regexp.MustCompile(`^(?:ct state new )?jump (\S+)$`)
	reMapLookup   = regexp.MustCompile(`^ip daddr \. meta l4proto \. th dport vmap @(\S+)$`)
	reMasqService = regexp.MustCompile(`^ip daddr (\S+) (tcp|udp) dport (\d+) ip saddr != (\S+) jump mark-for-masquerade$`)
	reMasqHairpin = regexp.MustCompile(`^ip saddr (\S+) jump mark-for-masquerade$`)
	reNumgen      = regexp.MustCompile(`^numgen random mod (\d+) vmap \{ (.*) \}$`)
	reNumgenEntry = regexp.MustCompile(`^(\d+) : goto (\S+)$`)
	reDNAT        = regexp.MustCompile(`^meta l4proto (tcp|udp) dnat to (\S+)$`)
)

// numgenTargets parses a numgen rule into modulus and index → chain.
func numgenTargets(t *testing.T, rule string) (int, map[int]string) {
	t.Helper()
	g := reNumgen.FindStringSubmatch(rule)
	require.NotNil(t, g, "numgen rule %q", rule)
	n, err := strconv.Atoi(g[1])
	require.NoError(t, err)
	out := map[int]string{}
	for _, entry := range strings.Split(g[2], ", ") {
		e := reNumgenEntry.FindStringSubmatch(entry)
		require.NotNil(t, e, "numgen entry %q", entry)
		i, err := strconv.Atoi(e[1])
		require.NoError(t, err)
		_, dup := out[i]
		require.False(t, dup, "numgen index %d appears twice", i)
		out[i] = e[2]
	}
	return n, out
}

// trace walks chain with the share w of packets reaching it, records
// terminal verdicts ("dnat ip:port", "reject") in out and returns the share
// that falls off the chain's end (back to whoever jumped to it). goto ends
// the current chain: what falls off the target returns to the caller of
// the current chain.
func trace(t *testing.T, m *nftModel, chain string, p baselinetest.Packet, w float64, masq bool, out *baselinetest.Flow) float64 {
	t.Helper()
	rules, ok := m.chains[chain]
	require.True(t, ok, "chain %s does not exist", chain)
	for _, r := range rules {
		switch {
		case reJump.MatchString(r):
			target := reJump.FindStringSubmatch(r)[1]
			if target == chainMarkMasq {
				masq = true
				continue
			}
			w = trace(t, m, target, p, w, masq, out)
		case reMapLookup.MatchString(r):
			mp := reMapLookup.FindStringSubmatch(r)[1]
			v, ok := m.maps[mp][fmt.Sprintf("%s . %s . %d", p.Dst, p.Proto, p.DPort)]
			if !ok {
				continue
			}
			return trace(t, m, strings.TrimPrefix(v, "goto "), p, w, masq, out)
		case reMasqService.MatchString(r):
			g := reMasqService.FindStringSubmatch(r)
			if g[1] == p.Dst.String() && g[2] == p.Proto && g[3] == strconv.Itoa(p.DPort) &&
				!netip.MustParsePrefix(g[4]).Contains(p.Src) {
				masq = true
			}
		case reMasqHairpin.MatchString(r):
			if reMasqHairpin.FindStringSubmatch(r)[1] == p.Src.String() {
				masq = true
			}
		case reNumgen.MatchString(r):
			n, targets := numgenTargets(t, r)
			rest := 0.0
			for i := range n {
				target, ok := targets[i]
				require.True(t, ok, "numgen index %d has no target: its share would be dropped", i)
				rest += trace(t, m, target, p, w/float64(n), masq, out)
			}
			return rest
		case reDNAT.MatchString(r):
			g := reDNAT.FindStringSubmatch(r)
			if g[1] != p.Proto {
				continue
			}
			v := "dnat " + g[2]
			out.Prob[v] += w
			out.Masq[v] = out.Masq[v] || masq
			return 0
		case r == "reject":
			out.Prob["reject"] += w
			return 0
		default:
			t.Fatalf("chain %s: rule %q is not understood by the tracer", chain, r)
		}
	}
	return w
}

// TestNumgenCoversEveryEndpointOnce: the one load-balancing rule of a
// 12-endpoint service has modulus 12 and indexes 0…11, each exactly once,
// each to a different endpoint chain that DNATs to a different endpoint,
// so every endpoint gets 1/12 of the new connections.
func TestNumgenCoversEveryEndpointOnce(t *testing.T) {
	web := baselinetest.WebService(12)
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{web}}, nil)
	require.NoError(t, err)
	m := parseNft(t, renderSetup(kubeproxy.IPv4), r.text)

	svcChain := serviceChainName(web, baselinetest.HTTPPort, "tcp")
	var numgen []string
	for _, rule := range m.chains[svcChain] {
		if strings.HasPrefix(rule, "numgen ") {
			numgen = append(numgen, rule)
		}
	}
	require.Len(t, numgen, 1, "one numgen rule in %s", svcChain)
	n, targets := numgenTargets(t, numgen[0])
	assert.Equal(t, 12, n, "modulus")
	idx := make([]int, 0, len(targets))
	for i := range targets {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	assert.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, idx, "indexes")

	var dests []string
	for _, ch := range targets {
		rules := m.chains[ch]
		require.Len(t, rules, 2, "endpoint chain %s", ch)
		g := reDNAT.FindStringSubmatch(rules[1])
		require.NotNil(t, g, "last rule of %s is the DNAT", ch)
		dests = append(dests, g[2])
	}
	var want []string
	for _, ep := range web.Endpoints {
		want = append(want, ep.Addr.String()+":8080")
	}
	assert.ElementsMatch(t, want, dests, "each endpoint is the target of exactly one index")
}

// TestPacketFlow traces packets through the rendered rules from the base
// chains, like kube-proxy's packet-flow tests: which backends a packet can
// reach, with which probability, and whether it is masqueraded.
func TestPacketFlow(t *testing.T) {
	st := datapath.State{Services: []datapath.Service{baselinetest.WebService(12), baselinetest.DNSService(), baselinetest.EmptyService()}}
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, nil)
	require.NoError(t, err)
	m := parseNft(t, renderSetup(kubeproxy.IPv4), r.text)

	vip := netip.MustParseAddr("10.96.0.10")
	var all12 []string
	for _, ep := range baselinetest.Endpoints(1, 12) {
		all12 = append(all12, "dnat "+ep.Addr.String()+":8080")
	}
	pod := netip.MustParseAddr("10.244.9.9")
	node := netip.MustParseAddr("192.168.0.1")
	backend1 := netip.MustParseAddr("10.244.1.1")
	empty := netip.MustParseAddr("10.96.0.20")
	never := func(string) bool { return false }

	tests := []struct {
		name string
		hook string
		pkt  baselinetest.Packet
		want []string // verdicts, each with equal probability
		masq func(verdict string) bool
	}{
		{
			name: "pod to VIP reaches all 12 evenly, no masquerade", hook: "nat prerouting",
			pkt: baselinetest.NewPacket("tcp", pod, vip, 80), want: all12, masq: never,
		},
		{
			name: "node to VIP is masqueraded (source outside the pod CIDR)", hook: "nat output",
			pkt: baselinetest.NewPacket("tcp", node, vip, 80), want: all12,
			masq: func(string) bool { return true },
		},
		{
			name: "hairpin: only the path back to the sender is masqueraded", hook: "nat prerouting",
			pkt: baselinetest.NewPacket("tcp", backend1, vip, 80), want: all12,
			masq: func(v string) bool { return v == "dnat 10.244.1.1:8080" },
		},
		{name: "UDP to a TCP-only port is not translated", hook: "nat prerouting", pkt: baselinetest.NewPacket("udp", pod, vip, 80)},
		{name: "TCP to another port is not translated", hook: "nat prerouting", pkt: baselinetest.NewPacket("tcp", pod, vip, 81)},
		{
			name: "UDP port of a multi-port service", hook: "nat prerouting",
			pkt:  baselinetest.NewPacket("udp", pod, netip.MustParseAddr("10.96.0.53"), 53),
			want: []string{"dnat 10.244.2.1:5353", "dnat 10.244.2.2:5353"}, masq: never,
		},
		{
			name: "TCP port of a multi-port service", hook: "nat prerouting",
			pkt:  baselinetest.NewPacket("tcp", pod, netip.MustParseAddr("10.96.0.53"), 53),
			want: []string{"dnat 10.244.2.1:5353", "dnat 10.244.2.2:5353"}, masq: never,
		},
		{
			name: "pod to a service without endpoints is rejected in forward", hook: "filter forward",
			pkt: baselinetest.NewPacket("tcp", pod, empty, 80), want: []string{"reject"}, masq: never,
		},
		{
			name: "node to a service without endpoints is rejected in output", hook: "filter output",
			pkt: baselinetest.NewPacket("tcp", node, empty, 80), want: []string{"reject"}, masq: never,
		},
		{name: "a service without endpoints is not translated", hook: "nat prerouting", pkt: baselinetest.NewPacket("tcp", pod, empty, 80)},
		{name: "a service with endpoints is not rejected", hook: "filter forward", pkt: baselinetest.NewPacket("tcp", pod, vip, 80)},
		{name: "another port of a service without endpoints is not rejected", hook: "filter input", pkt: baselinetest.NewPacket("tcp", pod, empty, 81)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, ok := m.hooks[tt.hook]
			require.True(t, ok, "no base chain on %s", tt.hook)
			out := baselinetest.NewFlow()
			rest := trace(t, m, chain, tt.pkt, 1, false, out)
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
	assert.Contains(t, text, "dnat to 10.244.1.1:8080")
	assert.Contains(t, text, "dnat to 10.244.1.2:8080")
	assert.Contains(t, text, "numgen random mod 2 vmap")
	assert.NotContains(t, text, "10.244.1.3")
	assert.NotContains(t, text, ": goto reject-chain")
}

// TestDuplicateEndpoints: one address listed twice is one endpoint chain
// and one numgen index, not a double share.
func TestDuplicateEndpoints(t *testing.T) {
	svc := baselinetest.WebService(2)
	svc.Endpoints = append(svc.Endpoints, svc.Endpoints[0])
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, datapath.State{Services: []datapath.Service{svc}}, nil)
	require.NoError(t, err)
	assert.Contains(t, string(r.text), "numgen random mod 2 vmap")
	assert.Len(t, r.chains, 3)
}

func TestFailedLines(t *testing.T) {
	input := []byte("add table ip svclab\ntable ip svclab {\n\tchain c { nope; }\n}\n")
	got := kubeproxy.FailedLines(errLine, input, "/dev/stdin:3:12-15: Error: syntax error, unexpected string\n\tchain c { nope; }\n\t          ^^^^\n")
	assert.Contains(t, got, "> 3: \tchain c { nope; }")
	assert.Contains(t, got, "  2: table ip svclab {")
	assert.Empty(t, kubeproxy.FailedLines(errLine, input, "no line number here"))
	assert.Empty(t, kubeproxy.FailedLines(errLine, input, "/dev/stdin:99:1-2: Error: beyond the input"))
}
