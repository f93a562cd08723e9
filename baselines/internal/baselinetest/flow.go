package baselinetest

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Packet is what a packet-flow trace over a rendered ruleset matches on.
type Packet struct {
	Proto    string // "tcp" or "udp"
	Src, Dst netip.Addr
	DPort    int
}

// NewPacket is a Packet.
func NewPacket(proto string, src, dst netip.Addr, dport int) Packet {
	return Packet{Proto: proto, Src: src, Dst: dst, DPort: dport}
}

// Flow is where a traced packet ends up: the share of packets per verdict
// (a DNAT to ip:port, a reject), and whether the path to that verdict
// marked it for masquerade.
type Flow struct {
	Prob map[string]float64
	Masq map[string]bool
}

// NewFlow is an empty Flow for a tracer to fill.
func NewFlow() *Flow {
	return &Flow{Prob: map[string]float64{}, Masq: map[string]bool{}}
}

// CheckFlow asserts what a trace found, rest being the share of packets
// that fell through every chain: exactly the verdicts in want are
// reachable, each with the same share, masqueraded exactly where masq says;
// with verdicts nothing falls through, without them everything does.
func CheckFlow(t *testing.T, f *Flow, rest float64, want []string, masq func(verdict string) bool) {
	t.Helper()
	got := make([]string, 0, len(f.Prob))
	for v := range f.Prob {
		got = append(got, v)
	}
	assert.ElementsMatch(t, want, got, "verdicts reachable")
	for _, v := range want {
		assert.InDelta(t, 1/float64(len(want)), f.Prob[v], 1e-9, "share of %s", v)
		assert.Equal(t, masq(v), f.Masq[v], "masquerade on the path to %s", v)
	}
	if len(want) > 0 {
		assert.InDelta(t, 0, rest, 1e-9, "no packet may fall through a service with verdicts")
	} else {
		assert.InDelta(t, 1, rest, 1e-9, "untranslated packets fall through")
	}
}
