//go:build linux

package progtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const (
	protoTCP = 6
	protoUDP = 17
)

// objects holds only the test program and the maps it reads: the cgroup
// and iterator programs in the same object are never loaded.
type objects struct {
	Fwd      *ebpf.Program `ebpf:"svclab_test_fwd"`
	Services *ebpf.Map     `ebpf:"svclab_services"`
	Backends *ebpf.Map     `ebpf:"svclab_backends"`
	Members  *ebpf.Map     `ebpf:"svclab_members"`
}

func (o *objects) close() {
	for _, c := range []interface{ Close() error }{o.Fwd, o.Services, o.Backends, o.Members} {
		if c != nil {
			_ = c.Close()
		}
	}
}

// words is addr as the BPF side stores it: 16 bytes in network order,
// IPv4 v4-mapped, read as native-endian __be32 words.
func words(addr netip.Addr) [4]uint32 {
	b := addr.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func fromWords(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		binary.NativeEndian.PutUint32(b[4*i:], x)
	}
	return netip.AddrFrom16(b)
}

// be16 is port as a __be16 read natively.
func be16(port uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, port))
}

// service is one frontend and its backends in slot order.
type service struct {
	id       uint32
	vip      netip.AddrPort
	proto    uint8
	backends []netip.AddrPort
}

var (
	svcV4 = service{id: 1, vip: netip.MustParseAddrPort("10.96.0.10:80"), proto: protoTCP, backends: []netip.AddrPort{
		netip.MustParseAddrPort("10.0.1.1:8080"),
		netip.MustParseAddrPort("10.0.1.2:8080"),
		netip.MustParseAddrPort("10.0.1.3:8080"),
	}}
	svcEmpty = service{id: 2, vip: netip.MustParseAddrPort("10.96.0.11:80"), proto: protoTCP}
	svcV6    = service{id: 3, vip: netip.MustParseAddrPort("[fd00::10]:53"), proto: protoUDP, backends: []netip.AddrPort{
		netip.MustParseAddrPort("[fd00:1::1]:5353"),
		netip.MustParseAddrPort("[fd00:1::2]:5353"),
	}}
)

// install writes svc the way the loader lays it out: a service entry with
// the backend count, one backend entry per slot, one membership per backend.
func install(t testing.TB, o *objects, svc service) {
	t.Helper()
	key := progtestSvcKey{Addr: words(svc.vip.Addr()), Port: be16(svc.vip.Port()), Proto: svc.proto}
	entry := progtestSvcEntry{Id: svc.id, Count: uint16(len(svc.backends))}
	require.NoError(t, o.Services.Put(&key, &entry), "service %s", svc.vip)
	for slot, be := range svc.backends {
		bk := progtestBackendKey{SvcId: svc.id, Slot: uint32(slot)}
		bv := progtestBackendEntry{Addr: words(be.Addr()), Port: be16(be.Port())}
		require.NoError(t, o.Backends.Put(&bk, &bv), "backend %s", be)
		mk := progtestMemberKey{SvcId: svc.id, Addr: bv.Addr, Port: bv.Port}
		slotVal := uint32(slot)
		require.NoError(t, o.Members.Put(&mk, &slotVal), "member %s", be)
	}
}

func load(t testing.TB) *objects {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
	if err := features.HaveProgramType(ebpf.Syscall); errors.Is(err, ebpf.ErrNotSupported) {
		t.Skip("kernel lacks BPF_PROG_TYPE_SYSCALL (Linux 5.14+)")
	} else {
		require.NoError(t, err, "probe BPF_PROG_TYPE_SYSCALL")
	}
	spec, err := loadProgtest()
	require.NoError(t, err, "parse test object")
	o := &objects{}
	require.NoError(t, spec.LoadAndAssign(o, nil), "load svclab_test_fwd")
	t.Cleanup(o.close)
	for _, svc := range []service{svcV4, svcEmpty, svcV6} {
		install(t, o, svc)
	}
	return o
}

// call is one socket call the worker sees.
type call struct {
	family  uint32 // socket family: AF_INET or AF_INET6
	dst     netip.AddrPort
	proto   uint32
	connect bool
	rand    uint32 // what bpf_get_prandom_u32() returns
}

