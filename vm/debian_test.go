package vm

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Kernel choice hangs on dpkg's version order, which differs from string
// and semver order in the places that matter for kernels: the ABI number
// ("47" after "9"), backports ("~bpo12" before the release it backports)
// and rebuilds of a backport.
func TestNewest(t *testing.T) {
	tests := []struct {
		name  string
		older string
		newer string
	}{
		{"numeric, not string, order", "6.1.9-1", "6.1.10-1"},
		{"a backport sorts before its release", "6.12.95-1~bpo12+1", "6.12.95-1"},
		{"a newer backport", "6.12.94-1~bpo12+1", "6.12.95-1~bpo12+1"},
		{"a backport rebuild", "6.12.95-1~bpo12+1", "6.12.95-1~bpo12+2"},
		{"a release candidate", "6.1~rc1-1", "6.1-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range [][]string{{tt.older, tt.newer}, {tt.newer, tt.older}} {
				var pkgs []KernelPackage
				for _, v := range order {
					pkgs = append(pkgs, KernelPackage{Version: v})
				}
				best, ok := Newest(pkgs)
				require.True(t, ok)
				assert.Equal(t, tt.newer, best.Version, "whatever the order of the index")
			}
		})
	}
	best, ok := Newest([]KernelPackage{{Version: "6.1.1-1", Suite: "bookworm"}, {Version: "6.1.1-1", Suite: "bookworm-security"}})
	require.True(t, ok)
	assert.Equal(t, "bookworm", best.Suite, "a tie keeps the first")
	_, ok = Newest(nil)
	assert.False(t, ok, "no package, no choice")
}

const packagesIndex = `Package: linux-image-6.1.0-47-amd64-unsigned
Source: linux
Version: 6.1.176-1
Architecture: amd64
Description: Linux 6.1 for 64-bit PCs
 A second description line.
Filename: pool/main/l/linux/linux-image-6.1.0-47-amd64-unsigned_6.1.176-1_amd64.deb
Size: 68000000
SHA256: 1111111111111111111111111111111111111111111111111111111111111111

Package: linux-image-6.1.0-9-amd64-unsigned
Source: linux
Version: 6.1.27-1
Architecture: amd64
Filename: pool/main/l/linux/linux-image-6.1.0-9-amd64-unsigned_6.1.27-1_amd64.deb
Size: 67000000
SHA256: 2222222222222222222222222222222222222222222222222222222222222222

Package: linux-image-6.1.0-47-cloud-amd64-unsigned
Source: linux
Version: 6.1.176-1
Architecture: amd64
Filename: pool/main/l/linux/cloud.deb
Size: 1
SHA256: 3333333333333333333333333333333333333333333333333333333333333333

Package: linux-image-6.12.95+deb12-amd64-unsigned
Source: linux
Version: 6.12.95-1~bpo12+1
Architecture: amd64
Filename: pool/main/l/linux/linux-image-6.12.95+deb12-amd64-unsigned_6.12.95-1~bpo12+1_amd64.deb
Size: 106423764
SHA256: 4444444444444444444444444444444444444444444444444444444444444444

Package: linux-image-amd64
Source: linux-signed-amd64
Version: 6.1.176-1
Architecture: amd64
Filename: pool/main/l/linux-signed-amd64/meta.deb
Size: 1
SHA256: 5555555555555555555555555555555555555555555555555555555555555555
`

