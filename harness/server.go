package harness

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"svclab/internal/nsutil"
)

// ServerSpec tells the backend server process what to listen on. One
// process serves every backend pod (a listener per pod namespace): one Go
// runtime per pod would make the end hosts, not the datapath, the
// bottleneck on a small machine.
type ServerSpec struct {
	Listeners []Listener `json:"listeners"`
}

// Listener is one backend pod's listening socket.
type Listener struct {
	Pod   string `json:"pod"`
	NetNS string `json:"netns"`
	Addr  string `json:"addr"` // ip:port
}

// Response returns the HTTP/1.1 reply a backend sends: valid HTTP so that
// curl or wrk can be pointed at a service too, naming the pod in a header
// and in the body so the client can count the per-backend distribution.
func Response(pod string) []byte {
	body := pod + "\n"
	return []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\nX-Svclab-Pod: %s\r\n\r\n%s", len(body), pod, body))
}

// Serve runs the backend server: it opens every listener, writes "ready" on
// ready, and serves until the process is killed.
func Serve(spec ServerSpec, ready io.Writer) error {
	if len(spec.Listeners) == 0 {
		return errors.New("serve: no listeners")
	}
	lns := make([]net.Listener, 0, len(spec.Listeners))
	for _, l := range spec.Listeners {
		ns, err := nsutil.Open(l.NetNS)
		if err != nil {
			return err
		}
		// A socket belongs to the namespace it was created in, whatever
		// thread uses it later.
		err = ns.Do(func() error {
			ln, err := net.Listen("tcp4", l.Addr)
			if err != nil {
				return fmt.Errorf("serve: listen %s in %s: %w", l.Addr, l.NetNS, err)
			}
			lns = append(lns, ln)
			return nil
		})
		h := ns.Handle()
		h.Close()
		if err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Add(1)
		go func(ln net.Listener, resp []byte) {
			defer wg.Done()
			acceptLoop(ln, resp)
		}(ln, Response(spec.Listeners[i].Pod))
	}
	if _, err := fmt.Fprintln(ready, "ready"); err != nil {
		return err
	}
	wg.Wait()
	return nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

func acceptLoop(ln net.Listener, resp []byte) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: back off instead of spinning.
			time.Sleep(time.Millisecond)
			continue
		}
		go handle(c, resp)
	}
}

// handle answers one request and then waits for the client to close first,
// so TIME_WAIT stays on the client side (as netperf TCP_CRR does) and never
// piles up in the backend namespaces where it would collide with later
// connections.
func handle(c net.Conn, resp []byte) {
	defer c.Close()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	n := 0
	for {
		m, err := c.Read(buf[n:])
		n += m
		if bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
			break
		}
		if err != nil || n == len(buf) {
			return
		}
	}
	if _, err := c.Write(resp); err != nil {
		return
	}
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// ServerProcess is a running backend server.
type ServerProcess struct {
	cmd *exec.Cmd
}

// BackendListeners returns a listener on port in every backend pod of t.
func BackendListeners(t *Topology, port uint16) ServerSpec {
	var spec ServerSpec
	for _, b := range t.Backends {
		spec.Listeners = append(spec.Listeners, Listener{Pod: b.Name, NetNS: b.NS.Name, Addr: fmt.Sprintf("%s:%d", b.Addr, port)})
	}
	return spec
}

// StartServer starts the backend server as a child process, forked in ns and
// born in cgroup cg, and waits until every listener is open.
func StartServer(ns *nsutil.NS, cg *Cgroup, spec ServerSpec) (_ *ServerProcess, err error) {
	in, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, childServe)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cgf, err := cg.OpenFD()
	if err != nil {
		return nil, err
	}
	defer cgf.Close()
	if err := ns.Start(cmd, int(cgf.Fd())); err != nil {
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
