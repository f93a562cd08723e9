package conform

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"svclab/internal/nsutil"
)

// sendLate sends one UDP datagram from src to dst out of ns through a raw
// socket. A raw socket needs no bound UDP port, so the backend's server
// keeps listening on src's port while a datagram leaves from it, exactly
// as the backend's own late answer would (same addresses, same path
// through the node).
func sendLate(ns *nsutil.NS, src, dst netip.AddrPort, payload []byte) error {
	// UDP header: source port, destination port, length, checksum. The
	// IPv4 checksum may be 0 (none); for IPv6 the kernel fills it in
	// (IPV6_CHECKSUM below), as it is mandatory there.
	pkt := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(pkt[0:], src.Port())
	binary.BigEndian.PutUint16(pkt[2:], dst.Port())
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)))
	copy(pkt[8:], payload)
	return ns.Do(func() error {
		fam := unix.AF_INET
		var srcSA, dstSA unix.Sockaddr
		if src.Addr().Is4() {
			srcSA, dstSA = &unix.SockaddrInet4{Addr: src.Addr().As4()}, &unix.SockaddrInet4{Addr: dst.Addr().As4()}
		} else {
			fam = unix.AF_INET6
			srcSA, dstSA = &unix.SockaddrInet6{Addr: src.Addr().As16()}, &unix.SockaddrInet6{Addr: dst.Addr().As16()}
		}
		fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		if err != nil {
			return fmt.Errorf("late reply: raw socket: %w", err)
		}
		defer unix.Close(fd)
		if fam == unix.AF_INET6 {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 6); err != nil {
				return fmt.Errorf("late reply: IPV6_CHECKSUM: %w", err)
			}
		}
		// Binding a raw socket only sets the source address.
		if err := unix.Bind(fd, srcSA); err != nil {
			return fmt.Errorf("late reply: bind %s: %w", src.Addr(), err)
		}
		if err := unix.Sendto(fd, pkt, 0, dstSA); err != nil {
			return fmt.Errorf("late reply: send %s -> %s: %w", src, dst, err)
		}
		return nil
	})
}
