package results

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// tablePad is the gap between table columns.
const tablePad = 2

// WriteTable prints the run's summaries as a fixed-width table for a
// terminal (it fits in 120 columns for datapath names up to ~20 characters,
// ~12 when CPU per connection is measured), then one line per skipped or
// unmeasured datapath and one for the load generator's ceiling, so the
// table alone tells what was and was not measured. The ± column is the
// QPS median's 95% confidence interval; scale (services, endpoints)
// columns appear only when the run swept it, and a sweep adds the scale
// block (writeScale).
//
// It uses run.Summary, or summarises run.Trials when Summary is empty (a run
// that was interrupted before summarising still prints).
func WriteTable(w io.Writer, run *Run) error {
	if run == nil {
		return fmt.Errorf("results table: no run")
	}
	all := allSummariesOf(run)
	sums, open := splitModels(all)

	dpWidth := datapathWidth(sums)
	// AlignRight keeps the digits of each numeric column aligned; the
	// datapath is padded by hand so that it alone reads left-aligned.
	// AlignRight also puts the column padding before the first cell, so
	// the table goes through a buffer that drops it.
	// Scale columns only when the run has several scale points (a single
	// one goes in a note), CPU columns only when measured, so a plain
	// run's table stays narrow.
	withCPU, withCost, rangeOnly := false, false, false
	scales := map[[2]int]bool{}
	for _, s := range sums {
		scales[[2]int{s.Services, s.Endpoints}] = true
		withCPU = withCPU || len(s.CPUPerConnUS.Values) > 0
		withCost = withCost || len(s.DatapathNsPerConn.Values) > 0
	}
	sweep := len(scales) > 1
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, tablePad, ' ', tabwriter.AlignRight)
	header := fmt.Sprintf("%-*s\t", dpWidth, "DATAPATH")
	if sweep {
		header += "SVCS\tEPS\t"
	}
	header += "CONC\tREPS\tQPS\t±\tQPS×DIR\tP50 µs\tP90 µs\tP99 µs\tP90×DIR\t"
	if withCPU {
		header += "CPU µs/C\tCPU×DIR\t"
	}
	if withCost {
		header += mustMetric("datapath_ns_per_conn").Column + "\t" + mustMetric("datapath_cpu_share").Column + "\t"
	}
	header += "ERRORS\tSYNRTX\tAPPLY s\t\n"
	fmt.Fprint(tw, header)
	for _, s := range sums {
		row := fmt.Sprintf("%-*s\t", dpWidth, s.name())
		if sweep {
			row += fmt.Sprintf("%d\t%d\t", s.Services, s.Endpoints)
		}
		spread := fmtSpread(s.QPS)
		rangeOnly = rangeOnly || strings.HasPrefix(spread, "(")
		reps := strconv.Itoa(s.Repetitions)
		if s.Invalid > 0 {
			// Valid of all: the invalid ones are named in the notes.
			reps = fmt.Sprintf("%d of %d", s.Repetitions, s.Repetitions+s.Invalid)
		}
		qps, p50, p90, p99 := fmtQPS(s.QPS.Median), fmtMicros(s.P50.Median), fmtMicros(s.P90.Median), fmtMicros(s.P99.Median)
		if len(s.QPS.Values) == 0 {
			// Only cost trials ran at this point: no plain figure.
			qps, p50, p90, p99 = "-", "-", "-", "-"
		}
		row += fmt.Sprintf("%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t",
			s.Concurrency, reps, qps, spread,
			fmtRatio(s.QPSRatioToDirect), p50, p90, p99,
			fmtRatio(s.P90RatioToDirect))
		if withCPU {
			cpu := "-"
			if len(s.CPUPerConnUS.Values) > 0 {
				cpu = fmtMicros(s.CPUPerConnUS.Median)
			}
			row += fmt.Sprintf("%s\t%s\t", cpu, fmtRatio(s.CPURatioToDirect))
		}
		if withCost {
			share := "-"
			if m := mustMetric("datapath_cpu_share"); len(s.DatapathCPUShare.Values) > 0 {
				share = m.Format(s.DatapathCPUShare.Median)
			}
			row += fmtNsSpread(s.DatapathNsPerConn) + "\t" + share + "\t"
		}
		row += fmt.Sprintf("%d\t%d\t%.2f\t\n", s.Errors, s.SynRetrans, s.ApplySeconds.Median)
		fmt.Fprint(tw, row)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	// An injected regression is said above the table, where nobody
	// reading a row can miss it.
	for _, d := range run.Datapaths {
		if n := d.Info["pad_rules"]; n != "" && n != "0" {
			if _, err := fmt.Fprintf(w, "INJECTED REGRESSION: %s has %s never-matching rules ahead of its services (SVCLAB_IPTABLES_PAD_RULES)\n", SiteName(d.Name, d.Site), n); err != nil {
				return fmt.Errorf("results table: %w", err)
			}
		}
	}
	// The placement heads the table: split and unplaced runs differ in
	// their noise and in where the datapath's softirq work lands.
	if p := run.Env.Placement; p != nil {
		if _, err := fmt.Fprintln(w, p.String()); err != nil {
			return fmt.Errorf("results table: %w", err)
		}
	}
	if err := writeTrimmed(w, buf.String()); err != nil {
		return err
	}
	if sweep {
		if err := writeScale(w, run, sums); err != nil {
			return err
		}
	}
	if len(open) > 0 {
		if err := writeOpenLoop(w, open); err != nil {
			return err
		}
	}
	if !sweep {
		if err := writeNoise(w, run, sums); err != nil {
			return err
		}
	}
	if err := writeNodes(w, run); err != nil {
		return err
	}

	// What was measured comes first: a UDP or IPv6 table otherwise reads
	// like the default TCP one.
	notes := []string{WorkloadOf(run).Note()}
	if len(run.ConcurrentRuns) > 0 {
		notes = append(notes, fmt.Sprintf("warning: other svclab runs were live during trials (%s); they share this machine's CPUs and may skew these figures",
			strings.Join(run.ConcurrentRuns, ", ")))
	}
	measured := map[site]bool{}
	for _, s := range all {
		measured[site{s.Datapath, s.Site}] = true
	}
	for _, d := range run.Datapaths {
		switch {
		case d.Skipped != "":
			notes = append(notes, fmt.Sprintf("skipped %s: %s", SiteName(d.Name, d.Site), d.Skipped))
		case !measured[site{d.Name, d.Site}]:
			notes = append(notes, fmt.Sprintf("no trials for %s", SiteName(d.Name, d.Site)))
		}
	}
	notes = append(notes, invalidNotes(run)...)
	notes = append(notes, busyNotes(run)...)
	notes = append(notes, lossNotes(run)...)
	if !sweep {
		// writeScale lists them in a sweep.
		notes = append(notes, limitLines(run.ScaleLimits)...)
	}
	if !sweep && len(sums) > 0 && (sums[0].Services > 0 || sums[0].Endpoints > 0) {
		notes = append(notes, fmt.Sprintf("scale: %d service(s), %d endpoint(s) each", sums[0].Services, sums[0].Endpoints))
	}
	if len(sums) > 0 {
		notes = append(notes, "±: half-width of the 95% confidence interval of the QPS median, in % of the median")
		if rangeOnly {
			notes = append(notes, "(±x%): fewer than 6 repetitions give no finite 95% interval; half the min–max range instead")
		}
	}
	notes = append(notes, costNotes(sums, sweep)...)
	notes = append(notes, generatorNotes(run, sums)...)
	if len(notes) > 0 {
		if _, err := io.WriteString(w, strings.Join(notes, "\n")+"\n"); err != nil {
			return fmt.Errorf("results table: %w", err)
		}
	}
	return nil
}

