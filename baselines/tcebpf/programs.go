package tcebpf

import (
	"github.com/cilium/ebpf"

	"svclab/datapath"
)

var _ datapath.ProgramReporter = (*Datapath)(nil)

// Programs returns the two tc programs by direction: "tc-ingress" (from
// the clients, the forward DNAT) and "tc-egress" (towards them, the
// reverse).
func (d *Datapath) Programs() (map[string]*ebpf.Program, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.objs == nil {
		return map[string]*ebpf.Program{}, nil
	}
	return datapath.ClonePrograms(map[string]*ebpf.Program{
		"tc-ingress": d.objs.SvclabTcIngress,
		"tc-egress":  d.objs.SvclabTcEgress,
	})
}
