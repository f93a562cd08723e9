package harness

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"svclab/datapath"
	"svclab/internal/nsutil"
	"svclab/results"
	"svclab/scenarios"
)

// BenchConfig is one `svclab bench`.
type BenchConfig struct {
	Scenario *scenarios.Scenario
	// OutputDir receives <run-id>/results.json and the charts.
	OutputDir string
	// Log receives progress; TTY says whether it is a terminal.
	Log io.Writer
	TTY bool
	// Lookup finds a datapath by name (datapath.Lookup when nil; tests
	// pass their own datapaths).
	Lookup func(name string) (datapath.Factory, error)
}

// Plan is a validated scenario resolved into what the runner needs.
type Plan struct {
	Scenario *scenarios.Scenario
	Topology TopologyConfig
	Service  datapath.Service
	Port     datapath.ServicePort
	// Factories are the datapaths to measure, in the scenario's order;
	// Skipped are those this machine cannot run, with the reason.
	Factories []datapath.Factory
	Skipped   []results.DatapathInfo
}

// NewPlan validates a scenario against the registry and the machine. An
// unknown datapath is an error; one the machine cannot run is skipped with
// its probe's reason.
func NewPlan(s *scenarios.Scenario) (*Plan, error) { return newPlan(s, datapath.Lookup) }

func newPlan(s *scenarios.Scenario, lookup func(string) (datapath.Factory, error)) (*Plan, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	p := &Plan{Scenario: s}
	p.Topology = TopologyConfig{
		Clients:     s.Topology.Clients,
		Backends:    s.Topology.Backends,
		PodCIDR:     netip.MustParsePrefix(s.Topology.PodCIDR),
		ServiceCIDR: netip.MustParsePrefix(s.Topology.ServiceCIDR),
	}
	if err := p.Topology.Validate(); err != nil {
		return nil, fmt.Errorf("topology.%w", err)
	}
	if extra := s.MaxEndpoints() - p.Topology.Backends; extra > 0 {
		// Endpoints past the backend pods are extra pod addresses: check
		// now that they fit, not at the trial that needs them.
		tc := p.Topology
		tc.ExtraEndpoints = extra
		if err := tc.Validate(); err != nil {
			return nil, fmt.Errorf("scale.endpointSweep: %d endpoints on %d backend pods: %w", s.MaxEndpoints(), tc.Backends, err)
		}
	}
	for _, name := range s.Datapaths {
		f, err := lookup(name)
		if err != nil {
			return nil, fmt.Errorf("datapaths: %w", err)
		}
		if f.Probe != nil {
			if err := f.Probe(); err != nil {
				if !errors.Is(err, datapath.ErrUnsupported) {
					return nil, fmt.Errorf("datapath %s: probe: %w", name, err)
				}
				p.Skipped = append(p.Skipped, results.DatapathInfo{Name: name, Description: f.Description, Skipped: err.Error()})
				continue
			}
		}
		p.Factories = append(p.Factories, f)
	}
	p.Port = datapath.ServicePort{Name: "http", Protocol: datapath.Protocol(s.Service.Protocol),
		Port: uint16(s.Service.Port), TargetPort: uint16(s.Service.TargetPort)}
	// The ClusterIP is the service CIDR's 10th address, as a kube-dns-like
	// well-known address; its pods are every backend of the topology.
	p.Service = datapath.Service{Namespace: s.Service.Namespace, Name: s.Service.Name,
		ClusterIP: nthHost(p.Topology.ServiceCIDR, 10), Ports: []datapath.ServicePort{p.Port}}
	if prefixHosts(p.Topology.ServiceCIDR) < 10 {
		p.Service.ClusterIP = nthHost(p.Topology.ServiceCIDR, 1)
	}
	return p, nil
}

