package loadgen

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"svclab/harness/internal/rawsys"
	"svclab/results"
)

// Phases of a client run. Every connection (or UDP request) started in
// the measure phase counts, however it ends: in the drain phase no new one
// starts and the loops wait until those still in flight have ended or
// timed out, so that a slow answer, a SYN retransmit or a timeout near the
// window's end is counted, not dropped.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseDrain
	phaseStop
)

// runState is the only state the client's loops share.
type runState struct {
	phase    atomic.Int32
	measured atomic.Int64
	limit    int64
	// warmupStarts counts the warm-up's starts when the run announces its
	// window's edges (ClientSpec.EdgeFD), read at the start edge: those
	// started while the parent snapshots the cost counters fall inside
	// the edges but not in the window. Only then: it is one shared atomic
	// per connection on the generator's hot path.
	warmupStarts atomic.Int64
}

// clientLoop is one event loop of the load generator: an epoll set over
// its slots, each slot holding one connection (or UDP request) in flight
// and, in the closed loop, starting the next as soon as it ends; in the
// open loop a slot waits in free for the schedule's next arrival.
type clientLoop struct {
	spec      *ClientSpec
	rs        *runState
	udp       bool
	longLive  bool
	connected bool // UDPConnected
	// family is the targets' socket family (AF_INET or AF_INET6).
	family   int
	targets  []rawsys.Sockaddr
	ep       int
	slots    []cslot
	evs      []unix.EpollEvent
	rng      *rand.Rand
	timeout  int64
	timeoutK string
	// idle counts slots whose start failed; they are retried on the next
	// turn of the loop.
	idle     int
	lastScan int64
	err      error

	hist        *results.Histogram
	conns       int64
	started     int64
	wrongSource int64
	// lost counts UDP requests of the window that got no reply.
	lost     int64
	errors   map[string]int64
	backends map[string]*int64

	// Open loop only (see runOpenLoop).
	open bool
	arr  *arrivals
	// from and to bound the measured window of intended start times.
	from, to int64
	// free holds the slots with nothing in flight, the last freed on top
	// (so few long-lived UDP sockets get opened).
	free []int32
	// inWindow counts the measured connections in flight (both loops).
	inWindow  int
	scheduled int64
	lag       *results.Histogram
	ts        unix.Timespec
}

type cslot struct {
	fd        int // -1: none
	gen       uint32
	active    bool // a connection or request is in flight
	connected bool
	measured  bool // started in the measure phase (open loop: intended to start in the window)
	start     int64
	// intended is when the connection was meant to start, the origin of
	// its latency: the open loop's schedule time, else start.
	intended int64
	target   int
	n        int
	buf      []byte
	from     rawsys.Sockaddr
}

func newClientLoop(spec *ClientSpec, rs *runState, slots int, seed uint64) (*clientLoop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("client: epoll_create1: %w", err)
	}
	l := &clientLoop{
		spec: spec, rs: rs, ep: ep,
		udp:       spec.Protocol == ProtocolUDP,
		longLive:  spec.Protocol == ProtocolUDP && spec.UDPMode == UDPLongLived,
		connected: spec.Protocol == ProtocolUDP && spec.UDPMode == UDPConnected,
		slots:     make([]cslot, slots),
		evs:       make([]unix.EpollEvent, max(slots, 16)),
		rng:       rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano()))),
		timeout:   int64(spec.Timeout),
		timeoutK:  "ETIMEDOUT",
		hist:      results.NewHistogram(),
		errors:    map[string]int64{},
		backends:  map[string]*int64{},
	}
	if l.udp {
		l.timeoutK = "timeout"
	}
	for _, t := range spec.Targets {
		l.targets = append(l.targets, rawsys.SockaddrOf(t))
	}
	// validate made every target of one family.
	l.family = l.targets[0].Family()
	if spec.Rate > 0 {
		l.open = true
		l.lag = results.NewHistogram()
		l.free = make([]int32, 0, slots)
		for i := slots - 1; i >= 0; i-- {
			l.free = append(l.free, int32(i))
		}
	}
	for i := range l.slots {
		l.slots[i] = cslot{fd: -1, buf: make([]byte, 2048)}
		// The open loop opens long-lived sockets on first use: most of
		// its slots may never be needed.
		if l.longLive && !l.open {
			if err := l.openLongLived(i); err != nil {
				l.close()
				return nil, err
			}
		}
	}
	return l, nil
}

