package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/harness/internal/rawsys"
	"svclab/internal/child"
	"svclab/internal/nsutil"
)

// ServerSpec tells the backend server process what to listen on. One
// process serves every backend pod (a listener per pod namespace): one
// runtime per pod would make the end hosts, not the datapath, the
// bottleneck on a small machine.
type ServerSpec struct {
	Listeners []Listener `json:"listeners"`
	// Loops is the number of event loops (threads); 0 means half the CPUs
	// (see defaultLoops).
	Loops int `json:"loops,omitempty"`
	// SharedListeners makes every loop wait on one listening socket per
	// pod (EPOLLEXCLUSIVE) instead of giving each loop its own
	// SO_REUSEPORT socket per pod. The default (per-loop sockets) measured
	// faster: the kernel spreads connections over the loops by hash,
	// without waking a loop for a connection another one takes.
	SharedListeners bool `json:"shared_listeners,omitempty"`
}

// Listener is one backend pod's address: the server answers TCP and UDP on
// it.
type Listener struct {
	Pod string `json:"pod"`
	// NetNS is the pod's named network namespace; empty means the server
	// process's own namespace.
	NetNS string `json:"netns"`
	// Addr is ip:port, IPv4 ("10.244.0.5:8080") or IPv6
	// ("[fd00::5]:8080"); port 0 picks a free one (tests). An IPv6
	// listener takes only IPv6 (IPV6_V6ONLY): a pod with both families
	// has one listener per family.
	Addr string `json:"addr"`
}

// Response returns the HTTP/1.1 reply a backend sends over TCP: valid HTTP
// so that curl or wrk can be pointed at a service too, naming the pod in a
// header and in the body so the client can count the per-backend
// distribution.
func Response(pod string) []byte {
	body := UDPResponse(pod)
	return []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\nX-Svclab-Pod: %s\r\n\r\n%s", len(body), pod, body))
}

// UDPResponse returns the datagram a backend sends back for any datagram it
// receives: the pod's name and a newline.
func UDPResponse(pod string) []byte { return []byte(pod + "\n") }

// Serve runs the backend server: it opens every listener, writes "ready" on
// ready, and serves until the process is killed.
//
// Per connection it reads the request up to the blank line, writes
// Response(pod), and then waits for the client to close first: only after
// reading EOF does it close its side, so TIME_WAIT stays with the client
// (as with netperf's TCP_CRR) and never piles up in the backend namespaces,
// where it would collide with later connections' tuples. Every UDP
// datagram is answered with UDPResponse(pod) from the socket it arrived on,
// i.e. from the pod's address and port.
func Serve(spec ServerSpec, ready io.Writer) error {
	s, err := newServer(spec)
	if err != nil {
		return err
	}
	s.start()
	if _, err := fmt.Fprintln(ready, "ready"); err != nil {
		s.close()
		return err
	}
	s.wg.Wait()
	return nil
}

// Bounds on what a client may send before the server gives up on it.
const maxRequest = 64 << 10

// Epoll user data: the kind of descriptor in the upper 32 bits, the fd (or
// the index of a listening socket) in the lower.
const (
	kindConn uint64 = iota << 32
	kindListener
	kindUDP
	kindWake
)

// defaultLoops is how many event loops the client and the server each run:
// half the CPUs, at least one. They share the machine, and on 2 CPUs one
// loop each cost 10-20% less CPU per connection than one loop per CPU each
// (fewer threads than CPUs: fewer context switches, fuller epoll batches).
func defaultLoops() int { return max(1, runtime.NumCPU()/2) }

// server is the event-driven backend: one epoll loop per thread, each with
// its own listening sockets (SO_REUSEPORT) for every pod, and connections
// handled start to end by the loop that accepted them, without locks or
// allocation.
type server struct {
	loops []*serverLoop
	// socks are every socket opened at setup, closed by close.
	socks []int
	// addrs are the bound addresses, in spec order (with the picked port
	// when the spec said 0).
	addrs []netip.AddrPort
	wake  int
	stop  atomic.Bool
	wg    sync.WaitGroup
}

