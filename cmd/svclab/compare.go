package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"unicode/utf8"

	"svclab/results"
)

// Exit codes of `svclab compare`, so a CI script can tell a regression
// from a broken invocation.
const (
	compareOK         = 0
	compareRegression = 1
	compareBadInput   = 2
)

const compareUsage = `usage: svclab compare [--thresholds FILE] OLD NEW

OLD and NEW are results.json files, bench.txt files (Go benchmark format)
or run directories holding either. Prints, per datapath, point and metric,
the OLD and NEW medians with their 95% confidence intervals, the change,
the Mann-Whitney U p-value and a verdict.

Runs of different scenarios, protocols, UDP modes, load models or kinds of
machine (CPU model and count) are refused: their differences are not
regressions.

Exit status: 0 no regression, 1 a gated figure regressed beyond its
threshold with significance or a run has invalid trials, 2 bad arguments,
unreadable input, runs that are not comparable, or runs with no datapath
at a common point (nothing compared is never a pass).

`

// cmdCompare is `svclab compare`; it returns the exit status.
func cmdCompare(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, compareUsage)
		fs.PrintDefaults()
	}
	thresholds := fs.String("thresholds", "", "thresholds file (YAML, see ci/thresholds.yaml); default: built-in thresholds")
	// Flags may come before or after OLD NEW.
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return compareOK
	}
	if err != nil {
		return compareBadInput
	}
	if len(pos) != 2 {
		fmt.Fprintf(stderr, "svclab compare: want OLD and NEW, got %d arguments\n\n", len(pos))
		fs.Usage()
		return compareBadInput
	}
	th := results.DefaultThresholds()
	if *thresholds != "" {
		var err error
		if th, err = results.ReadThresholds(*thresholds); err != nil {
			fmt.Fprintf(stderr, "svclab compare: %v\n", err)
			return compareBadInput
		}
	}
	var runs [2]*results.Run
	for i, p := range pos {
		r, err := loadRun(p)
		if err != nil {
			fmt.Fprintf(stderr, "svclab compare: %s: %v\n", []string{"OLD", "NEW"}[i], err)
			return compareBadInput
		}
		runs[i] = r
	}
	if err := results.Comparable(runs[0], runs[1]); err != nil {
		fmt.Fprintf(stderr, "svclab compare: %v\n", err)
		return compareBadInput
	}
	c := results.Compare(runs[0], runs[1], th)
	if err := c.WriteTable(stdout); err != nil {
		fmt.Fprintf(stderr, "svclab compare: %v\n", err)
		return compareBadInput
	}
	if c.Failed() {
		return compareRegression
	}
	if len(c.Rows) == 0 {
		// Nothing measured in both runs: a gate comparing them would
		// pass without having tested anything.
		fmt.Fprintln(stderr, "svclab compare: nothing measured in both runs (no datapath at a common point): not comparable")
		return compareBadInput
	}
	if !c.Gates() && len(c.Unjudged) > 0 {
		fmt.Fprintln(stderr, "svclab compare: the machine's speed differs from OLD's beyond every gated datapath's speed guard: not judged")
		return compareBadInput
	}
	if !c.Gates() {
		fmt.Fprintln(stderr, "svclab compare: no gated figure measured in both runs: not comparable")
		return compareBadInput
	}
	return compareOK
}

// loadRun reads a results.json or a bench.txt, or the one of them a run
// directory holds (results.json preferred: it has everything).
func loadRun(path string) (*results.Run, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		for _, name := range []string{"results.json", "bench.txt"} {
			p := filepath.Join(path, name)
			if _, err := os.Stat(p); err == nil {
				return loadRun(p)
			}
		}
		return nil, fmt.Errorf("directory %s holds neither results.json nor bench.txt", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := sniffRun(path, b); err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		r, err := results.Read(path)
		if err != nil {
			return nil, err
		}
		if len(r.Trials) == 0 {
			return nil, fmt.Errorf("%s has no trials", path)
		}
		return r, nil
	}
	return results.ReadBenchFormat(bytes.NewReader(b), path)
}

// errNotRun: the file is neither a results.json nor a bench.txt.
var errNotRun = errors.New("not a svclab run")

// notRun is an errNotRun whose text is only its message.
type notRun string

func (e notRun) Error() string        { return string(e) }
func (e notRun) Is(target error) bool { return target == errNotRun }

func notRunf(format string, args ...any) error { return notRun(fmt.Sprintf(format, args...)) }

// sniffRun refuses, naming the file and what it is not, input that is
// neither a results.json nor a bench.txt: binary bytes, JSON that is not
// an object with schema_version (a scenario, some other tool's JSON).
// Without it, such a file is read as an empty bench.txt and the message
// says only that it has no benchmark lines.
func sniffRun(path string, b []byte) error {
	const want = "want the results.json of 'svclab bench', a bench.txt, or a run directory"
	if i := bytes.IndexFunc(b, func(r rune) bool {
		return r == utf8.RuneError || (r < 0x20 && r != '\n' && r != '\t' && r != '\r')
	}); i >= 0 {
		return notRunf("%s is not a results.json or bench.txt: it is binary (byte 0x%02x at offset %d); %s", path, b[i], i, want)
	}
	t := bytes.TrimSpace(b)
	if len(t) == 0 {
		return notRunf("%s is empty: not a results.json or bench.txt; %s", path, want)
	}
	if t[0] != '{' && t[0] != '[' {
		return nil // a bench.txt, or text ReadBenchFormat will refuse
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(t, &obj); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return notRunf("%s is not a results.json: invalid JSON at byte %d; %s", path, syn.Offset, want)
		}
		return notRunf("%s is not a results.json: its JSON is not an object; %s", path, want)
	}
	if _, ok := obj["schema_version"]; !ok {
		what := "a JSON object without schema_version"
		if _, ok := obj["topology"]; ok {
			what = "a scenario file, not a run's results"
		}
		return notRunf("%s is not a results.json: it is %s; %s", path, what, want)
	}
	return nil
}

// parseInterspersed parses fs's flags wherever they stand among args and
// returns the positional arguments in order.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
}
