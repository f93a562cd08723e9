package results

// The report's charts (inline SVG, drawn by the code that draws the PNGs)
// and the findings read from the intervals.

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"regexp"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// reportScaleCharts are the scale metrics the report draws (the others are
// in its summary table).
var reportScaleCharts = []string{"qps", "p90", "cpu_per_conn", "datapath_ns_per_conn", "apply", "change", "state_objects"}

// chartSections are the report's charts in reading order: ratio to direct,
// QPS, p90, then the scale curves; a panel per run and site.
func chartSections(runs []reportRun, colors reportPalette) ([]chartSection, error) {
	withRun := len(runs) > 1
	ratio := chartSection{ID: "ratio", Title: "Connections per second relative to direct",
		Note: "Dots: each datapath's median QPS ÷ direct's median QPS at the same point. Whiskers: the datapath's 95 % interval (min–max where fewer than 6 repetitions) ÷ direct's median. Grey band: direct's own interval ÷ its median. Above 1: more connections per second than no Service at all."}
	qps := chartSection{ID: "qps", Title: "Connections per second",
		Note: "Bars: median over repetitions; whiskers: min–max."}
	p90 := chartSection{ID: "p90", Title: "p90 connection latency (connect to close)",
		Note: "Bars: median over repetitions; whiskers: min–max. Lower is better."}
	cost := chartSection{ID: "cost", Title: "Where the nanoseconds go: the datapath's own kernel time per connection",
		Note: "Stacks: the median of each part over the cost trials, run with the attribution probes attached (their QPS is never in the other charts). The caption gives the probes' floor subtracted from the netfilter parts and their overhead."}
	scale := chartSection{ID: "scale", Title: "How cost grows with scale",
		Note: "One line per datapath through the medians, min–max bars over repetitions; log-scale x."}
	for _, r := range runs {
		for _, site := range r.sites() {
			sums := sumsAt(r.sums, site)
			if len(sums) == 0 {
				continue
			}
			heading := siteHeading(r, site, withRun)
			cols := colors.forSite(sums)
			if p, ok, err := ratioPanel(r, sums, cols, colors, heading); err != nil {
				return nil, err
			} else if ok {
				ratio.Panels = append(ratio.Panels, p)
			}
			for _, spec := range []struct {
				sec  *chartSection
				spec chartSpec
				m    Metric
			}{
				{&qps, qpsChart(r.run, sums, site), mustMetric("qps")},
				{&p90, p90Chart(r.run, sums, site), mustMetric("p90")},
			} {
				svg, err := chartSVG(spec.spec.title, func(c draw.Canvas) error { return drawChart(c, spec.spec, r.run, sums, cols) })
				if err != nil {
					return nil, err
				}
				spec.sec.Panels = append(spec.sec.Panels, chartPanel{Heading: heading, SVG: svg,
					Table: statTable(sums, colors, spec.m, spec.m.Label)})
			}
			if bars, parts := costBars(sums); len(bars) > 0 {
				title := costTitle(r.run, sums)
				if site != "" {
					title += " at " + site
				}
				svg, err := chartSVG(title, func(c draw.Canvas) error { return drawCostChart(c, r.run, title, sums, bars, parts) })
				if err != nil {
					return nil, err
				}
				m := mustMetric("datapath_ns_per_conn")
				cost.Panels = append(cost.Panels, chartPanel{Heading: heading, SVG: svg, Table: statTable(sums, colors, m, m.Label)})
			}
			for _, sw := range scaleSweeps(sums, r.run.ScaleLimits) {
				for _, key := range reportScaleCharts {
					m := mustMetric(key)
					if m.Scale == nil || !measured(sw.sums, m) {
						continue
					}
					svg, err := chartSVG(scaleTitle(sw, m), func(c draw.Canvas) error { return drawScaleChart(c, r.run, sw, m, cols) })
					if err != nil {
						return nil, err
					}
					scale.Panels = append(scale.Panels, chartPanel{Heading: heading + ": " + scaleTitle(sw, m), SVG: svg,
						Table: statTable(sw.sums, colors, m, m.Label)})
				}
			}
		}
	}
	var out []chartSection
	for _, s := range []chartSection{ratio, qps, p90, cost, scale} {
		if len(s.Panels) > 0 {
			out = append(out, s)
		}
	}
	return out, nil
}

