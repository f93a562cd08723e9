package tcebpf

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

// tc verdicts as the programs return them.
const (
	tcActOK   = 0
	tcActShot = 2
)

// TCP flags.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// packet describes a test frame: Ethernet, IPv4 (with ipOpts bytes of
// options), TCP or UDP, and a payload.
type packet struct {
	src, dst netip.AddrPort
	proto    uint8
	flags    uint8
	seq      uint32
	ipOpts   int
	fragOff  uint16 // host order: MF flag and offset
	noUDPSum bool
	payload  string
}

// build returns the frame with valid IP and L4 checksums.
func (p packet) build() []byte {
	l4len := 20
	if p.proto == ipprotoUDP {
		l4len = 8
	}
	ihl := 20 + p.ipOpts
	b := make([]byte, 14+ihl+l4len+len(p.payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(ihl+l4len+len(p.payload)))
	binary.BigEndian.PutUint16(ip[6:], p.fragOff)
	ip[8] = 64
	ip[9] = p.proto
	s, d := p.src.Addr().As4(), p.dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	for i := 20; i < ihl; i++ {
		ip[i] = 1 // NOP options
	}
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(0, ip[:ihl]))
	l4 := ip[ihl:]
	binary.BigEndian.PutUint16(l4[0:], p.src.Port())
	binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
	copy(l4[l4len:], p.payload)
	if p.proto == ipprotoTCP {
		binary.BigEndian.PutUint32(l4[4:], p.seq)
		l4[12] = 5 << 4
		l4[13] = p.flags
		binary.BigEndian.PutUint16(l4[14:], 65535)
		binary.BigEndian.PutUint16(l4[16:], l4Checksum(ip, ihl))
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		if !p.noUDPSum {
			binary.BigEndian.PutUint16(l4[6:], l4Checksum(ip, ihl))
		}
	}
	return b
}

// onesSum adds b to sum in ones' complement arithmetic.
func onesSum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// l4Checksum computes the TCP/UDP checksum over the pseudo-header and the
// L4 segment, with the segment's own checksum field taken as zero.
func l4Checksum(ip []byte, ihl int) uint16 {
	seg := append([]byte(nil), ip[ihl:]...)
	off := 16
	if ip[9] == ipprotoUDP {
		off = 6
	}
	seg[off], seg[off+1] = 0, 0
	pseudo := make([]byte, 12)
	copy(pseudo[0:8], ip[12:20])
	pseudo[9] = ip[9]
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(seg)))
	sum := ^onesSum(uint32(onesSum(0, pseudo)), seg)
	if ip[9] == ipprotoUDP && sum == 0 {
		return 0xffff
	}
	return sum
}

// parsed is what a test checks of a frame the program returned.
type parsed struct {
	src, dst  netip.AddrPort
	ipSumOK   bool
	l4SumOK   bool
	l4SumZero bool
}

func parse(t *testing.T, b []byte) parsed {
	t.Helper()
	require.GreaterOrEqual(t, len(b), 14+20+8)
	ip := b[14:]
	ihl := int(ip[0]&0x0f) * 4
	l4 := ip[ihl:]
	var s, d [4]byte
	copy(s[:], ip[12:16])
	copy(d[:], ip[16:20])
	p := parsed{
		src:     netip.AddrPortFrom(netip.AddrFrom4(s), binary.BigEndian.Uint16(l4[0:])),
		dst:     netip.AddrPortFrom(netip.AddrFrom4(d), binary.BigEndian.Uint16(l4[2:])),
		ipSumOK: onesSum(0, ip[:ihl]) == 0xffff,
	}
	off := 16
	if ip[9] == ipprotoUDP {
		off = 6
	}
	got := binary.BigEndian.Uint16(l4[off:])
	p.l4SumZero = got == 0
	p.l4SumOK = got == l4Checksum(ip, ihl)
	return p
}

// run runs prog once on frame and returns the verdict and the frame after.
func run(t *testing.T, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)}
	ret, err := prog.Run(opts)
	require.NoError(t, err, "BPF_PROG_RUN")
	return ret, opts.DataOut
}

