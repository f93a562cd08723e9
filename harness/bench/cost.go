package bench

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"svclab/datapath"
	"svclab/harness/topology"
	"svclab/internal/bpfstats"
	"svclab/internal/nfcost"
	"svclab/internal/nsutil"
	"svclab/results"
)

// costMeter attributes a datapath's own kernel time to the connections of
// one client run (issue 16): the netfilter probes in every namespace of
// the trial (node, client and backend pods: a per-packet datapath works in
// the node, but conntrack may run in any of them), the run time of the
// datapath's own BPF programs, and a userspace proxy's process CPU. It is
// started just before the client and stopped just after it, so what it
// measures is the whole client run, divided by every connection the
// client started (Workload.Started): the window alone would need the
// client child to signal its edges.
type costMeter struct {
	probes   *nfcost.Probes
	nfBase   map[string]nfcost.Sample
	stats    *bpfstats.Session
	progs    map[string]*ebpf.Program
	bpfBase  bpfstats.Stats
	sysctl   string
	proxyCPU float64
	hasProxy bool
	missing  []string
}

// proxyCPUKey is the userspace proxy's cumulative process CPU in Info.
const proxyCPUKey = "proxy_cpu_seconds"

// startCost attaches what can be attached; what this machine lacks is
// named in Cost.Missing rather than failing the trial. An error is a real
// failure (a probe that should attach and does not).
func startCost(topo *topology.Topology, dp datapath.Datapath, info map[string]string) (_ *costMeter, err error) {
	m := &costMeter{}
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
		var clients, backends []*nsutil.NS
		for _, p := range topo.Clients {
			clients = append(clients, p.NS)
		}
		for _, p := range topo.Backends {
			backends = append(backends, p.NS)
		}
		if m.probes, err = nfcost.Attach([]nfcost.Group{{Name: "node", NS: []*nsutil.NS{topo.Node}},
			{Name: "clients", NS: uniqueNS(clients)}, {Name: "backends", NS: uniqueNS(backends)}}); err != nil {
			return nil, err
		}
		if m.nfBase, err = m.probes.Read(); err != nil {
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
		if m.bpfBase, err = bpfstats.Read(m.progs); err != nil {
			return nil, err
		}
	}
	if v, ok := info[proxyCPUKey]; ok {
		if m.proxyCPU, err = strconv.ParseFloat(v, 64); err != nil {
			return nil, fmt.Errorf("datapath info %s=%q: %w", proxyCPUKey, v, err)
		}
		m.hasProxy = true
	}
	return m, nil
}

// uniqueNS drops repeats (pods may share a namespace).
func uniqueNS(nss []*nsutil.NS) []*nsutil.NS {
	seen := map[string]bool{}
	var out []*nsutil.NS
	for _, n := range nss {
		if n != nil && !seen[n.Name] {
			seen[n.Name] = true
			out = append(out, n)
		}
	}
	return out
}

// stop reads the window's figures, detaches everything and returns the
// cost per connection the client started (nil when it started none).
func (m *costMeter) stop(wk *results.Workload, info map[string]string) (_ *results.Cost, err error) {
	if m == nil {
		// Attribution is off (workload.attribution).
		return nil, nil
	}
	defer func() { err = errors.Join(err, m.close()) }()
	if wk.Started <= 0 {
		return nil, nil
	}
	n := float64(wk.Started)
	c := &results.Cost{Parts: map[string]float64{}, Connections: wk.Started, BPFStatsSysctl: m.sysctl,
		Missing: strings.Join(m.missing, "; ")}
	if m.probes != nil {
		now, err := m.probes.Read()
		if err != nil {
			return nil, err
		}
		var d nfcost.Sample
		for g, s := range now {
			d = nfcost.Total(map[string]nfcost.Sample{"a": d, "b": s.Sub(m.nfBase[g])})
		}
		// The probes' own dispatch (the floor band's ns per crossing,
		// from the same trial) comes out of each part: what is left is
		// the hooks' own work, near 0 for a datapath that adds none.
		for p := nfcost.Part(0); p < nfcost.NumCostParts; p++ {
			ns, floor := d.Net(p)
			c.Parts["nf-"+p.String()] = ns / n
			c.FloorNS += floor / n
		}
	}
	if m.progs != nil {
		now, err := bpfstats.Read(m.progs)
		if err != nil {
			return nil, err
		}
		for name, st := range now.Sub(m.bpfBase) {
			c.Parts["bpf-"+name] = float64(st.RunTimeNS) / n
		}
	}
	if m.hasProxy {
		if v, perr := strconv.ParseFloat(info[proxyCPUKey], 64); perr == nil {
			c.Parts["proxy-cpu"] = (v - m.proxyCPU) * 1e9 / n
		}
	}
	for _, v := range c.Parts {
		c.NsPerConn += v
	}
	return c, nil
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
