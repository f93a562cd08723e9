package vm

import (
	"bytes"
	"fmt"
	"path"
	"regexp"
	"strings"
	"text/template"
)

// Guest paths the initramfs and the host agree on.
const (
	// BusyboxDir holds busybox and one symlink per applet; it comes last
	// in PATH so the host's iptables, nft and ip win over busybox's.
	BusyboxDir = "/opt/busybox"
	// GuestBin is where the svclab binary is installed.
	GuestBin = "/usr/local/bin/svclab"
	// GuestTestDir holds compiled test binaries.
	GuestTestDir = "/usr/local/lib/svclab-tests"
	// StdoutTTY carries the guest command's stdout to the host's stdout;
	// the console (ttyS0) carries its stderr, the kernel's messages and
	// init's progress to the host's stderr.
	StdoutTTY = "/dev/ttyS1"
)

// Console lines the init prints for the host to act on. Each carries the
// run's random token, so nothing the guest command prints can fake them.
const (
	markerReady = "svclab-vm-ready"
	markerExit  = "svclab-vm-exit"
	markerFail  = "svclab-vm-setup-failed"
	markerStart = "svclab-vm-start"
	markerDone  = "svclab-vm-done"
)

// Share is a host directory that the guest mounts at the same path over
// virtio-9p.
type Share struct {
	Tag  string
	Path string
}

// GuestCommand is one program the init runs, in Dir.
type GuestCommand struct {
	Dir  string
	Args []string
}

// InitConfig is what /init needs to know.
type InitConfig struct {
	// Token makes the ready and exit lines unique to this run.
	Token string
	// Release is the kernel release; modules live in /lib/modules/<Release>.
	Release string
	// Modules are loaded in this order, paths relative to the modules dir.
	Modules []string
	Shares  []Share
	// Env is extra KEY=VALUE for the commands.
	Env []string
	// Commands run one after another; the exit status is the last
	// non-zero one (0 when all succeed), so every test binary runs even
	// when an earlier one fails, as with go test.
	Commands []GuestCommand
}

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ShellQuote quotes s for a POSIX shell.
func ShellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = ShellQuote(a)
	}
	return strings.Join(q, " ")
}

var initTemplate = template.Must(template.New("init").Funcs(template.FuncMap{"q": ShellQuote, "qargs": quoteArgs}).Parse(`#!{{.Busybox}}/sh
# svclab vm guest init, rendered by svclab for one run: set the machine up,
# run the command, report its exit status on the console, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{{.Busybox}}
export HOME=/root TMPDIR=/tmp TERM=dumb
{{- range .Env}}
export {{q .}}
{{- end}}

fail() {
	echo "{{.FailMarker}} {{.Token}} $*"
	sync
	poweroff -f
}

mount -t proc proc /proc || fail "mount /proc"
read t0 idle < /proc/uptime
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mount /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "mount /tmp"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2 on /sys/fs/cgroup"
mount -t bpf bpf /sys/fs/bpf || fail "mount bpffs on /sys/fs/bpf"
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname svclab-vm
echo 1 > /proc/sys/kernel/panic_on_oops

# The kernel autoloads what is not preloaded (a netfilter match, an IPVS
# scheduler) through modprobe; busybox's reads our modules.dep and
# modules.alias.
echo {{.Busybox}}/modprobe > /proc/sys/kernel/modprobe
load() {
	insmod /lib/modules/{{q .Release}}/"$1" || echo "svclab-vm: insmod $1 failed"
}
{{- range .Modules}}
load {{q .}}
{{- end}}
read t1 idle < /proc/uptime
echo "svclab-vm: /init started at ${t0}s, loaded {{len .Modules}} modules by ${t1}s"

ip link set lo up
{{- range .Shares}}
mkdir -p {{q .Path}} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,access=any {{q .Tag}} {{q .Path}} || fail "mount the 9p share {{.Tag}} on "{{q .Path}}
{{- end}}
# Raw output: no CR added to LF, no echo of anything the host sends.
stty -F {{.StdoutTTY}} raw -echo || fail "stty {{.StdoutTTY}}"

read up idle < /proc/uptime
echo "{{.ReadyMarker}} {{.Token}} $up $(uname -r)"
rc=0
{{- range $i, $c := .Commands}}
echo "{{$.StartMarker}} {{$.Token}} {{$i}}"
(cd {{q $c.Dir}} && exec {{qargs $c.Args}}) < /dev/null > {{$.StdoutTTY}} 2> /dev/console
r=$?
echo "{{$.DoneMarker}} {{$.Token}} {{$i}} $r"
[ "$r" -ne 0 ] && rc=$r
{{- end}}
sync
echo "{{.ExitMarker}} {{.Token}} $rc"
poweroff -f
`))

// RenderInit returns the /init shell script for busybox sh.
func RenderInit(c InitConfig) ([]byte, error) {
	if !regexp.MustCompile(`^[0-9a-f]{8,}$`).MatchString(c.Token) {
		return nil, fmt.Errorf("init: token %q is not hex", c.Token)
	}
	if len(c.Commands) == 0 {
		return nil, fmt.Errorf("init: no command to run")
	}
	for _, cmd := range c.Commands {
		if len(cmd.Args) == 0 || !path.IsAbs(cmd.Dir) {
			return nil, fmt.Errorf("init: command %q in %q: needs arguments and an absolute directory", cmd.Args, cmd.Dir)
		}
	}
	for _, e := range c.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || !envKeyRE.MatchString(k) {
			return nil, fmt.Errorf("init: environment entry %q is not KEY=VALUE", e)
		}
	}
	for _, s := range c.Shares {
		if !path.IsAbs(s.Path) || !envKeyRE.MatchString(s.Tag) {
			return nil, fmt.Errorf("init: share %q (tag %q): needs an absolute path and a plain tag", s.Path, s.Tag)
		}
	}
	var b bytes.Buffer
	err := initTemplate.Execute(&b, struct {
		InitConfig
		Busybox, StdoutTTY, ReadyMarker, ExitMarker, FailMarker, StartMarker, DoneMarker string
	}{c, BusyboxDir, StdoutTTY, markerReady, markerExit, markerFail, markerStart, markerDone})
	return b.Bytes(), err
}
