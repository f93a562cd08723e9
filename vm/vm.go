// Package vm runs svclab commands, or compiled test binaries, under a chosen
// Linux kernel in a QEMU virtual machine: a Debian kernel fetched from
// Debian's archive (bookworm's 6.1, 6.12 from bookworm-backports) or any
// vmlinuz with its modules tree.
//
// The guest's root is an initramfs svclab builds for each run: a static
// svclab binary (and test binaries), busybox for /init, the host's iptables
// and nft with their libraries, and the kernel modules the datapaths use.
// The host's working directory is shared with the guest over virtio-9p at the
// same path, so relative paths (scenario files, --output results) mean the
// same inside as outside and results land on the host as the guest writes
// them. The console streams to stderr; the guest command's stdout comes back
// on a second serial line; /init reports the exit status with a per-run token
// and powers off.
//
// The API is a Config and Run: a Go caller (the bench's VM phase) fills the
// Config, Validate gives zero fields their defaults, and Run boots the guest
// and returns its exit status. ParseArgs is only `svclab vm`'s reading of
// its flags into a Config. Debian's versions and control files are read with
// pault.ag/go/debian, and the initramfs's newc records are written with
// u-root's pkg/cpio. README.md describes the guest and lists the files.
package vm

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Config is one guest run. A Go caller fills it and passes it to Run;
// `svclab vm` fills it with ParseArgs. Zero fields take the defaults
// Validate gives them, so a caller sets only what it means:
//
//	res, err := vm.Run(ctx, &vm.Config{
//		Kernel: "debian-6.12",
//		Shares: []string{dir},
//		Args:   []string{"bench", "--scenario", scenario},
//		Stderr: os.Stderr,
//	})
type Config struct {
	// Kernel is a series name (debian-6.1, debian-6.12) or a vmlinuz path;
	// default DefaultKernel.
	Kernel string
	// Modules is lib/modules/<release> (with modules.dep) for a vmlinuz
	// path; empty for a kernel without loadable modules.
	Modules string
	// Binary is a static svclab binary; empty builds one from the source
	// tree above Dir.
	Binary string
	// GoTest lists packages whose test binaries run instead of a svclab
	// command; Args are then test flags.
	GoTest []string
	// Args are the svclab command line without "svclab" (or the test
	// flags), e.g. {"bench", "--scenario", "quick"}.
	Args []string

	// Timeout bounds the whole guest run; default DefaultTimeout.
	Timeout time.Duration
	// Memory is the guest's memory in MiB; default DefaultMemory.
	Memory int
	// CPUs is the guest's CPU count; default the host's.
	CPUs int
	// Accel is auto (kvm when usable, else tcg), kvm or tcg; default auto.
	Accel string
	// TCGThread is how QEMU emulates the CPUs under tcg: "single" (one
	// host thread takes the vCPUs in turn) or "multi" (a host thread per
	// vCPU); default DefaultTCGThread. Multi-threaded TCG (QEMU 7.2)
	// lets a vCPU run a stale translation of kernel text that another
	// vCPU has just patched with the int3 protocol (static keys such as
	// netfilter's nf_hooks_needed, flipped by every IPVS or nftables
	// setup): the guest dies with "Oops: int3" (issue 15 part 8;
	// ci/vm-panics.sh measures it).
	TCGThread string
	// Append is extra kernel command line, e.g. "mitigations=off".
	Append string
	// Shares are host directories, besides Dir, that the guest mounts at
	// the same path.
	Shares []string

	// CacheDir keeps downloaded kernels; default DefaultCacheDir for root,
	// else under the user's cache directory.
	CacheDir string
	// Mirror is the Debian mirror; default DefaultMirror.
	Mirror string
	// Keyring checks the mirror's InRelease files; default DefaultKeyring.
	Keyring string
	// Refresh re-reads Debian's indexes even if the newest kernel was
	// looked up in the last 24 hours.
	Refresh bool
	// Busybox is a static busybox for /init; default busybox in PATH.
	Busybox string
	// Tools are host programs copied into the guest; nil means
	// DefaultTools.
	Tools []string

	// Dir is the working directory, shared with the guest and where the
	// command runs; default the process's.
	Dir string

	// Stdout receives the guest command's stdout, Stderr the console and
	// svclab's progress lines; nil discards.
	Stdout, Stderr io.Writer
}

