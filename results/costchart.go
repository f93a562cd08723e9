package results

import (
	"fmt"
	"image/color"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// costChartFile is the stacked bar chart of the datapaths' own cost.
const costChartFile = "cost.png"

// costBar is one stacked bar: a datapath (at a site, and at a point when
// it had cost trials at several) and the medians of its parts.
type costBar struct {
	label string
	parts map[string]float64
	total Stat
}

// costBars are the bars of the summaries with cost parts, in summary
// order, with the part names in stacking order (costPartNames over every
// bar, so a part has one colour and one place in every bar).
func costBars(sums []Summary) (bars []costBar, parts []string) {
	name := costNamer(sums, "\n")
	all := map[string]float64{}
	for _, s := range sums {
		if s.Cost == nil || len(s.Cost.Parts) == 0 {
			continue
		}
		bars = append(bars, costBar{label: name(s), parts: s.Cost.Parts, total: s.DatapathNsPerConn})
		for p := range s.Cost.Parts {
			all[p] = 0
		}
	}
	return bars, costPartNames(all)
}

// costNamer names the summaries with a cost: the datapath (at its site),
// and after sep its point when it had cost trials at several.
func costNamer(sums []Summary, sep string) func(Summary) string {
	points := map[site]int{}
	for _, s := range sums {
		if s.Cost != nil {
			points[site{s.Datapath, s.Site}]++
		}
	}
	return func(s Summary) string {
		if points[site{s.Datapath, s.Site}] > 1 {
			return s.name() + sep + pointLabel(pointOf(s))
		}
		return s.name()
	}
}

// writeCostChart draws cost.png into dir when some summary has cost parts
// and returns its path ("" when none has).
func writeCostChart(dir string, run *Run, sums []Summary) (string, error) {
	bars, parts := costBars(sums)
	if len(bars) == 0 {
		return "", nil
	}
	path := filepath.Join(dir, costChartFile)
	err := writeCanvasPNG(path, func(c draw.Canvas) error { return drawCostChart(c, run, sums, bars, parts) })
	if err != nil {
		return "", err
	}
	return path, nil
}

// costTitle says what cost.png shows and where it was measured.
func costTitle(run *Run, sums []Summary) string {
	var concs []string
	for _, s := range sums {
		if s.Cost != nil {
			concs = appendOnce(concs, fmt.Sprint(s.Concurrency))
		}
	}
	return fmt.Sprintf("%s: the datapath's own kernel time per connection in ns, by part (cost trials, concurrency %s)",
		WorkloadOf(run).Title(), strings.Join(concs, ", "))
}

// costCaption says what the stacks are, what was subtracted from them and
// what the probes cost, then what was not measured.
func costCaption(run *Run, sums []Summary) string {
	capParts := []string{"Stacks: the median of each part over the cost trials (the attribution probes attached); label: the median of the total, with its 95% interval (or min–max) in ns. Netfilter parts by hook priority band, BPF parts by program, proxy-cpu the userspace proxy's CPU."}
	var floors, overheads, missing []string
	name := costNamer(sums, " ")
	for _, s := range sums {
		if s.Cost == nil {
			continue
		}
		if s.Cost.FloorNS != 0 {
			floors = append(floors, fmt.Sprintf("%s %.0f ns", name(s), s.Cost.FloorNS))
		}
		if o := s.Cost.ProbeOverhead; len(o.Values) > 0 {
			overheads = append(overheads, fmt.Sprintf("%s ×%.2f", name(s), o.Median))
		}
		for _, m := range s.Cost.Missing {
			missing = append(missing, name(s)+": "+m)
		}
	}
	if len(floors) > 0 {
		capParts = append(capParts, "Probe floor subtracted from the netfilter parts: "+strings.Join(floors, ", ")+".")
	}
	if len(overheads) > 0 {
		capParts = append(capParts, "Probes' overhead (QPS with them ÷ without, median): "+strings.Join(overheads, ", ")+".")
	}
	if len(missing) > 0 {
		capParts = append(capParts, "Not measured (absent, not zero): "+strings.Join(missing, "; ")+".")
	}
	return strings.Join(append(capParts, skippedNotes(run)...), " ")
}

// drawCostChart lays cost.png out in the shared frame: one stacked bar
// per datapath, a legend entry per part.
func drawCostChart(c draw.Canvas, run *Run, sums []Summary, bars []costBar, parts []string) error {
	st := &stackedBars{bars: bars, parts: parts, colors: map[string]color.Color{}}
	legend := make([]barSeries, len(parts))
	for i, p := range parts {
		st.colors[p] = paletteColor(i)
		legend[i] = barSeries{name: p, color: st.colors[p]}
	}
	plotArea := drawFrame(c, costTitle(run, sums), subtitle(run), costCaption(run, sums), legend)
	p := newChartPlot("datapath", "datapath ns per connection")
	labels := make([]string, len(bars))
	for i, b := range bars {
		labels[i] = b.label
	}
	p.NominalX(labels...)
	p.Add(horizontalGrid(), st)
	_, _, ymin, ymax := st.DataRange()
	if ymax <= 0 {
		ymax = 1
	}
	// Headroom for the total's label above the tallest bar.
	p.X.Min, p.X.Max = -0.5, float64(len(bars))-0.5
	p.Y.Min, p.Y.Max = ymin*1.1, ymax*1.12
	p.X.Padding, p.Y.Padding = 0, 0
	p.Y.Tick.Marker = groupedTicks{}
	p.Draw(plotArea)
	return nil
}

// stackedBars draws a bar per costBar: its positive parts stacked up from
// 0 in parts order, the negative ones (a floor-corrected band can dip
// below 0) stacked down, and the total's median as a label on top.
type stackedBars struct {
	bars   []costBar
	parts  []string
	colors map[string]color.Color
}

// costBarHalf is half a stacked bar's width in data units.
const costBarHalf = 0.3

// Plot implements plot.Plotter.
func (s *stackedBars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	label := sansStyle(8, chartDark)
	label.XAlign, label.YAlign = draw.XCenter, draw.YBottom
	for i, b := range s.bars {
		x0, x1 := trX(float64(i)-costBarHalf), trX(float64(i)+costBarHalf)
		up, down := 0.0, 0.0
		for _, part := range s.parts {
			v, ok := b.parts[part]
			if !ok || v == 0 {
				continue
			}
			lo := up
			if v < 0 {
				lo = down + v
				down = lo
			} else {
				up += v
			}
			hi := lo + abs(v)
			c.FillPolygon(s.colors[part], c.ClipPolygonY([]vg.Point{
				{X: x0, Y: trY(lo)}, {X: x0, Y: trY(hi)}, {X: x1, Y: trY(hi)}, {X: x1, Y: trY(lo)},
			}))
		}
		if len(b.total.Values) == 0 {
			continue
		}
		text := groupThousands(b.total.Median) + " ns"
		if lo, hi := b.total.span(); hi > lo {
			text += fmt.Sprintf(" (%s–%s)", groupThousands(lo), groupThousands(hi))
		}
		c.FillText(label, vg.Point{X: trX(float64(i)), Y: trY(up) + vg.Points(2)}, text)
	}
}

// DataRange implements plot.DataRanger: y from the lowest negative stack
// (or 0) to the highest positive one.
func (s *stackedBars) DataRange() (xmin, xmax, ymin, ymax float64) {
	for _, b := range s.bars {
		up, down := 0.0, 0.0
		for _, v := range b.parts {
			if v < 0 {
				down += v
			} else {
				up += v
			}
		}
		ymin, ymax = min(ymin, down), max(ymax, up)
	}
	return -0.5, float64(len(s.bars)) - 0.5, ymin, ymax
}

func abs(v float64) float64 { return max(v, -v) }
