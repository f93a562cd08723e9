package results

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Scale sweep axes, as they appear in file names and sentences.
const (
	axisServices  = "services"
	axisEndpoints = "endpoints"
)

// scaleSweep is one axis of a scale run at one concurrency: the
// closed-loop summaries measured along it and the points datapaths did not
// reach.
//
// A scale run has up to two sweeps. The services sweep varies Services at a
// fixed endpoint count E0: E0 is the endpoint count with the most distinct
// services counts above 1 (the smallest such count on a tie), and the sweep
// is every summary at E0, Services = 1 included. The endpoints sweep varies
// Endpoints at Services = 1. The point (1, E0) belongs to both. An axis is a
// sweep when it has at least two distinct values.
type scaleSweep struct {
	axis string
	// fixed is the coordinate the sweep holds: endpoints per service for
	// the services sweep, services (1) for the endpoints sweep.
	fixed       int
	concurrency int
	sums        []Summary // in summary order
	limits      []ScaleLimit
	// site is where sums were measured when they are all one site's (""
	// for this host, or for a mix): WriteScaleCharts and the report draw
	// each site apart, from that site's summaries.
	site string
}

// x is the swept coordinate of a summary or limit.
func (sw scaleSweep) x(services, endpoints int) int {
	if sw.axis == axisServices {
		return services
	}
	return endpoints
}

// xs are the distinct swept values measured, ascending.
func (sw scaleSweep) xs() []int {
	var xs []int
	for _, s := range sw.sums {
		xs = append(xs, sw.x(s.Services, s.Endpoints))
	}
	slices.Sort(xs)
	return slices.Compact(xs)
}

// scaleSweeps finds the sweeps of closed-loop summaries sums (see
// scaleSweep), per concurrency ascending, the services sweep first. Limits
// go to the sweeps whose line they lie on.
func scaleSweeps(sums []Summary, limits []ScaleLimit) []scaleSweep {
	var concs []int
	for _, s := range sums {
		concs = append(concs, s.Concurrency)
	}
	slices.Sort(concs)
	concs = slices.Compact(concs)

	var out []scaleSweep
	for _, c := range concs {
		var at []Summary
		for _, s := range sums {
			if s.Concurrency == c && s.Services > 0 {
				at = append(at, s)
			}
		}
		// E0: the endpoint count with the most distinct services counts > 1.
		svcsAt := map[int]map[int]bool{}
		for _, s := range at {
			if s.Services > 1 {
				if svcsAt[s.Endpoints] == nil {
					svcsAt[s.Endpoints] = map[int]bool{}
				}
				svcsAt[s.Endpoints][s.Services] = true
			}
		}
		e0, best := 0, 0
		for e, svcs := range svcsAt {
			if len(svcs) > best || (len(svcs) == best && e < e0) {
				e0, best = e, len(svcs)
			}
		}
		candidates := []scaleSweep{{axis: axisEndpoints, fixed: 1, concurrency: c}}
		if best > 0 {
			candidates = slices.Insert(candidates, 0, scaleSweep{axis: axisServices, fixed: e0, concurrency: c})
		}
		for _, sw := range candidates {
			on := func(services, endpoints int) bool {
				if sw.axis == axisServices {
					return endpoints == sw.fixed && services >= 1
				}
				return services == 1 && endpoints >= 1
			}
			for _, s := range at {
				if on(s.Services, s.Endpoints) {
					sw.sums = append(sw.sums, s)
				}
			}
			if len(sw.xs()) < 2 {
				continue
			}
			if !slices.ContainsFunc(sw.sums, func(s Summary) bool { return s.Site != sw.sums[0].Site }) {
				sw.site = sw.sums[0].Site
			}
			for _, l := range limits {
				// A limit of a site none of sums was measured at
				// belongs to another site's sweep.
				atSite := slices.ContainsFunc(sums, func(s Summary) bool { return s.Site == l.Site })
				if atSite && on(l.Services, l.Endpoints) {
					sw.limits = append(sw.limits, l)
				}
			}
			out = append(out, sw)
		}
	}
	return out
}

