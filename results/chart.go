package results

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Chart geometry: 8×4.5 in (16:9) at 150 dpi is 1200×675 px, legible in a
// blog post or a slide without being scaled up.
const (
	chartWidth  = 8 * vg.Inch
	chartHeight = 4.5 * vg.Inch
	chartDPI    = 150
)

// ErrNoData is returned by WriteCharts for a run without trials: an empty
// chart would look like a measurement of nothing, so none is drawn.
var ErrNoData = errors.New("no trials to chart")

// chartPalette is the colour-blind-safe palette every chart and the HTML
// report draw datapaths in: the Okabe–Ito palette (its yellow dropped: too
// faint on white) with black, then four of Paul Tol's "muted" colours, so
// twelve datapaths are told apart before a colour repeats. Colours go to
// datapaths in the order they first appear (summary order).
var chartPalette = []color.Color{
	color.RGBA{0x00, 0x72, 0xB2, 0xFF}, // blue
	color.RGBA{0xE6, 0x9F, 0x00, 0xFF}, // orange
	color.RGBA{0x00, 0x9E, 0x73, 0xFF}, // bluish green
	color.RGBA{0xCC, 0x79, 0xA7, 0xFF}, // reddish purple
	color.RGBA{0x56, 0xB4, 0xE9, 0xFF}, // sky blue
	color.RGBA{0xD5, 0x5E, 0x00, 0xFF}, // vermillion
	color.RGBA{0x55, 0x55, 0x55, 0xFF}, // grey
	color.RGBA{0x00, 0x00, 0x00, 0xFF}, // black
	color.RGBA{0x88, 0x22, 0x55, 0xFF}, // wine (Tol)
	color.RGBA{0x99, 0x99, 0x33, 0xFF}, // olive (Tol)
	color.RGBA{0x33, 0x22, 0x88, 0xFF}, // indigo (Tol)
	color.RGBA{0x44, 0xAA, 0x99, 0xFF}, // teal (Tol)
}

// paletteColor is the i-th colour of chartPalette, repeating past its end.
func paletteColor(i int) color.Color { return chartPalette[i%len(chartPalette)] }

// chartSpec is one chart: which figure of a Summary it plots and its words.
type chartSpec struct {
	// name is the file's name without its site and extension.
	name string
	// site is where the plotted summaries were measured: "" for this
	// host, else a VM kernel (the caption says so).
	site   string
	title  string
	yLabel string
	stat   func(Summary) Stat
	// ceiling says the load generator's own figure (the trial alone over
	// loopback) that bounds every bar.
	ceiling func(g *Trial) string
}

// qpsChart is the connections/s chart of one site's summaries.
func qpsChart(run *Run, sums []Summary, site string) chartSpec {
	return chartSpec{name: "qps", site: site,
		title:  WorkloadOf(run).Title() + ": connections/s (" + repetitionsPhrase(sums) + ")" + siteSuffix(site),
		yLabel: "connections/s",
		stat:   func(s Summary) Stat { return s.QPS },
		ceiling: func(g *Trial) string {
			return fmt.Sprintf("%s connections/s at concurrency %d", groupThousands(g.Workload.QPS), g.Concurrency)
		},
	}
}

// p90Chart is the p90 latency chart of one site's summaries.
func p90Chart(run *Run, sums []Summary, site string) chartSpec {
	return chartSpec{name: "p90", site: site,
		title:  WorkloadOf(run).Title() + ": p90 connection latency in µs (" + repetitionsPhrase(sums) + ")" + siteSuffix(site),
		yLabel: "p90 connect-to-close latency (µs)",
		stat:   func(s Summary) Stat { return s.P90 },
		ceiling: func(g *Trial) string {
			return fmt.Sprintf("p90 %s µs at concurrency %d", fmtMicros(g.Workload.Latency.P90), g.Concurrency)
		},
	}
}

// siteSuffix ends a chart's title with where its figures were measured
// when that is not this host.
func siteSuffix(site string) string {
	if site == "" {
		return ""
	}
	return " at " + site
}