// State returns the desired datapath state for a topology: n services,
// each with the topology's first `endpoints` endpoints, ready (the backend
// pods' own addresses, then their extra addresses). With one service it is
// the scenario's service; with more, services are named svc-00000… in the
// scenario's namespace with consecutive ClusterIPs, and Target is the last
// one (last in every datapath's rendering order).
func (p *Plan) State(t *Topology, n, endpoints int) (datapath.State, error) {
	eps, err := t.Endpoints(endpoints)
	if err != nil {
		return datapath.State{}, err
	}
	if n <= 1 {
		svc := p.Service
		svc.Endpoints = eps
		return datapath.State{Services: []datapath.Service{svc}}, nil
	}
	st := datapath.State{Services: make([]datapath.Service, n)}
	for i := range n {
		st.Services[i] = datapath.Service{Namespace: p.Service.Namespace, Name: fmt.Sprintf("svc-%05d", i),
			ClusterIP: nthHost(p.Topology.ServiceCIDR, 10+i), Ports: p.Service.Ports, Endpoints: eps}
	}
	return st, nil
}

// Target is the service the client talks to: the last one programmed.
func Target(st datapath.State) datapath.Service { return st.Services[len(st.Services)-1] }

// TrialSpec is one trial of the schedule.
type TrialSpec struct {
	Factory datapath.Factory
	// Services and Endpoints are the scale point: how many services,
	// each with how many endpoints.
	Services    int
	Endpoints   int
	Concurrency int
	Repetition  int
	// Rate, if > 0, makes the trial open-loop (Concurrency 0) at Rate
	// connections per second, LoadFraction of the measured capacity, on
	// the schedule drawn from Seed.
	Rate         float64
	LoadFraction float64
	Seed         uint64
}

// Schedule interleaves datapaths: within each repetition, scale point and
// concurrency level every datapath runs once, and the order rotates from
// one round to the next, so neither drift of the machine nor position
// favours one.
func (p *Plan) Schedule() []TrialSpec {
	var out []TrialSpec
	round := 0
	n := len(p.Factories)
	for rep := range p.Scenario.Workload.Repetitions {
		points := p.Scenario.ScalePoints()
		if rep%2 == 1 {
			// Scale points run in turn, so a machine that drifts over
			// the run would tilt a sweep; odd repetitions go back down,
			// which cancels a steady drift. The first repetition goes
			// up, so a datapath's scale limit is found at its smallest
			// point and larger ones are not tried.
			points = slices.Clone(points)
			slices.Reverse(points)
		}
		for _, pt := range points {
			for _, c := range p.Scenario.Workload.Concurrency {
				for i := range n {
					out = append(out, TrialSpec{Factory: p.Factories[(i+round)%n], Services: pt.Services,
						Endpoints: pt.Endpoints, Concurrency: c, Repetition: rep})
				}
				round++
			}
		}
	}
	return out
}

