// Package bench runs `svclab bench`: it resolves a scenario into a plan,
// interleaves the datapaths' trials, measures each in a fresh world
// (harness/world) with the load generator (harness/loadgen), and writes the
// run's results, charts and benchstat lines (results).
package bench

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
	"strings"
	"time"

	"svclab/datapath"
	"svclab/harness/internal/progress"
	"svclab/harness/loadgen"
	"svclab/harness/runlock"
	"svclab/harness/topology"
	"svclab/harness/world"
	"svclab/results"
	"svclab/scenarios"
)

// Config is one `svclab bench`.
type Config struct {
	// Plan is the validated scenario (NewPlan): built once, before
	// anything is created, with every datapath probed once.
	Plan *Plan
	// OutputDir receives <run-id>/results.json and the charts.
	OutputDir string
	// Log receives progress; TTY says whether it is a terminal.
	Log io.Writer
	TTY bool
	// VMKernel, if set, also measures the datapaths this kernel cannot
	// run (Plan.Skipped) under that Debian kernel in QEMU, with direct
	// for the ratio (vm.SeriesNames lists the kernels).
	VMKernel string
}

// Run runs a whole benchmark and writes its results. Everything it creates
// is removed when it returns, whether it succeeds, fails or is cancelled.
func Run(ctx context.Context, cfg Config) (_ *results.Run, dir string, err error) {
	plan := cfg.Plan
	if len(plan.Factories) == 0 {
		return nil, "", errors.New("datapaths: none of the requested datapaths can run on this machine")
	}
	lock, err := runlock.Begin(cfg.Log)
	if err != nil {
		return nil, "", err
	}
	defer lock.Release()

	run := &results.Run{SchemaVersion: results.SchemaVersion, Started: time.Now().UTC(), Env: world.CollectEnv()}
	run.Env.Placement = envPlacement(plan.Placement)
	run.ID = lock.RunID(run.Started)
	run.Scenario, _ = json.Marshal(plan.Scenario)
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

	sched := plan.Schedule()
	w := plan.Scenario.Workload
	per := time.Duration(w.Warmup) + time.Duration(w.Duration) + 2*time.Second
	prog := progress.New(cfg.Log, cfg.TTY, len(sched)+plan.openTrials(), per)
	defer prog.Finish()
	trials := fmt.Sprintf("%d trials", len(sched))
	if n, c := plan.openTrials(), plan.costTrials(); n > 0 || c > 0 {
		trials = fmt.Sprintf("%d trials (%d closed-loop, %d of them cost trials; %d open-loop)", len(sched)+n, len(sched), c, n)
	}
	prog.Logf("svclab run %s: %s; kernel objects are named %s-*", run.ID, trials, lock.Prefix)
	for _, s := range plan.Skipped {
		prog.Logf("skipping %s: %s", s.Name, s.Skipped)
	}
	infos := map[string]map[string]string{}
	// unsupported names the datapaths whose Setup or Apply said they
	// cannot serve this scenario (datapath.ErrUnsupported: an IPv6
	// service on an IPv4-only datapath): skipped from then on, with the
	// reason, as a failed probe is.
	unsupported := map[string]string{}

	for i, ts := range sched {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		if ts.Generator {
			// The generator's own ceiling at this level: the same client
			// and server over loopback in one namespace (no veth, no
			// routing, no datapath), in the rotation like a datapath.
			prog.Start(fmt.Sprintf("generator ceiling (loopback) c=%d repetition %d/%d", ts.Concurrency, ts.Repetition+1, w.Repetitions))
			gen, err := generatorCeiling(ctx, fmt.Sprintf("%s-t%d", lock.Prefix, i), plan, ts.Concurrency)
			if err != nil && ctx.Err() != nil {
				return nil, "", fmt.Errorf("interrupted during trial %d; everything it made was removed: %w", i+1, ctx.Err())
			}
			if err != nil {
				return nil, "", fmt.Errorf("trial %d (generator ceiling, concurrency %d): %w", i+1, ts.Concurrency, err)
			}
			gen.Repetition, gen.Slot, gen.Order = ts.Repetition, ts.Slot, i
			run.Generators = append(run.Generators, *gen)
			prog.Done(fmt.Sprintf("%.0f conn/s, p90 %.0f µs", gen.Workload.QPS, gen.Workload.Latency.P90))
			continue
		}
		if _, ok := unsupported[ts.Factory.Name]; ok {
			prog.Skip()
			continue
		}
		what := fmt.Sprintf("%s c=%d", ts.Factory.Name, ts.Concurrency)
		if ts.Cost {
			what += " cost"
		}
		if plan.Scenario.Scale != nil {
			what += fmt.Sprintf(" services=%d endpoints=%d", ts.Services, ts.Endpoints)
			if l, ok := limitedAt(run.ScaleLimits, ts); ok {
				prog.Logf("%s repetition %d/%d: not tried (limited at %d services × %d endpoints)", what, ts.Repetition+1, w.Repetitions, l.Services, l.Endpoints)
				prog.Skip()
				continue
			}
		}
		run.ConcurrentRuns = noteConcurrentRuns(prog, lock.ID, run.ConcurrentRuns)
		prog.Start(fmt.Sprintf("%s repetition %d/%d", what, ts.Repetition+1, w.Repetitions))
		tr, info, err := runTrial(ctx, fmt.Sprintf("%s-t%d", lock.Prefix, i), plan, ts)
		var unsup *unsupportedError
		if errors.As(err, &unsup) && ctx.Err() == nil {
			unsupported[ts.Factory.Name] = unsup.Error()
			prog.Done("not supported")
			prog.Logf("skipping %s: %s", ts.Factory.Name, unsup)
			continue
		}
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
		done := fmt.Sprintf("%.0f conn/s, p90 %.0f µs, %d errors, %d SYN retransmits", tr.Workload.QPS, tr.Workload.Latency.P90, loadgen.SumErrors(tr.Workload.Errors), tr.Workload.SynRetrans)
		if c := tr.Cost; c != nil {
			done += fmt.Sprintf("; datapath %.0f ns/conn (probe floor %.0f subtracted)", c.NsPerConn, c.FloorNS)
		}
		if on, off, ok := pairedQPS(run.Trials, len(run.Trials)-1); ok && off > 0 {
			done += fmt.Sprintf("; with probes %.2f× the plain trial's QPS", on/off)
		}
		prog.Done(done)
	}
	if w.OpenLoop() {
		if err := runOpenLoopPhase(ctx, prog, lock.Prefix, plan, run, unsupported); err != nil {
			return nil, "", err
		}
	}
	prog.Finish()

	for _, f := range plan.Factories {
		info := results.DatapathInfo{Name: f.Name, Description: f.Description, Info: infos[f.Name]}
		if reason, ok := unsupported[f.Name]; ok {
			info.Skipped = reason
		}
		run.Datapaths = append(run.Datapaths, info)
	}
	run.Datapaths = append(run.Datapaths, plan.Skipped...)
	run.Generator = results.GeneratorCeiling(run.Generators)
	run.Summary = results.Summarize(run.Trials)
	var missing error
	if cfg.VMKernel != "" {
		// The guest writes its results into the run directory.
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, "", fmt.Errorf("output: %w", err)
		}
		// A VM phase that fails twice costs the VM's rows, not the host's:
		// the run is written, says what is missing, and fails.
		if missing = runVMPhase(ctx, cfg.VMKernel, plan, run, dir, cfg.Log); missing != nil {
			if ctx.Err() != nil {
				return nil, "", fmt.Errorf("interrupted during the %s VM phase: %w", cfg.VMKernel, missing)
			}
			fmt.Fprintf(cfg.Log, "\nerror: %v\n", missing)
		}
	}
	run.Finished = time.Now().UTC()
	if err := WriteRun(dir, run); err != nil {
		return nil, "", err
	}
	if bad := withoutValidTrial(run); len(bad) > 0 {
		missing = errors.Join(missing, fmt.Errorf("%w: %s (see the table's notes)", ErrNoValidTrial, strings.Join(bad, ", ")))
	}
	return run, dir, missing
}

