package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// ShipModules are the parts of the modules tree copied into the guest: what
// the datapaths and baselines can use (netfilter, IPVS, tc, veth, dummy,
// the bridge joining several nodes)
// and what the guest itself needs (9p over virtio, entropy). The kernel
// autoloads from these on demand.
var ShipModules = []string{
	"kernel/net/netfilter/",
	"kernel/net/ipv4/netfilter/",
	"kernel/net/ipv6/netfilter/",
	"kernel/net/sched/",
	"kernel/net/9p/",
	"kernel/fs/9p/",
	"kernel/net/xfrm/",
	"veth", "dummy", "virtio_rng",
	"bridge", "stp", "llc",
}

// PreloadModules are loaded at boot, before the command runs: the ones a
// probe looks for without triggering an autoload (IPVS answers on generic
// netlink only once ip_vs is loaded; a "dummy" link type is refused, not
// autoloaded, by some kernels), and the 9p transport the shares need.
// Missing ones are fine when built in.
var PreloadModules = []string{
	"virtio_pci", "virtio_rng", "9pnet_virtio", "9p",
	"veth", "dummy", "xfrm_user", "bridge",
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh", "ip_vs_sed", "ip_vs_nq", "ip_vs_mh",
	"nf_conntrack", "nf_nat", "nf_tables", "nft_chain_nat", "nft_nat", "nft_ct", "nft_numgen", "nft_compat", "nft_masq", "nft_reject_inet", "nft_fib_ipv4",
	"ip_tables", "iptable_nat", "iptable_filter", "iptable_mangle",
	"xt_comment", "xt_statistic", "xt_mark", "xt_nat", "xt_MASQUERADE", "xt_conntrack", "xt_addrtype", "xt_multiport", "ipt_REJECT",
	"sch_ingress", "cls_bpf", "act_bpf",
}

// DefaultTools are host programs copied into the guest with their shared
// libraries, for the baselines that drive netfilter through them. Missing
// ones are skipped: the baseline's probe reports it unsupported.
var DefaultTools = []string{
	"iptables", "iptables-save", "iptables-restore",
	"iptables-nft", "iptables-nft-save", "iptables-nft-restore",
	"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore",
	"nft", "ipvsadm", "ip", "tc",
}

// ModulePlan says which modules go into the initramfs and which of those
// /init loads.
type ModulePlan struct {
	Index *ModuleIndex
	// Ship are the names copied in, dependencies included.
	Ship []string
	// Preload are the names /init loads, in load order.
	Preload []string
	// Missing are preload names neither in the tree nor built in.
	Missing []string
}

// PlanModules resolves ShipModules and PreloadModules against a tree.
func PlanModules(ix *ModuleIndex, ship, preload []string) (*ModulePlan, error) {
	want, _ := ix.Select(append(append([]string(nil), ship...), preload...))
	all, err := ix.Closure(want)
	if err != nil {
		return nil, err
	}
	pre, missing := ix.Select(preload)
	order, err := ix.Closure(pre)
	if err != nil {
		return nil, err
	}
	return &ModulePlan{Index: ix, Ship: all, Preload: order, Missing: missing}, nil
}

// PreloadPaths are the preload modules' paths inside the guest's modules
// directory.
func (p *ModulePlan) PreloadPaths() []string {
	var out []string
	for _, n := range p.Preload {
		out = append(out, UncompressedPath(p.Index.Paths[n]))
	}
	return out
}

// ImageSpec is what goes into the guest's initramfs.
type ImageSpec struct {
	Release string
	// Modules may be nil: a kernel with everything built in.
	Modules *ModulePlan
	// Busybox is a statically linked busybox.
	Busybox string
	// Files maps guest paths to host files (the svclab binary, tests).
	Files map[string]string
	// Tools are host programs to copy, by name (looked up in PATH) or path.
	Tools []string
	// Init is the /init script.
	Init []byte
	// Log receives notes (tools not found).
	Log io.Writer
}