// Bench runs a whole benchmark and writes its results. Everything it creates
// is removed when it returns, whether it succeeds, fails or is cancelled.
func Bench(ctx context.Context, cfg BenchConfig) (_ *results.Run, dir string, err error) {
	lookup := cfg.Lookup
	if lookup == nil {
		lookup = datapath.Lookup
	}
	plan, err := newPlan(cfg.Scenario, lookup)
	if err != nil {
		return nil, "", err
	}
	if len(plan.Factories) == 0 {
		return nil, "", errors.New("datapaths: none of the requested datapaths can run on this machine")
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

	run := &results.Run{SchemaVersion: results.SchemaVersion, Started: time.Now().UTC(), Env: CollectEnv()}
	run.ID = run.Started.Format("20060102-150405") + "-" + lock.ID
	run.Scenario, _ = json.Marshal(cfg.Scenario)
	dir = filepath.Join(cfg.OutputDir, run.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("output: %w", err)
	}

	sched := plan.Schedule()
	w := cfg.Scenario.Workload
	per := time.Duration(w.Warmup) + time.Duration(w.Duration) + 2*time.Second
	prog := NewProgress(cfg.Log, cfg.TTY, len(sched)+1+plan.openTrials(), per)
	defer prog.Finish()
	trials := fmt.Sprintf("%d trials", len(sched))
	if n := plan.openTrials(); n > 0 {
		trials = fmt.Sprintf("%d trials (%d closed-loop, %d open-loop)", len(sched)+n, len(sched), n)
	}
	prog.Logf("svclab run %s: %s; kernel objects are named %s-*", run.ID, trials, lock.Prefix)
	for _, s := range plan.Skipped {
		prog.Logf("skipping %s: %s", s.Name, s.Skipped)
	}
	infos := map[string]map[string]string{}

	// The generator's own ceiling: the same client and server over loopback
	// in one namespace, at the highest concurrency: no veth, no routing, no
	// datapath. Datapath figures close to it are bound by the generator.
	maxC := slicesMax(w.Concurrency)
	prog.Start(fmt.Sprintf("generator ceiling (loopback, c=%d)", maxC))
	gen, err := generatorCeiling(ctx, lock.Prefix+"-gen", plan, maxC)
	if err != nil && ctx.Err() != nil {
		return nil, "", fmt.Errorf("interrupted; everything it made was removed: %w", ctx.Err())
	}
	if err != nil {
		return nil, "", fmt.Errorf("generator ceiling: %w", err)
	}
	run.Generator = gen
	prog.Done(fmt.Sprintf("%.0f conn/s, p90 %.0f µs", gen.Workload.QPS, gen.Workload.Latency.P90))

	for i, ts := range sched {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		what := fmt.Sprintf("%s c=%d", ts.Factory.Name, ts.Concurrency)
		if cfg.Scenario.Scale != nil {
			what += fmt.Sprintf(" services=%d endpoints=%d", ts.Services, ts.Endpoints)
			if l, ok := limitedAt(run.ScaleLimits, ts); ok {
				prog.Logf("%s repetition %d/%d: not tried (limited at %d services × %d endpoints)", what, ts.Repetition+1, w.Repetitions, l.Services, l.Endpoints)
				prog.Skip()
				continue
			}
		}
		prog.Start(fmt.Sprintf("%s repetition %d/%d", what, ts.Repetition+1, w.Repetitions))
		tr, info, err := runTrial(ctx, fmt.Sprintf("%s-t%d", lock.Prefix, i), plan, ts)
		var limit *applyLimitError
		if errors.As(err, &limit) && ctx.Err() == nil {
			// A scale limit is a finding, not a failure of the run.
			run.ScaleLimits = append(run.ScaleLimits, results.ScaleLimit{Datapath: ts.Factory.Name,
				Services: ts.Services, Endpoints: ts.Endpoints, Reason: limit.Error(), ApplySeconds: limit.elapsed.Seconds()})
			prog.Logf("%s: %s; larger points of this sweep are not tried", what, limit)
			if tr == nil {
				prog.Done("not measured")
				continue
			}
			err = nil
		}
		if err != nil {
			if ctx.Err() != nil {
				// Whatever failed was cut short by the interrupt.
				return nil, "", fmt.Errorf("interrupted during trial %d; everything it made was removed: %w", i+1, ctx.Err())
			}
			return nil, "", fmt.Errorf("trial %d (%s, concurrency %d): %w", i+1, ts.Factory.Name, ts.Concurrency, err)
		}
		tr.Order = i
		if _, ok := infos[ts.Factory.Name]; !ok {
			infos[ts.Factory.Name] = info
		}
		run.Trials = append(run.Trials, *tr)
		prog.Done(fmt.Sprintf("%.0f conn/s, p90 %.0f µs, %d errors, %d SYN retransmits", tr.Workload.QPS, tr.Workload.Latency.P90, sumErrors(tr.Workload.Errors), tr.Workload.SynRetrans))
	}
	if w.OpenLoop() {
		if err := runOpenLoopPhase(ctx, prog, lock.Prefix, plan, run); err != nil {
			return nil, "", err
		}
	}
	prog.Finish()

	for _, f := range plan.Factories {
		run.Datapaths = append(run.Datapaths, results.DatapathInfo{Name: f.Name, Description: f.Description, Info: infos[f.Name]})
	}
	run.Datapaths = append(run.Datapaths, plan.Skipped...)
	run.Finished = time.Now().UTC()
	run.Summary = results.Summarize(run.Trials)
	if err := WriteRun(dir, run); err != nil {
		return nil, "", err
	}
	return run, dir, nil
}

// WriteRun writes a run's results.json, its charts (with the scale
// sweep's line charts when it has one) and its Go benchmark
// format lines (bench.txt, for benchstat) into dir.
func WriteRun(dir string, run *results.Run) error {
	if err := run.Write(filepath.Join(dir, "results.json")); err != nil {
		return err
	}
	if _, err := results.WriteCharts(dir, run); err != nil {
		return err
	}
	if _, err := results.WriteScaleCharts(dir, run); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "bench.txt"))
	if err != nil {
		return err
	}
	if err := results.WriteBenchFormat(f, run); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sumErrors(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func slicesMax(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// applyLimitError is an Apply of a scale point that failed or did not
// finish within the sweep's apply timeout.
type applyLimitError struct {
	what    string
	elapsed time.Duration
	timeout time.Duration
	err     error
}

func (e *applyLimitError) Error() string {
	if errors.Is(e.err, context.DeadlineExceeded) {
		return fmt.Sprintf("%s did not finish within %s", e.what, e.timeout)
	}
	return fmt.Sprintf("%s failed after %s: %v", e.what, e.elapsed.Round(time.Millisecond), e.err)
}

func (e *applyLimitError) Unwrap() error { return e.err }

// limitedAt returns the limit that rules a trial out: one of the same
// datapath at a point with no more services and no more endpoints.
func limitedAt(limits []results.ScaleLimit, ts TrialSpec) (results.ScaleLimit, bool) {
	for _, l := range limits {
		if l.Datapath == ts.Factory.Name && ts.Services >= l.Services && ts.Endpoints >= l.Endpoints {
			return l, true
		}
	}
	return results.ScaleLimit{}, false
}

// timedApply runs one Apply, bounded by the scenario's apply timeout in a
// scale sweep; a failure there comes back as an *applyLimitError.
func timedApply(ctx context.Context, plan *Plan, dp datapath.Datapath, st datapath.State, what string) (time.Duration, error) {
	timeout := plan.Scenario.ApplyTimeout()
	actx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	t0 := time.Now()
	err := dp.Apply(actx, st)
	elapsed := time.Since(t0)
	if err == nil {
		return elapsed, nil
	}
	if timeout > 0 && ctx.Err() == nil {
		if actx.Err() != nil {
			// The datapath may report the kill of its tool rather than
			// the deadline; the deadline is what happened.
			err = errors.Join(context.DeadlineExceeded, err)
		}
		return elapsed, &applyLimitError{what: what, elapsed: elapsed, timeout: timeout, err: err}
	}
	return elapsed, fmt.Errorf("%s: %w", what, err)
}

// runTrial builds a fresh topology (so no TIME_WAIT or conntrack state of an
// earlier trial can slow this one), sets the datapath up, applies the
// service, measures, and tears everything down. In a scale sweep, an Apply
// that fails or times out returns an *applyLimitError: with a nil trial if
// it was the whole set's, with the measured trial if it was the change's.
func runTrial(ctx context.Context, prefix string, plan *Plan, ts TrialSpec) (_ *results.Trial, info map[string]string, err error) {
	endpoints := cmp.Or(ts.Endpoints, plan.Scenario.EndpointsPerService())
	tc := plan.Topology
	tc.Prefix = prefix
	tc.ExtraEndpoints = max(0, endpoints-tc.Backends)
	topo, err := NewTopology(ctx, tc)
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, topo.Close()) }()
	srv, err := StartServer(topo.Node, topo.ServerCgroup, BackendListeners(topo, plan.Port.TargetPort))
	if err != nil {
		return nil, nil, err
	}
	defer srv.Stop()
	dp := ts.Factory.New()
	if err := dp.Setup(ctx, topo.Env()); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("setup: %w", err), dp.Close())
	}
	defer func() { err = errors.Join(err, dp.Close()) }()
	st, err := plan.State(topo, ts.Services, endpoints)
	if err != nil {
		return nil, nil, err
	}
	apply, err := timedApply(ctx, plan, dp, st, "apply")
	if err != nil {
		return nil, nil, err
	}
	state := dp.Info()
	svc := Target(st)
	wl := plan.Scenario.Workload
	w, err := RunClientProcess(ctx, topo.Clients[0].NS, topo.ClientCgroup, ClientSpec{
		Targets:     dp.Targets(svc, plan.Port),
		Protocol:    string(plan.Port.Protocol),
		UDPMode:     wl.UDPMode,
		Concurrency: ts.Concurrency,
		Warmup:      time.Duration(wl.Warmup),
		Duration:    time.Duration(wl.Duration),
		Rate:        ts.Rate,
		Seed:        ts.Seed,
	})
	if err != nil {
		return nil, nil, err
	}
	tr := &results.Trial{Datapath: ts.Factory.Name, Concurrency: ts.Concurrency, Repetition: ts.Repetition,
		Services: len(st.Services), Endpoints: endpoints, ApplySeconds: apply.Seconds(),
		DatapathState: state, Workload: *w}
	if ts.Rate > 0 {
		tr.Model, tr.OfferedRate, tr.LoadFraction = results.ModelOpen, ts.Rate, ts.LoadFraction
	}
	if sc := plan.Scenario.Scale; sc != nil && sc.MeasureChange && len(st.Services[0].Endpoints) > 1 {
		// One endpoint of the first service goes away: the incremental
		// cost of a sync at this scale (kube-proxy's common case).
		st.Services[0].Endpoints = st.Services[0].Endpoints[1:]
		change, err := timedApply(ctx, plan, dp, st, "one-endpoint change")
		if err != nil {
			return tr, state, err
		}
		tr.ApplyChangeSeconds = change.Seconds()
	}
	return tr, state, nil
}

