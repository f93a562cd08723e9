// Package rawsys holds the raw system calls of the load generator's and the
// backend server's event loops.
//
// The x/sys/unix wrappers return a Sockaddr interface (allocated on every
// accept or recvfrom) and box errors; these take raw sockaddrs and return
// the errno, so a loop allocates nothing per connection or datagram. Calls
// that never block (the sockets are non-blocking) use RawSyscall and skip
// the scheduler's system-call bookkeeping; epoll_wait, the one call that
// blocks, goes through unix.EpollWait so the Go runtime can hand its P to
// another thread meanwhile.
package rawsys

import (
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket opens a non-blocking IPv4 socket of type typ.
func Socket(typ int) (int, unix.Errno) { return SocketFamily(unix.AF_INET, typ) }

// SocketFamily opens a non-blocking socket of family (AF_INET or
// AF_INET6) and type typ.
func SocketFamily(family, typ int) (int, unix.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), uintptr(typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC), 0)
	return int(r), e
}

func Connect(fd int, sa *unix.RawSockaddrInet4) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(sa)), unix.SizeofSockaddrInet4)
	return e
}

// Accept accepts a connection as a non-blocking socket, without asking
// for the peer's address.
func Accept(lfd int) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	return int(r), e
}

func Read(fd int, b []byte) (int, unix.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(r), e
}

func Write(fd int, b []byte) (int, unix.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(r), e
}

func Close(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func Sendto(fd int, b []byte, sa *unix.RawSockaddrInet4) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		0, uintptr(unsafe.Pointer(sa)), unix.SizeofSockaddrInet4)
	return int(r), e
}

// Recvfrom receives one datagram and its source address into sa.
func Recvfrom(fd int, b []byte, sa *unix.RawSockaddrInet4) (int, unix.Errno) {
	salen := uint32(unix.SizeofSockaddrInet4)
	r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		0, uintptr(unsafe.Pointer(sa)), uintptr(unsafe.Pointer(&salen)))
	return int(r), e
}

func Recvmmsg(fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(msgs))), uintptr(len(msgs)),
		unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

func Sendmmsg(fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(msgs))), uintptr(len(msgs)),
		unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

func EpollCtl(ep, op, fd int, events uint32, data uint64) unix.Errno {
	ev := unix.EpollEvent{Events: events}
	*(*uint64)(unsafe.Pointer(&ev.Fd)) = data
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	return e
}

// EpollData returns the 64-bit user data of an event (x/sys/unix splits it
// into Fd and Pad).
func EpollData(ev *unix.EpollEvent) uint64 {
	return *(*uint64)(unsafe.Pointer(&ev.Fd))
}

// EpollWait waits for events. It first polls without blocking through a
// raw system call: under load there usually are events, and then the
// runtime's system-call bookkeeping (and sysmon taking the P away from a
// blocked thread) is skipped. Only when nothing is ready does it block.
func EpollWait(ep int, evs []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(unsafe.SliceData(evs))), uintptr(len(evs)), 0, 0, 0)
	if e == 0 && (r > 0 || msec == 0) {
		return int(r), nil
	}
	return unix.EpollWait(ep, evs, msec)
}

// Sockaddr4 is ap (IPv4) as a raw sockaddr.
func Sockaddr4(ap netip.AddrPort) unix.RawSockaddrInet4 {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	// The port is in network byte order.
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	return sa
}

// AddrPort4 is the address and port of a raw IPv4 sockaddr.
func AddrPort4(sa *unix.RawSockaddrInet4) netip.AddrPort {
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
}

// Sockaddr6 is ap (IPv6) as a raw sockaddr.
func Sockaddr6(ap netip.AddrPort) unix.RawSockaddrInet6 {
	sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	return sa
}

// AddrPort6 is the address and port of a raw IPv6 sockaddr.
func AddrPort6(sa *unix.RawSockaddrInet6) netip.AddrPort {
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
}

// Sockaddr is an IPv4 or IPv6 socket address in the kernel's raw form, so
// that one event loop serves either family without the x/sys/unix
// Sockaddr interface (which allocates per call). The zero value is no
// address.
type Sockaddr struct {
	// raw holds a RawSockaddrInet4 or, the larger, a RawSockaddrInet6.
	raw unix.RawSockaddrInet6
	len uint32
}

// SockaddrOf is ap as a raw sockaddr of its family (an IPv4-mapped
// address stays IPv6, as the kernel would take it).
func SockaddrOf(ap netip.AddrPort) Sockaddr {
	var s Sockaddr
	if ap.Addr().Is4() {
		*(*unix.RawSockaddrInet4)(unsafe.Pointer(&s.raw)) = Sockaddr4(ap)
		s.len = unix.SizeofSockaddrInet4
		return s
	}
	s.raw = Sockaddr6(ap)
	s.len = unix.SizeofSockaddrInet6
	return s
}

// Family is AF_INET or AF_INET6 (0 for the zero Sockaddr).
func (s *Sockaddr) Family() int { return int(s.raw.Family) }

// AddrPort is the address and port (the zero AddrPort for another family).
func (s *Sockaddr) AddrPort() netip.AddrPort {
	switch s.raw.Family {
	case unix.AF_INET:
		return AddrPort4((*unix.RawSockaddrInet4)(unsafe.Pointer(&s.raw)))
	case unix.AF_INET6:
		return AddrPort6(&s.raw)
	}
	return netip.AddrPort{}
}

// SameAddrPort reports whether s and o are the same family, address and
// port; IPv6 flow information and scope are not compared (a reply's
// source carries no meaning there for a global address).
func (s *Sockaddr) SameAddrPort(o *Sockaddr) bool {
	if s.raw.Family != o.raw.Family || s.raw.Port != o.raw.Port {
		return false
	}
	if s.raw.Family == unix.AF_INET {
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(&s.raw))
		b := (*unix.RawSockaddrInet4)(unsafe.Pointer(&o.raw))
		return a.Addr == b.Addr
	}
	return s.raw.Addr == o.raw.Addr
}

// ConnectSA connects fd to sa (either family).
func ConnectSA(fd int, sa *Sockaddr) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa.raw)), uintptr(sa.len))
	return e
}

// SendtoSA sends b to sa (either family).
func SendtoSA(fd int, b []byte, sa *Sockaddr) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		0, uintptr(unsafe.Pointer(&sa.raw)), uintptr(sa.len))
	return int(r), e
}

// RecvfromSA receives one datagram and its source address (either family)
// into sa.
func RecvfromSA(fd int, b []byte, sa *Sockaddr) (int, unix.Errno) {
	sa.len = unix.SizeofSockaddrInet6
	r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		0, uintptr(unsafe.Pointer(&sa.raw)), uintptr(unsafe.Pointer(&sa.len)))
	return int(r), e
}

// ErrnoName names an errno as the results do ("ECONNREFUSED"); the names
// are constants, so this does not allocate.
func ErrnoName(e unix.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return "errno-unknown"
}

// Epoch is the origin of the loops' monotonic clock.
var Epoch = time.Now()

// Nanotime is a monotonic clock in nanoseconds (vDSO, no allocation).
func Nanotime() int64 { return int64(time.Since(Epoch)) }
