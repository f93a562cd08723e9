package nftables

import (
	"context"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
	"svclab/baselines/internal/twin6"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// partialCase is one change from a state to the next.
type partialCase struct {
	name       string
	from, to   datapath.State
	wantChange []string // substrings the partial text must contain
}

// withAffinity is st with ClientIP affinity (timeout d) on service i.
func withAffinity(st datapath.State, i int, d time.Duration) datapath.State {
	st.Services[i].SessionAffinity = datapath.SessionAffinityClientIP
	st.Services[i].AffinityTimeout = d
	return st
}

// partialCases are the changes the partial sync must express: each starts
// from three services with two endpoints each (or a variant of it).
func partialCases() []partialCase {
	endpointRemoved := baselinetest.ThreeByTwo()
	endpointRemoved.Services[1].Endpoints = endpointRemoved.Services[1].Endpoints[1:]
	serviceRemoved := baselinetest.ThreeByTwo()
	serviceRemoved.Services = serviceRemoved.Services[:2]
	serviceAdded := baselinetest.ThreeByTwo()
	added := serviceAdded.Services[2]
	added.Name, added.ClusterIP = "s3", netip.MustParseAddr("10.96.1.4")
	added.Endpoints = baselinetest.Endpoints(4, 2)
	serviceAdded.Services = append(serviceAdded.Services, added)
	endpointsGone := baselinetest.ThreeByTwo()
	endpointsGone.Services[1].Endpoints = nil
	return []partialCase{
		{name: "endpoint_removed", from: baselinetest.ThreeByTwo(), to: endpointRemoved,
			wantChange: []string{"flush chain ip svclab service-", "numgen random mod 1 ", "delete chain ip svclab endpoint-"}},
		{name: "service_removed", from: baselinetest.ThreeByTwo(), to: serviceRemoved,
			wantChange: []string{"delete element ip svclab service-ips {\n\t10.96.1.3 . tcp . 80\n}"}},
		{name: "service_added", from: baselinetest.ThreeByTwo(), to: serviceAdded,
			wantChange: []string{"add chain ip svclab service-", "add element ip svclab service-ips {\n\t10.96.1.4 . tcp . 80 : goto service-"}},
		{name: "affinity_on", from: baselinetest.ThreeByTwo(), to: withAffinity(baselinetest.ThreeByTwo(), 0, 10*time.Minute),
			wantChange: []string{"add set ip svclab affinity-", "timeout 600s"}},
		{name: "affinity_off", from: withAffinity(baselinetest.ThreeByTwo(), 0, 10*time.Minute), to: baselinetest.ThreeByTwo(),
			wantChange: []string{"delete set ip svclab affinity-"}},
		{name: "endpoints_gone", from: baselinetest.ThreeByTwo(), to: endpointsGone,
			wantChange: []string{"add element ip svclab no-endpoint-services {"}},
		{name: "endpoints_back", from: endpointsGone, to: baselinetest.ThreeByTwo(),
			wantChange: []string{"delete element ip svclab no-endpoint-services {"}},
	}
}

// TestRenderPartialGolden pins the partial transaction text of each change
// (testdata/partial_<name>.golden), checks that it names only what changed,
// and checks in the model of the table (which also checks that every
// reference is valid when made and every deletion unreferenced) that the
// full sync of the old state followed by the partial sync leaves exactly
// the table a full sync of the new state leaves.
func TestRenderPartialGolden(t *testing.T) {
	for _, tc := range partialCases() {
		t.Run(tc.name, func(t *testing.T) {
			from, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, tc.from)
			require.NoError(t, err)
			to, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, tc.to)
			require.NoError(t, err)
			text, err := renderPartial(newInstalled(from), to)
			require.NoError(t, err)
			baselinetest.CheckGolden(t, "partial_"+tc.name, text)
			for _, want := range tc.wantChange {
				assert.Contains(t, string(text), want)
			}
			// s0 (10.96.1.1) is untouched by every case but the
			// affinity ones.
			if !strings.HasPrefix(tc.name, "affinity") {
				assert.NotContains(t, string(text), "bench/s0/", "a partial sync leaves unchanged services alone")
			}
			assert.NotContains(t, string(text), "flush table", "a partial sync flushes no whole table")

			got := parseNft(t, renderSetup(kubeproxy.IPv4), renderFull(from, nil), text)
			want := parseNft(t, renderSetup(kubeproxy.IPv4), renderFull(to, nil))
			assert.Equal(t, want, got, "table after full(from)+partial(to) vs after full(to)")
		})
	}
}

