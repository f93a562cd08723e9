package bench

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"svclab/datapath"
	"svclab/harness/loadgen"
	"svclab/harness/topology"
	"svclab/internal/bpfstats"
	"svclab/internal/nfcost"
	"svclab/internal/nsutil"
	"svclab/results"
)

// costMeter attributes a datapath's own kernel time to the connections of
// one cost trial's measured window (issue 16): the netfilter probes in
// every node namespace of the trial (where a Service datapath works; no
// pod holds a netfilter hook of any datapath), the run time of the datapath's own BPF programs, and a userspace
// proxy's process CPU. The probes are attached before the client starts
// and removed after it ends; the client announces its window's edges
// (loadgen.RunClientProcessEdges) and edge reads every figure at both, so
// what is measured is the window (warm-up excluded, the drain of the
// window's connections included), divided by the connections the window
// started.
type costMeter struct {
	probes *nfcost.Probes
	// inNetfilter: the netfilter bands are the datapath's own parts
	// (datapath.Factory.InNetfilter); else they go to Cost.Beside.
	inNetfilter bool
	stats       *bpfstats.Session
	progs       map[string]*ebpf.Program
	sysctl      string
	missing     []string
	// info is the datapath's Info (the userspace proxy's CPU).
	info func() map[string]string
	// edges are the snapshots at EdgeStart and EdgeEnd.
	edges [2]costSnapshot
	seen  [2]bool
}

// costSnapshot is every cumulative figure the meter reads, at one edge.
type costSnapshot struct {
	nf       map[string]nfcost.Sample
	bpf      bpfstats.Stats
	proxyCPU float64
	hasProxy bool
}

// ErrCostEdges is a cost trial whose client did not announce both edges
// of its window, in order.
var ErrCostEdges = errors.New("cost: window edges")

// proxyCPUKey is the userspace proxy's cumulative process CPU in Info.
const proxyCPUKey = "proxy_cpu_seconds"

// startCost attaches what can be attached; what this machine lacks is
// named in Cost.Missing rather than failing the trial. An error is a real
// failure (a probe that should attach and does not).
func startCost(topo *topology.Topology, dp datapath.Datapath, inNetfilter bool) (_ *costMeter, err error) {
	m := &costMeter{info: dp.Info, inNetfilter: inNetfilter}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.close())
		}
	}()
	if perr := nfcost.Probe(); perr != nil {
		if !errors.Is(perr, datapath.ErrUnsupported) {
			return nil, perr
		}
		m.missing = append(m.missing, perr.Error())
	} else {
		// Every node namespace, and no pod's: a Service datapath works in
		// the node (netfilter rules, IPVS, the proxy's sockets), and
		// nothing of svclab's registers a netfilter hook in a pod, so a
		// pod's bands hold only the probes' own dispatch. Probed, they
		// were 4/7 of the floor (≈ 20 of 35 µs per connection) and its
		// noise, and came out at ≈ 0 for every datapath.
		nodes := []*nsutil.NS{topo.Node} // a topology without Nodes (loopback) has this one
		if len(topo.Nodes) > 0 {
			nodes = nil
			for _, n := range topo.Nodes {
				nodes = append(nodes, n.NS)
			}
		}
		if m.probes, err = nfcost.Attach([]nfcost.Group{{Name: "nodes", NS: nodes}}); err != nil {
			return nil, err
		}
	}
	// Statistics are held on in every trial, not only for BPF datapaths:
	// they add their clock reads to every BPF program run, the probes'
	// too, so with them on for some datapaths only, those would carry a
	// higher netfilter floor (measured: about 4 µs per connection more).
	if b, rerr := os.ReadFile(bpfstats.SysctlPath); rerr == nil {
		m.sysctl = strings.TrimSpace(string(b))
	}
	if m.stats, err = bpfstats.Enable(); err != nil {
		return nil, err
	}
	if pr, ok := dp.(datapath.ProgramReporter); ok {
		if m.progs, err = pr.Programs(); err != nil {
			return nil, fmt.Errorf("datapath programs: %w", err)
		}
	}
	return m, nil
}