// builder lays host files into a cpio archive at the paths they have on
// the host, replicating the symlinks on the way (/lib -> usr/lib,
// /etc/alternatives), so programs and their libraries find each other in the
// guest exactly as on the host.
type builder struct {
	cw       *CPIOWriter
	symlinks map[string]string // archive path -> target, for resolving
	ldd      []string          // dynamic ELF files whose libraries are needed
}

// resolve maps an absolute guest path through the symlinks already in the
// archive, so a file added at /lib/x lands at /usr/lib/x when /lib is a link.
func (b *builder) resolve(p string) string {
	p = path.Clean(p)
	for range 40 {
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		changed := false
		for i := range parts[:len(parts)-1] {
			prefix := "/" + strings.Join(parts[:i+1], "/")
			if t, ok := b.symlinks[prefix]; ok {
				if !path.IsAbs(t) {
					t = path.Join(path.Dir(prefix), t)
				}
				p = path.Join(append([]string{t}, parts[i+1:]...)...)
				changed = true
				break
			}
		}
		if !changed {
			return p
		}
	}
	return p
}

func (b *builder) file(guest string, perm uint32, data []byte) error {
	return b.cw.File(b.resolve(guest), perm, data)
}

func (b *builder) symlink(guest, target string) error {
	g := b.resolve(guest)
	if _, ok := b.cw.Has(g); ok {
		return nil
	}
	b.symlinks[g] = target
	return b.cw.Symlink(g, target)
}

// hostPath copies a host path into the archive at the same place,
// following and recreating every symlink on the way.
func (b *builder) hostPath(p string) error {
	return b.hostPathDepth(filepath.Clean(p), 0)
}

func (b *builder) hostPathDepth(p string, depth int) error {
	if depth > 40 {
		return fmt.Errorf("%s: too many levels of symbolic links", p)
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s: not an absolute path", p)
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for i, c := range parts {
		next := filepath.Join(cur, c)
		last := i == len(parts)-1
		fi, err := os.Lstat(next)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			if err := b.symlink(next, target); err != nil {
				return err
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(next), target)
			}
			return b.hostPathDepth(filepath.Join(append([]string{target}, parts[i+1:]...)...), depth+1)
		case fi.IsDir():
			if err := b.cw.MkdirAll(next); err != nil {
				return err
			}
		case fi.Mode().IsRegular() && last:
			if _, ok := b.cw.Has(next); ok {
				return nil
			}
			data, err := os.ReadFile(next)
			if err != nil {
				return err
			}
			if err := b.cw.File(next, uint32(fi.Mode().Perm()), data); err != nil {
				return err
			}
			if isDynamicELF(data) {
				b.ldd = append(b.ldd, next)
			}
		default:
			return fmt.Errorf("%s: not a regular file, directory or symlink", next)
		}
		cur = next
	}
	return nil
}

