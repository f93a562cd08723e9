package userspace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"svclab/datapath"
	"svclab/internal/child"
)

// ProxyRole is the first argument that makes the svclab binary (or a test
// binary whose TestMain calls harness.ChildMain) run as the userspace proxy.
const ProxyRole = "internal-userspace-proxy"

func init() { child.Register(ProxyRole, ProxyMain) }

// Proxy timing. The dial timeouts are the schedule of a connection's
// successive attempts, each to the next backend in round-robin order, as
// the userspace proxy retried a failing endpoint with another one.
var (
	dialTimeouts = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}
	// udpIdleTimeout ends a UDP client's session (and closes its backend
	// socket) when no datagram has passed either way for this long; 250ms
	// was the userspace mode's default (--udp-timeout).
	udpIdleTimeout = 250 * time.Millisecond
)

// ProxyMain runs the proxy process: it reads proxyConfig messages (JSON
// values) from in, makes each one the set of frontends it serves, and writes
// one proxyAck line to out per message, plus a first one with seq 0 once it
// is ready. It returns when in ends, after closing every socket.
func ProxyMain(in io.Reader, out io.Writer) error {
	p := newProxy()
	defer p.closeAll()
	enc := json.NewEncoder(out)
	if err := enc.Encode(proxyAck{Seq: 0}); err != nil {
		return fmt.Errorf("userspace proxy: write ready: %w", err)
	}
	dec := json.NewDecoder(in)
	for {
		var cfg proxyConfig
		if err := dec.Decode(&cfg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("userspace proxy: read config: %w", err)
		}
		ack := proxyAck{Seq: cfg.Seq}
		if err := p.apply(cfg.Frontends); err != nil {
			ack.Error = err.Error()
		}
		ack.Listening = p.listening()
		if err := enc.Encode(ack); err != nil {
			return fmt.Errorf("userspace proxy: write ack %d: %w", cfg.Seq, err)
		}
	}
}

// listener is one open frontend socket.
type listener interface {
	setBackends([]netip.AddrPort)
	close()
}

// proxy holds the open frontends. It is driven by one goroutine (apply)
// while the frontends serve on their own goroutines.
type proxy struct {
	mu        sync.Mutex
	listeners map[frontendKey]listener
}

func newProxy() *proxy { return &proxy{listeners: map[frontendKey]listener{}} }

func (p *proxy) listening() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.listeners)
}

// apply opens a socket for every frontend with backends, hands existing
// ones their new backend list, and closes the sockets of frontends that are
// gone or have no backend left (the kernel then refuses new connections).
// Connections already proxied are left alone. Every frontend is attempted;
// the error names each one that failed.
func (p *proxy) apply(fes []frontend) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[frontendKey]frontend{}
	for _, fe := range fes {
		if len(fe.Backends) > 0 {
			want[fe.key()] = fe
		}
	}
	for k, l := range p.listeners {
		if _, ok := want[k]; !ok {
			l.close()
			delete(p.listeners, k)
		}
	}
	var errs []error
	for k, fe := range want {
		if l, ok := p.listeners[k]; ok {
			l.setBackends(fe.Backends)
			continue
		}
		l, err := listen(fe)
		if err != nil {
			errs = append(errs, fmt.Errorf("frontend %s (%s): %w", k, fe.Name, err))
			continue
		}
		p.listeners[k] = l
	}
	return errors.Join(errs...)
}

func (p *proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.listeners {
		l.close()
		delete(p.listeners, k)
	}
}

func listen(fe frontend) (listener, error) {
	switch fe.Protocol {
	case datapath.TCP:
		return listenTCP(fe)
	case datapath.UDP:
		return listenUDP(fe)
	}
	return nil, fmt.Errorf("protocol %q not supported", fe.Protocol)
}

// roundRobin hands out backends in turn; the list can be replaced while
// connections are being proxied.
type roundRobin struct {
	backends atomic.Pointer[[]netip.AddrPort]
	next     atomic.Uint64
}

func (r *roundRobin) set(b []netip.AddrPort) {
	b = append([]netip.AddrPort(nil), b...)
	r.backends.Store(&b)
}

// pick returns the next backend, or false if there is none.
func (r *roundRobin) pick() (netip.AddrPort, bool) {
	b := *r.backends.Load()
	if len(b) == 0 {
		return netip.AddrPort{}, false
	}
	return b[(r.next.Add(1)-1)%uint64(len(b))], true
}

// tcpFrontend accepts connections on VIP:port and splices each to a backend.
type tcpFrontend struct {
	rr roundRobin
	ln *net.TCPListener
	wg sync.WaitGroup
}

func listenTCP(fe frontend) (*tcpFrontend, error) {
	// Keep-alive probes are pointless for the short connections measured
	// here and cost syscalls per connection: off on both legs.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), network("tcp", fe.VIP.Addr()), fe.VIP.String())
	if err != nil {
		return nil, err
	}
	f := &tcpFrontend{ln: ln.(*net.TCPListener)}
	f.rr.set(fe.Backends)
	f.wg.Add(1)
	go f.acceptLoop()
	return f, nil
}

func (f *tcpFrontend) setBackends(b []netip.AddrPort) { f.rr.set(b) }

// close stops accepting; connections in flight run to their end.
func (f *tcpFrontend) close() {
	_ = f.ln.Close()
	f.wg.Wait()
}

