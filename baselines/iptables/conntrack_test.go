package iptables

import (
	"testing"

	"svclab/baselines/internal/baselinetest"
)

// UDP conntrack entries of a removed endpoint are cleaned on Apply, for
// every iptables variant (see baselinetest.UDPConntrackCleanup).
func TestPrivilegedUDPConntrackCleanup(t *testing.T) {
	requireRoot(t)
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			requireInstalled(t, v)
			baselinetest.UDPConntrackCleanup(t, &Datapath{v: v})
		})
	}
}