// TestRenderPartialSequence chains every case's target state, so a partial
// sync also starts from states another partial sync left; in the ip6 table
// too, with the IPv6 twins of the states.
func TestRenderPartialSequence(t *testing.T) {
	for _, f := range kubeproxy.Families {
		t.Run(f.String(), func(t *testing.T) {
			podCIDR, twin := baselinetest.PodCIDR, func(st datapath.State) datapath.State { return st }
			if f == kubeproxy.IPv6 {
				podCIDR, twin = baselinetest.PodCIDR6, twin6.State
			}
			cur, err := desire(f, podCIDR, datapath.State{})
			require.NoError(t, err)
			texts := [][]byte{renderSetup(f), renderFull(cur, nil)}
			in := newInstalled(cur)
			for _, tc := range partialCases() {
				next, err := desire(f, podCIDR, twin(tc.to))
				require.NoError(t, err)
				text, err := renderPartial(in, next)
				require.NoError(t, err, tc.name)
				texts = append(texts, text)
				in = newInstalled(next)
				assert.Equal(t, parseNft(t, renderSetup(f), renderFull(next, nil)), parseNft(t, texts...), "after %s", tc.name)
			}
		})
	}
}

func TestRenderPartialNoChange(t *testing.T) {
	d, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, affinityState())
	require.NoError(t, err)
	text, err := renderPartial(newInstalled(d), d)
	require.NoError(t, err)
	assert.Empty(t, string(text), "nothing changed, nothing to send")
}

// TestRenderPartialTimeoutChangeNeedsFull: a set's timeout cannot change in
// place, so that change is left to a full sync.
func TestRenderPartialTimeoutChangeNeedsFull(t *testing.T) {
	from, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, withAffinity(baselinetest.ThreeByTwo(), 0, 10*time.Minute))
	require.NoError(t, err)
	to, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, withAffinity(baselinetest.ThreeByTwo(), 0, 5*time.Minute))
	require.NoError(t, err)
	_, err = renderPartial(newInstalled(from), to)
	var need errNeedsFull
	require.ErrorAs(t, err, &need)
	assert.Contains(t, err.Error(), "from 600s to 300s")
}

// reHandle is the handle nft -a would print; plain listings have none, but
// strip them anyway so the comparison is about content only.
var reHandle = regexp.MustCompile(` # handle \d+`)

// normalTable turns `nft list table` output into a canonical form: the
// blocks (chains, maps, sets) sorted by name, since partial syncs create
// chains in another order than a full sync, and the elements of each map
// sorted, since their listing order follows the hash table.
func normalTable(t *testing.T, text string) []string {
	t.Helper()
	text = reHandle.ReplaceAllString(text, "")
	lines := strings.Split(strings.TrimSpace(text), "\n")
	require.GreaterOrEqual(t, len(lines), 2, "listing %q", text)
	require.True(t, strings.HasPrefix(lines[0], "table ip svclab {") || strings.HasPrefix(lines[0], "table ip6 svclab {"), "first line %q", lines[0])
	var blocks []string
	var cur []string
	for _, line := range lines[1 : len(lines)-1] {
		if line == "" {
			continue
		}
		cur = append(cur, strings.TrimSpace(line))
		if line == "\t}" {
			blocks = append(blocks, normalBlock(cur))
			cur = nil
		}
	}
	require.Empty(t, cur, "unterminated block in listing")
	sort.Strings(blocks)
	return blocks
}