func (f *tcpFrontend) acceptLoop() {
	defer f.wg.Done()
	for {
		c, err := f.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: back off instead of spinning.
			time.Sleep(time.Millisecond)
			continue
		}
		go f.proxy(c)
	}
}

// proxy connects the accepted client to a backend, trying the next backend
// with a longer timeout when a dial fails, and then copies both ways.
func (f *tcpFrontend) proxy(client *net.TCPConn) {
	var backend *net.TCPConn
	for _, timeout := range dialTimeouts {
		addr, ok := f.rr.pick()
		if !ok {
			break
		}
		d := net.Dialer{Timeout: timeout, KeepAlive: -1}
		c, err := d.Dial(network("tcp", addr.Addr()), addr.String())
		if err == nil {
			backend = c.(*net.TCPConn)
			break
		}
	}
	if backend == nil {
		// No backend reachable: the client sees its connection closed.
		_ = client.Close()
		return
	}
	spliceBoth(client, backend)
}

// spliceBoth copies a→b and b→a until both directions are done. A FIN in
// one direction is passed on as a half-close (shutdown(SHUT_WR)) of the
// other leg, so each peer sees the other's close and the connection ends
// the way it would without the proxy; an error (a reset) in either
// direction tears down both legs. io.Copy between two *net.TCPConn uses
// splice(2), so the payload never enters user space.
func spliceBoth(a, b *net.TCPConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
	_ = a.Close()
	_ = b.Close()
}

// copyHalf copies src to dst and then half-closes dst; on an error it
// closes both sockets so the other direction's copy ends too.
func copyHalf(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		_ = src.Close()
		_ = dst.Close()
		return
	}
	_ = dst.CloseWrite()
}

// udpFrontend relays datagrams between clients and backends. Each client
// address gets a session: a socket connected to one backend (chosen round
// robin when the session starts) whose replies are sent back to the client
// from the VIP:port socket, so the client sees them come from the service.
// A session ends after udpIdleTimeout without a datagram either way.
type udpFrontend struct {
	rr   roundRobin
	conn *net.UDPConn
	wg   sync.WaitGroup

	mu       sync.Mutex
	sessions map[netip.AddrPort]*udpSession
}

type udpSession struct {
	backend *net.UDPConn
}

// maxDatagram is the largest UDP payload over IPv6 (65535 less the UDP
// header); IPv4's largest, 65507, fits too.
const maxDatagram = 65527

// network is Go's network name for a socket of base ("tcp", "udp") on
// address a: "tcp4" or "tcp6", and so on. Naming the family keeps every
// socket single-family, as each frontend and backend address has one
// family (an IPv6 ClusterIP's endpoints are IPv6, as in kube-proxy's
// per-family EndpointSlices).
func network(base string, a netip.Addr) string {
	if a.Is4() {
		return base + "4"
	}
	return base + "6"
}

func listenUDP(fe frontend) (*udpFrontend, error) {
	conn, err := net.ListenUDP(network("udp", fe.VIP.Addr()), net.UDPAddrFromAddrPort(fe.VIP))
	if err != nil {
		return nil, err
	}
	f := &udpFrontend{conn: conn, sessions: map[netip.AddrPort]*udpSession{}}
	f.rr.set(fe.Backends)
	f.wg.Add(1)
	go f.readLoop()
	return f, nil
}

func (f *udpFrontend) setBackends(b []netip.AddrPort) { f.rr.set(b) }

// close closes the frontend socket and every session.
func (f *udpFrontend) close() {
	_ = f.conn.Close()
	f.mu.Lock()
	for _, s := range f.sessions {
		_ = s.backend.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *udpFrontend) readLoop() {
	defer f.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, client, err := f.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// An ICMP error queued on the socket or a transient failure:
			// the socket is still good.
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		s, err := f.session(client)
		if err != nil {
			continue // no backend: the datagram is dropped
		}
		_ = s.backend.SetReadDeadline(time.Now().Add(udpIdleTimeout))
		if _, err := s.backend.Write(buf[:n]); err != nil {
			// The backend refused (ICMP) or is unreachable: end the
			// session so the next datagram picks again.
			f.endSession(client, s)
		}
	}
}

// session returns the client's session, starting one if there is none.
func (f *udpFrontend) session(client netip.AddrPort) (*udpSession, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.sessions[client]; ok {
		return s, nil
	}
	addr, ok := f.rr.pick()
	if !ok {
		return nil, errors.New("no backend")
	}
	c, err := net.DialUDP(network("udp", addr.Addr()), nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	s := &udpSession{backend: c}
	f.sessions[client] = s
	f.wg.Add(1)
	go f.relayReplies(client, s)
	return s, nil
}

func (f *udpFrontend) endSession(client netip.AddrPort, s *udpSession) {
	f.mu.Lock()
	if f.sessions[client] == s {
		delete(f.sessions, client)
	}
	f.mu.Unlock()
	_ = s.backend.Close()
}

// relayReplies sends the backend's datagrams to the client from the VIP
// socket until the session idles out or its socket is closed.
func (f *udpFrontend) relayReplies(client netip.AddrPort, s *udpSession) {
	defer f.wg.Done()
	defer f.endSession(client, s)
	buf := make([]byte, maxDatagram)
	for {
		n, err := s.backend.Read(buf)
		if err != nil {
			return
		}
		if _, err := f.conn.WriteToUDPAddrPort(buf[:n], client); err != nil {
			return
		}
		_ = s.backend.SetReadDeadline(time.Now().Add(udpIdleTimeout))
	}
}
