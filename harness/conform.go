package harness

import (
	"context"
	"encoding/json"
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
	"svclab/results"
	"svclab/scenarios"
)

// ConformanceSchemaVersion is bumped on any incompatible change to
// ConformRun.
const ConformanceSchemaVersion = 1

// Conformance cell statuses.
const (
	// CellPass: every expectation held.
	CellPass = "pass"
	// CellFail: an expectation did not hold; Summary has what was observed.
	CellFail = "fail"
	// CellSkip: the datapath cannot express the scenario (its Probe, Setup
	// or Apply returned an error wrapping datapath.ErrUnsupported, or it
	// has no address to send to); Summary has the reason.
	CellSkip = "skip"
	// CellError: the datapath refused the scenario's state with an error
	// that does not say "unsupported", or the harness itself failed.
	CellError = "error"
)

// ConformConfig is one `svclab conform`.
type ConformConfig struct {
	Scenarios []*scenarios.Conformance
	// Datapaths to check, in column order; empty means every registered
	// datapath.
	Datapaths []string
	// OutputDir receives <run-id>/conformance.json and conformance.md.
	OutputDir string
	Log       io.Writer
	TTY       bool
}

// ConformRun is everything conformance.json holds.
type ConformRun struct {
	SchemaVersion int         `json:"schema_version"`
	ID            string      `json:"id"`
	Started       time.Time   `json:"started"`
	Finished      time.Time   `json:"finished"`
	Env           results.Env `json:"env"`
	// Datapaths are the table's columns: with Skipped set when the machine
	// cannot run the datapath at all.
	Datapaths []results.DatapathInfo `json:"datapaths"`
	// Scenarios are the table's rows.
	Scenarios []ConformScenario `json:"scenarios"`
	Cells     []ConformCell     `json:"cells"`
}

// ConformScenario describes a row.
type ConformScenario struct {
	Name      string `json:"name"`
	Behaviour string `json:"behaviour"`
	Source    string `json:"source"`
	Notes     string `json:"notes,omitempty"`
	Family    string `json:"family"`
	// Advisory says why failures of this scenario are not counted by
	// --strict (a known structural difference); empty for requirements.
	Advisory string `json:"advisory,omitempty"`
}

// ConformCell is one scenario run against one datapath.
type ConformCell struct {
	Scenario string `json:"scenario"`
	Datapath string `json:"datapath"`
	Status   string `json:"status"`
	// Summary is the first failing check's observation, the skip reason or
	// the error; for a pass, what the scenario asks to report, if anything.
	Summary string `json:"summary,omitempty"`
	// Checks are every expectation's outcome, in scenario order.
	Checks []CheckResult `json:"checks,omitempty"`
	// Probes summarise what the client observed in every probe step.
	Probes  []ProbeSummary `json:"probes,omitempty"`
	Seconds float64        `json:"seconds"`
}

// CheckResult is one expectation's outcome.
type CheckResult struct {
	// Step is the probe's step id (or "steps[i]").
	Step     string `json:"step"`
	Check    string `json:"check"`
	Want     string `json:"want"`
	Pass     bool   `json:"pass"`
	Observed string `json:"observed"`
	// Examples are up to five attempts that broke the expectation.
	Examples []ProbeAttempt `json:"examples,omitempty"`
}

// ProbeSummary is what one probe step observed, aggregated.
type ProbeSummary struct {
	Step     string   `json:"step"`
	Op       string   `json:"op"`
	From     string   `json:"from"`
	Targets  []string `json:"targets"`
	Attempts int      `json:"attempts"`
	OK       int      `json:"ok"`
	// Errors counts failures by "stage errno".
	Errors map[string]int `json:"errors,omitempty"`
	// Backends counts replies by backend (and target port, if said).
	Backends  map[string]int `json:"backends,omitempty"`
	Peers     map[string]int `json:"peers,omitempty"`
	ReplyFrom map[string]int `json:"reply_from,omitempty"`
	// LocalPorts is the number of distinct local ports used.
	LocalPorts int     `json:"local_ports"`
	MedianMS   float64 `json:"median_ms"`
	MaxMS      float64 `json:"max_ms"`
}