// pairedQPS pairs trial i with the trial of the same datapath, site,
// point, concurrency and repetition on the other side of the probes (a
// cost trial with its plain trial, or the reverse), if that one has run:
// the QPS with the probes and without them, the probes' paired overhead.
func pairedQPS(trials []results.Trial, i int) (on, off float64, ok bool) {
	t := trials[i]
	isCost := t.Model == results.ModelCost
	if !isCost && t.Model != "" {
		return 0, 0, false
	}
	for j, u := range trials {
		if j == i || u.Datapath != t.Datapath || u.Site != t.Site || u.Services != t.Services || u.Endpoints != t.Endpoints ||
			u.Concurrency != t.Concurrency || u.Repetition != t.Repetition {
			continue
		}
		switch {
		case isCost && u.Model == "":
			return t.Workload.QPS, u.Workload.QPS, true
		case !isCost && u.Model == results.ModelCost:
			return u.Workload.QPS, t.Workload.QPS, true
		}
	}
	return 0, 0, false
}

// ErrNoValidTrial is returned, with the run written, when a measured
// datapath has no valid trial at some point of the run: its row has no
// figure a reader could use.
var ErrNoValidTrial = errors.New("no valid trial")

// withoutValidTrial names the datapaths (and points) whose trials were all
// invalid.
func withoutValidTrial(run *results.Run) []string {
	var out []string
	for _, s := range run.Summary {
		if s.Repetitions == 0 && s.Invalid > 0 {
			out = append(out, fmt.Sprintf("%s at concurrency %d", results.SiteName(s.Datapath, s.Site), s.Concurrency))
		}
	}
	return out
}