// run runs the forward worker once on a fresh socket and returns its return
// code and the destination as the socket sees it afterwards.
func run(t *testing.T, o *objects, c call) (int32, netip.AddrPort) {
	t.Helper()
	var ctx progtestProgtestCtx
	ctx.Sa.UserFamily = c.family
	ctx.Sa.Family = c.family
	ctx.Sa.Protocol = c.proto
	ctx.Sa.UserPort = uint32(be16(c.dst.Port()))
	if c.family == syscall.AF_INET {
		ctx.Sa.UserIp4 = words(c.dst.Addr())[3]
	} else {
		ctx.Sa.UserIp6 = words(c.dst.Addr())
	}
	ctx.Rand = c.rand
	if c.connect {
		ctx.IsConnect = 1
	}
	var out progtestProgtestCtx
	_, err := o.Fwd.Run(&ebpf.RunOptions{Context: &ctx, ContextOut: &out})
	require.NoError(t, err, "BPF_PROG_RUN svclab_test_fwd")

	port := binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, uint16(out.Sa.UserPort)))
	if c.family == syscall.AF_INET {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], out.Sa.UserIp4)
		return out.Ret, netip.AddrPortFrom(netip.AddrFrom4(b), port)
	}
	return out.Ret, netip.AddrPortFrom(fromWords(out.Sa.UserIp6), port)
}

func mapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
}

func TestPrivilegedForward(t *testing.T) {
	o := load(t)
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		call    call
		wantRet int32
		want    netip.AddrPort
	}{
		{"non-service address untouched",
			call{syscall.AF_INET, ap("10.1.2.3:80"), protoTCP, true, 0}, 0, ap("10.1.2.3:80")},
		{"service port mismatch untouched",
			call{syscall.AF_INET, ap("10.96.0.10:81"), protoTCP, true, 0}, 0, ap("10.96.0.10:81")},
		{"service protocol mismatch untouched",
			call{syscall.AF_INET, ap("10.96.0.10:80"), protoUDP, false, 0}, 0, ap("10.96.0.10:80")},
		// Neither TCP nor UDP (SCTP): the worker never looks the address up.
		{"other protocol untouched",
			call{syscall.AF_INET, ap("10.96.0.10:80"), 132, true, 0}, 0, ap("10.96.0.10:80")},
		{"service hit connect",
			call{syscall.AF_INET, ap("10.96.0.10:80"), protoTCP, true, 1}, 0, svcV4.backends[1]},
		{"service hit sendmsg",
			call{syscall.AF_INET, ap("10.96.0.10:80"), protoTCP, false, 2}, 0, svcV4.backends[2]},
		// Slot is rand % count: 7 % 3 = 1, 0xffffffff % 3 = 0.
		{"random value wraps modulo count",
			call{syscall.AF_INET, ap("10.96.0.10:80"), protoTCP, true, 7}, 0, svcV4.backends[1]},
		{"largest random value",
			call{syscall.AF_INET, ap("10.96.0.10:80"), protoTCP, true, 0xffffffff}, 0, svcV4.backends[0]},
		// The address stays as the caller named it: a refused connect leaves nothing rewritten.
		{"zero backends refused",
			call{syscall.AF_INET, ap("10.96.0.11:80"), protoTCP, true, 0}, -int32(syscall.ECONNREFUSED), ap("10.96.0.11:80")},
		{"zero backends refused sendmsg",
			call{syscall.AF_INET, ap("10.96.0.11:80"), protoTCP, false, 0}, -int32(syscall.ECONNREFUSED), ap("10.96.0.11:80")},
		// An AF_INET6 socket naming ::ffff:VIP reaches the IPv4 service
		// and gets a v4-mapped backend back.
		{"v4-mapped address hits v4 service",
			call{syscall.AF_INET6, mapped(ap("10.96.0.10:80")), protoTCP, true, 2}, 0, mapped(svcV4.backends[2])},
		{"v4-mapped non-service untouched",
			call{syscall.AF_INET6, mapped(ap("10.1.2.3:80")), protoTCP, true, 2}, 0, mapped(ap("10.1.2.3:80"))},
		{"ipv6 service hit",
			call{syscall.AF_INET6, ap("[fd00::10]:53"), protoUDP, false, 1}, 0, svcV6.backends[1]},
		{"ipv6 service protocol mismatch untouched",
			call{syscall.AF_INET6, ap("[fd00::10]:53"), protoTCP, true, 1}, 0, ap("[fd00::10]:53")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ret, got := run(t, o, tt.call)
			assert.Equal(t, tt.wantRet, ret, "worker return code")
			assert.Equal(t, tt.want, got, "destination after the worker")
		})
	}
}

// Every slot is reachable, and each random value names exactly slot r % count.
func TestPrivilegedEverySlotReachable(t *testing.T) {
	o := load(t)
	for _, svc := range []service{svcV4, svcV6} {
		t.Run(svc.vip.String(), func(t *testing.T) {
			family := uint32(syscall.AF_INET6)
			if svc.vip.Addr().Is4() {
				family = syscall.AF_INET
			}
			n := uint32(len(svc.backends))
			seen := map[netip.AddrPort]bool{}
			for r := range 4 * n {
				ret, got := run(t, o, call{family, svc.vip, uint32(svc.proto), true, r})
				require.Zero(t, ret, "rand %d", r)
				assert.Equal(t, svc.backends[r%n], got, fmt.Sprintf("rand %d picks slot %d", r, r%n))
				seen[got] = true
			}
			assert.Len(t, seen, len(svc.backends), "backends reached")
		})
	}
}

