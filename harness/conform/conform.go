// Package conform runs `svclab conform`: every conformance scenario
// (scenarios/conformance) against every datapath, each pair in a fresh
// world, probing from the pods and judging what the client observed. The
// run's schema and its markdown table are in results (conformance.go).
package conform

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"svclab/datapath"
	"svclab/harness/internal/progress"
	"svclab/harness/loadgen"
	"svclab/harness/probe"
	"svclab/harness/runlock"
	"svclab/harness/topology"
	"svclab/harness/world"
	"svclab/internal/nsutil"
	"svclab/results"
	"svclab/scenarios"
)

// Config is one `svclab conform`.
type Config struct {
	Scenarios []*scenarios.Conformance
	// Datapaths to check, in column order; empty means every registered
	// datapath.
	Datapaths []string
	// OutputDir receives <run-id>/conformance.json and conformance.md.
	OutputDir string
	Log       io.Writer
	TTY       bool
	// VMKernel, if set, also runs the datapaths this kernel cannot run
	// (their Probe fails: IPVS here) under that Debian kernel in QEMU and
	// fills their columns with the guest's cells (vm.SeriesNames lists
	// the kernels).
	VMKernel string
	// Nodes is the node count of every cell's topology (0 or 1: one
	// node), but for scenarios that set their own (Conformance.Nodes).
	Nodes int
}

// skipError ends a cell early with the status skip and its reason.
type skipError struct{ reason string }

func (e *skipError) Error() string { return e.reason }

// datapathError is a datapath refusing the scenario (not the harness
// failing): the cell shows it, the run goes on.
type datapathError struct{ err error }

func (e *datapathError) Error() string { return e.err.Error() }
func (e *datapathError) Unwrap() error { return e.err }

// Run runs every scenario against every datapath, each pair in a fresh
// topology, and writes conformance.json and conformance.md. Failed
// expectations are findings, not errors: the error is non-nil only when the
// harness could not run (cells it could not run are in the run, marked
// error). Everything it creates is removed when it returns.
func Run(ctx context.Context, cfg Config) (_ *results.ConformRun, dir string, err error) {
	if len(cfg.Scenarios) == 0 {
		return nil, "", errors.New("scenarios: none given")
	}
	names := cfg.Datapaths
	if len(names) == 0 {
		names = datapath.Names()
	}
	var factories []datapath.Factory
	for _, n := range names {
		f, err := datapath.Lookup(n)
		if err != nil {
			return nil, "", fmt.Errorf("datapaths: %w", err)
		}
		factories = append(factories, f)
	}
	lock, err := runlock.Begin(cfg.Log)
	if err != nil {
		return nil, "", err
	}
	defer lock.Release()

	run := &results.ConformRun{SchemaVersion: results.ConformanceSchemaVersion, Started: time.Now().UTC(), Env: world.CollectEnv()}
	run.ID = lock.RunID(run.Started)
	dir = filepath.Join(cfg.OutputDir, run.ID)
	// The output directory is checked now (a bad --output fails before the
	// run, not after it); the run's own directory is made when there is
	// something to write, so a run killed before that leaves none.
	if err := os.MkdirAll(cfg.OutputDir, 0o755); err != nil {
		return nil, "", fmt.Errorf("output: %w", err)
	}
	// Error returns clear the named dir: keep the path for the check.
	runDir := dir
	defer func() { runlock.DropEmptyDir(runDir, err) }()
	for _, sc := range cfg.Scenarios {
		run.Scenarios = append(run.Scenarios, results.ConformScenario{Name: sc.Name, Behaviour: sc.Behaviour, Source: sc.Source, Notes: sc.Notes,
			Family: sc.Family, Advisory: sc.Advisory})
	}

	prog := progress.New(cfg.Log, cfg.TTY, len(factories)*len(cfg.Scenarios), 2*time.Second)
	defer prog.Finish()
	prog.Logf("svclab conform %s: %d scenarios × %d datapaths; kernel objects are named %s-*", run.ID, len(cfg.Scenarios), len(factories), lock.Prefix)
	n := 0
	var harnessErrs []string
	for _, f := range factories {
		info := results.DatapathInfo{Name: f.Name, Description: f.Description}
		if f.Probe != nil {
			if err := f.Probe(); err != nil {
				info.Skipped = err.Error()
			}
		}
		if info.Skipped != "" {
			prog.Logf("skipping %s: %s", f.Name, info.Skipped)
		}
		for _, sc := range cfg.Scenarios {
			if info.Skipped != "" {
				run.Cells = append(run.Cells, results.ConformCell{Scenario: sc.Name, Datapath: f.Name, Status: results.CellSkip, Summary: "datapath unavailable: " + info.Skipped})
				prog.Skip()
				continue
			}
			if cell, ok := outOfScope(sc, f); ok {
				run.Cells = append(run.Cells, cell)
				prog.Skip()
				continue
			}
			prog.Start(fmt.Sprintf("%s × %s", f.Name, sc.Name))
			// A scenario that names its node count is written for it
			// (which backends are on the client's node); the others
			// run on --nodes.
			nodes := cfg.Nodes
			if sc.Nodes > 0 {
				nodes = sc.Nodes
			}
			cell, dpInfo := runConformCell(ctx, fmt.Sprintf("%s-c%d", lock.Prefix, n), sc, f, nodes)
			n++
			if err := ctx.Err(); err != nil {
				return nil, "", fmt.Errorf("interrupted; everything it made was removed: %w", err)
			}
			if info.Info == nil && dpInfo != nil {
				info.Info = dpInfo
			}
			if cell.Status == results.CellError && strings.HasPrefix(cell.Summary, "harness: ") {
				harnessErrs = append(harnessErrs, fmt.Sprintf("%s × %s: %s", f.Name, sc.Name, cell.Summary))
			}
			run.Cells = append(run.Cells, cell)
			prog.Done(results.CellText(cell, 200))
		}
		run.Datapaths = append(run.Datapaths, info)
	}
	prog.Finish()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("output: %w", err)
	}
	if cfg.VMKernel != "" {
		// A VM that cannot boot (no network for the kernel package, say)
		// leaves those columns skipped, as without --vm-kernel, and the
		// rest of the run stands.
		if err := conformInVM(ctx, cfg.VMKernel, cfg.Scenarios, run, dir, cfg.Log); err != nil {
			if ctx.Err() != nil {
				return nil, "", fmt.Errorf("interrupted during the %s VM phase: %w", cfg.VMKernel, err)
			}
			fmt.Fprintf(cfg.Log, "\nwarning: the %s VM phase failed, its datapaths stay skipped: %v\n", cfg.VMKernel, err)
		}
	}
	run.Finished = time.Now().UTC()
	if err := results.WriteJSON(filepath.Join(dir, "conformance.json"), run); err != nil {
		return nil, "", err
	}
	f, err := os.Create(filepath.Join(dir, "conformance.md"))
	if err != nil {
		return nil, "", fmt.Errorf("output: %w", err)
	}
	werr := results.WriteConformanceMarkdown(f, run)
	if err := errors.Join(werr, f.Close()); err != nil {
		return nil, "", fmt.Errorf("output: conformance.md: %w", err)
	}
	if err := results.WriteReportFile(filepath.Join(dir, "report.html"), results.ReportInput{Conform: run}); err != nil {
		return nil, "", fmt.Errorf("output: %w", err)
	}
	if len(harnessErrs) > 0 {
		return run, dir, fmt.Errorf("%d cells could not be run:\n  %s", len(harnessErrs), strings.Join(harnessErrs, "\n  "))
	}
	return run, dir, nil
}