// WriteRun writes a run's results.json, its charts (with the scale
// sweep's line charts when it has one), report.html and its Go benchmark
// format lines (bench.txt, for benchstat) into dir.
func WriteRun(dir string, run *results.Run) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	if err := run.Write(filepath.Join(dir, "results.json")); err != nil {
		return err
	}
	if _, err := results.WriteCharts(dir, run); err != nil {
		return err
	}
	if _, err := results.WriteScaleCharts(dir, run); err != nil {
		return err
	}
	if err := results.WriteReportFile(filepath.Join(dir, "report.html"), results.ReportInput{Runs: []*results.Run{run}}); err != nil {
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

// unsupportedError is a datapath's Setup or Apply refusing the scenario
// with datapath.ErrUnsupported (an IPv4-only datapath given an IPv6
// service): the datapath's limitation, which the run records as a skip
// with this reason, not a failure of the run.
type unsupportedError struct{ err error }

func (e *unsupportedError) Error() string { return e.err.Error() }
func (e *unsupportedError) Unwrap() error { return e.err }

// asUnsupported wraps err in an *unsupportedError when it says the
// datapath cannot serve the scenario.
func asUnsupported(err error) error {
	if errors.Is(err, datapath.ErrUnsupported) {
		return &unsupportedError{err}
	}
	return err
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
	w, err := world.Build(ctx, world.Spec{Topology: tc, Port: plan.Port.TargetPort, Datapath: &ts.Factory, Placement: plan.Placement})
	if err != nil {
		if setup := (*world.SetupError)(nil); errors.As(err, &setup) {
			// Only the datapath's own refusal is a skip; anything else
			// failing to build is the harness's error.
			return nil, nil, asUnsupported(err)
		}
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, w.Close()) }()
	topo, dp := w.Topology, w.Datapath
	st, err := plan.State(topo, ts.Services, endpoints)
	if err != nil {
		return nil, nil, err
	}
	apply, err := timedApply(ctx, plan, dp, st, "apply")
	if err != nil {
		// Before a scale limit: a datapath that cannot serve the service
		// at all is not limited by its size.
		return nil, nil, asUnsupported(err)
	}
	state := dp.Info()
	svc := Target(st)
	wl := plan.Scenario.Workload
	// The generator runs where the scenario's client is: a client pod,
	// or the node's own namespace as a hostNetwork pod.
	client := topo.Clients[0]
	if wl.Client == scenarios.ClientHost {
		client = topo.Host
	}
	spec := loadgen.ClientSpec{
		Targets:     dp.Targets(svc, plan.Port),
		Protocol:    string(plan.Port.Protocol),
		UDPMode:     wl.UDPMode,
		Concurrency: ts.Concurrency,
		Warmup:      time.Duration(wl.Warmup),
		Duration:    time.Duration(wl.Duration),
		Rate:        ts.Rate,
		Seed:        ts.Seed,
		CPUCgroup:   topo.CgroupDir(),
		CPURoles:    topo.CPURoles(),
	}
	var wk *results.Workload
	var dpCost *results.Cost
	if ts.Cost {
		// The probes are attached before the client starts and removed
		// after it ends; what they count is read at the window's edges,
		// which the client announces.
		spec.Duration = wl.AttributionWindow()
		cost, err := startCost(topo, dp, ts.Factory.InNetfilter)
		if err != nil {
			return nil, nil, fmt.Errorf("cost attribution: %w", err)
		}
		defer func() { err = errors.Join(err, cost.close()) }()
		if wk, err = loadgen.RunClientProcessEdges(ctx, client.NS, topo.PodCgroup(client), spec, cost.edge); err != nil {
			return nil, nil, err
		}
		if dpCost, err = cost.stop(wk); err != nil {
			return nil, nil, fmt.Errorf("cost attribution: %w", err)
		}
	} else if wk, err = loadgen.RunClientProcess(ctx, client.NS, topo.PodCgroup(client), spec); err != nil {
		return nil, nil, err
	}
	state = afterTraffic(state, dp.Info())
	tr := &results.Trial{Datapath: ts.Factory.Name, Concurrency: ts.Concurrency, Repetition: ts.Repetition, Slot: ts.Slot,
		Services: len(st.Services), Endpoints: endpoints, ApplySeconds: apply.Seconds(),
		DatapathState: state, Workload: *wk, Cost: dpCost}
	switch {
	case ts.Rate > 0:
		tr.Model, tr.OfferedRate, tr.LoadFraction = results.ModelOpen, ts.Rate, ts.LoadFraction
	case ts.Cost:
		tr.Model = results.ModelCost
	}
	if share, ok := tr.CPUShare(); ok {
		// Stored, so bench.txt carries it and a reader needs no CPU
		// figures to compare it.
		tr.Cost.CPUShare = share
	}
	tr.Invalid = invalidReason(wk, wl.ErrorTolerance())
	splitByNode(tr, topo, client)
	// A cost trial's Apply is the plain trial's: measured once.
	if sc := plan.Scenario.Scale; sc != nil && sc.MeasureChange && !ts.Cost && len(st.Services[0].Endpoints) > 1 {
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
func runOpenLoopPhase(ctx context.Context, prog *progress.Progress, prefix string, plan *Plan, run *results.Run, unsupported map[string]string) error {
	w := plan.Scenario.Workload
	maxC := slices.Max(w.Concurrency)
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
		if _, ok := unsupported[ts.Factory.Name]; ok {
			prog.Skip()
			continue
		}
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
			lw.Latency.P50, lw.Latency.P99, loadgen.SumErrors(lw.Errors), lw.Errors[loadgen.ErrOverload]))
	}
	return nil
}

