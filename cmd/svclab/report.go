package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"svclab/results"
)

const reportUsage = `usage: svclab report [--output DIR] RUN [RUN...]

Writes one self-contained report.html (charts as inline SVG, tables, the
findings the 95% intervals support, the conformance matrix) from one or more
runs of one scenario, side by side with their environments. A RUN is a run
directory (holding results.json and/or conformance.json) or one of those
files. Runs of different scenarios are refused. By default the report goes
into the run's directory for one run, the current directory for several.

`

// cmdReport is `svclab report`.
func cmdReport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, reportUsage)
		fs.PrintDefaults()
	}
	output := fs.String("output", "", "directory that receives report.html")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return errors.New("no RUN given")
	}
	var in results.ReportInput
	for _, p := range pos {
		runs, conf, err := readReportArg(p)
		if err != nil {
			return err
		}
		for _, r := range runs {
			in.Runs = append(in.Runs, r)
			in.Names = append(in.Names, runName(p, r))
		}
		if conf != nil {
			if in.Conform != nil {
				return fmt.Errorf("%s: a report holds one conformance run, and %s is a second", p, conf.ID)
			}
			in.Conform = conf
		}
	}
	dir := *output
	if dir == "" {
		dir = "."
		if len(pos) == 1 {
			dir = runDir(pos[0])
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, "report.html")
	if err := results.WriteReportFile(path, in); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", path)
	return nil
}

// readReportArg reads a RUN argument: a results.json, a conformance.json,
// or a directory holding either or both.
func readReportArg(p string) ([]*results.Run, *results.ConformRun, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	if !st.IsDir() {
		if filepath.Base(p) == "conformance.json" {
			c, err := results.ReadConformRun(p)
			return nil, c, err
		}
		r, err := results.Read(p)
		if err != nil {
			return nil, nil, fmt.Errorf("%s is not a run's results.json: %w", p, err)
		}
		return []*results.Run{r}, nil, nil
	}
	var runs []*results.Run
	var conf *results.ConformRun
	if f := filepath.Join(p, "results.json"); exists(f) {
		r, err := results.Read(f)
		if err != nil {
			return nil, nil, err
		}
		runs = append(runs, r)
	}
	if f := filepath.Join(p, "conformance.json"); exists(f) {
		c, err := results.ReadConformRun(f)
		if err != nil {
			return nil, nil, err
		}
		conf = c
	}
	if runs == nil && conf == nil {
		return nil, nil, fmt.Errorf("%s: no results.json or conformance.json in the directory", p)
	}
	return runs, conf, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// runDir is the directory of a RUN argument.
func runDir(p string) string {
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return p
	}
	return filepath.Dir(p)
}

// runName labels a run in the report: its directory's name, or its id.
func runName(p string, r *results.Run) string {
	if n := filepath.Base(runDir(p)); n != "." && n != "/" {
		return n
	}
	return r.ID
}