// normalBlock joins a block's lines, with its "elements = { … }" list
// sorted.
func normalBlock(lines []string) string {
	joined := strings.Join(lines, "\n")
	start := strings.Index(joined, "elements = { ")
	if start < 0 {
		return joined
	}
	stop := start + strings.Index(joined[start:], " }")
	body := joined[start+len("elements = { ") : stop]
	elems := strings.Split(body, ",")
	for i := range elems {
		elems[i] = strings.TrimSpace(elems[i])
	}
	sort.Strings(elems)
	return joined[:start] + "elements = { " + strings.Join(elems, ", ") + joined[stop:]
}

// TestPrivilegedPartialMatchesFull applies a sequence of states (every
// partial case's target, each a partial sync after the first full one) and
// checks that the kernel's table then is exactly what a fresh datapath in
// another namespace gets from one full sync of the final state. The node is
// dual-stack and every state also carries its IPv6 twin, so the ip6
// table's partial syncs are checked the same way.
func TestPrivilegedPartialMatchesFull(t *testing.T) {
	requireNft(t)
	baselinetest.CheckRootUnchanged(t, "nftables ruleset", rootRuleset)
	ctx := context.Background()
	dual := func(st datapath.State) datapath.State {
		return datapath.State{Services: append(slices.Clone(st.Services), twin6.State(st).Services...)}
	}
	start := func(ns *nsutil.NS) *Datapath {
		dp := &Datapath{t: nft}
		require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR,
			PodCIDR6: baselinetest.PodCIDR6, ServiceCIDR6: netip.MustParsePrefix("fd00:10:96::/48")}))
		t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })
		return dp
	}
	nsSeq, nsFresh := baselinetest.NewNS(t), baselinetest.NewNS(t)
	seq := start(nsSeq)

	require.NoError(t, seq.Apply(ctx, dual(baselinetest.ThreeByTwo())))
	assert.Equal(t, "full", seq.Info()["sync"], "the first Apply is a full sync")
	for _, tc := range partialCases() {
		require.NoError(t, seq.Apply(ctx, dual(tc.to)), tc.name)
		assert.Equal(t, "partial", seq.Info()["sync"], "Apply to %s", tc.name)
	}
	// Changes of several kinds at once, and a service port whose affinity
	// set and endpoints change together.
	final := withAffinity(baselinetest.ThreeByTwo(), 2, time.Minute)
	final.Services[2].Endpoints = baselinetest.Endpoints(3, 3)
	final.Services = append(final.Services[1:], baselinetest.WebService(4), baselinetest.DNSService(), baselinetest.EmptyService())
	require.NoError(t, seq.Apply(ctx, dual(final)))
	assert.Equal(t, "partial", seq.Info()["sync"])
	assert.Equal(t, "partial", seq.fams[kubeproxy.IPv6].lastSync, "the ip6 table synced partially too")

	fresh := start(nsFresh)
	require.NoError(t, fresh.Apply(ctx, dual(final)))
	assert.Equal(t, "full", fresh.Info()["sync"])

	for _, f := range kubeproxy.Families {
		got, want := listFamilyTable(t, nsSeq, f), listFamilyTable(t, nsFresh, f)
		assert.Equal(t, normalTable(t, want.text), normalTable(t, got.text), "%s table after partial syncs vs one full sync", f)
		assert.Equal(t, want.maps, got.maps, f.String())
		assert.Equal(t, want.rules, got.rules, f.String())
	}
	assert.Equal(t, fresh.Info()["rules"], seq.Info()["rules"])
	assert.NotEmpty(t, seq.Info()["rules_ipv6"])
}

