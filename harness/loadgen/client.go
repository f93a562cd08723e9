// Package loadgen is the traffic of a trial: the load generator (closed loop
// of C workers, or open loop at a rate; short TCP connections or UDP
// exchanges, HDR latency histograms) and the event-driven backend server
// whose every reply names its pod. Both run as child processes in pods
// (RoleClient, RoleServe); what a window costs in CPU is read here too.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"svclab/harness/internal/rawsys"
	"svclab/internal/child"
	"svclab/internal/nsutil"
	"svclab/results"
)

// Client protocols and UDP modes (ClientSpec.Protocol, ClientSpec.UDPMode).
const (
	ProtocolTCP = "TCP"
	ProtocolUDP = "UDP"
	// UDPSocketPerRequest opens a new unconnected socket per request:
	// sendto the target, recvfrom the reply, close (a DNS stub resolver's
	// pattern; every request is a new flow for the datapath).
	UDPSocketPerRequest = "socket-per-request"
	// UDPLongLived keeps one unconnected socket per in-flight request slot
	// and does sendto/recvfrom on it over and over (one flow per slot).
	UDPLongLived = "long-lived"
	// UDPConnected opens a new socket per request and connects it to the
	// target before sending: socket, connect, send, recv, close, as most
	// DNS resolvers (glibc's, musl's) do. A socket-level datapath
	// translates it once, at connect (socket-LB's connect hook), where an
	// unconnected socket is translated at every sendto; the kernel takes
	// replies on it from the connected peer only.
	UDPConnected = "connected"
)

// UDPModes are the UDP modes, in the order error messages list them.
var UDPModes = []string{UDPSocketPerRequest, UDPLongLived, UDPConnected}

// ClientSpec tells the load generator what to do.
type ClientSpec struct {
	// Targets are where connections go; one is picked at random per
	// connection (several only for the direct datapath). All are of one
	// family, IPv4 or IPv6: a run measures one.
	Targets []netip.AddrPort `json:"targets"`
	// Concurrency is the number of connections (or UDP requests) in
	// flight at any time, over all loops.
	Concurrency int           `json:"concurrency"`
	Warmup      time.Duration `json:"warmup"`
	Duration    time.Duration `json:"duration"`
	// Connections, if > 0, ends the run after this many measured connections
	// instead of after Duration (used by tests).
	Connections int64 `json:"connections,omitempty"`
	// Timeout bounds each connection (or UDP request) from its start; one
	// that takes longer is abandoned and counted as an error ("ETIMEDOUT"
	// for TCP, "timeout" for UDP). Default 5s.
	Timeout time.Duration `json:"timeout"`
	// Protocol is ProtocolTCP (default) or ProtocolUDP.
	Protocol string `json:"protocol,omitempty"`
	// UDPMode is UDPSocketPerRequest (default), UDPLongLived or
	// UDPConnected.
	UDPMode string `json:"udp_mode,omitempty"`
	// Loops is the number of event loops (threads); 0 means half the
	// CPUs (see defaultLoops). Never more than Concurrency (or, open
	// loop, MaxInFlight).
	Loops int `json:"loops,omitempty"`

	// Rate, if > 0, makes the run open-loop: connections (or UDP
	// requests) start at Rate per second on a schedule fixed in advance
	// by Rate, Arrivals and Seed alone, whatever the datapath or the
	// generator do, and latency runs from each one's intended start.
	// Concurrency and Connections are then unused.
	Rate float64 `json:"rate,omitempty"`
	// Arrivals is the open loop's arrival process: ArrivalsPoisson
	// (default) or ArrivalsConstant.
	Arrivals string `json:"arrivals,omitempty"`
	// Seed seeds the open-loop schedule; 0 picks one, which the result
	// records so the schedule can be replayed.
	Seed uint64 `json:"seed,omitempty"`
	// MaxInFlight bounds the open loop's connections in flight (default
	// DefaultMaxInFlight); an arrival that finds them all busy is not
	// started and counts as an "overload" error.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// CPUCgroup is a cgroup v2 directory (the run's: client and backend
	// pods) whose CPU time is read at the start and end of the window;
	// empty leaves Workload.CPU's run figures out.
	CPUCgroup string `json:"cpu_cgroup,omitempty"`
	// CPURoles are role cgroup directories below CPUCgroup ("clients",
	// "servers", …) whose CPU time is read the same way, to split it.
	CPURoles map[string]string `json:"cpu_roles,omitempty"`
	// EdgeFD, if > 0, is a stream socket (inherited from the parent, see
	// RunClientProcessEdges) on which the closed loop announces the
	// measured window's edges: EdgeStart just before the window opens,
	// EdgeEnd once every connection it started has ended (the drain),
	// each time waiting for the parent's one-byte answer, so that what
	// the parent reads at an edge is read before the loop goes on.
	EdgeFD int `json:"edge_fd,omitempty"`
}