// isDynamicELF reports whether data is an ELF file that needs the dynamic
// loader or shared libraries.
func isDynamicELF(data []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return false
	}
	defer f.Close()
	libs, _ := f.ImportedLibraries()
	if len(libs) > 0 {
		return true
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// IsStaticELF reports whether the file at p is an ELF executable that runs
// without a dynamic loader.
func IsStaticELF(p string) (bool, error) {
	f, err := elf.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, pr := range f.Progs {
		if pr.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// ParseLdd extracts the absolute library paths from ldd's output (one or
// several files), failing on a library ldd could not find.
func ParseLdd(out string) ([]string, error) {
	var libs []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasSuffix(l, ":"):
		case strings.Contains(l, "=> not found"):
			return nil, fmt.Errorf("ldd: %s", l)
		case strings.Contains(l, "=>"):
			f := strings.Fields(strings.SplitN(l, "=>", 2)[1])
			if len(f) > 0 && strings.HasPrefix(f[0], "/") {
				libs = append(libs, f[0])
			}
		case strings.HasPrefix(l, "/"):
			libs = append(libs, strings.Fields(l)[0])
		}
	}
	return libs, nil
}

// addLibraries copies the shared libraries of every dynamic file added so
// far, until no new ones appear (libraries need libraries).
func (b *builder) addLibraries(ctx context.Context) error {
	for len(b.ldd) > 0 {
		files := b.ldd
		b.ldd = nil
		out, err := exec.CommandContext(ctx, "ldd", files...).CombinedOutput()
		if err != nil && len(out) == 0 {
			return fmt.Errorf("ldd %s: %w", strings.Join(files, " "), err)
		}
		libs, err := ParseLdd(string(out))
		if err != nil {
			return err
		}
		for _, l := range libs {
			if _, ok := b.cw.Has(l); ok {
				continue
			}
			if err := b.hostPath(l); err != nil {
				return fmt.Errorf("library %s: %w", l, err)
			}
		}
	}
	return nil
}

// decompressModule returns a module file's contents, uncompressed.
func decompressModule(ctx context.Context, p string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(p, ".ko"):
		return os.ReadFile(p)
	case strings.HasSuffix(p, ".ko.gz"):
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(p, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(p, ".ko.zst"):
		tool = "zstd"
	default:
		return nil, fmt.Errorf("%s: not a kernel module file", p)
	}
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "--decompress", "--stdout", p)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s --decompress %s: %w: %s", tool, p, err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// ImageInfo describes a built initramfs.
type ImageInfo struct {
	Files        int
	Uncompressed int64
	Compressed   int64
	Modules      int
	Tools        []string
}

// countingWriter counts bytes on their way to w.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// BuildInitramfs writes the guest's root file system as a gzip-compressed
// newc cpio archive to w.
func BuildInitramfs(ctx context.Context, spec ImageSpec, w io.Writer) (*ImageInfo, error) {
	if spec.Log == nil {
		spec.Log = io.Discard
	}
	cw := &countingWriter{w: w}
	zw, err := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	raw := &countingWriter{w: zw}
	b := &builder{cw: NewCPIOWriter(raw), symlinks: map[string]string{}}
	info := &ImageInfo{}

	// The host's top-level links first (merged /usr), so everything added
	// later under /lib or /bin goes where the host has it.
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		if t, err := os.Readlink(d); err == nil {
			if err := b.symlink(d, t); err != nil {
				return nil, err
			}
		}
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/etc", "/var/tmp", "/mnt"} {
		if err := b.cw.MkdirAll(d); err != nil {
			return nil, err
		}
	}
	if err := b.symlink("/var/run", "/run"); err != nil {
		return nil, err
	}
	// The kernel opens /dev/console for init before /dev is mounted.
	if err := b.cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return nil, err
	}
	if err := b.cw.CharDev("dev/null", 0o666, 1, 3); err != nil {
		return nil, err
	}
	if err := b.file("/init", 0o755, spec.Init); err != nil {
		return nil, err
	}

	// busybox and its applets.
	if static, err := IsStaticELF(spec.Busybox); err != nil || !static {
		return nil, fmt.Errorf("busybox %s must be a static binary (package busybox-static): %v", spec.Busybox, err)
	}
	bb, err := os.ReadFile(spec.Busybox)
	if err != nil {
		return nil, err
	}
	if err := b.file(BusyboxDir+"/busybox", 0o755, bb); err != nil {
		return nil, err
	}
	list, err := exec.CommandContext(ctx, spec.Busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", spec.Busybox, err)
	}
	for _, a := range strings.Fields(string(list)) {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := b.symlink(BusyboxDir+"/"+a, "busybox"); err != nil {
			return nil, err
		}
	}
	if _, ok := b.cw.Has(b.resolve("/bin/sh")); !ok {
		if err := b.symlink("/bin/sh", BusyboxDir+"/busybox"); err != nil {
			return nil, err
		}
	}

	// Files the command needs (svclab, test binaries).
	guests := make([]string, 0, len(spec.Files))
	for g := range spec.Files {
		guests = append(guests, g)
	}
	sort.Strings(guests)
	for _, g := range guests {
		data, err := os.ReadFile(spec.Files[g])
		if err != nil {
			return nil, err
		}
		if err := b.file(g, 0o755, data); err != nil {
			return nil, err
		}
	}

	// Host tools with their symlinks (/etc/alternatives), libraries and
	// iptables' extension plugins, which it dlopens.
	xtables := false
	for _, t := range spec.Tools {
		p := t
		if !filepath.IsAbs(t) {
			if p, err = exec.LookPath(t); err != nil {
				fmt.Fprintf(spec.Log, "svclab vm: %s not found on the host, the guest goes without it\n", t)
				continue
			}
		}
		if err := b.hostPath(p); err != nil {
			return nil, fmt.Errorf("tool %s: %w", t, err)
		}
		info.Tools = append(info.Tools, p)
		if strings.HasPrefix(t, "iptables") {
			xtables = true
		}
	}
	if xtables {
		plugins, _ := filepath.Glob("/usr/lib/*/xtables/*.so")
		more, _ := filepath.Glob("/usr/lib/xtables/*.so")
		for _, p := range append(plugins, more...) {
			if err := b.hostPath(p); err != nil {
				return nil, fmt.Errorf("iptables plugin %s: %w", p, err)
			}
		}
	}
	for _, p := range []string{"/etc/protocols", "/etc/services", "/etc/ethertypes", "/etc/ld.so.cache", "/etc/nsswitch.conf"} {
		if _, err := os.Lstat(p); err == nil {
			if err := b.hostPath(p); err != nil {
				return nil, err
			}
		}
	}
	if err := b.addLibraries(ctx); err != nil {
		return nil, err
	}
	// A slice, not a map: the order of entries is part of the bytes.
	for _, f := range [][2]string{
		{"/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"},
		{"/etc/group", "root:x:0:\nnogroup:x:65534:\n"},
		{"/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"},
	} {
		if err := b.file(f[0], 0o644, []byte(f[1])); err != nil {
			return nil, err
		}
	}

	if spec.Modules != nil {
		if err := addModules(ctx, b, spec.Release, spec.Modules); err != nil {
			return nil, err
		}
		info.Modules = len(spec.Modules.Ship)
	}

	if err := b.cw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	info.Files = b.cw.Files()
	info.Uncompressed, info.Compressed = raw.n, cw.n
	return info, nil
}