// Defaults for a zero Config field.
const (
	DefaultKernel  = "debian-6.1"
	DefaultTimeout = 30 * time.Minute
	DefaultMemory  = 2048 // MiB
	DefaultAccel   = "auto"
	// DefaultTCGThread is single-threaded TCG: the guest keeps its CPUs
	// but they share one host thread, so code patching is never raced.
	DefaultTCGThread = "single"
)

// DefaultCacheDir is where Debian kernels are kept between runs when svclab
// runs as root.
const DefaultCacheDir = "/var/cache/svclab/kernels"

// Usage is the vm command's synopsis.
const Usage = `Usage:
  svclab vm [flags] [--] COMMAND [ARGS...]      run 'svclab COMMAND ARGS...' in a VM
  svclab vm [flags] --go-test PKGS [-- FLAGS]   run packages' compiled tests in a VM

Examples:
  svclab vm --kernel debian-6.1 -- bench --scenario quick --datapaths ipvs,socketlb,direct
  svclab vm --kernel debian-6.12 -- datapaths
  svclab vm --kernel debian-6.1 --go-test ./harness/ -- -test.run Privileged
  svclab vm --kernel /boot/vmlinuz-6.8.0 --modules /lib/modules/6.8.0 -- datapaths

Flags:
`

// ParseArgs reads the vm command line into a Config and checks it. Errors
// name the flag at fault. Unlike in a Config, a zero --timeout, --memory or
// --cpus is an error, not the default: on a command line it is a mistake.
func ParseArgs(args []string, stderr io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("vm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), Usage)
		fs.PrintDefaults()
	}
	c := &Config{}
	var goTest string
	fs.StringVar(&c.Kernel, "kernel", DefaultKernel, "kernel to boot: "+strings.Join(SeriesNames(), ", ")+" (fetched from Debian), or a vmlinuz path")
	fs.StringVar(&c.Modules, "modules", "", "lib/modules/<release> directory (with modules.dep) for a --kernel path")
	fs.StringVar(&c.Binary, "binary", "", "static svclab binary to run in the guest (default: build one with CGO_ENABLED=0 from the source tree)")
	fs.StringVar(&goTest, "go-test", "", "comma-separated packages whose tests run in the guest (go test -c); flags after -- go to the test binaries")
	fs.DurationVar(&c.Timeout, "timeout", DefaultTimeout, "stop the guest after this long")
	fs.IntVar(&c.Memory, "memory", DefaultMemory, "guest memory in MiB")
	fs.IntVar(&c.CPUs, "cpus", runtime.NumCPU(), "guest CPUs")
	fs.StringVar(&c.Accel, "accel", DefaultAccel, "QEMU accelerator: auto (kvm when usable, else tcg), kvm or tcg")
	fs.StringVar(&c.TCGThread, "tcg-thread", DefaultTCGThread, "tcg only: single (the vCPUs take turns on one host thread) or multi (a host thread per vCPU: faster, but the guest kernel can crash with \"Oops: int3\" when it patches its code)")
	fs.StringVar(&c.Append, "append", "", "extra kernel command line, e.g. mitigations=off")
	fs.Func("share", "extra host directory the guest mounts at the same path (repeatable)", func(s string) error {
		c.Shares = append(c.Shares, s)
		return nil
	})
	fs.StringVar(&c.CacheDir, "cache", defaultCacheDir(), "where downloaded kernels are kept")
	fs.StringVar(&c.Mirror, "mirror", DefaultMirror, "Debian mirror to fetch kernels from")
	fs.BoolVar(&c.Refresh, "refresh", false, "read Debian's indexes again even if the newest kernel was looked up in the last 24h")
	fs.StringVar(&c.Busybox, "busybox", "", "static busybox for the guest's /init (default: busybox in PATH, package busybox-static)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.Args = fs.Args()
	if goTest != "" {
		for _, p := range strings.Split(goTest, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.GoTest = append(c.GoTest, p)
			}
		}
		if len(c.GoTest) == 0 {
			return nil, errors.New("--go-test: no package given")
		}
	}
	// check, not Validate: every flag has its default already, and a zero
	// given on the command line must not turn into one.
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

func defaultCacheDir() string {
	if os.Geteuid() == 0 {
		return DefaultCacheDir
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "svclab", "kernels")
	}
	return DefaultCacheDir
}