// statTable is a chart's values: a row per datapath, a column per point.
func statTable(sums []Summary, colors reportPalette, m Metric, caption string) valueTable {
	var pts []point
	for _, s := range sums {
		if !slices.Contains(pts, pointOf(s)) {
			pts = append(pts, pointOf(s))
		}
	}
	slices.SortFunc(pts, comparePoint)
	t := valueTable{Caption: caption + ": median [95 % interval] or (min–max)", Heads: []string{"datapath"}}
	for _, p := range pts {
		t.Heads = append(t.Heads, shortPoint(p, multiScale(pts)))
	}
	idx := map[string]int{}
	for _, s := range sums {
		st := *m.Stat(&s)
		if len(st.Values) == 0 {
			continue
		}
		i, ok := idx[s.name()]
		if !ok {
			i = len(t.Rows)
			idx[s.name()] = i
			t.Rows = append(t.Rows, valueRow{Name: s.name(), Color: cssColor(colors.byName[s.Datapath]), Cells: slices.Repeat([]string{"–"}, len(pts))})
		}
		t.Rows[i].Cells[slices.Index(pts, pointOf(s))] = fmtStatCell(st, m.Format)
	}
	return t
}

// ratioPanel is the ratio-to-direct chart of one site's summaries; ok is
// false when direct was not measured there.
func ratioPanel(r reportRun, sums []Summary, cols map[string]color.Color, colors reportPalette, heading string) (chartPanel, bool, error) {
	d := newRatioDots(sums, cols)
	if d == nil {
		return chartPanel{}, false, nil
	}
	title := WorkloadOf(r.run).Title() + ": connections/s ÷ direct's median (whiskers: 95 % interval, min–max under 6 repetitions)"
	if sums[0].Site != "" {
		title += " at " + sums[0].Site
	}
	svg, err := chartSVG(title, func(c draw.Canvas) error { return drawRatioChart(c, r.run, title, d) })
	if err != nil {
		return chartPanel{}, false, err
	}
	t := valueTable{Caption: "QPS ÷ direct's median QPS: ratio [interval ÷ direct's median]", Heads: []string{"datapath"}}
	for _, p := range d.levels {
		t.Heads = append(t.Heads, shortPoint(p, multiScale(d.levels)))
	}
	for i, s := range d.series {
		row := valueRow{Name: s.name, Color: cssColor(colors.byName[d.datapaths[i]])}
		for _, p := range d.pts[i] {
			if p == nil {
				row.Cells = append(row.Cells, "–")
				continue
			}
			row.Cells = append(row.Cells, fmt.Sprintf("%.2f [%.2f–%.2f]", p.ratio, p.lo, p.hi))
		}
		t.Rows = append(t.Rows, row)
	}
	return chartPanel{Heading: heading, SVG: svg, Table: t}, true, nil
}

// ratioPt is one datapath's QPS ratio to direct at a point, with the
// whisker (its interval over direct's median).
type ratioPt struct{ ratio, lo, hi float64 }

// ratioDots draws the ratio chart: groups are points, a dot and whisker per
// datapath, a grey band per group for direct's own interval and a line at 1.
type ratioDots struct {
	groupedBars
	levels    []point
	datapaths []string
	pts       [][]*ratioPt
	bands     []*ratioPt
}

func newRatioDots(sums []Summary, cols map[string]color.Color) *ratioDots {
	direct := map[point]Summary{}
	for _, s := range sums {
		if s.Datapath == DirectDatapath && s.QPS.Median > 0 {
			direct[pointOf(s)] = s
		}
	}
	if len(direct) == 0 {
		return nil
	}
	d := &ratioDots{}
	for p := range direct {
		d.levels = append(d.levels, p)
	}
	slices.SortFunc(d.levels, comparePoint)
	d.groups = len(d.levels)
	d.bands = make([]*ratioPt, len(d.levels))
	idx := map[string]int{}
	for _, s := range sums {
		ds, ok := direct[pointOf(s)]
		if !ok {
			continue
		}
		g := slices.Index(d.levels, pointOf(s))
		lo, hi := interval(ds.QPS)
		if s.Datapath == DirectDatapath {
			d.bands[g] = &ratioPt{1, lo / ds.QPS.Median, hi / ds.QPS.Median}
			continue
		}
		i, ok := idx[s.name()]
		if !ok {
			i = len(d.series)
			idx[s.name()] = i
			d.series = append(d.series, barSeries{name: s.name(), color: cols[s.name()]})
			d.datapaths = append(d.datapaths, s.Datapath)
			d.pts = append(d.pts, make([]*ratioPt, len(d.levels)))
		}
		slo, shi := interval(s.QPS)
		m := ds.QPS.Median
		d.pts[i][g] = &ratioPt{s.QPS.Median / m, slo / m, shi / m}
	}
	if len(d.series) == 0 {
		return nil
	}
	return d
}

