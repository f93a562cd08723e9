package nftables

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// requireNft skips unless the test can create network namespaces and run
// nft in them. On root with nft installed every later failure is a real
// failure: the probe must then pass.
func requireNft(t *testing.T) {
	t.Helper()
	baselinetest.RequireRoot(t, "creates network namespaces and runs nft inside them")
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft (the nftables CLI) is not installed")
	}
}

// rootRuleset reads, without writing, the root namespace's nftables
// ruleset. Counters are left out (-s, stateless) because they change
// between two reads without anything being written.
func rootRuleset(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "-s", "list", "ruleset").CombinedOutput()
	require.NoError(t, err, "nft list ruleset in the root namespace: %s", out)
	return string(out)
}

// listed is what `nft -j list table` shows of our table.
type listed struct {
	chains map[string]bool
	hooks  map[string]string   // chain → hook
	maps   map[string][]string // map → element keys "ip . proto . port"
	rules  int
	text   string
}

// listTable reads our ip table back from the kernel as JSON.
func listTable(t *testing.T, ns *nsutil.NS) listed {
	t.Helper()
	return listFamilyTable(t, ns, kubeproxy.IPv4)
}

// listFamilyTable reads family f's table back from the kernel as JSON.
func listFamilyTable(t *testing.T, ns *nsutil.NS, f kubeproxy.Family) listed {
	t.Helper()
	out, err := ns.Run(context.Background(), nil, "nft", "-j", "list", "table", nftFamily(f), table)
	require.NoError(t, err)
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	require.NoError(t, json.Unmarshal(out, &doc), "nft -j output: %.200s", out)
	l := listed{chains: map[string]bool{}, hooks: map[string]string{}, maps: map[string][]string{}}
	for _, obj := range doc.Nftables {
		switch {
		case obj["chain"] != nil:
			var c struct {
				Name, Table, Hook string
			}
			require.NoError(t, json.Unmarshal(obj["chain"], &c))
			require.Equal(t, table, c.Table)
			l.chains[c.Name] = true
			if c.Hook != "" {
				l.hooks[c.Name] = c.Hook
			}
		case obj["map"] != nil:
			var m struct {
				Name string
				Elem []json.RawMessage `json:"elem"`
			}
			require.NoError(t, json.Unmarshal(obj["map"], &m))
			keys := []string{}
			for _, e := range m.Elem {
				keys = append(keys, elemKey(t, e))
			}
			sort.Strings(keys)
			l.maps[m.Name] = keys
		case obj["rule"] != nil:
			l.rules++
		}
	}
	text, err := ns.Run(context.Background(), nil, "nft", "list", "table", nftFamily(f), table)
	require.NoError(t, err)
	l.text = string(text)
	return l
}

// elemKey turns one JSON map element into "ip . proto . port". Elements
// are [key, verdict] pairs; a key with a comment is wrapped in {"elem":
// {"val": key, "comment": …}}; a concatenated key is {"concat": [...]},
// a single one a plain string.
func elemKey(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var pair []json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &pair), "element %s", raw)
	require.Len(t, pair, 2, "element %s", raw)
	key := pair[0]
	var wrapped struct {
		Elem struct {
			Val json.RawMessage `json:"val"`
		} `json:"elem"`
	}
	if json.Unmarshal(key, &wrapped) == nil && wrapped.Elem.Val != nil {
		key = wrapped.Elem.Val
	}
	var plain string
	if json.Unmarshal(key, &plain) == nil {
		return plain
	}
	var concat struct {
		Concat []any `json:"concat"`
	}
	require.NoError(t, json.Unmarshal(key, &concat), "key %s", key)
	parts := make([]string, len(concat.Concat))
	for i, p := range concat.Concat {
		parts[i] = fmt.Sprint(p)
	}
	return strings.Join(parts, " . ")
}

// fixedChains are the chains every table has from Setup to Close.
func fixedChains() []string {
	out := []string{chainServices, chainEndpointsCheck, chainReject, chainMarkMasq, chainMasquerading}
	for _, bc := range baseChains {
		out = append(out, bc.name)
	}
	return out
}

// wantChains is every chain the table must hold for st.
func wantChains(t *testing.T, st datapath.State) []string {
	t.Helper()
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, nil)
	require.NoError(t, err)
	out := append(fixedChains(), sortedChains(r.chains)...)
	sort.Strings(out)
	return out
}

