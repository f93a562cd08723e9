package results

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// This file is the one place a metric is defined. Each entry says once
// what the metric is called where (thresholds file, bench.txt unit, text
// tables, charts), which direction is better, how to read it from a Trial
// and where Summarize stores it in a Summary; Summarize, Compare, the
// thresholds, WriteBenchFormat/ReadBenchFormat, the scale block of the text
// table and the scale charts all iterate it. golang.org/x/perf's
// benchfmt/units.go is the model: a unit declares once whether higher or
// lower is better, and everything else reads that.
//
// Adding a metric is one entry in metricTable plus the code that measures
// it (a Trial field the generator or runner fills in, and, for a summarised
// one, a Summary field for its Stat so results.json carries it).

// Better says which direction of a metric is an improvement.
type Better int

const (
	// LowerIsBetter: a rise is the regression (latency, CPU, apply time).
	LowerIsBetter Better = iota
	// HigherIsBetter: a drop is the regression (connections per second).
	HigherIsBetter
)

// String is the benchfmt "better" unit metadata value: "higher" or "lower".
func (b Better) String() string {
	if b == HigherIsBetter {
		return "higher"
	}
	return "lower"
}

// Metric is one measured figure and everything the package needs to know
// about it. Only Key, Label, Better and Trial are required; a nil or zero
// field leaves the metric out of what it configures.
type Metric struct {
	// Key names the metric in a thresholds file and in compare's rows
	// ("qps", "p90", "cpu_per_conn").
	Key string
	// Label names it in prose (compare's notes): "cpu µs/conn".
	Label string
	// Better is the direction of an improvement.
	Better Better
	// Trial reads the figure from one trial; ok is false when the trial
	// did not measure it (no CPU accounting, no one-endpoint change), and
	// such a trial is left out of the metric's statistics.
	Trial func(Trial) (v float64, ok bool)

	// Unit is the Go benchmark format unit of the figure in bench.txt
	// ("conn/s", "p90-µs"); "" keeps it out of bench.txt.
	Unit string
	// Digits rounds the bench.txt value to what the figure resolves.
	Digits int
	// BenchScaleOnly writes the figure only for a trial at a scale point
	// (Services > 0): outside a sweep an apply time says nothing.
	BenchScaleOnly bool
	// SetTrial stores a value read back from bench.txt in a trial
	// (ReadBenchFormat); nil for a figure derived from others.
	SetTrial func(t *Trial, v float64)

	// Stat points at the Summary field holding the figure over
	// repetitions; nil when it is not summarised. Summarize leaves the
	// field zero (and out of results.json) when no trial measured it.
	Stat func(*Summary) *Stat
	// CI asks Summarize for the 95% confidence interval of the median.
	CI bool
	// Ratio points at the Summary field holding the median's ratio to
	// direct's at the same site and point; nil when there is none.
	Ratio func(*Summary) *float64

	// CostTrials: the figure is measured by the cost trials (Model
	// ModelCost) alone. Summarize and compare read it from the cost
	// trials of the same datapath, site, point and concurrency, and no
	// other metric reads those trials: the probes slow them down. A point
	// without cost trials (a run from before they existed) reads it from
	// its plain trials, which carried Cost then.
	CostTrials bool
	// Absolute: compare gates the metric's absolute figures whatever the
	// thresholds' gate mode, and forms no ratio to direct, for a figure
	// whose direct value is no baseline (the datapath's own ns/conn is ≈ 0
	// for direct once the probe floor is subtracted: a ratio to it is
	// noise). Direct's own figure is then reported, not gated.
	Absolute bool

	// Threshold is the default tolerated change in the bad direction
	// (a fraction) of a metric `svclab compare` tests; 0 means compare
	// does not test it and a thresholds file cannot name it.
	Threshold float64

	// Column heads the metric's column in the text table's scale block
	// and Format prints a median there; a metric with a Scale chart needs
	// both.
	Column string
	Format func(float64) string
	// Scale, when set, charts the metric along scale sweeps and lists it
	// in the scale block of the text table.
	Scale *ScaleChart

	// Noise, when set, puts the metric's coefficient of variation over
	// repetitions in the table's noise block (writeNoise), and for a
	// metric with a Ratio that of its ratio to direct paired per round.
	Noise bool
}

// Compared reports whether `svclab compare` tests the metric.
func (m Metric) Compared() bool { return m.Threshold > 0 }

// ScaleChart says how a metric is drawn along a scale sweep.
type ScaleChart struct {
	// Name is the metric's part of the file name:
	// scale-<axis>-<Name>.png.
	Name   string
	Title  string
	YLabel string
	YAxis  ScaleYAxis
	// Programmed metrics are about the state a datapath programs, which
	// direct (no translation) does not have: it is left out of them.
	Programmed bool
}