// addModules copies the planned modules, decompressed (busybox insmod reads
// plain .ko only), with a modules.dep and modules.alias for them.
func addModules(ctx context.Context, b *builder, release string, p *ModulePlan) error {
	base := "/lib/modules/" + release
	type result struct {
		data []byte
		err  error
	}
	results := make([]result, len(p.Ship))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, n := range p.Ship {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			d, err := decompressModule(ctx, filepath.Join(p.Index.Dir, p.Index.Paths[n]))
			results[i] = result{d, err}
		}()
	}
	wg.Wait()
	for i, n := range p.Ship {
		if results[i].err != nil {
			return fmt.Errorf("module %s: %w", n, results[i].err)
		}
		if err := b.file(base+"/"+UncompressedPath(p.Index.Paths[n]), 0o644, results[i].data); err != nil {
			return err
		}
	}
	if err := b.file(base+"/modules.dep", 0o644, p.Index.RenderModulesDep(p.Ship)); err != nil {
		return err
	}
	names := map[string]bool{}
	for _, n := range p.Ship {
		names[n] = true
	}
	var aliases []byte
	if f, err := os.Open(filepath.Join(p.Index.Dir, "modules.alias")); err == nil {
		aliases = FilterAliases(f, names)
		f.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := b.file(base+"/modules.alias", 0o644, aliases); err != nil {
		return err
	}
	if bi, err := os.ReadFile(filepath.Join(p.Index.Dir, "modules.builtin")); err == nil {
		if err := b.file(base+"/modules.builtin", 0o644, bi); err != nil {
			return err
		}
	}
	return nil
}
