package nftables

import (
	"testing"

	"svclab/baselines/internal/baselinetest"
	"svclab/baselines/internal/kubeproxy"
)

// UDP conntrack entries of a removed endpoint are cleaned on Apply, in
// both families (see baselinetest.UDPConntrackCleanup): the IPv6 case sends
// real IPv6 datagrams through the ip6 table's DNAT.
func TestPrivilegedUDPConntrackCleanup(t *testing.T) {
	requireNft(t)
	for _, fam := range kubeproxy.Families {
		t.Run(fam.String(), func(t *testing.T) {
			baselinetest.UDPConntrackCleanup(t, &Datapath{t: nft}, fam == kubeproxy.IPv6)
		})
	}
}