// Validate gives zero fields their defaults and checks the Config. Errors
// name the field by its command-line flag (--kernel for Kernel). Run calls
// it; a caller may call it first to fail before anything is built.
func (c *Config) Validate() error {
	if err := c.setDefaults(); err != nil {
		return err
	}
	return c.check()
}

func (c *Config) setDefaults() error {
	c.Kernel = cmp.Or(c.Kernel, DefaultKernel)
	c.Timeout = cmp.Or(c.Timeout, DefaultTimeout)
	c.Memory = cmp.Or(c.Memory, DefaultMemory)
	c.CPUs = cmp.Or(c.CPUs, runtime.NumCPU())
	c.Accel = cmp.Or(c.Accel, DefaultAccel)
	c.TCGThread = cmp.Or(c.TCGThread, DefaultTCGThread)
	c.Mirror = cmp.Or(c.Mirror, DefaultMirror)
	c.Keyring = cmp.Or(c.Keyring, DefaultKeyring)
	if c.CacheDir == "" {
		c.CacheDir = defaultCacheDir()
	}
	if c.Tools == nil {
		c.Tools = DefaultTools
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	if c.Dir == "" {
		d, err := os.Getwd()
		if err != nil {
			return err
		}
		c.Dir = d
	}
	return nil
}

// check reports the first field that is wrong, naming its flag.
func (c *Config) check() error {
	if _, ok := LookupSeries(c.Kernel); !ok {
		fi, err := os.Stat(c.Kernel)
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("--kernel: %q is neither %s nor a kernel image file", c.Kernel, strings.Join(SeriesNames(), ", "))
		}
	} else if c.Modules != "" {
		return fmt.Errorf("--modules: only for a --kernel path; %s brings its own modules", c.Kernel)
	}
	if c.Modules != "" {
		if _, err := os.Stat(filepath.Join(c.Modules, "modules.dep")); err != nil {
			return fmt.Errorf("--modules: %s has no modules.dep (run depmod for it): %w", c.Modules, err)
		}
	}
	if c.Binary != "" {
		static, err := IsStaticELF(c.Binary)
		if err != nil {
			return fmt.Errorf("--binary: %w", err)
		}
		if !static {
			return fmt.Errorf("--binary: %s is dynamically linked; the guest has no C library for it (build with CGO_ENABLED=0)", c.Binary)
		}
		if len(c.GoTest) > 0 {
			return errors.New("--binary: not used with --go-test, which runs test binaries")
		}
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("--timeout: %s is not positive", c.Timeout)
	}
	if c.Memory < 256 {
		return fmt.Errorf("--memory: %d MiB is too little (at least 256)", c.Memory)
	}
	if c.CPUs < 1 || c.CPUs > 64 {
		return fmt.Errorf("--cpus: %d is out of range 1..64", c.CPUs)
	}
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("--accel: %q is not auto, kvm or tcg", c.Accel)
	}
	switch c.TCGThread {
	case "single", "multi":
	default:
		return fmt.Errorf("--tcg-thread: %q is not single or multi", c.TCGThread)
	}
	if len(c.GoTest) == 0 {
		if len(c.Args) == 0 {
			return errors.New("nothing to run: give a svclab command after -- (e.g. svclab vm -- datapaths) or --go-test PACKAGES")
		}
		if c.Args[0] == "vm" {
			return errors.New("the guest command cannot be vm itself")
		}
	}
	for _, s := range c.Shares {
		if _, err := os.Stat(s); err != nil {
			return fmt.Errorf("--share: %w", err)
		}
	}
	return nil
}

// unshareable are guest directories a share must not cover: the guest's
// own system lives there.
var unshareable = []string{"/", "/usr", "/etc", "/opt", "/dev", "/proc", "/sys", "/run", "/tmp", "/var", "/lib", "/lib64", "/bin", "/sbin"}

