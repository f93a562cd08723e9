// Package bpfstats reads the kernel's own accounting of BPF programs: how
// many times each ran and for how long (Linux 5.8+), for the datapath's
// programs a ProgramReporter hands out.
//
// The kernel keeps these counts only while statistics are enabled, a
// machine-wide switch (every BPF program on the machine then pays two
// clock reads per run). Enable turns it on with BPF_ENABLE_STATS rather
// than by writing the kernel.bpf_stats_enabled sysctl: the kernel holds it
// on for as long as the returned descriptor is open, so a process killed
// mid-measurement cannot leave it on, and two measurements (or another
// tool) holding it at once do not switch it off under each other.
package bpfstats

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// SysctlPath is kernel.bpf_stats_enabled.
const SysctlPath = "/proc/sys/kernel/bpf_stats_enabled"

// Enabled reads kernel.bpf_stats_enabled: whether the sysctl keeps
// statistics on. It does not show BPF_ENABLE_STATS holders (the kernel
// counts those separately), so it reads the same before and after Enable.
func Enabled() (bool, error) {
	b, err := os.ReadFile(SysctlPath)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) != "0", nil
}

// Session is statistics switched on for a measurement.
type Session struct {
	// WasEnabled records whether the sysctl already had statistics on
	// before Enable: the figures are the same, but then the machine
	// paid for them outside the window too.
	WasEnabled bool
	c          io.Closer
}

// Enable switches statistics on until Close.
func Enable() (*Session, error) {
	was, err := Enabled()
	if err != nil {
		return nil, fmt.Errorf("bpfstats: read %s: %w", SysctlPath, err)
	}
	c, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("bpfstats: BPF_ENABLE_STATS (Linux 5.8): %w", err)
	}
	return &Session{WasEnabled: was, c: c}, nil
}

// Close drops this session's hold on statistics (they stay on while
// another holder, or the sysctl, keeps them on). It may be called twice.
func (s *Session) Close() error {
	if s == nil || s.c == nil {
		return nil
	}
	err := s.c.Close()
	s.c = nil
	return err
}

// Stat is one program's cumulative run time and run count.
type Stat struct {
	RunTimeNS uint64 `json:"run_time_ns"`
	RunCount  uint64 `json:"run_count"`
}

// Stats are Stat by program name.
type Stats map[string]Stat

// Read returns the statistics of progs.
func Read(progs map[string]*ebpf.Program) (Stats, error) {
	out := make(Stats, len(progs))
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("bpfstats: program %s: %w", name, err)
		}
		out[name] = Stat{RunTimeNS: uint64(st.Runtime), RunCount: st.RunCount}
	}
	return out, nil
}

// Sub returns s minus base per program (a window's share).
func (s Stats) Sub(base Stats) Stats {
	out := make(Stats, len(s))
	for name, st := range s {
		b := base[name]
		out[name] = Stat{RunTimeNS: st.RunTimeNS - b.RunTimeNS, RunCount: st.RunCount - b.RunCount}
	}
	return out
}

// Total sums every program.
func (s Stats) Total() Stat {
	var t Stat
	for _, st := range s {
		t.RunTimeNS += st.RunTimeNS
		t.RunCount += st.RunCount
	}
	return t
}

// Names lists the programs, sorted.
func (s Stats) Names() []string {
	names := make([]string, 0, len(s))
	for n := range s {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// CloseAll closes programs a ProgramReporter handed out.
func CloseAll(progs map[string]*ebpf.Program) error {
	var errs []error
	for _, p := range progs {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}
