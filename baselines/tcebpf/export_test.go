package tcebpf

import (
	"errors"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
)

// Test hooks for the external test package (tcebpf_test), which builds real
// topologies with the harness; the harness imports this package through
// datapath/all, so those tests cannot live in package tcebpf.

// Attach modes, as Info reports them.
const (
	AttachTCX    = attachTCX
	AttachClsact = attachClsact
)

// ForceAttachMode makes the next Setup use mode instead of trying tcx first.
func ForceAttachMode(d *Datapath, mode string) { d.forceMode = mode }

// Stats returns the programs' event counters: new_flow, drop_no_backend,
// drop_error, stale_reverse.
func Stats(d *Datapath) (map[string]uint64, error) { return d.stats() }

// ProgramIDs returns the kernel ids of the loaded programs.
func ProgramIDs(d *Datapath) ([]ebpf.ProgramID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.objs == nil {
		return nil, ErrNotSetUp
	}
	var ids []ebpf.ProgramID
	for _, p := range []*ebpf.Program{d.objs.SvclabTcIngress, d.objs.SvclabTcEgress} {
		info, err := p.Info()
		if err != nil {
			return nil, err
		}
		id, ok := info.ID()
		if !ok {
			return nil, errors.New("kernel reports no program id")
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// RequirePrivileged skips when the test cannot work at all (not root) and
// when an old kernel lacks a prerequisite; on a kernel with everything
// (6.6: tcx) a failed probe fails the test.
func RequirePrivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs and builds network namespaces")
	}
	err := Probe()
	if err == nil {
		return
	}
	v, verr := features.LinuxVersionCode()
	if verr == nil && v >= 6<<16|6<<8 {
		t.Fatalf("Probe failed on a kernel (%d.%d) that should support tc-ebpf: %v", v>>16, v>>8&0xff, err)
	}
	t.Skipf("kernel lacks a tc-ebpf prerequisite: %v", err)
}