// generatorCeiling measures the client and server alone, over loopback.
func generatorCeiling(ctx context.Context, prefix string, plan *Plan, conc int) (_ *results.Trial, err error) {
	spec := world.Spec{Topology: topology.Config{Prefix: prefix}, Loopback: true, Port: plan.Port.TargetPort, Placement: plan.Placement}
	addr := netip.MustParseAddr("127.0.0.1")
	if plan.IPv6() {
		// The ceiling of the family measured: the IPv6 stack's own cost
		// is part of every IPv6 datapath's figure.
		addr = netip.IPv6Loopback()
		spec.Servers = func(t *topology.Topology) []loadgen.ServerSpec {
			return []loadgen.ServerSpec{{Listeners: []loadgen.Listener{{Pod: t.Backends[0].Name, NetNS: t.Node.Name,
				Addr: netip.AddrPortFrom(addr, plan.Port.TargetPort).String()}}}}
		}
	}
	w, err := world.Build(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, w.Close()) }()
	target := netip.AddrPortFrom(addr, plan.Port.TargetPort)
	wl := plan.Scenario.Workload
	wk, err := loadgen.RunClientProcess(ctx, w.Topology.Node, w.Topology.ClientCgroup.Path, loadgen.ClientSpec{Targets: []netip.AddrPort{target}, Concurrency: conc,
		Protocol: string(plan.Port.Protocol), UDPMode: wl.UDPMode,
		Warmup: time.Duration(wl.Warmup), Duration: time.Duration(wl.Duration), CPUCgroup: w.Topology.CgroupDir()})
	if err != nil {
		return nil, err
	}
	return &results.Trial{Datapath: "generator-loopback", Concurrency: conc, Workload: *wk}, nil
}

// invalidReason says why a trial's figures cannot stand for its datapath,
// or "" when they can: no completed connection (every percentile would be
// 0, which reads as "fast"), or more failed connections than the scenario
// tolerates. Overload (the open loop's own in-flight cap) is not the
// datapath's failure and does not count.
func invalidReason(w *results.Workload, tolerance float64) string {
	if w.Connections == 0 {
		return fmt.Sprintf("no completed connection (%d failed)", loadgen.SumErrors(w.Errors))
	}
	failed := loadgen.SumErrors(w.Errors) - w.Errors[loadgen.ErrOverload]
	if f := float64(failed) / float64(failed+w.Connections); f > tolerance {
		return fmt.Sprintf("%d of %d connections failed (%.1f%%, tolerance %.1f%%)", failed, failed+w.Connections, 100*f, 100*tolerance)
	}
	return ""
}

// afterTraffic merges what a datapath reports after the traffic into what
// it reported after Apply: the programmed state (state_objects,
// state_bytes) stays as Apply left it, everything else (the userspace
// proxy's CPU time and RSS, counters) is read after the traffic, which is
// when it says something.
func afterTraffic(applied, after map[string]string) map[string]string {
	for k, v := range after {
		switch k {
		case datapath.InfoStateObjects, datapath.InfoStateBytes, "state_bytes_unavailable":
			continue
		}
		if applied == nil {
			applied = map[string]string{}
		}
		applied[k] = v
	}
	return applied
}

// envPlacement records a run's CPU placement for results.json.
func envPlacement(p topology.Placement) *results.Placement {
	e := &results.Placement{Mode: cmp.Or(p.Mode, scenarios.PlacementNone)}
	if e.Mode == scenarios.PlacementSplit {
		e.ClientCPUs, e.ServerCPUs = topology.FormatCPUs(p.Clients), topology.FormatCPUs(p.Servers)
		e.Mechanism = topology.PlacementMechanism
	}
	return e
}
