package results

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/perf/benchfmt"
)

// Go benchmark format (what `benchstat` reads): one line per trial,
//
//	BenchmarkSvc/dp=socketlb/conc=8/svcs=1/eps=12-2  <connections>  <ns> ns/conn  <qps> conn/s  <µs> p50-µs  <µs> p90-µs  <µs> p99-µs  <µs> cpu-µs/conn
//
// where "-2" is the machine's CPU count (benchstat's GOMAXPROCS slot), svcs
// and eps appear only for a scale point (non-zero), and cpu-µs/conn only
// when CPU was measured. A scale point's line adds apply-s (the whole set's
// Apply) and change-s (one endpoint's, when measured). An open-loop trial's name ends in
// /model=open/load=<fraction> (its conc is 0, conn/s is the achieved rate
// and latency runs from the intended start). A cost trial (the attribution
// probes attached, Model ModelCost) ends in /model=cost and is the one that
// carries datapath-nanosec/conn, the datapath's own kernel time per
// connection (lower is better); its other figures are slowed by the probes.
// The generator ceiling is a BenchmarkGenerator line.
// Repetitions are repeated lines, which is how benchstat sees a sample.
//
// Units, their order and which way is better come from the metric table
// (Metric.Unit, Metric.Better). A datapath measured at another site (a VM
// kernel) adds /site=<site> after dp=; ReadBenchFormat also reads the older
// dp=<datapath>@<site>.
const (
	benchSvc       = "Svc"
	benchGenerator = "Generator"
)

// WriteBenchFormat writes the run's trials in the Go benchmark format, for
// benchstat and for `svclab compare` (ReadBenchFormat reads it back).
//
// File configuration lines carry only what describes the machine kind
// (goos, goarch, cpu, kernel, go, sysctls, …), which is the same for two
// runs on one machine: benchstat puts results with different configuration
// in different tables, so per-run values (run id, git revision, host) go in
// '#' comment lines, which benchfmt readers skip.
func WriteBenchFormat(w io.Writer, run *Run) error {
	if run == nil {
		return fmt.Errorf("bench format: no run")
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "# svclab run %s (started %s)", run.ID, run.Started.Format("2006-01-02T15:04:05Z07:00"))
	if run.Env.GitRev != "" {
		fmt.Fprintf(&head, ", git %s", run.Env.GitRev)
	}
	if run.Env.Hostname != "" {
		fmt.Fprintf(&head, ", host %s", run.Env.Hostname)
	}
	head.WriteString("\n# compare runs with `svclab compare OLD NEW` or `benchstat OLD NEW`\n")
	for _, d := range run.Datapaths {
		switch {
		case d.Skipped != "":
			fmt.Fprintf(&head, "# datapath %s: skipped: %s\n", SiteName(d.Name, d.Site), oneLine(d.Skipped))
		case len(d.Info) > 0:
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(d.Info)) {
				kv = append(kv, k+"="+oneLine(d.Info[k]))
			}
			fmt.Fprintf(&head, "# datapath %s: %s\n", SiteName(d.Name, d.Site), strings.Join(kv, " "))
		}
	}
	if _, err := w.Write(head.Bytes()); err != nil {
		return fmt.Errorf("bench format: %w", err)
	}

	cfg := benchConfig(run.Env)
	bw := benchfmt.NewWriter(w)
	// Unit metadata tells benchstat which way is better, so it labels
	// changes the right way round.
	for _, m := range metricTable {
		if m.Unit == "" {
			continue
		}
		if err := bw.Write(&benchfmt.UnitMetadata{UnitMetadataKey: benchfmt.UnitMetadataKey{Unit: m.Unit, Key: "better"}, OrigUnit: m.Unit, Value: m.Better.String()}); err != nil {
			return fmt.Errorf("bench format: %w", err)
		}
	}
	write := func(name string, t Trial) error {
		for _, c := range []string{"/", " ", "\t", "\n"} {
			if strings.Contains(t.Datapath, c) {
				return fmt.Errorf("bench format: datapath name %q contains %q", t.Datapath, c)
			}
			if strings.Contains(t.Site, c) {
				return fmt.Errorf("bench format: site %q contains %q", t.Site, c)
			}
		}
		res := &benchfmt.Result{Config: cfg, Name: benchfmt.Name(name), Iters: int(t.Workload.Connections), Values: trialValues(t)}
		if err := bw.Write(res); err != nil {
			return fmt.Errorf("bench format: %w", err)
		}
		return nil
	}
	procs := ""
	if run.Env.CPUs > 0 {
		procs = "-" + strconv.Itoa(run.Env.CPUs)
	}
	for _, g := range run.GeneratorTrials() {
		if err := write(fmt.Sprintf("%s/conc=%d%s", benchGenerator, g.Concurrency, procs), g); err != nil {
			return err
		}
	}
	trials := slices.Clone(run.Trials)
	slices.SortStableFunc(trials, func(a, b Trial) int { return a.Order - b.Order })
	for _, t := range trials {
		name := fmt.Sprintf("%s/dp=%s", benchSvc, t.Datapath)
		if t.Site != "" {
			name += "/site=" + t.Site
		}
		name += fmt.Sprintf("/conc=%d", t.Concurrency)
		if t.Services > 0 {
			name += fmt.Sprintf("/svcs=%d", t.Services)
		}
		if t.Endpoints > 0 {
			name += fmt.Sprintf("/eps=%d", t.Endpoints)
		}
		switch t.Model {
		case "":
		case ModelCost:
			// A closed loop with the probes attached: its own
			// benchmark name, so benchstat never pools its slowed QPS
			// with the plain trials'.
			name += "/model=" + t.Model
		default:
			name += fmt.Sprintf("/model=%s/load=%s", t.Model, strconv.FormatFloat(t.LoadFraction, 'g', -1, 64))
		}
		if err := write(name+procs, t); err != nil {
			return err
		}
	}
	return nil
}