// WriteScaleCharts draws the line charts of a scale run into dir and returns
// their paths; a run without a scale sweep (see scaleSweep) gets none and
// nil, nil.
//
// Each sweep gets one PNG per metric of the metric table with a Scale
// chart, scale-<axis>-<name>.png with axis "services" or "endpoints" and
// name the chart's (qps, p50, p90, p99, cpu, cost, apply, change, state),
// when some summary of the sweep measured it (cpu, cost, change and state
// are not always measured), and scale-<axis>-cost-parts.png, the parts of
// the datapaths' own cost (drawScaleCostParts), when cost trials measured
// them. When the
// sweep ran at several concurrencies, each gets its own set, named with a
// -c<concurrency> suffix. The x axis is logarithmic; each datapath is a
// line in its bar-chart colour through the medians, with min–max error
// bars over repetitions. The caption lists the points a datapath did not
// reach (run.ScaleLimits) and the skipped datapaths.
//
// It uses run.Summary, or summarises run.Trials when Summary is empty.
func WriteScaleCharts(dir string, run *Run) (paths []string, err error) {
	if run == nil {
		return nil, nil
	}
	all := summariesOf(run)
	// A VM site's sweeps are drawn apart: an emulated CPU's figures are
	// tens of times the host's and would flatten every host line.
	var sweeps []scaleSweep
	for _, site := range sitesOf(all) {
		sweeps = append(sweeps, scaleSweeps(sumsAt(all, site), run.ScaleLimits)...)
	}
	if len(sweeps) == 0 {
		return nil, nil
	}
	colors := datapathColors(all)
	multiConc := false
	for _, sw := range sweeps {
		multiConc = multiConc || sw.concurrency != sweeps[0].concurrency
	}
	fileName := func(sw scaleSweep, chart string) string {
		name := "scale-" + sw.axis + "-" + chart
		if multiConc {
			name += "-c" + strconv.Itoa(sw.concurrency)
		}
		if sw.site != "" {
			name += "-" + sw.site
		}
		return name + ".png"
	}
	for _, sw := range sweeps {
		for _, m := range metricTable {
			if m.Scale == nil || !measured(sw.sums, m) {
				continue
			}
			path := filepath.Join(dir, fileName(sw, m.Scale.Name))
			err := writeCanvasPNG(path, func(c draw.Canvas) error {
				return drawScaleChart(c, run, sw, m, colors)
			})
			if err != nil {
				return paths, err
			}
			paths = append(paths, path)
		}
		// The parts of the datapaths' own cost, when cost trials
		// measured them along the sweep.
		if parts := costPartLines(sw); len(parts) > 0 {
			path := filepath.Join(dir, fileName(sw, "cost-parts"))
			if err := writeCanvasPNG(path, func(c draw.Canvas) error { return drawScaleCostParts(c, run, sw, parts) }); err != nil {
				return paths, err
			}
			paths = append(paths, path)
		}
	}
	return paths, nil
}

// drawScaleChart draws one metric along one sweep.
func drawScaleChart(c draw.Canvas, run *Run, sw scaleSweep, m Metric, colors map[string]color.Color) error {
	lines := &scaleLines{}
	idx := map[string]int{}
	for _, s := range sw.sums {
		st := *m.Stat(&s)
		if len(st.Values) == 0 || m.Scale.Programmed && s.Datapath == DirectDatapath {
			continue
		}
		i, ok := idx[s.name()]
		if !ok {
			i = len(lines.series)
			idx[s.name()] = i
			lines.series = append(lines.series, lineSeries{name: s.name(), color: colors[s.name()]})
		}
		lines.series[i].points = append(lines.series[i].points, linePoint{x: float64(sw.x(s.Services, s.Endpoints)), stat: st})
	}
	for i := range lines.series {
		slices.SortStableFunc(lines.series[i].points, func(a, b linePoint) int { return cmp.Compare(a.x, b.x) })
	}
	for _, l := range sw.limits {
		lines.limits = append(lines.limits, limitMark{x: float64(sw.x(l.Services, l.Endpoints)), name: l.name(), color: colors[l.name()]})
	}
	legend := make([]barSeries, len(lines.series))
	for i, s := range lines.series {
		legend[i] = barSeries{name: s.name, color: s.color}
	}

	lines.logY = m.Scale.YAxis == YLog
	if lo, hi := lines.positiveRange(); m.Scale.YAxis == YLogIfWide && lo > 0 && hi/lo > 100 {
		lines.logY = true
	}
	if lo, _ := lines.positiveRange(); lo <= 0 {
		lines.logY = false // nothing a log axis could show
	}

	plotArea := drawFrame(c, scaleTitle(sw, m), subtitle(run), scaleCaption(run, sw, m), legend)

	xLabel := "services (log scale)"
	if sw.axis == axisEndpoints {
		xLabel = "endpoints per service (log scale)"
	}
	yLabel := m.Scale.YLabel
	if lines.logY {
		yLabel += ", log scale"
	}
	p := newChartPlot(xLabel, yLabel)
	p.Add(horizontalGrid(), lines)

	// The axis reaches the points datapaths did not reach too, where
	// their marks go.
	var marks []float64
	for _, x := range sw.xs() {
		marks = append(marks, float64(x))
	}
	for _, l := range lines.limits {
		marks = append(marks, l.x)
	}
	slices.Sort(marks)
	marks = slices.Compact(marks)
	// Headroom in log space keeps the end points and their bars off the
	// frame.
	p.X.Scale = plot.LogScale{}
	p.X.Min, p.X.Max = marks[0]/1.3, marks[len(marks)-1]*1.3
	p.X.Tick.Marker = logTicks{marks: marks}
	p.X.Padding, p.Y.Padding = 0, 0

	_, _, ymin, ymax := lines.DataRange()
	switch {
	case lines.logY:
		p.Y.Scale = plot.LogScale{}
		p.Y.Min, p.Y.Max = ymin/1.5, ymax*1.5
		if len(lines.limits) > 0 {
			p.Y.Max *= 3 // room for the not-reached marks
		}
		p.Y.Tick.Marker = logTicks{}
	default:
		if ymax <= 0 {
			ymax = 1
		}
		p.Y.Min, p.Y.Max = 0, ymax*1.06
		if len(lines.limits) > 0 {
			p.Y.Max = ymax * 1.15 // room for the not-reached marks
		}
		p.Y.Tick.Marker = groupedTicks{}
	}
	if lines.logY {
		plotArea = drawYLabelOutside(plotArea, p)
	}
	p.Draw(plotArea)
	return nil
}