// WriteCharts draws qps.png and p90.png into dir, and cost.png when cost
// trials measured the datapaths' own cost by part (drawCostChart), and
// returns their paths. Summaries measured elsewhere (a VM phase's) get
// charts of their own, named after their site (qps-debian-6.12.png): an
// emulated CPU's figures are tens of times the host's, and on one axis
// they would flatten every host bar.
//
// Each is a grouped bar chart: one group per concurrency level (per scale
// point and concurrency in a services sweep), one bar per datapath (the
// order of the summaries, i.e. the run's datapath order), bar height the median over repetitions and whiskers the min–max. The title,
// a subtitle with CPU, kernel and run id, and a caption naming skipped
// datapaths and the generator ceiling are part of the image, so a chart
// published on its own still says what was measured and where.
//
// It uses run.Summary, or summarises run.Trials when Summary is empty. A run
// with nothing to plot returns an error wrapping ErrNoData.
func WriteCharts(dir string, run *Run) (paths []string, err error) {
	if run == nil {
		return nil, fmt.Errorf("results charts: %w", ErrNoData)
	}
	all := summariesOf(run)
	if len(all) == 0 {
		return nil, fmt.Errorf("results charts for run %q: %w", run.ID, ErrNoData)
	}
	colors := datapathColors(all)
	for _, site := range sitesOf(all) {
		sums := sumsAt(all, site)
		file := func(name string) string { return name + ".png" }
		if site != "" {
			file = func(name string) string { return name + "-" + site + ".png" }
		}
		for _, spec := range []chartSpec{qpsChart(run, sums, site), p90Chart(run, sums, site)} {
			path := filepath.Join(dir, file(spec.name))
			if err := writeChart(path, spec, run, sums, colors); err != nil {
				return paths, err
			}
			paths = append(paths, path)
		}
		// The datapaths' own cost, by part, when cost trials measured it.
		path, err := writeCostChart(filepath.Join(dir, file("cost")), siteSuffix(site), run, sums)
		if err != nil {
			return paths, err
		}
		if path != "" {
			paths = append(paths, path)
		}
	}
	return paths, nil
}

// repetitionsPhrase says how many repetitions the whiskers span, as a range
// when some trials failed and groups differ.
func repetitionsPhrase(sums []Summary) string {
	lo, hi := sums[0].Repetitions, sums[0].Repetitions
	for _, s := range sums {
		lo, hi = min(lo, s.Repetitions), max(hi, s.Repetitions)
	}
	switch {
	case hi <= 1:
		return "single repetition, no spread"
	case lo == hi:
		return fmt.Sprintf("median, min–max over %d repetitions", hi)
	default:
		return fmt.Sprintf("median, min–max over %d–%d repetitions", lo, hi)
	}
}

// writeChart renders one chart and writes it as PNG.
func writeChart(path string, spec chartSpec, run *Run, sums []Summary, colors map[string]color.Color) error {
	return writeCanvasPNG(path, func(c draw.Canvas) error { return drawChart(c, spec, run, sums, colors) })
}

// writeCanvasPNG renders a chart of the standard size with drawFn and
// writes it to path as PNG.
func writeCanvasPNG(path string, drawFn func(draw.Canvas) error) (err error) {
	img := vgimg.NewWith(vgimg.UseWH(chartWidth, chartHeight), vgimg.UseDPI(chartDPI))
	if err := drawFn(draw.New(img)); err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("chart %s: %w", path, cerr)
		}
	}()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return nil
}

// sansStyle is a text style in the embedded Liberation Sans, so rendering
// needs no system fonts and looks the same on every machine.
func sansStyle(size vg.Length, c color.Color) text.Style {
	return text.Style{
		Color:   c,
		Font:    font.From(font.Font{Typeface: "Liberation", Variant: "Sans"}, size),
		XAlign:  draw.XLeft,
		YAlign:  draw.YTop,
		Handler: plot.DefaultTextHandler,
	}
}

// drawChart lays the bar chart out in the shared frame (drawFrame) and
// draws one bar per datapath and point in it.
// colors maps each series name (Summary.name) to its colour.
func drawChart(c draw.Canvas, spec chartSpec, run *Run, sums []Summary, colors map[string]color.Color) error {
	// Series: one per datapath, one slot per point (concurrency level, and
	// scale in a sweep).
	var levels []point
	levelIdx := map[point]int{}
	scales := map[[2]int]bool{}
	for _, s := range sums {
		if _, ok := levelIdx[pointOf(s)]; !ok {
			levelIdx[pointOf(s)] = 0
			levels = append(levels, pointOf(s))
		}
		scales[[2]int{s.Services, s.Endpoints}] = true
	}
	slices.SortFunc(levels, comparePoint)
	for i, l := range levels {
		levelIdx[l] = i
	}
	bars := &groupedBars{groups: len(levels)}
	seriesIdx := map[string]int{}
	for _, s := range sums {
		i, ok := seriesIdx[s.name()]
		if !ok {
			i = len(bars.series)
			seriesIdx[s.name()] = i
			bars.series = append(bars.series, barSeries{
				name:  s.name(),
				color: colors[s.name()],
				stats: make([]*Stat, len(levels)),
			})
		}
		st := spec.stat(s)
		bars.series[i].stats[levelIdx[pointOf(s)]] = &st
	}

	plotArea := drawFrame(c, spec.title, subtitle(run), caption(run, spec), bars.series)

	p := newChartPlot("concurrent connections", spec.yLabel)
	names := make([]string, len(levels))
	for i, l := range levels {
		names[i] = strconv.Itoa(l.concurrency)
		if len(scales) > 1 {
			names[i] = fmt.Sprintf("%d×%d, c=%d", l.services, l.endpoints, l.concurrency)
		}
	}
	if len(scales) > 1 {
		p.X.Label.Text = "services × endpoints, concurrent connections"
	}
	p.NominalX(names...)
	p.Add(horizontalGrid(), bars)
	_, _, _, ymax := bars.DataRange()
	if ymax <= 0 {
		ymax = 1
	}
	// The axis starts at 0 so bar heights compare as ratios; the headroom
	// keeps the top whisker cap off the frame.
	p.X.Min, p.X.Max = -0.5, float64(len(levels))-0.5
	p.Y.Min, p.Y.Max = 0, ymax*1.06
	p.X.Padding, p.Y.Padding = 0, 0
	p.Y.Tick.Marker = groupedTicks{}

	p.Draw(plotArea)
	return nil
}

