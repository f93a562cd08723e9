// Command svclab measures what a Kubernetes Service datapath costs and
// whether it behaves like a Service should.
//
//	svclab bench [flags]          run a scenario against datapaths, write results and charts
//	svclab conform [flags]        check Service behaviours against datapaths
//	svclab compare OLD NEW        compare two runs; exit 1 on a significant regression
//	svclab report RUN [RUN...]    one self-contained report.html from runs of one scenario
//	svclab datapaths              list datapaths and whether this machine can run them
//	svclab up [flags]             bring a lab up; return once it is ready (kept until svclab down)
//	svclab exec POD -- CMD        run CMD in a lab pod's network namespace and cgroup
//	svclab status                 list the labs that are up
//	svclab down [ID]              stop a lab and remove everything it made
//	svclab cleanup                remove what killed svclab runs left behind
//	svclab vm [flags] -- COMMAND  run a svclab command under another kernel in QEMU
//
// The work is in harness/ (see harness/README.md); this package parses
// flags and prints.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"svclab/datapath"
	_ "svclab/datapath/all"
	"svclab/harness/bench"
	"svclab/harness/lab"
	"svclab/harness/runlock"
	"svclab/internal/child"
	"svclab/results"
	"svclab/scenarios"
	"svclab/vm"
)

const usage = `svclab: what does a Kubernetes Service datapath cost, and does it behave like a Service?

Usage:
  svclab bench [flags]   run a scenario against datapaths; writes results/<run-id>/{results.json,report.html,qps.png,p90.png,cost.png}
  svclab datapaths       list the datapaths and whether this machine can run them
  svclab cleanup         remove what killed svclab runs left: network namespaces, cgroups, lock files, VM temp dirs
  svclab conform [flags] check Service behaviours against datapaths; writes results/<run-id>/{conformance.json,conformance.md,report.html}
  svclab up [flags]      bring a lab up (topology, backends, datapath); returns once it is ready, kept until 'svclab down' (--foreground: until Ctrl-C)
  svclab exec POD -- CMD run CMD in a lab pod's network namespace and cgroup, e.g. exec client-0 -- curl -s http://10.96.0.10/
  svclab status          list the labs that are up, and dead ones (killed) with what they left
  svclab down [ID]       stop a lab and remove everything it made (or what a killed lab left)
  svclab report RUN...   one self-contained report.html (charts, tables, findings) from runs of one scenario
  svclab compare OLD NEW compare two runs with CIs and p-values; exit 1 on a significant regression (see ci/)
  svclab vm [flags] -- COMMAND   run a svclab command under another kernel (e.g. --kernel debian-6.1) in QEMU

Run 'svclab bench -h' for the bench flags. svclab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF).

` + exitCodesUsage

func main() {
	child.Main(os.Args[1:])
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitBadInput
	}
	var err error
	switch args[0] {
	case "bench":
		err = cmdBench(args[1:], stdout, stderr)
	case "datapaths":
		err = cmdDatapaths(stdout)
	case "cleanup":
		err = cmdCleanup(stdout)
	case "conform":
		err = cmdConform(args[1:], stdout, stderr)
	case "up":
		err = cmdUp(args[1:], stdout, stderr)
	case "exec":
		return cmdExec(args[1:], stderr)
	case "status":
		err = cmdStatus(stdout)
	case "down":
		err = cmdDown(args[1:], stdout, stderr)
	case "compare":
		return cmdCompare(args[1:], stdout, stderr)
	case "report":
		err = cmdReport(args[1:], stdout, stderr)
	case "vm":
		err = cmdVM(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "svclab: unknown command %q\n\n%s", args[0], usage)
		return exitBadInput
	}
	if err != nil && !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errStrict) {
		fmt.Fprintf(stderr, "svclab %s: %v\n", args[0], err)
	}
	return exitCode(err)
}

// benchFlags are the bench command line; set flags override the scenario.
type benchFlags struct {
	scenario    string
	output      string
	datapaths   string
	backends    int
	nodes       int
	concurrency string
	duration    time.Duration
	warmup      time.Duration
	repetitions int
	vmKernel    string
	quick       bool
	attribution bool
	placement   string
	services    string
	epSweep     string
	applyTO     time.Duration
}

