package socketlb

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/nsutil"
)

// requirePrivileged skips when the test cannot work at all (not root) and
// when an old kernel lacks a prerequisite; on a kernel that has everything
// (5.18: bpf_link for cgroups and bpf_set_retval) a failed probe fails.
func requirePrivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs, creates a network namespace and a cgroup v2 directory")
	}
	err := Probe()
	if err == nil {
		return
	}
	v, verr := features.LinuxVersionCode()
	if verr == nil && v >= 5<<16|18<<8 {
		t.Fatalf("Probe failed on a kernel (%d.%d) that should support socketlb: %v", v>>16, v>>8&0xff, err)
	}
	t.Skipf("kernel lacks a socketlb prerequisite: %v", err)
}

func randomName(t *testing.T) string {
	t.Helper()
	var b [4]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return "svclab-test-" + hex.EncodeToString(b[:])
}

// testCgroup is a fresh cgroup v2 directory, removed at cleanup.
type testCgroup struct {
	path string
	// fd is an O_DIRECTORY handle for CLONE_INTO_CGROUP and prog queries.
	fd int
}

func newTestCgroup(t *testing.T) *testCgroup {
	t.Helper()
	root, err := cgroup2Mount()
	require.NoError(t, err, "find the cgroup2 mount")
	path := filepath.Join(root, randomName(t))
	require.NoError(t, os.Mkdir(path, 0o755))
	cg := &testCgroup{path: path, fd: -1}
	t.Cleanup(func() {
		if cg.fd >= 0 {
			unix.Close(cg.fd)
		}
		// Children were waited for, but kill any straggler so rmdir works.
		_ = os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
		var err error
		for range 50 {
			if err = unix.Rmdir(path); err == nil || errors.Is(err, unix.ENOENT) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: %v", path, err)
	})
	cg.fd, err = unix.Open(path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	require.NoError(t, err, "open cgroup %s", path)
	return cg
}

func newTestNetNS(t *testing.T) *nsutil.NS {
	t.Helper()
	ns, err := nsutil.Create(randomName(t))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	return ns
}

// startBackends listens on each address inside ns and answers every
// connection with the backend's name and a newline.
func startBackends(t *testing.T, ns *nsutil.NS, backends map[string]string) {
	t.Helper()
	var wg sync.WaitGroup
	// Cleanups run last-in first-out: this wait runs after every listener
	// registered below has been closed.
	t.Cleanup(wg.Wait)
	for name, addr := range backends {
		var l net.Listener
		require.NoError(t, ns.Do(func() error {
			// The socket belongs to the namespace it is created in, so it
			// keeps listening there after this thread leaves it.
			var err error
			l, err = net.Listen("tcp4", addr)
			return err
		}), "listen on %s in %s", addr, ns.Name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, name+"\n")
				c.Close()
			}
		}()
		t.Cleanup(func() { l.Close() })
	}
}

// helperEnv carries the client's work to TestHelperProcess as JSON.
const helperEnv = "SVCLAB_SOCKETLB_TEST_DIALS"

type dialSpec struct {
	Net   string `json:"net"`
	Addr  string `json:"addr"`
	Count int    `json:"count"`
}

type dialResult struct {
	Net     string        `json:"net"`
	Addr    string        `json:"addr"`
	Reply   string        `json:"reply,omitempty"`
	Errno   syscall.Errno `json:"errno,omitempty"`
	Err     string        `json:"err,omitempty"`
	Elapsed time.Duration `json:"elapsed"`
}

type helperOutput struct {
	// Cgroup is the child's cgroup v2 path, from /proc/self/cgroup.
	Cgroup string       `json:"cgroup"`
	Dials  []dialResult `json:"dials"`
}

