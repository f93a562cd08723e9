package rawsys

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
)

// A raw sockaddr says the address and port it was made from, in either
// family, and compares by family, address and port only.
func TestSockaddr(t *testing.T) {
	tests := []struct {
		name   string
		ap     string
		family int
	}{
		{"IPv4", "10.96.0.10:53", unix.AF_INET},
		{"IPv6", "[fd00:10:96::a]:53", unix.AF_INET6},
		{"IPv4-mapped stays IPv6", "[::ffff:10.96.0.10]:53", unix.AF_INET6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ap := netip.MustParseAddrPort(tt.ap)
			sa := SockaddrOf(ap)
			assert.Equal(t, tt.family, sa.Family())
			assert.Equal(t, ap, sa.AddrPort())
			same := SockaddrOf(ap)
			assert.True(t, sa.SameAddrPort(&same))
			otherPort := SockaddrOf(netip.AddrPortFrom(ap.Addr(), ap.Port()+1))
			assert.False(t, sa.SameAddrPort(&otherPort), "another port")
			otherAddr := SockaddrOf(netip.AddrPortFrom(ap.Addr().Next(), ap.Port()))
			assert.False(t, sa.SameAddrPort(&otherAddr), "another address")
		})
	}
	v4 := SockaddrOf(netip.MustParseAddrPort("10.96.0.10:53"))
	mapped := SockaddrOf(netip.MustParseAddrPort("[::ffff:10.96.0.10]:53"))
	assert.False(t, v4.SameAddrPort(&mapped), "families differ")
	var zero Sockaddr
	assert.Equal(t, netip.AddrPort{}, zero.AddrPort())
}

func TestSockaddr6RoundTrip(t *testing.T) {
	ap := netip.MustParseAddrPort("[fd00::1]:8080")
	sa := Sockaddr6(ap)
	assert.Equal(t, ap, AddrPort6(&sa))
}