// Window edges announced on ClientSpec.EdgeFD.
const (
	EdgeStart byte = 'S'
	EdgeEnd   byte = 'E'
)

// ErrEdge is a failure of the window-edge handshake with the parent.
var ErrEdge = errors.New("client: window edge")

// edge announces one edge on fd and waits for the parent's answer.
func edge(fd int, e byte) error {
	if fd <= 0 {
		return nil
	}
	if _, err := unix.Write(fd, []byte{e}); err != nil {
		return fmt.Errorf("%w %c: write: %v", ErrEdge, e, err)
	}
	var ack [1]byte
	n, err := unix.Read(fd, ack[:])
	if err != nil || n != 1 {
		return fmt.Errorf("%w %c: no answer (%d bytes, %v)", ErrEdge, e, n, err)
	}
	return nil
}

// Open-loop arrival processes (ClientSpec.Arrivals).
const (
	// ArrivalsPoisson draws independent exponential gaps between starts:
	// clients that do not coordinate with each other, bursts included,
	// so the queueing a datapath causes at a given load shows.
	ArrivalsPoisson = "poisson"
	// ArrivalsConstant starts connections exactly 1/Rate apart.
	ArrivalsConstant = "constant"
)

// DefaultMaxInFlight is the open loop's default cap on connections in
// flight: far above what a healthy datapath needs at the rates this
// machine reaches (rate × latency), so reaching it means overload.
const DefaultMaxInFlight = 4096

// ErrOverload is the error kind counted for an open-loop arrival that
// found MaxInFlight connections already in flight.
const ErrOverload = "overload"

// maxRate bounds ClientSpec.Rate: far beyond what one generator starts.
const maxRate = 1e7

// Request is what the TCP client sends: a minimal HTTP/1.1 GET.
var Request = []byte("GET / HTTP/1.1\r\nHost: svclab\r\nUser-Agent: svclab\r\n\r\n")

// UDPRequest is the datagram the UDP client sends; the server answers any.
var UDPRequest = []byte("svclab\n")

func (s *ClientSpec) validate() error {
	if len(s.Targets) == 0 {
		return errors.New("client: targets: none given")
	}
	for i, t := range s.Targets {
		switch {
		case !t.IsValid() || t.Addr().Zone() != "":
			return fmt.Errorf("client: targets[%d]: %s is not an IPv4 or IPv6 address and port (no zone)", i, t)
		case t.Addr().Is4() != s.Targets[0].Addr().Is4():
			// One socket family per run: a mix would measure two
			// datapaths' paths in one figure.
			return fmt.Errorf("client: targets[%d]: %s is not of the family of targets[0] %s", i, t, s.Targets[0])
		}
	}
	switch {
	case math.IsNaN(s.Rate) || s.Rate < 0 || s.Rate > maxRate:
		return fmt.Errorf("client: rate: %v is out of range [0, %g]", s.Rate, maxRate)
	case s.Rate > 0:
		if s.Connections > 0 {
			return errors.New("client: connections: only the closed loop ends after a count (the open loop runs for duration)")
		}
		if s.MaxInFlight < 0 {
			return fmt.Errorf("client: max_in_flight: %d < 0", s.MaxInFlight)
		}
		switch s.Arrivals {
		case "", ArrivalsPoisson, ArrivalsConstant:
		default:
			return fmt.Errorf("client: arrivals: %q is not %s or %s", s.Arrivals, ArrivalsPoisson, ArrivalsConstant)
		}
	default:
		if s.Concurrency < 1 {
			return fmt.Errorf("client: concurrency: %d < 1", s.Concurrency)
		}
		if s.Arrivals != "" || s.MaxInFlight != 0 || s.Seed != 0 {
			return errors.New("client: arrivals, max_in_flight and seed are for the open loop (rate > 0)")
		}
	}
	switch s.Protocol {
	case "", ProtocolTCP, ProtocolUDP:
	default:
		return fmt.Errorf("client: protocol: %q is not %s or %s", s.Protocol, ProtocolTCP, ProtocolUDP)
	}
	if s.UDPMode != "" && !slices.Contains(UDPModes, s.UDPMode) {
		return fmt.Errorf("client: udp_mode: %q is not one of %s", s.UDPMode, strings.Join(UDPModes, ", "))
	}
	if s.Timeout < 0 || s.Duration < 0 || s.Warmup < 0 {
		return errors.New("client: timeout, duration and warmup must not be negative")
	}
	return nil
}