type podSock struct {
	fd   int
	resp []byte
	// pktinfo: a UDP socket bound to the IPv4 wildcard, which learns each
	// datagram's destination (IP_PKTINFO) and sends the reply from it.
	pktinfo bool
}

type serverLoop struct {
	ep    int
	tcp   []podSock
	udp   []podSock
	conns []srvConn // indexed by fd
	buf   []byte
	evs   []unix.EpollEvent
	// UDP batches: received datagrams and the replies to them.
	in, out []unix.Mmsghdr
	inIov   []unix.Iovec
	// names are the datagrams' sources, where the replies go: room for
	// an IPv6 sockaddr, so one batch buffer serves sockets of both
	// families (the kernel says in msg_namelen which it wrote).
	names []unix.RawSockaddrInet6
	// ctls hold each datagram's IP_PKTINFO on wildcard sockets.
	ctls   [][]byte
	bufs   [][]byte
	outIov []unix.Iovec
}

// srvConn is the state of one accepted connection.
type srvConn struct {
	resp  []byte // nil: no connection on this fd
	off   int    // bytes of resp written
	got   int    // request bytes read
	match uint8  // bytes of "\r\n\r\n" seen so far
	added bool   // registered with epoll
	out   bool   // waiting for EPOLLOUT to finish the response
}

const udpBatch = 32

func newServer(spec ServerSpec) (_ *server, err error) {
	if len(spec.Listeners) == 0 {
		return nil, errors.New("serve: listeners: none given")
	}
	nloops := spec.Loops
	if nloops <= 0 {
		nloops = defaultLoops()
	}
	s := &server{wake: -1}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	for range nloops {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("serve: epoll_create1: %w", err)
		}
		s.socks = append(s.socks, ep)
		l := &serverLoop{ep: ep, buf: make([]byte, 4096), evs: make([]unix.EpollEvent, 128)}
		l.initUDP()
		s.loops = append(s.loops, l)
	}
	// With shared listeners one socket per pod serves every loop.
	perPod := nloops
	if spec.SharedListeners {
		perPod = 1
	}
	for i, ln := range spec.Listeners {
		ap, err := listenAddr(ln.Addr)
		if err != nil {
			return nil, fmt.Errorf("serve: listeners[%d].addr %q: %w", i, ln.Addr, err)
		}
		var tcp, udp []int
		open := func() error {
			var err error
			tcp, udp, ap, err = openPodSockets(ap, perPod)
			return err
		}
		if ln.NetNS == "" {
			err = open()
		} else {
			var ns *nsutil.NS
			if ns, err = nsutil.Open(ln.NetNS); err != nil {
				return nil, fmt.Errorf("serve: listeners[%d]: %w", i, err)
			}
			// A socket belongs to the namespace it was created in,
			// whichever thread uses it later.
			err = ns.Do(open)
			h := ns.Handle()
			h.Close()
		}
		s.socks = append(s.socks, tcp...)
		s.socks = append(s.socks, udp...)
		if err != nil {
			return nil, fmt.Errorf("serve: listeners[%d] (%s, netns %q): %w", i, ln.Addr, ln.NetNS, err)
		}
		s.addrs = append(s.addrs, ap)
		resp, body := Response(ln.Pod), UDPResponse(ln.Pod)
		for j, l := range s.loops {
			k := j % perPod
			flags := uint32(unix.EPOLLIN)
			if spec.SharedListeners {
				// Wake one loop per connection, not all of them.
				flags |= unix.EPOLLEXCLUSIVE
			}
			if e := rawsys.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, tcp[k], flags, kindListener|uint64(len(l.tcp))); e != 0 {
				return nil, fmt.Errorf("serve: epoll_ctl listener: %w", e)
			}
			l.tcp = append(l.tcp, podSock{fd: tcp[k], resp: resp})
			if e := rawsys.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, udp[k], flags, kindUDP|uint64(len(l.udp))); e != 0 {
				return nil, fmt.Errorf("serve: epoll_ctl udp socket: %w", e)
			}
			l.udp = append(l.udp, podSock{fd: udp[k], resp: body, pktinfo: ap.Addr() == netip.IPv4Unspecified()})
		}
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("serve: eventfd: %w", err)
	}
	s.wake = wake
	for _, l := range s.loops {
		if e := rawsys.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, wake, unix.EPOLLIN, kindWake); e != 0 {
			return nil, fmt.Errorf("serve: epoll_ctl eventfd: %w", e)
		}
	}
	return s, nil
}

