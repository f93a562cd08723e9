package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
	"svclab/baselines/internal/twin6"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// withoutService returns st without its i-th service.
func withoutService(st datapath.State, i int) datapath.State {
	out := datapath.State{Services: slices.Clone(st.Services)}
	out.Services = slices.Delete(out.Services, i, i+1)
	return out
}

// withService returns st plus a fourth one-port service bench/s3 with two
// endpoints in 10.244.4.0/24.
func withService(st datapath.State) datapath.State {
	out := datapath.State{Services: slices.Clone(st.Services)}
	out.Services = append(out.Services, datapath.Service{
		Namespace: "bench", Name: "s3", ClusterIP: netip.MustParseAddr("10.96.1.4"),
		Ports: []datapath.ServicePort{baselinetest.HTTPPort}, Endpoints: baselinetest.Endpoints(4, 2),
	})
	return out
}

// withoutEndpoints returns st with service i's endpoints all gone.
func withoutEndpoints(st datapath.State, i int) datapath.State {
	out := datapath.State{Services: slices.Clone(st.Services)}
	out.Services[i].Endpoints = nil
	return out
}

// renderAfter renders st as a partial sync over what a full sync of prev
// installed.
func renderAfter(t *testing.T, prev, st datapath.State) rendered {
	t.Helper()
	first, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, prev, nil)
	require.NoError(t, err)
	r, err := renderPartialSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, first.content, 0)
	require.NoError(t, err)
	return r
}

// TestRenderPartialGolden pins the restore text of partial syncs after a
// full sync of three services with two endpoints each.
func TestRenderPartialGolden(t *testing.T) {
	base := baselinetest.ThreeByTwo()
	tests := []struct {
		name string
		st   datapath.State
	}{
		{"partial_endpoint_removed", withoutLastEndpoint(base, 1)},
		{"partial_service_removed", withoutService(base, 2)},
		{"partial_service_added", withService(base)},
		{"partial_unchanged", base},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := renderAfter(t, base, tt.st)
			assert.True(t, r.partial)
			baselinetest.CheckGolden(t, tt.name, r.text)
		})
	}
}

// writtenChains lists, per table, the chains a restore input declares and
// the ones it deletes.
func writtenChains(text []byte) (declared, deleted map[string][]string) {
	declared, deleted = map[string][]string{}, map[string][]string{}
	table := ""
	for _, line := range strings.Split(string(text), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			declared[table] = append(declared[table], strings.Fields(line[1:])[0])
		case strings.HasPrefix(line, "-X "):
			deleted[table] = append(deleted[table], line[3:])
		}
	}
	for _, m := range []map[string][]string{declared, deleted} {
		for _, v := range m {
			sort.Strings(v)
		}
	}
	return declared, deleted
}

// TestPartialWritesOnlyChanges checks, independent of the golden text, which
// chains a partial sync declares and deletes.
func TestPartialWritesOnlyChanges(t *testing.T) {
	base := baselinetest.ThreeByTwo()
	full, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, base, nil)
	require.NoError(t, err)
	spn := func(i int) string { return fmt.Sprintf("bench/s%d:http", i) }
	svc := func(i int) string { return svcChainName(spn(i), "tcp") }
	sep := func(i, ep int) string {
		return sepChainName(spn(i), "tcp", fmt.Sprintf("10.244.%d.%d:8080", i+1, ep))
	}
	fixedNAT := []string{chainMarkMasq, chainPostrouting, chainServices}
	sorted := func(s ...string) []string { sort.Strings(s); return s }

	tests := []struct {
		name        string
		st          datapath.State
		wantNAT     []string // declared in nat
		wantDeleted []string // deleted in nat
	}{
		{"unchanged", base, fixedNAT, nil},
		{"endpoint removed rewrites its SVC chain, deletes its SEP chain", withoutLastEndpoint(base, 1),
			sorted(append(slices.Clone(fixedNAT), svc(1), sep(1, 2))...), []string{sep(1, 2)}},
		{"service removed", withoutService(base, 2),
			sorted(append(slices.Clone(fixedNAT), svc(2), sep(2, 1), sep(2, 2))...), sorted(svc(2), sep(2, 1), sep(2, 2))},
		{"service added", withService(base),
			sorted(append(slices.Clone(fixedNAT), svc(3), sep(3, 1), sep(3, 2))...), nil},
		{"endpoints gone: chains deleted, REJECT in filter", withoutEndpoints(base, 0),
			sorted(append(slices.Clone(fixedNAT), svc(0), sep(0, 1), sep(0, 2))...), sorted(svc(0), sep(0, 1), sep(0, 2))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := renderPartialSync(kubeproxy.IPv4, baselinetest.PodCIDR, tt.st, full.content, 0)
			require.NoError(t, err)
			declared, deleted := writtenChains(r.text)
			assert.Equal(t, tt.wantNAT, declared[tableNAT], "nat chains written")
			assert.Equal(t, tt.wantDeleted, deleted[tableNAT], "nat chains deleted")
			assert.Equal(t, []string{chainServices}, declared[tableFilter], "filter KUBE-SERVICES is always rewritten")
			want, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, tt.st, nil)
			require.NoError(t, err)
			assert.Equal(t, want.rules, r.rules, "rule count is the whole state's")
			assert.Equal(t, want.chains, r.chains, "chains left are the whole state's")
		})
	}
}

