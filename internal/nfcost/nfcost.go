// Package nfcost measures, in the kernel, how long packets spend in the
// netfilter hooks of given network namespaces, split into the parts the
// kernel's netfilter users run at (conntrack, DNAT, filter rules,
// SNAT/masquerade): the per-connection cost of a netfilter-based Service
// datapath (iptables, nftables, IPVS) and, with nothing but the probes in
// the hooks, the floor every datapath pays (bpf/nfcost.c explains the
// probe positions and what a part holds).
//
// The probes are BPF_PROG_TYPE_NETFILTER programs (Linux 6.4+) attached with
// one bpf_link per namespace, family, hook and priority. Links live only in
// the namespaces given to Attach (a link is created from inside its
// namespace) and only until Close: nothing is pinned, so a process that dies
// takes its probes with it.
package nfcost

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/internal/nsutil"
)

// Hook is a netfilter inet hook, in enum nf_inet_hooks order.
type Hook int

// The five inet hooks.
const (
	PreRouting Hook = iota
	LocalIn
	Forward
	LocalOut
	PostRouting
	NumHooks
)

var hookNames = [NumHooks]string{"prerouting", "input", "forward", "output", "postrouting"}

// String is the hook's iptables-style name in lower case.
func (h Hook) String() string {
	if h < 0 || h >= NumHooks {
		return fmt.Sprintf("hook(%d)", int(h))
	}
	return hookNames[h]
}

// Part is the time between two consecutive probes of a hook.
type Part int

// The parts, in priority order (bpf/nfcost.c has the priorities).
const (
	// Early: defragmentation and the raw table.
	Early Part = iota
	// Conntrack: connection tracking lookup/creation and the mangle table.
	Conntrack
	// DNAT: the nat table's PREROUTING/OUTPUT chains (kube-proxy's
	// KUBE-SERVICES rules, nftables dstnat chains), evaluated on a
	// connection's first packet, and NAT of the others.
	DNAT
	// Filter: the filter (and security) table's rules.
	Filter
	// SNAT: nat POSTROUTING/INPUT (masquerade) and conntrack helpers.
	SNAT
	// Floor is the calibration band: two adjacent priorities with nothing
	// between them, so its time is the probes' own dispatch from one BPF
	// hook to the next, which every other part includes once per count.
	Floor
	NumParts
)

// NumCostParts are the parts that hold the hooks' own work (every part
// but Floor).
const NumCostParts = Floor

var partNames = [NumParts]string{"early", "conntrack", "dnat", "filter", "snat", "floor"}

// String names the part as results record it.
func (p Part) String() string {
	if p < 0 || p >= NumParts {
		return fmt.Sprintf("part(%d)", int(p))
	}
	return partNames[p]
}

// PartNames lists the names of the parts that hold the hooks' own work,
// in priority order (Floor, the probes' own cost, is not one of them).
func PartNames() []string { return append([]string(nil), partNames[:NumCostParts]...) }

// Priorities are the probes' netfilter priorities in a hook, in order:
// first and last as far as the kernel allows (it refuses BPF hooks at
// INT_MIN and INT_MAX, where conntrack confirm runs, so confirm is after
// the last probe and not measured), just before conntrack (-200), DNAT
// (-100), filter (0) and SNAT (100), and the empty calibration band
// INT_MAX-2..INT_MAX-1 (Floor) before the last.
var Priorities = [NumParts + 1]int32{math.MinInt32 + 1, -201, -101, -1, 99, math.MaxInt32 - 2, math.MaxInt32 - 1}

// Sum is the time spent in one part and how many times it was crossed.
type Sum struct {
	NS    uint64
	Count uint64
}

// Sample is the cumulative per-part time of one group of namespaces, per
// hook, summed over CPUs and both families.
type Sample [NumHooks][NumParts]Sum

// Sub returns s minus base (a window's share of two cumulative samples).
func (s Sample) Sub(base Sample) Sample {
	var d Sample
	for h := range s {
		for p := range s[h] {
			d[h][p] = Sum{NS: s[h][p].NS - base[h][p].NS, Count: s[h][p].Count - base[h][p].Count}
		}
	}
	return d
}

// Part sums one part over the hooks.
func (s Sample) Part(p Part) Sum {
	var t Sum
	for h := range s {
		t.NS += s[h][p].NS
		t.Count += s[h][p].Count
	}
	return t
}

