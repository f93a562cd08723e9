package nftables

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
)

// TestPrivilegedScaleApply times Apply of N services x 12 endpoints, then a
// second Apply in which one service lost one endpoint (the partial sync
// every endpoint change costs). It is a measurement, so it only runs when
// SVCLAB_NFT_SCALE names the service counts ("1000,3000"); the times are
// logged (go test -v). The kernel's rule count is checked so that a sync
// that silently installed less cannot pass as fast.
func TestPrivilegedScaleApply(t *testing.T) {
	spec := os.Getenv("SVCLAB_NFT_SCALE")
	if spec == "" {
		t.Skip("set SVCLAB_NFT_SCALE=1000,3000 to time Apply at those service counts")
	}
	requireNft(t)
	for _, field := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		require.NoError(t, err, "SVCLAB_NFT_SCALE: %q is not a service count", field)
		require.Positive(t, n, "SVCLAB_NFT_SCALE: service count")
		t.Run(fmt.Sprintf("%d services x 12 endpoints", n), func(t *testing.T) {
			ns := baselinetest.NewNS(t)
			dp := &Datapath{t: nft}
			ctx := context.Background()
			require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR}))
			t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

			st := baselinetest.ScaleState(n, 12)
			start := time.Now()
			require.NoError(t, dp.Apply(ctx, st), "first apply")
			t.Logf("first apply: %v", time.Since(start))
			assert.Equal(t, "full", dp.Info()["sync"], "first apply")

			st.Services[0].Endpoints = st.Services[0].Endpoints[1:]
			start = time.Now()
			require.NoError(t, dp.Apply(ctx, st), "apply after one endpoint left")
			t.Logf("apply after one endpoint left: %v (%s sync)", time.Since(start), dp.Info()["sync"])
			assert.Equal(t, "partial", dp.Info()["sync"], "apply after one endpoint left")

			want, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, nil)
			require.NoError(t, err)
			assert.Equal(t, want.rules, listTable(t, ns).rules, "rules in the kernel's table")
		})
	}
}