// TestContentIsWhatStays: the rules text recorded for the next partial sync
// covers exactly the chains the state keeps, not the stale ones a sync
// declares only to delete them.
func TestContentIsWhatStays(t *testing.T) {
	base := baselinetest.ThreeByTwo()
	first, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, base, nil)
	require.NoError(t, err)
	shrunk := withoutService(withoutLastEndpoint(base, 0), 1)
	full, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, shrunk, first.chains)
	require.NoError(t, err)
	partial, err := renderPartialSync(kubeproxy.IPv4, baselinetest.PodCIDR, shrunk, first.content, 0)
	require.NoError(t, err)
	for name, r := range map[string]rendered{"full": full, "partial": partial} {
		for _, table := range []string{tableFilter, tableNAT} {
			var got []string
			for ch := range r.content[table] {
				got = append(got, ch)
			}
			sort.Strings(got)
			assert.Equal(t, r.chains.sorted(table), got, "%s sync, %s table", name, table)
		}
	}
}

// restoreModel is an in-memory stand-in for iptables-restore --noflush:
// per table, each chain's rules. It applies an input with the same checks
// the kernel makes that matter here (a rule's chain and jump target exist,
// a deleted chain exists and nothing jumps to it), so it catches ordering
// mistakes as well as wrong contents.
type restoreModel map[string]map[string][]string

func newRestoreModel() restoreModel {
	m := restoreModel{}
	for _, table := range []string{tableFilter, tableNAT} {
		m[table] = map[string][]string{}
		for _, ch := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
			m[table][ch] = nil
		}
	}
	return m
}

func (m restoreModel) apply(input []byte) error {
	table := ""
	for n, line := range strings.Split(strings.TrimSuffix(string(input), "\n"), "\n") {
		f := strings.Fields(line)
		chains := m[table]
		switch {
		case line == "COMMIT":
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			chains[f[0][1:]] = nil // declaring flushes
		case f[0] == "-A" || f[0] == "-I" || f[0] == "-D":
			if _, ok := chains[f[1]]; !ok {
				return fmt.Errorf("line %d: chain %s does not exist", n+1, f[1])
			}
			if j := slices.Index(f, "-j"); j >= 0 && strings.HasPrefix(f[j+1], "KUBE-") {
				if _, ok := chains[f[j+1]]; !ok {
					return fmt.Errorf("line %d: jump to missing chain %s", n+1, f[j+1])
				}
			}
			rule := strings.Join(f[2:], " ")
			switch f[0] {
			case "-A":
				chains[f[1]] = append(chains[f[1]], rule)
			case "-I":
				chains[f[1]] = append([]string{rule}, chains[f[1]]...)
			case "-D":
				chains[f[1]] = slices.DeleteFunc(chains[f[1]], func(r string) bool { return r == rule })
			}
		case f[0] == "-X":
			if _, ok := chains[f[1]]; !ok {
				return fmt.Errorf("line %d: delete of missing chain %s", n+1, f[1])
			}
			for ch, rules := range chains {
				for _, r := range rules {
					if strings.HasSuffix(r, "-j "+f[1]) {
						return fmt.Errorf("line %d: chain %s is referenced from %s", n+1, f[1], ch)
					}
				}
			}
			delete(chains, f[1])
		default:
			return fmt.Errorf("line %d: unexpected %q", n+1, line)
		}
	}
	return nil
}