// TotalNS is the time in every part of every hook but Floor.
func (s Sample) TotalNS() uint64 {
	var t uint64
	for p := Part(0); p < NumCostParts; p++ {
		t += s.Part(p).NS
	}
	return t
}

// Traversals counts complete hook traversals (first to last probe).
func (s Sample) Traversals() uint64 {
	var t uint64
	for h := range s {
		t += s[h][NumParts-1].Count
	}
	return t
}

// FloorPerCount is the probes' own dispatch cost per part crossing: the
// Floor band's ns per count, pooled over the hooks (0 when it was never
// crossed). Pooled, not per hook: each hook's band measures the same
// dispatch, and a hook crossed few times (forward, in a pod) would give a
// noisy figure of its own.
func (s Sample) FloorPerCount() float64 {
	f := s.Part(Floor)
	if f.Count == 0 {
		return 0
	}
	return float64(f.NS) / float64(f.Count)
}

// Net is a part's time with the probes' dispatch taken out (count ×
// FloorPerCount), and the amount taken out. It may come out slightly
// negative for a part that holds nothing: noise, kept so that averages
// over trials stay unbiased.
func (s Sample) Net(p Part) (ns, floor float64) {
	sum := s.Part(p)
	floor = float64(sum.Count) * s.FloorPerCount()
	return float64(sum.NS) - floor, floor
}

// Group is namespaces whose time is summed together (e.g. every client
// pod), under one name.
type Group struct {
	Name string
	NS   []*nsutil.NS
}

// Probe reports whether this kernel can run the probes; the error wraps
// datapath.ErrUnsupported and names what is missing.
func Probe() error {
	if err := features.HaveProgramType(ebpf.Netfilter); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return datapath.Unsupportedf("nfcost: BPF program type netfilter (Linux 6.4): %v", err)
		}
		return fmt.Errorf("nfcost: probe BPF netfilter programs: %w", err)
	}
	return nil
}

// Probes are the attached probes of a set of groups. Read them while
// attached, Close them when the window ends.
type Probes struct {
	groups []*groupProbes
	moved  []Moved
}

// Moved is a probe attached below its priority because another hook held
// it (the kernel refuses a BPF hook at a priority already in use: IPVS,
// for one, registers LOCAL_IN hooks at 98 and 99).
type Moved struct {
	NS       string
	Family   int
	Hook     Hook
	Pos      int
	Priority int32
}

// maxStep bounds how far below its priority an interior probe may move:
// the kernel users that bound the bands sit 50 or more apart, so a probe a
// few below its place is still in the same band.
const maxStep = 8

// attachAt attaches prog at prio, or, for an interior probe (one that
// bounds two named parts) whose priority another hook holds (EBUSY), at
// the first free priority up to maxStep below it. The first probe, and
// the two that bound the floor band, stay where they are: the floor band
// must be two adjacent priorities with nothing between.
func attachAt(prog *ebpf.Program, fam link.NetfilterProtocolFamily, h Hook, pos int, prio int32) (link.Link, int32, error) {
	steps := 0
	if pos > 0 && pos < int(Floor) {
		steps = maxStep
	}
	for try := int32(0); ; try++ {
		l, err := link.AttachNetfilter(link.NetfilterOptions{
			Program: prog, ProtocolFamily: fam, Hook: link.NetfilterInetHook(h), Priority: prio - try,
		})
		if err == nil {
			return l, prio - try, nil
		}
		if !errors.Is(err, unix.EBUSY) || int(try) >= steps {
			return nil, 0, err
		}
	}
}

type groupProbes struct {
	name  string
	objs  nfcostObjects
	links []link.Link
}

// families are both: a dual-stack topology's IPv6 traffic crosses the
// IPv6 hooks, which are separate hook lists from IPv4's.
var families = []link.NetfilterProtocolFamily{link.NetfilterProtoIPv4, link.NetfilterProtoIPv6}

