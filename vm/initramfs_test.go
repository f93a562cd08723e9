package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readImage unpacks a gzip'd newc image into name -> entry.
func readImage(t *testing.T, b []byte) map[string]cpioEntry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	require.NoError(t, err)
	raw, err := io.ReadAll(zr)
	require.NoError(t, err)
	m := map[string]cpioEntry{}
	for _, e := range readCPIO(t, raw) {
		m[e.Name] = e
	}
	return m
}

// lookup follows the image's symlinks like the guest kernel would.
func lookup(t *testing.T, img map[string]cpioEntry, p string) (cpioEntry, bool) {
	t.Helper()
	for range 40 {
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		moved := false
		for i := range parts {
			prefix := strings.Join(parts[:i+1], "/")
			e, ok := img[prefix]
			if !ok {
				return cpioEntry{}, false
			}
			if e.Mode&modeType == modeSymlink {
				target := string(e.Data)
				if !filepath.IsAbs(target) {
					target = filepath.Join("/", filepath.Dir(prefix), target)
				}
				p = filepath.Join(append([]string{target}, parts[i+1:]...)...)
				moved = true
				break
			}
			if i == len(parts)-1 {
				return e, true
			}
		}
		if !moved {
			return cpioEntry{}, false
		}
	}
	return cpioEntry{}, false
}