// outOfScope is the cell of a scenario the datapath leaves out by design
// (its Scope), decided without building anything: traffic could only
// confirm a reason the datapath already states. A row that needs a Service
// is n/a for a datapath without one; a hostNetwork client's row is skipped,
// with the reason, for a datapath that does not serve the node's own
// processes (a limitation of that datapath, not of the row).
func outOfScope(sc *scenarios.Conformance, f datapath.Factory) (results.ConformCell, bool) {
	cell := results.ConformCell{Scenario: sc.Name, Datapath: f.Name}
	switch {
	case sc.NeedsService && f.Scope.NoService != "":
		cell.Status, cell.Summary = results.CellNA, f.Scope.NoService
	case sc.HostClient() && f.Scope.NoHostNetwork != "":
		cell.Status, cell.Summary = results.CellSkip, "hostNetwork client not served: "+f.Scope.NoHostNetwork
	default:
		return cell, false
	}
	return cell, true
}

// IPv6 scenarios run in a dual-stack topology with these ranges besides
// the default IPv4 ones (topology.Default).
var (
	conformPodCIDR6     = netip.MustParsePrefix("fd00:10:244::/120")
	conformServiceCIDR6 = netip.MustParsePrefix("fd00:10:96::/112")
)

// cellRun is the state of one scenario against one datapath.
type cellRun struct {
	sc *scenarios.Conformance
	// w is the cell's world; topo, dp and servers (by backend index) are
	// its parts.
	w       *world.World
	topo    *topology.Topology
	dp      datapath.Datapath
	servers []*loadgen.ServerProcess
	// specs are the current service specs, in scenario order.
	specs []scenarios.ConformanceService
	state datapath.State
	// starts and marks are when each step with an id began and completed.
	starts map[string]time.Time
	marks  map[string]time.Time
	bg     map[string]*bgProbe
	cell   *results.ConformCell
}

