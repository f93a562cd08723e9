package nftables

import (
	"context"
	"net/netip"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
)

// TestPrivilegedStateObjects checks that Info's state_objects is the rule
// count ("rules"), that this is what the renderer wrote, and that the
// kernel's table holds that many rules.
func TestPrivilegedStateObjects(t *testing.T) {
	requireNft(t)
	baselinetest.CheckRootUnchanged(t, "nftables ruleset", rootRuleset)
	f, err := datapath.Lookup(Name)
	require.NoError(t, err)
	require.NoError(t, f.Probe(), "probe")
	ns := baselinetest.NewNS(t)
	dp := f.New()
	ctx := context.Background()
	require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR, ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12")}))
	t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

	tests := []struct {
		name string
		st   datapath.State
	}{
		{"3 services x 2 endpoints", baselinetest.ThreeByTwo()},
		{"web with 12 endpoints", datapath.State{Services: []datapath.Service{baselinetest.WebService(12)}}},
		{"empty", datapath.State{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, dp.Apply(ctx, tt.st))
			info := dp.Info()
			assert.Equal(t, info["rules"], info[datapath.InfoStateObjects])
			assert.NotContains(t, info, datapath.InfoStateBytes, "nftables rule memory is not readable")

			want, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, tt.st, nil)
			require.NoError(t, err)
			assert.Equal(t, strconv.Itoa(want.rules), info[datapath.InfoStateObjects], "rules rendered")
			assert.Equal(t, strconv.Itoa(listTable(t, ns).rules), info[datapath.InfoStateObjects], "rules in the kernel's table")
		})
	}
}