// cellOutcome errors end a cell early with a status other than error.
type skipError struct{ reason string }

func (e *skipError) Error() string { return e.reason }

// datapathError is a datapath refusing the scenario (not the harness
// failing): the cell shows it, the run goes on.
type datapathError struct{ err error }

func (e *datapathError) Error() string { return e.err.Error() }
func (e *datapathError) Unwrap() error { return e.err }

// Conform runs every scenario against every datapath, each pair in a fresh
// topology, and writes conformance.json and conformance.md. Failed
// expectations are findings, not errors: the error is non-nil only when the
// harness could not run (cells it could not run are in the run, marked
// error). Everything it creates is removed when it returns.
func Conform(ctx context.Context, cfg ConformConfig) (_ *ConformRun, dir string, err error) {
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
	if removed, err := CleanupStale(); err != nil {
		return nil, "", fmt.Errorf("clean up after earlier runs: %w", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(cfg.Log, "removed %d objects left by killed svclab runs\n", len(removed))
	}
	lock, err := NewRun()
	if err != nil {
		return nil, "", err
	}
	defer lock.Release()

	run := &ConformRun{SchemaVersion: ConformanceSchemaVersion, Started: time.Now().UTC(), Env: CollectEnv()}
	run.ID = run.Started.Format("20060102-150405") + "-" + lock.ID
	dir = filepath.Join(cfg.OutputDir, run.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("output: %w", err)
	}
	for _, sc := range cfg.Scenarios {
		run.Scenarios = append(run.Scenarios, ConformScenario{Name: sc.Name, Behaviour: sc.Behaviour, Source: sc.Source, Notes: sc.Notes,
			Family: sc.Family, Advisory: sc.Advisory})
	}

	prog := NewProgress(cfg.Log, cfg.TTY, len(factories)*len(cfg.Scenarios), 2*time.Second)
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
				run.Cells = append(run.Cells, ConformCell{Scenario: sc.Name, Datapath: f.Name, Status: CellSkip, Summary: "datapath unavailable: " + info.Skipped})
				prog.done++
				continue
			}
			prog.Start(fmt.Sprintf("%s × %s", f.Name, sc.Name))
			cell, dpInfo := runConformCell(ctx, fmt.Sprintf("%s-c%d", lock.Prefix, n), sc, f)
			n++
			if err := ctx.Err(); err != nil {
				return nil, "", fmt.Errorf("interrupted; everything it made was removed: %w", err)
			}
			if info.Info == nil && dpInfo != nil {
				info.Info = dpInfo
			}
			if cell.Status == CellError && strings.HasPrefix(cell.Summary, "harness: ") {
				harnessErrs = append(harnessErrs, fmt.Sprintf("%s × %s: %s", f.Name, sc.Name, cell.Summary))
			}
			run.Cells = append(run.Cells, cell)
			prog.Done(cellText(cell, 200))
		}
		run.Datapaths = append(run.Datapaths, info)
	}
	prog.Finish()
	run.Finished = time.Now().UTC()
	if err := writeJSON(filepath.Join(dir, "conformance.json"), run); err != nil {
		return nil, "", err
	}
	f, err := os.Create(filepath.Join(dir, "conformance.md"))
	if err != nil {
		return nil, "", fmt.Errorf("output: %w", err)
	}
	werr := WriteConformanceMarkdown(f, run)
	if err := errors.Join(werr, f.Close()); err != nil {
		return nil, "", fmt.Errorf("output: conformance.md: %w", err)
	}
	if len(harnessErrs) > 0 {
		return run, dir, fmt.Errorf("%d cells could not be run:\n  %s", len(harnessErrs), strings.Join(harnessErrs, "\n  "))
	}
	return run, dir, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	return nil
}

