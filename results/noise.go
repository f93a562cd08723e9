package results

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"text/tabwriter"

	"gonum.org/v1/gonum/stat"
)

// noiseMinReps is the fewest repetitions a coefficient of variation is
// given for.
const noiseMinReps = 3

// coefficientOfVariation is the sample standard deviation of vs over
// their mean, in %; false with fewer than noiseMinReps values or a mean of
// 0 (direct's floor-corrected cost).
func coefficientOfVariation(vs []float64) (float64, bool) {
	if len(vs) < noiseMinReps {
		return 0, false
	}
	mean, sd := stat.MeanStdDev(vs, nil)
	if mean == 0 {
		return 0, false
	}
	return 100 * sd / math.Abs(mean), true
}

// formatCV prints a coefficient of variation in % to a tenth.
func formatCV(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// noiseColumn is one column of the noise block: a metric's CV over
// repetitions, or (paired) that of its ratio to direct in the same round.
type noiseColumn struct {
	m      Metric
	paired bool
}

func (c noiseColumn) head() string {
	if c.paired {
		return c.m.Column + "×DIR"
	}
	return c.m.Column
}

// noiseColumns are the metrics marked Noise, each followed by its paired
// ratio when it has a ratio to direct.
func noiseColumns() []noiseColumn {
	var cols []noiseColumn
	for _, m := range metricTable {
		if !m.Noise {
			continue
		}
		cols = append(cols, noiseColumn{m: m})
		if m.Ratio != nil {
			cols = append(cols, noiseColumn{m: m, paired: true})
		}
	}
	return cols
}

// repetitionValues are a metric's figures at one point by repetition:
// from the trials it reads (metricTrials), valid ones only, the later of a
// retried repetition (trials are in run order).
func repetitionValues(m Metric, ts []Trial) map[int]float64 {
	plain, costs := splitCostTrials(ts)
	byRep := map[int]float64{}
	for _, t := range metricTrials(m, validTrials(plain), validTrials(costs), len(costs) > 0) {
		if v, ok := m.Trial(t); ok {
			byRep[t.Repetition] = v
		}
	}
	return byRep
}

// noiseCV is one cell: the column's CV for the datapath at point k, from
// groups (the run's closed-loop trials by the key of their plain summary).
func noiseCV(c noiseColumn, k groupKey, groups map[groupKey][]Trial) (float64, bool) {
	own := repetitionValues(c.m, groups[k])
	reps := slices.Sorted(maps.Keys(own))
	var vs []float64
	if !c.paired {
		for _, r := range reps {
			vs = append(vs, own[r])
		}
		return coefficientOfVariation(vs)
	}
	if k.datapath == DirectDatapath {
		return 0, false // 1 in every round
	}
	direct := repetitionValues(c.m, groups[k.direct()])
	for _, r := range reps {
		if d, ok := direct[r]; ok && d != 0 {
			vs = append(vs, own[r]/d)
		}
	}
	return coefficientOfVariation(vs)
}

// writeNoise prints the noise block of a run that is not a sweep: per
// datapath and concurrency, the coefficient of variation over repetitions
// of QPS, of QPS paired per round with direct's (the pairing every ratio
// to direct rests on) and of the datapath's own cost. It says how steady
// the machine was, and so how small a difference the run can resolve.
// Nothing is printed when no row has noiseMinReps repetitions.
func writeNoise(w io.Writer, run *Run, sums []Summary) error {
	groups := map[groupKey][]Trial{}
	for _, t := range run.Trials {
		if k := keyOf(t).plain(); k.model == "" {
			groups[k] = append(groups[k], t)
		}
	}
	// The cells first: a column no row has a figure for (the cost
	// metrics of a run without cost trials) is left out.
	var cols []noiseColumn
	var cells [][]string // cells[j][i]: column j, row sums[i]
	for _, c := range noiseColumns() {
		var col []string
		measured := false
		for _, s := range sums {
			cell := "-"
			if v, ok := noiseCV(c, keyOfSummary(s), groups); ok {
				cell, measured = formatCV(v), true
			}
			col = append(col, cell)
		}
		if measured {
			cols = append(cols, c)
			cells = append(cells, col)
		}
	}
	if len(cols) == 0 {
		return nil
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, tablePad, ' ', tabwriter.AlignRight)
	head := fmt.Sprintf("%-*s\tCONC\t", datapathWidth(sums), "DATAPATH")
	costs := false
	for _, c := range cols {
		head += c.head() + "\t"
		costs = costs || c.m.CostTrials
	}
	fmt.Fprintln(tw, head)
	for i, s := range sums {
		row := fmt.Sprintf("%-*s\t%s\t", datapathWidth(sums), s.name(), strconv.Itoa(s.Concurrency))
		some := false
		for j := range cols {
			row += cells[j][i] + "\t"
			some = some || cells[j][i] != "-"
		}
		if some {
			fmt.Fprintln(tw, row)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	title := "\nnoise: coefficient of variation over the repetitions, % (×DIR: ÷ direct's in the same round"
	if costs {
		title += "; DP: cost trials"
	}
	if _, err := io.WriteString(w, title+")\n"); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	return writeTrimmed(w, buf.String())
}