// Text colours shared by every chart.
var (
	chartDark  = color.Gray{0x20}
	chartMuted = color.Gray{0x50}
)

// drawFrame paints the parts every chart shares, top to bottom: title,
// subtitle, legend, (plot), caption, and returns the canvas left for the
// plot. The legend gets its own row above the plot rather than sitting
// inside it, where it would hide data.
func drawFrame(c draw.Canvas, title, sub, capText string, legend []barSeries) draw.Canvas {
	c.SetColor(color.White)
	c.Fill(c.Rectangle.Path())

	const margin = vg.Length(8)
	area := draw.Crop(c, margin, -margin, margin, -margin)
	width := area.Max.X - area.Min.X
	top := area.Max.Y

	titleSty := sansStyle(12, chartDark)
	subSty := sansStyle(8.5, chartMuted)
	capSty := sansStyle(7.5, chartMuted)

	// Header.
	for _, l := range wrapText(titleSty, title, width) {
		top = drawLine(area, titleSty, area.Min.X, top, l)
	}
	for _, l := range wrapText(subSty, sub, width) {
		top = drawLine(area, subSty, area.Min.X, top, l)
	}
	top -= 4

	// Legend row(s), centred.
	legSty := sansStyle(9, chartDark)
	top = drawLegend(area, legSty, legend, top) - 2

	// Caption, from the bottom up.
	capLines := wrapText(capSty, capText, width)
	lineH := capSty.FontExtents().Height
	bottom := area.Min.Y + lineH*vg.Length(len(capLines))
	y := bottom
	for _, l := range capLines {
		y = drawLine(area, capSty, area.Min.X, y, l)
	}
	bottom += 3

	return draw.Crop(area, 0, 0, bottom-area.Min.Y, top-area.Max.Y)
}

// newChartPlot is a plot with the charts' axis fonts and alignments and a
// transparent background (drawFrame paints it).
func newChartPlot(xLabel, yLabel string) *plot.Plot {
	p := plot.New()
	p.BackgroundColor = nil
	axisSty := sansStyle(9, chartDark)
	tickSty := sansStyle(8.5, chartDark)
	for _, ax := range []*plot.Axis{&p.X, &p.Y} {
		ax.Label.TextStyle = axisSty
		ax.Label.TextStyle.XAlign = draw.XCenter
		ax.Tick.Label = tickSty
	}
	p.X.Tick.Label.XAlign = draw.XCenter
	p.Y.Tick.Label.XAlign = draw.XRight
	p.Y.Tick.Label.YAlign = draw.YCenter
	p.X.Tick.Label.YAlign = draw.YTop
	p.X.Label.TextStyle.YAlign = draw.YBottom
	p.Y.Label.TextStyle.YAlign = draw.YBottom
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	return p
}

// horizontalGrid is the light horizontal grid behind every chart.
func horizontalGrid() *plotter.Grid {
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil
	grid.Horizontal.Color = color.Gray{0xDD}
	return grid
}

// datapathColors gives each datapath its palette colour by the order it
// first appears in sums (the run's datapath order), so a datapath has the
// same colour in every chart of a run, at every site. The map is keyed by
// the name the charts show (Summary.name).
func datapathColors(sums []Summary) map[string]color.Color {
	// By datapath, not by name: direct at a VM site is drawn in direct's
	// colour, on its site's own chart.
	byDatapath := map[string]color.Color{}
	colors := map[string]color.Color{}
	for _, s := range sums {
		c, ok := byDatapath[s.Datapath]
		if !ok {
			c = paletteColor(len(byDatapath))
			byDatapath[s.Datapath] = c
		}
		colors[s.name()] = c
	}
	return colors
}