// TestPrivilegedApply drives the datapath through the real nft in its own
// namespace: Setup, Apply, a shrinking Apply, Close, checking the kernel's
// view (nft -j list table) after each step, and that the root namespace's
// ruleset never changes.
func TestPrivilegedApply(t *testing.T) {
	requireNft(t)
	baselinetest.CheckRootUnchanged(t, "nftables ruleset", rootRuleset)
	f, err := datapath.Lookup(Name)
	require.NoError(t, err)
	require.NoError(t, f.Probe(), "probe")

	web := baselinetest.WebService(12)
	full := datapath.State{Services: []datapath.Service{web, baselinetest.DNSService(), baselinetest.EmptyService()}}
	shrunk := datapath.State{Services: []datapath.Service{web}}

	ns := baselinetest.NewNS(t)
	dp := f.New()
	env := &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR, ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12")}
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, env))
	t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

	l := listTable(t, ns)
	assert.Equal(t, wantChains(t, datapath.State{}), sortedChains(l.chains), "chains after Setup")
	assert.Equal(t, map[string]string{
		"filter-input": "input", "filter-forward": "forward", "filter-output": "output",
		"nat-prerouting": "prerouting", "nat-output": "output", "nat-postrouting": "postrouting",
	}, l.hooks, "base chains and their hooks")
	assert.Equal(t, map[string][]string{mapServiceIPs: {}, mapNoEndpoints: {}}, l.maps, "empty maps after Setup")
	assert.Equal(t, 13, l.rules, "fixed rules after Setup")

	require.NoError(t, dp.Apply(ctx, full))
	l = listTable(t, ns)
	assert.Equal(t, wantChains(t, full), sortedChains(l.chains), "chains after the full Apply")
	assert.Equal(t, []string{
		"10.96.0.10 . tcp . 80",
		"10.96.0.53 . tcp . 53",
		"10.96.0.53 . udp . 53",
	}, l.maps[mapServiceIPs], "service-ips")
	assert.Equal(t, []string{"10.96.0.20 . tcp . 80"}, l.maps[mapNoEndpoints], "no-endpoint-services")
	for _, ep := range web.ReadyEndpoints() {
		assert.Contains(t, l.text, "meta l4proto tcp dnat to "+ep.Addr.String()+":8080")
	}
	assert.Contains(t, l.text, "numgen random mod 12 vmap {")
	assert.Contains(t, l.text, "meta l4proto udp dnat to 10.244.2.2:5353")
	want, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, full, nil)
	require.NoError(t, err)
	assert.Equal(t, want.rules, l.rules, "rules in the kernel = rules rendered")

	info := dp.Info()
	assert.Equal(t, strconv.Itoa(want.rules), info["rules"])
	assert.Regexp(t, `^\d+\.\d+`, info["nft_version"])

	// Re-applying the same state changes nothing.
	require.NoError(t, dp.Apply(ctx, full))
	again := listTable(t, ns)
	assert.Equal(t, l.chains, again.chains)
	assert.Equal(t, l.rules, again.rules, "a re-Apply does not duplicate rules")

	// Dropping services deletes their chains and elements in the kernel.
	require.NoError(t, dp.Apply(ctx, shrunk))
	l = listTable(t, ns)
	assert.Equal(t, wantChains(t, shrunk), sortedChains(l.chains), "chains after the shrinking Apply")
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80"}, l.maps[mapServiceIPs])
	assert.Empty(t, l.maps[mapNoEndpoints])
	assert.NotContains(t, l.text, "kube-system/dns")

	require.NoError(t, dp.Close())
	out, err := ns.Run(ctx, nil, "nft", "list", "tables")
	require.NoError(t, err)
	assert.Empty(t, strings.TrimSpace(string(out)), "no table left after Close")
	assert.NoError(t, dp.Close(), "a second Close is a no-op")
}

// TestPrivilegedApplyErrorKeepsState: a sync the kernel rejects changes
// nothing, neither in the kernel nor in what the datapath believes is
// installed, so the next good sync still deletes the right chains.
func TestPrivilegedApplyErrorKeepsState(t *testing.T) {
	requireNft(t)
	ns := baselinetest.NewNS(t)
	dp := &Datapath{t: nft}
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR}))
	t.Cleanup(func() { assert.NoError(t, dp.Close()) })
	st := datapath.State{Services: []datapath.Service{baselinetest.WebService(2)}}
	require.NoError(t, dp.Apply(ctx, st))
	before := listTable(t, ns)

	// A map we do not own points at one of our endpoint chains, so the
	// kernel refuses to delete that chain (flush table empties rules, not
	// maps): the whole sync must fail.
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, nil)
	require.NoError(t, err)
	ep := sortedChains(r.chains)[0]
	require.True(t, strings.HasPrefix(ep, prefixEndpoint), "picked %s", ep)
	foreign := fmt.Sprintf("table ip svclab {\n\tmap foreign { type ipv4_addr : verdict; elements = { 192.0.2.1 : goto %s }; }\n}\n", ep)
	_, err = nft.apply(ctx, ns, []byte(foreign))
	require.NoError(t, err)
	withForeign := listTable(t, ns)

	err = dp.Apply(ctx, datapath.State{})
	require.Error(t, err)
	t.Log(err)
	assert.Contains(t, err.Error(), "input near the failure", "the error quotes the failing input")
	after := listTable(t, ns)
	assert.Equal(t, withForeign.chains, after.chains, "a failed sync leaves the chains as they were")
	assert.Equal(t, withForeign.rules, after.rules, "a failed sync leaves the rules as they were")
	assert.Equal(t, before.maps[mapServiceIPs], after.maps[mapServiceIPs], "a failed sync leaves service-ips as it was")

	_, err = nft.apply(ctx, ns, []byte("delete map ip svclab foreign\n"))
	require.NoError(t, err)
	require.NoError(t, dp.Apply(ctx, datapath.State{}))
	assert.Equal(t, wantChains(t, datapath.State{}), sortedChains(listTable(t, ns).chains), "the next good sync deletes every service chain")
}