// TestHelperProcess is the client: the test binary re-executed inside the
// netns and the cgroup, so that the connect4 hook sees its sockets. It does
// nothing in a normal test run.
func TestHelperProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		return
	}
	var specs []dialSpec
	if err := json.Unmarshal([]byte(raw), &specs); err != nil {
		fmt.Fprintln(os.Stderr, "bad", helperEnv, err)
		os.Exit(2)
	}
	var out helperOutput
	out.Cgroup = ownCgroup()
	for _, s := range specs {
		for range s.Count {
			out.Dials = append(out.Dials, dialOnce(s.Net, s.Addr))
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(2)
	}
	// Exit before the testing package prints its own summary to stdout.
	os.Exit(0)
}

func ownCgroup() string {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p
		}
	}
	return ""
}

func dialOnce(network, addr string) dialResult {
	r := dialResult{Net: network, Addr: addr}
	start := time.Now()
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err == nil {
		if network == "tcp4" {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			var line string
			line, err = bufio.NewReader(c).ReadString('\n')
			r.Reply = strings.TrimSpace(line)
		}
		c.Close()
	}
	r.Elapsed = time.Since(start)
	if err != nil {
		r.Err = err.Error()
		errors.As(err, &r.Errno)
	}
	return r
}

// runClient runs one client process in ns and cg and returns its results
// grouped by destination.
func runClient(t *testing.T, ns *nsutil.NS, cg *testCgroup, specs ...dialSpec) map[string][]dialResult {
	t.Helper()
	raw, err := json.Marshal(specs)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(raw))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, ns.Start(cmd, cg.fd))
	require.NoError(t, cmd.Wait(), "client process; stderr: %s", stderr.String())

	var out helperOutput
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &out), "client output %q", stdout.String())
	require.Equal(t, "/"+filepath.Base(cg.path), out.Cgroup, "client must run inside the test cgroup")
	byAddr := map[string][]dialResult{}
	for _, d := range out.Dials {
		byAddr[d.Net+" "+d.Addr] = append(byAddr[d.Net+" "+d.Addr], d)
	}
	return byAddr
}

func replies(ds []dialResult) map[string]int {
	out := map[string]int{}
	for _, d := range ds {
		if d.Err != "" {
			out["error: "+d.Err]++
			continue
		}
		out[d.Reply]++
	}
	return out
}

func keysOf(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return sortedStrings(out)
}

// readTables dumps both kernel maps.
func readTables(t *testing.T, s *SocketLB) tables {
	t.Helper()
	out := newTables()
	var sk socketlbSvcKey
	var sv socketlbSvcEntry
	it := s.objs.SvclabServices.Iterate()
	for it.Next(&sk, &sv) {
		out.services[sk] = sv
	}
	require.NoError(t, it.Err())
	var bk socketlbBackendKey
	var bv socketlbBackendEntry
	bit := s.objs.SvclabBackends.Iterate()
	for bit.Next(&bk, &bv) {
		out.backends[bk] = bv
	}
	require.NoError(t, bit.Err())
	return out
}

