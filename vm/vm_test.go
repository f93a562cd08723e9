package vm

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseArgs(t *testing.T) {
	c, err := ParseArgs([]string{"--kernel", "debian-6.12", "--timeout", "5m", "--cpus", "2", "--", "bench", "--datapaths", "ipvs,direct"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "debian-6.12", c.Kernel)
	assert.Equal(t, 5*time.Minute, c.Timeout)
	assert.Equal(t, []string{"bench", "--datapaths", "ipvs,direct"}, c.Args, "everything after -- is the guest command")

	c, err = ParseArgs([]string{"datapaths"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "debian-6.1", c.Kernel, "the default kernel")
	assert.Equal(t, DefaultTimeout, c.Timeout)
	assert.Equal(t, []string{"datapaths"}, c.Args, "-- is optional before a command")

	c, err = ParseArgs([]string{"--go-test", "./harness/, ./vm/", "--", "-test.run", "Privileged"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"./harness/", "./vm/"}, c.GoTest)
	assert.Equal(t, []string{"-test.run", "Privileged"}, c.Args)

	dir := t.TempDir()
	vmlinuz := filepath.Join(dir, "vmlinuz")
	require.NoError(t, os.WriteFile(vmlinuz, []byte("x"), 0o644))
	dynamic := "/bin/true"

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown kernel", []string{"--kernel", "debian-5.10", "datapaths"}, `--kernel: "debian-5.10" is neither debian-6.1, debian-6.12 nor a kernel image file`},
		{"modules with a series", []string{"--modules", dir, "datapaths"}, "--modules: only for a --kernel path"},
		{"modules without modules.dep", []string{"--kernel", vmlinuz, "--modules", dir, "datapaths"}, "--modules: " + dir + " has no modules.dep"},
		{"dynamic binary", []string{"--binary", dynamic, "datapaths"}, "--binary: /bin/true is dynamically linked"},
		{"missing binary", []string{"--binary", filepath.Join(dir, "nope"), "datapaths"}, "--binary:"},
		{"zero timeout", []string{"--timeout", "0s", "datapaths"}, "--timeout: 0s is not positive"},
		{"bad timeout", []string{"--timeout", "soon", "datapaths"}, `invalid value "soon" for flag -timeout`},
		{"little memory", []string{"--memory", "64", "datapaths"}, "--memory: 64 MiB is too little"},
		{"cpus", []string{"--cpus", "0", "datapaths"}, "--cpus: 0 is out of range"},
		{"accel", []string{"--accel", "hvf", "datapaths"}, `--accel: "hvf" is not auto, kvm or tcg`},
		{"empty go-test", []string{"--go-test", ",", "datapaths"}, "--go-test: no package given"},
		{"nothing to run", []string{"--kernel", "debian-6.1"}, "nothing to run"},
		{"recursion", []string{"--", "vm", "datapaths"}, "cannot be vm itself"},
		{"missing share", []string{"--share", filepath.Join(dir, "nope"), "datapaths"}, "--share:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			_, err := ParseArgs(tt.args, &stderr)
			require.Error(t, err)
			assert.Contains(t, err.Error()+stderr.String(), tt.want)
		})
	}
}

