package kubeproxy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/baselinetest"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// TestPrivilegedLoad runs a stand-in tool that rejects line 2 of its input
// inside a namespace: the error must quote the input around that line, and
// a tool that accepts returns its output and no error.
func TestPrivilegedLoad(t *testing.T) {
	baselinetest.RequireRoot(t, "runs a tool inside a network namespace")
	ns := baselinetest.NewNS(t)
	tool := filepath.Join(t.TempDir(), "tool")
	script := `#!/bin/sh
input=$(cat)
case "$input" in *bad*) echo "Error occurred at line: 2"; exit 1;; esac
echo accepted
`
	require.NoError(t, os.WriteFile(tool, []byte(script), 0o755))
	errLine := regexp.MustCompile(`line:? (\d+)`)
	ctx := context.Background()

	out, err := Load(ctx, ns, errLine, []byte("one\ntwo\n"), tool, "--flag")
	require.NoError(t, err)
	assert.Equal(t, "accepted\n", string(out))

	out, err = Load(ctx, ns, errLine, []byte("one\nbad\nthree\n"), tool, "--flag")
	require.Error(t, err)
	assert.Equal(t, "Error occurred at line: 2\n", string(out), "the output is returned with the error")
	assert.Contains(t, err.Error(), "--flag in netns "+ns.Name, "the error names the command and namespace")
	assert.Contains(t, err.Error(), "input near the failure:\n  1: one\n> 2: bad\n  3: three\n")
}

// TestPrivilegedProbeNS: the probe's namespace is a fresh svclab-probe-…
// one, gone once closed.
func TestPrivilegedProbeNS(t *testing.T) {
	baselinetest.RequireRoot(t, "creates a network namespace")
	ns, err := ProbeNS("test")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(ns.Name, "svclab-probe-"), "name %s", ns.Name)
	left, err := nsutil.List("svclab-probe-")
	require.NoError(t, err)
	assert.Contains(t, left, ns.Name)
	require.NoError(t, ns.Close())
	baselinetest.AssertProbeNSGone(t)
}

// TestPrivilegedRulesetProbe drives the probe with a stand-in Load that
// rejects what mentions a missing feature: the full input fails, each
// feature is tried alone, and the error names only what is missing, quotes
// the tool's first complaint and wraps ErrUnsupported.
func TestPrivilegedRulesetProbe(t *testing.T) {
	baselinetest.RequireRoot(t, "the probe creates a network namespace")
	features := []Feature{
		{What: "alpha", Input: "use alpha"},
		{What: "beta", Input: "use beta"},
		{What: "gamma", Input: "use gamma"},
	}
	probe := func(missing ...string) RulesetProbe {
		return RulesetProbe{
			Name:    "fake",
			Bins:    []string{"sh"},
			Version: func() error { return nil },
			Input:   func() ([]byte, error) { return []byte("use alpha beta gamma"), nil },
			Load: func(_ context.Context, ns *nsutil.NS, input []byte) ([]byte, error) {
				assert.True(t, strings.HasPrefix(ns.Name, "svclab-probe-"), "loads into the probe namespace, not %s", ns.Name)
				for _, m := range missing {
					if strings.Contains(string(input), m) {
						return []byte("no " + m + "\nmore detail\n"), errors.New("rejected")
					}
				}
				return nil, nil
			},
			Features: features,
			Lacker:   "kernel",
			Quote:    FirstLine,
		}
	}
	tests := []struct {
		name    string
		missing []string
		wantErr string
	}{
		{"everything there", nil, ""},
		{"one missing", []string{"beta"}, "fake: kernel lacks beta (no beta): " + datapath.ErrUnsupported.Error()},
		{"two missing, the first failing feature's complaint quoted", []string{"gamma", "alpha"}, "fake: kernel lacks alpha, gamma (no alpha): " + datapath.ErrUnsupported.Error()},
		{"only the whole is rejected", []string{"alpha beta"}, "fake: probe ruleset rejected although every feature passed alone: " + datapath.ErrUnsupported.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := probe(tt.missing...).Run()
			if tt.wantErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, datapath.ErrUnsupported)
				assert.EqualError(t, err, tt.wantErr)
			}
			baselinetest.AssertProbeNSGone(t)
		})
	}

	t.Run("input does not render", func(t *testing.T) {
		p := probe()
		p.Input = func() ([]byte, error) { return nil, errors.New("bad state") }
		err := p.Run()
		assert.EqualError(t, err, "fake probe: bad state")
		assert.NotErrorIs(t, err, datapath.ErrUnsupported, "a bug, not a missing feature")
		baselinetest.AssertProbeNSGone(t)
	})
}