// openTrials is the number of open-loop trials the plan runs.
func (p *Plan) openTrials() int {
	w := p.Scenario.Workload
	if !w.OpenLoop() {
		return 0
	}
	return w.Repetitions * len(w.LoadFractions) * len(p.Factories)
}

// OpenSchedule is the open-loop phase's trials at capacity × each load
// fraction, interleaved and rotated as Schedule does. Every datapath of a
// repetition and fraction gets the same seed, so the same arrivals: they
// differ by their datapath only.
func (p *Plan) OpenSchedule(capacity float64, seed uint64) []TrialSpec {
	w := p.Scenario.Workload
	var out []TrialSpec
	round := 0
	n := len(p.Factories)
	for rep := range w.Repetitions {
		for fi, f := range w.LoadFractions {
			s := seed + uint64(rep*len(w.LoadFractions)+fi)
			for i := range n {
				out = append(out, TrialSpec{Factory: p.Factories[(i+round)%n], Services: 1, Endpoints: p.Scenario.EndpointsPerService(), Repetition: rep,
					Rate: f * capacity, LoadFraction: f, Seed: s})
			}
			round++
		}
	}
	return out
}

// openLoopCapacity is the rate the open loop's fractions apply to: the
// lowest median closed-loop QPS among the datapaths at the highest
// concurrency, so that every datapath is offered the same load and even
// the slowest one is below its capacity at fractions under 1.
func openLoopCapacity(trials []results.Trial, concurrency int) (rate float64, slowest string, err error) {
	qps := map[string][]float64{}
	var order []string
	for _, t := range trials {
		if t.Model != "" || t.Concurrency != concurrency {
			continue
		}
		if _, ok := qps[t.Datapath]; !ok {
			order = append(order, t.Datapath)
		}
		qps[t.Datapath] = append(qps[t.Datapath], t.Workload.QPS)
	}
	if len(order) == 0 {
		return 0, "", fmt.Errorf("open loop: no closed-loop trial at concurrency %d to take the capacity from", concurrency)
	}
	for _, dp := range order {
		m := results.NewStat(qps[dp]).Median
		if slowest == "" || m < rate {
			rate, slowest = m, dp
		}
	}
	if rate < 1 {
		return 0, "", fmt.Errorf("open loop: capacity: %s reached %.1f conn/s at concurrency %d, nothing to take fractions of", slowest, rate, concurrency)
	}
	return rate, slowest, nil
}

