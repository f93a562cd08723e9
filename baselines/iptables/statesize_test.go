package iptables

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
)

// TestPrivilegedStateObjects checks that Info's state_objects is the rule
// count ("rules"), that this is what the renderer wrote, and that the
// kernel holds that many rules in the KUBE-* chains.
func TestPrivilegedStateObjects(t *testing.T) {
	requireRoot(t)
	baselinetest.CheckRootUnchanged(t, "netfilter rules", rootSnapshot)

	states := []struct {
		name string
		st   datapath.State
	}{
		{"3 services x 2 endpoints", baselinetest.ThreeByTwo()},
		{"web with 12 endpoints", datapath.State{Services: []datapath.Service{baselinetest.WebService(12)}}},
		{"empty", datapath.State{}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			requireInstalled(t, v)
			f, err := datapath.Lookup(v.name)
			require.NoError(t, err)
			require.NoError(t, f.Probe(), "probe")
			ns := baselinetest.NewNS(t)
			dp := f.New()
			ctx := context.Background()
			require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR, ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12")}))
			t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

			for _, tt := range states {
				t.Run(tt.name, func(t *testing.T) {
					require.NoError(t, dp.Apply(ctx, tt.st))
					info := dp.Info()
					assert.Equal(t, info["rules"], info[datapath.InfoStateObjects])
					assert.NotContains(t, info, datapath.InfoStateBytes, "netfilter rule memory is not readable")

					want, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, tt.st, nil)
					require.NoError(t, err)
					assert.Equal(t, strconv.Itoa(want.rules), info[datapath.InfoStateObjects], "rules rendered")
					kernel := 0
					for _, table := range []string{tableNAT, tableFilter} {
						text, _ := saveChains(t, v, ns, table)
						kernel += strings.Count(text, "\n-A KUBE-")
					}
					assert.Equal(t, strconv.Itoa(kernel), info[datapath.InfoStateObjects], "rules in KUBE-* chains in the kernel")
				})
			}
		})
	}
}