// listenAddr parses a listener's ip:port. An IPv4-mapped IPv6 address
// means its IPv4 address (an IPv6-only socket could not take it); a zone
// is refused, since a pod address is never link-local.
func listenAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, errors.New("not an ip:port (IPv6 in brackets)")
	}
	if ap.Addr().Zone() != "" {
		return ap, errors.New("IPv6 zone not supported")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// openPodSockets opens n TCP listening sockets and n UDP sockets on ap in
// the calling thread's namespace, all in one SO_REUSEPORT group per
// protocol. Port 0 picks a port free for both protocols.
func openPodSockets(ap netip.AddrPort, n int) (tcp, udp []int, _ netip.AddrPort, err error) {
	closeAll := func() {
		for _, fd := range append(tcp, udp...) {
			unix.Close(fd)
		}
		tcp, udp = nil, nil
	}
	for attempt := 0; ; attempt++ {
		want := ap
		for range n {
			fd, err := bindSocket(unix.SOCK_STREAM, want)
			if err != nil {
				closeAll()
				return nil, nil, ap, err
			}
			tcp = append(tcp, fd)
			if want.Port() == 0 {
				sa, err := unix.Getsockname(fd)
				if err != nil {
					closeAll()
					return nil, nil, ap, fmt.Errorf("getsockname: %w", err)
				}
				switch sa := sa.(type) {
				case *unix.SockaddrInet4:
					want = netip.AddrPortFrom(want.Addr(), uint16(sa.Port))
				case *unix.SockaddrInet6:
					want = netip.AddrPortFrom(want.Addr(), uint16(sa.Port))
				}
			}
			// A backlog as deep as the kernel allows (somaxconn caps it):
			// bursts of SYNs must not overflow it.
			if err := unix.Listen(fd, 65535); err != nil {
				closeAll()
				return nil, nil, ap, fmt.Errorf("listen: %w", err)
			}
		}
		for range n {
			fd, err := bindSocket(unix.SOCK_DGRAM, want)
			if err != nil {
				closeAll()
				// The port picked for TCP may be taken for UDP: try another.
				if ap.Port() == 0 && errors.Is(err, unix.EADDRINUSE) && attempt < 20 {
					break
				}
				return nil, nil, ap, err
			}
			udp = append(udp, fd)
		}
		if len(udp) == n {
			return tcp, udp, want, nil
		}
	}
}

// bindSocket opens a non-blocking socket of ap's family and binds it to
// ap, in the SO_REUSEPORT group of that address and port. An IPv6 socket
// is IPV6_V6ONLY: bound to an IPv6 address it takes only IPv6 anyway, and
// the option keeps an unspecified address ([::]) from also claiming the
// IPv4 port.
func bindSocket(typ int, ap netip.AddrPort) (int, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr
	if ap.Addr().Is6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
	} else {
		sa = &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	fd, e := rawsys.SocketFamily(family, typ)
	if e != 0 {
		return -1, fmt.Errorf("socket: %w", e)
	}
	opts := []struct{ level, opt int }{{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}}
	if family == unix.AF_INET6 {
		opts = append(opts, struct{ level, opt int }{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY})
	}
	if typ == unix.SOCK_DGRAM && ap.Addr() == netip.IPv4Unspecified() {
		// A wildcard UDP socket (a pod with extra AnyIP addresses) must
		// answer from the address each datagram was sent to, not from
		// the one routing would pick: it asks for the destination.
		opts = append(opts, struct{ level, opt int }{unix.IPPROTO_IP, unix.IP_PKTINFO})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("setsockopt: %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", ap, err)
	}
	return fd, nil
}

func (s *server) start() {
	for _, l := range s.loops {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			l.run(&s.stop)
		}()
	}
}

