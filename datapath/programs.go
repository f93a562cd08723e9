package datapath

import "github.com/cilium/ebpf"

// ProgramReporter is implemented by datapaths made of BPF programs (the
// harness type-asserts for it, as for CounterReader), so that the kernel's
// own accounting of those programs' run time and run count
// (kernel.bpf_stats_enabled) can be attributed to the datapath.
type ProgramReporter interface {
	// Programs returns a duplicate of each attached program, keyed by the
	// part of the datapath it is ("connect4", "tc-ingress"); the caller
	// closes them. Duplicates stay valid after the datapath's Close, so a
	// reader racing a teardown reads a finished program, never a closed
	// descriptor. Empty before Setup.
	Programs() (map[string]*ebpf.Program, error)
}

// ClonePrograms duplicates progs under their names for a ProgramReporter;
// on error it closes what it cloned.
func ClonePrograms(progs map[string]*ebpf.Program) (map[string]*ebpf.Program, error) {
	out := make(map[string]*ebpf.Program, len(progs))
	for name, p := range progs {
		if p == nil {
			continue
		}
		c, err := p.Clone()
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, err
		}
		out[name] = c
	}
	return out, nil
}