// writeOpenLoop prints the open-loop block: per datapath and load fraction,
// the offered and achieved rates, latency from the intended start, errors
// (overload included, and overload alone) and the generator's p99 start
// lag, which tells whether the generator rather than the datapath fell
// behind.
func writeOpenLoop(w io.Writer, sums []Summary) error {
	dpWidth := datapathWidth(sums)
	var buf bytes.Buffer
	buf.WriteString("\nopen loop (rates in conn/s; latency from the intended start; errors include overload)\n")
	tw := tabwriter.NewWriter(&buf, 0, 0, tablePad, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%-*s\tLOAD\tREPS\tOFFERED\tACHIEVED\tP50 µs\tP90 µs\tP99 µs\tP99×DIR\tERRORS\tOVERLOAD\tLAG P99 µs\t\n", dpWidth, "DATAPATH")
	// As in Summarize, a datapath pairs with direct at its own site.
	direct := map[groupKey]Summary{}
	for _, s := range sums {
		if s.Datapath == DirectDatapath {
			direct[keyOfSummary(s)] = s
		}
	}
	for _, s := range sums {
		lag := "-"
		if len(s.StartLagP99.Values) > 0 {
			lag = fmtMicros(s.StartLagP99.Median)
		}
		p99Ratio := 0.0
		if d, ok := direct[keyOfSummary(s).direct()]; ok {
			p99Ratio = ratio(s.P99.Median, d.P99.Median)
		}
		fmt.Fprintf(tw, "%-*s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t\n", dpWidth, s.name(),
			strconv.FormatFloat(s.LoadFraction, 'g', -1, 64), s.Repetitions,
			fmtQPS(s.OfferedRate), fmtQPS(s.QPS.Median),
			fmtMicros(s.P50.Median), fmtMicros(s.P90.Median), fmtMicros(s.P99.Median), fmtRatio(p99Ratio),
			s.Errors, s.Overload, lag)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	return writeTrimmed(w, buf.String())
}

// writeScale prints the scale block of a sweep: per datapath a row per
// scale point with the figures that change with scale (medians: rates,
// latency, CPU per connection, the time to apply the whole set and a
// one-endpoint change, the programmed state objects), then the points
// datapaths did not reach and, per datapath of the services sweep, how
// much its p90 grew from the fewest services to the most.
func writeScale(w io.Writer, run *Run, sums []Summary) error {
	dpWidth := datapathWidth(sums)
	var concs []int
	for _, s := range sums {
		if !slices.Contains(concs, s.Concurrency) {
			concs = append(concs, s.Concurrency)
		}
	}
	// A column per metric of the table with a scale chart, when some
	// summary measured it (CPU, the one-endpoint change and state are not
	// always measured).
	var cols []Metric
	for _, m := range metricTable {
		if m.Scale != nil && m.Column != "" && measured(sums, m) {
			cols = append(cols, m)
		}
	}
	withConc := len(concs) > 1
	var buf bytes.Buffer
	buf.WriteString("\nscale (medians; apply: the whole set, change: one endpoint of one service, in s)\n")
	tw := tabwriter.NewWriter(&buf, 0, 0, tablePad, ' ', tabwriter.AlignRight)
	header := fmt.Sprintf("%-*s\tSVCS\tEPS\t", dpWidth, "DATAPATH")
	if withConc {
		header += "CONC\t"
	}
	for _, m := range cols {
		header += m.Column + "\t"
	}
	fmt.Fprint(tw, header+"\n")
	for _, s := range sums {
		row := fmt.Sprintf("%-*s\t%d\t%d\t", dpWidth, s.name(), s.Services, s.Endpoints)
		if withConc {
			row += fmt.Sprintf("%d\t", s.Concurrency)
		}
		for _, m := range cols {
			row += fmtIfMeasured(*m.Stat(&s), m.Format) + "\t"
		}
		fmt.Fprint(tw, row+"\n")
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	if err := writeTrimmed(w, buf.String()); err != nil {
		return err
	}
	lines := limitLines(run.ScaleLimits)
	for _, sw := range scaleSweeps(sums, run.ScaleLimits) {
		if sw.axis == axisServices {
			lines = append(lines, p90GrowthLines(sw, withConc)...)
		}
	}
	if len(lines) == 0 {
		return nil
	}
	if _, err := io.WriteString(w, strings.Join(lines, "\n")+"\n"); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	return nil
}

// limitLines says which scale points datapaths did not reach, and why.
func limitLines(limits []ScaleLimit) []string {
	var lines []string
	for _, l := range limits {
		lines = append(lines, fmt.Sprintf("%s: not reached at %s: %s; larger points not tried",
			l.name(), scalePointWords(l.Services, l.Endpoints), l.Reason))
	}
	return lines
}

// p90GrowthLines give, per datapath of a services sweep, the factor between
// its connect p90 at the sweep's largest services count and at its
// smallest: how the datapath's per-connection cost grows with the number
// of services. A datapath that did not reach the largest count is "not
// reached", with its factor at the largest count it did reach.
func p90GrowthLines(sw scaleSweep, withConc bool) []string {
	xs := sw.xs()
	lo, hi := xs[0], xs[len(xs)-1]
	for _, l := range sw.limits {
		hi = max(hi, l.Services)
	}
	type reached struct {
		p90     map[int]float64
		largest int
	}
	var order []site
	by := map[site]*reached{}
	add := func(dp site) *reached {
		if by[dp] == nil {
			order = append(order, dp)
			by[dp] = &reached{p90: map[int]float64{}}
		}
		return by[dp]
	}
	for _, s := range sw.sums {
		r := add(site{s.Datapath, s.Site})
		r.p90[s.Services] = s.P90.Median
		r.largest = max(r.largest, s.Services)
	}
	for _, l := range sw.limits {
		add(site{l.Datapath, l.Site})
	}
	at := ""
	if withConc {
		at = fmt.Sprintf(" (concurrency %d)", sw.concurrency)
	}
	// The points of a sweep run one after the other, so a machine that
	// drifts in between moves every datapath alike: the factor relative
	// to direct's own (same site, same points, same run) takes that out.
	relative := func(dp site, x int, f float64) string {
		d := by[site{DirectDatapath, dp.where}]
		if dp.datapath == DirectDatapath || d == nil || d.p90[lo] == 0 || d.p90[x] == 0 {
			return ""
		}
		return fmt.Sprintf(" (%s relative to direct's %s)", fmtFactor(f, d.p90[x]/d.p90[lo]), fmtFactor(d.p90[x], d.p90[lo]))
	}
	var lines []string
	for _, dp := range order {
		r := by[dp]
		head := fmt.Sprintf("%s: connect p90 at %s services vs %s%s: ", dp, groupThousands(float64(hi)), groupThousands(float64(lo)), at)
		base, ok := r.p90[lo]
		switch {
		case !ok || base == 0:
			lines = append(lines, head+"not reached")
		case r.largest == hi:
			lines = append(lines, head+fmtFactor(r.p90[hi], base)+relative(dp, hi, r.p90[hi]/base))
		case r.largest > lo:
			lines = append(lines, head+fmt.Sprintf("not reached (at %s: %s%s)", groupThousands(float64(r.largest)),
				fmtFactor(r.p90[r.largest], base), relative(dp, r.largest, r.p90[r.largest]/base)))
		default:
			lines = append(lines, head+"not reached")
		}
	}
	return lines
}

// fmtFactor prints a/b as "×1.23", or "×?" when b is 0.
func fmtFactor(a, b float64) string {
	if b == 0 {
		return "×?"
	}
	return fmt.Sprintf("×%.2f", a/b)
}

// fmtSeconds prints an apply time to the millisecond below 10 s (a direct
// datapath's apply takes a few), coarser above.
func fmtSeconds(v float64) string {
	switch {
	case v < 10:
		return fmt.Sprintf("%.3f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// fmtIfMeasured prints st's median with f, or "-" when nothing measured it.
func fmtIfMeasured(st Stat, f func(float64) string) string {
	if len(st.Values) == 0 {
		return "-"
	}
	return f(st.Median)
}

// datapathWidth is the width of the DATAPATH column of sums' rows.
func datapathWidth(sums []Summary) int {
	w := len("DATAPATH")
	for _, s := range sums {
		w = max(w, len([]rune(s.name())))
	}
	return w
}

// measured reports whether some summary has values for m.
func measured(sums []Summary, m Metric) bool {
	return slices.ContainsFunc(sums, func(s Summary) bool { return len(m.Stat(&s).Values) > 0 })
}

// name is how tables and charts name the summary's datapath: with its site
// when it was measured elsewhere ("ipvs @ debian-6.12").
func (s Summary) name() string { return SiteName(s.Datapath, s.Site) }

// writeTrimmed writes a table that went through an AlignRight tabwriter
// without the padding that puts before each line's first cell.
func writeTrimmed(w io.Writer, table string) error {
	for _, line := range strings.SplitAfter(table, "\n") {
		if _, err := io.WriteString(w, strings.TrimPrefix(line, strings.Repeat(" ", tablePad))); err != nil {
			return fmt.Errorf("results table: %w", err)
		}
	}
	return nil
}

// summariesOf returns the run's closed-loop summaries (what the main table
// and the charts plot), computing them from the trials when the run does
// not carry them yet.
func summariesOf(run *Run) []Summary {
	closed, _ := splitModels(allSummariesOf(run))
	return closed
}

// allSummariesOf returns all the run's summaries, open-loop ones included.
func allSummariesOf(run *Run) []Summary {
	if len(run.Summary) > 0 {
		return run.Summary
	}
	return Summarize(run.Trials)
}

// splitModels separates closed-loop summaries from open-loop ones, keeping
// the order of each.
func splitModels(sums []Summary) (closed, open []Summary) {
	for _, s := range sums {
		if s.Model == "" {
			closed = append(closed, s)
		} else {
			open = append(open, s)
		}
	}
	return closed, open
}

// fmtQPS prints connections per second to the unit: fractions of a
// connection per second are noise at these rates.
func fmtQPS(v float64) string { return fmt.Sprintf("%.0f", v) }

// fmtPercent prints a fraction as a percentage with three significant
// digits for the shares the table holds (0.5 % to 60 %).
func fmtPercent(v float64) string {
	if math.Abs(v) < 0.1 {
		return fmt.Sprintf("%.2f%%", v*100)
	}
	return fmt.Sprintf("%.1f%%", v*100)
}

// fmtMicros prints a latency with about three significant digits, which is
// all the HDR histogram resolves.
func fmtMicros(v float64) string {
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// fmtSpread prints the half-width of the median's 95% confidence interval
// in % of the median (the larger side, as benchstat does), or, in
// parentheses, half the min–max range when the repetitions are too few for
// a finite interval.
func fmtSpread(s Stat) string {
	if s.Median == 0 {
		return "-"
	}
	if s.CI != nil {
		return fmt.Sprintf("±%.0f%%", 100*max(s.CI.Hi/s.Median-1, 1-s.CI.Lo/s.Median))
	}
	return fmt.Sprintf("(±%.0f%%)", 100*(s.Max-s.Min)/2/s.Median)
}

// fmtRatio prints a ratio to direct, or "-" when there is none (0).
func fmtRatio(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// invalidNotes name the run's invalid trials: left out of every median.
func invalidNotes(run *Run) []string {
	var out []string
	for _, t := range run.Trials {
		if !t.Valid() {
			out = append(out, fmt.Sprintf("invalid, left out of the figures: %s %s repetition %d: %s",
				SiteName(t.Datapath, t.Site), pointLabel(keyOf(t).point), t.Repetition+1, t.Invalid))
		}
	}
	return out
}

// generatorNotes give the generator's ceiling per concurrency level and
// warn where a datapath may have measured the generator rather than
// itself: where its QPS interval (95%, or min–max) reaches the ceiling's
// at the same level.
func generatorNotes(run *Run, sums []Summary) []string {
	gens := Summarize(run.GeneratorTrials())
	if len(gens) == 0 {
		return nil
	}
	var levels []string
	ceiling := map[int]Summary{}
	for _, g := range gens {
		ceiling[g.Concurrency] = g
		lo, hi := g.QPS.span()
		levels = append(levels, fmt.Sprintf("c=%d %s conn/s (%s–%s), p90 %s µs", g.Concurrency,
			fmtQPS(g.QPS.Median), fmtQPS(lo), fmtQPS(hi), fmtMicros(g.P90.Median)))
	}
	notes := []string{"generator ceiling (no datapath, loopback): " + strings.Join(levels, "; ")}
	// Where direct, through the whole topology, beats the loopback figure
	// beyond its spread, the loopback run (client and server sharing one
	// stack) is no upper bound of the generator: warning against it would
	// flag every datapath for nothing.
	notBound := map[int]bool{}
	for _, s := range sums {
		g, ok := ceiling[s.Concurrency]
		if !ok || s.Site != "" || s.Datapath != DirectDatapath || s.Repetitions == 0 {
			continue
		}
		dlo, _ := s.QPS.span()
		if _, ghi := g.QPS.span(); dlo > ghi && !notBound[s.Concurrency] {
			notBound[s.Concurrency] = true
			notes = append(notes, fmt.Sprintf("at concurrency %d direct through the topology (from %s conn/s) beats the loopback ceiling (up to %s): that ceiling bounds nothing here, so no datapath is flagged against it",
				s.Concurrency, fmtQPS(dlo), fmtQPS(ghi)))
		}
	}
	for _, s := range sums {
		g, ok := ceiling[s.Concurrency]
		if !ok || s.Site != "" || s.Repetitions == 0 || notBound[s.Concurrency] {
			continue
		}
		_, hi := s.QPS.span()
		if glo, _ := g.QPS.span(); hi >= glo {
			notes = append(notes, fmt.Sprintf("warning: %s at concurrency %d reaches the generator's ceiling (QPS up to %s, ceiling from %s): the generator may be the bottleneck",
				s.name(), s.Concurrency, fmtQPS(hi), fmtQPS(glo)))
		}
	}
	return notes
}

// busyThreshold is the share of the machine's CPU busy outside the run
// above which a trial's figures may have been skewed by another tenant.
const busyThreshold = 0.05

// busyNotes flag the trials during which the machine was busy outside the
// run (CPUUsage.OutsideFraction above busyThreshold).
func busyNotes(run *Run) []string {
	n, worst := 0, Trial{}
	for _, t := range run.Trials {
		if c := t.Workload.CPU; c != nil && c.OutsideFraction > busyThreshold {
			n++
			if worst.Workload.CPU == nil || c.OutsideFraction > worst.Workload.CPU.OutsideFraction {
				worst = t
			}
		}
	}
	if n == 0 {
		return nil
	}
	return []string{fmt.Sprintf("warning: the machine was busy outside this run during %d of %d trials (up to %.0f%% of its CPU, in %s %s repetition %d): their figures may be skewed",
		n, len(run.Trials), 100*worst.Workload.CPU.OutsideFraction, SiteName(worst.Datapath, worst.Site), pointLabel(keyOf(worst).point), worst.Repetition+1)}
}

// lossNotes give the UDP loss of every datapath and point that lost
// requests: the largest loss rate of its trials.
func lossNotes(run *Run) []string {
	var out []string
	worst := map[groupKey]Trial{}
	var order []groupKey
	for _, t := range run.Trials {
		if t.Workload.Lost == 0 {
			continue
		}
		k := keyOf(t)
		w, ok := worst[k]
		if !ok {
			order = append(order, k)
		}
		if !ok || t.Workload.LossRate > w.Workload.LossRate {
			worst[k] = t
		}
	}
	for _, k := range order {
		t := worst[k]
		out = append(out, fmt.Sprintf("UDP loss: %s %s: up to %.3g%% of requests got no reply (%d lost in repetition %d)",
			SiteName(t.Datapath, t.Site), pointLabel(k.point), 100*t.Workload.LossRate, t.Workload.Lost, t.Repetition+1))
	}
	return out
}

// fmtNsSpread prints a datapath ns/conn median with the half-width of its
// 95% interval in ns ("2731 ±13"), or half the min–max range in
// parentheses when the repetitions are too few; "-" when not measured.
// In ns rather than in % of the median: direct's median is ≈ 0 once the
// probes' floor is subtracted, and a percentage of it would mean nothing.
func fmtNsSpread(st Stat) string {
	if len(st.Values) == 0 {
		return "-"
	}
	if st.CI != nil {
		return fmt.Sprintf("%.0f ±%.0f", st.Median, max(st.CI.Hi-st.Median, st.Median-st.CI.Lo))
	}
	return fmt.Sprintf("%.0f (±%.0f)", st.Median, (st.Max-st.Min)/2)
}

// costNotes explain the DP ns/C column and give, per datapath that had
// cost trials, the probes' overhead (cost-trial QPS ÷ plain QPS of the
// same repetition) and the floor subtracted, then what the probes could
// not measure and, outside a sweep (whose scale block and charts show
// it), the parts.
func costNotes(sums []Summary, sweep bool) []string {
	var with []Summary
	var concs []string
	for _, s := range sums {
		if s.Cost == nil && len(s.DatapathNsPerConn.Values) == 0 {
			continue
		}
		with = append(with, s)
		concs = appendOnce(concs, strconv.Itoa(s.Concurrency))
	}
	if len(with) == 0 {
		return nil
	}
	notes := []string{fmt.Sprintf("%s: the datapath's own kernel time per connection in ns, from the cost trials (the attribution probes attached; concurrency %s), the probes' floor subtracted from the netfilter parts; ± is the half-width of its 95%% interval in ns ((±x): half the min–max range)",
		mustMetric("datapath_ns_per_conn").Column, strings.Join(concs, ", ")),
		fmt.Sprintf("%s: that time as a share of the cost trial's CPU per connection (its pods' and the datapath process's, the probes' floor taken out), median; it keeps still when the machine runs faster or slower, and is what the CI gate compares",
			mustMetric("datapath_cpu_share").Column)}
	name := costNamer(sums, " ")
	var probes, missing []string
	for _, s := range with {
		if s.Cost == nil {
			continue
		}
		var parts []string
		if o := s.Cost.ProbeOverhead; len(o.Values) > 0 {
			lo, hi := o.span()
			parts = append(parts, fmt.Sprintf("QPS ×%.2f [%.2f–%.2f]", o.Median, lo, hi))
		}
		if s.Cost.FloorNS != 0 {
			parts = append(parts, fmt.Sprintf("floor %.0f ns", s.Cost.FloorNS))
		}
		if s.Cost.Invalid > 0 {
			parts = append(parts, fmt.Sprintf("%d of %d cost trials invalid", s.Cost.Invalid, s.Cost.Invalid+s.Cost.Repetitions))
		}
		if len(parts) > 0 {
			probes = append(probes, name(s)+" "+strings.Join(parts, ", "))
		}
		for _, m := range s.Cost.Missing {
			missing = append(missing, name(s)+": "+m)
		}
	}
	if len(probes) > 0 {
		notes = append(notes, "cost probes (QPS with them ÷ without, same repetition: median [95% interval, or min–max]; floor: their own ns/conn subtracted): "+strings.Join(probes, "; "),
			"the probes slow the trials they are attached to, which is why they run in cost trials of their own: the plain trials' figures carry none of it")
	}
	if len(missing) > 0 {
		notes = append(notes, "cost parts not measured (absent, not zero): "+strings.Join(missing, "; "))
	}
	if sweep {
		return notes
	}
	for _, s := range with {
		if s.Cost == nil || len(s.Cost.Parts)+len(s.Cost.Beside) == 0 {
			continue
		}
		var parts, beside []string
		for _, p := range costPartNames(s.Cost.Parts) {
			if idleProgram(p, s.Cost.Parts[p]) {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %.0f", p, s.Cost.Parts[p]))
		}
		for _, p := range costPartNames(s.Cost.Beside) {
			beside = append(beside, fmt.Sprintf("%s %.0f", p, s.Cost.Beside[p]))
		}
		line := fmt.Sprintf("cost parts of %s (ns/conn, medians): %s", name(s), cmp.Or(strings.Join(parts, ", "), "none"))
		if len(beside) > 0 {
			line += "; in the node's netfilter hooks beside it (not its work, not counted): " + strings.Join(beside, ", ")
		}
		notes = append(notes, line)
	}
	return notes
}

// costPartNames are the names of a cost's parts in the order a packet
// meets them: the netfilter bands by priority, the BPF programs, the
// proxy, then any other part by name.
func costPartNames(parts map[string]float64) []string {
	rank := func(p string) int {
		if i := slices.Index(netfilterBands, p); i >= 0 {
			return i
		}
		switch {
		case strings.HasPrefix(p, "nf-"):
			return len(netfilterBands)
		case strings.HasPrefix(p, "bpf-"):
			return len(netfilterBands) + 1
		case p == "proxy-cpu":
			return len(netfilterBands) + 2
		}
		return len(netfilterBands) + 3
	}
	names := slices.Collect(maps.Keys(parts))
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a, b)) })
	return names
}

// netfilterBands are Cost.Parts' netfilter bands by hook priority.
var netfilterBands = []string{"nf-early", "nf-conntrack", "nf-dnat", "nf-filter", "nf-snat"}
