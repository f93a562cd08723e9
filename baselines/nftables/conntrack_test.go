package nftables

import (
	"testing"

	"svclab/baselines/internal/baselinetest"
)

// UDP conntrack entries of a removed endpoint are cleaned on Apply (see
// baselinetest.UDPConntrackCleanup).
func TestPrivilegedUDPConntrackCleanup(t *testing.T) {
	requireNft(t)
	baselinetest.UDPConntrackCleanup(t, &Datapath{t: nft})
}
