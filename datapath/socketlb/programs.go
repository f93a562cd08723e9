package socketlb

import (
	"github.com/cilium/ebpf"

	"svclab/datapath"
)

var _ datapath.ProgramReporter = (*SocketLB)(nil)

// Programs returns the cgroup hook programs by hook name (connect4 …
// getpeername6) and the UDP destroy iterator as "udp_destroy" when loaded.
func (s *SocketLB) Programs() (map[string]*ebpf.Program, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	progs := map[string]*ebpf.Program{}
	if s.progs != nil {
		for _, h := range hooks {
			progs[h.name] = s.progs[h.prog]
		}
	}
	if s.destroyProg != nil {
		progs["udp_destroy"] = s.destroyProg
	}
	return datapath.ClonePrograms(progs)
}
