package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestShellQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain-arg_1.0", "plain-arg_1.0"},
		{"--datapaths=ipvs,direct", "--datapaths=ipvs,direct"},
		{"", "''"},
		{"two words", "'two words'"},
		{"it's", `'it'\''s'`},
		{"$(reboot)", "'$(reboot)'"},
		{"a\nb", "'a\nb'"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			assert.Equal(t, tt.want, ShellQuote(tt.in))
		})
	}
}

func testInit() InitConfig {
	return InitConfig{
		Token:   "0123abcd0123abcd",
		Release: "6.1.0-47-amd64",
		Modules: []string{"kernel/net/netfilter/nf_conntrack.ko", "kernel/net/netfilter/ipvs/ip_vs.ko"},
		Shares:  []Share{{Tag: "svclab0", Path: "/work/main"}},
		Env:     []string{"SVCLAB_VM=1", "SVCLAB_VM_KERNEL=linux-image x (y)"},
		Commands: []GuestCommand{
			{Dir: "/work/main", Args: []string{"svclab", "bench", "--scenario", "it's quick"}},
			{Dir: "/work/main/harness", Args: []string{"/t/harness.test", "-test.run", "A|B"}},
		},
	}
}

func TestRenderInit(t *testing.T) {
	b, err := RenderInit(testInit())
	require.NoError(t, err)
	s := string(b)
	for _, want := range []string{
		"#!/opt/busybox/sh\n",
		"mount -t cgroup2 cgroup2 /sys/fs/cgroup",
		"mount -t bpf bpf /sys/fs/bpf",
		"load kernel/net/netfilter/nf_conntrack.ko\nload kernel/net/netfilter/ipvs/ip_vs.ko\n",
		"mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,access=any svclab0 /work/main",
		"export 'SVCLAB_VM_KERNEL=linux-image x (y)'",
		`(cd /work/main && exec svclab bench --scenario 'it'\''s quick') < /dev/null > /dev/ttyS1 2> /dev/console`,
		`(cd /work/main/harness && exec /t/harness.test -test.run 'A|B')`,
		`echo "svclab-vm-exit 0123abcd0123abcd $rc"`,
		"poweroff -f",
	} {
		assert.Contains(t, s, want)
	}
	assert.Less(t, strings.Index(s, "load kernel/net/netfilter/ipvs/ip_vs.ko"), strings.Index(s, "mount -t 9p"), "modules (9p among them) load before the share is mounted")
	assert.Less(t, strings.Index(s, "svclab-vm-ready"), strings.Index(s, "exec svclab"), "ready is reported before the command runs")
}

// The rendered script is valid for the shell that runs it.
func TestRenderInitParses(t *testing.T) {
	sh, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox (package busybox-static) not found")
	}
	b, err := RenderInit(testInit())
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "init")
	require.NoError(t, os.WriteFile(p, b, 0o644))
	out, err := exec.Command(sh, "sh", "-n", p).CombinedOutput()
	assert.NoError(t, err, "sh -n: %s", out)
}

func TestRenderInitRejects(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *InitConfig)
		want   string
	}{
		{"token", func(c *InitConfig) { c.Token = "not hex!" }, "token"},
		{"no command", func(c *InitConfig) { c.Commands = nil }, "no command"},
		{"relative dir", func(c *InitConfig) { c.Commands[0].Dir = "work" }, "absolute directory"},
		{"env", func(c *InitConfig) { c.Env = []string{"1X=2"} }, `"1X=2" is not KEY=VALUE`},
		{"share tag", func(c *InitConfig) { c.Shares[0].Tag = "a b" }, "plain tag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testInit()
			tt.modify(&c)
			_, err := RenderInit(c)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}