// runOpenLoopPhase runs the open-loop trials after the closed-loop ones
// of run and appends them to run.Trials.
func runOpenLoopPhase(ctx context.Context, prog *Progress, prefix string, plan *Plan, run *results.Run) error {
	w := plan.Scenario.Workload
	maxC := slicesMax(w.Concurrency)
	capacity, slowest, err := openLoopCapacity(run.Trials, maxC)
	if err != nil {
		return err
	}
	// Below 2^53 (exact in JSON readers that use doubles); never 0, which
	// would make each trial draw its own.
	seed := rand.Uint64()&(1<<52-1) | 1
	sched := plan.OpenSchedule(capacity, seed)
	prog.Logf("open loop: capacity %.0f conn/s (%s, median at c=%d); %d trials at %v of it", capacity, slowest, maxC, len(sched), w.LoadFractions)
	first := len(run.Trials)
	for i, ts := range sched {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := first + i
		prog.Start(fmt.Sprintf("%s open loop %.0f/s (%.0f%% of capacity) repetition %d/%d", ts.Factory.Name, ts.Rate, 100*ts.LoadFraction, ts.Repetition+1, w.Repetitions))
		tr, _, err := runTrial(ctx, fmt.Sprintf("%s-t%d", prefix, n), plan, ts)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted during trial %d; everything it made was removed: %w", n+1, ctx.Err())
			}
			return fmt.Errorf("trial %d (%s, open loop at %.0f/s): %w", n+1, ts.Factory.Name, ts.Rate, err)
		}
		tr.Order = n
		run.Trials = append(run.Trials, *tr)
		lw := tr.Workload
		prog.Done(fmt.Sprintf("%.0f of %.0f conn/s, p50 %.0f µs, p99 %.0f µs, %d errors (%d overload)", lw.QPS, lw.OfferedRate,
			lw.Latency.P50, lw.Latency.P99, sumErrors(lw.Errors), lw.Errors[ErrOverload]))
	}
	return nil
}

