package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeArchive serves a one-suite Debian archive holding one kernel
// package, and counts what is fetched.
type fakeArchive struct {
	mu       sync.Mutex
	files    map[string][]byte
	requests map[string]int
}

func (f *fakeArchive) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests[r.URL.Path]++
	b, ok := f.files[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write(b)
}

func (f *fakeArchive) count(suffix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for p, c := range f.requests {
		if strings.HasSuffix(p, suffix) {
			n += c
		}
	}
	return n
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// buildDeb makes a minimal linux-image .deb with dpkg-deb.
func buildDeb(t *testing.T, release string) []byte {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb (package dpkg) not found")
	}
	root := t.TempDir()
	files := map[string]string{
		"DEBIAN/control":                                          "Package: linux-image-" + release + "-unsigned\nVersion: 6.1.99-1\nArchitecture: amd64\nMaintainer: test <t@example.org>\nDescription: test kernel\n",
		"boot/vmlinuz-" + release:                                 "not really a kernel",
		"lib/modules/" + release + "/modules.dep":                 "kernel/drivers/net/dummy.ko:\n",
		"lib/modules/" + release + "/kernel/drivers/net/dummy.ko": "module",
	}
	for p, c := range files {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, p), []byte(c), 0o644))
	}
	deb := filepath.Join(t.TempDir(), "k.deb")
	out, err := exec.Command("dpkg-deb", "--root-owner-group", "-b", root, deb).CombinedOutput()
	require.NoError(t, err, string(out))
	b, err := os.ReadFile(deb)
	require.NoError(t, err)
	return b
}

func newFakeArchive(t *testing.T, deb, servedDeb []byte) *fakeArchive {
	t.Helper()
	const release = "6.1.0-99-amd64"
	filename := "pool/main/l/linux/linux-image-" + release + "-unsigned_6.1.99-1_amd64.deb"
	index := fmt.Sprintf("Package: linux-image-%s-unsigned\nVersion: 6.1.99-1\nArchitecture: amd64\nFilename: %s\nSize: %d\nSHA256: %s\n",
		release, filename, len(deb), sha(deb))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(index))
	require.NoError(t, zw.Close())
	inRelease := fmt.Sprintf("SIGNED\nSuite: stable\nCodename: bookworm\nSHA256:\n %s %d main/binary-amd64/Packages.gz\n %s %d main/binary-amd64/Packages\n",
		sha(gz.Bytes()), gz.Len(), sha([]byte(index)), len(index))
	return &fakeArchive{requests: map[string]int{}, files: map[string][]byte{
		"/debian/dists/bookworm/InRelease":                     []byte(inRelease),
		"/debian/dists/bookworm/main/binary-amd64/Packages.gz": gz.Bytes(),
		"/debian/" + filename:                                  servedDeb,
	}}
}

// fakeVerify stands in for gpgv: a file "signed" by the test starts with
// SIGNED, and only what follows is trusted.
func fakeVerify(_ context.Context, b []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(b, []byte("SIGNED\n"))
	if !ok {
		return nil, errors.New("BAD signature")
	}
	return rest, nil
}

var testSeries = Series{Name: "debian-6.1", Upstream: "6.1", Archives: []Archive{{Path: "debian", Suite: "bookworm"}}}

func newTestCache(dir, url string) *Cache {
	return &Cache{Dir: dir, Log: io.Discard, Fetcher: &Fetcher{Mirror: url, Client: http.DefaultClient, Verify: fakeVerify, Log: io.Discard}}
}

// The first Get downloads, checks and unpacks; later ones reuse the cache,
// re-reading only the indexes when asked to; an unreachable mirror falls
// back to what is cached.
func TestCacheDownloadsOnceAndReuses(t *testing.T) {
	deb := buildDeb(t, "6.1.0-99-amd64")
	arch := newFakeArchive(t, deb, deb)
	srv := httptest.NewServer(arch)
	defer srv.Close()
	dir := t.TempDir()

	k, err := newTestCache(dir, srv.URL).Get(context.Background(), testSeries)
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-99-amd64", k.Release)
	assert.Equal(t, filepath.Join(dir, "6.1.0-99-amd64", "boot", "vmlinuz-6.1.0-99-amd64"), k.Vmlinuz)
	assert.FileExists(t, filepath.Join(k.Modules, "modules.dep"))
	require.NotNil(t, k.Package)
	assert.Equal(t, "6.1.99-1", k.Package.Version)
	assert.Equal(t, 1, arch.count(".deb"))

	// Within a day the choice is reused without touching the network.
	_, err = newTestCache(dir, srv.URL).Get(context.Background(), testSeries)
	require.NoError(t, err)
	assert.Equal(t, 1, arch.count("InRelease"))
	assert.Equal(t, 1, arch.count(".deb"))

	// --refresh reads the indexes again but keeps the unpacked kernel.
	c := newTestCache(dir, srv.URL)
	c.Refresh = true
	_, err = c.Get(context.Background(), testSeries)
	require.NoError(t, err)
	assert.Equal(t, 2, arch.count("InRelease"))
	assert.Equal(t, 1, arch.count(".deb"))

	// Offline: the cached kernel is used, and the log says why.
	srv.Close()
	var log bytes.Buffer
	c = newTestCache(dir, srv.URL)
	c.Refresh, c.Log = true, &log
	k, err = c.Get(context.Background(), testSeries)
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-99-amd64", k.Release)
	assert.Contains(t, log.String(), "using the cached")
}

// Nothing unverified is used: a bad signature, an index that does not match
// the signed digest or a .deb that does not match the index fail, and
// nothing is cached.
func TestCacheRejectsUnverifiedDownloads(t *testing.T) {
	deb := buildDeb(t, "6.1.0-99-amd64")
	tests := []struct {
		name   string
		tamper func(a *fakeArchive)
		want   string
	}{
		{"bad signature", func(a *fakeArchive) {
			a.files["/debian/dists/bookworm/InRelease"] = bytes.TrimPrefix(a.files["/debian/dists/bookworm/InRelease"], []byte("SIGNED\n"))
		}, "InRelease: BAD signature"},
		{"index digest", func(a *fakeArchive) {
			a.files["/debian/dists/bookworm/main/binary-amd64/Packages.gz"] = append(a.files["/debian/dists/bookworm/main/binary-amd64/Packages.gz"], 0)
		}, "Packages.gz: SHA256"},
		{"deb digest", func(a *fakeArchive) {
			for p, b := range a.files {
				if strings.HasSuffix(p, ".deb") {
					a.files[p] = append(append([]byte(nil), b...), 'x')
				}
			}
		}, "the signed index says " + sha(deb)},
		{"missing suite", func(a *fakeArchive) {
			delete(a.files, "/debian/dists/bookworm/InRelease")
		}, "404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arch := newFakeArchive(t, deb, deb)
			tt.tamper(arch)
			srv := httptest.NewServer(arch)
			defer srv.Close()
			dir := t.TempDir()
			_, err := newTestCache(dir, srv.URL).Get(context.Background(), testSeries)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.NoDirExists(t, filepath.Join(dir, "6.1.0-99-amd64"), "nothing unverified may be cached")
		})
	}
}