// drawYLabelOutside draws p's y-axis label itself, left of the area it
// returns for the rest of the plot. gonum centres the label at the
// arithmetic middle of the axis range when reserving room for it, which on
// a log axis lies near the top and squeezes the plot down; the label it
// draws is at the true centre, so drawing it here gives the same look.
func drawYLabelOutside(c draw.Canvas, p *plot.Plot) draw.Canvas {
	lbl := p.Y.Label
	p.Y.Label.Text = ""
	sty := lbl.TextStyle
	sty.Rotation += math.Pi / 2
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YBottom
	h := lbl.TextStyle.Height(lbl.Text)
	// Centre on the y axis, which sits above the x axis's ticks and label.
	xAxisH := p.X.Label.TextStyle.Height(p.X.Label.Text) + p.X.Label.Padding +
		p.X.Tick.Label.Height("0") + p.X.Tick.Length + p.X.Width
	y := c.Min.Y + xAxisH + (c.Max.Y-c.Min.Y-xAxisH)/2
	descent := lbl.TextStyle.FontExtents().Descent
	c.FillText(sty, vg.Point{X: c.Min.X + h - descent, Y: y}, lbl.Text)
	return draw.Crop(c, h+lbl.Padding, 0, 0, 0)
}

// scaleTitle says what the chart shows and what the sweep held fixed.
func scaleTitle(sw scaleSweep, m Metric) string { return sw.titled(m.Scale.Title) }

// titled is a title of one of the sweep's charts showing what: the sweep
// and what it held fixed first, where it was measured last.
func (sw scaleSweep) titled(what string) string {
	if sw.axis == axisEndpoints {
		return fmt.Sprintf("Endpoints sweep (1 service, concurrency %d): %s%s", sw.concurrency, what, siteSuffix(sw.site))
	}
	return fmt.Sprintf("Services sweep (%s endpoints each, concurrency %d): %s%s",
		groupThousands(float64(sw.fixed)), sw.concurrency, what, siteSuffix(sw.site))
}

// scaleCaption says what the error bars are, which points datapaths did
// not reach and which datapaths were not measured at all.
func scaleCaption(run *Run, sw scaleSweep, m Metric) string {
	parts := []string{"Points: median; bars: min–max over " + repetitionsWords(sw.sums) + "."}
	if m.CostTrials {
		// Measured by the cost trials: their count, and what the
		// probes cost and subtracted.
		var costs []Summary
		for _, s := range sw.sums {
			if s.Cost != nil {
				costs = append(costs, Summary{Repetitions: s.Cost.Repetitions})
			}
		}
		if len(costs) > 0 {
			parts = []string{"Points: median; bars: min–max over " + repetitionsWords(costs) + " of the cost trials (the attribution probes attached)."}
		}
		parts = append(parts, costProbeSentences(sw.sums)...)
	}
	for _, l := range sw.limits {
		parts = append(parts, fmt.Sprintf("%s: %s at %s; larger points not tried.", l.name(), l.Reason, scalePointWords(l.Services, l.Endpoints)))
	}
	if sw.site != "" {
		return strings.Join(append(parts, siteNote(sw.site)), " ")
	}
	return strings.Join(append(parts, skippedNotes(run)...), " ")
}