// ScaleYAxis is how a scale chart's y axis is drawn.
type ScaleYAxis int

const (
	// YLinear starts at 0, so heights compare as ratios.
	YLinear ScaleYAxis = iota
	// YLogIfWide is logarithmic when the values span more than two
	// decades (apply times from a direct datapath's milliseconds to
	// iptables' minutes), linear from 0 otherwise.
	YLogIfWide
	// YLog is always logarithmic (state sizes grow with the product of
	// services and endpoints).
	YLog
)

// Benchmark format units of the metrics, named because ReadBenchFormat
// requires the QPS and tests name them.
const (
	unitNsPerConn  = "ns/conn"
	unitQPS        = "conn/s"
	unitP50        = "p50-µs"
	unitP90        = "p90-µs"
	unitP99        = "p99-µs"
	unitCPUPerConn = "cpu-µs/conn"
	unitApply      = "apply-s"
	unitChange     = "change-s"
	// Not "…ns/conn": benchfmt tidies any "ns" unit to seconds, and the
	// figure would not be read back under its own name.
	unitDatapathNs = "datapath-nanosec/conn"
	// A fraction of the trial's CPU, not a percentage: benchfmt reads
	// "%" as nothing special, and a fraction needs no unit conversion.
	unitDatapathShare = "datapath-cpu-share"
)