func TestPrivilegedConnect4(t *testing.T) {
	requirePrivileged(t)
	ctx := context.Background()

	cg := newTestCgroup(t)
	ns := newTestNetNS(t)
	// One port for all backends: a Service has one targetPort, so the
	// backends differ by address. All of 127/8 is local on lo.
	startBackends(t, ns, map[string]string{
		"backend-1": "127.0.0.1:8080",
		"backend-2": "127.0.0.2:8080",
		"backend-3": "127.0.0.3:8080",
	})

	dp := New()
	require.NoError(t, dp.Setup(ctx, &datapath.Env{ClientCgroup: cg.path}))
	t.Cleanup(func() { assert.NoError(t, dp.Close()) })

	info := dp.Info()
	assert.Equal(t, "bpf_link", info["attach"])
	assert.Equal(t, "ECONNREFUSED", info["no_endpoints_errno"], "bpf_set_retval should be usable on this kernel")

	progInfo, err := dp.objs.SvclabSock4Connect.Info()
	require.NoError(t, err)
	progID, ok := progInfo.ID()
	require.True(t, ok, "kernel reports no program ID")
	assert.True(t, strings.HasPrefix(progInfo.Name, "svclab_"), "program name %q carries the svclab_ prefix", progInfo.Name)
	var mapIDs []ebpf.MapID
	for _, m := range []*ebpf.Map{dp.objs.SvclabServices, dp.objs.SvclabBackends} {
		mi, err := m.Info()
		require.NoError(t, err)
		id, ok := mi.ID()
		require.True(t, ok)
		assert.True(t, strings.HasPrefix(mi.Name, "svclab_"), "map name %q carries the svclab_ prefix", mi.Name)
		mapIDs = append(mapIDs, id)
	}

	web := svc("web", "10.96.0.10", 80, 8080, ep("backend-1", "127.0.0.1"), ep("backend-2", "127.0.0.2"), ep("backend-3", "127.0.0.3"))
	empty := svc("empty", "10.96.0.11", 80, 8080)
	require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{web, empty}}))
	assert.Equal(t, dp.installed, readTables(t, dp), "cache must equal the kernel maps")

	// 60 connections miss one of three backends with probability 3*(2/3)^60.
	res := runClient(t, ns, cg,
		dialSpec{"tcp4", "10.96.0.10:80", 60},
		dialSpec{"tcp4", "127.0.0.2:8080", 3},
		dialSpec{"tcp4", "10.96.0.10:81", 1},
		dialSpec{"tcp4", "10.96.0.11:80", 3},
		dialSpec{"udp4", "10.96.0.10:80", 1},
	)

	tests := []struct {
		name  string
		dials []dialResult
		check func(t *testing.T, ds []dialResult)
	}{
		{"VIP reaches all three backends and only them", res["tcp4 10.96.0.10:80"], func(t *testing.T, ds []dialResult) {
			assert.Equal(t, []string{"backend-1", "backend-2", "backend-3"}, keysOf(replies(ds)), "replies: %v", replies(ds))
		}},
		{"a backend's own address is left alone", res["tcp4 127.0.0.2:8080"], func(t *testing.T, ds []dialResult) {
			assert.Equal(t, map[string]int{"backend-2": 3}, replies(ds))
		}},
		// Without translation the namespace has no route to the VIP, so
		// ENETUNREACH proves the socket was not touched.
		{"a port the service does not have is left alone", res["tcp4 10.96.0.10:81"], func(t *testing.T, ds []dialResult) {
			for _, d := range ds {
				assert.Equal(t, unix.ENETUNREACH, d.Errno, "dial %s: %s", d.Addr, d.Err)
			}
		}},
		{"UDP is not translated in this scope", res["udp4 10.96.0.10:80"], func(t *testing.T, ds []dialResult) {
			for _, d := range ds {
				assert.Equal(t, unix.ENETUNREACH, d.Errno, "dial %s: %s", d.Addr, d.Err)
			}
		}},
		{"service without endpoints refuses promptly", res["tcp4 10.96.0.11:80"], func(t *testing.T, ds []dialResult) {
			for _, d := range ds {
				assert.Equal(t, unix.ECONNREFUSED, d.Errno, "dial %s: %s", d.Addr, d.Err)
				assert.Less(t, d.Elapsed, 500*time.Millisecond, "refusal must come from connect() itself")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NotEmpty(t, tt.dials, "client made no such dial")
			tt.check(t, tt.dials)
		})
	}

	t.Run("resync drops a removed endpoint and its slot", func(t *testing.T) {
		web2 := svc("web", "10.96.0.10", 80, 8080, ep("backend-1", "127.0.0.1"), ep("backend-2", "127.0.0.2"))
		require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{web2, empty}}))
		kernel := readTables(t, dp)
		assert.Equal(t, dp.installed, kernel)
		assert.Len(t, kernel.backends, 2)

		res := runClient(t, ns, cg, dialSpec{"tcp4", "10.96.0.10:80", 40})
		assert.Equal(t, []string{"backend-1", "backend-2"}, keysOf(replies(res["tcp4 10.96.0.10:80"])))
	})

	t.Run("empty state empties the maps", func(t *testing.T) {
		require.NoError(t, dp.Apply(ctx, datapath.State{}))
		kernel := readTables(t, dp)
		assert.Empty(t, kernel.services)
		assert.Empty(t, kernel.backends)
	})

	t.Run("close leaves nothing behind", func(t *testing.T) {
		require.NoError(t, dp.Close())
		require.NoError(t, dp.Close(), "second Close")
		assert.ErrorIs(t, dp.Apply(ctx, datapath.State{}), ErrNotSetUp)

		q, err := link.QueryPrograms(link.QueryOptions{Target: cg.fd, Attach: ebpf.AttachCGroupInet4Connect})
		require.NoError(t, err)
		assert.Empty(t, q.Programs, "connect4 programs still attached to %s", cg.path)

		// Freeing is asynchronous once the last reference is gone.
		assert.Eventually(t, func() bool {
			p, err := ebpf.NewProgramFromID(progID)
			if err == nil {
				p.Close()
				return false
			}
			return errors.Is(err, os.ErrNotExist)
		}, 5*time.Second, 20*time.Millisecond, "program %d (svclab_sock4_connect) still loaded", progID)
		for _, id := range mapIDs {
			assert.Eventually(t, func() bool {
				m, err := ebpf.NewMapFromID(id)
				if err == nil {
					m.Close()
					return false
				}
				return errors.Is(err, os.ErrNotExist)
			}, 5*time.Second, 20*time.Millisecond, "map %d still exists", id)
		}

		// And the client is back to an untranslated world.
		res := runClient(t, ns, cg, dialSpec{"tcp4", "10.96.0.10:80", 1})
		for _, d := range res["tcp4 10.96.0.10:80"] {
			assert.Equal(t, unix.ENETUNREACH, d.Errno, "dial after Close: %s", d.Err)
		}
	})
}

