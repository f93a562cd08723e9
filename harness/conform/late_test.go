package conform

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/harness/internal/harnesstest"
	"svclab/harness/probe"
	"svclab/internal/nsutil"
)

// sendLate's datagram arrives from the source address and port it names,
// in both families, while a socket is bound to that source port (the
// backend's server keeps it).
func TestPrivilegedSendLate(t *testing.T) {
	harnesstest.RequireRoot(t)
	lock := harnesstest.NewRun(t)
	ns, err := nsutil.Create(lock.Prefix + "-late")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	h, err := ns.NetlinkHandle()
	require.NoError(t, err)
	lo, err := h.LinkByName("lo")
	require.NoError(t, err)
	require.NoError(t, h.LinkSetUp(lo))
	h.Close()

	for _, tc := range []struct{ name, src, dst string }{
		{"ipv4", "127.0.0.2:5353", "127.0.0.1:40053"},
		{"ipv6", "[::1]:5353", "[::1]:40053"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
			var server, client net.PacketConn
			require.NoError(t, ns.Do(func() error {
				var err error
				if server, err = net.ListenPacket("udp", src.String()); err != nil {
					return err
				}
				client, err = net.ListenPacket("udp", dst.String())
				return err
			}))
			defer server.Close()
			defer client.Close()
			require.NoError(t, sendLate(ns, src, dst, probe.LatePayload))
			require.NoError(t, client.SetReadDeadline(time.Now().Add(2*time.Second)))
			buf := make([]byte, 64)
			n, from, err := client.ReadFrom(buf)
			require.NoError(t, err, "the datagram must arrive (a bad IPv6 checksum would drop it)")
			assert.Equal(t, string(probe.LatePayload), string(buf[:n]))
			assert.Equal(t, src.String(), netip.MustParseAddrPort(from.String()).String())
		})
	}
}
