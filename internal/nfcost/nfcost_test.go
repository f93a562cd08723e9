package nfcost

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/internal/nsutil"
)

func TestSampleArithmetic(t *testing.T) {
	var a, b Sample
	a[PreRouting][DNAT] = Sum{NS: 500, Count: 5}
	a[LocalOut][DNAT] = Sum{NS: 300, Count: 3}
	a[LocalOut][SNAT] = Sum{NS: 200, Count: 4}
	a[LocalOut][Floor] = Sum{NS: 160, Count: 4}
	b[PreRouting][DNAT] = Sum{NS: 100, Count: 1}
	d := a.Sub(b)
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"part sums hooks", d.Part(DNAT), Sum{NS: 700, Count: 7}},
		{"total leaves the floor out", d.TotalNS(), uint64(900)},
		{"traversals count the last part", d.Traversals(), uint64(4)},
		{"total over groups", Total(map[string]Sample{"a": a, "b": b}).Part(DNAT), Sum{NS: 900, Count: 9}},
		{"part names leave the floor out", PartNames(), []string{"early", "conntrack", "dnat", "filter", "snat"}},
		{"hook name", Forward.String(), "forward"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, tc.got) })
	}
}

// The floor band's ns per count comes out of every part, count times.
func TestSampleFloor(t *testing.T) {
	var s Sample
	s[PreRouting][Floor] = Sum{NS: 300, Count: 10}
	s[LocalOut][Floor] = Sum{NS: 100, Count: 10}
	s[PreRouting][DNAT] = Sum{NS: 1000, Count: 10}
	s[LocalOut][Early] = Sum{NS: 150, Count: 10}
	tests := []struct {
		name            string
		part            Part
		wantNS, wantFlr float64
	}{
		{"pooled over hooks: 20 ns per count", DNAT, 800, 200},
		{"an empty part comes out below zero, not clamped", Early, -50, 200},
		{"nothing crossed, nothing taken", Filter, 0, 0},
	}
	require.InDelta(t, 20.0, s.FloorPerCount(), 1e-9)
	assert.Zero(t, Sample{}.FloorPerCount(), "no floor crossing: nothing to subtract")
	assert.Equal(t, uint64(1150), s.TotalNS(), "the floor band is not datapath time")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns, floor := s.Net(tc.part)
			assert.InDelta(t, tc.wantNS, ns, 1e-9)
			assert.InDelta(t, tc.wantFlr, floor, 1e-9)
		})
	}
}

func TestPrioritiesOrdered(t *testing.T) {
	for i := 1; i < len(Priorities); i++ {
		require.Less(t, Priorities[i-1], Priorities[i])
	}
	// Each band holds the kernel priority it is named after.
	bands := map[Part]int32{Conntrack: -200, DNAT: -100, Filter: 0, SNAT: 100}
	for p, prio := range bands {
		assert.True(t, Priorities[p] < prio && prio < Priorities[p+1], "%s band holds priority %d", p, prio)
	}
}

// requireProbes skips without root and fails on a kernel that should
// have BPF netfilter programs (6.4+) but refuses them.
func requireProbes(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches BPF netfilter programs in a test network namespace")
	}
	if err := Probe(); err != nil {
		if errors.Is(err, datapath.ErrUnsupported) {
			t.Skipf("skipped: %v", err)
		}
		require.NoError(t, err)
	}
}

func newNS(t *testing.T) *nsutil.NS {
	t.Helper()
	var rnd [4]byte
	_, err := rand.Read(rnd[:])
	require.NoError(t, err)
	ns, err := nsutil.Create("svclab-test-" + hex.EncodeToString(rnd[:]))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	return ns
}

// probeLinks counts the bpf_links of probe programs on the machine, to see
// that Close leaves none.
func probeLinks(t *testing.T) int {
	t.Helper()
	n := 0
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.NetfilterType {
			continue
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			continue
		}
		pi, err := prog.Info()
		prog.Close()
		if err == nil && strings.HasPrefix(pi.Name, "svclab_nfc") {
			n++
		}
	}
	require.NoError(t, it.Err())
	return n
}

const (
	backend = "10.0.0.1:8080"
	vip     = "10.96.0.1:80"
)

// serve listens on backend inside ns and answers every connection with
// one byte after reading one.
func serve(t *testing.T, ns *nsutil.NS) {
	t.Helper()
	_, err := ns.Run(context.Background(), nil, "ip", "addr", "add", "10.0.0.1/32", "dev", "lo")
	require.NoError(t, err)
	// The VIP needs a route for connect() to get as far as OUTPUT's DNAT.
	_, err = ns.Run(context.Background(), nil, "ip", "route", "add", "default", "dev", "lo")
	require.NoError(t, err)
	var ln net.Listener
	require.NoError(t, ns.Do(func() (err error) { ln, err = net.Listen("tcp4", backend); return err }))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err == nil {
					_, _ = c.Write(b)
				}
			}()
		}
	}()
}