// Shares returns the host directories the guest mounts: dir, the extra ones
// and, for `bench --output DIR` outside dir, DIR (created if needed), so the
// results land on the host. Nested ones come after their parents.
func Shares(dir string, extra []string, args []string) ([]Share, error) {
	paths := []string{dir}
	paths = append(paths, extra...)
	if out := outputArg(args); out != "" && filepath.IsAbs(out) && !within(out, dir) {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return nil, fmt.Errorf("--output %s: %w", out, err)
		}
		paths = append(paths, out)
	}
	seen := map[string]bool{}
	var clean []string
	for _, p := range paths {
		a, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		if r, err := filepath.EvalSymlinks(a); err == nil {
			a = r
		}
		for _, u := range unshareable {
			if a == u {
				return nil, fmt.Errorf("%s cannot be shared with the guest (its own system is there); run from a project directory or use --share", a)
			}
		}
		if !seen[a] {
			seen[a] = true
			clean = append(clean, a)
		}
	}
	sort.SliceStable(clean, func(i, j int) bool { return len(clean[i]) < len(clean[j]) })
	var out []Share
	for i, p := range clean {
		out = append(out, Share{Tag: fmt.Sprintf("svclab%d", i), Path: p})
	}
	return out, nil
}

// outputArg returns the value of bench's --output flag, if given.
func outputArg(args []string) string {
	if len(args) == 0 || args[0] != "bench" {
		return ""
	}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		for _, f := range []string{"-output", "--output"} {
			if a == f && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, f+"="); ok {
				return v
			}
		}
	}
	return ""
}

func within(p, dir string) bool {
	r, err := filepath.Rel(dir, p)
	return err == nil && r != ".." && !strings.HasPrefix(r, "../")
}

