package results

// The conformance run's schema (conformance.json), its markdown table and
// the statistics its checks use. The runner is harness/conform.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"gonum.org/v1/gonum/stat/distuv"
)

// ConformanceSchemaVersion is bumped on any incompatible change to
// ConformRun.
const ConformanceSchemaVersion = 1

// Conformance cell statuses.
const (
	// CellPass: every expectation held.
	CellPass = "pass"
	// CellFail: an expectation did not hold; Summary has what was observed.
	CellFail = "fail"
	// CellSkip: the datapath cannot express the scenario (its Probe, Setup
	// or Apply returned an error wrapping datapath.ErrUnsupported, or it
	// has no address to send to); Summary has the reason.
	CellSkip = "skip"
	// CellError: the datapath refused the scenario's state with an error
	// that does not say "unsupported", or the harness itself failed.
	CellError = "error"
	// CellNA: the scenario checks something the datapath does not claim
	// to do by design (a row that needs a Service, against the direct
	// baseline, which has none); Summary has the datapath's reason. Not a
	// failure, and not a skip either: nothing is missing from the machine.
	CellNA = "n/a"
)

// ConformRun is everything conformance.json holds.
type ConformRun struct {
	SchemaVersion int       `json:"schema_version"`
	ID            string    `json:"id"`
	Started       time.Time `json:"started"`
	Finished      time.Time `json:"finished"`
	Env           Env       `json:"env"`
	// Datapaths are the table's columns: with Skipped set when the machine
	// cannot run the datapath at all.
	Datapaths []DatapathInfo `json:"datapaths"`
	// Scenarios are the table's rows.
	Scenarios []ConformScenario `json:"scenarios"`
	Cells     []ConformCell     `json:"cells"`
}

// ConformScenario describes a row.
type ConformScenario struct {
	Name      string `json:"name"`
	Behaviour string `json:"behaviour"`
	Source    string `json:"source"`
	Notes     string `json:"notes,omitempty"`
	Family    string `json:"family"`
	// Advisory says why failures of this scenario are not counted by
	// --strict (a known structural difference); empty for requirements.
	Advisory string `json:"advisory,omitempty"`
}

// ConformCell is one scenario run against one datapath.
type ConformCell struct {
	Scenario string `json:"scenario"`
	Datapath string `json:"datapath"`
	Status   string `json:"status"`
	// Site is where the cell ran: "" for the run's own machine, or the
	// Debian kernel of the VM that ran a datapath this machine cannot
	// ("debian-6.12"), as DatapathInfo.Site.
	Site string `json:"site,omitempty"`
	// Summary is the first failing check's observation, the skip reason or
	// the error; for a pass, what the scenario asks to report, if anything.
	Summary string `json:"summary,omitempty"`
	// Checks are every expectation's outcome, in scenario order.
	Checks []CheckResult `json:"checks,omitempty"`
	// Probes summarise what the client observed in every probe step.
	Probes  []ProbeSummary `json:"probes,omitempty"`
	Seconds float64        `json:"seconds"`
}

// CheckResult is one expectation's outcome.
type CheckResult struct {
	// Step is the probe's step id (or "steps[i]").
	Step     string `json:"step"`
	Check    string `json:"check"`
	Want     string `json:"want"`
	Pass     bool   `json:"pass"`
	Observed string `json:"observed"`
	// Examples are up to five attempts that broke the expectation.
	Examples []ProbeAttempt `json:"examples,omitempty"`
}

// ProbeSummary is what one probe step observed, aggregated.
type ProbeSummary struct {
	Step     string   `json:"step"`
	Op       string   `json:"op"`
	From     string   `json:"from"`
	Targets  []string `json:"targets"`
	Attempts int      `json:"attempts"`
	OK       int      `json:"ok"`
	// Errors counts failures by "stage errno".
	Errors map[string]int `json:"errors,omitempty"`
	// Backends counts replies by backend (and target port, if said).
	Backends  map[string]int `json:"backends,omitempty"`
	Peers     map[string]int `json:"peers,omitempty"`
	ReplyFrom map[string]int `json:"reply_from,omitempty"`
	// LateFrom counts late datagrams (a lateReply step's) by source.
	LateFrom map[string]int `json:"late_from,omitempty"`
	// LocalPorts is the number of distinct local ports used.
	LocalPorts int     `json:"local_ports"`
	MedianMS   float64 `json:"median_ms"`
	MaxMS      float64 `json:"max_ms"`
}