// Failing reports the cells of datapath name that failed or errored, in
// scenarios that are requirements (not advisory).
func (r *ConformRun) Failing(name string) []ConformCell {
	advisory := map[string]bool{}
	for _, s := range r.Scenarios {
		advisory[s.Name] = s.Advisory != ""
	}
	var out []ConformCell
	for _, c := range r.Cells {
		if c.Datapath == name && !advisory[c.Scenario] && (c.Status == CellFail || c.Status == CellError) {
			out = append(out, c)
		}
	}
	return out
}

// Cell returns the cell of a scenario and datapath.
func (r *ConformRun) Cell(scenario, dp string) (ConformCell, bool) {
	for _, c := range r.Cells {
		if c.Scenario == scenario && c.Datapath == dp {
			return c, true
		}
	}
	return ConformCell{}, false
}

// The conformance topology: pods in 10.244.0.0/24, services from
// 10.96.0.10 on (the 10th address, as in bench).
var (
	conformPodCIDR     = netip.MustParsePrefix("10.244.0.0/24")
	conformServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	// IPv6 scenarios run in a dual-stack topology with these ranges.
	conformPodCIDR6     = netip.MustParsePrefix("fd00:10:244::/120")
	conformServiceCIDR6 = netip.MustParsePrefix("fd00:10:96::/112")
)

// cellRun is the state of one scenario against one datapath.
type cellRun struct {
	sc      *scenarios.Conformance
	topo    *Topology
	dp      datapath.Datapath
	servers []*ServerProcess // by backend index
	// specs are the current service specs, in scenario order.
	specs []scenarios.ConformanceService
	state datapath.State
	// starts and marks are when each step with an id began and completed.
	starts map[string]time.Time
	marks  map[string]time.Time
	bg     map[string]*bgProbe
	cell   *ConformCell
}

type bgProbe struct {
	step  scenarios.Step
	spec  ProbeSpec
	proc  *ProbeProcess
	where string
}

func runConformCell(ctx context.Context, prefix string, sc *scenarios.Conformance, f datapath.Factory) (cell ConformCell, info map[string]string) {
	cell = ConformCell{Scenario: sc.Name, Datapath: f.Name}
	t0 := time.Now()
	c := &cellRun{sc: sc, starts: map[string]time.Time{}, marks: map[string]time.Time{}, bg: map[string]*bgProbe{}, cell: &cell}
	c.specs = append(c.specs, sc.Services...)
	err := c.run(ctx, prefix, f)
	if c.dp != nil {
		info = c.dp.Info()
	}
	err = errors.Join(err, c.close())
	cell.Seconds = time.Since(t0).Seconds()
	var skip *skipError
	var dpErr *datapathError
	switch {
	case err == nil:
		cell.Status = CellPass
		for _, ch := range cell.Checks {
			if !ch.Pass {
				cell.Status = CellFail
				cell.Summary = ch.Check + ": " + ch.Observed
				break
			}
		}
		if cell.Status == CellPass {
			cell.Summary = c.report()
		}
	case errors.As(err, &skip):
		cell.Status, cell.Summary = CellSkip, skip.reason
	case errors.As(err, &dpErr):
		cell.Status, cell.Summary = CellError, dpErr.Error()
	default:
		cell.Status, cell.Summary = CellError, "harness: "+err.Error()
	}
	return cell, info
}

// close tears the cell's world down: probes, datapath, servers, topology.
func (c *cellRun) close() error {
	var errs []error
	for _, b := range c.bg {
		if b.proc != nil && b.proc.cmd.Process != nil {
			_ = b.proc.cmd.Process.Kill()
			_ = b.proc.cmd.Wait()
		}
	}
	if c.dp != nil {
		if err := c.dp.Close(); err != nil {
			errs = append(errs, fmt.Errorf("datapath close: %w", err))
		}
	}
	for _, s := range c.servers {
		_ = s.Stop()
	}
	if c.topo != nil {
		errs = append(errs, c.topo.Close())
	}
	return errors.Join(errs...)
}