// close releases every socket of the loop.
func (l *clientLoop) close() {
	for i := range l.slots {
		if l.slots[i].fd >= 0 {
			rawsys.Close(l.slots[i].fd)
			l.slots[i].fd = -1
		}
	}
	if l.ep >= 0 {
		unix.Close(l.ep)
		l.ep = -1
	}
}

func (l *clientLoop) data(i int) uint64 { return uint64(l.slots[i].gen)<<32 | uint64(i) }

func (l *clientLoop) openLongLived(i int) error {
	if kind := l.openUDPSlot(i); kind != "" {
		return fmt.Errorf("client: long-lived udp socket: %s", kind)
	}
	return nil
}

// openUDPSlot opens slot i's long-lived socket; it returns the error kind
// on failure.
func (l *clientLoop) openUDPSlot(i int) string {
	s := &l.slots[i]
	fd, e := rawsys.SocketFamily(l.family, unix.SOCK_DGRAM)
	if e != 0 {
		return rawsys.ErrnoName(e)
	}
	s.fd = fd
	s.gen++
	// Level-triggered: one datagram is read per report, and one more
	// queued would simply be reported again.
	if e := rawsys.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN, l.data(i)); e != 0 {
		l.closeSlot(i)
		return rawsys.ErrnoName(e)
	}
	return ""
}

func (l *clientLoop) run() {
	// The loop owns its thread: nothing else is scheduled between its
	// system calls.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for i := range l.slots {
		l.begin(i)
	}
	l.lastScan = rawsys.Nanotime()
	for {
		phase := l.rs.phase.Load()
		if phase == phaseStop || (phase == phaseDrain && l.inWindow == 0) {
			return
		}
		wait := 10 // ms: bounds how late the end of the run and time-outs are noticed
		if l.idle > 0 && phase != phaseDrain {
			l.idle = 0
			for i := range l.slots {
				if !l.slots[i].active {
					l.begin(i)
				}
			}
			if l.idle > 0 {
				wait = 0
			}
		}
		n, err := rawsys.EpollWait(l.ep, l.evs, wait)
		if !l.handle(n, err) {
			return
		}
	}
}

// handle dispatches the n events epoll reported and abandons what timed
// out; false means the loop must end.
func (l *clientLoop) handle(n int, err error) bool {
	if err != nil {
		if err == unix.EINTR {
			return true
		}
		l.err = fmt.Errorf("client: epoll_wait: %w", err)
		l.rs.phase.Store(phaseStop)
		return false
	}
	for k := range n {
		d := rawsys.EpollData(&l.evs[k])
		i := int(uint32(d))
		if i >= len(l.slots) || l.slots[i].gen != uint32(d>>32) || l.slots[i].fd < 0 {
			continue
		}
		switch {
		case !l.udp:
			l.tcpEvent(i, l.evs[k].Events)
		default:
			l.udpEvent(i)
		}
	}
	if now := rawsys.Nanotime(); now-l.lastScan >= int64(5*time.Millisecond) {
		l.lastScan = now
		l.expire(now)
	}
	return true
}

// runOpen is the open loop's event loop: it starts every arrival of its
// schedule as it falls due (all those overdue at once when it is behind:
// their latency then counts from when they were due), handles events in
// between, and ends when the window's last connection has ended.
func (l *clientLoop) runOpen() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// Wake-ups on time: the default 50 µs of timer slack would be added
	// to the latency of connections started after a wait.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	next := l.arr.next()
	l.lastScan = rawsys.Nanotime()
	for l.rs.phase.Load() != phaseStop {
		now := rawsys.Nanotime()
		for next <= now {
			l.arrive(next)
			next = l.arr.next()
		}
		if now >= l.to && l.inWindow == 0 {
			return
		}
		// Bounded, as in run, for time-outs and the end of the run.
		wait := min(next-rawsys.Nanotime(), int64(10*time.Millisecond))
		n, err := epollWaitNS(l.ep, l.evs, &l.ts, wait)
		if !l.handle(n, err) {
			return
		}
	}
}