// connect makes n short connections to addr from inside ns, the client
// closing after reading the reply (as the load generator does).
func connect(t *testing.T, ns *nsutil.NS, addr string, n int) {
	t.Helper()
	require.NoError(t, ns.Do(func() error {
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			b := []byte{'x'}
			_, err = c.Write(b)
			if err == nil {
				_, err = io.ReadFull(c, b)
			}
			c.Close()
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
		}
		return nil
	}))
}

// natRules is an iptables-restore nat table: pad non-matching service-like
// DNAT rules ahead of the one for vip (none when dnat is false).
func natRules(pad int, dnat bool) []byte {
	var b bytes.Buffer
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	for i := 0; i < pad; i++ {
		fmt.Fprintf(&b, "-A OUTPUT -d 198.18.%d.%d/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination %s\n", i/256, i%256, backend)
	}
	if dnat {
		fmt.Fprintf(&b, "-A OUTPUT -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination %s\n", backend)
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// perConn attaches probes in ns, makes n connections to addr and returns
// the window's sample per connection (ns by part).
func perConn(t *testing.T, ns *nsutil.NS, addr string, n int) [NumParts]float64 {
	t.Helper()
	p, err := Attach([]Group{{Name: "ns", NS: []*nsutil.NS{ns}}})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()
	require.Equal(t, 2*int(NumHooks)*len(Priorities), p.Links(), "both families, every hook and priority")
	before, err := p.Read()
	require.NoError(t, err)
	connect(t, ns, addr, n)
	after, err := p.Read()
	require.NoError(t, err)
	d := after["ns"].Sub(before["ns"])
	require.NotZero(t, d.Traversals(), "the probes saw the traffic")
	var out [NumParts]float64
	for part := Part(0); part < NumParts; part++ {
		out[part] = float64(d.Part(part).NS) / float64(n)
	}
	return out
}

func TestPrivilegedAttachLeavesNoTrace(t *testing.T) {
	requireProbes(t)
	before := probeLinks(t)
	ns := newNS(t)
	ns2 := newNS(t)
	p, err := Attach([]Group{{Name: "a", NS: []*nsutil.NS{ns}}, {Name: "b", NS: []*nsutil.NS{ns2}}})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, p.Groups())
	assert.Equal(t, before+p.Links(), probeLinks(t))
	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "Close twice")
	assert.Equal(t, before, probeLinks(t), "every link detached")

	// Failing Attaches remove what they attached: a repeated group name,
	// and a namespace probed twice (the kernel refuses two BPF hooks at
	// one priority of a hook: EBUSY), half-way through the second set.
	for _, groups := range [][]Group{
		{{Name: "a", NS: []*nsutil.NS{ns}}, {Name: "a", NS: []*nsutil.NS{ns2}}},
		{{Name: "a", NS: []*nsutil.NS{ns, ns2}}, {Name: "b", NS: []*nsutil.NS{ns2}}},
	} {
		_, err = Attach(groups)
		require.Error(t, err)
		assert.Equal(t, before, probeLinks(t), "a failed Attach leaves no link")
	}
}

// TestPrivilegedDNATAndPadding checks the probes against what is known:
// a DNAT rule costs time in the DNAT band that an empty namespace does not
// spend, and N non-matching rules ahead of it, evaluated once per
// connection (nat rules see a connection's first packet only), add time
// linearly in N.
func TestPrivilegedDNATAndPadding(t *testing.T) {
	requireProbes(t)
	const conns = 1000
	empty := newNS(t)
	serve(t, empty)
	emptyCost := perConn(t, empty, backend, conns)

	ns := newNS(t)
	serve(t, ns)
	pads := []int{0, 1000, 2000, 4000}
	dnat := make([]float64, len(pads))
	for i, pad := range pads {
		_, err := ns.Run(context.Background(), natRules(pad, true), "iptables-restore")
		require.NoError(t, err)
		// Best of three: other work on the machine only ever adds time.
		dnat[i] = 1e18
		for range 3 {
			dnat[i] = min(dnat[i], perConn(t, ns, vip, conns)[DNAT])
		}
		t.Logf("%d padding rules: dnat %.0f ns/conn (empty namespace: %.0f)", pad, dnat[i], emptyCost[DNAT])
	}
	assert.Greater(t, dnat[0], emptyCost[DNAT]+100, "a DNAT rule costs more than no nat table")

	// Least squares of dnat against pads: a clear positive slope and a
	// straight line.
	var sx, sy, sxx, sxy float64
	n := float64(len(pads))
	for i, p := range pads {
		x := float64(p)
		sx, sy, sxx, sxy = sx+x, sy+dnat[i], sxx+x*x, sxy+x*dnat[i]
	}
	slope := (n*sxy - sx*sy) / (n*sxx - sx*sx)
	icept := (sy - slope*sx) / n
	var ssRes, ssTot float64
	for i, p := range pads {
		r := dnat[i] - (icept + slope*float64(p))
		ssRes += r * r
		ssTot += (dnat[i] - sy/n) * (dnat[i] - sy/n)
	}
	r2 := 1 - ssRes/ssTot
	t.Logf("rule evaluation: %.2f ns per padding rule per connection, R² %.3f", slope, r2)
	assert.Greater(t, slope, 0.5, "each padding rule costs time")
	assert.Greater(t, r2, 0.9, "cost grows linearly with the rules")
	for i := 1; i < len(dnat); i++ {
		assert.Greater(t, dnat[i], dnat[i-1], "more rules, more time (%d → %d)", pads[i-1], pads[i])
	}
}

