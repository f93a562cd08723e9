package vm

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requireVM skips unless this machine can boot a Debian kernel: QEMU is
// installed, and Debian's archive is reachable or the kernel is cached.
func requireVM(t *testing.T, cacheDir, series string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the kernel cache is in " + DefaultCacheDir)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not found (package qemu-system-x86)")
	}
	if _, err := os.Stat(filepath.Join(cacheDir, series+".json")); err == nil {
		return
	}
	conn, err := net.DialTimeout("tcp", "deb.debian.org:80", 5*time.Second)
	if err != nil {
		t.Skipf("deb.debian.org unreachable (%v) and no %s kernel cached in %s", err, series, cacheDir)
	}
	conn.Close()
}

// tempDirs lists svclab vm's temporary directories.
func tempDirs(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(os.TempDir(), "svclab-vm-*"))
	require.NoError(t, err)
	return m
}

// Boots Debian's 6.1 and runs `svclab datapaths` there: the guest reports
// its own kernel, IPVS (absent on many hosts) is available in it, and a
// failing guest command's status comes back as the result. Nothing is left
// behind.
func TestPrivilegedVMDebian61(t *testing.T) {
	requireVM(t, DefaultCacheDir, "debian-6.1")
	wd, err := os.Getwd()
	require.NoError(t, err)
	root, err := SourceRoot(wd)
	require.NoError(t, err)
	before := tempDirs(t)

	tests := []struct {
		name     string
		args     []string
		wantCode int
		check    func(t *testing.T, stdout, stderr string)
	}{
		{"datapaths", []string{"datapaths"}, 0, func(t *testing.T, stdout, _ string) {
			m := regexp.MustCompile(`(?m)^ipvs .*\n\s+(.*)$`).FindStringSubmatch(stdout)
			require.NotNil(t, m, "no ipvs line in:\n%s", stdout)
			assert.Equal(t, "available", m[1], "IPVS must be usable under Debian's kernel")
		}},
		{"failing command", []string{"bench", "--datapaths", "warp-drive"}, 2 /* bad input */, func(t *testing.T, _, stderr string) {
			assert.Contains(t, stderr, `unknown datapath "warp-drive"`, "the guest's error reaches the host's stderr")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			c, err := ParseArgs(append([]string{"--kernel", "debian-6.1", "--timeout", "5m"}, tt.args...), &stderr)
			require.NoError(t, err)
			c.Dir, c.Stdout, c.Stderr = root, &stdout, &stderr
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			res, err := Run(ctx, c)
			require.NoError(t, err, "stderr:\n%s", stderr.String())
			assert.Equal(t, tt.wantCode, res.ExitCode, "stderr:\n%s", stderr.String())
			assert.True(t, strings.HasPrefix(res.GuestRelease, "6.1.0-"), "guest kernel %q is not Debian's 6.1", res.GuestRelease)
			t.Logf("boot to /init ready: %s (guest uptime %ss)", res.Boot, res.GuestUptime)
			tt.check(t, stdout.String(), stderr.String())
		})
	}
	assert.ElementsMatch(t, before, tempDirs(t), "temporary directories left behind")
}