// Failing reports the cells of datapath name that failed or errored, in
// scenarios that are requirements (not advisory).
func (r *ConformRun) Failing(name string) []ConformCell {
	advisory := map[string]bool{}
	for _, s := range r.Scenarios {
		advisory[s.Name] = s.Advisory != ""
	}
	var out []ConformCell
	for _, c := range r.Cells {
		if c.Datapath == name && !advisory[c.Scenario] && (c.Status == CellFail || c.Status == CellError) {
			out = append(out, c)
		}
	}
	return out
}

// Cell returns the cell of a scenario and datapath.
func (r *ConformRun) Cell(scenario, dp string) (ConformCell, bool) {
	for _, c := range r.Cells {
		if c.Scenario == scenario && c.Datapath == dp {
			return c, true
		}
	}
	return ConformCell{}, false
}

// ProbeAttempt is what the client observed in one attempt.
type ProbeAttempt struct {
	// Start is the attempt's start, Unix nanoseconds (the parent compares
	// it with the times it changed the datapath).
	Start int64 `json:"start"`
	// ElapsedUS is the time from the start to the outcome, microseconds.
	ElapsedUS float64 `json:"elapsed_us"`
	Phase     string  `json:"phase,omitempty"`
	// Dialed is where the socket was connected or sent to.
	Dialed string `json:"dialed"`
	// Errno is "" on success, else the errno name (ECONNREFUSED, …),
	// ErrnoTimeout or ErrnoBadReply; Stage says which operation failed.
	Errno string `json:"errno,omitempty"`
	Stage string `json:"stage,omitempty"`
	// Reply is the backend's answer (its pod name, with ":targetPort" when
	// the server was told to say it).
	Reply string `json:"reply,omitempty"`
	// Peer is getpeername() after connect; From is the source address of
	// the reply datagram (recvfrom); Local is getsockname().
	Peer  string `json:"peer,omitempty"`
	From  string `json:"from,omitempty"`
	Local string `json:"local,omitempty"`
	// Sends is the number of times a UDP request was sent (Resend).
	Sends int `json:"sends,omitempty"`
	// Late are the sources of late datagrams (a conformance lateReply
	// step's, recognised by their payload) the socket received during
	// this attempt: they are not replies, and are not taken as one.
	Late []string `json:"late,omitempty"`
}

// OK reports whether a backend answered.
func (a ProbeAttempt) OK() bool { return a.Errno == "" }

// Backend is the pod named in the reply ("" if none answered).
func (a ProbeAttempt) Backend() string {
	pod, _, _ := strings.Cut(a.Reply, ":")
	return pod
}

// ReplyPort is the target port named in the reply, if the server said it.
func (a ProbeAttempt) ReplyPort() string {
	_, port, _ := strings.Cut(a.Reply, ":")
	return port
}

// ChiSquareP returns the p-value of Pearson's chi-square statistic x with
// df degrees of freedom (the chi-square distribution's survival function).
func ChiSquareP(x float64, df int) float64 {
	return distuv.ChiSquared{K: float64(df)}.Survival(x)
}

// CellText is a cell as the table shows it, at most width runes.
func CellText(c ConformCell, width int) string {
	var s string
	switch c.Status {
	case CellPass:
		s = "pass"
		if c.Summary != "" {
			s += " (" + c.Summary + ")"
		}
	case CellFail:
		s = "FAIL: " + c.Summary
	case CellSkip:
		s = "skip: " + c.Summary
	case CellNA:
		s = "n/a"
		if c.Summary != "" {
			s += ": " + c.Summary
		}
	default:
		s = "ERROR: " + c.Summary
	}
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\n", " "), "|", "/")
	if r := []rune(s); len(r) > width {
		s = string(r[:width-1]) + "…"
	}
	return s
}

// mdCellWidth is the longest cell text the markdown table shows.
const mdCellWidth = 100

