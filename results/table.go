package results

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// generatorBoundFraction is how close to the load generator's own ceiling a
// datapath's median QPS may come before the table warns that the figure may
// measure the generator rather than the datapath.
const generatorBoundFraction = 0.9

// tablePad is the gap between table columns.
const tablePad = 2

// WriteTable prints the run's summaries as a fixed-width table for a
// terminal (it fits in 120 columns for datapath names up to ~20 characters),
// then one line per skipped or unmeasured datapath and one for the load
// generator's ceiling, so the table alone tells what was and was not measured.
//
// It uses run.Summary, or summarises run.Trials when Summary is empty (a run
// that was interrupted before summarising still prints).
func WriteTable(w io.Writer, run *Run) error {
	if run == nil {
		return fmt.Errorf("results table: no run")
	}
	sums := summariesOf(run)

	dpWidth := len("DATAPATH")
	for _, s := range sums {
		dpWidth = max(dpWidth, len([]rune(s.Datapath)))
	}
	// AlignRight keeps the digits of each numeric column aligned; the
	// datapath is padded by hand so that it alone reads left-aligned.
	// AlignRight also puts the column padding before the first cell, so
	// the table goes through a buffer that drops it.
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, tablePad, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%-*s\tCONC\tREPS\tQPS\tQPS MIN–MAX\tQPS×DIRECT\tP50 µs\tP90 µs\tP99 µs\tP90×DIRECT\tERRORS\tAPPLY s\t\n", dpWidth, "DATAPATH")
	for _, s := range sums {
		fmt.Fprintf(tw, "%-*s\t%d\t%d\t%s\t%s–%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t\n",
			dpWidth, s.Datapath, s.Concurrency, s.Repetitions,
			fmtQPS(s.QPS.Median), fmtQPS(s.QPS.Min), fmtQPS(s.QPS.Max),
			fmtRatio(s.QPSRatioToDirect),
			fmtMicros(s.P50.Median), fmtMicros(s.P90.Median), fmtMicros(s.P99.Median),
			fmtRatio(s.P90RatioToDirect),
			s.Errors, fmt.Sprintf("%.2f", s.ApplySeconds.Median))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if _, err := io.WriteString(w, strings.TrimPrefix(line, strings.Repeat(" ", tablePad))); err != nil {
			return fmt.Errorf("results table: %w", err)
		}
	}

	var notes []string
	measured := map[string]bool{}
	for _, s := range sums {
		measured[s.Datapath] = true
	}
	for _, d := range run.Datapaths {
		switch {
		case d.Skipped != "":
			notes = append(notes, fmt.Sprintf("skipped %s: %s", d.Name, d.Skipped))
		case !measured[d.Name]:
			notes = append(notes, fmt.Sprintf("no trials for %s", d.Name))
		}
	}
	if g := run.Generator; g != nil {
		notes = append(notes, fmt.Sprintf("generator ceiling (no datapath): %s conn/s at concurrency %d, p90 %s µs",
			fmtQPS(g.Workload.QPS), g.Concurrency, fmtMicros(g.Workload.Latency.P90)))
		if ceil := g.Workload.QPS; ceil > 0 {
			for _, s := range sums {
				if s.QPS.Median >= generatorBoundFraction*ceil {
					notes = append(notes, fmt.Sprintf("warning: %s at concurrency %d reaches %.0f%% of the generator ceiling; the generator may be the bottleneck",
						s.Datapath, s.Concurrency, 100*s.QPS.Median/ceil))
				}
			}
		}
	}
	if len(notes) > 0 {
		if _, err := io.WriteString(w, strings.Join(notes, "\n")+"\n"); err != nil {
			return fmt.Errorf("results table: %w", err)
		}
	}
	return nil
}

// summariesOf returns the run's summaries, computing them from the trials
// when the run does not carry them yet.
func summariesOf(run *Run) []Summary {
	if len(run.Summary) > 0 {
		return run.Summary
	}
	return Summarize(run.Trials)
}

// fmtQPS prints connections per second to the unit: fractions of a
// connection per second are noise at these rates.
func fmtQPS(v float64) string { return fmt.Sprintf("%.0f", v) }

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

// fmtRatio prints a ratio to direct, or "-" when there is none (0).
func fmtRatio(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}
