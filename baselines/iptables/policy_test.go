package iptables

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
)

// internalTrafficPolicy Local as kube-proxy renders it: a KUBE-SVL chain
// over the node's endpoints, DROP ("has no local endpoints") where the node
// has none, REJECT where the service has none at all.
func TestRenderInternalTrafficPolicyLocal(t *testing.T) {
	r, err := renderSync(kubeproxy.IPv4, baselinetest.PodCIDR, baselinetest.LocalPolicyState(), nil)
	require.NoError(t, err)
	baselinetest.CheckGolden(t, "internal_traffic_policy_local", r.text)
	text := string(r.text)
	tests := []struct {
		name, want string
		present    bool
	}{
		{"local chain", "-A KUBE-SERVICES -m comment --comment \"bench/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10/32 --dport 80 -j KUBE-SVL-", true},
		{"no cluster chain for a Local service", "KUBE-SVC-", false},
		{"node-1's endpoint left out", "10.244.1.2:8080", false},
		{"node-0's endpoints", "10.244.1.3:8080", true},
		{"drop without local endpoints", "\"kube-system/dns:dns has no local endpoints\" -m udp -p udp -d 10.96.0.53/32 --dport 53 -j DROP", true},
		{"reject without endpoints", "\"bench/empty:http has no endpoints\" -m tcp -p tcp -d 10.96.0.20/32 --dport 80 -j REJECT", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.present, strings.Contains(text, tt.want), "%q in:\n%s", tt.want, text)
		})
	}
}
