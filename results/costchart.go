package results

import (
	"cmp"
	"fmt"
	"image/color"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

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
// The summaries are one site's: a VM site's times are its emulator's
// (tens of times the host's) and get a chart of their own.
func costBars(sums []Summary) (bars []costBar, parts []string) {
	name := costNamer(sums, "\n")
	all := map[string]float64{}
	for _, s := range sums {
		if s.Cost == nil || len(s.Cost.Parts) == 0 {
			continue
		}
		bars = append(bars, costBar{label: name(s), parts: s.Cost.Parts, total: s.DatapathNsPerConn})
		for p, v := range s.Cost.Parts {
			// No part of any bar: kept out of the legend.
			if !idleProgram(p, v) {
				all[p] = 0
			}
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

// writeCostChart draws the cost chart of one site's summaries to path
// when some summary has cost parts and returns the path ("" when none
// has); at ends the title (" at debian-6.12" for a VM site).
func writeCostChart(path, at string, run *Run, sums []Summary) (string, error) {
	bars, parts := costBars(sums)
	if len(bars) == 0 {
		return "", nil
	}
	err := writeCanvasPNG(path, func(c draw.Canvas) error { return drawCostChart(c, run, costTitle(run, sums)+at, sums, bars, parts) })
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

// costCaption says what the stacks are, which bars (of bars, by index) are
// cut at the axis's top, what was subtracted from them and what the
// probes cost, then what was not measured.
func costCaption(run *Run, sums []Summary, bars []costBar, cut []int) string {
	capParts := []string{"Stacks: the median of each part over the cost trials (the attribution probes attached); label: the median of the total, with its 95% interval (or min–max) in ns. Netfilter parts by hook priority band, BPF parts by program, proxy-cpu the userspace proxy's CPU."}
	if len(cut) > 0 {
		var names []string
		for _, i := range cut {
			names = append(names, strings.ReplaceAll(bars[i].label, "\n", " "))
		}
		capParts = append(capParts, fmt.Sprintf("Cut at the axis's top (≈), so the other bars stay readable: %s; the label is the whole total.", strings.Join(names, ", ")))
	}
	capParts = append(capParts, costProbeSentences(sums)...)
	if len(sums) > 0 && sums[0].Site != "" {
		return strings.Join(append(capParts, siteNote(sums[0].Site)), " ")
	}
	return strings.Join(append(capParts, skippedNotes(run)...), " ")
}

// costCutRatio is how many times the next-tallest bar a bar must stand
// before cost.png cuts it: the userspace proxy's CPU (~20× a kernel
// datapath's) is cut, iptables beside socket-LB (~10×) is not.
const costCutRatio = 12

// costAxis picks the top of cost.png's y axis (before the labels'
// headroom) and the bars cut at it. One or a few bars far above the rest
// would flatten every other bar to a sliver: when the tallest bars (fewer
// than half of them, with at least three left below) stand costCutRatio
// times above the next one, they are cut at 1.3 times that one's height
// and drawn with a break mark. Fewer bars below are read as they are.
func costAxis(bars []costBar, parts []string) (top float64, cut []int) {
	heights := make([]float64, len(bars))
	for i, b := range bars {
		heights[i], _ = b.stack(parts)
	}
	order := make([]int, len(bars))
	for i := range order {
		order[i] = i
	}
	// Tallest first; equal heights in bar order, so the cut is stable.
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(heights[b], heights[a]) })
	for k := 1; k+3 <= len(order) && 2*k < len(order); k++ {
		below := heights[order[k]]
		if below > 0 && heights[order[k-1]] >= costCutRatio*below {
			cut = slices.Clone(order[:k])
			slices.Sort(cut)
			return 1.3 * below, cut
		}
	}
	for _, h := range heights {
		top = max(top, h)
	}
	return top, nil
}

// stack is the bar's positive parts summed (its height above 0) and its
// negative ones (its depth below), in parts order as Plot draws them: a
// map's order would change the float sums' last bits, and the axis,
// between renderings.
func (b costBar) stack(parts []string) (up, down float64) {
	for _, p := range parts {
		if v := b.parts[p]; v < 0 {
			down += v
		} else {
			up += v
		}
	}
	return up, down
}

// costProbeSentences are the caption sentences on the probes, per
// datapath (at its site) over the summaries: the floor subtracted from the
// netfilter parts and the probes' overhead (a range when they differ
// between points), and what they could not measure.
func costProbeSentences(sums []Summary) []string {
	type ranges struct{ floors, overheads []float64 }
	var order []site
	by := map[site]*ranges{}
	var missing []string
	for _, s := range sums {
		if s.Cost == nil {
			continue
		}
		k := site{s.Datapath, s.Site}
		if by[k] == nil {
			order = append(order, k)
			by[k] = &ranges{}
		}
		if s.Cost.FloorNS != 0 {
			by[k].floors = append(by[k].floors, s.Cost.FloorNS)
		}
		if o := s.Cost.ProbeOverhead; len(o.Values) > 0 {
			by[k].overheads = append(by[k].overheads, o.Median)
		}
		for _, m := range s.Cost.Missing {
			missing = appendOnce(missing, k.String()+": "+m)
		}
	}
	span := func(vs []float64, format string) string {
		st := NewStat(vs)
		if st.Min == st.Max {
			return fmt.Sprintf(format, st.Min)
		}
		return fmt.Sprintf(format, st.Min) + "–" + fmt.Sprintf(format, st.Max)
	}
	var floors, overheads []string
	for _, k := range order {
		if r := by[k]; len(r.floors) > 0 {
			floors = append(floors, k.String()+" "+span(r.floors, "%.0f")+" ns")
		}
		if r := by[k]; len(r.overheads) > 0 {
			overheads = append(overheads, k.String()+" ×"+span(r.overheads, "%.2f"))
		}
	}
	var out []string
	if len(floors) > 0 {
		out = append(out, "Probe floor subtracted from the netfilter parts: "+strings.Join(floors, ", ")+".")
	}
	if len(overheads) > 0 {
		out = append(out, "Probes' overhead (QPS with them ÷ without, median): "+strings.Join(overheads, ", ")+".")
	}
	if len(missing) > 0 {
		out = append(out, "Not measured (absent, not zero): "+strings.Join(missing, "; ")+".")
	}
	return out
}

// costPartShare is the share of a datapath's total a part must reach at
// some point of a sweep to get a line in the parts chart: the smaller
// ones would be a tangle of lines along 0.
const costPartShare = 0.10

// costPartLines are the lines of a sweep's parts chart: per datapath (at
// its site) and part that reaches costPartShare of the datapath's total
// at some point, the part's median at each point.
func costPartLines(sw scaleSweep) []lineSeries {
	type key struct {
		dp   site
		part string
	}
	var order []key
	lines := map[key]*lineSeries{}
	big := map[key]bool{}
	for _, s := range sw.sums {
		if s.Cost == nil {
			continue
		}
		total := 0.0
		for _, p := range costPartNames(s.Cost.Parts) {
			total += max(s.Cost.Parts[p], 0)
		}
		for _, p := range costPartNames(s.Cost.Parts) {
			v := s.Cost.Parts[p]
			k := key{site{s.Datapath, s.Site}, p}
			if lines[k] == nil {
				order = append(order, k)
				lines[k] = &lineSeries{name: s.name() + " " + p}
			}
			lines[k].points = append(lines[k].points, linePoint{x: float64(sw.x(s.Services, s.Endpoints)), stat: NewStat([]float64{v})})
			big[k] = big[k] || (total > 0 && v >= costPartShare*total)
		}
	}
	var out []lineSeries
	for _, k := range order {
		if big[k] {
			l := *lines[k]
			l.color = paletteColor(len(out))
			slices.SortStableFunc(l.points, func(a, b linePoint) int { return cmp.Compare(a.x, b.x) })
			out = append(out, l)
		}
	}
	return out
}

// drawScaleCostParts draws a sweep's parts chart: a line per datapath and
// part (costPartLines) through its medians, so the part that grows with
// scale (iptables' rule evaluation in its DNAT band) stands out from the
// flat ones.
func drawScaleCostParts(c draw.Canvas, run *Run, sw scaleSweep, series []lineSeries) error {
	lines := &scaleLines{series: series}
	legend := make([]barSeries, len(series))
	for i, s := range series {
		legend[i] = barSeries{name: s.name, color: s.color}
	}
	title := sw.titled(fmt.Sprintf("the datapath's own ns per connection by part (parts of at least %.0f%% of a datapath's total)", 100*costPartShare))
	capParts := append([]string{"Points: the median of each part over the cost trials (the attribution probes attached)."}, costProbeSentences(sw.sums)...)
	if sw.site != "" {
		capParts = append(capParts, siteNote(sw.site))
	}
	capText := strings.Join(capParts, " ")
	plotArea := drawFrame(c, title, subtitle(run), capText, legend)
	xLabel := "services (log scale)"
	if sw.axis == axisEndpoints {
		xLabel = "endpoints per service (log scale)"
	}
	p := newChartPlot(xLabel, "ns per connection")
	p.Add(horizontalGrid(), lines)
	var marks []float64
	for _, x := range sw.xs() {
		marks = append(marks, float64(x))
	}
	p.X.Scale = plot.LogScale{}
	p.X.Min, p.X.Max = marks[0]/1.3, marks[len(marks)-1]*1.3
	p.X.Tick.Marker = logTicks{marks: marks}
	p.X.Padding, p.Y.Padding = 0, 0
	_, _, _, ymax := lines.DataRange()
	if ymax <= 0 {
		ymax = 1
	}
	p.Y.Min, p.Y.Max = 0, ymax*1.06
	p.Y.Tick.Marker = groupedTicks{}
	p.Draw(plotArea)
	return nil
}

// drawCostChart lays cost.png out in the shared frame: one stacked bar
// per datapath, a legend entry per part.
func drawCostChart(c draw.Canvas, run *Run, title string, sums []Summary, bars []costBar, parts []string) error {
	st := &stackedBars{bars: bars, parts: parts, colors: map[string]color.Color{}}
	var cut []int
	st.top, cut = costAxis(bars, parts)
	st.cut = map[int]bool{}
	for _, i := range cut {
		st.cut[i] = true
	}
	legend := make([]barSeries, len(parts))
	for i, p := range parts {
		st.colors[p] = paletteColor(i)
		legend[i] = barSeries{name: p, color: st.colors[p]}
	}
	plotArea := drawFrame(c, title, subtitle(run), costCaption(run, sums, bars, cut), legend)
	p := newChartPlot("datapath", "datapath ns per connection")
	labels := make([]string, len(bars))
	for i, b := range bars {
		labels[i] = b.label
	}
	p.NominalX(labels...)
	p.Add(horizontalGrid(), st)
	_, _, ymin, _ := st.DataRange()
	ymax := st.top
	if ymax <= 0 {
		ymax = 1
	}
	// Headroom for the total's two-line label above the tallest bar.
	p.X.Min, p.X.Max = -0.5, float64(len(bars))-0.5
	p.Y.Min, p.Y.Max = ymin*1.1, ymax*1.22
	p.X.Padding, p.Y.Padding = 0, 0
	p.Y.Tick.Marker = groupedTicks{}
	p.Draw(plotArea)
	return nil
}

// stackedBars draws a bar per costBar: its positive parts stacked up from
// 0 in parts order, the negative ones (a floor-corrected band can dip
// below 0) stacked down, and the total's median as a label on top.
// A bar in cut stops at top, with a break mark below it.
type stackedBars struct {
	bars   []costBar
	parts  []string
	colors map[string]color.Color
	top    float64
	cut    map[int]bool
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
			if s.cut[i] {
				lo, hi = min(lo, s.top), min(hi, s.top)
			}
			c.FillPolygon(s.colors[part], c.ClipPolygonY([]vg.Point{
				{X: x0, Y: trY(lo)}, {X: x0, Y: trY(hi)}, {X: x1, Y: trY(hi)}, {X: x1, Y: trY(lo)},
			}))
		}
		if s.cut[i] {
			up = s.top
			breakMark(c, x0, x1, trY(0.9*s.top))
		}
		if len(b.total.Values) == 0 {
			continue
		}
		// Two lines, so neighbouring labels do not run into each other.
		text := groupThousands(b.total.Median) + " ns"
		if lo, hi := b.total.span(); hi > lo {
			text += fmt.Sprintf("\n(%s–%s)", groupThousands(lo), groupThousands(hi))
		}
		c.FillText(label, vg.Point{X: trX(float64(i)), Y: trY(up) + vg.Points(2)}, text)
	}
}

// breakMark draws the "≈" of a cut bar: a white band slanting across it
// at y, edged in the chart's dark colour.
func breakMark(c draw.Canvas, x0, x1, y vg.Length) {
	const rise, gap = 4, 3
	band := []vg.Point{{X: x0 - 2, Y: y - rise}, {X: x1 + 2, Y: y + rise}, {X: x1 + 2, Y: y + rise + gap}, {X: x0 - 2, Y: y - rise + gap}}
	c.FillPolygon(color.White, band)
	edge := draw.LineStyle{Color: chartDark, Width: vg.Points(0.7)}
	c.StrokeLine2(edge, band[0].X, band[0].Y, band[1].X, band[1].Y)
	c.StrokeLine2(edge, band[3].X, band[3].Y, band[2].X, band[2].Y)
}

// DataRange implements plot.DataRanger: y from the lowest negative stack
// (or 0) to the highest positive one.
func (s *stackedBars) DataRange() (xmin, xmax, ymin, ymax float64) {
	for _, b := range s.bars {
		up, down := b.stack(s.parts)
		ymin, ymax = min(ymin, down), max(ymax, up)
	}
	return -0.5, float64(len(s.bars)) - 0.5, ymin, ymax
}

func abs(v float64) float64 { return max(v, -v) }

// idleProgram says a cost part is a datapath program that never ran in the
// window (connect6 under an IPv4 workload): no part of the cost, so left
// out of the chart's legend and the table's notes.
func idleProgram(part string, ns float64) bool {
	return ns == 0 && strings.HasPrefix(part, "bpf-")
}