// repetitionsWords is "3 repetitions", "2–3 repetitions" when some failed,
// or "1 repetition".
func repetitionsWords(sums []Summary) string {
	lo, hi := sums[0].Repetitions, sums[0].Repetitions
	for _, s := range sums {
		lo, hi = min(lo, s.Repetitions), max(hi, s.Repetitions)
	}
	switch {
	case lo == hi && hi == 1:
		return "1 repetition (no spread)"
	case lo == hi:
		return fmt.Sprintf("%d repetitions", hi)
	default:
		return fmt.Sprintf("%d–%d repetitions", lo, hi)
	}
}

// scalePointWords is "10,000 services × 12 endpoints".
func scalePointWords(services, endpoints int) string {
	return fmt.Sprintf("%s %s × %s %s", groupThousands(float64(services)), plural(services, "service", "services"),
		groupThousands(float64(endpoints)), plural(endpoints, "endpoint", "endpoints"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// lineSeries is one datapath along a sweep: its points by x ascending.
type lineSeries struct {
	name   string
	color  color.Color
	points []linePoint
}

type linePoint struct {
	x    float64
	stat Stat
}

// scaleLines draws each series as a line through its medians with a marker
// per point and a min–max bar. Like groupedBars it draws the bars itself:
// a point whose spread reaches 0 has to be clipped on a log axis, where 0
// has no place, rather than passed to the scale (which panics on it).
type scaleLines struct {
	series []lineSeries
	limits []limitMark
	logY   bool
}

// limitMark is a point a datapath did not reach, drawn as a cross in its
// colour at the top of the plot.
type limitMark struct {
	x     float64
	name  string
	color color.Color
}

// dodge spreads the series sideways at each point so that the error bars
// of datapaths with close figures do not hide each other.
const dodge = vg.Length(2.5)

// Plot implements plot.Plotter.
func (l *scaleLines) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	bar := draw.LineStyle{Color: color.Gray{0x30}, Width: vg.Points(0.8)}
	capW := vg.Points(3)
	for slot, s := range l.series {
		off := dodge * vg.Length(float64(slot)-float64(len(l.series)-1)/2)
		line := draw.LineStyle{Color: s.color, Width: vg.Points(1.6)}
		glyph := draw.GlyphStyle{Color: s.color, Radius: vg.Points(2.6), Shape: draw.CircleGlyph{}}
		var pts []vg.Point
		for _, pt := range s.points {
			if !l.drawable(pt.stat.Median) {
				continue
			}
			pts = append(pts, vg.Point{X: trX(pt.x) + off, Y: trY(pt.stat.Median)})
		}
		if len(pts) > 1 {
			c.StrokeLines(line, c.ClipLinesXY(pts)...)
		}
		for _, pt := range s.points {
			if !l.drawable(pt.stat.Median) || pt.stat.Max <= pt.stat.Min {
				continue
			}
			lo := pt.stat.Min
			if !l.drawable(lo) {
				lo = p.Y.Min
			}
			x := trX(pt.x) + off
			y0, y1 := trY(max(lo, p.Y.Min)), trY(min(pt.stat.Max, p.Y.Max))
			c.StrokeLine2(bar, x, y0, x, y1)
			c.StrokeLine2(bar, x-capW, y0, x+capW, y0)
			c.StrokeLine2(bar, x-capW, y1, x+capW, y1)
		}
		for _, pt := range pts {
			c.DrawGlyph(glyph, pt)
		}
	}
	l.plotLimits(c, trX)
}

// plotLimits draws a cross and "<datapath>: not reached" at the top of the
// plot for each limit, stacked when several share a point; the text goes
// left of the cross in the right half of the plot so it stays inside.
func (l *scaleLines) plotLimits(c draw.Canvas, trX func(float64) vg.Length) {
	stacked := map[float64]int{}
	for _, m := range l.limits {
		sty := sansStyle(7.5, m.color)
		sty.YAlign = draw.YCenter
		x := trX(m.x)
		y := c.Max.Y - vg.Points(6) - vg.Length(stacked[m.x])*sty.FontExtents().Height
		stacked[m.x]++
		c.DrawGlyph(draw.GlyphStyle{Color: m.color, Radius: vg.Points(3), Shape: draw.CrossGlyph{}}, vg.Point{X: x, Y: y})
		tx := x + vg.Points(6)
		if x > (c.Min.X+c.Max.X)/2 {
			sty.XAlign = draw.XRight
			tx = x - vg.Points(6)
		}
		c.FillText(sty, vg.Point{X: tx, Y: y}, m.name+": not reached")
	}
}

// drawable reports whether y can be placed on the y axis.
func (l *scaleLines) drawable(y float64) bool { return !l.logY || y > 0 }

// positiveRange is the smallest and largest positive figure (medians and
// spreads), 0, 0 when there is none.
func (l *scaleLines) positiveRange() (lo, hi float64) {
	for _, s := range l.series {
		for _, pt := range s.points {
			for _, v := range []float64{pt.stat.Min, pt.stat.Median, pt.stat.Max} {
				if v > 0 {
					if lo == 0 || v < lo {
						lo = v
					}
					hi = max(hi, v)
				}
			}
		}
	}
	return lo, hi
}

// DataRange implements plot.DataRanger: x spans the points and limits, y the
// spreads (positive ones only on a log axis; from 0 on a linear one).
func (l *scaleLines) DataRange() (xmin, xmax, ymin, ymax float64) {
	xmin, xmax = math.Inf(1), math.Inf(-1)
	for _, s := range l.series {
		for _, pt := range s.points {
			xmin, xmax = min(xmin, pt.x), max(xmax, pt.x)
		}
	}
	for _, m := range l.limits {
		xmin, xmax = min(xmin, m.x), max(xmax, m.x)
	}
	if l.logY {
		ymin, ymax = l.positiveRange()
		return xmin, xmax, ymin, ymax
	}
	for _, s := range l.series {
		for _, pt := range s.points {
			ymax = max(ymax, pt.stat.Max, pt.stat.Median)
		}
	}
	return xmin, xmax, 0, ymax
}

// logTicks marks a logarithmic axis: labelled powers of ten, unlabelled
// 2…9 multiples between them, and labelled marks (the sweep's own points,
// so "12 endpoints" reads as 12). A power of ten within a factor 1.5 of a
// mark is left unlabelled so the two labels do not collide; an axis
// spanning less than a decade also labels the 2× and 5× ticks.
type logTicks struct {
	marks []float64
}

// Ticks implements plot.Ticker.
func (t logTicks) Ticks(lo, hi float64) []plot.Tick {
	if lo <= 0 || hi <= lo {
		return nil
	}
	labels := map[float64]string{}
	nearMark := func(v float64) bool {
		return slices.ContainsFunc(t.marks, func(m float64) bool { return v/m < 1.5 && m/v < 1.5 })
	}
	labelled := 0
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for m := 1.0; m < 10; m++ {
			v := decadeMultiple(m, e)
			if v < lo || v > hi {
				continue
			}
			labels[v] = ""
			if m == 1 && !nearMark(v) {
				labels[v] = logTickLabel(v)
				labelled++
			}
		}
	}
	for _, m := range t.marks {
		if m >= lo && m <= hi {
			labels[m] = logTickLabel(m)
			labelled++
		}
	}
	if labelled < 2 {
		for v, l := range labels {
			if l != "" || nearMark(v) {
				continue
			}
			if d := v / decadeMultiple(1, math.Floor(math.Log10(v))); math.Abs(d-2) < 1e-9 || math.Abs(d-5) < 1e-9 {
				labels[v] = logTickLabel(v)
			}
		}
	}
	ticks := make([]plot.Tick, 0, len(labels))
	for v, l := range labels {
		ticks = append(ticks, plot.Tick{Value: v, Label: l})
	}
	slices.SortFunc(ticks, func(a, b plot.Tick) int { return cmp.Compare(a.Value, b.Value) })
	return ticks
}

// decadeMultiple is m×10^e, computed so that 10^-e divides (3/1000 is
// 0.003 exactly as printed; 3×0.001 is not).
func decadeMultiple(m, e float64) float64 {
	if e < 0 {
		return m / math.Pow(10, -e)
	}
	return m * math.Pow(10, e)
}

// logTickLabel prints a tick value plainly: 10,000 rather than 1e+04, 0.01
// rather than 1e-02.
func logTickLabel(v float64) string {
	if v >= 1 && v == math.Trunc(v) {
		return groupThousands(v)
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
