package vm

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ModuleIndex is a kernel's modules tree as depmod describes it.
type ModuleIndex struct {
	// Dir is lib/modules/<release>.
	Dir string
	// Paths maps a module name (dashes as underscores) to its file,
	// relative to Dir.
	Paths map[string]string
	// Deps maps a module name to the names of every module it needs, as
	// modules.dep lists them.
	Deps map[string][]string
	// Builtin names the modules compiled into the kernel image.
	Builtin map[string]bool
	// Pre maps a module name to the modules modules.softdep says to load
	// before it (libcrc32c needs a crc32c implementation, which no symbol
	// dependency names), aliases already resolved.
	Pre map[string][]string
}

// ModuleName turns a module path ("kernel/net/ipv4/netfilter/iptable_nat.ko.xz")
// into the name the kernel knows it by ("iptable_nat").
func ModuleName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// ParseModulesDep reads depmod's modules.dep ("path: dep dep ...").
func ParseModulesDep(r io.Reader) (paths map[string]string, deps map[string][]string, err error) {
	paths, deps = map[string]string{}, map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok || mod == "" {
			return nil, nil, fmt.Errorf("modules.dep line %d: %q has no \"module:\"", n, line)
		}
		name := ModuleName(mod)
		paths[name] = mod
		var ds []string
		for _, d := range strings.Fields(rest) {
			ds = append(ds, ModuleName(d))
		}
		deps[name] = ds
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("modules.dep: %w", err)
	}
	for name, ds := range deps {
		for _, d := range ds {
			if _, ok := paths[d]; !ok {
				return nil, nil, fmt.Errorf("modules.dep: %s needs %s, which has no line of its own", name, d)
			}
		}
	}
	return paths, deps, nil
}

// LoadModuleIndex reads dir/modules.dep and dir/modules.builtin.
func LoadModuleIndex(dir string) (*ModuleIndex, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("modules tree %s: %w (generate it with depmod)", dir, err)
	}
	defer f.Close()
	paths, deps, err := ParseModulesDep(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	ix := &ModuleIndex{Dir: dir, Paths: paths, Deps: deps, Builtin: map[string]bool{}, Pre: map[string][]string{}}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			ix.Builtin[ModuleName(l)] = true
		}
	}
	var aliases map[string][]string
	if f, err := os.Open(filepath.Join(dir, "modules.alias")); err == nil {
		aliases = ParseAliases(f)
		f.Close()
	}
	if f, err := os.Open(filepath.Join(dir, "modules.softdep")); err == nil {
		ix.Pre = ParseSoftdeps(f, paths, aliases)
		f.Close()
	}
	return ix, nil
}

// ParseAliases reads modules.alias into alias -> module names.
func ParseAliases(r io.Reader) map[string][]string {
	out := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "alias" {
			out[f[1]] = append(out[f[1]], ModuleName(f[2]))
		}
	}
	return out
}

// ParseSoftdeps reads the "pre:" soft dependencies of modules.softdep,
// resolving each to module names in paths, directly or through aliases
// (every module an alias names, in name order). Soft dependencies that
// resolve to nothing are dropped: they are built in or absent, and the
// kernel copes.
func ParseSoftdeps(r io.Reader, paths map[string]string, aliases map[string][]string) map[string][]string {
	out := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "softdep" {
			continue
		}
		mod := ModuleName(f[1])
		pre := false
		for _, t := range f[2:] {
			switch t {
			case "pre:":
				pre = true
				continue
			case "post:":
				pre = false
				continue
			}
			if !pre {
				continue
			}
			if n := ModuleName(t); paths[n] != "" {
				out[mod] = append(out[mod], n)
				continue
			}
			targets := append([]string(nil), aliases[t]...)
			sort.Strings(targets)
			for _, n := range targets {
				if paths[n] != "" {
					out[mod] = append(out[mod], n)
				}
			}
		}
	}
	return out
}

// Select returns the modules that patterns name, sorted. A pattern is a
// module name, a glob over names ("nft_*"), or a directory of the tree
// ending in "/" ("kernel/net/netfilter/"). Names that are neither in the
// tree nor built in are returned as missing; globs and directories that
// match nothing are not missing (kernels differ in what they split out).
func (ix *ModuleIndex) Select(patterns []string) (names, missing []string) {
	set := map[string]bool{}
	for _, p := range patterns {
		switch {
		case strings.HasSuffix(p, "/"):
			for n, mp := range ix.Paths {
				if strings.HasPrefix(mp, p) {
					set[n] = true
				}
			}
		case strings.ContainsAny(p, "*?["):
			for n := range ix.Paths {
				if ok, _ := path.Match(p, n); ok {
					set[n] = true
				}
			}
		default:
			n := ModuleName(p)
			switch {
			case ix.Paths[n] != "":
				set[n] = true
			case !ix.Builtin[n]:
				missing = append(missing, n)
			}
		}
	}
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, missing
}

// Closure returns names plus everything they depend on, ordered so that
// each module comes after all of its dependencies (the order to insmod
// them in). Ties are broken by name, so the order is stable.
func (ix *ModuleIndex) Closure(names []string) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []string
	var visit func(n string, chain []string) error
	visit = func(n string, chain []string) error {
		switch state[n] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("modules.dep: dependency cycle %s -> %s", strings.Join(chain, " -> "), n)
		}
		if _, ok := ix.Paths[n]; !ok {
			return fmt.Errorf("module %s is not in %s/modules.dep", n, ix.Dir)
		}
		state[n] = visiting
		ds := append([]string(nil), ix.Deps[n]...)
		sort.Strings(ds)
		for _, d := range ds {
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		// A soft dependency only orders loading; one that leads back here
		// is skipped rather than an error.
		for _, d := range ix.Pre[n] {
			if state[d] == visiting {
				continue
			}
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		state[n] = done
		out = append(out, n)
		return nil
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	for _, n := range sorted {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// RenderModulesDep writes a modules.dep for a subset of the tree, with the
// paths the modules have inside the initramfs (decompressed, so ".ko"), for
// the guest's modprobe.
func (ix *ModuleIndex) RenderModulesDep(names []string) []byte {
	var b bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&b, "%s:", UncompressedPath(ix.Paths[n]))
		for _, d := range ix.Deps[n] {
			fmt.Fprintf(&b, " %s", UncompressedPath(ix.Paths[d]))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// UncompressedPath strips a module file's compression suffix: the guest
// gets plain .ko files, since busybox insmod cannot read compressed ones.
func UncompressedPath(p string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// FilterAliases keeps the lines of modules.alias that point at a module in
// names, so the guest's modprobe can resolve the aliases the kernel asks
// for when it autoloads (e.g. "nft-expr-numgen", "ip_vs_rr").
func FilterAliases(r io.Reader, names map[string]bool) []byte {
	var b bytes.Buffer
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "alias" && names[ModuleName(f[2])] {
			b.WriteString(sc.Text())
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}