// The index yields only generic amd64 unsigned kernels of the series, and
// the newest by Debian version wins (6.1.176 over 6.1.27, which a string
// comparison of the ABI "47" vs "9" would get wrong).
func TestKernelPackagesAndNewest(t *testing.T) {
	tests := []struct {
		upstream    string
		wantNames   []string
		wantNewest  string
		wantRelease string
	}{
		{"6.1", []string{"linux-image-6.1.0-47-amd64-unsigned", "linux-image-6.1.0-9-amd64-unsigned"}, "6.1.176-1", "6.1.0-47-amd64"},
		{"6.12", []string{"linux-image-6.12.95+deb12-amd64-unsigned"}, "6.12.95-1~bpo12+1", "6.12.95+deb12-amd64"},
	}
	for _, tt := range tests {
		t.Run(tt.upstream, func(t *testing.T) {
			pkgs, err := KernelPackages(strings.NewReader(packagesIndex), tt.upstream, "debian", "bookworm")
			require.NoError(t, err)
			var names []string
			for _, p := range pkgs {
				names = append(names, p.Package)
			}
			assert.Equal(t, tt.wantNames, names)
			best, ok := Newest(pkgs)
			require.True(t, ok)
			assert.Equal(t, tt.wantNewest, best.Version)
			assert.Equal(t, tt.wantRelease, best.Release)
			assert.Equal(t, "bookworm", best.Suite)
		})
	}
}

func TestKernelPackagesRejectsBrokenStanzas(t *testing.T) {
	tests := []struct {
		name, index, want string
	}{
		{"bad size", "Package: linux-image-6.1.0-1-amd64-unsigned\nVersion: 6.1.1-1\nArchitecture: amd64\nSize: lots\nFilename: x.deb\nSHA256: " + strings.Repeat("a", 64) + "\n", `"lots"`},
		{"bad version", "Package: linux-image-6.1.0-1-amd64-unsigned\nVersion: 6.1.1-1 x\nArchitecture: amd64\nSize: 1\nFilename: x.deb\nSHA256: " + strings.Repeat("a", 64) + "\n", "embedded spaces"},
		{"no digest", "Package: linux-image-6.1.0-1-amd64-unsigned\nVersion: 6.1.1-1\nArchitecture: amd64\nSize: 1\nFilename: x.deb\n", "no SHA256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := KernelPackages(strings.NewReader(tt.index), "6.1", "debian", "bookworm")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), "linux-image-6.1.0-1-amd64-unsigned", "the error names the package")
		})
	}
}

func TestParseRelease(t *testing.T) {
	text := `Origin: Debian Backports
Suite: oldstable-backports
Codename: bookworm-backports
Acquire-By-Hash: yes
SHA256:
 96f7a1dd7412d0f16cb3ea07beccab9676226f1b6f3203a8cf7f81161a181015  1906411 main/binary-amd64/Packages
 b74b5bbca6f4701df6c5db54793a68449fb267ac10a9314e761b972ac63b3760   300424 main/binary-amd64/Packages.xz
`
	r, err := ParseRelease([]byte(text))
	require.NoError(t, err)
	assert.Equal(t, "bookworm-backports", r.Codename)
	assert.True(t, r.AcquireHash)
	assert.Equal(t, IndexFile{Path: "main/binary-amd64/Packages.xz", Size: 300424, SHA256: "b74b5bbca6f4701df6c5db54793a68449fb267ac10a9314e761b972ac63b3760"}, r.Files["main/binary-amd64/Packages.xz"])

	_, err = ParseRelease([]byte("Suite: x\n"))
	assert.ErrorContains(t, err, "no SHA256")
	_, err = ParseRelease([]byte("Suite: x\nSHA256:\n nothex 12 a/b\n"))
	assert.ErrorContains(t, err, "bad SHA256 line")
	_, err = ParseRelease(nil)
	assert.ErrorContains(t, err, "empty")
	_, err = ParseRelease([]byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nSuite: x\n"))
	assert.ErrorContains(t, err, "still signed", "an unchecked signature is never stripped silently")
}

func TestLookupSeries(t *testing.T) {
	for _, n := range []string{"debian-6.1", "debian-6.12"} {
		s, ok := LookupSeries(n)
		require.True(t, ok, n)
		assert.NotEmpty(t, s.Archives)
	}
	_, ok := LookupSeries("debian-5.10")
	assert.False(t, ok)
}
