package results

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/internal/browsercheck"
)

// chromiumPath finds Debian's chromium (ci/install-deps.sh installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	p := browsercheck.Chromium()
	if p == "" {
		t.Skip("chromium not found on PATH (ci/install-deps.sh installs Debian's chromium): the report is not checked in a browser")
	}
	return p
}

// TestReportInBrowser renders the report of a fixture run (the committed CI
// reference run, with a VM site added, and a conformance run) and opens it
// in headless Chromium: no console error, no image that does not decode,
// every chart laid out, every summary row present. The report and a
// full-page screenshot are left in $SVCLAB_REPORT_CHECK_DIR (default
// results/check/fixture, beside the quick bench run cmd/svclab's
// TestPrivilegedBenchQuick leaves in results/check/bench-quick) for a
// person to look at. Broken pages check that the checker sees what it
// looks for.
func TestReportInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	out := os.Getenv("SVCLAB_REPORT_CHECK_DIR")
	if out == "" {
		out = filepath.Join("check", "fixture")
	}
	require.NoError(t, os.MkdirAll(out, 0o755))

	run := withVMSite(t, referenceRun(t))
	conf := &ConformRun{ID: "20261125-030000-conf", Env: run.Env,
		Datapaths: []DatapathInfo{{Name: "socketlb"}, {Name: "iptables"}, {Name: "ipvs", Skipped: "kernel lacks IP_VS"}},
		Scenarios: []ConformScenario{
			{Name: "basic-tcp", Behaviour: "a ClusterIP reaches every ready backend"},
			{Name: "no-endpoints", Behaviour: "a Service without endpoints refuses the connection"},
			{Name: "udp-reply-source", Behaviour: "UDP replies come from the VIP", Advisory: "a known structural difference"},
		},
		Cells: []ConformCell{
			{Scenario: "basic-tcp", Datapath: "socketlb", Status: CellPass},
			{Scenario: "basic-tcp", Datapath: "iptables", Status: CellPass},
			{Scenario: "no-endpoints", Datapath: "socketlb", Status: CellPass},
			{Scenario: "no-endpoints", Datapath: "iptables", Status: CellFail, Summary: "timeout instead of ECONNREFUSED"},
			{Scenario: "udp-reply-source", Datapath: "socketlb", Status: CellPass},
			{Scenario: "udp-reply-source", Datapath: "iptables", Status: CellSkip, Summary: "unsupported"},
		}}
	report := filepath.Join(out, "report.html")
	require.NoError(t, WriteReportFile(report, ReportInput{Runs: []*Run{run}, Conform: conf}))
	html, err := os.ReadFile(report)
	require.NoError(t, err)
	charts := strings.Count(string(html), `<svg class="chart"`)
	require.Positive(t, charts)

	broken := filepath.Join(t.TempDir(), "broken.html")
	require.NoError(t, os.WriteFile(broken, []byte(`<!DOCTYPE html><html><body><h2 id="x">x</h2>`+
		`<img src="data:image/png;base64,bm90IGEgcG5n" alt="">`+
		`<script>console.error("deliberate")</script></body></html>`), 0o644))

	tests := []struct {
		name      string
		file      string
		shot      string
		wantProbs []string
		charts    int
		summary   int
		sections  []string
	}{{
		name:     "fixture report",
		file:     report,
		shot:     filepath.Join(out, "report.png"),
		charts:   charts,
		summary:  len(run.Summary),
		sections: []string{"setup", "findings", "skipped", "ratio", "qps", "p90", "summary", "conformance"},
	}, {
		name:      "a broken page is caught",
		file:      broken,
		wantProbs: []string{"image did not decode", "console error: \"deliberate\""},
		sections:  []string{"x"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := browsercheck.Check(chromium, tt.file, tt.shot)
			require.NoError(t, err)
			if len(tt.wantProbs) == 0 {
				assert.Empty(t, got.Problems)
			}
			joined := strings.Join(got.Problems, "\n")
			for _, w := range tt.wantProbs {
				assert.Contains(t, joined, w)
			}
			assert.Equal(t, tt.charts, got.Charts, "charts laid out")
			assert.Equal(t, tt.summary, got.SummaryRow, "summary rows")
			assert.Equal(t, tt.sections, got.Sections)
			if tt.charts > 0 {
				assert.Positive(t, got.ValueRows, "rows of the tables under the charts")
			}
			if tt.shot != "" {
				abs, err := filepath.Abs(tt.shot)
				require.NoError(t, err)
				t.Logf("report %s, screenshot %s", filepath.Join(filepath.Dir(abs), filepath.Base(tt.file)), abs)
				fmt.Fprintf(os.Stderr, "report screenshot: %s\n", abs)
			}
		})
	}
}