// The image holds init, busybox with its applets, the given files, host
// tools at their host paths (symlinks recreated) with their libraries, and
// the modules decompressed with a modules.dep of their own.
func TestBuildInitramfs(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox (package busybox-static) not found")
	}
	if static, _ := IsStaticELF(busybox); !static {
		t.Skip("busybox is not the static one (package busybox-static)")
	}
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload")
	require.NoError(t, os.WriteFile(payload, []byte("binary"), 0o755))
	// A tool reached through a chain of links, as /usr/sbin/iptables is.
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "alt"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sbin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sbin", "real-tool"), []byte("#!/bin/sh\n"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(dir, "sbin", "real-tool"), filepath.Join(dir, "alt", "tool")))
	require.NoError(t, os.Symlink(filepath.Join(dir, "alt", "tool"), filepath.Join(dir, "sbin", "tool")))
	ls, err := exec.LookPath("ls")
	require.NoError(t, err)

	mods := filepath.Join(dir, "modules", "6.1.0-99-amd64")
	require.NoError(t, os.MkdirAll(filepath.Join(mods, "kernel/net"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(mods, "kernel/net/a.ko"), []byte("module a"), 0o644))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("module b"))
	require.NoError(t, zw.Close())
	require.NoError(t, os.WriteFile(filepath.Join(mods, "kernel/net/b.ko.gz"), gz.Bytes(), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("kernel/net/a.ko:\nkernel/net/b.ko.gz: kernel/net/a.ko\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(mods, "modules.alias"), []byte("alias b-alias b\nalias other other\n"), 0o644))
	ix, err := LoadModuleIndex(mods)
	require.NoError(t, err)
	plan, err := PlanModules(ix, nil, []string{"b"})
	require.NoError(t, err)

	var out bytes.Buffer
	info, err := BuildInitramfs(context.Background(), ImageSpec{
		Release: "6.1.0-99-amd64", Modules: plan, Busybox: busybox,
		Files: map[string]string{GuestBin: payload},
		Tools: []string{filepath.Join(dir, "sbin", "tool"), ls, "no-such-tool-anywhere"},
		Init:  []byte("#!/opt/busybox/sh\n"),
	}, &out)
	require.NoError(t, err)
	assert.Equal(t, int64(out.Len()), info.Compressed)
	assert.Equal(t, 2, info.Modules)
	img := readImage(t, out.Bytes())

	init, ok := img["init"]
	require.True(t, ok)
	assert.Equal(t, uint32(modeFile|0o755), init.Mode)
	assert.Equal(t, uint32(modeChar|0o600), img["dev/console"].Mode, "the kernel needs /dev/console before /dev is mounted")
	for _, p := range []string{"/opt/busybox/busybox", "/opt/busybox/sh", "/opt/busybox/insmod", "/opt/busybox/modprobe", "/bin/sh"} {
		_, ok := lookup(t, img, p)
		assert.True(t, ok, "%s in the image", p)
	}
	e, ok := lookup(t, img, GuestBin)
	require.True(t, ok)
	assert.Equal(t, "binary", string(e.Data))

	e, ok = lookup(t, img, filepath.Join(dir, "sbin", "tool"))
	require.True(t, ok, "the tool resolves through its links")
	assert.Equal(t, "#!/bin/sh\n", string(e.Data))
	assert.Equal(t, uint32(modeSymlink|0o777), img[strings.TrimPrefix(filepath.Join(dir, "alt", "tool"), "/")].Mode)

	_, ok = lookup(t, img, ls)
	require.True(t, ok)
	lddOut, err := exec.Command("ldd", ls).Output()
	require.NoError(t, err)
	libs, err := ParseLdd(string(lddOut))
	require.NoError(t, err)
	for _, l := range libs {
		_, ok := lookup(t, img, l)
		assert.True(t, ok, "library %s of ls", l)
	}

	e, ok = lookup(t, img, "/lib/modules/6.1.0-99-amd64/kernel/net/b.ko")
	require.True(t, ok)
	assert.Equal(t, "module b", string(e.Data), "modules are stored decompressed")
	e, _ = lookup(t, img, "/lib/modules/6.1.0-99-amd64/modules.dep")
	assert.Equal(t, "kernel/net/a.ko:\nkernel/net/b.ko: kernel/net/a.ko\n", string(e.Data))
	e, _ = lookup(t, img, "/lib/modules/6.1.0-99-amd64/modules.alias")
	assert.Equal(t, "alias b-alias b\n", string(e.Data))
}

// The same inputs give the same bytes: entry order, inode numbers, owners
// and mtimes never depend on the build, so an image can be compared or
// cached by its digest.
func TestBuildInitramfsIsDeterministic(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox (package busybox-static) not found")
	}
	if static, _ := IsStaticELF(busybox); !static {
		t.Skip("busybox is not the static one (package busybox-static)")
	}
	dir := t.TempDir()
	files := map[string]string{}
	for _, n := range []string{"a", "b", "c", "d"} {
		p := filepath.Join(dir, n)
		require.NoError(t, os.WriteFile(p, []byte("file "+n), 0o755))
		files["/opt/svclab/"+n] = p
	}
	mods := filepath.Join(dir, "modules", "6.1.0-99-amd64")
	require.NoError(t, os.MkdirAll(filepath.Join(mods, "kernel/net"), 0o755))
	var dep strings.Builder
	for _, n := range []string{"m1", "m2", "m3", "m4", "m5", "m6"} {
		require.NoError(t, os.WriteFile(filepath.Join(mods, "kernel/net", n+".ko"), []byte("module "+n), 0o644))
		dep.WriteString("kernel/net/" + n + ".ko:\n")
	}
	require.NoError(t, os.WriteFile(filepath.Join(mods, "modules.dep"), []byte(dep.String()), 0o644))
	ix, err := LoadModuleIndex(mods)
	require.NoError(t, err)
	plan, err := PlanModules(ix, []string{"kernel/net/"}, []string{"m3", "m1"})
	require.NoError(t, err)
	ls, err := exec.LookPath("ls")
	require.NoError(t, err)

	build := func() []byte {
		var out bytes.Buffer
		_, err := BuildInitramfs(context.Background(), ImageSpec{
			Release: "6.1.0-99-amd64", Modules: plan, Busybox: busybox, Files: files,
			Tools: []string{ls}, Init: []byte("#!/opt/busybox/sh\n"),
		}, &out)
		require.NoError(t, err)
		return out.Bytes()
	}
	first := build()
	for range 3 {
		assert.Equal(t, first, build())
	}
}

func TestBuildInitramfsNeedsStaticBusybox(t *testing.T) {
	_, err := BuildInitramfs(context.Background(), ImageSpec{Busybox: "/bin/true", Init: []byte("x")}, &bytes.Buffer{})
	assert.ErrorContains(t, err, "must be a static binary (package busybox-static)")
}
