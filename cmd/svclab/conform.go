package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"svclab/datapath"
	"svclab/harness/conform"
	"svclab/results"
	"svclab/scenarios"
	"svclab/vm"
)

// errStrict is returned when a --strict datapath failed a scenario; the
// message has already been printed.
var errStrict = errors.New("strict datapath failed")

func cmdConform(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("conform", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dps := fs.String("datapaths", "", "comma-separated datapaths (default: every registered one; see 'svclab datapaths')")
	scs := fs.String("scenarios", "", "comma-separated conformance scenarios or scenario files (default: all built-in: "+strings.Join(scenarios.ConformanceNames(), ", ")+")")
	output := fs.String("output", "results", "directory that receives <run-id>/conformance.{json,md}")
	vmKernel := fs.String("vm-kernel", "", "also check the datapaths this kernel cannot run (e.g. ipvs) under this Debian kernel in QEMU (debian-6.1, debian-6.12), filling their columns")
	docs := fs.String("update-docs", "", "comma-separated documents whose '<!-- svclab conform:summary|table begin/end -->' regions are replaced with this run's table (make conformance: README.md, docs/conformance.md)")
	nodes := fs.Int("nodes", 1, "number of nodes, 1 to 8: backends spread over them, clients on the first, one datapath instance per node (scenarios written for a node count, as internal-traffic-policy-local, keep theirs)")
	strict := fs.String("strict", "", "comma-separated datapaths that must pass every scenario they can run: exit 1 if one fails or errors")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: svclab conform [flags]\n\nRuns every conformance scenario against every datapath, each in a fresh topology,\nand writes a behaviour × datapath table. Failures are findings: the exit status is 0\nunless the harness failed or a --strict datapath failed.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return badInput(err)
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	if *nodes < 1 || *nodes > scenarios.MaxNodes {
		return badInput(fmt.Errorf("--nodes: %d is out of range [1, %d]", *nodes, scenarios.MaxNodes))
	}
	var list []*scenarios.Conformance
	if *scs == "" {
		all, err := scenarios.LoadAllConformance()
		if err != nil {
			return badInput(err)
		}
		list = all
	} else {
		seen := map[string]bool{}
		for _, n := range splitList(*scs) {
			if seen[n] {
				return badInput(fmt.Errorf("--scenarios: %q listed twice", n))
			}
			seen[n] = true
			c, err := scenarios.LoadConformance(n)
			if err != nil {
				return badInput(fmt.Errorf("--scenarios: %w", err))
			}
			list = append(list, c)
		}
	}
	names := splitList(*dps)
	for _, n := range append(append([]string{}, names...), splitList(*strict)...) {
		if _, err := datapath.Lookup(n); err != nil {
			return badInput(fmt.Errorf("--datapaths/--strict: %w", err))
		}
	}
	if len(names) == 0 {
		names = datapath.Names()
	}
	for _, s := range splitList(*strict) {
		found := false
		for _, n := range names {
			found = found || n == s
		}
		if !found {
			return badInput(fmt.Errorf("--strict: %q is not among the datapaths checked (%s)", s, strings.Join(names, ", ")))
		}
	}
	if *vmKernel != "" {
		if _, ok := vm.LookupSeries(*vmKernel); !ok {
			return badInput(fmt.Errorf("--vm-kernel: %q is not a kernel svclab can boot (known: %s)", *vmKernel, strings.Join(vm.SeriesNames(), ", ")))
		}
	}
	// A document without markers would only be found wanting after the
	// whole run: check them first.
	for _, d := range splitList(*docs) {
		b, err := os.ReadFile(d)
		if err != nil {
			return badInput(fmt.Errorf("--update-docs: %w", err))
		}
		if _, err := results.UpdateConformanceDoc(string(b), &results.ConformRun{}); err != nil {
			return badInput(fmt.Errorf("--update-docs: %s: %w", d, err))
		}
	}
	if err := requireRoot(); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	tty := isTerminal(stderr)
	run, dir, err := conform.Run(ctx, conform.Config{Scenarios: list, Datapaths: names, OutputDir: *output, Log: stderr, TTY: tty, VMKernel: *vmKernel, Nodes: *nodes})
	if run != nil {
		fmt.Fprintln(stdout)
		if werr := results.WriteConformanceMarkdown(stdout, run); werr != nil {
			return werr
		}
		fmt.Fprintf(stdout, "\nwrote %s\n      %s\n", filepath.Join(dir, "conformance.json"), filepath.Join(dir, "conformance.md"))
	}
	if err != nil {
		return err
	}
	for _, d := range splitList(*docs) {
		if err := updateDoc(d, run); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "updated %s\n", d)
	}
	failed := false
	for _, s := range splitList(*strict) {
		for _, d := range run.Datapaths {
			if d.Name == s && d.Skipped != "" {
				fmt.Fprintf(stderr, "svclab conform: --strict %s: the datapath cannot run here: %s\n", s, d.Skipped)
				failed = true
			}
		}
		for _, c := range run.Failing(s) {
			fmt.Fprintf(stderr, "svclab conform: --strict %s: %s: %s: %s\n", s, c.Scenario, c.Status, c.Summary)
			failed = true
		}
	}
	if failed {
		return errStrict
	}
	return nil
}

// updateDoc replaces the conformance tables of a document with the run's,
// through a temporary file so that an interrupted write leaves the old one.
func updateDoc(path string, run *results.ConformRun) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--update-docs: %w", err)
	}
	out, err := results.UpdateConformanceDoc(string(b), run)
	if err != nil {
		return fmt.Errorf("--update-docs: %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o644); err != nil {
		return fmt.Errorf("--update-docs: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--update-docs: %w", err)
	}
	return nil
}