// arrive starts the connection the schedule intends at t in a free slot,
// or counts an overload when every slot is busy. Only arrivals intended
// inside the window are measured.
func (l *clientLoop) arrive(t int64) {
	measured := t >= l.from && t < l.to
	if measured {
		l.scheduled++
	}
	n := len(l.free)
	if n == 0 {
		if measured {
			l.errors[ErrOverload]++
		}
		return
	}
	i := int(l.free[n-1])
	l.free = l.free[:n-1]
	s := &l.slots[i]
	s.measured = measured
	s.intended = t
	s.start = rawsys.Nanotime()
	if measured {
		l.inWindow++
		l.lag.Record(s.start - t)
	}
	l.launch(i)
}

// begin starts slot i's next connection or request (closed loop); none
// starts once the window has ended.
func (l *clientLoop) begin(i int) {
	s := &l.slots[i]
	phase := l.rs.phase.Load()
	if phase >= phaseDrain {
		return
	}
	s.measured = phase == phaseMeasure
	if s.measured {
		l.inWindow++
	} else if l.spec.EdgeFD > 0 {
		l.rs.warmupStarts.Add(1)
	}
	s.start = rawsys.Nanotime()
	s.intended = s.start
	l.launch(i)
}

// launch opens slot i's connection, or sends its UDP request; s.measured,
// s.start and s.intended are set.
func (l *clientLoop) launch(i int) {
	s := &l.slots[i]
	l.started++
	s.target = 0
	if len(l.targets) > 1 {
		s.target = l.rng.IntN(len(l.targets))
	}
	s.n, s.connected = 0, false
	s.active = true
	var kind string
	switch {
	case !l.udp:
		kind = l.beginTCP(i)
	case l.longLive:
		if s.fd < 0 {
			kind = l.openUDPSlot(i)
		}
		if kind == "" {
			if _, e := rawsys.SendtoSA(s.fd, UDPRequest, &l.targets[s.target]); e != 0 {
				kind = rawsys.ErrnoName(e)
			}
		}
	default:
		kind = l.beginUDP(i)
	}
	if kind != "" {
		l.done(i, kind, nil, false)
		if !l.open {
			l.idle++
		}
	}
}

func (l *clientLoop) beginTCP(i int) string {
	s := &l.slots[i]
	fd, e := rawsys.SocketFamily(l.family, unix.SOCK_STREAM)
	if e != 0 {
		return rawsys.ErrnoName(e)
	}
	if e := rawsys.ConnectSA(fd, &l.targets[s.target]); e != 0 && e != unix.EINPROGRESS {
		rawsys.Close(fd)
		return rawsys.ErrnoName(e)
	}
	s.fd = fd
	s.gen++
	// Edge-triggered: EPOLLOUT once when the handshake completes, then
	// EPOLLIN as the reply arrives; no EPOLL_CTL_MOD in between.
	if e := rawsys.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET, l.data(i)); e != 0 {
		l.closeSlot(i)
		return rawsys.ErrnoName(e)
	}
	return ""
}