type bgProbe struct {
	step  scenarios.Step
	spec  probe.Spec
	proc  *probe.Process
	where string
}

func runConformCell(ctx context.Context, prefix string, sc *scenarios.Conformance, f datapath.Factory, nodes int) (cell results.ConformCell, info map[string]string) {
	cell = results.ConformCell{Scenario: sc.Name, Datapath: f.Name}
	t0 := time.Now()
	c := &cellRun{sc: sc, starts: map[string]time.Time{}, marks: map[string]time.Time{}, bg: map[string]*bgProbe{}, cell: &cell}
	c.specs = append(c.specs, sc.Services...)
	err := c.run(ctx, prefix, f, nodes)
	if c.dp != nil {
		info = c.dp.Info()
	}
	err = errors.Join(err, c.close())
	cell.Seconds = time.Since(t0).Seconds()
	var skip *skipError
	var dpErr *datapathError
	switch {
	case err == nil:
		cell.Status = results.CellPass
		for _, ch := range cell.Checks {
			if !ch.Pass {
				cell.Status = results.CellFail
				cell.Summary = ch.Check + ": " + ch.Observed
				break
			}
		}
		if cell.Status == results.CellPass {
			cell.Summary = c.report()
		}
	case errors.As(err, &skip):
		cell.Status, cell.Summary = results.CellSkip, skip.reason
	case errors.As(err, &dpErr):
		cell.Status, cell.Summary = results.CellError, dpErr.Error()
	default:
		cell.Status, cell.Summary = results.CellError, "harness: "+err.Error()
	}
	return cell, info
}

// close tears the cell's world down: background probes, then the world
// (datapath, servers, topology).
func (c *cellRun) close() error {
	for _, b := range c.bg {
		if b.proc != nil {
			b.proc.Kill()
		}
	}
	if c.w == nil {
		return nil
	}
	return c.w.Close()
}

func (c *cellRun) run(ctx context.Context, prefix string, f datapath.Factory, nodes int) error {
	sc := c.sc
	var err error
	tc := topology.Default(prefix, sc.Backends)
	tc.Nodes = nodes
	if c.v6() {
		tc.PodCIDR6, tc.ServiceCIDR6 = conformPodCIDR6, conformServiceCIDR6
	}
	// The servers answer in the scenario's family (pods' IPv6 addresses
	// for IPv6 scenarios). A datapath that cannot program IPv6 services
	// says so from Setup or Apply with datapath.ErrUnsupported, and the
	// cell is skipped with its reason.
	c.w, err = world.Build(ctx, world.Spec{Topology: tc, Servers: c.serverSpecs, Datapath: &f})
	var setup *world.SetupError
	switch {
	case errors.As(err, &setup) && errors.Is(err, datapath.ErrUnsupported):
		return &skipError{"setup: " + setup.Err.Error()}
	case errors.As(err, &setup):
		return &datapathError{fmt.Errorf("setup: %w", setup.Err)}
	case err != nil:
		return err
	}
	c.topo, c.dp, c.servers = c.w.Topology, c.w.Datapath, c.w.Servers
	if err := c.apply(ctx); err != nil {
		return err
	}
	for i, st := range sc.Steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := st.ID
		if name == "" {
			name = fmt.Sprintf("steps[%d]", i)
		} else {
			c.starts[st.ID] = time.Now()
		}
		switch {
		case st.Probe != nil:
			spec, where, err := c.probeSpec(st.Probe)
			if err != nil {
				return err
			}
			// The probe runs in the namespace and the cgroup of the
			// pod it is in, so a datapath serves it only if it serves
			// that pod (a hairpin probe is a backend pod's process).
			ns, cg := c.probeHome(st.Probe.From)
			if st.Probe.Background {
				p, err := probe.Start(ctx, ns, cg, spec)
				if err != nil {
					return err
				}
				c.bg[st.ID] = &bgProbe{step: st, spec: spec, proc: p, where: where}
				break
			}
			atts, err := probe.RunProcess(ctx, ns, cg, spec)
			if err != nil {
				return err
			}
			c.observe(name, st, spec, where, atts)
		case st.Update != nil:
			for _, u := range st.Update {
				c.update(u)
			}
			if err := c.apply(ctx); err != nil {
				return err
			}
		case st.Kill != "":
			pods, _ := scenarios.ParsePods(st.Kill, sc.Backends)
			for _, i := range pods {
				_ = c.servers[i].Stop()
			}
		case st.Sleep > 0:
			select {
			case <-time.After(time.Duration(st.Sleep)):
			case <-ctx.Done():
				return ctx.Err()
			}
		case st.LateReply != nil:
			if err := c.lateReply(st.LateReply); err != nil {
				return err
			}
		case st.Wait != "":
			b := c.bg[st.Wait]
			atts, err := b.proc.Wait()
			b.proc = nil
			if err != nil {
				return err
			}
			st.Probe = b.step.Probe
			c.observe(st.Wait, st, b.spec, b.where, atts)
		}
		if st.ID != "" {
			c.marks[st.ID] = time.Now()
		}
	}
	return nil
}

