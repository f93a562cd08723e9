package results

import (
	"bytes"
	"encoding/json"
	"image/color"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// referenceRun is the committed CI reference run: 10 repetitions of
// socketlb, iptables and direct at concurrency 8, so its figures have 95%
// intervals.
func referenceRun(t *testing.T) *Run {
	t.Helper()
	r, err := Read(filepath.Join("..", "ci", "reference", "results.json"))
	require.NoError(t, err)
	return r
}

// withVMSite adds ipvs and direct measured at "debian-6.12" to a copy of
// run, at a tenth of the host's rates, as `make bench` records a VM.
func withVMSite(t *testing.T, run *Run) *Run {
	t.Helper()
	b, err := json.Marshal(run)
	require.NoError(t, err)
	var r Run
	require.NoError(t, json.Unmarshal(b, &r))
	for _, tr := range run.Trials {
		if tr.Datapath != "direct" && tr.Datapath != "iptables" {
			continue
		}
		vm := tr
		vm.Site = "debian-6.12"
		if tr.Datapath == "iptables" {
			vm.Datapath = "ipvs"
		}
		vm.Workload.QPS /= 10
		r.Trials = append(r.Trials, vm)
	}
	r.Datapaths = append(r.Datapaths, DatapathInfo{Name: "ipvs", Skipped: "kernel lacks IP_VS"})
	r.Summary = Summarize(r.Trials)
	return &r
}

func renderReport(t *testing.T, in ReportInput) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, WriteReport(&b, in))
	return b.String()
}

func TestReportSections(t *testing.T) {
	ref := referenceRun(t)
	vm := withVMSite(t, ref)
	conf := &ConformRun{ID: "conf-1", Datapaths: []DatapathInfo{{Name: "socketlb"}, {Name: "ipvs", Skipped: "no IPVS"}},
		Scenarios: []ConformScenario{{Name: "basic", Behaviour: "reaches every backend"}},
		Cells:     []ConformCell{{Scenario: "basic", Datapath: "socketlb", Status: CellPass}}}
	tests := []struct {
		name string
		in   ReportInput
		// want appear in this order; absent must not appear.
		want   []string
		absent []string
		svgs   int
	}{{
		name: "reference run",
		in:   ReportInput{Runs: []*Run{ref}},
		want: []string{`id="setup"`, "ci-gate", "6.18.44-fc-v657", "AMD EPYC (2 CPUs)", "199a85c5", "2026-11-25",
			`id="findings"`, `id="ratio"`, `id="qps"`, `id="p90"`, `id="summary"`, "Scenario as run"},
		absent: []string{`id="scale"`, `id="conformance"`, "debian-6.12", "<script", "<img", "<link", `src="`, "url("},
		svgs:   3,
	}, {
		name: "a VM site gets its own panels",
		in:   ReportInput{Runs: []*Run{vm}},
		want: []string{"this host", "debian-6.12 (measured elsewhere", `id="ratio"`, "at debian-6.12", "Not measured on this host: ipvs"},
		svgs: 6,
	}, {
		name: "two runs side by side",
		in:   ReportInput{Runs: []*Run{ref, ref}, Names: []string{"runA", "runB"}},
		want: []string{"<th>runA</th><th>runB</th>", "runA — this host", "runB — this host", "Summary: runA", "Summary: runB"},
		svgs: 6,
	}, {
		name: "a scale run has its curves",
		in:   ReportInput{Runs: []*Run{scaleRun()}},
		want: []string{`id="ratio"`, `id="scale"`, "Services sweep", "Endpoints sweep", `id="summary"`},
		svgs: -1,
	}, {
		name: "cost trials add the cost chart",
		in:   ReportInput{Runs: []*Run{costRun()}},
		want: []string{`id="ratio"`, `id="qps"`, `id="p90"`, `id="cost"`, "Where the nanoseconds go", "datapath ns/conn: median", `id="summary"`},
		svgs: 4,
	}, {
		name: "a scale run with cost trials has the cost curves",
		in:   ReportInput{Runs: []*Run{scaleCostRun()}},
		want: []string{`id="cost"`, `id="scale"`, "the datapath&#39;s own kernel time per connection in ns"},
		svgs: -1,
	}, {
		name:   "conformance only",
		in:     ReportInput{Conform: conf},
		want:   []string{"conformance: ipvs (no IPVS)", `id="conformance"`, "reaches every backend", "✓ pass"},
		absent: []string{`id="ratio"`, `id="summary"`},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			html := renderReport(t, tt.in)
			at := 0
			for _, w := range tt.want {
				i := strings.Index(html[at:], w)
				require.GreaterOrEqual(t, i, 0, "%q missing after offset %d", w, at)
				at += i
			}
			for _, a := range tt.absent {
				assert.False(t, strings.Contains(html, a), "%q in the report", a)
			}
			if tt.svgs >= 0 {
				assert.Equal(t, tt.svgs, strings.Count(html, `<svg class="chart"`))
			}
			assert.False(t, strings.Contains(html, "<?xml"), "an XML prolog inside HTML")
		})
	}
}