// TestPartialSequenceMatchesFullSync runs a sequence of states through
// partial syncs on the model and checks after each that the model holds
// exactly what a fresh full sync of that state gives.
func TestPartialSequenceMatchesFullSync(t *testing.T) {
	base := baselinetest.ThreeByTwo()
	seq := []struct {
		name string
		st   datapath.State
	}{
		{"three services", base},
		{"endpoint removed", withoutLastEndpoint(base, 1)},
		{"service removed", withoutService(withoutLastEndpoint(base, 1), 2)},
		{"service added", withService(base)},
		{"endpoints gone", withoutEndpoints(withService(base), 0)},
		{"affinity and multi-port", affinityState()},
		{"twelve endpoints", datapath.State{Services: []datapath.Service{baselinetest.WebService(12), baselinetest.EmptyService()}}},
		{"empty", datapath.State{}},
		{"three services again", base},
	}
	// The IPv6 proxier goes through the same sequence on the IPv6 twins of
	// the states: its partial syncs must hold as well.
	for _, fam := range kubeproxy.Families {
		t.Run(fam.String(), func(t *testing.T) {
			podCIDR, twin := baselinetest.PodCIDR, func(st datapath.State) datapath.State { return st }
			if fam == kubeproxy.IPv6 {
				podCIDR, twin = baselinetest.PodCIDR6, twin6.State
			}
			live := newRestoreModel()
			require.NoError(t, live.apply(renderSetup()))
			var synced chainRules
			for i, s := range seq {
				var r rendered
				var err error
				if i == 0 {
					r, err = renderSync(fam, podCIDR, twin(s.st), nil)
				} else {
					r, err = renderPartialSync(fam, podCIDR, twin(s.st), synced, 0)
				}
				require.NoError(t, err, s.name)
				require.NoError(t, live.apply(r.text), "%s: the model rejects the input", s.name)
				synced = r.content

				fresh := newRestoreModel()
				require.NoError(t, fresh.apply(renderSetup()))
				want, err := renderSync(fam, podCIDR, twin(s.st), nil)
				require.NoError(t, err)
				require.NoError(t, fresh.apply(want.text))
				assert.Equal(t, fresh, live, "%s: partial sync differs from a full one", s.name)
			}
		})
	}
}

// normalisedSave is the variant's iptables-save of table in ns with what
// does not describe the ruleset removed: comment lines, counters, and the
// order of chains (legacy lists them sorted, nft in creation order), keeping
// the order of rules within each chain.
func normalisedSave(t *testing.T, v *variant, fam kubeproxy.Family, ns *nsutil.NS, table string) string {
	t.Helper()
	_, save := v.bins(fam)
	out, err := ns.Run(context.Background(), nil, save, "-t", table)
	require.NoError(t, err)
	var decls, rules []string
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			decls = append(decls, counters.ReplaceAllString(line, "[0:0]"))
		case strings.HasPrefix(line, "-"):
			rules = append(rules, line)
		}
	}
	sort.Strings(decls)
	chainOf := func(r string) string { return strings.Fields(r)[1] }
	sort.SliceStable(rules, func(i, j int) bool { return chainOf(rules[i]) < chainOf(rules[j]) })
	return strings.Join(decls, "\n") + "\n" + strings.Join(rules, "\n") + "\n"
}

// TestPrivilegedPartialMatchesFullSync applies a sequence of states to one
// namespace (a full sync, then partial ones) and checks after each step
// that the kernel's nat and filter tables equal what a fresh full sync of
// the same state gives in another namespace. The node is dual-stack and
// every state carries the IPv6 twins of its services too, so ip6tables'
// partial syncs are checked the same way.
func TestPrivilegedPartialMatchesFullSync(t *testing.T) {
	requireRoot(t)
	baselinetest.CheckRootUnchanged(t, "netfilter rules", rootSnapshot)
	base := baselinetest.ThreeByTwo()
	seq := []datapath.State{
		base,
		withoutLastEndpoint(base, 1),
		withoutService(withoutLastEndpoint(base, 1), 2),
		withService(base),
		withoutEndpoints(withService(base), 0),
		affinityState(),
		{Services: []datapath.Service{baselinetest.WebService(12), baselinetest.EmptyService()}},
		{},
		base,
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			requireInstalled(t, v)
			ctx := context.Background()
			nsA, nsB := baselinetest.NewNS(t), baselinetest.NewNS(t)
			env := func(ns *nsutil.NS) *datapath.Env {
				return &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR, PodCIDR6: baselinetest.PodCIDR6,
					ServiceCIDR6: netip.MustParsePrefix("fd00:10:96::/48")}
			}
			dp := &Datapath{v: v}
			require.NoError(t, dp.Setup(ctx, env(nsA)))
			t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

			for i, st := range seq {
				st.Services = append(slices.Clone(st.Services), twin6.State(st).Services...)
				require.NoError(t, dp.Apply(ctx, st), "step %d", i)
				wantSync := "partial"
				if i == 0 {
					wantSync = "full"
				}
				assert.Equal(t, wantSync, dp.Info()["sync"], "step %d", i)

				ref := &Datapath{v: v}
				require.NoError(t, ref.Setup(ctx, env(nsB)))
				require.NoError(t, ref.Apply(ctx, st))
				for _, fam := range kubeproxy.Families {
					for _, table := range []string{tableNAT, tableFilter} {
						assert.Equal(t, normalisedSave(t, v, fam, nsB, table), normalisedSave(t, v, fam, nsA, table), "step %d: %s %s table", i, fam, table)
					}
				}
				require.NoError(t, ref.Close())
			}
		})
	}
}