// Attach loads one set of probes per group and attaches it at every hook
// and priority in each of the group's namespaces. On error everything
// already attached is removed.
func Attach(groups []Group) (_ *Probes, err error) {
	p := &Probes{}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	seen := map[string]bool{}
	for _, g := range groups {
		if g.Name == "" || seen[g.Name] {
			return nil, fmt.Errorf("nfcost: group name %q is empty or repeated", g.Name)
		}
		seen[g.Name] = true
		gp := &groupProbes{name: g.Name}
		if err := loadNfcostObjects(&gp.objs, nil); err != nil {
			return nil, fmt.Errorf("nfcost: load probes: %w", err)
		}
		p.groups = append(p.groups, gp)
		progs := gp.programs()
		for _, ns := range g.NS {
			// A netfilter link joins the hooks of the namespace the
			// creating thread is in.
			err := ns.Do(func() error {
				for _, fam := range families {
					for h := Hook(0); h < NumHooks; h++ {
						for pos, prio := range Priorities {
							l, used, err := attachAt(progs[h][pos], fam, h, pos, prio)
							if err != nil {
								return fmt.Errorf("attach %s probe %d (priority %d, family %d): %w", h, pos, prio, fam, err)
							}
							if used != prio {
								p.moved = append(p.moved, Moved{NS: ns.Name, Family: int(fam), Hook: h, Pos: pos, Priority: used})
							}
							gp.links = append(gp.links, l)
						}
					}
				}
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("nfcost: netns %s: %w", ns.Name, err)
			}
		}
	}
	return p, nil
}

func (g *groupProbes) programs() [NumHooks][NumParts + 1]*ebpf.Program {
	o := &g.objs
	return [NumHooks][NumParts + 1]*ebpf.Program{
		{o.SvclabNfcPre0, o.SvclabNfcPre1, o.SvclabNfcPre2, o.SvclabNfcPre3, o.SvclabNfcPre4, o.SvclabNfcPre5, o.SvclabNfcPre6},
		{o.SvclabNfcIn0, o.SvclabNfcIn1, o.SvclabNfcIn2, o.SvclabNfcIn3, o.SvclabNfcIn4, o.SvclabNfcIn5, o.SvclabNfcIn6},
		{o.SvclabNfcFwd0, o.SvclabNfcFwd1, o.SvclabNfcFwd2, o.SvclabNfcFwd3, o.SvclabNfcFwd4, o.SvclabNfcFwd5, o.SvclabNfcFwd6},
		{o.SvclabNfcOut0, o.SvclabNfcOut1, o.SvclabNfcOut2, o.SvclabNfcOut3, o.SvclabNfcOut4, o.SvclabNfcOut5, o.SvclabNfcOut6},
		{o.SvclabNfcPost0, o.SvclabNfcPost1, o.SvclabNfcPost2, o.SvclabNfcPost3, o.SvclabNfcPost4, o.SvclabNfcPost5, o.SvclabNfcPost6},
	}
}

// Groups names the groups, in Attach order.
func (p *Probes) Groups() []string {
	names := make([]string, len(p.groups))
	for i, g := range p.groups {
		names[i] = g.name
	}
	return names
}

// Moved lists the probes attached below their priority (see attachAt).
func (p *Probes) Moved() []Moved { return p.moved }

// Links is how many bpf_links are attached.
func (p *Probes) Links() int {
	n := 0
	for _, g := range p.groups {
		n += len(g.links)
	}
	return n
}

// Read returns each group's cumulative sample since Attach.
func (p *Probes) Read() (map[string]Sample, error) {
	out := make(map[string]Sample, len(p.groups))
	for _, g := range p.groups {
		var s Sample
		for h := Hook(0); h < NumHooks; h++ {
			for part := Part(0); part < NumParts; part++ {
				var perCPU []nfcostNfcPart
				key := uint32(int(h)*int(NumParts) + int(part))
				if err := g.objs.SvclabNfcParts.Lookup(key, &perCPU); err != nil {
					return nil, fmt.Errorf("nfcost: read %s %s/%s: %w", g.name, h, part, err)
				}
				for _, c := range perCPU {
					s[h][part].NS += c.Ns
					s[h][part].Count += c.Count
				}
			}
		}
		out[g.name] = s
	}
	return out, nil
}

// Close detaches every probe and unloads the programs; it may be called
// more than once.
func (p *Probes) Close() error {
	if p == nil {
		return nil
	}
	var errs []error
	for _, g := range p.groups {
		for _, l := range g.links {
			if err := l.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		g.links = nil
		if err := g.objs.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.groups = nil
	return errors.Join(errs...)
}

// Total sums samples over groups.
func Total(samples map[string]Sample) Sample {
	var t Sample
	names := make([]string, 0, len(samples))
	for n := range samples {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := samples[n]
		for h := range s {
			for p := range s[h] {
				t[h][p].NS += s[h][p].NS
				t[h][p].Count += s[h][p].Count
			}
		}
	}
	return t
}