// benchConfig is the file configuration: the machine kind, stable across
// runs on one machine.
func benchConfig(env Env) []benchfmt.Config {
	var cfg []benchfmt.Config
	add := func(k, v string) {
		if v = oneLine(v); v != "" && validConfigKey(k) {
			cfg = append(cfg, benchfmt.Config{Key: k, Value: []byte(v), File: true})
		}
	}
	add("goos", runtime.GOOS)
	add("goarch", runtime.GOARCH)
	add("pkg", "svclab")
	add("cpu", env.CPUModel)
	if env.CPUs > 0 {
		add("cpus", strconv.Itoa(env.CPUs))
	}
	add("kernel", env.Kernel)
	add("go", env.GoVersion)
	for _, k := range slices.Sorted(maps.Keys(env.Sysctls)) {
		add("sysctl-"+k, env.Sysctls[k])
	}
	for _, k := range slices.Sorted(maps.Keys(env.Extra)) {
		add(strings.ToLower(k), env.Extra[k])
	}
	return cfg
}

// validConfigKey is benchfmt's rule for a configuration key: it starts with
// a lower-case letter and has no spaces or upper-case letters (nor a colon,
// which ends it).
func validConfigKey(k string) bool {
	for i, r := range k {
		if (i == 0 && !unicode.IsLower(r)) || unicode.IsSpace(r) || unicode.IsUpper(r) || r == ':' {
			return false
		}
	}
	return k != ""
}

// oneLine folds runs of white space (tabs in sysctl values, newlines in
// messages) into single spaces.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// trialValues are a trial's measurements in the metric table's order,
// rounded to what they resolve.
func trialValues(t Trial) []benchfmt.Value {
	var vs []benchfmt.Value
	for _, m := range metricTable {
		if m.Unit == "" || (m.BenchScaleOnly && t.Services == 0) {
			continue
		}
		if v, ok := m.Trial(t); ok {
			vs = append(vs, benchfmt.Value{Value: round(v, m.Digits), Unit: m.Unit})
		}
	}
	return vs
}

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

