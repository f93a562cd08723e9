package vm

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/u-root/u-root/pkg/cpio"
)

// cpioEntry is one member of a newc archive, as the tests look at it.
type cpioEntry struct {
	Name                 string
	Mode                 uint32
	Data                 []byte
	RdevMajor, RdevMinor uint32
}

// readCPIO reads a newc archive with u-root's reader, up to its trailer.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	require.NoError(t, err)
	var out []cpioEntry
	for _, r := range recs {
		data, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		require.NoError(t, err)
		out = append(out, cpioEntry{Name: r.Name, Mode: uint32(r.Mode), Data: data, RdevMajor: uint32(r.Rmajor), RdevMinor: uint32(r.Rminor)})
	}
	return out
}

func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	require.NoError(t, w.File("usr/bin/tool", 0o755, []byte("#!/bin/sh\necho hi\n")))
	require.NoError(t, w.File("/etc/odd-size", 0o644, []byte("12345")), "a leading slash is dropped")
	require.NoError(t, w.File("empty", 0o600, nil))
	require.NoError(t, w.Symlink("bin", "usr/bin"))
	require.NoError(t, w.CharDev("dev/console", 0o600, 5, 1))
	require.NoError(t, w.MkdirAll("usr/bin"), "an existing directory is fine")
	require.NoError(t, w.Close())
	assert.Zero(t, buf.Len()%4, "newc pads everything to 4 bytes")

	got := readCPIO(t, buf.Bytes())
	byName := map[string]cpioEntry{}
	var order []string
	for _, e := range got {
		byName[e.Name] = e
		order = append(order, e.Name)
	}
	assert.Equal(t, []string{"usr", "usr/bin", "usr/bin/tool", "etc", "etc/odd-size", "empty", "bin", "dev", "dev/console"}, order, "parents come before their children")
	assert.Equal(t, uint32(modeFile|0o755), byName["usr/bin/tool"].Mode)
	assert.Equal(t, "#!/bin/sh\necho hi\n", string(byName["usr/bin/tool"].Data))
	assert.Equal(t, "12345", string(byName["etc/odd-size"].Data))
	assert.Empty(t, byName["empty"].Data)
	assert.Equal(t, uint32(modeSymlink|0o777), byName["bin"].Mode)
	assert.Equal(t, "usr/bin", string(byName["bin"].Data))
	assert.Equal(t, uint32(modeDir|0o755), byName["usr"].Mode)
	assert.Equal(t, [2]uint32{5, 1}, [2]uint32{byName["dev/console"].RdevMajor, byName["dev/console"].RdevMinor})
	assert.Equal(t, uint32(modeChar|0o600), byName["dev/console"].Mode)
}

func TestCPIOWriterRefusesConflicts(t *testing.T) {
	w := NewCPIOWriter(&bytes.Buffer{})
	require.NoError(t, w.File("a", 0o644, nil))
	assert.ErrorContains(t, w.File("a", 0o644, nil), "a added twice")
	assert.ErrorContains(t, w.File("a/b", 0o644, nil), "a is not a directory")
	assert.ErrorContains(t, w.File("/", 0o644, nil), "empty name")
}

// GNU cpio, where installed, reads what we write: the format is the real
// newc, not just something u-root's reader accepts.
func TestCPIOReadableByGNUCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio (package cpio) not found")
	}
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	require.NoError(t, w.File("d/f", 0o640, []byte("content")))
	require.NoError(t, w.Symlink("d/l", "f"))
	require.NoError(t, w.Close())
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-i", "-d", "--quiet")
	cmd.Dir, cmd.Stdin = dir, &buf
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	b, err := os.ReadFile(filepath.Join(dir, "d", "l"))
	require.NoError(t, err)
	assert.Equal(t, "content", string(b))
}