func TestPrivilegedSetupFailures(t *testing.T) {
	requirePrivileged(t)
	ctx := context.Background()

	t.Run("missing cgroup directory", func(t *testing.T) {
		dp := New()
		missing := filepath.Join(os.TempDir(), randomName(t))
		err := dp.Setup(ctx, &datapath.Env{ClientCgroup: missing})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "attach connect4 to "+missing)
		assert.NoError(t, dp.Close(), "Close after a failed Setup")
		assert.NoError(t, dp.Close(), "second Close")
		assert.ErrorIs(t, dp.Apply(ctx, datapath.State{}), ErrNotSetUp)
	})

	t.Run("setup twice", func(t *testing.T) {
		cg := newTestCgroup(t)
		dp := New()
		require.NoError(t, dp.Setup(ctx, &datapath.Env{ClientCgroup: cg.path}))
		t.Cleanup(func() { assert.NoError(t, dp.Close()) })
		assert.ErrorIs(t, dp.Setup(ctx, &datapath.Env{ClientCgroup: cg.path}), ErrAlreadySetUp)

		q, err := link.QueryPrograms(link.QueryOptions{Target: cg.fd, Attach: ebpf.AttachCGroupInet4Connect})
		require.NoError(t, err)
		assert.Len(t, q.Programs, 1, "a refused second Setup must not attach again")
	})

	t.Run("apply rejects a state it cannot hold without touching the maps", func(t *testing.T) {
		cg := newTestCgroup(t)
		dp := New()
		require.NoError(t, dp.Setup(ctx, &datapath.Env{ClientCgroup: cg.path}))
		t.Cleanup(func() { assert.NoError(t, dp.Close()) })
		good := svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"))
		require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{good}}))
		before := readTables(t, dp)

		bad := svc("v6", "fd00::10", 80, 8080)
		err := dp.Apply(ctx, datapath.State{Services: []datapath.Service{bad}})
		assert.ErrorIs(t, err, ErrUnsupportedService)
		assert.Equal(t, before, readTables(t, dp))
	})
}