// RunClient is the load generator: a closed loop keeping Concurrency
// connections in flight, each doing connect, send a small request, read
// the whole reply, close (the client closes first), after which a new one
// starts. Latency is connect start to close. With Rate set it is an open
// loop instead (see runOpenLoop).
//
// It runs epoll loops (as wrk does) with non-blocking sockets, the
// connections spread over the loops; each loop keeps its own
// histogram and counters, merged at the end, so loops share nothing but
// the phase flag. Loops use raw system calls and allocate nothing per
// connection, so the generator costs as little as possible of the machine
// the datapath runs on.
//
// With Protocol UDP each "connection" is one request datagram and its
// reply (see UDPMode); replies whose source is not the address the
// request went to are counted in WrongSource.
func RunClient(spec ClientSpec) (*results.Workload, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if spec.Timeout == 0 {
		spec.Timeout = 5 * time.Second
	}
	if spec.Rate > 0 {
		return runOpenLoop(spec)
	}
	rs := &runState{limit: spec.Connections}
	loops, err := newClientLoops(&spec, rs, spec.Concurrency)
	defer closeLoops(loops)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run()
		}()
	}
	time.Sleep(spec.Warmup)
	before := rs.warmupStarts.Load()
	if err := edge(spec.EdgeFD, EdgeStart); err != nil {
		rs.phase.Store(phaseStop)
		wg.Wait()
		return nil, err
	}
	m := startMeter(spec.CPUCgroup, spec.CPURoles)
	// The loops ran on while the parent took its snapshot: what they
	// started since is warm-up inside the edges (give or take one per
	// slot, started between this read and the phase change).
	edgeWarmup := rs.warmupStarts.Load() - before
	rs.phase.Store(phaseMeasure)
	t0 := time.Now()
	if spec.Connections > 0 {
		deadline := t0.Add(spec.Duration)
		for rs.phase.Load() == phaseMeasure && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	} else {
		time.Sleep(spec.Duration)
	}
	// The window ends; what it started is let finish or time out (the
	// Connections limit, if reached, has stopped the loops already).
	rs.phase.CompareAndSwap(phaseMeasure, phaseDrain)
	window := time.Since(t0)
	m.stop()
	wg.Wait()
	// After the drain: every connection the window started has ended,
	// and no other has started since.
	if err := edge(spec.EdgeFD, EdgeEnd); err != nil {
		return nil, err
	}

	w := &results.Workload{
		DurationSeconds: window.Seconds(),
		Errors:          map[string]int64{},
		PerBackend:      map[string]int64{},
		Histogram:       results.NewHistogram(),
		SynRetrans:      m.synRetrans(),
	}
	if err := collect(w, loops); err != nil {
		return nil, err
	}
	if spec.EdgeFD > 0 {
		w.EdgeWarmup = edgeWarmup
	}
	w.QPS = float64(w.Connections) / window.Seconds()
	w.Latency = w.Histogram.Latency()
	w.CPU = m.cpu(window, w.Connections)
	return w, nil
}