// beginUDP opens slot i's socket for one request and sends it: to the
// target on an unconnected socket, or, UDPConnected, on a socket connected
// to the target first (a UDP connect only sets the peer, it does not
// block).
func (l *clientLoop) beginUDP(i int) string {
	s := &l.slots[i]
	fd, e := rawsys.SocketFamily(l.family, unix.SOCK_DGRAM)
	if e != 0 {
		return rawsys.ErrnoName(e)
	}
	s.fd = fd
	s.gen++
	if l.connected {
		if e := rawsys.ConnectSA(fd, &l.targets[s.target]); e != 0 {
			l.closeSlot(i)
			return rawsys.ErrnoName(e)
		}
		_, e = rawsys.Write(fd, UDPRequest)
	} else {
		_, e = rawsys.SendtoSA(fd, UDPRequest, &l.targets[s.target])
	}
	if e != 0 {
		l.closeSlot(i)
		return rawsys.ErrnoName(e)
	}
	// Registered after the send: epoll reports a reply that is already
	// queued.
	if e := rawsys.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN, l.data(i)); e != 0 {
		l.closeSlot(i)
		return rawsys.ErrnoName(e)
	}
	return ""
}

func (l *clientLoop) closeSlot(i int) {
	s := &l.slots[i]
	if s.fd >= 0 {
		rawsys.Close(s.fd)
		s.fd = -1
	}
}

// end closes slot i's connection, records it and, in the closed loop,
// starts the next one.
func (l *clientLoop) end(i int, kind string, pod []byte, wrong bool) {
	if !l.longLive {
		l.closeSlot(i)
	}
	l.done(i, kind, pod, wrong)
	if !l.open {
		l.begin(i)
	}
}

// done records slot i's connection, which ended now, if it is measured:
// in the closed loop, if it started and ended inside the measured window;
// in the open loop, if it was intended to start inside it (however late
// it ends), whose slot goes back to the free ones.
func (l *clientLoop) done(i int, kind string, pod []byte, wrong bool) {
	t1 := rawsys.Nanotime()
	s := &l.slots[i]
	s.active = false
	if l.open {
		// Never beyond the capacity made in newClientLoop: no allocation.
		l.free = append(l.free, int32(i))
	}
	if !s.measured {
		return
	}
	s.measured = false
	l.inWindow--
	if kind != "" {
		l.errors[kind]++
		if kind == l.timeoutK && l.udp {
			l.lost++
		}
		return
	}
	l.hist.Record(t1 - s.intended)
	l.conns++
	if wrong {
		l.wrongSource++
	}
	// Look up before inserting: m[string(b)] does not allocate.
	if c, ok := l.backends[string(pod)]; ok {
		*c++
	} else {
		one := int64(1)
		l.backends[string(pod)] = &one
	}
	if l.rs.limit > 0 && l.rs.measured.Add(1) >= l.rs.limit {
		l.rs.phase.Store(phaseStop)
	}
}

func (l *clientLoop) tcpEvent(i int, ev uint32) {
	s := &l.slots[i]
	if !s.connected {
		if ev&unix.EPOLLERR != 0 {
			kind := "connect-error"
			if soerr, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && soerr != 0 {
				kind = rawsys.ErrnoName(unix.Errno(soerr))
			}
			l.end(i, kind, nil, false)
			return
		}
		if ev&unix.EPOLLOUT == 0 {
			return
		}
		s.connected = true
		n, e := rawsys.Write(s.fd, Request)
		if e != 0 {
			l.end(i, rawsys.ErrnoName(e), nil, false)
			return
		}
		if n != len(Request) {
			l.end(i, "short-write", nil, false)
			return
		}
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) == 0 {
			return
		}
	}
	for {
		want := len(s.buf) - s.n
		m, e := rawsys.Read(s.fd, s.buf[s.n:])
		switch e {
		case 0:
		case unix.EAGAIN:
			return
		case unix.EINTR:
			continue
		default:
			l.end(i, rawsys.ErrnoName(e), nil, false)
			return
		}
		if m == 0 {
			l.end(i, "short-reply", nil, false)
			return
		}
		s.n += m
		pod, done, bad := ParseReply(s.buf[:s.n])
		switch {
		case done:
			l.end(i, "", pod, false)
			return
		case bad || s.n == len(s.buf):
			l.end(i, "bad-reply", nil, false)
			return
		case m < want:
			// A short read emptied the socket; the rest raises a new edge.
			return
		}
	}
}

