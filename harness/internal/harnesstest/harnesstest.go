// Package harnesstest holds the helpers the harness packages' privileged
// tests share: the root check, a run lock per test and the leftover check.
package harnesstest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"svclab/harness/runlock"
	"svclab/internal/cgroup2"
	"svclab/internal/nsutil"
)

// RequireRoot skips a privileged test when not root, naming what is
// missing. CI runs as root, where these tests always run.
func RequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces and cgroups")
	}
}

// NewRun takes a run lock whose prefix names every object of the test,
// released at the end of the test.
func NewRun(t *testing.T) *runlock.Lock {
	t.Helper()
	l, err := runlock.New()
	require.NoError(t, err)
	t.Cleanup(l.Release)
	return l
}

// Leftovers lists every network namespace and cgroup whose name carries
// prefix.
func Leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	names, err := nsutil.List(prefix)
	require.NoError(t, err)
	for _, n := range names {
		out = append(out, "netns "+n)
	}
	mnt, err := cgroup2.Mount()
	require.NoError(t, err)
	ents, _ := os.ReadDir(mnt)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "cgroup "+filepath.Join(mnt, e.Name()))
		}
	}
	return out
}