// TestPrivilegedProgramsByProgRun drives both programs with crafted frames
// through BPF_PROG_RUN: no interface, no namespace, exact bytes in and out.
// The cases run in order and share flow state, as packets of a real
// exchange would.
func TestPrivilegedProgramsByProgRun(t *testing.T) {
	RequirePrivileged(t)
	ctx := context.Background()

	objs := new(tcebpfObjects)
	require.NoError(t, loadTcebpfObjects(objs, nil))
	d := &Datapath{objs: objs, installed: newTables()}
	t.Cleanup(func() { assert.NoError(t, d.Close()) })

	web := svc("web", "10.96.0.10", 80, 8080, ep("b1", "10.244.0.11"), ep("b2", "10.244.0.12"), ep("b3", "10.244.0.13"))
	dns := udpSvc("dns", "10.96.0.53", 53, 5353, ep("d1", "10.244.0.21"))
	empty := svc("empty", "10.96.0.11", 80, 8080)
	require.NoError(t, d.Apply(ctx, datapath.State{Services: []datapath.Service{web, dns, empty}}))

	ingress, egress := objs.SvclabTcIngress, objs.SvclabTcEgress
	client := netip.MustParseAddrPort("10.244.0.1:40000")
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	backends := map[netip.AddrPort]bool{
		netip.MustParseAddrPort("10.244.0.11:8080"): true,
		netip.MustParseAddrPort("10.244.0.12:8080"): true,
		netip.MustParseAddrPort("10.244.0.13:8080"): true,
	}
	stat := func(name string) uint64 {
		s, err := d.stats()
		require.NoError(t, err)
		return s[name]
	}
	// fwdDst sends one client packet of the web flow and returns where it
	// went, checking the checksums on the way.
	fwdDst := func(t *testing.T, flags uint8, seq uint32) netip.AddrPort {
		t.Helper()
		ret, out := run(t, ingress, packet{src: client, dst: vip, proto: ipprotoTCP, flags: flags, seq: seq, payload: "GET /"}.build())
		require.Equal(t, uint32(tcActOK), ret)
		p := parse(t, out)
		assert.Equal(t, client, p.src, "source must stay the client")
		assert.True(t, p.ipSumOK, "IP checksum after DNAT")
		assert.True(t, p.l4SumOK, "TCP checksum after DNAT")
		return p.dst
	}

	var first netip.AddrPort
	t.Run("SYN to the VIP is translated to a backend", func(t *testing.T) {
		first = fwdDst(t, tcpSYN, 1000)
		assert.True(t, backends[first], "SYN went to %s, not a backend", first)
		assert.Equal(t, uint64(1), stat("new_flow"))
	})

	t.Run("every later packet and a retransmitted SYN keep the backend", func(t *testing.T) {
		for range 20 {
			assert.Equal(t, first, fwdDst(t, tcpACK, 1001))
		}
		assert.Equal(t, first, fwdDst(t, tcpSYN, 1000), "retransmitted SYN (same sequence number)")
		assert.Equal(t, uint64(1), stat("new_flow"), "no new flow for the same connection")
	})

	t.Run("backend's answer is rewritten back to the VIP", func(t *testing.T) {
		ret, out := run(t, egress, packet{src: first, dst: client, proto: ipprotoTCP, flags: tcpSYN | tcpACK, seq: 5000, payload: "HTTP/1.1 200"}.build())
		require.Equal(t, uint32(tcActOK), ret)
		p := parse(t, out)
		assert.Equal(t, vip, p.src)
		assert.Equal(t, client, p.dst)
		assert.True(t, p.ipSumOK, "IP checksum after reverse NAT")
		assert.True(t, p.l4SumOK, "TCP checksum after reverse NAT")
	})

	t.Run("a SYN with a new sequence number on the same tuple is a new flow", func(t *testing.T) {
		// TIME_WAIT reuse: the new connection picks afresh. With three
		// backends it lands elsewhere within a few tries (p=(1/3)^30).
		var next netip.AddrPort
		seq := uint32(2000)
		for range 30 {
			seq += 1000
			next = fwdDst(t, tcpSYN, seq)
			if next != first {
				break
			}
		}
		require.NotEqual(t, first, next, "30 new connections all picked %s", first)
		// The old backend's stray answers are no longer the VIP's.
		_, out := run(t, egress, packet{src: first, dst: client, proto: ipprotoTCP, flags: tcpACK}.build())
		assert.Equal(t, first, parse(t, out).src, "reverse entry of the replaced flow must be gone")
		_, out = run(t, egress, packet{src: next, dst: client, proto: ipprotoTCP, flags: tcpACK}.build())
		assert.Equal(t, vip, parse(t, out).src)
		first = next
	})

	t.Run("direct traffic reusing a translated tuple is left alone", func(t *testing.T) {
		before := stat("stale_reverse")
		frame := packet{src: client, dst: first, proto: ipprotoTCP, flags: tcpSYN, seq: 9}.build()
		ret, out := run(t, ingress, frame)
		require.Equal(t, uint32(tcActOK), ret)
		assert.Equal(t, frame, out[:len(frame)], "a non-service packet must not change")
		assert.Equal(t, before+1, stat("stale_reverse"))
		_, out = run(t, egress, packet{src: first, dst: client, proto: ipprotoTCP, flags: tcpSYN | tcpACK}.build())
		assert.Equal(t, first, parse(t, out).src, "the backend's answer to a direct connection must keep its source")
	})

	tests := []struct {
		name     string
		prog     *ebpf.Program
		pkt      packet
		wantRet  uint32
		wantDst  netip.AddrPort // zero: the frame must come out unchanged
		zeroUDP  bool
		wantStat string
	}{
		{name: "UDP to the VIP", prog: ingress, wantRet: tcActOK,
			pkt:     packet{src: client, dst: netip.MustParseAddrPort("10.96.0.53:53"), proto: ipprotoUDP, payload: "query"},
			wantDst: netip.MustParseAddrPort("10.244.0.21:5353")},
		{name: "UDP without checksum keeps none", prog: ingress, wantRet: tcActOK, zeroUDP: true,
			pkt:     packet{src: netip.MustParseAddrPort("10.244.0.1:40001"), dst: netip.MustParseAddrPort("10.96.0.53:53"), proto: ipprotoUDP, noUDPSum: true, payload: "q"},
			wantDst: netip.MustParseAddrPort("10.244.0.21:5353")},
		{name: "IP options shift the L4 header", prog: ingress, wantRet: tcActOK,
			pkt:     packet{src: netip.MustParseAddrPort("10.244.0.1:40002"), dst: netip.MustParseAddrPort("10.96.0.53:53"), proto: ipprotoUDP, ipOpts: 4, payload: "opt"},
			wantDst: netip.MustParseAddrPort("10.244.0.21:5353")},
		{name: "service without endpoints drops", prog: ingress, wantRet: tcActShot, wantStat: "drop_no_backend",
			pkt: packet{src: client, dst: netip.MustParseAddrPort("10.96.0.11:80"), proto: ipprotoTCP, flags: tcpSYN}},
		{name: "a port the service does not have passes untouched", prog: ingress, wantRet: tcActOK,
			pkt: packet{src: client, dst: netip.MustParseAddrPort("10.96.0.10:81"), proto: ipprotoTCP, flags: tcpSYN}},
		{name: "the other protocol passes untouched", prog: ingress, wantRet: tcActOK,
			pkt: packet{src: client, dst: vip, proto: ipprotoUDP}},
		{name: "fragments pass untouched", prog: ingress, wantRet: tcActOK,
			pkt: packet{src: client, dst: netip.MustParseAddrPort("10.96.0.53:53"), proto: ipprotoUDP, fragOff: 0x2000}},
		{name: "egress of unknown flows passes untouched", prog: egress, wantRet: tcActOK,
			pkt: packet{src: netip.MustParseAddrPort("10.244.0.99:8080"), dst: client, proto: ipprotoTCP, flags: tcpACK}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before uint64
			if tt.wantStat != "" {
				before = stat(tt.wantStat)
			}
			frame := tt.pkt.build()
			ret, out := run(t, tt.prog, frame)
			require.Equal(t, tt.wantRet, ret)
			if tt.wantStat != "" {
				assert.Equal(t, before+1, stat(tt.wantStat))
			}
			if ret != tcActOK {
				return
			}
			if !tt.wantDst.IsValid() {
				assert.Equal(t, frame, out[:len(frame)], "frame must come out unchanged")
				return
			}
			p := parse(t, out)
			assert.Equal(t, tt.wantDst, p.dst)
			assert.Equal(t, tt.pkt.src, p.src)
			assert.True(t, p.ipSumOK, "IP checksum")
			if tt.zeroUDP {
				assert.True(t, p.l4SumZero, "a zero UDP checksum must stay zero")
			} else {
				assert.True(t, p.l4SumOK, "L4 checksum")
			}
		})
	}

	t.Run("removing the UDP backend flushes its flows", func(t *testing.T) {
		udpClient := netip.MustParseAddrPort("10.244.0.1:40000")
		key := connKey(udpClient, netip.MustParseAddrPort("10.96.0.53:53"), ipprotoUDP)
		var v tcebpfConnFwd
		require.NoError(t, objs.SvclabTcFwd.Lookup(key, &v), "UDP flow of the first case")
		dns2 := udpSvc("dns", "10.96.0.53", 53, 5353, ep("d2", "10.244.0.22"))
		require.NoError(t, d.Apply(ctx, datapath.State{Services: []datapath.Service{web, dns2, empty}}))
		assert.ErrorIs(t, objs.SvclabTcFwd.Lookup(key, &v), ebpf.ErrKeyNotExist)
		var r tcebpfConnRev
		assert.ErrorIs(t, objs.SvclabTcRev.Lookup(revKey(key, tcebpfConnFwd{Addr: be32(netip.MustParseAddr("10.244.0.21")), Port: be16(5353)}), &r), ebpf.ErrKeyNotExist)
		// The TCP flow survives the resync.
		assert.Equal(t, first, fwdDst(t, tcpACK, 1))

		_, out := run(t, ingress, packet{src: udpClient, dst: netip.MustParseAddrPort("10.96.0.53:53"), proto: ipprotoUDP, payload: "again"}.build())
		assert.Equal(t, netip.MustParseAddrPort("10.244.0.22:5353"), parse(t, out).dst, "next datagram goes to the live backend")
	})
}