// A Go caller fills only what it means; Validate gives the rest the
// defaults the command line has, and refuses what the command line refuses.
func TestConfigValidate(t *testing.T) {
	c := &Config{Args: []string{"datapaths"}}
	require.NoError(t, c.Validate())
	wd, err := os.Getwd()
	require.NoError(t, err)
	assert.Equal(t, DefaultKernel, c.Kernel)
	assert.Equal(t, DefaultTimeout, c.Timeout)
	assert.Equal(t, DefaultMemory, c.Memory)
	assert.Equal(t, runtime.NumCPU(), c.CPUs)
	assert.Equal(t, DefaultAccel, c.Accel)
	assert.Equal(t, DefaultMirror, c.Mirror)
	assert.Equal(t, DefaultKeyring, c.Keyring)
	assert.Equal(t, DefaultTools, c.Tools)
	assert.NotEmpty(t, c.CacheDir)
	assert.Equal(t, wd, c.Dir)
	assert.Equal(t, io.Discard, c.Stdout)
	assert.Equal(t, io.Discard, c.Stderr)

	parsed, err := ParseArgs([]string{"datapaths"}, io.Discard)
	require.NoError(t, err)
	require.NoError(t, parsed.Validate())
	assert.Equal(t, c, parsed, "ParseArgs with no flags and a zero Config agree")

	kept := &Config{Kernel: "debian-6.12", Timeout: time.Minute, CPUs: 3, Tools: []string{}, Args: []string{"datapaths"}}
	require.NoError(t, kept.Validate())
	assert.Equal(t, "debian-6.12", kept.Kernel)
	assert.Equal(t, time.Minute, kept.Timeout)
	assert.Equal(t, 3, kept.CPUs)
	assert.Empty(t, kept.Tools, "an empty, not nil, Tools means no tools")

	tests := []struct {
		name string
		c    Config
		want string
	}{
		{"negative timeout", Config{Timeout: -time.Second, Args: []string{"datapaths"}}, "--timeout: -1s is not positive"},
		{"little memory", Config{Memory: 64, Args: []string{"datapaths"}}, "--memory: 64 MiB is too little"},
		{"accel", Config{Accel: "hvf", Args: []string{"datapaths"}}, `--accel: "hvf" is not auto, kvm or tcg`},
		{"nothing to run", Config{}, "nothing to run"},
		{"missing share", Config{Shares: []string{"/nonexistent/share"}, Args: []string{"datapaths"}}, "--share:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.ErrorContains(t, tt.c.Validate(), tt.want)
		})
	}
}

func TestShares(t *testing.T) {
	work := t.TempDir()
	elsewhere := filepath.Join(t.TempDir(), "out")
	tests := []struct {
		name  string
		extra []string
		args  []string
		want  []string
	}{
		{"working directory", nil, []string{"datapaths"}, []string{work}},
		{"relative output stays inside", nil, []string{"bench", "--output", "res"}, []string{work}},
		{"absolute output elsewhere is shared", nil, []string{"bench", "--output", elsewhere}, []string{work, elsewhere}},
		{"output= form", nil, []string{"bench", "-output=" + elsewhere}, []string{work, elsewhere}},
		{"output of another command is not", nil, []string{"datapaths", "--output", elsewhere}, []string{work}},
		{"extra and duplicates", []string{work, filepath.Join(work, "sub")}, []string{"datapaths"}, []string{work, filepath.Join(work, "sub")}},
	}
	require.NoError(t, os.Mkdir(filepath.Join(work, "sub"), 0o755))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			shares, err := Shares(work, tt.extra, tt.args)
			require.NoError(t, err)
			var got []string
			for i, s := range shares {
				got = append(got, s.Path)
				assert.Equal(t, "svclab"+string(rune('0'+i)), s.Tag)
			}
			assert.Equal(t, tt.want, got)
		})
	}
	assert.DirExists(t, elsewhere, "an --output directory outside is created so it can be shared")

	for _, d := range []string{"/", "/usr", "/tmp"} {
		_, err := Shares(d, nil, []string{"datapaths"})
		assert.ErrorContains(t, err, d+" cannot be shared", "the guest's own system lives in %s", d)
	}
}

func TestSourceRoot(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(root, "go.mod"), []byte("module svclab\n\ngo 1.26\n"), 0o644))
	sub := filepath.Join(root, "a", "b")
	require.NoError(t, os.MkdirAll(sub, 0o755))
	got, err := SourceRoot(sub)
	require.NoError(t, err)
	assert.Equal(t, root, got)

	other := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(other, "go.mod"), []byte("module example.com/other\n"), 0o644))
	_, err = SourceRoot(other)
	assert.ErrorContains(t, err, "no svclab source tree")
}

// bzImage builds the setup header fields KernelRelease reads.
func bzImage(version string) []byte {
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	off := 0x100 // kernel_version is relative to 0x200
	b[0x20e], b[0x20f] = byte(off), byte(off>>8)
	copy(b[0x200+off:], version+"\x00")
	return b
}