// metricTable is every metric, in the order compare's rows, bench.txt's
// values, the scale block's columns and the scale charts list them.
var metricTable = []Metric{{
	// Go's ns/op: the measured window per connection, what benchstat
	// shows first. Derived from the window and the count, so it is not
	// read back nor summarised.
	Key: "ns_per_conn", Label: "ns/conn", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) {
		w := t.Workload
		return w.DurationSeconds * 1e9 / float64(w.Connections), w.Connections > 0 && w.DurationSeconds > 0
	},
	Unit: unitNsPerConn, Digits: 1,
}, {
	Key: "qps", Label: "qps conn/s", Better: HigherIsBetter,
	Trial: func(t Trial) (float64, bool) { return t.Workload.QPS, true },
	Unit:  unitQPS, Digits: 1,
	SetTrial: func(t *Trial, v float64) { t.Workload.QPS = v },
	Stat:     func(s *Summary) *Stat { return &s.QPS }, CI: true,
	Ratio:     func(s *Summary) *float64 { return &s.QPSRatioToDirect },
	Threshold: 0.10,
	Column:    "QPS", Format: fmtQPS,
	Scale: &ScaleChart{Name: "qps", Title: "connections/s", YLabel: "connections/s"},
	Noise: true,
}, {
	Key: "p50", Label: "p50 µs", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) { return trialLatency(t).P50, true },
	Unit:  unitP50, Digits: 2,
	SetTrial:  func(t *Trial, v float64) { t.Workload.Latency.P50 = v },
	Stat:      func(s *Summary) *Stat { return &s.P50 },
	Threshold: 0.15,
	Column:    "P50 µs", Format: fmtMicros,
	Scale: &ScaleChart{Name: "p50", Title: "p50 connection latency in µs", YLabel: "p50 connect-to-close latency (µs)"},
}, {
	Key: "p90", Label: "p90 µs", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) { return trialLatency(t).P90, true },
	Unit:  unitP90, Digits: 2,
	SetTrial: func(t *Trial, v float64) { t.Workload.Latency.P90 = v },
	Stat:     func(s *Summary) *Stat { return &s.P90 }, CI: true,
	Ratio:     func(s *Summary) *float64 { return &s.P90RatioToDirect },
	Threshold: 0.15,
	Column:    "P90 µs", Format: fmtMicros,
	Scale: &ScaleChart{Name: "p90", Title: "p90 connection latency in µs", YLabel: "p90 connect-to-close latency (µs)"},
}, {
	Key: "p99", Label: "p99 µs", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) { return trialLatency(t).P99, true },
	Unit:  unitP99, Digits: 2,
	SetTrial:  func(t *Trial, v float64) { t.Workload.Latency.P99 = v },
	Stat:      func(s *Summary) *Stat { return &s.P99 },
	Threshold: 0.30,
	Column:    "P99 µs", Format: fmtMicros,
	Scale: &ScaleChart{Name: "p99", Title: "p99 connection latency in µs", YLabel: "p99 connect-to-close latency (µs)"},
}, {
	Key: "cpu_per_conn", Label: "cpu µs/conn", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) {
		if t.Workload.CPU == nil {
			return 0, false
		}
		return t.Workload.CPU.PerConnectionUS, true
	},
	Unit: unitCPUPerConn, Digits: 3,
	SetTrial: func(t *Trial, v float64) {
		if t.Workload.CPU == nil {
			t.Workload.CPU = &CPUUsage{}
		}
		t.Workload.CPU.PerConnectionUS = v
	},
	Stat: func(s *Summary) *Stat { return &s.CPUPerConnUS }, CI: true,
	Ratio:     func(s *Summary) *float64 { return &s.CPURatioToDirect },
	Threshold: 0.10,
	Column:    "CPU µs/C", Format: fmtMicros,
	Scale: &ScaleChart{Name: "cpu", Title: "machine-wide busy CPU time per connection in µs", YLabel: "CPU per connection (µs)"},
}, {
	Key: "run_cpu_per_conn", Label: "run cpu µs/conn", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) {
		if t.Workload.CPU == nil || t.Workload.CPU.RunPerConnectionUS == 0 {
			return 0, false
		}
		return t.Workload.CPU.RunPerConnectionUS, true
	},
	Unit: "run-cpu-µs/conn", Digits: 3,
	SetTrial: func(t *Trial, v float64) {
		if t.Workload.CPU == nil {
			t.Workload.CPU = &CPUUsage{}
		}
		t.Workload.CPU.RunPerConnectionUS = v
	},
	Stat: func(s *Summary) *Stat { return &s.RunCPUPerConnUS }, CI: true,
	Threshold: 0.10,
	Column:    "RUN CPU µs/C", Format: fmtMicros,
	Scale: &ScaleChart{Name: "run-cpu", Title: "CPU time of the run's pods per connection in µs", YLabel: "run CPU per connection (µs)"},
}, {
	// The datapath's own kernel time per connection (Trial.Cost of the
	// cost trials): far less noisy than QPS, since the end hosts' TCP
	// work is not in it. Gated on its absolute value: direct's is ≈ 0
	// after the floor correction. The threshold is provisional until the
	// gate's rates are measured with it (ci/README.md).
	Key: "datapath_ns_per_conn", Label: "datapath ns/conn", Better: LowerIsBetter,
	CostTrials: true, Absolute: true,
	Trial: func(t Trial) (float64, bool) {
		if !t.Cost.measured() {
			return 0, false
		}
		return t.Cost.NsPerConn, true
	},
	Unit: unitDatapathNs, Digits: 1,
	SetTrial: func(t *Trial, v float64) {
		t.costForBench().NsPerConn = v
	},
	Stat: func(s *Summary) *Stat { return &s.DatapathNsPerConn }, CI: true,
	Threshold: 0.10,
	Column:    "DP ns/C", Format: fmtQPS,
	Scale: &ScaleChart{Name: "cost", Title: "the datapath's own kernel time per connection in ns", YLabel: "datapath ns per connection"},
	Noise: true,
}, {
	// The same time as a fraction of the trial's own CPU per connection
	// (Trial.CPUShare): a machine running slower for a while lengthens
	// both alike, so between runs it moves far less than the nanoseconds
	// (0.6 % against 8.6 % for iptables across 10 quiet gate runs): the
	// figure the CI gate compares. Absolute, like the nanoseconds: direct's
	// share is ≈ 0.
	Key: "datapath_cpu_share", Label: "datapath share of the run's CPU", Better: LowerIsBetter,
	CostTrials: true, Absolute: true,
	Trial: func(t Trial) (float64, bool) { return t.CPUShare() },
	Unit:  unitDatapathShare, Digits: 6,
	SetTrial: func(t *Trial, v float64) {
		t.costForBench().CPUShare = v
	},
	Stat: func(s *Summary) *Stat { return &s.DatapathCPUShare }, CI: true,
	Threshold: 0.10,
	Column:    "DP %CPU", Format: fmtPercent,
	Noise: true,
}, {
	Key: "apply", Label: "apply s", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) { return t.ApplySeconds, true },
	Unit:  unitApply, Digits: 6, BenchScaleOnly: true,
	SetTrial: func(t *Trial, v float64) { t.ApplySeconds = v },
	Stat:     func(s *Summary) *Stat { return &s.ApplySeconds },
	Column:   "APPLY s", Format: fmtSeconds,
	Scale: &ScaleChart{Name: "apply", Title: "time to apply the whole set of services", YLabel: "apply (s)",
		YAxis: YLogIfWide, Programmed: true},
}, {
	Key: "change", Label: "change s", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) { return t.ApplyChangeSeconds, t.ApplyChangeSeconds > 0 },
	Unit:  unitChange, Digits: 6, BenchScaleOnly: true,
	SetTrial: func(t *Trial, v float64) { t.ApplyChangeSeconds = v },
	Stat:     func(s *Summary) *Stat { return &s.ApplyChangeSeconds },
	Column:   "CHANGE s", Format: fmtSeconds,
	Scale: &ScaleChart{Name: "change", Title: "time to apply a one-endpoint change", YLabel: "apply of one changed endpoint (s)",
		YAxis: YLogIfWide, Programmed: true},
}, {
	Key: "state_objects", Label: "state objects", Better: LowerIsBetter,
	Trial:  func(t Trial) (float64, bool) { return stateCount(t.DatapathState, StateObjects) },
	Stat:   func(s *Summary) *Stat { return &s.StateObjects },
	Column: "STATE OBJS", Format: fmtQPS,
	Scale: &ScaleChart{Name: "state", Title: "state objects (rules, map entries, sockets)", YLabel: "state objects", YAxis: YLog},
}, {
	Key: "state_bytes", Label: "state bytes", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) { return stateCount(t.DatapathState, StateBytes) },
	Stat:  func(s *Summary) *Stat { return &s.StateBytes },
}, {
	// The open-loop generator's own lateness: only an open-loop trial
	// has it.
	Key: "start_lag_p99", Label: "start lag p99 µs", Better: LowerIsBetter,
	Trial: func(t Trial) (float64, bool) {
		if t.Model == "" || t.Workload.StartLag == nil {
			return 0, false
		}
		return t.Workload.StartLag.P99, true
	},
	Stat: func(s *Summary) *Stat { return &s.StartLagP99 },
}}