// TestPrivilegedApplyTiming measures single syncs of the sizes the lead
// asked for: 1 service × 12 endpoints and 1,000 services × 12 endpoints,
// each the first sync after Setup and then an identical re-sync.
func TestPrivilegedApplyTiming(t *testing.T) {
	requireNft(t)
	if testing.Short() {
		t.Skip("-short: the 1,000-service sync takes seconds")
	}
	for _, n := range []int{1, 1000} {
		t.Run(fmt.Sprintf("%d_services", n), func(t *testing.T) {
			ns := baselinetest.NewNS(t)
			dp := &Datapath{t: nft}
			ctx := context.Background()
			require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR}))
			t.Cleanup(func() { assert.NoError(t, dp.Close()) })
			st := manyServices(n, 12)
			r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, nil)
			require.NoError(t, err)

			start := time.Now()
			require.NoError(t, dp.Apply(ctx, st))
			first := time.Since(start)
			var again []time.Duration
			for range 3 {
				start := time.Now()
				require.NoError(t, dp.Apply(ctx, st))
				again = append(again, time.Since(start))
			}
			slices.Sort(again)
			t.Logf("Apply %d svc x 12 endpoints (%d chains, %d rules, %d KiB of nft input): first %v, median of 3 re-applies %v",
				n, len(r.chains), r.rules, len(r.text)/1024, first.Round(time.Millisecond), again[1].Round(time.Millisecond))
			l := listTable(t, ns)
			assert.Len(t, l.maps[mapServiceIPs], n)
			assert.Equal(t, r.rules, l.rules)
		})
	}
}

// manyServices is n services with eps endpoints each, VIPs 10.96.x.y and
// endpoints spread over 10.244.0.0/16.
func manyServices(n, eps int) datapath.State {
	var st datapath.State
	for i := range n {
		svc := datapath.Service{
			Namespace: "bench", Name: fmt.Sprintf("svc-%04d", i),
			ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte((i + 1) >> 8), byte(i + 1)}),
			Ports:     []datapath.ServicePort{baselinetest.HTTPPort},
		}
		for j := range eps {
			k := i*eps + j + 1
			svc.Endpoints = append(svc.Endpoints, datapath.Endpoint{
				Pod: fmt.Sprintf("pod-%d", k), Addr: netip.AddrFrom4([4]byte{10, 244, byte(k >> 8), byte(k)}),
				Ready: true, Serving: true,
			})
		}
		st.Services = append(st.Services, svc)
	}
	return st
}

func TestPrivilegedProbe(t *testing.T) {
	requireNft(t)
	require.NoError(t, nft.probe())
	baselinetest.AssertProbeNSGone(t)
}

// TestPrivilegedProbeNamesMissingFeature stands in for a kernel without
// numgen: a wrapper around the real nft rejects any input using it. The
// probe must report Unsupported and name the missing construct only.
func TestPrivilegedProbeNamesMissingFeature(t *testing.T) {
	requireNft(t)
	real, err := exec.LookPath("nft")
	require.NoError(t, err)
	wrapper := filepath.Join(t.TempDir(), "nonumgen-nft")
	script := `#!/bin/sh
if [ "$1" = --version ]; then echo "nftables v9.9.9 (wrapper)"; exit 0; fi
input=$(cat)
case "$input" in *numgen*)
	echo "/dev/stdin:1:1-6: Error: Could not process rule: No such file or directory"; exit 1;;
esac
printf '%s\n' "$input" | exec ` + real + ` "$@"
`
	require.NoError(t, os.WriteFile(wrapper, []byte(script), 0o755))
	tl := &tool{bin: wrapper}

	err = tl.probe()
	t.Log(err)
	require.ErrorIs(t, err, datapath.ErrUnsupported)
	assert.Contains(t, err.Error(), "nftables: nft or the kernel lacks numgen random with a verdict map (")
	assert.NotContains(t, err.Error(), "dnat", "only the missing feature is named")
	assert.Equal(t, err, tl.probe(), "the answer is cached")
	baselinetest.AssertProbeNSGone(t)
}

// TestPrivilegedProbeFeatures: every single-feature input of the probe is
// valid nft that this kernel accepts; otherwise a probe failure would
// blame the wrong feature.
func TestPrivilegedProbeFeatures(t *testing.T) {
	requireNft(t)
	ns := baselinetest.NewNS(t)
	for _, f := range probeFeatures {
		t.Run(f.What, func(t *testing.T) {
			_, err := nft.apply(context.Background(), ns, []byte(f.Input))
			assert.NoError(t, err)
		})
	}
}
