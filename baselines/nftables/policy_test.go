package nftables

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
)

// internalTrafficPolicy Local as kube-proxy's nftables mode renders it: a
// local-… chain over the node's endpoints, a drop verdict in
// no-endpoint-services where the node has none, the reject chain where the
// service has none at all.
func TestRenderInternalTrafficPolicyLocal(t *testing.T) {
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, baselinetest.LocalPolicyState(), nil)
	require.NoError(t, err)
	baselinetest.CheckGolden(t, "internal_traffic_policy_local", r.text)
	text := string(r.text)
	tests := []struct {
		name, want string
		present    bool
	}{
		{"local chain", "goto local-", true},
		{"no cluster chain for a Local service", "chain service-", false},
		{"node-1's endpoint left out", "10.244.1.2", false},
		{"node-0's endpoints", "10.244.1.3", true},
		{"drop without local endpoints", "10.96.0.53 . udp . 53 comment \"kube-system/dns/udp/dns\" : drop", true},
		{"reject without endpoints", "10.96.0.20 . tcp . 80 comment \"bench/empty/tcp/http\" : goto reject-chain", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.present, strings.Contains(text, tt.want), "%q in:\n%s", tt.want, text)
		})
	}
}