// The test object includes socketlb.c, so its maps must be the datapath's:
// a stale progtest_bpfel.o would test an older layout.
func TestMapsMatchDatapathObject(t *testing.T) {
	prod, err := ebpf.LoadCollectionSpec("../socketlb_bpfel.o")
	require.NoError(t, err, "parse datapath object")
	test, err := loadProgtest()
	require.NoError(t, err, "parse test object")
	for name, want := range prod.Maps {
		t.Run(name, func(t *testing.T) {
			got, ok := test.Maps[name]
			if !assert.True(t, ok, "map %s missing from the test object", name) {
				return
			}
			assert.Equal(t, want.Type, got.Type, "type")
			assert.Equal(t, want.KeySize, got.KeySize, "key size")
			assert.Equal(t, want.ValueSize, got.ValueSize, "value size")
			assert.Equal(t, want.MaxEntries, got.MaxEntries, "max entries")
			assert.Equal(t, want.Flags, got.Flags, "flags")
		})
	}
}

// forwardRunTime runs the forward worker n times on a service hit (a
// connect to svcV4) and returns the kernel's own run time per run from its
// BPF statistics (run_time_ns/run_cnt, the accounting the bench reads for
// the datapath's bpf-connect4 figure) and the wall-clock time per
// BPF_PROG_RUN call seen from here. BPF_PROG_RUN of a syscall program
// refuses repeat and duration (the kernel runs it once per call and
// reports no time), so the statistics are what give the kernel's figure.
func forwardRunTime(tb testing.TB, o *objects, n int) (kernelNS, callNS float64, runs uint64) {
	tb.Helper()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	require.NoError(tb, err, "BPF_ENABLE_STATS")
	defer stats.Close()
	var ctx progtestProgtestCtx
	ctx.Sa.UserFamily, ctx.Sa.Family, ctx.Sa.Protocol = syscall.AF_INET, syscall.AF_INET, protoTCP
	ctx.Sa.UserIp4 = words(svcV4.vip.Addr())[3]
	ctx.Sa.UserPort = uint32(be16(svcV4.vip.Port()))
	ctx.IsConnect, ctx.Rand = 1, 1
	before, err := o.Fwd.Stats()
	require.NoError(tb, err)
	var out progtestProgtestCtx
	t0 := time.Now()
	for range n {
		// A fresh context each run: the worker rewrites it.
		in := ctx
		if _, err := o.Fwd.Run(&ebpf.RunOptions{Context: &in, ContextOut: &out}); err != nil {
			require.NoError(tb, err, "BPF_PROG_RUN svclab_test_fwd")
		}
	}
	wall := time.Since(t0)
	after, err := o.Fwd.Stats()
	require.NoError(tb, err)
	require.Zero(tb, out.Ret, "the worker translated the connect")
	runs = after.RunCount - before.RunCount
	if runs == 0 {
		return 0, float64(wall.Nanoseconds()) / float64(n), 0
	}
	return float64((after.Runtime - before.Runtime).Nanoseconds()) / float64(runs), float64(wall.Nanoseconds()) / float64(n), runs
}

// TestPrivilegedForwardRunTime gives the forward worker's own cost per
// run under BPF_PROG_RUN, to set beside the bench's bpf-connect4 per-call
// figure (Trial.Cost, run_time_ns/run_cnt of the attached program). It
// checks that the kernel accounted every run and that a run costs what a
// few map lookups cost, not microseconds.
func TestPrivilegedForwardRunTime(t *testing.T) {
	o := load(t)
	// The kernel refuses a repeat count for syscall programs: say so
	// where someone would look for it.
	var ctx progtestProgtestCtx
	_, err := o.Fwd.Run(&ebpf.RunOptions{Context: &ctx, Repeat: 100})
	t.Logf("BPF_PROG_RUN with repeat 100 on a syscall program: %v", err)
	const n = 200000
	kernel, call, runs := forwardRunTime(t, o, n)
	require.Equal(t, uint64(n), runs, "the kernel counted every run")
	t.Logf("forward worker under BPF_PROG_RUN: %.1f ns per run (kernel run_time_ns/run_cnt over %d runs); %.0f ns per BPF_PROG_RUN call from user space", kernel, runs, call)
	assert.Greater(t, kernel, 1.0, "a run takes time")
	assert.Less(t, kernel, 2000.0, "three map lookups and a rewrite are not microseconds")
	assert.Greater(t, call, kernel, "a system call costs more than the program it runs")
}

// BenchmarkForward reports the forward worker's kernel run time per run
// (ns/run, from BPF statistics) beside the time per BPF_PROG_RUN call.
func BenchmarkForward(b *testing.B) {
	o := load(b)
	kernel, _, _ := forwardRunTime(b, o, b.N)
	b.ReportMetric(kernel, "kernel-ns/run")
}