func TestKernelRelease(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vmlinuz")
	require.NoError(t, os.WriteFile(p, bzImage("6.1.0-47-amd64 (debian-kernel@lists.debian.org) #1 SMP"), 0o644))
	got, err := KernelRelease(p)
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-47-amd64", got)

	require.NoError(t, os.WriteFile(p, make([]byte, 0x400), 0o644))
	_, err = KernelRelease(p)
	assert.ErrorContains(t, err, "not a bzImage")

	// --modules must be the tree of that release.
	mods := filepath.Join(dir, "6.8.0")
	require.NoError(t, os.Mkdir(mods, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(mods, "modules.dep"), nil, 0o644))
	require.NoError(t, os.WriteFile(p, bzImage("6.1.0-47-amd64"), 0o644))
	c, err := ParseArgs([]string{"--kernel", p, "--modules", mods, "datapaths"}, io.Discard)
	require.NoError(t, err)
	_, err = c.kernel(t.Context())
	assert.ErrorContains(t, err, "--modules: "+mods+" is not for release 6.1.0-47-amd64")
}

func TestQEMUArgs(t *testing.T) {
	m := &Machine{Accel: "tcg", CPUs: 2, Memory: 2048, Kernel: "/k", Initrd: "/i", Append: "mitigations=off", TempDir: "/t",
		Shares: []Share{{Tag: "svclab0", Path: "/work/main"}}}
	a := strings.Join(m.QEMUArgs(), " ")
	for _, want := range []string{
		"-accel tcg,thread=single -cpu max", "-smp 2 -m 2048", "panic=-1 oops=panic", "-kernel /k -initrd /i", "-no-reboot", "-nodefaults",
		"console=ttyS0,115200 panic=-1", "mitigations=off",
		"-chardev socket,id=console,path=/t/console.sock -serial chardev:console",
		"-chardev socket,id=stdout,path=/t/stdout.sock -serial chardev:stdout",
		"-virtfs local,path=/work/main,mount_tag=svclab0,security_model=none,id=fs0",
	} {
		assert.Contains(t, a, want)
	}
	m.TCGThread = "multi"
	assert.Contains(t, strings.Join(m.QEMUArgs(), " "), "-accel tcg,thread=multi -cpu max")
	assert.Equal(t, "tcg,thread=multi", m.AccelName())
	m.Accel = "kvm"
	assert.Contains(t, strings.Join(m.QEMUArgs(), " "), "-accel kvm -cpu host")
	assert.Equal(t, "kvm", m.AccelName())
}

