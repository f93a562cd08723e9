package results

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chromiumPath finds Debian's chromium (ci/install-deps.sh installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not found on PATH (ci/install-deps.sh installs Debian's chromium): the report is not checked in a browser")
	return ""
}

// pageCheck is what a page showed in the browser.
type pageCheck struct {
	// Problems are console errors, uncaught exceptions, failed loads and
	// images that did not decode.
	Problems []string
	// Charts counts the chart SVGs laid out at a usable size; ChartIDs
	// are the ids of the sections they are in.
	Charts     int
	SummaryRow int `json:"summaryRows"`
	ValueRows  int `json:"valueRows"`
	Sections   []string
}

const pageProbe = `(() => {
  const out = {problems: [], charts: 0, summaryRows: 0, valueRows: 0, sections: []};
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) out.problems.push("image did not decode: " + (img.getAttribute("src") || "").slice(0, 80));
  }
  for (const svg of document.querySelectorAll("svg.chart")) {
    const r = svg.getBoundingClientRect();
    if (r.width >= 300 && r.height >= 150 && svg.querySelectorAll("path").length > 5) out.charts++;
    else out.problems.push("chart not laid out: " + svg.getAttribute("aria-label") + " " + r.width + "x" + r.height);
  }
  out.summaryRows = document.querySelectorAll("table.summary tr").length - document.querySelectorAll("table.summary").length;
  out.valueRows = document.querySelectorAll("table.values tr").length - document.querySelectorAll("table.values").length;
  out.sections = Array.from(document.querySelectorAll("h2[id]")).map(h => h.id);
  return out;
})()`

// checkPage opens file in headless chromium, collects what went wrong and
// what the page shows, and writes a full-page screenshot to shot (if set).
func checkPage(t *testing.T, chromium, file, shot string) pageCheck {
	t.Helper()
	// Not t.TempDir: chromium's helpers may still write there as it exits,
	// which would fail the test's cleanup rather than the check.
	profile, err := os.MkdirTemp("", "svclab-chromium-")
	require.NoError(t, err)
	defer func() { _ = os.RemoveAll(profile) }()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	var mu sync.Mutex
	var problems []string
	chromedp.ListenTarget(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.APITypeError || ev.Type == runtime.APITypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value))
				}
				problems = append(problems, "console "+string(ev.Type)+": "+strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			problems = append(problems, "exception: "+ev.ExceptionDetails.Error())
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.LevelError {
				problems = append(problems, "log: "+ev.Entry.Text+" "+ev.Entry.URL)
			}
		}
	})
	var got struct {
		Problems    []string `json:"problems"`
		Charts      int      `json:"charts"`
		SummaryRows int      `json:"summaryRows"`
		ValueRows   int      `json:"valueRows"`
		Sections    []string `json:"sections"`
	}
	var png []byte
	abs, err := filepath.Abs(file)
	require.NoError(t, err)
	actions := []chromedp.Action{
		log.Enable(),
		runtime.Enable(),
		chromedp.Navigate("file://" + abs),
		chromedp.WaitReady("body"),
		chromedp.Evaluate(pageProbe, &got),
	}
	if shot != "" {
		actions = append(actions, chromedp.FullScreenshot(&png, 100))
	}
	require.NoError(t, chromedp.Run(ctx, actions...))
	if shot != "" {
		require.NoError(t, os.WriteFile(shot, png, 0o644))
	}
	// Let late console events arrive.
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	return pageCheck{
		Problems:   append(problems, got.Problems...),
		Charts:     got.Charts,
		SummaryRow: got.SummaryRows,
		ValueRows:  got.ValueRows,
		Sections:   got.Sections,
	}
}

// TestReportInBrowser renders the report of a fixture run (the committed CI
// reference run, with a VM site added, and a conformance run) and opens it
// in headless Chromium: no console error, no image that does not decode,
// every chart laid out, every summary row present. The report and a
// full-page screenshot are left in $SVCLAB_REPORT_CHECK_DIR (default
// <tmp>/svclab-report-check) for a person to look at. Broken pages check
// that the checker sees what it looks for.
func TestReportInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	out := os.Getenv("SVCLAB_REPORT_CHECK_DIR")
	if out == "" {
		out = filepath.Join(os.TempDir(), "svclab-report-check")
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

	broken := filepath.Join(out, "broken.html")
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
			got := checkPage(t, chromium, tt.file, tt.shot)
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
				t.Logf("report %s, screenshot %s", tt.file, tt.shot)
				fmt.Fprintf(os.Stderr, "report screenshot: %s\n", tt.shot)
			}
		})
	}
}