// subtitle names the machine and run, so a published chart says where its
// numbers come from.
func subtitle(run *Run) string {
	var parts []string
	e := run.Env
	if e.CPUModel != "" {
		cpu := e.CPUModel
		if e.CPUs > 0 {
			cpu += fmt.Sprintf(" (%d CPUs)", e.CPUs)
		}
		parts = append(parts, cpu)
	}
	if e.Kernel != "" {
		parts = append(parts, "kernel "+e.Kernel)
	}
	if run.ID != "" {
		parts = append(parts, "run "+run.ID)
	}
	if e.GitRev != "" {
		parts = append(parts, "svclab "+e.GitRev)
	}
	return strings.Join(parts, " · ")
}

// caption says what the chart does not show: skipped datapaths with their
// reasons, and the load generator's own ceiling that bounds every bar.
// A chart of another site says where its figures come from instead of
// the host's ceiling.
func caption(run *Run, spec chartSpec) string {
	if spec.site != "" {
		return siteNote(spec.site)
	}
	parts := skippedNotes(run)
	if n := len(invalidNotes(run)); n > 0 {
		parts = append(parts, fmt.Sprintf("%d invalid trial(s) left out of the bars (see the table's notes).", n))
	}
	if g := GeneratorCeiling(run.GeneratorTrials()); g != nil && spec.ceiling != nil {
		parts = append(parts, "Load generator alone (no datapath): "+spec.ceiling(g)+".")
	}
	return strings.Join(parts, " ")
}

// siteNote is the caption of a chart of figures measured at site, a VM
// kernel: whose figures they are and what they compare with.
func siteNote(site string) string {
	return fmt.Sprintf("Measured in a QEMU guest running the %s kernel, started by this run: emulated, it runs many times slower than this host, so compare these figures with each other (and direct @ %s) only.", site, site)
}

// skippedNotes are the caption sentences naming the datapaths the run
// skipped, with their reasons.
// A datapath skipped on the host but measured elsewhere (ipvs skipped,
// ipvs @ debian-6.12 measured in a VM) says where its bars come from.
func skippedNotes(run *Run) []string {
	elsewhere := map[string][]string{}
	seen := map[site]bool{}
	for _, t := range run.Trials {
		if k := (site{t.Datapath, t.Site}); k.where != "" && !seen[k] {
			seen[k] = true
			elsewhere[t.Datapath] = append(elsewhere[t.Datapath], k.String())
		}
	}
	var parts []string
	for _, d := range run.Datapaths {
		if d.Skipped == "" {
			continue
		}
		name := SiteName(d.Name, d.Site)
		if e := elsewhere[d.Name]; len(e) > 0 && d.Site == "" {
			parts = append(parts, fmt.Sprintf("Not measured on this host: %s (%s); measured as %s.", name, d.Skipped, strings.Join(e, ", ")))
		} else {
			parts = append(parts, fmt.Sprintf("Not measured: %s (%s).", name, d.Skipped))
		}
	}
	return parts
}

// drawLine draws one line of text with its top at y and returns the y of
// the next line.
func drawLine(c draw.Canvas, sty text.Style, x, y vg.Length, s string) vg.Length {
	c.FillText(sty, vg.Point{X: x, Y: y}, s)
	return y - sty.FontExtents().Height
}

// wrapText breaks s at spaces into lines no wider than width.
func wrapText(sty text.Style, s string, width vg.Length) []string {
	if s == "" {
		return nil
	}
	var lines []string
	cur := ""
	for _, w := range strings.Fields(s) {
		try := w
		if cur != "" {
			try = cur + " " + w
		}
		if cur != "" && sty.Width(try) > width {
			lines = append(lines, cur)
			cur = w
			continue
		}
		cur = try
	}
	return append(lines, cur)
}