// edge reads every figure at one edge of the client's window (called
// while the client waits).
func (m *costMeter) edge(e byte) error {
	i := 0
	switch {
	case e == loadgen.EdgeStart && !m.seen[0]:
	case e == loadgen.EdgeEnd && m.seen[0] && !m.seen[1]:
		i = 1
	default:
		return fmt.Errorf("%w: %q after %v", ErrCostEdges, e, m.seen)
	}
	var snap costSnapshot
	var err error
	if m.probes != nil {
		if snap.nf, err = m.probes.Read(); err != nil {
			return err
		}
	}
	if m.progs != nil {
		if snap.bpf, err = bpfstats.Read(m.progs); err != nil {
			return err
		}
	}
	if v, ok := m.info()[proxyCPUKey]; ok {
		if snap.proxyCPU, err = strconv.ParseFloat(v, 64); err != nil {
			return fmt.Errorf("datapath info %s=%q: %w", proxyCPUKey, v, err)
		}
		snap.hasProxy = true
	}
	m.edges[i], m.seen[i] = snap, true
	return nil
}

// stop detaches everything and returns the window's cost per connection
// it started (nil when it started none).
func (m *costMeter) stop(wk *results.Workload) (_ *results.Cost, err error) {
	if err := m.close(); err != nil {
		return nil, err
	}
	if !m.seen[0] || !m.seen[1] {
		return nil, fmt.Errorf("%w: the client announced %v", ErrCostEdges, m.seen)
	}
	return m.cost(wk), nil
}

// cost divides the edges' difference by the connections between them:
// the window's (every one ended by the end edge, completed or failed, none
// started after it) and the warm-up's the client started while the parent
// took the start edge's snapshot (Workload.EdgeWarmup).
func (m *costMeter) cost(wk *results.Workload) *results.Cost {
	conns := wk.Connections + loadgen.SumErrors(wk.Errors) + wk.EdgeWarmup
	if conns <= 0 {
		return nil
	}
	n := float64(conns)
	a, b := m.edges[0], m.edges[1]
	c := &results.Cost{Parts: map[string]float64{}, Connections: conns, BPFStatsSysctl: m.sysctl,
		Missing: strings.Join(m.missing, "; ")}
	if b.nf != nil {
		var d nfcost.Sample
		for g, s := range b.nf {
			d = nfcost.Total(map[string]nfcost.Sample{"a": d, "b": s.Sub(a.nf[g])})
		}
		// The probes' own dispatch (the floor band's ns per crossing,
		// from the same window) comes out of each part: what is left is
		// the hooks' own work, near 0 for a datapath that adds none.
		// The probes run for every datapath (so every one pays the same
		// floor), but only one that works in these hooks owns the bands.
		bands := c.Parts
		if !m.inNetfilter {
			c.Beside = map[string]float64{}
			bands = c.Beside
		}
		for p := nfcost.Part(0); p < nfcost.NumCostParts; p++ {
			ns, floor := d.Net(p)
			bands["nf-"+p.String()] = ns / n
			c.FloorNS += floor / n
		}
		c.FloorPerCrossingNS = d.FloorPerCount()
		c.TraversalsPerConn = float64(d.Traversals()) / n
	}
	if b.bpf != nil {
		for name, st := range b.bpf.Sub(a.bpf) {
			c.Parts["bpf-"+name] = float64(st.RunTimeNS) / n
		}
	}
	if a.hasProxy && b.hasProxy {
		c.Parts["proxy-cpu"] = (b.proxyCPU - a.proxyCPU) * 1e9 / n
	}
	for _, v := range c.Parts {
		c.NsPerConn += v
	}
	return c
}

// close detaches the probes, drops the statistics and closes the program
// duplicates; every path of a trial calls it, more than once is fine.
func (m *costMeter) close() error {
	if m == nil {
		return nil
	}
	err := errors.Join(m.probes.Close(), m.stats.Close(), bpfstats.CloseAll(m.progs))
	m.probes, m.stats, m.progs = nil, nil, nil
	return err
}