func (c *cellRun) run(ctx context.Context, prefix string, f datapath.Factory) error {
	sc := c.sc
	var err error
	tc := TopologyConfig{Prefix: prefix, Clients: 1, Backends: sc.Backends, PodCIDR: conformPodCIDR, ServiceCIDR: conformServiceCIDR}
	if c.v6() {
		tc.PodCIDR6, tc.ServiceCIDR6 = conformPodCIDR6, conformServiceCIDR6
	}
	if c.topo, err = NewTopology(ctx, tc); err != nil {
		return err
	}
	if c.v6() {
		if env := c.topo.Env(); !env.PodCIDR6.IsValid() || !env.ServiceCIDR6.IsValid() || !c.topo.Backends[0].Addr6.IsValid() {
			return &skipError{"the topology is IPv4-only (datapath.Env has no IPv6 pod and service ranges)"}
		}
	}
	// The servers answer in the scenario's family (pods' IPv6 addresses
	// for IPv6 scenarios). A datapath that cannot program IPv6 services
	// says so from Setup or Apply with datapath.ErrUnsupported, and the
	// cell is skipped with its reason.
	if err := c.startServers(); err != nil {
		return err
	}
	c.dp = f.New()
	if err := c.dp.Setup(ctx, c.topo.Env()); err != nil {
		if errors.Is(err, datapath.ErrUnsupported) {
			return &skipError{"setup: " + err.Error()}
		}
		return &datapathError{fmt.Errorf("setup: %w", err)}
	}
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
			ns := c.topo.Clients[0].NS
			if from, _ := scenarios.ParseFrom(st.Probe.From, sc.Backends); from >= 0 {
				ns = c.topo.Backends[from].NS
			}
			if st.Probe.Background {
				p, err := StartProbe(ctx, ns, c.topo.ClientCgroup, spec)
				if err != nil {
					return err
				}
				c.bg[st.ID] = &bgProbe{step: st, spec: spec, proc: p, where: where}
				break
			}
			atts, err := RunProbeProcess(ctx, ns, c.topo.ClientCgroup, spec)
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

// startServers starts one backend server per pod (so that a kill step can
// stop one pod), answering on every target port any service of the
// scenario uses, and naming pod and port in every reply.
func (c *cellRun) startServers() error {
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
	for _, b := range c.topo.Backends {
		var spec ServerSpec
		spec.Loops = 1
		for _, p := range sorted {
			spec.Listeners = append(spec.Listeners, Listener{Pod: fmt.Sprintf("%s:%d", b.Name, p), NetNS: b.NS.Name,
				Addr: netip.AddrPortFrom(c.podAddr(b), uint16(p)).String()})
		}
		s, err := StartServer(c.topo.Node, c.topo.ServerCgroup, spec)
		if err != nil {
			return fmt.Errorf("backend server of %s: %w", b.Name, err)
		}
		c.servers = append(c.servers, s)
	}
	return nil
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
		return nthHost(c.topo.Env().ServiceCIDR6, 10+i)
	}
	return nthHost(conformServiceCIDR, 10+i)
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
					Ready: set.IsReady(), Serving: set.IsServing(), Terminating: set.Terminating})
			}
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

func (c *cellRun) probeSpec(p *scenarios.ProbeStep) (ProbeSpec, string, error) {
	targets, where, err := c.resolve(p.Target)
	if err != nil {
		return ProbeSpec{}, "", err
	}
	spec := ProbeSpec{Op: p.Op, Targets: targets, LongLived: p.Socket == "long-lived", V4Mapped: p.V4Mapped,
		LocalPort: uint16(p.LocalPort), Count: p.Count, Duration: time.Duration(p.Duration),
		Interval: time.Duration(p.Interval), Timeout: time.Duration(p.Timeout), Resend: time.Duration(p.Resend),
		ReconnectOnError: p.ReconnectOnError}
	if p.ReconnectTo != nil {
		second, w2, err := c.resolve(*p.ReconnectTo)
		if err != nil {
			return ProbeSpec{}, "", err
		}
		spec.Second = second[0]
		where += " then " + w2
	}
	return spec, where, nil
}

