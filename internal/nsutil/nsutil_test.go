package nsutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

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
