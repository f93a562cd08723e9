package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"svclab/results"
	"svclab/scenarios"
	"svclab/vm"
)

// vmCandidates are the plan's datapaths this kernel cannot run (probed
// once, by NewPlan).
func (p *Plan) vmCandidates() []string {
	var out []string
	for _, d := range p.Skipped {
		out = append(out, d.Name)
	}
	return out
}

// benchInVM measures the datapaths this kernel cannot run (IPVS here) under
// a Debian kernel in QEMU, together with `direct` in that same kernel, and
// adds them to the host run with their Site set to the kernel. A VM's
// figures are only comparable with the VM's own direct (software emulation
// is much slower): Summarize takes each ratio against direct at the same
// site, and the description says so.
func benchInVM(ctx context.Context, kernel string, plan *Plan, run *results.Run, dir, name string, stderr io.Writer) error {
	sc := plan.Scenario
	names := plan.vmCandidates()
	if len(names) == 0 {
		return nil
	}
	vsc := *sc
	vsc.Datapaths = append(slices.Clone(names), results.DirectDatapath)
	vsc.Name = sc.Name
	// The guest is started with the default accelerator below.
	if accel, _ := vm.ResolveAccel(vm.DefaultAccel); accel == "tcg" {
		vsc.Scale = emulatedScale(sc)
	}
	b, err := json.Marshal(vsc)
	if err != nil {
		return err
	}
	scFile := filepath.Join(dir, name+"-scenario.json")
	if err := os.WriteFile(scFile, b, 0o644); err != nil {
		return err
	}
	out := filepath.Join(dir, name)
	fmt.Fprintf(stderr, "\nmeasuring %v under %s in QEMU (this kernel lacks them), with %s for the ratio\n", names, kernel, results.DirectDatapath)
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	// The run directory is shared with the guest, so the guest writes its
	// results straight into it.
	res, err := vm.Run(ctx, &vm.Config{
		Kernel: kernel,
		Shares: []string{absDir},
		Args:   []string{"bench", "--scenario", filepath.Join(absDir, filepath.Base(scFile)), "--output", filepath.Join(absDir, filepath.Base(out))},
		Stdout: io.Discard,
		Stderr: stderr,
	})
	if err != nil {
		return fmt.Errorf("vm %s: %w", kernel, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("vm %s: the guest bench exited with status %d", kernel, res.ExitCode)
	}
	matches, _ := filepath.Glob(filepath.Join(out, "*", "results.json"))
	if len(matches) != 1 {
		return fmt.Errorf("vm %s: expected one results.json under %s, found %d", kernel, out, len(matches))
	}
	guest, err := results.Read(matches[0])
	if err != nil {
		return err
	}
	mergeVMRun(run, guest, kernel)
	return nil
}

// tcgApplyFactor is how much longer a scale point's Apply may take in a
// guest under software emulation (QEMU TCG) than the scenario allows on
// the host: emulation runs the guest's kernel and tools about ten times
// slower (an IPVS Apply of 1,000 services × 12 endpoints took 5.7 s in the
// debian-6.12 guest here), so the host's bound would mark the emulator's
// limit, not the datapath's.
const tcgApplyFactor = 10

// emulatedScale is sc's scale block with the apply timeout stretched by
// tcgApplyFactor (nil without one).
func emulatedScale(sc *scenarios.Scenario) *scenarios.Scale {
	if sc.Scale == nil {
		return nil
	}
	sl := *sc.Scale
	sl.ApplyTimeout = scenarios.Duration(min(tcgApplyFactor*sc.ApplyTimeout(), time.Duration(scenarios.MaxDuration)))
	return &sl
}

// mergeVMRun adds a guest run's datapaths, trials and scale limits to the
// host run with their Site set to the kernel, so that no figure of the guest is ever set
// beside a host figure without saying where it was measured.
func mergeVMRun(run, guest *results.Run, kernel string) {
	accel := guest.Env.Extra["svclab_vm_accel"]
	where := fmt.Sprintf("measured under %s (%s) in QEMU/%s; compare only with %s", kernel, guest.Env.Kernel, accel, results.SiteName(results.DirectDatapath, kernel))
	for _, d := range guest.Datapaths {
		d.Site = kernel
		if d.Description != "" {
			d.Description += "; "
		}
		d.Description += where
		run.Datapaths = append(run.Datapaths, d)
	}
	// The scale points the guest's datapaths did not reach.
	for _, l := range guest.ScaleLimits {
		l.Site = kernel
		run.ScaleLimits = append(run.ScaleLimits, l)
	}
	// The guest's trials ran after the host's: their positions follow.
	offset := len(run.Trials)
	for _, t := range guest.Trials {
		t.Site = kernel
		t.Order += offset
		run.Trials = append(run.Trials, t)
	}
	run.Summary = results.Summarize(run.Trials)
}

// runVMPhase runs benchInVM, once more if the first attempt fails (a
// guest kernel can crash under emulation, rarely), and when both fail
// marks the datapaths it should have measured as skipped at the kernel's
// site, with the reason, so that the table, the charts and the exit status
// say they are missing.
func runVMPhase(ctx context.Context, kernel string, plan *Plan, run *results.Run, dir string, log io.Writer) error {
	var errs []error
	for attempt, name := range []string{"vm-" + kernel, "vm-" + kernel + "-retry"} {
		err := benchVM(ctx, kernel, plan, run, dir, name, log)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		errs = append(errs, err)
		if attempt == 0 {
			fmt.Fprintf(log, "\nwarning: the %s VM phase failed (%v); trying once more\n", kernel, err)
		}
	}
	err := errors.Join(errs...)
	for _, name := range plan.vmCandidates() {
		run.Datapaths = append(run.Datapaths, results.DatapathInfo{Name: name, Site: kernel,
			Skipped: fmt.Sprintf("the %s VM phase failed twice: %v", kernel, errs[len(errs)-1])})
	}
	return fmt.Errorf("%w: %v under %s: %v", ErrMissingDatapath, plan.vmCandidates(), kernel, err)
}

// benchVM is benchInVM; tests replace it to fail on purpose.
var benchVM = benchInVM

// ErrMissingDatapath is returned, with the run written, when a datapath
// the user asked for could not be measured anywhere (its VM phase failed).
var ErrMissingDatapath = errors.New("requested datapaths missing")
