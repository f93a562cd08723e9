package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/harness"
)

func TestMain(m *testing.M) {
	harness.ChildMain(os.Args[1:])
	os.Exit(m.Run())
}

// Bad input must end with a clear error naming the field and why, before
// anything is created.
func TestBenchBadInput(t *testing.T) {
	dir := t.TempDir()
	badCIDR := filepath.Join(dir, "bad-cidr.yaml")
	b, err := os.ReadFile("../../scenarios/default.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(badCIDR, bytes.Replace(b, []byte("10.244.0.0/16"), []byte("10.244.0.0/33"), 1), 0o644))
	unknownField := filepath.Join(dir, "unknown-field.yaml")
	require.NoError(t, os.WriteFile(unknownField, append(b, []byte("colour: blue\n")...), 0o644))

	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		{"unknown datapath", []string{"--datapaths", "socketlb,warp-drive"}, []string{"datapaths", `unknown datapath "warp-drive"`, "known:"}},
		{"zero backends", []string{"--backends", "0"}, []string{"topology.backends", "0 is out of range"}},
		{"10000 backends", []string{"--backends", "10000"}, []string{"topology.backends", "10000 is out of range"}},
		{"malformed CIDR", []string{"--scenario", badCIDR}, []string{"topology.podCIDR", `"10.244.0.0/33" is not a CIDR`}},
		{"unknown scenario field", []string{"--scenario", unknownField}, []string{"colour"}},
		{"unreadable scenario file", []string{"--scenario", filepath.Join(dir, "missing.yaml")}, []string{"cannot read", "missing.yaml"}},
		{"scenario is a directory", []string{"--scenario", dir + "/"}, []string{"cannot read"}},
		{"unknown built-in scenario", []string{"--scenario", "nosuch"}, []string{`"nosuch" is neither a built-in scenario`}},
		{"bad concurrency", []string{"--concurrency", "1,x"}, []string{"--concurrency", `"x" is not an integer`}},
		{"zero concurrency", []string{"--concurrency", "0"}, []string{"workload.concurrency", "0 is out of range"}},
		{"zero repetitions", []string{"--repetitions", "0"}, []string{"workload.repetitions"}},
		{"duplicate datapath", []string{"--datapaths", "direct,direct"}, []string{"datapaths", "listed twice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"bench", "--output", t.TempDir()}, tt.args...), &stdout, &stderr)
			assert.NotEqual(t, 0, code)
			for _, w := range tt.want {
				assert.Contains(t, stderr.String(), w)
			}
			assert.NotContains(t, stderr.String(), "panic")
		})
	}
}

// An end-to-end run of the quick scenario: the real binary path (child
// processes, topology per trial, three datapaths, charts), and nothing left.
func TestPrivilegedBenchQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build topologies")
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--scenario", "quick", "--output", out}, &stdout, &stderr)
	require.Equal(t, 0, code, "stderr: %s", stderr.String())
	ents, err := os.ReadDir(out)
	require.NoError(t, err)
	require.Len(t, ents, 1)
	for _, f := range []string{"results.json", "qps.png", "p90.png"} {
		fi, err := os.Stat(filepath.Join(out, ents[0].Name(), f))
		require.NoError(t, err)
		assert.Greater(t, fi.Size(), int64(100), f)
	}
	for _, dp := range []string{"socketlb", "iptables", "direct"} {
		assert.Contains(t, stdout.String(), dp)
	}
	assert.True(t, strings.Contains(stderr.String(), "[1/"), "progress lines on stderr: %s", stderr.String())
	left, err := harness.CleanupStale()
	require.NoError(t, err)
	assert.Empty(t, left, "a finished run must leave nothing for cleanup")
}
