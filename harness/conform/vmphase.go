package conform

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"svclab/results"
	"svclab/scenarios"
	"svclab/vm"
)

// vmTimeout bounds the guest's conformance run: under software emulation a
// cell takes several times as long as on the host, and one datapath's
// column of every row must fit.
const vmTimeout = 60 * time.Minute

// unavailable are the run's datapaths this kernel cannot run (their
// factory's Probe failed), in column order.
func unavailable(run *results.ConformRun) []string {
	var out []string
	for _, d := range run.Datapaths {
		if d.Skipped != "" {
			out = append(out, d.Name)
		}
	}
	return out
}

// conformInVM runs the scenarios against the datapaths this kernel cannot
// run (IPVS here) under a Debian kernel in QEMU and puts the guest's cells
// in their columns, with Site set to the kernel. Unlike bench figures,
// behaviour does not depend on the emulation's speed, so the column is
// filled in place rather than set beside a VM-run direct; the Site says
// where every cell of it ran.
func conformInVM(ctx context.Context, kernel string, list []*scenarios.Conformance, run *results.ConformRun, dir string, log io.Writer) error {
	names := unavailable(run)
	if len(names) == 0 {
		return nil
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	// Every scenario goes to the guest as a file of its own (built-in or
	// not), so the guest runs exactly what the host was given.
	scDir := filepath.Join(absDir, "vm-"+kernel+"-scenarios")
	if err := os.MkdirAll(scDir, 0o755); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	var files []string
	for _, sc := range list {
		b, err := json.Marshal(sc)
		if err != nil {
			return err
		}
		f := filepath.Join(scDir, sc.Name+".yaml")
		if err := os.WriteFile(f, b, 0o644); err != nil {
			return fmt.Errorf("output: %w", err)
		}
		files = append(files, f)
	}
	out := filepath.Join(absDir, "vm-"+kernel)
	fmt.Fprintf(log, "\nchecking %v under %s in QEMU (this kernel cannot run them)\n", names, kernel)
	res, err := vm.Run(ctx, &vm.Config{
		Kernel:  kernel,
		Timeout: vmTimeout,
		Shares:  []string{absDir},
		Args:    []string{"conform", "--datapaths", strings.Join(names, ","), "--scenarios", strings.Join(files, ","), "--output", out},
		Stdout:  io.Discard,
		Stderr:  log,
	})
	if err != nil {
		return fmt.Errorf("vm %s: %w", kernel, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("vm %s: the guest conform exited with status %d", kernel, res.ExitCode)
	}
	matches, _ := filepath.Glob(filepath.Join(out, "*", "conformance.json"))
	if len(matches) != 1 {
		return fmt.Errorf("vm %s: expected one conformance.json under %s, found %d", kernel, out, len(matches))
	}
	guest, err := results.ReadConformRun(matches[0])
	if err != nil {
		return err
	}
	mergeVMConform(run, guest, kernel)
	return nil
}

// mergeVMConform replaces the host's columns of the guest's datapaths (all
// "datapath unavailable" skips) with the guest's cells, each marked with
// the kernel it ran under, and says where in the datapath's description.
func mergeVMConform(run, guest *results.ConformRun, kernel string) {
	where := fmt.Sprintf("checked under %s (%s) in QEMU/%s, this machine's kernel cannot run it", kernel, guest.Env.Kernel, guest.Env.Extra["svclab_vm_accel"])
	for _, g := range guest.Datapaths {
		for i := range run.Datapaths {
			d := &run.Datapaths[i]
			if d.Name != g.Name {
				continue
			}
			host := d.Skipped
			*d = g
			d.Site = kernel
			if d.Description != "" {
				d.Description += "; "
			}
			d.Description += where
			if d.Info == nil {
				d.Info = map[string]string{}
			}
			d.Info["unavailable_on_host"] = host
		}
	}
	for _, gc := range guest.Cells {
		gc.Site = kernel
		for i := range run.Cells {
			if run.Cells[i].Scenario == gc.Scenario && run.Cells[i].Datapath == gc.Datapath {
				run.Cells[i] = gc
			}
		}
	}
}