// TestRulesetProbeTool: a missing binary or a tool that cannot say its
// version is unsupported, found before any namespace is made.
func TestRulesetProbeTool(t *testing.T) {
	p := RulesetProbe{
		Name:    "fake",
		Bins:    []string{"sh", "svclab-no-such-binary"},
		Version: func() error { t.Error("Version asked although a binary is missing"); return nil },
	}
	err := p.Run()
	assert.ErrorIs(t, err, datapath.ErrUnsupported)
	assert.EqualError(t, err, "fake: svclab-no-such-binary not found in PATH: "+datapath.ErrUnsupported.Error())

	p.Bins = []string{"sh"}
	p.Version = func() error { return errors.New("tool --version: cannot parse") }
	err = p.Run()
	assert.ErrorIs(t, err, datapath.ErrUnsupported)
	assert.EqualError(t, err, "fake: tool --version: cannot parse: "+datapath.ErrUnsupported.Error())
}

// TestPrivilegedSetSysctls sets two sysctls in a fresh namespace and
// checks the values and what is recorded to restore, white space folded; a
// sysctl that cannot be read stops before it is recorded. Restoring writes
// the old values back and reports, without stopping, what it cannot write.
func TestPrivilegedSetSysctls(t *testing.T) {
	baselinetest.RequireRoot(t, "sets sysctls inside a network namespace")
	ns := baselinetest.NewNS(t)
	old, err := ReadSysctl(ns, "net/ipv4/ip_local_port_range")
	require.NoError(t, err)
	assert.Regexp(t, `^\d+ \d+$`, old, "the tab between the two numbers is folded into a space")
	oldReuse, err := ReadSysctl(ns, "net/ipv4/tcp_tw_reuse")
	require.NoError(t, err)

	restore := map[string]string{}
	err = SetSysctls(ns, []Sysctl{
		{Key: "net/ipv4/ip_local_port_range", Value: "1024 65535"},
		{Key: "net/ipv4/tcp_tw_reuse", Value: "1"},
	}, restore)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"net/ipv4/ip_local_port_range": old, "net/ipv4/tcp_tw_reuse": oldReuse}, restore)
	got, err := ReadSysctl(ns, "net/ipv4/ip_local_port_range")
	require.NoError(t, err)
	assert.Equal(t, "1024 65535", got)

	err = SetSysctls(ns, []Sysctl{{Key: "net/ipv4/svclab_no_such_sysctl", Value: "1"}}, restore)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "netns "+ns.Name+": read sysctl net/ipv4/svclab_no_such_sysctl")
	assert.Len(t, restore, 2, "nothing recorded for a sysctl that was not changed")

	restore["net/ipv4/svclab_no_such_sysctl"] = "1"
	errs := RestoreSysctls(ns, restore)
	require.Len(t, errs, 1, "only the sysctl that does not exist fails")
	assert.Contains(t, errs[0].Error(), "sysctl net/ipv4/svclab_no_such_sysctl=1")
	for key, want := range map[string]string{"net/ipv4/ip_local_port_range": old, "net/ipv4/tcp_tw_reuse": oldReuse} {
		got, err := ReadSysctl(ns, key)
		require.NoError(t, err)
		assert.Equal(t, want, got, "%s restored", key)
	}
}