func TestReportFindings(t *testing.T) {
	ci := func(med, lo, hi float64) Stat {
		return Stat{Median: med, Min: lo, Max: hi, Values: []float64{lo, med, hi}, CI: &Interval{Lo: lo, Hi: hi, Confidence: 0.95}}
	}
	sum := func(dp string, qps, p90 Stat) Summary {
		return Summary{Datapath: dp, Concurrency: 8, Repetitions: 10, QPS: qps, P90: p90}
	}
	tests := []struct {
		name   string
		sums   []Summary
		want   []string
		absent []string
	}{{
		name: "apart intervals are claimed with the ratio",
		sums: []Summary{
			sum("socketlb", ci(13100, 12400, 13800), ci(100, 95, 105)),
			sum("iptables", ci(10000, 9500, 10300), ci(101, 96, 104)),
		},
		want:   []string{"c=8: socketlb 1.31× iptables' QPS, 95 % intervals 12,400–13,800 vs 9,500–10,300 conn/s.", "c=8: no difference resolved in p90 latency (95 % intervals overlap) between socketlb and iptables."},
		absent: []string{"no difference resolved in QPS"},
	}, {
		name: "overlapping intervals claim nothing",
		sums: []Summary{
			sum("socketlb", ci(10100, 9400, 10800), ci(100, 95, 105)),
			sum("direct", ci(10000, 9500, 10300), ci(120, 110, 130)),
		},
		want:   []string{"no difference resolved in QPS (95 % intervals overlap) between socketlb and direct.", "socketlb's p90 latency 0.83× direct's, 95 % intervals 95.0–105 vs 110–130 µs."},
		absent: []string{"× direct's QPS"},
	}, {
		name: "no interval, no claim",
		sums: []Summary{
			sum("socketlb", NewStat([]float64{13000, 13100, 13200}), NewStat([]float64{1, 2, 3})),
			sum("direct", NewStat([]float64{9000, 9100, 9200}), NewStat([]float64{5, 6, 7})),
		},
		want:   []string{"fewer than 6 repetitions have no 95 % interval"},
		absent: []string{"×", "no difference resolved"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(siteFindings(tt.sums), "\n")
			for _, w := range tt.want {
				assert.Contains(t, got, w)
			}
			for _, a := range tt.absent {
				assert.NotContains(t, got, a)
			}
		})
	}
}

func TestReportRefusesMixedScenarios(t *testing.T) {
	ref := referenceRun(t)
	other := func(scen string) *Run {
		r := *ref
		r.ID = "other"
		r.Scenario = json.RawMessage(scen)
		return &r
	}
	tests := []struct {
		name    string
		second  *Run
		wantErr string
	}{
		{"another name", other(`{"name":"default","topology":{"clients":1,"backends":12}}`), `is scenario "ci-gate", other is "default"`},
		{"same name, other topology", other(`{"name":"ci-gate","topology":{"clients":1,"backends":3},"service":{}}`), "different topology or service"},
		{"same scenario", ref, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := WriteReport(&bytes.Buffer{}, ReportInput{Runs: []*Run{ref, tt.second}})
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrMixedScenarios)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

// A datapath keeps its colour in every chart and table of a report, and
// twelve datapaths get twelve colours.
func TestReportColours(t *testing.T) {
	seen := map[color.Color]bool{}
	for i := range 12 {
		seen[paletteColor(i)] = true
	}
	assert.Len(t, seen, 12)

	html := renderReport(t, ReportInput{Runs: []*Run{withVMSite(t, referenceRun(t))}})
	swatch := regexp.MustCompile(`<span class="swatch" style="background: (#[0-9a-f]{6})"></span>([a-z-]+)`)
	colours := map[string]string{}
	for _, m := range swatch.FindAllStringSubmatch(html, -1) {
		if c, ok := colours[m[2]]; ok {
			assert.Equal(t, c, m[1], "datapath %s", m[2])
		}
		colours[m[2]] = m[1]
	}
	require.Contains(t, colours, "direct")
	require.Contains(t, colours, "ipvs")
	assert.NotEqual(t, colours["direct"], colours["ipvs"])
}

// Every scale chart the report draws is a metric with a scale chart.
func TestReportScaleChartKeys(t *testing.T) {
	for _, key := range reportScaleCharts {
		m, ok := LookupMetric(key)
		if assert.True(t, ok, key) {
			assert.NotNil(t, m.Scale, key)
		}
	}
}