func (l *clientLoop) udpEvent(i int) {
	s := &l.slots[i]
	// recvfrom on a connected socket too: the source it reports is what
	// the application is told, and a Service must make it the VIP.
	m, e := rawsys.RecvfromSA(s.fd, s.buf, &s.from)
	switch {
	case e == unix.EAGAIN || e == unix.EINTR:
		return
	case !s.active:
		// A long-lived socket's late reply to a request already given up.
		return
	case e != 0:
		l.end(i, rawsys.ErrnoName(e), nil, false)
		return
	}
	// A Service must answer from the address the request went to; an
	// unconnected socket accepts a reply from anywhere, so check.
	wrong := !s.from.SameAddrPort(&l.targets[s.target])
	l.end(i, "", bytes.TrimSpace(s.buf[:m]), wrong)
}

// expire abandons connections and requests older than the timeout.
func (l *clientLoop) expire(now int64) {
	for i := range l.slots {
		s := &l.slots[i]
		if !s.active || now-s.start < l.timeout {
			continue
		}
		if l.longLive {
			// A reply may still come: a fresh socket keeps it from being
			// taken for the next request's.
			l.closeSlot(i)
			if err := l.openLongLived(i); err != nil {
				l.err = err
				l.rs.phase.Store(phaseStop)
				return
			}
		}
		l.end(i, l.timeoutK, nil, false)
	}
}

// arrivals is one loop's share of the open-loop schedule. Its times depend
// on the rate, the process, the seed and the loop's index alone, never on
// how the generator or the datapath keep up: drawing each next time when
// needed gives the same sequence a table computed in advance would, without
// its memory.
type arrivals struct {
	origin int64   // nanotime the schedule counts from
	gap    float64 // mean gap between this loop's arrivals, ns
	at     float64 // next arrival, ns after origin
	rng    *rand.Rand
}

// newArrivals returns loop's share of a schedule of rate arrivals per
// second over nloops loops, counted from origin.
//
// Poisson (the default) draws exponential gaps from a generator seeded by
// seed and the loop: the loops' independent streams of rate/nloops add up
// to one Poisson stream of rate. Constant spaces the loops' arrivals
// nloops/rate apart, staggered by 1/rate, so together they start one
// connection every 1/rate.
func newArrivals(kind string, rate float64, seed uint64, loop, nloops int, origin int64) *arrivals {
	a := &arrivals{origin: origin, gap: float64(nloops) * 1e9 / rate}
	if kind == ArrivalsConstant {
		a.at = float64(loop) * 1e9 / rate
		return a
	}
	a.rng = rand.New(rand.NewPCG(seed, uint64(loop)))
	a.at = a.rng.ExpFloat64() * a.gap
	return a
}

// next returns the next intended start time (nanotime) and moves on.
func (a *arrivals) next() int64 {
	t := a.origin + int64(a.at)
	if a.rng != nil {
		a.at += a.rng.ExpFloat64() * a.gap
	} else {
		a.at += a.gap
	}
	return t
}

// epollWaitNS is epollWait with a timeout in nanoseconds (epoll_pwait2):
// the open loop wakes for its next arrival on time, not rounded to the
// millisecond. On kernels before 5.11 it falls back to milliseconds,
// rounded up.
func epollWaitNS(ep int, evs []unix.EpollEvent, ts *unix.Timespec, ns int64) (int, error) {
	if ns <= 0 {
		return rawsys.EpollWait(ep, evs, 0)
	}
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(unsafe.SliceData(evs))), uintptr(len(evs)), 0, 0, 0)
	if e == 0 && r > 0 {
		return int(r), nil
	}
	*ts = unix.NsecToTimespec(ns)
	r, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(ep), uintptr(unsafe.Pointer(unsafe.SliceData(evs))), uintptr(len(evs)),
		uintptr(unsafe.Pointer(ts)), 0, 0)
	switch e {
	case 0:
		return int(r), nil
	case unix.ENOSYS:
		return unix.EpollWait(ep, evs, int((ns+999_999)/1_000_000))
	default:
		return 0, e
	}
}