// newClientLoops makes spec.Loops event loops (one per CPU pair by
// default, at most one per slot) sharing slots between them.
func newClientLoops(spec *ClientSpec, rs *runState, slots int) ([]*clientLoop, error) {
	n := spec.Loops
	if n <= 0 {
		n = defaultLoops()
	}
	n = min(n, slots)
	loops := make([]*clientLoop, 0, n)
	for i := range n {
		k := slots / n
		if i < slots%n {
			k++
		}
		l, err := newClientLoop(spec, rs, k, uint64(i))
		if err != nil {
			return loops, err
		}
		loops = append(loops, l)
	}
	return loops, nil
}

func closeLoops(loops []*clientLoop) {
	for _, l := range loops {
		l.close()
	}
}

// collect merges the loops' counters and histograms into w.
func collect(w *results.Workload, loops []*clientLoop) (err error) {
	defer func() {
		if err == nil && w.Lost > 0 {
			w.LossRate = float64(w.Lost) / float64(w.Connections+SumErrors(w.Errors))
		}
	}()
	for _, l := range loops {
		if l.err != nil {
			return l.err
		}
		w.Connections += l.conns
		w.Started += l.started
		w.WrongSource += l.wrongSource
		w.Lost += l.lost
		w.Histogram.Merge(l.hist)
		for k, v := range l.errors {
			w.Errors[k] += v
		}
		for k, v := range l.backends {
			w.PerBackend[k] += *v
		}
	}
	return nil
}

// runOpenLoop is RunClient's open loop: each loop starts its share of the
// schedule (see arrivals), whatever the datapath or the generator itself
// are doing, and a connection's latency runs from its intended start, so a
// stall delays the connections due behind it and they show it (no
// coordinated omission). The measured window is the span of intended
// starts [end of warm-up, + Duration). The loops keep going, schedule
// included so the load does not drop, until every arrival of the window
// has ended as a connection or an error (at worst after Timeout): the
// window's slowest connections are measured, not cut off. An arrival that
// finds MaxInFlight connections in flight counts as an ErrOverload error,
// so an overloaded datapath shows as errors, not as a quietly lower rate.
func runOpenLoop(spec ClientSpec) (*results.Workload, error) {
	if spec.MaxInFlight == 0 {
		spec.MaxInFlight = DefaultMaxInFlight
	}
	if spec.Arrivals == "" {
		spec.Arrivals = ArrivalsPoisson
	}
	if spec.Seed == 0 {
		// Below 2^53 so that JSON readers that use doubles keep it exact.
		spec.Seed = rand.Uint64()&(1<<53-1) | 1
	}
	loops, err := newClientLoops(&spec, &runState{}, spec.MaxInFlight)
	defer closeLoops(loops)
	if err != nil {
		return nil, err
	}
	nloops := len(loops)
	// The schedule starts a little ahead, once the loops' threads run.
	origin := rawsys.Nanotime() + int64(10*time.Millisecond)
	from := origin + int64(spec.Warmup)
	to := from + int64(spec.Duration)
	for i, l := range loops {
		l.arr = newArrivals(spec.Arrivals, spec.Rate, spec.Seed, i, nloops, origin)
		l.from, l.to = from, to
	}
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.runOpen()
		}()
	}
	time.Sleep(time.Duration(from - rawsys.Nanotime()))
	m := startMeter(spec.CPUCgroup, spec.CPURoles)
	time.Sleep(time.Duration(to - rawsys.Nanotime()))
	m.stop()
	wg.Wait()

	window := time.Duration(to - from)
	w := &results.Workload{
		DurationSeconds: window.Seconds(),
		Errors:          map[string]int64{},
		PerBackend:      map[string]int64{},
		Histogram:       results.NewHistogram(),
		SynRetrans:      m.synRetrans(),
		OfferedRate:     spec.Rate,
		Arrivals:        spec.Arrivals,
		ScheduleSeed:    spec.Seed,
		MaxInFlight:     spec.MaxInFlight,
	}
	if err := collect(w, loops); err != nil {
		return nil, err
	}
	lag := results.NewHistogram()
	for _, l := range loops {
		w.Scheduled += l.scheduled
		lag.Merge(l.lag)
	}
	if lag.Count() > 0 {
		ll := lag.Latency()
		w.StartLag = &ll
	}
	w.QPS = float64(w.Connections) / window.Seconds()
	w.Latency = w.Histogram.Latency()
	w.CPU = m.cpu(window, w.Connections)
	return w, nil
}

