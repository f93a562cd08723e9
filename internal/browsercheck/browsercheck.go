// Package browsercheck opens a page in headless Chromium (Debian's
// package, which ci/install-deps.sh installs) and reports what a reader
// would hit: console errors, exceptions, failed loads, images that do not
// decode, charts that are not laid out; and what the page shows (charts,
// table rows, sections), with a full-page screenshot. Tests use it to check
// report.html (results/ and cmd/svclab's quick bench).
package browsercheck

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Chromium returns the path of Debian's chromium (or another Chromium)
// on PATH, or "" when there is none.
func Chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// Page is what a page showed in the browser.
type Page struct {
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

// Check opens file in headless chromium, collects what went wrong and what
// the page shows, and writes a full-page screenshot to shot (if set).
func Check(chromium, file, shot string) (Page, error) {
	// Not a test's TempDir: chromium's helpers may still write there as
	// it exits, which would fail the test's cleanup rather than the check.
	profile, err := os.MkdirTemp("", "svclab-chromium-")
	if err != nil {
		return Page{}, err
	}
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
	if err != nil {
		return Page{}, err
	}
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
	if err := chromedp.Run(ctx, actions...); err != nil {
		return Page{}, fmt.Errorf("chromium: %s: %w", file, err)
	}
	if shot != "" {
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			return Page{}, err
		}
	}
	// Let late console events arrive.
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	return Page{
		Problems:   append(problems, got.Problems...),
		Charts:     got.Charts,
		SummaryRow: got.SummaryRows,
		ValueRows:  got.ValueRows,
		Sections:   got.Sections,
	}, nil
}