// observe records a probe's summary and evaluates its step's expectations.
func (c *cellRun) observe(name string, st scenarios.Step, spec ProbeSpec, where string, atts []ProbeAttempt) {
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

func summarize(atts []ProbeAttempt) ProbeSummary {
	s := ProbeSummary{Attempts: len(atts), Errors: map[string]int{}, Backends: map[string]int{}, Peers: map[string]int{}, ReplyFrom: map[string]int{}}
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
func errnoText(p ProbeSummary) string {
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
func (c *cellRun) window(e scenarios.Expect, atts []ProbeAttempt) []ProbeAttempt {
	var out []ProbeAttempt
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
func (c *cellRun) backendAddr(a ProbeAttempt) string {
	for _, b := range c.topo.Backends {
		if b.Name == a.Backend() {
			port, _ := strconv.Atoi(a.ReplyPort())
			return netip.AddrPortFrom(c.podAddr(b), uint16(port)).String()
		}
	}
	return ""
}

// evaluate checks one expectation on a probe's attempts.
func (c *cellRun) evaluate(e scenarios.Expect, all []ProbeAttempt) CheckResult {
	r := CheckResult{Check: e.Check, Want: expectText(e)}
	atts := c.window(e, all)
	if len(atts) == 0 {
		r.Observed = "no attempts in the window"
		return r
	}
	var bad []ProbeAttempt
	// every fails r if some attempt breaks pred, with the observation.
	every := func(pred func(ProbeAttempt) bool) {
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
		every(ProbeAttempt.OK)
		r.Observed = outcomeText(atts)
	case "fail":
		every(func(a ProbeAttempt) bool { return !a.OK() })
		r.Observed = outcomeText(atts)
	case "errno":
		every(func(a ProbeAttempt) bool {
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
		every(func(a ProbeAttempt) bool {
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
			every(func(a ProbeAttempt) bool { return !a.OK() || want[a.Backend()] })
		case "not-reached":
			every(func(a ProbeAttempt) bool { return !a.OK() || !want[a.Backend()] })
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
		p := ChiSquareP(chi2, len(pods)-1)
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
		every(func(a ProbeAttempt) bool {
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
	case "target-port":
		want := strconv.Itoa(e.Port)
		ports := map[string]int{}
		every(func(a ProbeAttempt) bool {
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
func (c *cellRun) recovers(e scenarios.Expect, atts []ProbeAttempt, r CheckResult) CheckResult {
	want := map[string]bool{}
	for _, n := range c.podNames(e.Pods) {
		want[n] = true
	}
	good := func(a ProbeAttempt) bool { return a.OK() && (e.Pods == "" || want[a.Backend()]) }
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

func attemptText(a ProbeAttempt) string {
	if a.OK() {
		return "answered by " + a.Reply
	}
	return strings.TrimSpace(a.Stage + " " + a.Errno)
}

// outcomeText counts attempts by outcome: "ECONNREFUSED ×3, answered ×2".
func outcomeText(atts []ProbeAttempt) string {
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

func firstN(a []ProbeAttempt, n int) []ProbeAttempt {
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
	case "peer", "reply-from":
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

// ChiSquareP returns the p-value of Pearson's chi-square statistic x with
// df degrees of freedom: the regularized upper incomplete gamma function
// Q(df/2, x/2).
func ChiSquareP(x float64, df int) float64 {
	return gammaQ(float64(df)/2, x/2)
}

// gammaQ is the regularized upper incomplete gamma function, by its power
// series below a+1 and by its continued fraction (modified Lentz) above.
func gammaQ(a, x float64) float64 {
	if x <= 0 {
		return 1
	}
	lg, _ := math.Lgamma(a)
	front := math.Exp(-x + a*math.Log(x) - lg)
	if x < a+1 {
		term, sum := 1/a, 1/a
		for n := 1; n < 10000; n++ {
			term *= x / (a + float64(n))
			sum += term
			if math.Abs(term) < math.Abs(sum)*1e-15 {
				break
			}
		}
		return math.Max(0, 1-sum*front)
	}
	const tiny = 1e-300
	b := x + 1 - a
	cc, d := 1/tiny, 1/b
	h := d
	for i := 1; i < 10000; i++ {
		an := -float64(i) * (float64(i) - a)
		b += 2
		d = an*d + b
		if math.Abs(d) < tiny {
			d = tiny
		}
		cc = b + an/cc
		if math.Abs(cc) < tiny {
			cc = tiny
		}
		d = 1 / d
		del := d * cc
		h *= del
		if math.Abs(del-1) < 1e-15 {
			break
		}
	}
	return front * h
}

// cellText is a cell as the table shows it, at most width runes.
func cellText(c ConformCell, width int) string {
	var s string
	switch c.Status {
	case CellPass:
		s = "pass"
		if c.Summary != "" {
			s += " (" + c.Summary + ")"
		}
	case CellFail:
		s = "FAIL: " + c.Summary
	case CellSkip:
		s = "skip: " + c.Summary
	default:
		s = "ERROR: " + c.Summary
	}
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\n", " "), "|", "/")
	if r := []rune(s); len(r) > width {
		s = string(r[:width-1]) + "…"
	}
	return s
}

// mdCellWidth is the longest cell text the markdown table shows.
const mdCellWidth = 100

// WriteConformanceMarkdown writes the behaviour × datapath table, the
// sources, and the details of every cell that did not pass.
func WriteConformanceMarkdown(w io.Writer, run *ConformRun) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# svclab conformance %s\n\n", run.ID)
	fmt.Fprintf(&b, "Kernel %s, %d CPUs, %s. Each cell is one scenario against one datapath in a fresh topology: pass, FAIL with what the client observed, skip with the reason.\n\n", run.Env.Kernel, run.Env.CPUs, run.Started.Format("2006-01-02 15:04 MST"))
	b.WriteString("| Behaviour |")
	for _, d := range run.Datapaths {
		fmt.Fprintf(&b, " %s |", d.Name)
	}
	b.WriteString("\n|---|")
	for range run.Datapaths {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, s := range run.Scenarios {
		adv := ""
		if s.Advisory != "" {
			adv = " (advisory)"
		}
		fmt.Fprintf(&b, "| `%s`%s: %s |", s.Name, adv, strings.ReplaceAll(s.Behaviour, "|", "/"))
		for _, d := range run.Datapaths {
			c, ok := run.Cell(s.Name, d.Name)
			text := "—"
			if ok {
				text = cellText(c, mdCellWidth)
				if c.Status == CellFail || c.Status == CellError {
					text = "**" + strings.Replace(text, ":", "**:", 1)
				}
			}
			fmt.Fprintf(&b, " %s |", text)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n## Datapaths\n\n")
	for _, d := range run.Datapaths {
		fmt.Fprintf(&b, "- **%s**: %s", d.Name, d.Description)
		if d.Skipped != "" {
			fmt.Fprintf(&b, " (unavailable: %s)", d.Skipped)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n## Scenarios and sources\n\n")
	for _, s := range run.Scenarios {
		fmt.Fprintf(&b, "- `%s` (%s): %s Source: %s.", s.Name, s.Family, s.Behaviour, strings.TrimSuffix(s.Source, "."))
		if s.Notes != "" {
			fmt.Fprintf(&b, " %s", s.Notes)
		}
		if s.Advisory != "" {
			fmt.Fprintf(&b, " Advisory (not counted by --strict): %s", s.Advisory)
		}
		b.WriteString("\n")
	}
	var details []string
	for _, c := range run.Cells {
		// Skips are in the table; only those cut short there are repeated.
		if c.Status == CellPass || (c.Status == CellSkip && len([]rune(cellText(c, 1000))) <= mdCellWidth) {
			continue
		}
		var d strings.Builder
		fmt.Fprintf(&d, "- `%s` × **%s**: %s\n", c.Scenario, c.Datapath, strings.ReplaceAll(cellText(c, 1000), "\n", " "))
		for _, ch := range c.Checks {
			if !ch.Pass {
				fmt.Fprintf(&d, "  - %s: want %s; observed %s\n", ch.Step, ch.Want, ch.Observed)
			}
		}
		details = append(details, d.String())
	}
	if len(details) > 0 {
		b.WriteString("\n## Cells that did not pass\n\n")
		b.WriteString(strings.Join(details, ""))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