// A half-wired entry is a programming error that would otherwise show as
// a nil dereference deep in a chart or a metric silently missing from
// compare: refuse it when the package loads.
func init() {
	if err := checkMetrics(metricTable); err != nil {
		panic("results: metric table: " + err.Error())
	}
}

// checkMetrics reports the entries of a metric table that declare a use
// without what the use needs, and keys, units or chart names used twice.
func checkMetrics(ms []Metric) error {
	var errs []error
	keys, units, charts := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, m := range ms {
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%q: %s", m.Key, fmt.Sprintf(format, a...)))
		}
		switch {
		case m.Key == "":
			bad("no Key")
		case keys[m.Key]:
			bad("Key used twice")
		}
		keys[m.Key] = true
		if m.Label == "" || m.Trial == nil {
			bad("Label and Trial are required")
		}
		if m.Unit != "" {
			if units[m.Unit] {
				bad("Unit %q used twice", m.Unit)
			}
			units[m.Unit] = true
		}
		if m.Compared() && (m.Unit == "" || m.SetTrial == nil) {
			bad("compared, so it needs a Unit and SetTrial: compare reads bench.txt too")
		}
		if m.SetTrial != nil && m.Unit == "" {
			bad("SetTrial without a Unit to read")
		}
		if m.Absolute && m.Ratio != nil {
			bad("Absolute, so it has no ratio to direct")
		}
		if m.Ratio != nil && m.Stat == nil {
			bad("Ratio without a Stat to take it of")
		}
		if (m.Column != "" || m.Format != nil) && (m.Column == "" || m.Format == nil || m.Stat == nil) {
			bad("a table column needs Column, Format and Stat")
		}
		if m.Scale != nil {
			if m.Stat == nil || m.Column == "" || m.Scale.Name == "" {
				bad("a scale chart needs Stat, Column and Scale.Name")
			}
			if charts[m.Scale.Name] {
				bad("scale chart name %q used twice", m.Scale.Name)
			}
			charts[m.Scale.Name] = true
		}
	}
	return errors.Join(errs...)
}

// Metrics returns the metric table, in its order.
func Metrics() []Metric { return slices.Clone(metricTable) }

// LookupMetric returns the metric with the key.
func LookupMetric(key string) (Metric, bool) {
	i := slices.IndexFunc(metricTable, func(m Metric) bool { return m.Key == key })
	if i < 0 {
		return Metric{}, false
	}
	return metricTable[i], true
}

// mustMetric is LookupMetric for the keys the package itself names.
func mustMetric(key string) Metric {
	m, ok := LookupMetric(key)
	if !ok {
		panic("results: no metric " + strconv.Quote(key))
	}
	return m
}

// MetricKeys are the metrics compare tests, as named in a thresholds file.
func MetricKeys() []string {
	var out []string
	for _, m := range metricTable {
		if m.Compared() {
			out = append(out, m.Key)
		}
	}
	return out
}