// serverSpecs are one backend server per pod of t (so that a kill step can
// stop one pod), answering on every target port any service of the
// scenario uses, and naming pod and port in every reply.
func (c *cellRun) serverSpecs(t *topology.Topology) []loadgen.ServerSpec {
	ports := map[int]bool{}
	add := func(s scenarios.ConformanceService) {
		for _, p := range s.Ports {
			ports[p.TargetPort] = true
		}
	}
	for _, s := range c.sc.Services {
		add(s)
	}
	for _, st := range c.sc.Steps {
		for _, u := range st.Update {
			add(u)
		}
		for _, t := range []*scenarios.Target{probeTarget(st.Probe), reconnectTarget(st.Probe)} {
			if t != nil && t.PodPort != 0 {
				ports[t.PodPort] = true
			}
		}
	}
	var sorted []int
	for p := range ports {
		sorted = append(sorted, p)
	}
	sort.Ints(sorted)
	var out []loadgen.ServerSpec
	for _, b := range t.Backends {
		var spec loadgen.ServerSpec
		spec.Loops = 1
		for _, p := range sorted {
			spec.Listeners = append(spec.Listeners, loadgen.Listener{Pod: fmt.Sprintf("%s:%d", b.Name, p), NetNS: b.NS.Name,
				Addr: netip.AddrPortFrom(c.podAddr(b), uint16(p)).String()})
		}
		out = append(out, spec)
	}
	return out
}

func probeTarget(p *scenarios.ProbeStep) *scenarios.Target {
	if p == nil {
		return nil
	}
	return &p.Target
}

func reconnectTarget(p *scenarios.ProbeStep) *scenarios.Target {
	if p == nil {
		return nil
	}
	return p.ReconnectTo
}

func (c *cellRun) v6() bool { return c.sc.Family == "ipv6" }

// podAddr is a pod's address in the scenario's family.
func (c *cellRun) podAddr(p datapath.Pod) netip.Addr {
	if c.v6() {
		return p.Addr6
	}
	return p.Addr
}

// vip is the i-th service's ClusterIP: the service range's (10+i)-th
// address.
func (c *cellRun) vip(i int) netip.Addr {
	if c.v6() {
		return topology.NthHost(c.topo.Env().ServiceCIDR6, 10+i)
	}
	return topology.NthHost(topology.DefaultServiceCIDR, 10+i)
}

// update merges an update into the current service specs.
func (c *cellRun) update(u scenarios.ConformanceService) {
	for i := range c.specs {
		s := &c.specs[i]
		if s.Name != u.Name {
			continue
		}
		if u.Ports != nil {
			s.Ports = u.Ports
		}
		if u.Endpoints != nil {
			s.Endpoints = u.Endpoints
		}
		if u.SessionAffinity != "" {
			s.SessionAffinity = u.SessionAffinity
		}
		if u.InternalTrafficPolicy != "" {
			s.InternalTrafficPolicy = u.InternalTrafficPolicy
		}
		if u.AffinityTimeoutSeconds != 0 {
			s.AffinityTimeoutSeconds = u.AffinityTimeoutSeconds
		}
	}
}

// apply builds the datapath state from the current specs and applies it.
func (c *cellRun) apply(ctx context.Context) error {
	var st datapath.State
	for i, s := range c.specs {
		svc := datapath.Service{Namespace: "conformance", Name: s.Name, ClusterIP: c.vip(i)}
		for _, p := range s.Ports {
			svc.Ports = append(svc.Ports, datapath.ServicePort{Name: p.Name, Protocol: datapath.Protocol(p.Protocol),
				Port: uint16(p.Port), TargetPort: uint16(p.TargetPort)})
		}
		for _, set := range s.Endpoints {
			pods, _ := scenarios.ParsePods(set.Pods, c.sc.Backends)
			for _, i := range pods {
				b := c.topo.Backends[i]
				svc.Endpoints = append(svc.Endpoints, datapath.Endpoint{Pod: b.Name, Addr: c.podAddr(b),
					Ready: set.IsReady(), Serving: set.IsServing(), Terminating: set.Terminating,
					NodeName: c.topo.BackendNodeName(i)})
			}
		}
		if s.InternalTrafficPolicy == "Local" {
			svc.InternalTrafficPolicy = datapath.TrafficPolicyLocal
		}
		if s.SessionAffinity == "ClientIP" {
			svc.SessionAffinity = datapath.SessionAffinityClientIP
			svc.AffinityTimeout = time.Duration(s.AffinityTimeoutSeconds) * time.Second
		}
		st.Services = append(st.Services, svc)
	}
	if err := c.dp.Apply(ctx, st); err != nil {
		if errors.Is(err, datapath.ErrUnsupported) {
			return &skipError{"apply: " + err.Error()}
		}
		return &datapathError{fmt.Errorf("apply: %w", err)}
	}
	c.state = st
	return nil
}

