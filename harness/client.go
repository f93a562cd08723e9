package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"svclab/internal/nsutil"
	"svclab/results"
)

// ClientSpec tells the load generator what to do.
type ClientSpec struct {
	// Targets are where connections go; one is picked at random per
	// connection (several only for the direct datapath).
	Targets     []netip.AddrPort `json:"targets"`
	Concurrency int              `json:"concurrency"`
	Warmup      time.Duration    `json:"warmup"`
	Duration    time.Duration    `json:"duration"`
	// Connections, if > 0, ends the run after this many measured connections
	// instead of after Duration (used by tests).
	Connections int64 `json:"connections,omitempty"`
	// Timeout bounds each connect and read.
	Timeout time.Duration `json:"timeout"`
}

var request = []byte("GET / HTTP/1.1\r\nHost: svclab\r\nUser-Agent: svclab\r\n\r\n")

type workerStats struct {
	hist     *results.Histogram
	conns    int64
	errors   map[string]int64
	backends map[string]*int64
}

// RunClient is the load generator: a closed loop of Concurrency workers,
// each doing connect, send a small request, read the whole reply, close
// (client closes first), over and over. Latency is connect start to close.
// Workers use raw blocking syscalls and do not allocate per connection, so
// that the generator costs as little as possible of the machine the
// datapath runs on.
func RunClient(spec ClientSpec) (*results.Workload, error) {
	if len(spec.Targets) == 0 {
		return nil, errors.New("client: no targets")
	}
	if spec.Concurrency < 1 {
		return nil, fmt.Errorf("client: concurrency %d < 1", spec.Concurrency)
	}
	if spec.Timeout == 0 {
		spec.Timeout = 5 * time.Second
	}
	sas := make([]unix.SockaddrInet4, len(spec.Targets))
	for i, t := range spec.Targets {
		if !t.Addr().Is4() {
			return nil, fmt.Errorf("client: target %s is not IPv4", t)
		}
		sas[i] = unix.SockaddrInet4{Port: int(t.Port()), Addr: t.Addr().As4()}
	}
	const (
		phaseWarmup int32 = iota
		phaseMeasure
		phaseStop
	)
	var phase atomic.Int32
	var measured atomic.Int64
	stats := make([]*workerStats, spec.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	measureStart := start.Add(spec.Warmup)
	for w := range spec.Concurrency {
		st := &workerStats{hist: results.NewHistogram(), errors: map[string]int64{}, backends: map[string]*int64{}}
		stats[w] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for {
				p := phase.Load()
				if p == phaseStop {
					return
				}
				sa := &sas[0]
				if len(sas) > 1 {
					sa = &sas[rng.IntN(len(sas))]
				}
				t0 := time.Now()
				pod, errKind := oneConnection(sa, buf, spec.Timeout)
				t1 := time.Now()
				// Count only connections that started and ended inside
				// the measured window.
				if p != phaseMeasure || phase.Load() != phaseMeasure {
					continue
				}
				if errKind != "" {
					st.errors[errKind]++
					continue
				}
				st.hist.Record(int64(t1.Sub(t0)))
				st.conns++
				// Look up before inserting: m[string(b)] does not allocate.
				if c, ok := st.backends[string(pod)]; ok {
					*c++
				} else {
					one := int64(1)
					st.backends[string(pod)] = &one
				}
				if spec.Connections > 0 && measured.Add(1) >= spec.Connections {
					phase.Store(phaseStop)
				}
			}
		}()
	}
	time.Sleep(time.Until(measureStart))
	synBefore := synRetrans()
	phase.Store(phaseMeasure)
	t0 := time.Now()
	if spec.Connections > 0 {
		deadline := t0.Add(spec.Duration)
		for phase.Load() == phaseMeasure && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	} else {
		time.Sleep(spec.Duration)
	}
	phase.Store(phaseStop)
	window := time.Since(t0)
	synAfter := synRetrans()
	wg.Wait()

	w := &results.Workload{
		DurationSeconds: window.Seconds(),
		Errors:          map[string]int64{},
		PerBackend:      map[string]int64{},
		Histogram:       results.NewHistogram(),
		SynRetrans:      synAfter - synBefore,
	}
	for _, st := range stats {
		w.Connections += st.conns
		w.Histogram.Merge(st.hist)
		for k, v := range st.errors {
			w.Errors[k] += v
		}
		for k, v := range st.backends {
			w.PerBackend[k] += *v
		}
	}
	w.QPS = float64(w.Connections) / window.Seconds()
	w.Latency = w.Histogram.Latency()
	return w, nil
}

// oneConnection does one short connection and returns the pod named in the
// reply, or the kind of error.
func oneConnection(sa *unix.SockaddrInet4, buf []byte, timeout time.Duration) ([]byte, string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, errKind("socket", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	// SO_SNDTIMEO bounds a blocking connect, SO_RCVTIMEO the reads: a
	// dropped SYN must not hang a worker past the trial.
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := connect(fd, sa, timeout); err != nil {
		return nil, errKind("", err)
	}
	for {
		_, err := unix.Write(fd, request)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, errKind("", err)
		}
		break
	}
	n := 0
	hdrEnd, total := -1, -1
	for {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return nil, "ETIMEDOUT"
			}
			return nil, errKind("", err)
		}
		if m == 0 {
			return nil, "short-reply"
		}
		n += m
		if hdrEnd < 0 {
			if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 {
				hdrEnd = i + 4
				cl := contentLength(buf[:i])
				if cl < 0 {
					return nil, "bad-reply"
				}
				total = hdrEnd + cl
			}
		}
		if total >= 0 && n >= total {
			return bytes.TrimSpace(buf[hdrEnd:total]), ""
		}
		if n == len(buf) {
			return nil, "bad-reply"
		}
	}
}

// connect is a blocking connect that survives signals: a connect with a
// send timeout is not restarted after a signal (the Go runtime's preemption
// signal included) but goes on in the background, so wait for it to finish.
func connect(fd int, sa *unix.SockaddrInet4, timeout time.Duration) error {
	err := unix.Connect(fd, sa)
	switch err {
	case nil:
		return nil
	case unix.EINPROGRESS:
		// SO_SNDTIMEO expired.
		return unix.ETIMEDOUT
	case unix.EINTR:
	default:
		return err
	}
	deadline := time.Now().Add(timeout)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return err
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soerr != 0 {
			return unix.Errno(soerr)
		}
		return nil
	}
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
	n, err := strconv.Atoi(string(v))
	if err != nil {
		return -1
	}
	return n
}

func errKind(prefix string, err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
	}
	if prefix != "" {
		return prefix + ": " + err.Error()
	}
	return err.Error()
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
// client pod's namespace ns and cgroup cg (where socket-level datapaths are
// attached), and returns what it measured.
func RunClientProcess(ctx context.Context, ns *nsutil.NS, cg *Cgroup, spec ClientSpec) (*results.Workload, error) {
	in, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, childClient)
	// No asynchronous preemption: its signals interrupt the workers'
	// blocking syscalls for nothing (the workers never need preempting).
	cmd.Env = append(os.Environ(), "GODEBUG=asyncpreemptoff=1")
	cmd.Stdin = bytes.NewReader(in)
	var out, stderr bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	cgf, err := cg.OpenFD()
	if err != nil {
		return nil, err
	}
	defer cgf.Close()
	if err := ns.Start(cmd, int(cgf.Fd())); err != nil {
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("load generator: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var w results.Workload
	if err := json.Unmarshal(out.Bytes(), &w); err != nil {
		return nil, fmt.Errorf("load generator output: %w", err)
	}
	return &w, nil
}