// close stops the loops and closes every socket, connections included.
func (s *server) close() {
	s.stop.Store(true)
	if s.wake >= 0 {
		var one = [8]byte{1}
		_, _ = unix.Write(s.wake, one[:])
	}
	s.wg.Wait()
	for _, l := range s.loops {
		for fd := range l.conns {
			if l.conns[fd].resp != nil {
				rawsys.Close(fd)
			}
		}
	}
	for _, fd := range s.socks {
		unix.Close(fd)
	}
	if s.wake >= 0 {
		unix.Close(s.wake)
	}
	s.socks, s.wake = nil, -1
}

func (l *serverLoop) initUDP() {
	l.in = make([]unix.Mmsghdr, udpBatch)
	l.out = make([]unix.Mmsghdr, udpBatch)
	l.inIov = make([]unix.Iovec, udpBatch)
	l.outIov = make([]unix.Iovec, udpBatch)
	l.names = make([]unix.RawSockaddrInet6, udpBatch)
	l.bufs = make([][]byte, udpBatch)
	l.ctls = make([][]byte, udpBatch)
	for i := range udpBatch {
		l.ctls[i] = make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
		l.bufs[i] = make([]byte, 2048)
		l.inIov[i].Base = &l.bufs[i][0]
		l.inIov[i].SetLen(len(l.bufs[i]))
		l.in[i].Hdr.Iov = &l.inIov[i]
		l.in[i].Hdr.Iovlen = 1
		l.in[i].Hdr.Name = (*byte)(unsafe.Pointer(&l.names[i]))
		l.out[i].Hdr.Iov = &l.outIov[i]
		l.out[i].Hdr.Iovlen = 1
		l.out[i].Hdr.Name = (*byte)(unsafe.Pointer(&l.names[i]))
	}
}

func (l *serverLoop) run(stop *atomic.Bool) {
	// The loop owns its thread: nothing else is scheduled between its
	// system calls.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for !stop.Load() {
		n, err := rawsys.EpollWait(l.ep, l.evs, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			fmt.Fprintf(os.Stderr, "svclab server: epoll_wait: %v\n", err)
			return
		}
		for i := range n {
			d := rawsys.EpollData(&l.evs[i])
			idx := int(uint32(d))
			switch d &^ 0xffffffff {
			case kindConn:
				l.serve(idx, l.evs[i].Events)
			case kindListener:
				l.accept(l.tcp[idx])
			case kindUDP:
				l.answerUDP(l.udp[idx])
			case kindWake:
			}
		}
	}
}

func (l *serverLoop) accept(ln podSock) {
	// Level-triggered: a bounded batch keeps one busy pod from starving
	// the others; what is left is reported again.
	for range 64 {
		fd, e := rawsys.Accept(ln.fd)
		switch e {
		case 0:
		case unix.EINTR, unix.ECONNABORTED:
			continue
		default: // EAGAIN, or EMFILE and the like: retried on the next report
			return
		}
		for fd >= len(l.conns) {
			l.conns = append(l.conns, make([]srvConn, max(fd+1-len(l.conns), 1024))...)
		}
		l.conns[fd] = srvConn{resp: ln.resp}
		// The request is usually there already: read it now rather than
		// after a round through epoll.
		l.serve(fd, 0)
	}
}