// generatorCeiling measures the client and server alone, over loopback.
func generatorCeiling(ctx context.Context, prefix string, plan *Plan, conc int) (_ *results.Trial, err error) {
	ns, err := nsutil.Create(prefix)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ns.Close()) }()
	cg, err := NewCgroup("/" + prefix)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, cg.Remove()) }()
	// Client TIME_WAIT to one address: same sysctls as a client pod.
	for k, v := range map[string]string{"net/ipv4/ip_local_port_range": "1024 65535", "net/ipv4/tcp_tw_reuse": "1"} {
		if err := ns.Sysctl(k, v); err != nil {
			return nil, err
		}
	}
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), plan.Port.TargetPort)
	srv, err := StartServer(ns, cg, ServerSpec{Listeners: []Listener{{Pod: "loopback", NetNS: ns.Name, Addr: target.String()}}})
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	wl := plan.Scenario.Workload
	w, err := RunClientProcess(ctx, ns, cg, ClientSpec{Targets: []netip.AddrPort{target}, Concurrency: conc,
		Protocol: string(plan.Port.Protocol), UDPMode: wl.UDPMode,
		Warmup: time.Duration(wl.Warmup), Duration: time.Duration(wl.Duration)})
	if err != nil {
		return nil, err
	}
	return &results.Trial{Datapath: "generator-loopback", Concurrency: conc, Workload: *w}, nil
}