// drawLegend draws a swatch and name per series in centred rows starting at
// top and returns the y below the legend.
func drawLegend(c draw.Canvas, sty text.Style, series []barSeries, top vg.Length) vg.Length {
	width := c.Max.X - c.Min.X
	sw := sty.Font.Size * 0.8
	const gap, sep = vg.Length(3), vg.Length(12)
	itemW := func(s barSeries) vg.Length { return sw + gap + sty.Width(s.name) }
	var rows [][]barSeries
	var rowW []vg.Length
	for _, s := range series {
		n := len(rows)
		if n == 0 || rowW[n-1]+sep+itemW(s) > width {
			rows = append(rows, nil)
			rowW = append(rowW, -sep)
			n++
		}
		rows[n-1] = append(rows[n-1], s)
		rowW[n-1] += sep + itemW(s)
	}
	lineH := sty.FontExtents().Height
	for i, row := range rows {
		x := c.Min.X + (width-rowW[i])/2
		for _, s := range row {
			mid := top - lineH/2
			c.FillPolygon(s.color, []vg.Point{
				{X: x, Y: mid - sw/2}, {X: x, Y: mid + sw/2},
				{X: x + sw, Y: mid + sw/2}, {X: x + sw, Y: mid - sw/2},
			})
			ts := sty
			ts.YAlign = draw.YCenter
			c.FillText(ts, vg.Point{X: x + sw + gap, Y: mid}, s.name)
			x += itemW(s) + sep
		}
		top -= lineH
	}
	return top
}

// barSeries is one datapath's bars: stats[i] is its figure at the i-th
// concurrency level, nil when it has no trials there.
type barSeries struct {
	name  string
	color color.Color
	stats []*Stat
}

// groupedBars draws bars and their min–max whiskers itself. gonum's
// BarChart offsets bars in canvas units while YErrorBars sit at data
// coordinates, so the two do not line up in a grouped chart; computing both
// from one data-unit x keeps every whisker on its bar.
type groupedBars struct {
	series []barSeries
	groups int
}

// groupSpan is the share of each group's unit of x taken by its bars; the
// rest separates the groups.
const groupSpan = 0.8

// barX returns the centre and half width, in data units, of the bar of
// series slot in group.
func (g *groupedBars) barX(group, slot int) (centre, half float64) {
	w := groupSpan / float64(len(g.series))
	centre = float64(group) - groupSpan/2 + w*(float64(slot)+0.5)
	return centre, w * 0.9 / 2 // a sliver between neighbouring bars
}

// Plot implements plot.Plotter.
func (g *groupedBars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	whisker := draw.LineStyle{Color: color.Gray{0x10}, Width: vg.Points(1)}
	for slot, s := range g.series {
		for group, st := range s.stats {
			if st == nil {
				continue
			}
			centre, half := g.barX(group, slot)
			x0, x1 := trX(centre-half), trX(centre+half)
			y0, y1 := trY(0), trY(st.Median)
			c.FillPolygon(s.color, c.ClipPolygonY([]vg.Point{
				{X: x0, Y: y0}, {X: x0, Y: y1}, {X: x1, Y: y1}, {X: x1, Y: y0},
			}))
			if st.Max <= st.Min {
				continue
			}
			xc := trX(centre)
			lo, hi := trY(st.Min), trY(st.Max)
			capW := min((x1-x0)*0.3, vg.Points(5))
			c.StrokeLine2(whisker, xc, lo, xc, hi)
			c.StrokeLine2(whisker, xc-capW, lo, xc+capW, lo)
			c.StrokeLine2(whisker, xc-capW, hi, xc+capW, hi)
		}
	}
}

// DataRange implements plot.DataRanger: x spans the groups, y starts at 0
// and reaches the highest whisker.
func (g *groupedBars) DataRange() (xmin, xmax, ymin, ymax float64) {
	for _, s := range g.series {
		for _, st := range s.stats {
			if st != nil {
				ymax = max(ymax, st.Max, st.Median)
			}
		}
	}
	return -0.5, float64(g.groups) - 0.5, 0, ymax
}

// groupedTicks are gonum's default tick positions with plainer labels:
// thousands separated (connection rates run to five or six digits) and no
// trailing zeros (gonum prints 250 as "250.00" when a step is fractional
// elsewhere on the axis).
type groupedTicks struct{}

// Ticks implements plot.Ticker.
func (groupedTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	// gonum can label as few as two ticks (0 and 25,000 on a 0–28,000
	// axis); then the unlabelled ones are labelled too.
	labelAll := slices.IndexFunc(ticks, func(t plot.Tick) bool { return t.Label != "" }) >= 0 &&
		len(slices.DeleteFunc(slices.Clone(ticks), func(t plot.Tick) bool { return t.Label == "" })) < 3
	for i, t := range ticks {
		switch {
		case t.Label == "" && !labelAll:
		case t.Value == math.Trunc(t.Value):
			ticks[i].Label = groupThousands(t.Value)
		default:
			ticks[i].Label = strconv.FormatFloat(t.Value, 'f', -1, 64)
		}
	}
	return ticks
}

// groupThousands prints v rounded to an integer with comma separators.
func groupThousands(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