func parseBenchFlags(args []string, stderr io.Writer) (*benchFlags, *scenarios.Scenario, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f benchFlags
	fs.StringVar(&f.scenario, "scenario", "default", "built-in scenario name ("+strings.Join(scenarios.Names(), ", ")+") or a scenario file")
	fs.StringVar(&f.output, "output", "results", "directory that receives <run-id>/")
	fs.StringVar(&f.datapaths, "datapaths", "", "comma-separated datapaths to compare (default: the scenario's; see 'svclab datapaths')")
	fs.IntVar(&f.backends, "backends", 0, "number of backend pods (default: the scenario's, 12)")
	fs.IntVar(&f.nodes, "nodes", 0, "number of nodes, 1 to 8 (default: the scenario's, 1): backends spread over them, clients on the first, one datapath instance per node")
	fs.StringVar(&f.concurrency, "concurrency", "", "comma-separated concurrency levels, e.g. 1,8,32")
	fs.DurationVar(&f.duration, "duration", 0, "measured time per trial, e.g. 5s")
	fs.DurationVar(&f.warmup, "warmup", -1, "warm-up per trial before measuring, e.g. 1s")
	fs.IntVar(&f.repetitions, "repetitions", 0, "repetitions of every datapath × concurrency")
	fs.BoolVar(&f.attribution, "attribution", true, "cost trials beside the plain ones: each datapath's own kernel time per connection (netfilter probes, BPF program run times, proxy CPU), the DP ns/C column; =false runs none")
	fs.StringVar(&f.placement, "placement", "", "CPU placement: none (the scheduler's) or split (load generator and backends on separate CPUs)")
	fs.BoolVar(&f.quick, "quick", false, "a smaller, shorter variant of the scenario for CI (its quick block; else 1 repetition of 1 s trials); other flags still apply")
	fs.StringVar(&f.services, "services", "", "scale scenarios: comma-separated services counts of the sweep, e.g. 1,100,1000")
	fs.StringVar(&f.epSweep, "endpoint-sweep", "", "scale scenarios: comma-separated endpoint counts of the one-service sweep, e.g. 12,100,1000")
	fs.DurationVar(&f.applyTO, "apply-timeout", 0, "scale scenarios: bound on one Apply; a datapath that exceeds it is not tried at larger points")
	fs.StringVar(&f.vmKernel, "vm-kernel", "", "also measure the datapaths this kernel cannot run (e.g. ipvs) under this Debian kernel in QEMU (debian-6.1, debian-6.12), with direct for the ratio")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	sc, err := scenarios.Load(f.scenario)
	if err != nil {
		return nil, nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if f.quick {
		sc.ApplyQuick()
	}
	for _, name := range []string{"services", "endpoint-sweep", "apply-timeout"} {
		if set[name] && sc.Scale == nil {
			return nil, nil, fmt.Errorf("--%s: scenario %s has no scale sweep (try --scenario scale)", name, sc.Name)
		}
	}
	if set["services"] {
		if sc.Scale.Services, err = intList("services", f.services); err != nil {
			return nil, nil, err
		}
	}
	if set["endpoint-sweep"] {
		if sc.Scale.EndpointSweep, err = intList("endpoint-sweep", f.epSweep); err != nil {
			return nil, nil, err
		}
	}
	if set["apply-timeout"] {
		sc.Scale.ApplyTimeout = scenarios.Duration(f.applyTO)
	}
	if set["datapaths"] {
		sc.Datapaths = splitList(f.datapaths)
	}
	if set["backends"] {
		sc.Topology.Backends = f.backends
	}
	if set["nodes"] {
		if f.nodes == 0 {
			// 0 in a scenario means "one node"; on the command line it
			// is a mistake, named as the scenario check names the others.
			return nil, nil, fmt.Errorf("invalid settings (flags override the scenario's fields):\ntopology.nodes: 0 is out of range [1, %d]", scenarios.MaxNodes)
		}
		sc.Topology.Nodes = f.nodes
	}
	if set["concurrency"] {
		if sc.Workload.Concurrency, err = intList("concurrency", f.concurrency); err != nil {
			return nil, nil, err
		}
	}
	if set["duration"] {
		sc.Workload.Duration = scenarios.Duration(f.duration)
	}
	if set["warmup"] {
		sc.Workload.Warmup = scenarios.Duration(f.warmup)
	}
	if set["repetitions"] {
		sc.Workload.Repetitions = f.repetitions
	}
	if set["attribution"] {
		sc.Workload.Attribution = &f.attribution
	}
	if set["placement"] {
		sc.Workload.Placement = f.placement
	}
	if err := sc.Validate(); err != nil {
		return nil, nil, fmt.Errorf("invalid settings (flags override the scenario's fields):\n%w", err)
	}
	if set["vm-kernel"] {
		// Checked now, not after the host bench has run for minutes.
		if _, ok := vm.LookupSeries(f.vmKernel); !ok {
			return nil, nil, fmt.Errorf("--vm-kernel: %q is not a kernel svclab can boot (known: %s)", f.vmKernel, strings.Join(vm.SeriesNames(), ", "))
		}
	}
	return &f, sc, nil
}

// vmKernelNote says that --vm-kernel has nothing to do when the plan
// skipped no datapath (this kernel runs every one asked for).
func vmKernelNote(kernel string, plan *bench.Plan) string {
	if kernel == "" || len(plan.Skipped) > 0 {
		return ""
	}
	return fmt.Sprintf("note: --vm-kernel %s is not used: this kernel runs every requested datapath (%s)", kernel, strings.Join(plan.Scenario.Datapaths, ", "))
}

// intList parses the comma-separated integers of flag name.
func intList(name, s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("--%s: %q is not an integer", name, p)
		}
		out = append(out, n)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func cmdBench(args []string, stdout, stderr io.Writer) error {
	f, sc, err := parseBenchFlags(args, stderr)
	if err != nil {
		return badInput(err)
	}
	// Validate the plan (names, probes, CIDRs) before anything is created.
	plan, err := bench.NewPlan(sc)
	if err != nil {
		return badInput(err)
	}
	if note := vmKernelNote(f.vmKernel, plan); note != "" {
		fmt.Fprintln(stderr, note)
	}
	if err := requireRoot(); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	tty := isTerminal(stderr)
	run, dir, err := bench.Run(ctx, bench.Config{Plan: plan, OutputDir: f.output, Log: stderr, TTY: tty, VMKernel: f.vmKernel})
	// A run in which a datapath has no valid trial, or a requested one
	// could not be measured (its VM phase failed twice), is written and
	// printed, then fails.
	written := errors.Is(err, bench.ErrNoValidTrial) || errors.Is(err, bench.ErrMissingDatapath)
	if err != nil && !written {
		return err
	}
	fmt.Fprintln(stdout)
	if err := results.WriteTable(stdout, run); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", filepath.Join(dir, "results.json"))
	charts, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	for _, c := range charts {
		fmt.Fprintf(stdout, "      %s\n", c)
	}
	if written {
		return err
	}
	return nil
}

func cmdDatapaths(stdout io.Writer) error {
	for _, n := range datapath.Names() {
		f, _ := datapath.Lookup(n)
		status := "available"
		if f.Probe != nil {
			if err := f.Probe(); err != nil {
				status = "unavailable: " + err.Error()
			}
		}
		fmt.Fprintf(stdout, "%-16s %s\n%-16s %s\n", n, f.Description, "", status)
	}
	return nil
}

func cmdCleanup(stdout io.Writer) error {
	removed, err := runlock.CleanupStale()
	// The VM's temporary directories, and the state files of dead labs
	// whose objects are now gone.
	vmRemoved, vmErr := vm.CleanupStale()
	removed, err = append(removed, vmRemoved...), errors.Join(err, vmErr)
	lab.Prune()
	for _, r := range removed {
		fmt.Fprintln(stdout, "removed", r)
	}
	if len(removed) == 0 && err == nil {
		fmt.Fprintln(stdout, "nothing to clean up")
	}
	return err
}