// TestPrivilegedFloorBand checks the calibration band: in a namespace whose
// hooks hold nothing but the probes and conntrack-free loopback traffic,
// every part minus its count times the floor is close to zero, and the
// floor itself is a small positive dispatch cost.
func TestPrivilegedFloorBand(t *testing.T) {
	requireProbes(t)
	ns := newNS(t)
	serve(t, ns)
	p, err := Attach([]Group{{Name: "ns", NS: []*nsutil.NS{ns}}})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()
	before, err := p.Read()
	require.NoError(t, err)
	const conns = 1000
	connect(t, ns, backend, conns)
	after, err := p.Read()
	require.NoError(t, err)
	d := after["ns"].Sub(before["ns"])
	f := d.Part(Floor)
	require.NotZero(t, f.Count, "the floor band was crossed")
	delta := d.FloorPerCount()
	t.Logf("floor: %.0f ns per crossing over %d crossings", delta, f.Count)
	for h := Hook(0); h < NumHooks; h++ {
		if c := d[h][Floor].Count; c > 0 {
			t.Logf("  %s: %.0f ns per crossing (%d)", h, float64(d[h][Floor].NS)/float64(c), c)
		}
	}
	assert.Greater(t, delta, 1.0, "dispatching a BPF hook takes time")
	assert.Less(t, delta, 5000.0, "a dispatch is not microseconds")
	var raw, net float64
	for part := Part(0); part < NumCostParts; part++ {
		n, _ := d.Net(part)
		raw += float64(d.Part(part).NS) / conns
		net += n / conns
	}
	t.Logf("empty namespace: %.0f ns/conn raw, %.0f after the floor", raw, net)
	// What is left is the kernel's own hooks of an empty namespace (none
	// here but the probes and conntrack-less loopback): far below the
	// raw figure, which is mostly the probes.
	assert.Less(t, net, raw/2, "the floor takes out most of an empty namespace's figure")
}

// A hook another user holds at a probe's priority (IPVS registers LOCAL_IN
// hooks at 98 and 99, where the snat probe sits) moves that probe a little
// below, inside the same band, instead of failing the trial; the first
// probe and the floor band's do not move.
func TestPrivilegedAttachMovesPastBusyPriority(t *testing.T) {
	requireProbes(t)
	before := probeLinks(t)
	ns := newNS(t)
	var blocker nfcostObjects
	require.NoError(t, loadNfcostObjects(&blocker, nil))
	defer blocker.Close()
	var held []link.Link
	require.NoError(t, ns.Do(func() error {
		for _, prio := range []int32{Priorities[SNAT], Priorities[SNAT] - 1} {
			l, err := link.AttachNetfilter(link.NetfilterOptions{Program: blocker.SvclabNfcIn4, ProtocolFamily: link.NetfilterProtoIPv4,
				Hook: link.NetfilterInetHook(LocalIn), Priority: prio})
			if err != nil {
				return err
			}
			held = append(held, l)
		}
		return nil
	}))
	p, err := Attach([]Group{{Name: "ns", NS: []*nsutil.NS{ns}}})
	require.NoError(t, err)
	assert.Equal(t, 2*int(NumHooks)*len(Priorities), p.Links())
	assert.Equal(t, []Moved{{NS: ns.Name, Family: int(link.NetfilterProtoIPv4), Hook: LocalIn, Pos: int(SNAT), Priority: Priorities[SNAT] - 2}}, p.Moved())
	require.NoError(t, p.Close())

	// The floor band's probes never move: held, they fail the Attach.
	require.NoError(t, ns.Do(func() error {
		l, err := link.AttachNetfilter(link.NetfilterOptions{Program: blocker.SvclabNfcOut5, ProtocolFamily: link.NetfilterProtoIPv4,
			Hook: link.NetfilterInetHook(LocalOut), Priority: Priorities[Floor]})
		held = append(held, l)
		return err
	}))
	_, err = Attach([]Group{{Name: "ns", NS: []*nsutil.NS{ns}}})
	require.Error(t, err)
	for _, l := range held {
		require.NoError(t, l.Close())
	}
	assert.Equal(t, before, probeLinks(t), "every link detached")
}