// probeHome is the network namespace and cgroup of a probe's pod.
func (c *cellRun) probeHome(from string) (*nsutil.NS, string) {
	p := c.topo.Clients[0]
	switch i, _ := scenarios.ParseFrom(from, c.sc.Backends); {
	case i == scenarios.FromHost:
		p = c.topo.Host
	case i >= 0:
		p = c.topo.Backends[i]
	}
	return p.NS, c.topo.PodCgroup(p)
}

// lateReply sends a late datagram from a backend's target port to the
// probe pod's bound port.
func (c *cellRun) lateReply(l *scenarios.LateReply) error {
	i, _ := scenarios.ParseFrom("backend:"+l.Pod, c.sc.Backends)
	b := c.topo.Backends[i]
	var port uint16
	for _, s := range c.state.Services {
		if s.Name != l.Service {
			continue
		}
		for _, p := range s.Ports {
			if p.Name == l.Port {
				port = p.TargetPort
			}
		}
	}
	if port == 0 {
		return fmt.Errorf("late reply: service %s has no port %q now", l.Service, l.Port)
	}
	to := c.topo.Clients[0]
	if j, _ := scenarios.ParseFrom(l.To, c.sc.Backends); j >= 0 {
		to = c.topo.Backends[j]
	}
	return sendLate(b.NS, netip.AddrPortFrom(c.podAddr(b), port), netip.AddrPortFrom(c.podAddr(to), uint16(l.LocalPort)), probe.LatePayload)
}

// resolve turns a scenario target into addresses.
func (c *cellRun) resolve(t scenarios.Target) ([]netip.AddrPort, string, error) {
	if t.Pod != "" {
		i, _ := scenarios.ParseFrom(t.Pod, c.sc.Backends)
		b := c.topo.Backends[i]
		return []netip.AddrPort{netip.AddrPortFrom(c.podAddr(b), uint16(t.PodPort))}, fmt.Sprintf("%s:%d", b.Name, t.PodPort), nil
	}
	for _, svc := range c.state.Services {
		if svc.Name != t.Service {
			continue
		}
		if t.RawPort != 0 {
			return []netip.AddrPort{netip.AddrPortFrom(svc.ClusterIP, uint16(t.RawPort))}, fmt.Sprintf("%s ClusterIP port %d (not a service port)", svc.Name, t.RawPort), nil
		}
		for _, p := range svc.Ports {
			if p.Name == t.Port {
				where := fmt.Sprintf("%s:%s (%d/%s)", svc.Name, p.Name, p.Port, p.Protocol)
				targets := c.dp.Targets(svc, p)
				if len(targets) == 0 {
					return nil, where, &skipError{fmt.Sprintf("no address to send to: Targets(%s) is empty (the client picks endpoints, there are none)", where)}
				}
				return targets, where, nil
			}
		}
		return nil, "", fmt.Errorf("service %s has no port %q now", svc.Name, t.Port)
	}
	return nil, "", fmt.Errorf("no service %q", t.Service)
}

func (c *cellRun) probeSpec(p *scenarios.ProbeStep) (probe.Spec, string, error) {
	targets, where, err := c.resolve(p.Target)
	if err != nil {
		return probe.Spec{}, "", err
	}
	spec := probe.Spec{Op: p.Op, Targets: targets, LongLived: p.Socket == "long-lived", V4Mapped: p.V4Mapped,
		LocalPort: uint16(p.LocalPort), Count: p.Count, Duration: time.Duration(p.Duration),
		Interval: time.Duration(p.Interval), Timeout: time.Duration(p.Timeout), Resend: time.Duration(p.Resend),
		ReconnectOnError: p.ReconnectOnError}
	if p.ReconnectTo != nil {
		second, w2, err := c.resolve(*p.ReconnectTo)
		if err != nil {
			return probe.Spec{}, "", err
		}
		spec.Second = second[0]
		where += " then " + w2
	}
	return spec, where, nil
}