// SourceRoot finds the svclab module root at or above dir.
func SourceRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		f, err := os.Open(filepath.Join(d, "go.mod"))
		if err == nil {
			sc := bufio.NewScanner(f)
			isSvclab := sc.Scan() && strings.TrimSpace(sc.Text()) == "module svclab"
			f.Close()
			if isSvclab {
				return d, nil
			}
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no svclab source tree (go.mod with module svclab) at or above %s", dir)
		}
	}
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// goCmd runs the go tool in dir with cgo off, so what it builds is static.
func goCmd(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// testPackage is one package whose test binary runs in the guest.
type testPackage struct {
	ImportPath string
	Dir        string
	Binary     string
}

// buildTests compiles the packages' test binaries into out.
func buildTests(ctx context.Context, dir, out string, pkgs []string) ([]testPackage, error) {
	listing, err := goCmd(ctx, dir, append([]string{"list", "-f", "{{.ImportPath}}\t{{.Dir}}\t{{len .TestGoFiles}}\t{{len .XTestGoFiles}}"}, pkgs...)...)
	if err != nil {
		return nil, fmt.Errorf("--go-test: %w", err)
	}
	var tps []testPackage
	for _, l := range strings.Split(strings.TrimSpace(string(listing)), "\n") {
		f := strings.Split(l, "\t")
		if len(f) != 4 {
			continue
		}
		if f[2] == "0" && f[3] == "0" {
			continue
		}
		tps = append(tps, testPackage{ImportPath: f[0], Dir: f[1], Binary: filepath.Join(out, filepath.Base(f[0])+".test")})
	}
	if len(tps) == 0 {
		return nil, fmt.Errorf("--go-test: %s: no test files", strings.Join(pkgs, ","))
	}
	var names []string
	for _, tp := range tps {
		names = append(names, tp.ImportPath)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	if _, err := goCmd(ctx, dir, append([]string{"test", "-c", "-o", out + "/"}, names...)...); err != nil {
		return nil, fmt.Errorf("--go-test: %w", err)
	}
	for _, tp := range tps {
		if _, err := os.Stat(tp.Binary); err != nil {
			return nil, fmt.Errorf("--go-test: %s: go test -c wrote no %s", tp.ImportPath, tp.Binary)
		}
	}
	return tps, nil
}

func (c *Config) kernel(ctx context.Context) (*Kernel, error) {
	if s, ok := LookupSeries(c.Kernel); ok {
		cache := &Cache{
			Dir:     c.CacheDir,
			Refresh: c.Refresh,
			Log:     c.Stderr,
			Fetcher: &Fetcher{Mirror: c.Mirror, Keyring: c.Keyring, Client: &http.Client{Timeout: 10 * time.Minute}, Log: c.Stderr},
		}
		return cache.Get(ctx, s)
	}
	rel, err := KernelRelease(c.Kernel)
	if err != nil {
		return nil, fmt.Errorf("--kernel: %w", err)
	}
	k := &Kernel{Name: c.Kernel, Vmlinuz: c.Kernel, Modules: c.Modules, Release: rel}
	if c.Modules != "" && filepath.Base(filepath.Clean(c.Modules)) != rel {
		return nil, fmt.Errorf("--modules: %s is not for release %s, which %s reports", c.Modules, rel, c.Kernel)
	}
	return k, nil
}

// KernelRelease reads the release string from a bzImage's setup header
// (the kernel_version field), e.g. "6.1.0-47-amd64".
func KernelRelease(vmlinuz string) (string, error) {
	f, err := os.Open(vmlinuz)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("%s: not a bzImage: %w", vmlinuz, err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", fmt.Errorf("%s: not a bzImage (no HdrS setup header)", vmlinuz)
	}
	off := int64(hdr[0x20e]) | int64(hdr[0x20f])<<8
	buf := make([]byte, 256)
	n, _ := f.ReadAt(buf, off+0x200)
	s := string(buf[:n])
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return "", fmt.Errorf("%s: empty kernel_version in the setup header", vmlinuz)
	}
	return fields[0], nil
}

// Run validates c (filling in its defaults), boots the kernel, runs the
// command (or tests) and returns how it went, the guest command's exit
// status included. An error means the guest did not get to report one (or
// the setup failed).
func Run(ctx context.Context, c *Config) (*BootResult, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, errors.New("qemu-system-x86_64 not found in PATH (Debian package qemu-system-x86)")
	}
	busybox := c.Busybox
	if busybox == "" {
		if busybox, err = exec.LookPath("busybox"); err != nil {
			return nil, errors.New("busybox not found in PATH (Debian package busybox-static)")
		}
	}
	shares, err := Shares(c.Dir, c.Shares, c.Args)
	if err != nil {
		return nil, err
	}
	// What killed runs left first, as runlock.Begin does for namespaces.
	if removed, err := CleanupStale(); err == nil && len(removed) > 0 {
		fmt.Fprintf(c.Stderr, "svclab vm: removed %d temporary directories left by killed runs\n", len(removed))
	}
	td, err := newTempDir()
	if err != nil {
		return nil, err
	}
	defer td.Remove()
	tmp := td.Path

	k, err := c.kernel(ctx)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c.Stderr, "svclab vm: kernel %s\n", k.Describe())

	files := map[string]string{}
	var cmds []GuestCommand
	var titles []string
	if len(c.GoTest) > 0 {
		start := time.Now()
		tps, err := buildTests(ctx, c.Dir, filepath.Join(tmp, "tests"), c.GoTest)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(c.Stderr, "svclab vm: built %d test binaries in %.1fs\n", len(tps), time.Since(start).Seconds())
		for _, tp := range tps {
			if !underShare(tp.Dir, shares) {
				return nil, fmt.Errorf("--go-test: %s is in %s, outside the directories shared with the guest (run from the module root or add --share)", tp.ImportPath, tp.Dir)
			}
			g := GuestTestDir + "/" + filepath.Base(tp.Binary)
			files[g] = tp.Binary
			args := []string{g, "-test.v"}
			// Hung tests dump their goroutines before the host gives up.
			if c.Timeout > 2*time.Minute {
				args = append(args, "-test.timeout="+(c.Timeout-time.Minute).String())
			}
			cmds = append(cmds, GuestCommand{Dir: tp.Dir, Args: append(args, c.Args...)})
			titles = append(titles, tp.ImportPath)
		}
	} else {
		bin := c.Binary
		if bin == "" {
			if bin, err = buildSvclab(ctx, c.Dir, tmp, c.Stderr); err != nil {
				return nil, err
			}
		}
		files[GuestBin] = bin
		cmds = []GuestCommand{{Dir: c.Dir, Args: append([]string{"svclab"}, c.Args...)}}
		titles = []string{"svclab " + strings.Join(c.Args, " ")}
	}

	var plan *ModulePlan
	if k.Modules != "" {
		ix, err := LoadModuleIndex(k.Modules)
		if err != nil {
			return nil, err
		}
		if plan, err = PlanModules(ix, ShipModules, PreloadModules); err != nil {
			return nil, err
		}
	}
	token := randomHex(8)
	accel, why := ResolveAccel(c.Accel)
	initCfg := InitConfig{Token: token, Release: k.Release, Shares: shares, Commands: cmds, Env: []string{
		"SVCLAB_VM=1",
		"SVCLAB_VM_KERNEL=" + k.Describe(),
		"SVCLAB_VM_ACCEL=" + (&Machine{Accel: accel, TCGThread: c.TCGThread}).AccelName(),
		// The serial console is a terminal to the guest, but its output
		// reaches the host line by line: in-place progress would only
		// leave escape sequences in the host's logs.
		"SVCLAB_TTY=0",
	}}
	if plan != nil {
		initCfg.Modules = plan.PreloadPaths()
	}
	initScript, err := RenderInit(initCfg)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	initrd := filepath.Join(tmp, "initrd.cpio.gz")
	f, err := os.Create(initrd)
	if err != nil {
		return nil, err
	}
	info, err := BuildInitramfs(ctx, ImageSpec{Release: k.Release, Modules: plan, Busybox: busybox, Files: files, Tools: c.Tools, Init: initScript, Log: c.Stderr}, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	fmt.Fprintf(c.Stderr, "svclab vm: initramfs %d MB (%d MB unpacked, %d files, %d modules) in %.1fs\n",
		info.Compressed>>20, info.Uncompressed>>20, info.Files, info.Modules, time.Since(start).Seconds())
	if plan != nil && len(plan.Missing) > 0 {
		fmt.Fprintf(c.Stderr, "svclab vm: %s has no modules %s (neither built in nor in its tree)\n", k.Release, strings.Join(plan.Missing, ", "))
	}

	m := &Machine{QEMU: qemu, Accel: accel, TCGThread: c.TCGThread, CPUs: c.CPUs, Memory: c.Memory, Kernel: k.Vmlinuz, Initrd: initrd,
		Append: c.Append, Shares: shares, Token: token, TempDir: tmp, Titles: titles, Stdout: c.Stdout, Stderr: c.Stderr}
	res, err := c.boot(ctx, m, why)
	if err != nil && errors.Is(err, errKVM) && c.Accel == "auto" {
		fmt.Fprintf(c.Stderr, "svclab vm: %v\nsvclab vm: retrying with tcg\n", err)
		m.Accel = "tcg"
		res, err = c.boot(ctx, m, "kvm failed")
	}
	if err != nil {
		return nil, err
	}
	if len(c.GoTest) > 0 {
		for _, r := range res.Commands {
			status := "ok  "
			if r.ExitCode != 0 {
				status = "FAIL"
			}
			fmt.Fprintf(c.Stdout, "%s\t%s\t%.3fs\n", status, r.Title, r.Duration.Seconds())
		}
	}
	return res, nil
}

