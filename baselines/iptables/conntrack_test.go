package iptables

import (
	"testing"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
)

// UDP conntrack entries of a removed endpoint are cleaned on Apply, for
// every iptables variant and both families (see
// baselinetest.UDPConntrackCleanup): the IPv6 case sends real IPv6
// datagrams through ip6tables' DNAT to a service's IPv6 ClusterIP.
func TestPrivilegedUDPConntrackCleanup(t *testing.T) {
	requireRoot(t)
	for _, v := range variants {
		for _, fam := range kubeproxy.Families {
			t.Run(v.name+"/"+fam.String(), func(t *testing.T) {
				requireInstalled(t, v)
				baselinetest.UDPConntrackCleanup(t, &Datapath{v: v}, fam == kubeproxy.IPv6)
			})
		}
	}
}