// TestPrivilegedPartialFailureFallsBackToFull: a partial sync the kernel
// rejects leaves the table and the datapath's record as they were, and the
// next Apply is a full sync that gets the table right.
func TestPrivilegedPartialFailureFallsBackToFull(t *testing.T) {
	requireNft(t)
	ctx := context.Background()
	ns := baselinetest.NewNS(t)
	dp := &Datapath{t: nft}
	require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR}))
	t.Cleanup(func() { assert.NoError(t, dp.Close()) })
	require.NoError(t, dp.Apply(ctx, baselinetest.ThreeByTwo()))
	require.NoError(t, dp.Apply(ctx, baselinetest.ThreeByTwo()))
	require.Equal(t, "partial", dp.Info()["sync"], "an unchanged state is a (empty) partial sync")

	// A foreign map names the endpoint chain that dropping s2 deletes, so
	// the kernel refuses the partial sync.
	shrunk := baselinetest.ThreeByTwo()
	shrunk.Services = shrunk.Services[:2]
	from, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, baselinetest.ThreeByTwo())
	require.NoError(t, err)
	to, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, shrunk)
	require.NoError(t, err)
	var victim string
	for _, ch := range sortedChains(from.names) {
		if !to.names[ch] && strings.HasPrefix(ch, prefixEndpoint) {
			victim = ch
			break
		}
	}
	require.NotEmpty(t, victim)
	_, err = nft.apply(ctx, ns, []byte("table ip svclab {\n\tmap foreign { type ipv4_addr : verdict; elements = { 192.0.2.1 : goto "+victim+" }; }\n}\n"))
	require.NoError(t, err)
	before := listTable(t, ns)

	err = dp.Apply(ctx, shrunk)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "partial sync")
	after := listTable(t, ns)
	assert.Equal(t, before.text, after.text, "a failed partial sync changes nothing in the kernel")

	_, err = nft.apply(ctx, ns, []byte("delete map ip svclab foreign\n"))
	require.NoError(t, err)
	require.NoError(t, dp.Apply(ctx, shrunk))
	assert.Equal(t, "full", dp.Info()["sync"], "the Apply after a failure is a full sync")
	assert.Equal(t, wantChains(t, shrunk), sortedChains(listTable(t, ns).chains))
	require.NoError(t, dp.Apply(ctx, baselinetest.ThreeByTwo()))
	assert.Equal(t, "partial", dp.Info()["sync"], "partial syncs resume after a good full sync")
	assert.Equal(t, wantChains(t, baselinetest.ThreeByTwo()), sortedChains(listTable(t, ns).chains))
}

// TestPrivilegedFullSyncAfterUnrecordedCommit: when nft fails after the
// kernel committed (killed by a cancelled context), the kernel holds more
// than the datapath recorded. The full sync after the failure must then
// delete what the kernel has, not what the record says, or it would fail
// on chains already gone, and keep failing.
func TestPrivilegedFullSyncAfterUnrecordedCommit(t *testing.T) {
	requireNft(t)
	ctx := context.Background()
	ns := baselinetest.NewNS(t)
	dp := &Datapath{t: nft}
	require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR}))
	t.Cleanup(func() { assert.NoError(t, dp.Close()) })
	require.NoError(t, dp.Apply(ctx, baselinetest.ThreeByTwo()))

	// Commit a partial sync to "two services, s3 added" behind the
	// datapath's back, and make it believe its last sync failed.
	moved := baselinetest.ThreeByTwo()
	moved.Services[2].Name = "s3"
	from, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, baselinetest.ThreeByTwo())
	require.NoError(t, err)
	to, err := desire(kubeproxy.IPv4, baselinetest.PodCIDR, moved)
	require.NoError(t, err)
	text, err := renderPartial(newInstalled(from), to)
	require.NoError(t, err)
	_, err = nft.apply(ctx, ns, text)
	require.NoError(t, err)
	dp.mu.Lock()
	dp.fams[kubeproxy.IPv4].needFull, dp.fams[kubeproxy.IPv4].distrust = true, true
	dp.mu.Unlock()

	// s2's chains are gone from the kernel but still in the record; s3's
	// are in the kernel but not in the record, and must go too.
	final := baselinetest.ThreeByTwo()
	final.Services = final.Services[:2]
	require.NoError(t, dp.Apply(ctx, final))
	assert.Equal(t, "full", dp.Info()["sync"])
	assert.Equal(t, wantChains(t, final), sortedChains(listTable(t, ns).chains), "chains after the full sync")
}