// ParseReply returns the pod named in a complete HTTP reply in b: done is
// false while more bytes are needed, bad is true if b cannot become a
// valid reply.
func ParseReply(b []byte) (pod []byte, done, bad bool) {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return nil, false, false
	}
	cl := contentLength(b[:i])
	if cl < 0 {
		return nil, false, true
	}
	end := i + 4 + cl
	if len(b) < end {
		return nil, false, false
	}
	return bytes.TrimSpace(b[i+4 : end]), true, false
}

func contentLength(hdr []byte) int {
	const key = "\r\nContent-Length: "
	i := bytes.Index(hdr, []byte(key))
	if i < 0 {
		return -1
	}
	v := hdr[i+len(key):]
	if j := bytes.IndexByte(v, '\r'); j >= 0 {
		v = v[:j]
	}
	n := 0
	if len(v) == 0 || len(v) > 9 {
		return -1
	}
	// By hand: strconv.Atoi(string(v)) would allocate.
	for _, c := range v {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// synRetrans reads TcpExt TCPSynRetrans of the calling thread's namespace.
func synRetrans() int64 {
	f, err := os.Open("/proc/self/net/netstat")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	var names []string
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || fields[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "TCPSynRetrans" && i < len(fields) {
				v, _ := strconv.ParseInt(fields[i], 10, 64)
				return v
			}
		}
	}
	return 0
}

// RunClientProcess runs the load generator as a child process inside the
// client pod's namespace ns and the cgroup v2 directory cgroupDir (where
// socket-level datapaths are attached), and returns what it measured.
func RunClientProcess(ctx context.Context, ns *nsutil.NS, cgroupDir string, spec ClientSpec) (*results.Workload, error) {
	var w results.Workload
	if err := child.Run(ctx, RoleClient, spec, ns, cgroupDir, &w, child.NoAsyncPreempt); err != nil {
		return nil, err
	}
	return &w, nil
}

// RunClientProcessEdges is RunClientProcess for a closed-loop spec whose
// window edges the caller must see: onEdge runs in this process at
// EdgeStart (before the window opens) and EdgeEnd (after the drain), while
// the client waits for it. An error from onEdge fails the run after the
// client has finished.
func RunClientProcessEdges(ctx context.Context, ns *nsutil.NS, cgroupDir string, spec ClientSpec, onEdge func(byte) error) (*results.Workload, error) {
	if spec.Rate > 0 {
		return nil, fmt.Errorf("%w: only the closed loop announces its window", ErrEdge)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: socketpair: %v", ErrEdge, err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "edge"), os.NewFile(uintptr(fds[1]), "edge-child")
	defer ours.Close()
	// ExtraFiles[0] is the child's fd 3.
	spec.EdgeFD = 3
	p, err := child.StartRole(ctx, RoleClient, spec, ns, cgroupDir, child.NoAsyncPreempt, func(cmd *exec.Cmd) {
		cmd.ExtraFiles = append(cmd.ExtraFiles, theirs)
	})
	// The child has its own copy: a child that dies closes the last one,
	// which ends the loop below.
	theirs.Close()
	if err != nil {
		return nil, err
	}
	edgeErr := make(chan error, 1)
	go func() {
		var errs []error
		var b [1]byte
		for {
			if _, err := ours.Read(b[:]); err != nil {
				break
			}
			if err := onEdge(b[0]); err != nil {
				errs = append(errs, err)
			}
			if _, err := ours.Write(b[:]); err != nil {
				errs = append(errs, fmt.Errorf("%w %c: answer: %v", ErrEdge, b[0], err))
				break
			}
		}
		edgeErr <- errors.Join(errs...)
	}()
	var w results.Workload
	werr := p.Wait(&w)
	// The child has exited: its end is closed and the reader has seen EOF.
	if err := errors.Join(werr, <-edgeErr); err != nil {
		return nil, err
	}
	return &w, nil
}

// SumErrors is the number of failed connections in a Workload's Errors.
func SumErrors(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
