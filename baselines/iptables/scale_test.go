package iptables

import (
	"context"
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

// scaleEnv names the variable that enables TestPrivilegedScaleApply and
// sets its service count (e.g. SVCLAB_IPT_SCALE=1000). It is off by default:
// at 1,000 services a full sync through the nft backend takes seconds.
const scaleEnv = "SVCLAB_IPT_SCALE"

// scaleEndpoints is the endpoint count per service of the scale test.
const scaleEndpoints = 12

// withoutLastEndpoint returns st with service i's last endpoint removed
// (the other services keep sharing the original slice).
func withoutLastEndpoint(st datapath.State, i int) datapath.State {
	out := datapath.State{Services: append([]datapath.Service(nil), st.Services...)}
	eps := out.Services[i].Endpoints
	out.Services[i].Endpoints = eps[: len(eps)-1 : len(eps)-1]
	return out
}

// TestPrivilegedScaleApply times, per restore backend, the first Apply of
// SVCLAB_IPT_SCALE services × 12 endpoints, then an Apply that removes one
// endpoint of one service, then a re-Apply of an unchanged state. It only
// logs the times; the kernel's rule count is checked so a fast but wrong
// sync cannot pass.
func TestPrivilegedScaleApply(t *testing.T) {
	v := os.Getenv(scaleEnv)
	if v == "" {
		t.Skipf("set %s=<services> to time Apply at scale", scaleEnv)
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "%s=%q: want a service count", scaleEnv, v)
	require.True(t, n > 0 && n <= 65000, "%s=%d: want 1 to 65000 services (10.96.0.0/16)", scaleEnv, n)
	requireRoot(t)

	st := baselinetest.ScaleState(n, scaleEndpoints)
	changed := withoutLastEndpoint(st, n/2)
	for _, v := range variants {
		if v.name == "iptables" {
			continue // the system default is one of the other two
		}
		t.Run(v.name, func(t *testing.T) {
			requireInstalled(t, v)
			ns := baselinetest.NewNS(t)
			dp := &Datapath{v: v}
			ctx := context.Background()
			require.NoError(t, dp.Setup(ctx, &datapath.Env{Node: ns, PodCIDR: baselinetest.PodCIDR}))
			t.Cleanup(func() { assert.NoError(t, dp.Close(), "cleanup close") })

			steps := []struct {
				name string
				st   datapath.State
			}{
				{"first Apply", st},
				{"one endpoint removed", changed},
				{"unchanged re-Apply", changed},
				{"one endpoint back", st},
			}
			for _, s := range steps {
				start := time.Now()
				require.NoError(t, dp.Apply(ctx, s.st), s.name)
				took := time.Since(start)
				info := dp.Info()
				t.Logf("%s: %d services x %d endpoints: %s: %v (sync %q)", v.name, n, scaleEndpoints, s.name, took.Round(time.Millisecond), info["sync"])
			}
			want, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, st, nil)
			require.NoError(t, err)
			text, _ := saveChains(t, v, ns, tableNAT)
			kernel := strings.Count(text, "\n-A KUBE-")
			assert.Equal(t, want.rules, kernel, "KUBE-* rules in the kernel after the last Apply")
		})
	}
}
