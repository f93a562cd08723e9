package results

// The HTML report: one self-contained report.html (inline SVG charts drawn
// with the same code as the PNGs, inline CSS, no script, font or image
// fetched from anywhere) from one or more runs of one scenario and/or a
// conformance run. report.tmpl.html is its page; this file builds what the
// page shows, reportchart.go draws its charts.

import (
	"bytes"
	"cmp"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed report.tmpl.html
var reportTemplateText string

var reportTemplate = template.Must(template.New("report").Parse(reportTemplateText))

// ErrMixedScenarios is returned by WriteReport for runs of different
// scenarios: their figures measure different things and are never set side
// by side.
var ErrMixedScenarios = errors.New("runs of different scenarios")

// ReportInput is what a report is made of: runs of one scenario, side by
// side, and/or a conformance run. At least one of the two is needed.
type ReportInput struct {
	Runs    []*Run
	Conform *ConformRun
	// Names label the runs (e.g. their directories); the run id when empty.
	Names []string
}

// WriteReportFile writes the report of in to path.
func WriteReportFile(path string, in ReportInput) error {
	var b bytes.Buffer
	if err := WriteReport(&b, in); err != nil {
		return err
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// WriteReport renders the report of in as one HTML page: the question and
// each run's setup, the findings the 95% intervals support, the
// ratio-to-direct chart, the QPS and p90 charts, the scale curves, each with
// its values in a table, the summary table, the conformance matrix and the
// datapaths not measured. Figures measured at another site (a VM kernel)
// get their own panel, never an axis shared with the host's. Runs of
// different scenarios are refused with an error wrapping ErrMixedScenarios.
func WriteReport(w io.Writer, in ReportInput) error {
	page, err := buildReport(in)
	if err != nil {
		return err
	}
	if err := reportTemplate.Execute(w, page); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// reportPage is what the template renders.
type reportPage struct {
	Title     string
	Question  string
	Setup     setupTable
	Scenarios []scenarioBlock
	Findings  []findingGroup
	Skipped   []string
	Sections  []chartSection
	Summaries []summaryTable
	Conform   *conformMatrix
	Legend    []legendItem
	Notes     []string
}

type legendItem struct {
	Name  string
	Color template.CSS
}

// setupTable has one column per run.
type setupTable struct {
	Heads []string
	Rows  []setupRow
}

type setupRow struct {
	Label  string
	Values []string
}

type scenarioBlock struct {
	Name string
	JSON string
}

type findingGroup struct {
	Heading string
	Lines   []string
}

// chartSection is one kind of chart: a panel per run and site.
type chartSection struct {
	ID     string
	Title  string
	Note   string
	Panels []chartPanel
}

type chartPanel struct {
	Heading string
	SVG     template.HTML
	Table   valueTable
}

// valueTable is a chart's values: a row per datapath, a column per point.
type valueTable struct {
	Caption string
	Heads   []string
	Rows    []valueRow
}

type valueRow struct {
	Name  string
	Color template.CSS
	Cells []string
}

type summaryTable struct {
	Heading string
	Heads   []string
	Rows    []valueRow
	Notes   []string
}

type conformMatrix struct {
	Heading   string
	Datapaths []string
	Rows      []conformRow
}

type conformRow struct {
	Scenario  string
	Behaviour string
	Advisory  string
	Cells     []conformCellView
}

type conformCellView struct {
	Class   string
	Mark    string
	Status  string
	Summary string
}

// reportRun is one run with its label and what the report groups it by.
type reportRun struct {
	name string
	run  *Run
	sums []Summary // every summary, open loop included
}

// sites are the run's sites in summary order, the host ("") first.
func (r reportRun) sites() []string { return sitesOf(r.sums) }

// sitesOf are the sites of sums in their order, the host ("") first.
func sitesOf(sums []Summary) []string {
	var out []string
	for _, s := range sums {
		if !slices.Contains(out, s.Site) {
			out = append(out, s.Site)
		}
	}
	// Stable: the host first, the other sites as they came.
	elsewhere := func(site string) int {
		if site == "" {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(out, func(a, b string) int { return cmp.Compare(elsewhere(a), elsewhere(b)) })
	return out
}

func buildReport(in ReportInput) (*reportPage, error) {
	if len(in.Runs) == 0 && in.Conform == nil {
		return nil, fmt.Errorf("report: %w", ErrNoData)
	}
	runs := make([]reportRun, len(in.Runs))
	for i, r := range in.Runs {
		if r == nil {
			return nil, fmt.Errorf("report: run %d: %w", i+1, ErrNoData)
		}
		name := r.ID
		if i < len(in.Names) && in.Names[i] != "" {
			name = in.Names[i]
		}
		runs[i] = reportRun{name: name, run: r, sums: allSummariesOf(r)}
	}
	if err := sameScenario(runs); err != nil {
		return nil, err
	}
	colors := reportColors(runs, in.Conform)
	page := &reportPage{
		Title:    "svclab report",
		Question: "What does a Kubernetes Service datapath cost, measured against no Service at all (direct), and does it behave like a Service should?",
	}
	for _, name := range colors.order {
		page.Legend = append(page.Legend, legendItem{Name: name, Color: cssColor(colors.byName[name])})
	}
	page.Setup = setupOf(runs, in.Conform)
	for _, r := range runs {
		page.Scenarios = append(page.Scenarios, scenarioBlock{Name: r.name, JSON: indentJSON(r.run.Scenario)})
		page.Findings = append(page.Findings, findingsOf(r, len(runs) > 1)...)
		page.Skipped = append(page.Skipped, skippedLines(r, len(runs) > 1)...)
	}
	if in.Conform != nil {
		for _, d := range in.Conform.Datapaths {
			if d.Skipped != "" {
				page.Skipped = append(page.Skipped, fmt.Sprintf("conformance: %s (%s)", SiteName(d.Name, d.Site), d.Skipped))
			}
		}
	}
	sections, err := chartSections(runs, colors)
	if err != nil {
		return nil, err
	}
	page.Sections = sections
	for _, r := range runs {
		page.Summaries = append(page.Summaries, summaryTableOf(r, colors, len(runs) > 1))
	}
	if in.Conform != nil {
		page.Conform = conformMatrixOf(in.Conform)
	}
	if len(runs) > 1 {
		page.Notes = append(page.Notes, "Runs are set side by side, never pooled: compare ratios to direct within a run; absolute figures of different runs differ with the machine and its load.")
	}
	return page, nil
}

// sameScenario refuses runs whose scenarios differ in name, topology or
// service: workload settings (repetitions, durations, concurrency) may
// differ and are shown in the setup table.
func sameScenario(runs []reportRun) error {
	type key struct {
		Name     string          `json:"name"`
		Topology json.RawMessage `json:"topology"`
		Service  json.RawMessage `json:"service"`
	}
	var first key
	for i, r := range runs {
		var k key
		if len(r.run.Scenario) > 0 {
			if err := json.Unmarshal(r.run.Scenario, &k); err != nil {
				return fmt.Errorf("report: run %s: scenario: %w", r.name, err)
			}
		}
		k.Topology, k.Service = compactJSON(k.Topology), compactJSON(k.Service)
		if i == 0 {
			first = k
			continue
		}
		switch {
		case k.Name != first.Name:
			return fmt.Errorf("report: %w: %s is scenario %q, %s is %q; a report sets side by side only runs of one scenario",
				ErrMixedScenarios, runs[0].name, first.Name, r.name, k.Name)
		case !bytes.Equal(k.Topology, first.Topology) || !bytes.Equal(k.Service, first.Service):
			return fmt.Errorf("report: %w: %s and %s are both scenario %q but with a different topology or service; a report sets side by side only runs of one scenario",
				ErrMixedScenarios, runs[0].name, r.name, k.Name)
		}
	}
	return nil
}

func compactJSON(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}

func indentJSON(b json.RawMessage) string {
	if len(b) == 0 {
		return "(none recorded)"
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return string(b)
	}
	return out.String()
}

// reportPalette gives every datapath one colour across all charts and
// tables of a report, by the order datapaths first appear in the runs. The
// key is the datapath without its site: a datapath's host and VM panels
// share its colour (they never share an axis).
type reportPalette struct {
	order  []string
	byName map[string]color.Color
}

func reportColors(runs []reportRun, conf *ConformRun) reportPalette {
	p := reportPalette{byName: map[string]color.Color{}}
	add := func(name string) {
		if _, ok := p.byName[name]; !ok {
			p.byName[name] = paletteColor(len(p.order))
			p.order = append(p.order, name)
		}
	}
	for _, r := range runs {
		for _, s := range r.sums {
			add(s.Datapath)
		}
	}
	_ = conf // the matrix marks cells by status, not by datapath colour
	return p
}

// forSite is the colour map the chart code reads (keyed by the name it
// shows, Summary.name) for the summaries of one site.
func (p reportPalette) forSite(sums []Summary) map[string]color.Color {
	out := map[string]color.Color{}
	for _, s := range sums {
		out[s.name()] = p.byName[s.Datapath]
	}
	return out
}

func cssColor(c color.Color) template.CSS {
	r, g, b, _ := c.RGBA()
	return template.CSS(fmt.Sprintf("#%02x%02x%02x", r>>8, g>>8, b>>8))
}

// setupOf is the setup table: a row per fact, a column per run.
func setupOf(runs []reportRun, conf *ConformRun) setupTable {
	var t setupTable
	type col struct {
		name string
		id   string
		when time.Time
		env  Env
		scen map[string]json.RawMessage
		dps  string
	}
	var cols []col
	for _, r := range runs {
		var scen map[string]json.RawMessage
		_ = json.Unmarshal(r.run.Scenario, &scen)
		var dps []string
		for _, d := range r.run.Datapaths {
			n := SiteName(d.Name, d.Site)
			if d.Skipped != "" {
				n += " (skipped)"
			}
			dps = append(dps, n)
		}
		for _, s := range r.sums {
			if n := s.name(); s.Site != "" && !slices.Contains(dps, n) {
				dps = append(dps, n)
			}
		}
		cols = append(cols, col{r.name, r.run.ID, r.run.Started, r.run.Env, scen, strings.Join(dps, ", ")})
	}
	if conf != nil {
		var dps []string
		for _, d := range conf.Datapaths {
			dps = append(dps, SiteName(d.Name, d.Site))
		}
		cols = append(cols, col{"conformance", conf.ID, conf.Started, conf.Env, nil, strings.Join(dps, ", ")})
	}
	for _, c := range cols {
		t.Heads = append(t.Heads, c.name)
	}
	row := func(label string, f func(col) string) {
		r := setupRow{Label: label}
		any := false
		for _, c := range cols {
			v := f(c)
			any = any || v != ""
			if v == "" {
				v = "–"
			}
			r.Values = append(r.Values, v)
		}
		if any {
			t.Rows = append(t.Rows, r)
		}
	}
	row("scenario", func(c col) string {
		var name, desc string
		_ = json.Unmarshal(c.scen["name"], &name)
		_ = json.Unmarshal(c.scen["description"], &desc)
		if desc != "" {
			return name + " — " + desc
		}
		return name
	})
	row("topology", func(c col) string { return flatJSON(c.scen["topology"]) })
	row("service", func(c col) string { return flatJSON(c.scen["service"]) })
	row("workload", func(c col) string { return flatJSON(c.scen["workload"]) })
	row("scale", func(c col) string { return flatJSON(c.scen["scale"]) })
	row("datapaths", func(c col) string { return c.dps })
	row("kernel", func(c col) string { return c.env.Kernel })
	row("CPU", func(c col) string {
		if c.env.CPUs > 0 {
			return fmt.Sprintf("%s (%d CPUs)", c.env.CPUModel, c.env.CPUs)
		}
		return c.env.CPUModel
	})
	row("svclab revision", func(c col) string { return c.env.GitRev })
	row("Go", func(c col) string { return c.env.GoVersion })
	row("host", func(c col) string { return c.env.Hostname })
	row("date", func(c col) string {
		if c.when.IsZero() {
			return ""
		}
		return c.when.UTC().Format("2006-01-02 15:04 UTC")
	})
	row("run id", func(c col) string { return c.id })
	return t
}

// flatJSON prints a small JSON object as "key: value, …" in its key order.
func flatJSON(b json.RawMessage) string {
	if len(b) == 0 {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return strings.TrimSpace(string(compactJSON(b)))
	}
	var parts []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			break
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			break
		}
		s := string(compactJSON(v))
		if uq, err := strconv.Unquote(s); err == nil {
			s = uq
		}
		parts = append(parts, fmt.Sprintf("%v: %s", k, s))
	}
	return strings.Join(parts, ", ")
}

// skippedLines name the datapaths a run did not measure, with the reason.
func skippedLines(r reportRun, withRun bool) []string {
	var out []string
	for _, n := range skippedNotes(r.run) {
		if withRun {
			n = r.name + ": " + n
		}
		out = append(out, n)
	}
	for _, l := range r.run.ScaleLimits {
		s := fmt.Sprintf("%s did not reach %s services × %s endpoints: %s.", l.name(),
			groupThousands(float64(l.Services)), groupThousands(float64(l.Endpoints)), l.Reason)
		if withRun {
			s = r.name + ": " + s
		}
		out = append(out, s)
	}
	return out
}

// siteHeading names a panel: the run (when several) and where it was
// measured.
func siteHeading(r reportRun, site string, withRun bool) string {
	where := "this host"
	if site != "" {
		where = site + " (measured elsewhere: not comparable with the host's figures)"
	}
	if withRun {
		return r.name + " — " + where
	}
	return where
}

// sumsAt are the summaries of one site, closed loop only.
func sumsAt(sums []Summary, site string) []Summary {
	var out []Summary
	for _, s := range sums {
		if s.Site == site && s.Model == "" {
			out = append(out, s)
		}
	}
	return out
}

// shortPoint names a point in a table head or a finding; the scale only
// when the points have more than one (scaled).
func shortPoint(p point, scaled bool) string {
	switch {
	case p.model != "":
		return fmt.Sprintf("open loop at %s%% of capacity", strconv.FormatFloat(100*p.fraction, 'f', -1, 64))
	case scaled && p.services > 0:
		return fmt.Sprintf("%s svc × %s ep, c=%d", groupThousands(float64(p.services)), groupThousands(float64(p.endpoints)), p.concurrency)
	default:
		return fmt.Sprintf("c=%d", p.concurrency)
	}
}

// multiScale reports whether points span more than one scale point.
func multiScale(pts []point) bool {
	for _, p := range pts {
		if p.services != pts[0].services || p.endpoints != pts[0].endpoints {
			return true
		}
	}
	return false
}

// fmtStatCell prints a median with its 95% interval, or its min–max in
// parentheses when there is no interval.
func fmtStatCell(st Stat, f func(float64) string) string {
	if len(st.Values) == 0 {
		return "–"
	}
	switch {
	case st.CI != nil:
		return fmt.Sprintf("%s [%s–%s]", f(st.Median), f(st.CI.Lo), f(st.CI.Hi))
	case st.Max > st.Min:
		return fmt.Sprintf("%s (%s–%s)", f(st.Median), f(st.Min), f(st.Max))
	default:
		return f(st.Median)
	}
}

// summaryTableOf is the run's summary table, its columns from the metric
// table: every summarised metric with a table column that some summary
// measured, its ratio to direct beside it when it has one.
func summaryTableOf(r reportRun, colors reportPalette, withRun bool) summaryTable {
	t := summaryTable{Heading: "Summary"}
	if withRun {
		t.Heading += ": " + r.name
	}
	t.Heads = []string{"datapath", "point", "reps"}
	var ms []Metric
	for _, m := range metricTable {
		if m.Stat == nil || m.Column == "" || !measured(r.sums, m) {
			continue
		}
		ms = append(ms, m)
		t.Heads = append(t.Heads, m.Label)
		if m.Ratio != nil {
			t.Heads = append(t.Heads, "× direct")
		}
	}
	t.Heads = append(t.Heads, "errors", "SYN rtx")
	var pts []point
	for _, s := range r.sums {
		pts = append(pts, pointOf(s))
	}
	for _, s := range r.sums {
		row := valueRow{Name: s.name(), Color: cssColor(colors.byName[s.Datapath])}
		row.Cells = append(row.Cells, shortPoint(pointOf(s), multiScale(pts)), strconv.Itoa(s.Repetitions))
		for _, m := range ms {
			row.Cells = append(row.Cells, fmtStatCell(*m.Stat(&s), m.Format))
			if m.Ratio != nil {
				row.Cells = append(row.Cells, fmtRatio(*m.Ratio(&s)))
			}
		}
		row.Cells = append(row.Cells, strconv.FormatInt(s.Errors, 10), strconv.FormatInt(s.SynRetrans, 10))
		t.Rows = append(t.Rows, row)
	}
	t.Notes = append(t.Notes, "A figure is the median over repetitions, [lo–hi] its 95 % confidence interval, (lo–hi) the min–max where the repetitions are too few (fewer than 6) for an interval. × direct: the median's ratio to direct's median at the same site and point.")
	if g := r.run.Generator; g != nil {
		t.Notes = append(t.Notes, fmt.Sprintf("Load generator alone over loopback (no datapath): %s connections/s, p90 %s µs at concurrency %d; a datapath near it is bound by the generator.",
			groupThousands(g.Workload.QPS), fmtMicros(g.Workload.Latency.P90), g.Concurrency))
	}
	return t
}

// conformMatrixOf is the behaviour × datapath matrix; every cell has a mark
// and a word besides its colour.
func conformMatrixOf(c *ConformRun) *conformMatrix {
	m := &conformMatrix{Heading: "Conformance: " + c.ID}
	for _, d := range c.Datapaths {
		m.Datapaths = append(m.Datapaths, SiteName(d.Name, d.Site))
	}
	for _, s := range c.Scenarios {
		row := conformRow{Scenario: s.Name, Behaviour: s.Behaviour, Advisory: s.Advisory}
		for _, d := range c.Datapaths {
			cell, ok := c.Cell(s.Name, d.Name)
			v := conformCellView{Class: "none", Mark: "·", Status: "not run"}
			if ok {
				v.Status, v.Summary = cell.Status, cell.Summary
				// "n/a" is not a CSS class name.
				v.Class = strings.ReplaceAll(cell.Status, "/", "")
				v.Mark = map[string]string{CellPass: "✓", CellFail: "✗", CellSkip: "–", CellError: "!", CellNA: "∅"}[cell.Status]
			} else if d.Skipped != "" {
				v.Summary = d.Skipped
			}
			row.Cells = append(row.Cells, v)
		}
		m.Rows = append(m.Rows, row)
	}
	return m
}

// ReadConformRun loads a conformance.json, refusing other schema versions.
func ReadConformRun(path string) (*ConformRun, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read conformance: %w", err)
	}
	var r ConformRun
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode conformance %s: %w", path, err)
	}
	if r.SchemaVersion != ConformanceSchemaVersion {
		return nil, fmt.Errorf("conformance %s: schema_version %d, this svclab reads %d", path, r.SchemaVersion, ConformanceSchemaVersion)
	}
	return &r, nil
}
