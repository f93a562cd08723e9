package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

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

Exit status: 0 no regression, 1 a gated figure regressed beyond its
threshold with significance, 2 bad arguments or unreadable input.

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
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return compareOK
			}
			return compareBadInput
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
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
	c := results.Compare(runs[0], runs[1], th)
	if err := c.WriteTable(stdout); err != nil {
		fmt.Fprintf(stderr, "svclab compare: %v\n", err)
		return compareBadInput
	}
	if len(c.Regressions()) > 0 {
		return compareRegression
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