// interval is a Stat's 95% interval, or its min–max without one.
func interval(st Stat) (lo, hi float64) {
	if st.CI != nil {
		return st.CI.Lo, st.CI.Hi
	}
	return st.Min, st.Max
}

// Plot implements plot.Plotter.
func (d *ratioDots) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	for g, b := range d.bands {
		if b == nil || b.hi <= b.lo {
			continue
		}
		x0, x1 := trX(float64(g)-0.48), trX(float64(g)+0.48)
		y0, y1 := trY(b.lo), trY(b.hi)
		c.FillPolygon(color.Gray{0xE4}, c.ClipPolygonY([]vg.Point{{X: x0, Y: y0}, {X: x0, Y: y1}, {X: x1, Y: y1}, {X: x1, Y: y0}}))
	}
	one := draw.LineStyle{Color: color.Gray{0x40}, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(4), vg.Points(3)}}
	c.StrokeLine2(one, trX(-0.5), trY(1), trX(float64(d.groups)-0.5), trY(1))
	for slot, s := range d.series {
		ws := draw.LineStyle{Color: s.color, Width: vg.Points(1.5)}
		for g, pt := range d.pts[slot] {
			if pt == nil {
				continue
			}
			centre, _ := d.barX(g, slot)
			x := trX(centre)
			if pt.hi > pt.lo {
				capW := vg.Points(3)
				c.StrokeLine2(ws, x, trY(pt.lo), x, trY(pt.hi))
				c.StrokeLine2(ws, x-capW, trY(pt.lo), x+capW, trY(pt.lo))
				c.StrokeLine2(ws, x-capW, trY(pt.hi), x+capW, trY(pt.hi))
			}
			c.DrawGlyph(draw.GlyphStyle{Color: s.color, Radius: vg.Points(3.5), Shape: draw.CircleGlyph{}}, vg.Point{X: x, Y: trY(pt.ratio)})
		}
	}
}

// DataRange implements plot.DataRanger: every whisker, band and 1.
func (d *ratioDots) DataRange() (xmin, xmax, ymin, ymax float64) {
	ymin, ymax = 1, 1
	for _, ps := range append(slices.Clone(d.pts), d.bands) {
		for _, p := range ps {
			if p != nil {
				ymin, ymax = min(ymin, p.lo, p.ratio), max(ymax, p.hi, p.ratio)
			}
		}
	}
	return -0.5, float64(d.groups) - 0.5, ymin, ymax
}

func drawRatioChart(c draw.Canvas, run *Run, title string, d *ratioDots) error {
	capText := strings.Join(append([]string{"Dots: median QPS ÷ direct's median at the same point; whiskers: the datapath's 95 % interval (min–max under 6 repetitions) ÷ direct's median; grey band: direct's own."}, skippedNotes(run)...), " ")
	area := drawFrame(c, title, subtitle(run), capText, d.series)
	p := newChartPlot("concurrent connections", "QPS ÷ direct's QPS")
	names := make([]string, len(d.levels))
	scales := multiScale(d.levels)
	for i, l := range d.levels {
		names[i] = fmt.Sprint(l.concurrency)
		if scales {
			names[i] = fmt.Sprintf("%d×%d, c=%d", l.services, l.endpoints, l.concurrency)
		}
	}
	if scales {
		p.X.Label.Text = "services × endpoints, concurrent connections"
	}
	p.NominalX(names...)
	p.Add(horizontalGrid(), d)
	_, _, lo, hi := d.DataRange()
	pad := (hi - lo) * 0.08
	if pad == 0 {
		pad = 0.05
	}
	p.X.Min, p.X.Max = -0.5, float64(d.groups)-0.5
	p.Y.Min, p.Y.Max = max(0, lo-pad), hi+pad
	p.X.Padding, p.Y.Padding = 0, 0
	p.Draw(area)
	return nil
}

// Report charts are drawn smaller than the PNGs (same fonts), so that
// scaled to a half-page panel their text is still read at a glance.
const (
	reportChartWidth  = 6.4 * vg.Inch
	reportChartHeight = 3.9 * vg.Inch
)

var svgSize = regexp.MustCompile(`^<svg width="[^"]*" height="[^"]*"`)

