package socketlb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/features"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/cgroup2"
	"svclab/internal/nsutil"
)

// requirePrivileged skips when the test cannot work at all (not root) and
// when an old kernel lacks a prerequisite; on a kernel that has everything
// (5.18: bpf_link for cgroups, getpeername hooks, bpf_set_retval) a failed
// probe fails.
func requirePrivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs, creates a network namespace and a cgroup v2 directory")
	}
	err := Probe()
	if err == nil {
		return
	}
	if kernelAtLeast(5, 18) {
		t.Fatalf("Probe failed on a kernel that should support socketlb: %v", err)
	}
	t.Skipf("kernel lacks a socketlb prerequisite: %v", err)
}

func kernelAtLeast(major, minor uint32) bool {
	v, err := features.LinuxVersionCode()
	return err == nil && v >= major<<16|minor<<8
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
	root, err := cgroup2.Find()
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

// The test backends all live on lo of the test netns: 127/8 is local, and
// the IPv6 ones get their addresses added to lo. Untranslated traffic to a
// ClusterIP has no route there, so ENETUNREACH proves a socket was left
// alone. Every backend answers on TCP 8080 and UDP 5353 with its name, and
// on TCP 8081 with its name and "/8081".
var (
	backends4 = []string{"a", "b", "c", "d"}
	backends6 = []string{"a6", "b6", "c6", "d6"}
	backendIP = map[string]string{
		"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3", "d": "127.0.0.4",
		"a6": "fd00::1", "b6": "fd00::2", "c6": "fd00::3", "d6": "fd00::4",
	}
)

// be is the endpoint of a test backend, ready.
func be(name string) datapath.Endpoint { return ep(name, backendIP[name]) }

// addr formats a backend's address and port as the client sees it.
func addr(name string, port uint16) string {
	return netip.AddrPortFrom(netip.MustParseAddr(backendIP[name]), port).String()
}

// fixture is a test cgroup and netns with the backends running and a
// datapath set up for them.
type fixture struct {
	t  *testing.T
	cg *testCgroup
	ns *nsutil.NS
	dp *SocketLB

	// udpMu guards udpLast: per UDP backend address, its socket and the
	// last client that sent to it, so a test can send that client a late
	// reply from the backend after the datapath has moved on.
	udpMu   sync.Mutex
	udpLast map[netip.AddrPort]udpPeer
}

type udpPeer struct {
	pc   net.PacketConn
	from net.Addr
}

func newFixture(t *testing.T, tweak ...func(*SocketLB)) *fixture {
	t.Helper()
	requirePrivileged(t)
	f := &fixture{t: t, cg: newTestCgroup(t), ns: newTestNetNS(t), udpLast: map[netip.AddrPort]udpPeer{}}
	h, err := f.ns.NetlinkHandle()
	require.NoError(t, err)
	lo, err := h.LinkByName("lo")
	require.NoError(t, err)
	for _, name := range backends6 {
		a := netip.MustParseAddr(backendIP[name])
		// NODAD: usable at once, not tentative until DAD has run.
		require.NoError(t, h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}))
	}
	h.Close()
	for _, name := range append(slices.Clone(backends4), backends6...) {
		ip := netip.MustParseAddr(backendIP[name])
		f.serveTCP(name, netip.AddrPortFrom(ip, 8080), name)
		f.serveTCP(name, netip.AddrPortFrom(ip, 8081), name+"/8081")
		f.serveUDP(netip.AddrPortFrom(ip, 5353), name)
	}

	f.dp = New()
	for _, fn := range tweak {
		fn(f.dp)
	}
	require.NoError(t, f.dp.Setup(context.Background(), &datapath.Env{
		NodeCgroup: f.cg.path,
		Clients:    []datapath.Pod{{Name: "client", NS: f.ns}},
	}))
	t.Cleanup(func() { assert.NoError(t, f.dp.Close()) })
	return f
}

func (f *fixture) apply(svcs ...datapath.Service) {
	f.t.Helper()
	require.NoError(f.t, f.dp.Apply(context.Background(), datapath.State{Services: svcs}))
}

func (f *fixture) client() *client { return startClient(f.t, f.ns, f.cg) }

// serveTCP answers every connection with reply and a newline.
func (f *fixture) serveTCP(name string, ap netip.AddrPort, reply string) {
	f.t.Helper()
	var l net.Listener
	require.NoError(f.t, f.ns.Do(func() error {
		// The socket belongs to the namespace it is created in, so it
		// keeps listening there after this thread leaves it.
		var err error
		l, err = net.Listen("tcp", ap.String())
		return err
	}), "listen on %s for %s", ap, name)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(reply + "\n"))
			c.Close()
		}
	}()
	f.t.Cleanup(func() { l.Close(); wg.Wait() })
}

// serveUDP answers every datagram with reply, from ap.
func (f *fixture) serveUDP(ap netip.AddrPort, reply string) {
	f.t.Helper()
	var pc net.PacketConn
	require.NoError(f.t, f.ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", ap.String())
		return err
	}), "listen on udp %s", ap)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			f.udpMu.Lock()
			f.udpLast[ap] = udpPeer{pc: pc, from: from}
			f.udpMu.Unlock()
			_, _ = pc.WriteTo([]byte(reply), from)
		}
	}()
	f.t.Cleanup(func() { pc.Close(); wg.Wait() })
}

// lateReply sends reply from the UDP backend at ap to the last client that
// sent to it: a datagram the backend answers after the client's socket was
// re-steered away from it.
func (f *fixture) lateReply(ap netip.AddrPort, reply string) {
	f.t.Helper()
	f.udpMu.Lock()
	p, ok := f.udpLast[ap]
	f.udpMu.Unlock()
	require.True(f.t, ok, "no client has sent to %s", ap)
	_, err := p.pc.WriteTo([]byte(reply), p.from)
	require.NoError(f.t, err)
}

// readTables dumps the three maps Apply writes.
func readTables(t *testing.T, s *SocketLB) tables {
	t.Helper()
	out := newTables()
	var sk socketlbSvcKey
	var sv socketlbSvcEntry
	it := s.maps.SvclabServices.Iterate()
	for it.Next(&sk, &sv) {
		out.services[sk] = sv
	}
	require.NoError(t, it.Err())
	var bk socketlbBackendKey
	var bv socketlbBackendEntry
	bit := s.maps.SvclabBackends.Iterate()
	for bit.Next(&bk, &bv) {
		out.backends[bk] = bv
	}
	require.NoError(t, bit.Err())
	var mk socketlbMemberKey
	var mv uint32
	mit := s.maps.SvclabMembers.Iterate()
	for mit.Next(&mk, &mv) {
		out.members[mk] = mv
	}
	require.NoError(t, mit.Err())
	return out
}

func keysOf(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return sortedStrings(out)
}

// only asserts that every count in m is under one key, and returns it.
func only(t *testing.T, m map[string]int, what string) string {
	t.Helper()
	if !assert.Len(t, m, 1, "%s: %v", what, m) {
		return ""
	}
	return keysOf(m)[0]
}

func withPorts(s datapath.Service, ports ...datapath.ServicePort) datapath.Service {
	s.Ports = append(slices.Clone(s.Ports), ports...)
	return s
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