// ReadBenchFormat reads what WriteBenchFormat wrote back into a Run with
// the trials, the generator and the environment compare needs (latency
// percentiles other than p50/p90/p99, histograms, errors and datapath
// details are not in the format). Repetitions are numbered in line order
// per benchmark name. Lines of other benchmarks are ignored; a malformed
// svclab line is an error naming it.
func ReadBenchFormat(r io.Reader, fileName string) (*Run, error) {
	run := &Run{SchemaVersion: SchemaVersion, ID: fileName}
	br := benchfmt.NewReader(r, fileName)
	reps := map[string]int{}
	seen := map[site]bool{}
	order := 0
	for br.Scan() {
		rec, ok := br.Result().(*benchfmt.Result)
		if !ok {
			continue // unit metadata; syntax errors are other tools' lines
		}
		base, parts := rec.Name.Parts()
		if b := string(base); b != benchSvc && b != benchGenerator {
			continue
		}
		file, line := rec.Pos()
		t := Trial{Workload: Workload{Connections: int64(rec.Iters)}}
		for _, p := range parts {
			ps := string(p)
			if strings.HasPrefix(ps, "-") {
				if run.Env.CPUs == 0 {
					run.Env.CPUs, _ = strconv.Atoi(ps[1:])
				}
				continue
			}
			k, v, ok := strings.Cut(strings.TrimPrefix(ps, "/"), "=")
			if !ok {
				return nil, fmt.Errorf("%s:%d: benchmark name %s: part %q is not key=value", file, line, rec.Name, ps)
			}
			var err error
			switch k {
			case "dp":
				// Before Site, a datapath measured in a VM was
				// "ipvs@debian-6.12".
				t.Datapath, t.Site = SplitSite(v)
			case "site":
				t.Site = v
			case "conc":
				t.Concurrency, err = strconv.Atoi(v)
			case "svcs":
				t.Services, err = strconv.Atoi(v)
			case "eps":
				t.Endpoints, err = strconv.Atoi(v)
			case "model":
				t.Model = v
			case "load":
				if t.LoadFraction, err = strconv.ParseFloat(v, 64); err != nil {
					return nil, fmt.Errorf("%s:%d: benchmark name %s: load=%q is not a number", file, line, rec.Name, v)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("%s:%d: benchmark name %s: %s=%q is not an integer", file, line, rec.Name, k, v)
			}
		}
		if _, ok := rec.Value(unitQPS); !ok {
			return nil, fmt.Errorf("%s:%d: benchmark %s has no %s value", file, line, rec.Name, unitQPS)
		}
		for _, m := range metricTable {
			if m.Unit == "" || m.SetTrial == nil {
				continue
			}
			if v, ok := rec.Value(m.Unit); ok {
				m.SetTrial(&t, v)
			}
		}
		if t.Workload.QPS > 0 {
			t.Workload.DurationSeconds = float64(rec.Iters) / t.Workload.QPS
		}
		if string(base) == benchGenerator {
			t.Datapath = "generator-loopback"
			run.Generators = append(run.Generators, t)
			run.Generator = GeneratorCeiling(run.Generators)
			continue
		}
		if t.Datapath == "" {
			return nil, fmt.Errorf("%s:%d: benchmark name %s has no dp=", file, line, rec.Name)
		}
		name := string(rec.Name.Full())
		t.Repetition = reps[name]
		reps[name]++
		t.Order = order
		order++
		if k := (site{t.Datapath, t.Site}); !seen[k] {
			seen[k] = true
			run.Datapaths = append(run.Datapaths, DatapathInfo{Name: t.Datapath, Site: t.Site})
		}
		run.Trials = append(run.Trials, t)
		if run.Env.Kernel == "" {
			run.Env.Kernel = rec.GetConfig("kernel")
			run.Env.CPUModel = rec.GetConfig("cpu")
			run.Env.GoVersion = rec.GetConfig("go")
		}
	}
	if err := br.Err(); err != nil {
		return nil, fmt.Errorf("read bench format: %w", err)
	}
	if len(run.Trials) == 0 {
		return nil, fmt.Errorf("%s is not a svclab bench.txt (Go benchmark format): no svclab benchmark lines (BenchmarkSvc/dp=…)", fileName)
	}
	run.Summary = Summarize(run.Trials)
	return run, nil
}