// serve advances one connection: read the request, answer, then read until
// the client's EOF and close. Registration is edge-triggered: every read
// that returns less than the buffer has emptied the socket, and more data
// or the FIN raises a new edge.
// serve handles readiness of a connection; ev is the epoll event mask (0
// right after accept, before the connection is in epoll: adding it then
// reports whatever is still pending).
func (l *serverLoop) serve(fd int, ev uint32) {
	c := &l.conns[fd]
	if c.resp == nil {
		return
	}
	eof := false
	for {
		m, e := rawsys.Read(fd, l.buf)
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN {
			break
		}
		if e != 0 {
			l.closeConn(fd)
			return
		}
		if m == 0 {
			eof = true
			break
		}
		if c.match < 4 {
			c.match = scanBlankLine(l.buf[:m], c.match)
			c.got += m
			if c.match < 4 && c.got > maxRequest {
				l.closeConn(fd)
				return
			}
		}
		// A short read drained the socket, unless the peer's FIN came
		// with this edge (EPOLLRDHUP): edge-triggered epoll will not
		// report it again, so read on to the EOF.
		if m < len(l.buf) && ev&unix.EPOLLRDHUP == 0 {
			break
		}
	}
	if c.match == 4 && c.off < len(c.resp) {
		n, e := rawsys.Write(fd, c.resp[c.off:])
		switch {
		case e == 0:
			c.off += n
		case e != unix.EAGAIN && e != unix.EINTR:
			l.closeConn(fd)
			return
		}
	}
	if eof {
		// The client closed (normally after reading the reply).
		l.closeConn(fd)
		return
	}
	wantOut := c.off < len(c.resp) && c.match == 4
	if !c.added || wantOut != c.out {
		ev := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET)
		if wantOut {
			ev |= unix.EPOLLOUT
		}
		op := unix.EPOLL_CTL_ADD
		if c.added {
			op = unix.EPOLL_CTL_MOD
		}
		if e := rawsys.EpollCtl(l.ep, op, fd, ev, kindConn|uint64(fd)); e != 0 {
			l.closeConn(fd)
			return
		}
		c.added, c.out = true, wantOut
	}
}

func (l *serverLoop) closeConn(fd int) {
	l.conns[fd] = srvConn{}
	rawsys.Close(fd)
}

// scanBlankLine advances the match of "\r\n\r\n" over b and returns how
// much of it is matched (4: found).
func scanBlankLine(b []byte, match uint8) uint8 {
	const term = "\r\n\r\n"
	for _, ch := range b {
		switch {
		case ch == term[match]:
			match++
			if match == 4 {
				return 4
			}
		case ch == '\r':
			match = 1
		default:
			match = 0
		}
	}
	return match
}

// answerUDP answers every queued datagram, in batches of recvmmsg and
// sendmmsg: a reply goes to each datagram's source from the socket it came
// in on. A socket bound to the pod's own address replies from it, in
// either family; a wildcard one (a pod with extra addresses) replies from
// each datagram's destination, which IP_PKTINFO told it. Either way the
// reply's source is the address and port the datagram was sent to.
func (l *serverLoop) answerUDP(s podSock) {
	for range 8 {
		for i := range l.in {
			l.in[i].Hdr.Namelen = unix.SizeofSockaddrInet6
			if s.pktinfo {
				l.in[i].Hdr.Control = &l.ctls[i][0]
				l.in[i].Hdr.SetControllen(len(l.ctls[i]))
			} else {
				l.in[i].Hdr.Control = nil
				l.in[i].Hdr.SetControllen(0)
			}
		}
		n, e := rawsys.Recvmmsg(s.fd, l.in)
		if e != 0 || n <= 0 {
			return
		}
		for i := range n {
			// The source as the kernel wrote it: a sockaddr_in or a
			// sockaddr_in6, per the socket's family.
			l.out[i].Hdr.Namelen = l.in[i].Hdr.Namelen
			l.outIov[i].Base = unsafe.SliceData(s.resp)
			l.outIov[i].SetLen(len(s.resp))
			l.out[i].Hdr.Control = nil
			l.out[i].Hdr.SetControllen(0)
			if s.pktinfo {
				replyFrom(&l.in[i].Hdr, &l.out[i].Hdr)
			}
		}
		for sent := 0; sent < n; {
			m, e := rawsys.Sendmmsg(s.fd, l.out[sent:n])
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN || e == unix.ENOBUFS:
				// A full socket buffer: drop the replies, as a loaded
				// server would.
				sent = n
			case e != 0 || m <= 0:
				// This one reply cannot be sent (its destination is
				// unreachable, say): skip it, send the others.
				sent++
			default:
				sent += m
			}
		}
		if n < len(l.in) {
			return
		}
	}
}

