package bpfstats

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatsArithmetic(t *testing.T) {
	a := Stats{"connect4": {RunTimeNS: 900, RunCount: 9}, "sendmsg4": {RunTimeNS: 50, RunCount: 1}}
	b := Stats{"connect4": {RunTimeNS: 100, RunCount: 1}}
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"sub", a.Sub(b), Stats{"connect4": {RunTimeNS: 800, RunCount: 8}, "sendmsg4": {RunTimeNS: 50, RunCount: 1}}},
		{"total", a.Total(), Stat{RunTimeNS: 950, RunCount: 10}},
		{"names", a.Names(), []string{"connect4", "sendmsg4"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, tc.got) })
	}
}

// TestPrivilegedEnableCountsRuns runs a trivial program through
// BPF_PROG_TEST_RUN (which the kernel accounts like any other run) with
// statistics on, and checks the sysctl was never touched.
func TestPrivilegedEnableCountsRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads a BPF program and enables BPF statistics")
	}
	before, err := Enabled()
	require.NoError(t, err)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "svclab_stats_t", Type: ebpf.SocketFilter, License: "MIT",
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()},
	})
	require.NoError(t, err)
	defer prog.Close()
	progs := map[string]*ebpf.Program{"p": prog}

	s, err := Enable()
	require.NoError(t, err)
	assert.Equal(t, before, s.WasEnabled)
	base, err := Read(progs)
	require.NoError(t, err)
	const runs = 1000
	_, err = prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: runs})
	require.NoError(t, err)
	after, err := Read(progs)
	require.NoError(t, err)
	d := after.Sub(base)["p"]
	assert.Equal(t, uint64(runs), d.RunCount)
	assert.NotZero(t, d.RunTimeNS)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close twice")

	on, err := Enabled()
	require.NoError(t, err)
	assert.Equal(t, before, on, "the sysctl untouched")
}
