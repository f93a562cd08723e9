package twin6

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"svclab/datapath"
)

func TestAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.96.0.10", "fd00:10:96::10"},
		{"10.244.1.3", "fd00:10:244:1::3"},
		{"255.255.255.255", "fd00:255:255:255::255"},
		{"fd00::1", "fd00::1"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			assert.Equal(t, netip.MustParseAddr(tt.want), Addr(netip.MustParseAddr(tt.in)))
		})
	}
}

func TestPrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.244.0.0/16", "fd00:10:244::/48"},
		{"10.244.1.0/24", "fd00:10:244:1::/64"},
		{"10.0.0.0/8", "fd00:10::/32"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p := Prefix(netip.MustParsePrefix(tt.in))
			assert.Equal(t, netip.MustParsePrefix(tt.want), p)
			assert.True(t, p.Contains(Addr(netip.MustParsePrefix(tt.in).Addr().Next())), "the twin prefix holds the twins of its addresses")
		})
	}
	assert.False(t, Prefix(netip.MustParsePrefix("10.244.0.0/16")).Contains(Addr(netip.MustParseAddr("10.96.0.10"))))
}

func TestState(t *testing.T) {
	in := datapath.State{Services: []datapath.Service{{Namespace: "a", Name: "b", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Endpoints: []datapath.Endpoint{{Pod: "p", Addr: netip.MustParseAddr("10.244.1.1"), Ready: true}}}}}
	out := State(in)
	assert.Equal(t, netip.MustParseAddr("fd00:10:96::10"), out.Services[0].ClusterIP)
	assert.Equal(t, netip.MustParseAddr("fd00:10:244:1::1"), out.Services[0].Endpoints[0].Addr)
	assert.Equal(t, "p", out.Services[0].Endpoints[0].Pod)
	assert.Equal(t, netip.MustParseAddr("10.244.1.1"), in.Services[0].Endpoints[0].Addr, "the input is not changed")
}