func (c *Config) boot(ctx context.Context, m *Machine, why string) (*BootResult, error) {
	note := ""
	if why != "" {
		note = " (" + why + ")"
	}
	fmt.Fprintf(c.Stderr, "svclab vm: booting with %s%s, %d CPUs, %d MiB; timeout %s\n", m.AccelName(), note, m.CPUs, m.Memory, c.Timeout)
	bctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	res, err := m.Boot(bctx)
	if err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return nil, fmt.Errorf("the guest did not finish within %s (--timeout) and was stopped: %w", c.Timeout, err)
	}
	return res, err
}

func underShare(dir string, shares []Share) bool {
	for _, s := range shares {
		if within(dir, s.Path) {
			return true
		}
	}
	return false
}

// buildSvclab compiles a static svclab from the source tree above dir.
func buildSvclab(ctx context.Context, dir, tmp string, log io.Writer) (string, error) {
	src, err := SourceRoot(dir)
	if err != nil {
		return "", fmt.Errorf("%w; pass a static svclab with --binary", err)
	}
	out := filepath.Join(tmp, "svclab")
	start := time.Now()
	// -buildvcs=auto (over a GOFLAGS=-buildvcs=false) stamps the commit
	// into the binary: the guest has no git for results' git_rev.
	if _, err := goCmd(ctx, src, "build", "-buildvcs=auto", "-o", out, "./cmd/svclab"); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "svclab vm: built a static svclab from %s in %.1fs\n", src, time.Since(start).Seconds())
	return out, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