// chartSVG renders a chart of the standard size as an inline <svg>
// element: no XML prolog, scaled to its container, the embedded chart font
// named with its metric-compatible fallbacks so no font is fetched.
func chartSVG(label string, drawFn func(draw.Canvas) error) (template.HTML, error) {
	c := vgsvg.NewWith(vgsvg.UseWH(reportChartWidth, reportChartHeight))
	if err := drawFn(draw.New(c)); err != nil {
		return "", fmt.Errorf("report chart %q: %w", label, err)
	}
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return "", fmt.Errorf("report chart %q: %w", label, err)
	}
	s := b.String()
	i := strings.Index(s, "<svg")
	if i < 0 {
		return "", fmt.Errorf("report chart %q: no <svg> element", label)
	}
	s = svgSize.ReplaceAllString(s[i:], `<svg class="chart" role="img" aria-label="`+template.HTMLEscapeString(label)+`"`)
	s = strings.ReplaceAll(s, "font-family:Liberation Sans;", "font-family:'Liberation Sans',Arimo,Arial,Helvetica,sans-serif;")
	return template.HTML(s), nil // #nosec: generated by vgsvg from our own figures and escaped labels
}

// findingsOf are the sentences a run's 95% intervals support, per site:
// a difference is claimed only where two intervals do not overlap.
func findingsOf(r reportRun, withRun bool) []findingGroup {
	var out []findingGroup
	for _, site := range r.sites() {
		sums := sumsAt(r.sums, site)
		if len(sums) == 0 {
			continue
		}
		g := findingGroup{Heading: siteHeading(r, site, withRun)}
		g.Lines = siteFindings(sums)
		out = append(out, g)
	}
	return out
}

// siteFindings compares, at each point, every datapath with direct and the
// first datapath of the run with every other, in QPS and p90.
func siteFindings(sums []Summary) []string {
	var pts []point
	byPoint := map[point][]Summary{}
	for _, s := range sums {
		p := pointOf(s)
		if _, ok := byPoint[p]; !ok {
			pts = append(pts, p)
		}
		byPoint[p] = append(byPoint[p], s)
	}
	slices.SortFunc(pts, comparePoint)
	scaled := multiScale(pts)
	var lines []string
	noCI := false
	for _, p := range pts {
		ss := byPoint[p]
		var pairs [][2]Summary
		var ref *Summary
		for i := range ss {
			if ss[i].Datapath != DirectDatapath && ref == nil {
				ref = &ss[i]
			}
		}
		for i, s := range ss {
			if s.Datapath == DirectDatapath {
				continue
			}
			if j := slices.IndexFunc(ss, func(x Summary) bool { return x.Datapath == DirectDatapath }); j >= 0 {
				pairs = append(pairs, [2]Summary{s, ss[j]})
			}
			if ref != nil && &ss[i] != ref {
				pairs = append(pairs, [2]Summary{*ref, s})
			}
		}
		for _, key := range []string{"qps", "p90"} {
			m := mustMetric(key)
			var same []string
			for _, pr := range pairs {
				a, b := *m.Stat(&pr[0]), *m.Stat(&pr[1])
				if a.CI == nil || b.CI == nil || a.Median == 0 || b.Median == 0 {
					noCI = noCI || len(a.Values) > 0 && len(b.Values) > 0
					continue
				}
				if a.CI.Lo <= b.CI.Hi && b.CI.Lo <= a.CI.Hi {
					same = append(same, pr[0].name()+" and "+pr[1].name())
					continue
				}
				lines = append(lines, differenceLine(shortPoint(p, scaled), m, pr[0], pr[1], a, b))
			}
			if len(same) > 0 {
				what := "QPS"
				if key == "p90" {
					what = "p90 latency"
				}
				lines = append(lines, fmt.Sprintf("%s: no difference resolved in %s (95 %% intervals overlap) between %s.", shortPoint(p, scaled), what, strings.Join(same, "; ")))
			}
		}
	}
	if noCI {
		lines = append(lines, "Points with fewer than 6 repetitions have no 95 % interval, so no difference is claimed there (use --repetitions 6 or more); the charts show their min–max.")
	}
	return lines
}

func differenceLine(at string, m Metric, sa, sb Summary, a, b Stat) string {
	r := a.Median / b.Median
	if m.Key == "qps" {
		return fmt.Sprintf("%s: %s %.2f× %s QPS, 95 %% intervals %s–%s vs %s–%s conn/s.", at, sa.name(), r, possessive(sb.name()),
			groupThousands(a.CI.Lo), groupThousands(a.CI.Hi), groupThousands(b.CI.Lo), groupThousands(b.CI.Hi))
	}
	return fmt.Sprintf("%s: %s p90 latency %.2f× %s, 95 %% intervals %s–%s vs %s–%s µs.", at, possessive(sa.name()), r, possessive(sb.name()),
		fmtMicros(a.CI.Lo), fmtMicros(a.CI.Hi), fmtMicros(b.CI.Lo), fmtMicros(b.CI.Hi))
}

func possessive(name string) string {
	if strings.HasSuffix(name, "s") {
		return name + "'"
	}
	return name + "'s"
}