// replyFrom makes the reply out leave from the destination address of the
// datagram in: its IP_PKTINFO goes back with the destination as the source
// (ipi_spec_dst) and no interface forced (routing picks it). Without the
// control message the reply goes out as routing decides.
func replyFrom(in, out *unix.Msghdr) {
	if in.Controllen < uint64(unix.CmsgSpace(unix.SizeofInet4Pktinfo)) {
		return
	}
	ctl := unsafe.Slice(in.Control, in.Controllen)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
	if h.Level != unix.IPPROTO_IP || h.Type != unix.IP_PKTINFO {
		return
	}
	pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&ctl[unix.CmsgLen(0)]))
	pi.Spec_dst, pi.Ifindex = pi.Addr, 0
	out.Control = in.Control
	out.SetControllen(int(in.Controllen))
}

// ServerProcess is a running backend server.
type ServerProcess struct {
	cmd *exec.Cmd
}

// BackendListeners returns a listener on port in every backend pod, and a
// second one on the pod's IPv6 address when it has one; both answer with
// the pod's name. With anyAddr (a topology with extra endpoints) the IPv4
// listener is the wildcard 0.0.0.0:port of the pod's namespace, so that it
// also takes the pod's extra (AnyIP) addresses.
func BackendListeners(backends []datapath.Pod, port uint16, anyAddr bool) ServerSpec {
	var spec ServerSpec
	for _, b := range backends {
		addr := b.Addr
		if anyAddr {
			addr = netip.IPv4Unspecified()
		}
		spec.Listeners = append(spec.Listeners, Listener{Pod: b.Name, NetNS: b.NS.Name, Addr: netip.AddrPortFrom(addr, port).String()})
		if b.Addr6.IsValid() {
			spec.Listeners = append(spec.Listeners, Listener{Pod: b.Name, NetNS: b.NS.Name, Addr: netip.AddrPortFrom(b.Addr6, port).String()})
		}
	}
	return spec
}

// StartServer starts the backend server as a child process, forked in ns and
// born in the cgroup v2 directory cgroupDir, and waits until every listener
// is open.
func StartServer(ns *nsutil.NS, cgroupDir string, spec ServerSpec) (_ *ServerProcess, err error) {
	cmd, err := child.Command(context.Background(), RoleServe, spec, child.NoAsyncPreempt)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := child.Start(cmd, ns, cgroupDir); err != nil {
		return nil, err
	}
	s := &ServerProcess{cmd: cmd}
	line := make(chan string, 1)
	go func() {
		r := bufio.NewReader(out)
		l, _ := r.ReadString('\n')
		line <- strings.TrimSpace(l)
		_, _ = io.Copy(io.Discard, r)
	}()
	select {
	case l := <-line:
		if l != "ready" {
			_ = s.Stop()
			return nil, fmt.Errorf("backend server did not start (said %q)", l)
		}
	case <-time.After(30 * time.Second):
		_ = s.Stop()
		return nil, errors.New("backend server: not ready after 30s")
	}
	return s, nil
}

// Stop kills the server and reaps it.
func (s *ServerProcess) Stop() error {
	if s == nil || s.cmd.Process == nil {
		return nil
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	return nil
}