// Single-threaded TCG is the default (multi-threaded TCG crashed guests,
// issue 15 part 8); --tcg-thread chooses.
func TestTCGThreadFlag(t *testing.T) {
	c, err := ParseArgs([]string{"datapaths"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "single", c.TCGThread)
	c, err = ParseArgs([]string{"--tcg-thread", "multi", "datapaths"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "multi", c.TCGThread)
	_, err = ParseArgs([]string{"--tcg-thread", "two", "datapaths"}, io.Discard)
	assert.ErrorContains(t, err, `--tcg-thread: "two" is not single or multi`)
	c = &Config{Args: []string{"datapaths"}, Dir: t.TempDir()}
	require.NoError(t, c.Validate())
	assert.Equal(t, "single", c.TCGThread)
}

// A guest kernel crash is recorded from the console: the oops line first,
// the panic line after it, both named in the error; a crash report after
// the exit line is not.
func TestConsoleCrash(t *testing.T) {
	m := &Machine{Token: "feedbeef", Accel: "tcg", Stderr: io.Discard}
	c := &console{m: m, tail: &tail{max: 3}, started: map[int]time.Time{}, done: make(chan struct{}), start: time.Now()}
	c.line("[   52.729617] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
	c.line("[   52.736544] RIP: 0010:__ip_local_out+0xa2/0x180")
	c.line("[   52.736861] Kernel panic - not syncing: Fatal exception in interrupt")
	assert.Equal(t, "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI; Kernel panic - not syncing: Fatal exception in interrupt", c.crashed())

	c = &console{m: m, tail: &tail{max: 3}, started: map[int]time.Time{}, done: make(chan struct{}), start: time.Now()}
	c.line("[    3.1] BUG: kernel NULL pointer dereference, address: 0000000000000008")
	assert.Equal(t, "BUG: kernel NULL pointer dereference, address: 0000000000000008", c.crashed())

	c = &console{m: m, tail: &tail{max: 3}, started: map[int]time.Time{}, done: make(chan struct{}), start: time.Now()}
	c.line("svclab-vm-exit feedbeef 0")
	c.line("[    9.0] Oops: something at power-off")
	assert.Empty(t, c.crashed())
}

// The console follower acts on lines carrying this run's token only, and
// passes everything else through.
func TestConsoleMarkers(t *testing.T) {
	var stderr bytes.Buffer
	m := &Machine{Token: "feedbeef", Accel: "tcg", Titles: []string{"svclab/harness"}, Stderr: &stderr}
	c := &console{m: m, tail: &tail{max: 3}, started: map[int]time.Time{}, done: make(chan struct{}), start: time.Now()}
	c.line("[    1.0] some kernel line")
	c.line("svclab-vm-exit 00000000 0") // another run's token: just output
	c.line("svclab-vm-ready feedbeef 3.21 6.1.0-56-amd64")
	c.line("svclab-vm-start feedbeef 0")
	c.line("svclab-vm-done feedbeef 0 1")
	c.line("svclab-vm-exit feedbeef 7 [   8.9] a kernel message on the same line")
	c.line("[    9.0] reboot: Power down")

	select {
	case <-c.done:
	default:
		t.Fatal("the exit line must end the wait")
	}
	assert.True(t, c.exited)
	assert.Equal(t, 7, c.res.ExitCode)
	assert.Equal(t, "3.21", c.res.GuestUptime)
	assert.Equal(t, "6.1.0-56-amd64", c.res.GuestRelease)
	require.Len(t, c.res.Commands, 1)
	assert.Equal(t, CommandResult{Title: "svclab/harness", ExitCode: 1, Duration: c.res.Commands[0].Duration}, c.res.Commands[0])
	out := stderr.String()
	assert.Contains(t, out, "some kernel line")
	assert.Contains(t, out, "svclab-vm-exit 00000000 0")
	assert.NotContains(t, out, "svclab-vm-exit feedbeef", "markers are not echoed")
	assert.NotContains(t, out, "Power down", "nothing after the exit line is echoed")
	assert.Contains(t, c.tail.String(), "some kernel line")
}

func TestTailKeepsLastLines(t *testing.T) {
	tl := &tail{max: 2}
	assert.Contains(t, tl.String(), "no console output")
	for _, l := range []string{"a", "b", "c"} {
		tl.add(l)
	}
	assert.Equal(t, "  | b\n  | c", tl.String())
}

func TestParseLdd(t *testing.T) {
	out := `/usr/sbin/xtables-nft-multi:
	linux-vdso.so.1 (0x00007ffd)
	libmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
	/lib64/ld-linux-x86-64.so.2 (0x00007f)
/usr/sbin/static:
	not a dynamic executable
`
	libs, err := ParseLdd(out)
	require.NoError(t, err)
	assert.Equal(t, []string{"/lib/x86_64-linux-gnu/libmnl.so.0", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}, libs)

	_, err = ParseLdd("\tlibgone.so.1 => not found\n")
	assert.ErrorContains(t, err, "libgone.so.1")
}

// Guest console lines reach the host's logs without terminal control
// sequences.
func TestPlainLine(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"\r\x1b[K[1/3] direct c=1 (about 5s left)", "[1/3] direct c=1 (about 5s left)"},
		{"[1/3] a\r\x1b[K[2/3] b", "[2/3] b"},
		{"\x1b[0;32mOK\x1b[0m done", "OK done"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, plainLine(tt.in), "%q", tt.in)
	}
}
