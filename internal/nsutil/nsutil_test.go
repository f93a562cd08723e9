package nsutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testName(t *testing.T) string {
	t.Helper()
	var b [4]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return "svclab-test-" + hex.EncodeToString(b[:])
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN) to create and mount network namespaces")
	}
}

func TestPrivilegedCreateDo(t *testing.T) {
	requireRoot(t)
	ns, err := Create(testName(t))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	require.NoError(t, ns.Sysctl("net/ipv4/ip_forward", "1"))
	var got []byte
	require.NoError(t, ns.Do(func() error {
		var err error
		got, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}))
	assert.Equal(t, "1\n", string(got), "the sysctl was written in the namespace")
	names, err := List("svclab-test-")
	require.NoError(t, err)
	assert.Contains(t, names, ns.Name)
}

// A killed run can leave a name in /var/run/netns that is not (or no
// longer) a mount point; Delete must still remove it, or every later
// cleanup fails on it.
func TestPrivilegedDeleteUnmountedName(t *testing.T) {
	requireRoot(t)
	require.NoError(t, os.MkdirAll(RunDir, 0o755))
	name := testName(t)
	p := filepath.Join(RunDir, name)
	require.NoError(t, os.WriteFile(p, nil, 0o444))
	t.Cleanup(func() { _ = os.Remove(p) })
	require.NoError(t, Delete(name))
	assert.NoFileExists(t, p)
	assert.NoError(t, Delete(name), "a missing name is not an error")
}

// After Create, RunDir is a mount point of its own, so a later `ip netns
// add` (a user inspecting a lab) does not bind RunDir over itself and hide
// the names svclab made: they stay openable and removable.
func TestPrivilegedNamesSurviveIPNetnsAdd(t *testing.T) {
	requireRoot(t)
	ns, err := Create(testName(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Close() })
	dir, err := filepath.EvalSymlinks(RunDir)
	require.NoError(t, err)
	mounted, err := mountinfo.Mounted(dir)
	require.NoError(t, err)
	assert.True(t, mounted, "%s is a mount point", dir)

	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("iproute2's ip is not installed: the interplay with `ip netns add` cannot be checked")
	}
	other := testName(t)
	out, err := exec.Command(ip, "netns", "add", other).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { _ = Delete(other) })

	again, err := Open(ns.Name)
	require.NoError(t, err, "the name made before `ip netns add` still opens")
	h := again.Handle()
	h.Close()
	require.NoError(t, ns.Close(), "and is still removed by name")
	_, err = os.Stat(filepath.Join(RunDir, ns.Name))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// An Optional sysctl the kernel lacks is left out; a required one fails,
// naming itself. Every setting the kernel has lands in the namespace.
func TestPrivilegedSetSysctlsOptional(t *testing.T) {
	requireRoot(t)
	ns, err := Create(testName(t))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	missing := Sysctl{Key: "net/ipv4/svclab_no_such_sysctl", Value: "1"}
	require.False(t, missing.Available())
	err = ns.SetSysctls([]Sysctl{missing})
	require.Error(t, err)
	assert.Contains(t, err.Error(), missing.Key)
	missing.Optional = true
	require.NoError(t, ns.SetSysctls(append([]Sysctl{missing}, ClientSysctls...)))
	for _, s := range ClientSysctls {
		if !s.Available() {
			assert.True(t, s.Optional, "%s is required but this kernel lacks it", s.Key)
			continue
		}
		var got []byte
		require.NoError(t, ns.Do(func() error {
			got, err = os.ReadFile(filepath.Join("/proc/sys", s.Key))
			return err
		}))
		assert.Equal(t, strings.Join(strings.Fields(s.Value), " "), strings.Join(strings.Fields(string(got)), " "), s.Key)
	}
}