// observe records a probe's summary and evaluates its step's expectations.
func (c *cellRun) observe(name string, st scenarios.Step, spec probe.Spec, where string, atts []probe.Attempt) {
	from := st.Probe.From
	if from == "" {
		from = "client"
	}
	sum := summarize(atts)
	sum.Step, sum.Op, sum.From = name, spec.Op, from
	sum.Targets = []string{where}
	c.cell.Probes = append(c.cell.Probes, sum)
	for _, e := range st.Expect {
		r := c.evaluate(e, atts)
		r.Step = name
		c.cell.Checks = append(c.cell.Checks, r)
	}
}

func summarize(atts []probe.Attempt) results.ProbeSummary {
	s := results.ProbeSummary{Attempts: len(atts), Errors: map[string]int{}, Backends: map[string]int{}, Peers: map[string]int{}, ReplyFrom: map[string]int{}, LateFrom: map[string]int{}}
	ports := map[string]bool{}
	var el []float64
	for _, a := range atts {
		el = append(el, a.ElapsedUS/1e3)
		if a.OK() {
			s.OK++
			s.Backends[a.Reply]++
		} else {
			s.Errors[strings.TrimSpace(a.Stage+" "+a.Errno)]++
		}
		if a.Peer != "" {
			s.Peers[a.Peer]++
		}
		if a.From != "" {
			s.ReplyFrom[a.From]++
		}
		for _, l := range a.Late {
			s.LateFrom[l]++
		}
		if ap, err := netip.ParseAddrPort(a.Local); err == nil {
			ports[strconv.Itoa(int(ap.Port()))] = true
		}
	}
	s.LocalPorts = len(ports)
	if len(el) > 0 {
		sort.Float64s(el)
		s.MedianMS, s.MaxMS = round3(el[len(el)/2]), round3(el[len(el)-1])
	}
	return s
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// report is what a passing cell shows, as the scenario asks.
func (c *cellRun) report() string {
	var parts []string
	for _, p := range c.cell.Probes {
		var s string
		switch c.sc.Report {
		case "errno":
			s = errnoText(p)
		case "backends":
			s = fmt.Sprintf("%d backends", distinctBackends(p.Backends))
		default:
			return ""
		}
		if len(c.cell.Probes) > 1 && !strings.HasPrefix(p.Step, "steps[") {
			s = p.Step + ": " + s
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func distinctBackends(m map[string]int) int {
	seen := map[string]bool{}
	for k := range m {
		pod, _, _ := strings.Cut(k, ":")
		seen[pod] = true
	}
	return len(seen)
}

// errnoText says how a probe's attempts ended: "ECONNREFUSED ×10 in 0.1 ms".
func errnoText(p results.ProbeSummary) string {
	var parts []string
	keys := make([]string, 0, len(p.Errors))
	for k := range p.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, p.Errors[k]))
	}
	if p.OK > 0 {
		parts = append(parts, fmt.Sprintf("answered ×%d", p.OK))
	}
	return fmt.Sprintf("%s, median %s", strings.Join(parts, ", "), msText(p.MedianMS))
}

func msText(ms float64) string {
	if ms < 1 {
		return strconv.FormatFloat(ms*1000, 'f', 0, 64) + " µs"
	}
	if ms < 10 {
		return strconv.FormatFloat(ms, 'f', 2, 64) + " ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
}

// window selects the attempts an expectation looks at.
func (c *cellRun) window(e scenarios.Expect, atts []probe.Attempt) []probe.Attempt {
	var out []probe.Attempt
	for _, a := range atts {
		if e.Phase != "" && a.Phase != e.Phase {
			continue
		}
		if e.After != "" && a.Start < c.marks[e.After].Add(time.Duration(e.Grace)).UnixNano() {
			continue
		}
		// A change may take effect anywhere inside its step (an Apply
		// can be visible before it returns): "before" ends where the
		// step began, "after" starts where it completed.
		if e.Before != "" && a.Start >= c.starts[e.Before].UnixNano() {
			continue
		}
		out = append(out, a)
	}
	return out
}

func (c *cellRun) podNames(set string) []string {
	idx, _ := scenarios.ParsePods(set, c.sc.Backends)
	var out []string
	for _, i := range idx {
		out = append(out, c.topo.Backends[i].Name)
	}
	return out
}

// backendAddr returns a reply's backend address and target port.
func (c *cellRun) backendAddr(a probe.Attempt) string {
	for _, b := range c.topo.Backends {
		if b.Name == a.Backend() {
			port, _ := strconv.Atoi(a.ReplyPort())
			return netip.AddrPortFrom(c.podAddr(b), uint16(port)).String()
		}
	}
	return ""
}

// evaluate checks one expectation on a probe's attempts.
func (c *cellRun) evaluate(e scenarios.Expect, all []probe.Attempt) results.CheckResult {
	r := results.CheckResult{Check: e.Check, Want: expectText(e)}
	atts := c.window(e, all)
	if len(atts) == 0 {
		r.Observed = "no attempts in the window"
		return r
	}
	var bad []probe.Attempt
	// every fails r if some attempt breaks pred, with the observation.
	every := func(pred func(probe.Attempt) bool) {
		for _, a := range atts {
			if !pred(a) {
				bad = append(bad, a)
			}
		}
	}
	counts := map[string]int{}
	for _, a := range atts {
		if a.OK() {
			counts[a.Backend()]++
		}
	}
	switch e.Check {
	case "ok":
		every(probe.Attempt.OK)
		r.Observed = outcomeText(atts)
	case "fail":
		every(func(a probe.Attempt) bool { return !a.OK() })
		r.Observed = outcomeText(atts)
	case "errno":
		every(func(a probe.Attempt) bool {
			for _, n := range e.Errno {
				if a.Errno == n {
					return true
				}
			}
			return false
		})
		r.Observed = outcomeText(atts)
	case "fail-within":
		var worst float64
		every(func(a probe.Attempt) bool {
			if !a.OK() {
				worst = max(worst, a.ElapsedUS/1e3)
				return a.ElapsedUS <= float64(time.Duration(e.Within).Microseconds())
			}
			return true
		})
		r.Observed = "slowest failure after " + msText(worst)
	case "reached", "only", "not-reached", "reaches":
		want := map[string]bool{}
		for _, n := range c.podNames(e.Pods) {
			want[n] = true
		}
		var missing []string
		for _, n := range c.podNames(e.Pods) {
			if counts[n] == 0 {
				missing = append(missing, n)
			}
		}
		switch e.Check {
		case "reached", "only":
			every(func(a probe.Attempt) bool { return !a.OK() || want[a.Backend()] })
		case "not-reached":
			every(func(a probe.Attempt) bool { return !a.OK() || !want[a.Backend()] })
		}
		if e.Check != "reached" && e.Check != "reaches" {
			missing = nil
		}
		if len(missing) > 0 {
			r.Observed = "never reached: " + strings.Join(missing, ", ") + "; "
		}
		r.Observed += "replies by backend: " + countsText(counts)
		if len(counts) == 0 {
			r.Observed += " (" + outcomeText(atts) + ")"
		}
		r.Pass = len(bad) == 0 && len(missing) == 0
		r.Examples = firstN(bad, 5)
		return r
	case "spread":
		pods := c.podNames(e.Pods)
		var n int
		for _, p := range pods {
			n += counts[p]
		}
		if n == 0 || len(pods) < 2 {
			r.Observed = "no replies from the pods"
			return r
		}
		exp := float64(n) / float64(len(pods))
		var chi2 float64
		for _, p := range pods {
			d := float64(counts[p]) - exp
			chi2 += d * d / exp
		}
		p := results.ChiSquareP(chi2, len(pods)-1)
		r.Pass = p >= e.Alpha
		r.Observed = fmt.Sprintf("chi-square %.1f, %d df, p=%.3g over %d replies (min %d, max %d per backend)", chi2, len(pods)-1, p, n, minCount(counts, pods), maxCount(counts, pods))
		return r
	case "single-backend":
		r.Pass = len(counts) == 1
		r.Observed = "replies by backend: " + countsText(counts)
		return r
	case "distinct":
		r.Pass = len(counts) >= e.Min
		r.Observed = fmt.Sprintf("%d distinct: %s", len(counts), countsText(counts))
		return r
	case "peer", "reply-from":
		seen := map[string]int{}
		every(func(a probe.Attempt) bool {
			got := a.Peer
			if e.Check == "reply-from" {
				if !a.OK() {
					return false
				}
				got = a.From
			}
			seen[got]++
			want := a.Dialed
			if e.Equals == "backend" {
				want = c.backendAddr(a)
			}
			return got == want
		})
		r.Observed = fmt.Sprintf("%s (dialed %s)", countsText(seen), atts[0].Dialed)
		if e.Check == "reply-from" && len(bad) > 0 && !bad[0].OK() {
			r.Observed = "no reply: " + outcomeText(atts)
		}
	case "late-from":
		// "The VIP or nothing": a late datagram the socket never sees
		// passes (a datapath may drop it); one it sees must come from
		// the expected address.
		seen := map[string]int{}
		every(func(a probe.Attempt) bool {
			want := a.Dialed
			if e.Equals == "backend" {
				want = c.backendAddr(a)
			}
			ok := true
			for _, l := range a.Late {
				seen[l]++
				ok = ok && l == want
			}
			return ok
		})
		r.Observed = fmt.Sprintf("late datagrams by source: %s (dialed %s)", countsText(seen), atts[0].Dialed)
	case "target-port":
		want := strconv.Itoa(e.Port)
		ports := map[string]int{}
		every(func(a probe.Attempt) bool {
			if !a.OK() {
				return false
			}
			ports[a.ReplyPort()]++
			return a.ReplyPort() == want
		})
		r.Observed = "replies by target port: " + countsText(ports)
		if len(ports) == 0 {
			r.Observed = "no reply: " + outcomeText(atts)
		}
	case "local-port-stable":
		ports := map[string]int{}
		for _, a := range atts {
			if ap, err := netip.ParseAddrPort(a.Local); err == nil {
				ports[strconv.Itoa(int(ap.Port()))]++
			}
		}
		r.Pass = len(ports) == 1
		r.Observed = fmt.Sprintf("%d local ports", len(ports))
		return r
	case "recovers":
		return c.recovers(e, atts, r)
	}
	r.Pass = len(bad) == 0
	r.Examples = firstN(bad, 5)
	return r
}

// recovers: find the last bad attempt after the mark; the datapath
// recovered when the attempt after it started, and must have within
// e.Within of the mark.
func (c *cellRun) recovers(e scenarios.Expect, atts []probe.Attempt, r results.CheckResult) results.CheckResult {
	want := map[string]bool{}
	for _, n := range c.podNames(e.Pods) {
		want[n] = true
	}
	good := func(a probe.Attempt) bool { return a.OK() && (e.Pods == "" || want[a.Backend()]) }
	mark := c.marks[e.After]
	last := -1
	for i, a := range atts {
		if !good(a) {
			last = i
		}
	}
	if last == len(atts)-1 {
		tail := atts[max(0, len(atts)-10):]
		r.Observed = fmt.Sprintf("not recovered %s after the change; last %d attempts: %s", time.Since(mark).Round(100*time.Millisecond), len(tail), outcomeText(tail))
		r.Examples = firstN(tail, 5)
		return r
	}
	at := time.Duration(0)
	if last >= 0 {
		at = time.Duration(atts[last+1].Start - mark.UnixNano())
		r.Examples = firstN(atts[max(0, last-4):last+1], 5)
	}
	r.Pass = at <= time.Duration(e.Within)
	r.Observed = fmt.Sprintf("recovered %s after the change", at.Round(time.Millisecond))
	if last >= 0 {
		r.Observed += fmt.Sprintf(" (last bad attempt: %s)", attemptText(atts[last]))
	}
	return r
}

func attemptText(a probe.Attempt) string {
	if a.OK() {
		return "answered by " + a.Reply
	}
	return strings.TrimSpace(a.Stage + " " + a.Errno)
}

// outcomeText counts attempts by outcome: "ECONNREFUSED ×3, answered ×2".
func outcomeText(atts []probe.Attempt) string {
	m := map[string]int{}
	for _, a := range atts {
		if a.OK() {
			m["answered"]++
		} else {
			m[strings.TrimSpace(a.Stage+" "+a.Errno)]++
		}
	}
	return countsText(m)
}

func countsText(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		name := k
		if name == "" {
			name = `""`
		}
		parts = append(parts, fmt.Sprintf("%s ×%d", name, m[k]))
	}
	return strings.Join(parts, ", ")
}

func firstN(a []probe.Attempt, n int) []probe.Attempt {
	if len(a) > n {
		return a[:n]
	}
	return a
}

func minCount(m map[string]int, keys []string) int {
	v := math.MaxInt
	for _, k := range keys {
		v = min(v, m[k])
	}
	return v
}

func maxCount(m map[string]int, keys []string) int {
	v := 0
	for _, k := range keys {
		v = max(v, m[k])
	}
	return v
}

// expectText renders an expectation for humans.
func expectText(e scenarios.Expect) string {
	s := e.Check
	switch e.Check {
	case "errno":
		s += " " + strings.Join(e.Errno, "|")
	case "fail-within", "recovers":
		s += " " + time.Duration(e.Within).String()
	case "spread":
		s += fmt.Sprintf(" alpha=%g", e.Alpha)
	case "distinct":
		s += fmt.Sprintf(" >=%d", e.Min)
	case "target-port":
		s += fmt.Sprintf(" %d", e.Port)
	case "peer", "reply-from", "late-from":
		s += " = " + e.Equals
	}
	if e.Pods != "" {
		s += " pods " + e.Pods
	}
	if e.Phase != "" {
		s += " [" + e.Phase + " phase]"
	}
	if e.After != "" {
		s += " after " + e.After
		if e.Grace > 0 {
			s += "+" + time.Duration(e.Grace).String()
		}
	}
	if e.Before != "" {
		s += " before " + e.Before
	}
	return s
}