// WriteConformanceMarkdown writes the behaviour × datapath table, the
// sources, and the details of every cell that did not pass.
func WriteConformanceMarkdown(w io.Writer, run *ConformRun) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# svclab conformance %s\n\n", run.ID)
	fmt.Fprintf(&b, "Kernel %s, %d CPUs, %s. Each cell is one scenario against one datapath in a fresh topology: pass, FAIL with what the client observed, skip with the reason, n/a where the datapath does not claim the behaviour by design.\n\n", run.Env.Kernel, run.Env.CPUs, run.Started.Format("2006-01-02 15:04 MST"))
	writeConformTable(&b, run, mdCellWidth)
	b.WriteString("\n## Datapaths\n\n")
	for _, d := range run.Datapaths {
		fmt.Fprintf(&b, "- **%s**: %s", d.Name, d.Description)
		if d.Skipped != "" {
			fmt.Fprintf(&b, " (unavailable: %s)", d.Skipped)
		}
		for _, r := range naReasons(run, d.Name) {
			fmt.Fprintf(&b, " n/a: %s.", strings.TrimSuffix(r, "."))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n## Scenarios and sources\n\n")
	for _, s := range run.Scenarios {
		fmt.Fprintf(&b, "- `%s` (%s): %s Source: %s.", s.Name, s.Family, s.Behaviour, strings.TrimSuffix(s.Source, "."))
		if s.Notes != "" {
			fmt.Fprintf(&b, " %s", s.Notes)
		}
		if s.Advisory != "" {
			fmt.Fprintf(&b, " Advisory (not counted by --strict): %s", s.Advisory)
		}
		b.WriteString("\n")
	}
	var details []string
	for _, c := range run.Cells {
		// Skips and n/a are in the table; only those cut short there are
		// repeated.
		if c.Status == CellPass || c.Status == CellNA || (c.Status == CellSkip && len([]rune(CellText(c, 1000))) <= mdCellWidth) {
			continue
		}
		var d strings.Builder
		fmt.Fprintf(&d, "- `%s` × **%s**: %s\n", c.Scenario, c.Datapath, strings.ReplaceAll(CellText(c, 1000), "\n", " "))
		for _, ch := range c.Checks {
			if !ch.Pass {
				fmt.Fprintf(&d, "  - %s: want %s; observed %s\n", ch.Step, ch.Want, ch.Observed)
			}
		}
		details = append(details, d.String())
	}
	if len(details) > 0 {
		b.WriteString("\n## Cells that did not pass\n\n")
		b.WriteString(strings.Join(details, ""))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeConformTable writes the behaviour × datapath table; cells show at
// most width runes (0: the status word alone, for a summary).
func writeConformTable(b *strings.Builder, run *ConformRun, width int) {
	b.WriteString("| Behaviour |")
	for _, d := range run.Datapaths {
		fmt.Fprintf(b, " %s |", SiteName(d.Name, d.Site))
	}
	b.WriteString("\n|---|")
	for range run.Datapaths {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, s := range run.Scenarios {
		adv := ""
		if s.Advisory != "" {
			adv = " (advisory)"
		}
		if width == 0 {
			fmt.Fprintf(b, "| `%s`%s |", s.Name, adv)
		} else {
			fmt.Fprintf(b, "| `%s`%s: %s |", s.Name, adv, strings.ReplaceAll(s.Behaviour, "|", "/"))
		}
		for _, d := range run.Datapaths {
			c, ok := run.Cell(s.Name, d.Name)
			text := "—"
			switch {
			case !ok:
			case width == 0 && (c.Status == CellFail || c.Status == CellError):
				text = "**" + statusWord(c.Status) + "**"
			case width == 0:
				text = statusWord(c.Status)
			case c.Status == CellNA:
				// The reason is the datapath's, the same in every
				// row: it is said once, under Datapaths.
				text = "n/a"
			case c.Status == CellFail || c.Status == CellError:
				text = "**" + strings.Replace(CellText(c, width), ":", "**:", 1)
			default:
				text = CellText(c, width)
			}
			fmt.Fprintf(b, " %s |", text)
		}
		b.WriteString("\n")
	}
}

// statusWord is a cell's status as the summary table shows it.
func statusWord(status string) string {
	switch status {
	case CellFail:
		return "FAIL"
	case CellError:
		return "ERROR"
	}
	return status
}

// naReasons are the distinct reasons of a datapath's n/a cells, in row
// order.
func naReasons(run *ConformRun, dp string) []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range run.Cells {
		if c.Datapath == dp && c.Status == CellNA && c.Summary != "" && !seen[c.Summary] {
			seen[c.Summary] = true
			out = append(out, c.Summary)
		}
	}
	return out
}

// WriteJSON writes v as indented JSON to path.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	return nil
}