// BenchmarkPrivilegedIngressEstablished measures the ingress program on an
// established TCP flow: the per-packet cost this baseline adds to every
// packet from a client (BPF_PROG_RUN, no interface involved).
func BenchmarkPrivilegedIngressEstablished(b *testing.B) {
	objs := new(tcebpfObjects)
	if err := loadTcebpfObjects(objs, nil); err != nil {
		b.Skip(err)
	}
	defer objs.Close()
	d := &Datapath{objs: objs, installed: newTables()}
	web := svc("web", "10.96.0.10", 80, 8080, ep("b1", "10.244.0.11"), ep("b2", "10.244.0.12"))
	if err := d.Apply(context.Background(), datapath.State{Services: []datapath.Service{web}}); err != nil {
		b.Fatal(err)
	}
	client := netip.MustParseAddrPort("10.244.0.1:40000")
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	syn := packet{src: client, dst: vip, proto: ipprotoTCP, flags: tcpSYN, seq: 1}.build()
	if _, err := objs.SvclabTcIngress.Run(&ebpf.RunOptions{Data: syn}); err != nil {
		b.Fatal(err)
	}
	ack := packet{src: client, dst: vip, proto: ipprotoTCP, flags: tcpACK, seq: 2}.build()
	b.ResetTimer()
	ret, dur, err := objs.SvclabTcIngress.Benchmark(ack, b.N, nil)
	if err != nil || ret != tcActOK {
		b.Fatalf("ret %d err %v", ret, err)
	}
	b.ReportMetric(float64(dur.Nanoseconds()), "ns/pkt")
}
