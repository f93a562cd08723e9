package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"pault.ag/go/debian/control"
	"pault.ag/go/debian/version"
)

// DefaultMirror is Debian's package registry; --mirror may name another
// mirror of the same archive (the signatures are checked all the same).
const DefaultMirror = "http://deb.debian.org"

// DefaultKeyring holds the Debian archive signing keys (package
// debian-archive-keyring); InRelease files are checked against it.
const DefaultKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// Archive is one Debian suite that can hold a kernel series.
type Archive struct {
	// Path is the archive's path on the mirror: "debian" or "debian-security".
	Path  string
	Suite string
}

// Series is a kernel line svclab knows how to fetch from Debian.
type Series struct {
	// Name is what --kernel accepts, e.g. "debian-6.1".
	Name string
	// Upstream is the upstream version prefix, e.g. "6.1": a package
	// qualifies when its Version starts with Upstream + ".".
	Upstream string
	// Archives are searched together; the newest version wins.
	Archives []Archive
}

// KnownSeries are the Debian kernels --kernel names: bookworm's 6.1 (with its
// security updates) and 6.12 from bookworm-backports.
var KnownSeries = []Series{
	{Name: "debian-6.1", Upstream: "6.1", Archives: []Archive{
		{Path: "debian", Suite: "bookworm"},
		{Path: "debian", Suite: "bookworm-updates"},
		{Path: "debian-security", Suite: "bookworm-security"},
	}},
	{Name: "debian-6.12", Upstream: "6.12", Archives: []Archive{
		{Path: "debian", Suite: "bookworm-backports"},
	}},
}

// LookupSeries returns the series called name.
func LookupSeries(name string) (Series, bool) {
	for _, s := range KnownSeries {
		if s.Name == name {
			return s, true
		}
	}
	return Series{}, false
}

// SeriesNames lists the names --kernel accepts besides a vmlinuz path.
func SeriesNames() []string {
	var n []string
	for _, s := range KnownSeries {
		n = append(n, s.Name)
	}
	return n
}

// IndexFile is one file a Release file lists, with its SHA256.
type IndexFile struct {
	Path   string
	Size   int64
	SHA256 string
}

// Release is the part of a suite's (In)Release file svclab uses.
type Release struct {
	Suite       string
	Codename    string
	AcquireHash bool
	Files       map[string]IndexFile
}

// releaseFile is what ParseRelease decodes with pault.ag/go/debian/control;
// the SHA256 field is one "hash size path" line per index file.
type releaseFile struct {
	Suite         string
	Codename      string
	AcquireByHash bool                     `control:"Acquire-By-Hash"`
	SHA256        []control.SHA256FileHash `delim:"\n" strip:"\n\r\t "`
}

// ParseRelease reads the (already signature-checked) text of an InRelease
// file.
func ParseRelease(text []byte) (*Release, error) {
	// The control package strips a clearsigned wrapper without checking it
	// when given no keyring; only text gpgv vouched for may get here.
	if bytes.HasPrefix(bytes.TrimSpace(text), []byte("-----BEGIN PGP")) {
		return nil, errors.New("release file: still signed; only the text the signature check returns is parsed")
	}
	var rf releaseFile
	if err := control.Unmarshal(&rf, bytes.NewReader(text)); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("release file: empty")
		}
		return nil, fmt.Errorf("release file: %w", err)
	}
	if len(rf.SHA256) == 0 {
		return nil, errors.New("release file: no SHA256 field")
	}
	r := &Release{Suite: rf.Suite, Codename: rf.Codename, AcquireHash: rf.AcquireByHash, Files: map[string]IndexFile{}}
	for _, h := range rf.SHA256 {
		// A short hash would make every later digest check meaningless.
		if len(h.Hash) != 64 || h.Filename == "" {
			return nil, fmt.Errorf("release file: bad SHA256 line %q", fmt.Sprintf("%s %d %s", h.Hash, h.Size, h.Filename))
		}
		r.Files[h.Filename] = IndexFile{Path: h.Filename, Size: h.Size, SHA256: h.Hash}
	}
	return r, nil
}

// KernelPackage is one linux-image package of a Packages index.
type KernelPackage struct {
	// Package is e.g. "linux-image-6.1.0-47-amd64-unsigned".
	Package string `json:"package"`
	// Version is the Debian version, e.g. "6.1.176-1".
	Version string `json:"version"`
	// Release is the kernel release (uname -r), e.g. "6.1.0-47-amd64".
	Release string `json:"release"`
	// Archive and Suite say where it was found.
	Archive string `json:"archive"`
	Suite   string `json:"suite"`
	// Filename is the .deb's path below the archive, Size and SHA256 its
	// size and digest as the signed index gives them.
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
}

// kernelPackageRE matches the generic amd64 flavour only (not cloud or rt);
// the unsigned package is the same kernel as the signed one, without the
// Secure Boot signature we have no use for.
// Releases look like 6.1.0-47-amd64 (bookworm) or 6.12.95+deb12-amd64
// (backports, trixie); the flavours put a word before -amd64.
var kernelPackageRE = regexp.MustCompile(`^linux-image-([0-9][0-9.]*(?:-[0-9]+|\+[0-9a-z.~]+)-amd64)-unsigned$`)

// kernelStanza is the part of a Packages stanza a kernel choice reads.
type kernelStanza struct {
	Package      string
	Version      version.Version
	Architecture string
	Filename     string
	Size         int
	SHA256       string
}

// KernelPackages returns the packages of a Packages index that are generic
// amd64 kernels of the given upstream series (e.g. "6.1"), found in
// archive/suite.
func KernelPackages(index io.Reader, upstream, archive, suite string) ([]KernelPackage, error) {
	pr, err := control.NewParagraphReader(index, nil)
	if err != nil {
		return nil, err
	}
	var out []KernelPackage
	for {
		p, err := pr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("packages index: %w", err)
		}
		// A suite's index has some 60,000 stanzas and a handful of
		// kernels: match the name before decoding the stanza.
		name, ver := p.Values["Package"], p.Values["Version"]
		m := kernelPackageRE.FindStringSubmatch(name)
		if m == nil || !strings.HasPrefix(ver, upstream+".") || p.Values["Architecture"] != "amd64" {
			continue
		}
		var s kernelStanza
		if err := control.UnpackFromParagraph(*p, &s); err != nil {
			return nil, fmt.Errorf("package %s %s: %w", name, ver, err)
		}
		if len(s.SHA256) != 64 || s.Filename == "" {
			return nil, fmt.Errorf("package %s %s: no SHA256 or Filename", name, ver)
		}
		out = append(out, KernelPackage{
			Package: name, Version: ver, Release: m[1], Archive: archive, Suite: suite,
			Filename: s.Filename, Size: int64(s.Size), SHA256: s.SHA256,
		})
	}
}

// Newest returns the package with the highest Debian version, in dpkg's
// order: "6.1.10-1" is newer than "6.1.9-1", and a backport
// "6.12.95-1~bpo12+1" older than "6.12.95-1". Ties (the same version in two
// suites) keep the first.
func Newest(pkgs []KernelPackage) (KernelPackage, bool) {
	var best KernelPackage
	var bestV version.Version
	found := false
	for _, p := range pkgs {
		v, err := version.Parse(p.Version)
		if err != nil {
			continue // KernelPackages refuses these, and it makes every KernelPackage
		}
		if !found || version.Compare(v, bestV) > 0 {
			best, bestV, found = p, v, true
		}
	}
	return best, found
}

// Fetcher downloads from a Debian mirror and checks what it gets against the
// archive's signed InRelease files.
type Fetcher struct {
	Mirror  string
	Keyring string
	Client  *http.Client
	// Verify checks an InRelease file's signature and returns the signed
	// text; nil uses gpgv with Keyring.
	Verify func(ctx context.Context, inRelease []byte) ([]byte, error)
	// Log receives progress lines.
	Log io.Writer
}

func (f *Fetcher) url(archive, p string) string {
	return strings.TrimRight(f.Mirror, "/") + "/" + archive + "/" + p
}

// get fetches url into w, failing on anything but 200.
func (f *Fetcher) get(ctx context.Context, url string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := f.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// release downloads a suite's InRelease and returns its signature-checked
// content: gpgv prints only what the signature covers.
func (f *Fetcher) release(ctx context.Context, a Archive) (*Release, error) {
	var raw bytes.Buffer
	if err := f.get(ctx, f.url(a.Path, "dists/"+a.Suite+"/InRelease"), &raw); err != nil {
		return nil, err
	}
	verify := f.Verify
	if verify == nil {
		verify = f.gpgv
	}
	text, err := verify(ctx, raw.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s/%s InRelease: %w", a.Path, a.Suite, err)
	}
	r, err := ParseRelease(text)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", a.Path, a.Suite, err)
	}
	return r, nil
}

// gpgv checks a clearsigned file against the Debian archive keyring and
// returns only what the signature covers.
func (f *Fetcher) gpgv(ctx context.Context, signed []byte) ([]byte, error) {
	if _, err := os.Stat(f.Keyring); err != nil {
		return nil, fmt.Errorf("keyring %s (package debian-archive-keyring) is needed to check Debian's signatures: %w", f.Keyring, err)
	}
	cmd := exec.CommandContext(ctx, "gpgv", "--keyring", f.Keyring, "--output", "-", "-")
	cmd.Stdin = bytes.NewReader(signed)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("signature check with gpgv (package gpgv) failed: %w: %s", err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// packages downloads main/binary-amd64's Packages index of a suite, checks
// it against the signed InRelease and returns it uncompressed.
func (f *Fetcher) packages(ctx context.Context, a Archive) ([]byte, error) {
	rel, err := f.release(ctx, a)
	if err != nil {
		return nil, err
	}
	const dir = "main/binary-amd64/"
	for _, name := range []string{"Packages.gz", "Packages.xz"} {
		idx, ok := rel.Files[dir+name]
		if !ok {
			continue
		}
		p := "dists/" + a.Suite + "/" + idx.Path
		if rel.AcquireHash {
			// by-hash names never change, so a mirror update between the
			// InRelease and this download cannot mismatch them.
			p = "dists/" + a.Suite + "/" + dir + "by-hash/SHA256/" + idx.SHA256
		}
		var buf bytes.Buffer
		if err := f.get(ctx, f.url(a.Path, p), &buf); err != nil {
			return nil, err
		}
		if err := checkDigest(buf.Bytes(), idx.SHA256); err != nil {
			return nil, fmt.Errorf("%s/%s %s: %w", a.Path, a.Suite, idx.Path, err)
		}
		plain, err := decompress(ctx, name, buf.Bytes())
		if err != nil {
			return nil, fmt.Errorf("%s/%s %s: %w", a.Path, a.Suite, idx.Path, err)
		}
		// The uncompressed index is listed too; check it when it is.
		if u, ok := rel.Files[dir+"Packages"]; ok {
			if err := checkDigest(plain, u.SHA256); err != nil {
				return nil, fmt.Errorf("%s/%s %s (uncompressed): %w", a.Path, a.Suite, idx.Path, err)
			}
		}
		return plain, nil
	}
	return nil, fmt.Errorf("%s/%s: InRelease lists no %sPackages.gz or Packages.xz", a.Path, a.Suite, dir)
}

func checkDigest(b []byte, want string) error {
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != want {
		return fmt.Errorf("SHA256 %s, the signed index says %s", got, want)
	}
	return nil
}

func decompress(ctx context.Context, name string, b []byte) ([]byte, error) {
	switch {
	case strings.HasSuffix(name, ".gz"):
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(name, ".xz"):
		return xzDecompress(ctx, bytes.NewReader(b))
	}
	return b, nil
}

// xzDecompress runs xz (xz-utils): the standard library has no xz reader.
func xzDecompress(ctx context.Context, r io.Reader) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "xz", "--decompress", "--stdout")
	cmd.Stdin = r
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("xz --decompress: %w: %s", err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// Resolve finds the newest generic amd64 kernel of a series in its suites.
// A suite that is unreachable fails the whole lookup: picking an older
// kernel silently would make runs differ for no visible reason.
func (f *Fetcher) Resolve(ctx context.Context, s Series) (KernelPackage, error) {
	var all []KernelPackage
	for _, a := range s.Archives {
		index, err := f.packages(ctx, a)
		if err != nil {
			return KernelPackage{}, err
		}
		pkgs, err := KernelPackages(bytes.NewReader(index), s.Upstream, a.Path, a.Suite)
		if err != nil {
			return KernelPackage{}, fmt.Errorf("%s/%s: %w", a.Path, a.Suite, err)
		}
		all = append(all, pkgs...)
	}
	p, ok := Newest(all)
	if !ok {
		var suites []string
		for _, a := range s.Archives {
			suites = append(suites, a.Suite)
		}
		return KernelPackage{}, fmt.Errorf("%s: no linux-image-*-amd64-unsigned %s.x package in %s", s.Name, s.Upstream, strings.Join(suites, ", "))
	}
	return p, nil
}

// Kernel is a kernel ready to boot: its image and its modules tree.
type Kernel struct {
	// Name is what the user asked for (a series name or a vmlinuz path).
	Name string `json:"name"`
	// Vmlinuz is the kernel image.
	Vmlinuz string `json:"vmlinuz"`
	// Modules is lib/modules/<release> (with modules.dep), or "" for a
	// kernel without loadable modules.
	Modules string `json:"modules"`
	// Release is the kernel release (uname -r).
	Release string `json:"release"`
	// Package is set for kernels fetched from Debian.
	Package *KernelPackage `json:"package,omitempty"`
}

// Describe is a one-line account of the kernel for logs.
func (k *Kernel) Describe() string {
	if k.Package != nil {
		return fmt.Sprintf("%s %s (%s %s/%s, sha256 %s)", k.Package.Package, k.Package.Version, k.Release, k.Package.Archive, k.Package.Suite, k.Package.SHA256[:12])
	}
	return fmt.Sprintf("%s (%s)", k.Vmlinuz, k.Release)
}

// resolveTTL is how long the choice of the newest package of a series is
// reused before the indexes are read again.
const resolveTTL = 24 * time.Hour

// resolution is what the cache keeps of a Resolve.
type resolution struct {
	Package  KernelPackage `json:"package"`
	Resolved time.Time     `json:"resolved"`
}

// Cache keeps downloaded kernels under Dir/<release>/, one directory per
// kernel release, each with boot/vmlinuz-<release>, lib/modules/<release>/
// and kernel.json.
type Cache struct {
	Dir     string
	Fetcher *Fetcher
	// Refresh re-reads the indexes even when a recent choice is cached.
	Refresh bool
	Log     io.Writer
}

// lock serialises cache updates between concurrent svclab processes.
func (c *Cache) lock() (func(), error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("kernel cache %s: %w", c.Dir, err)
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kernel cache %s: %w", c.Dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("kernel cache %s: lock: %w", c.Dir, err)
	}
	return func() { f.Close() }, nil
}

// Get returns the kernel of a series, downloading, checking and unpacking
// it the first time. Without network access it falls back to the newest
// kernel of the series already in the cache, and says so.
func (c *Cache) Get(ctx context.Context, s Series) (*Kernel, error) {
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	resPath := filepath.Join(c.Dir, s.Name+".json")
	var res resolution
	fresh := false
	if b, err := os.ReadFile(resPath); err == nil && json.Unmarshal(b, &res) == nil && !c.Refresh && time.Since(res.Resolved) < resolveTTL {
		fresh = true
	}
	if !fresh {
		fmt.Fprintf(c.Log, "svclab vm: looking up the newest %s kernel in Debian's indexes\n", s.Name)
		p, err := c.Fetcher.Resolve(ctx, s)
		if err != nil {
			if res.Package.Release != "" {
				if k, kerr := c.load(s.Name, res.Package.Release); kerr == nil {
					fmt.Fprintf(c.Log, "svclab vm: cannot read Debian's indexes (%v); using the cached %s %s\n", err, res.Package.Package, res.Package.Version)
					return k, nil
				}
			}
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		res = resolution{Package: p, Resolved: time.Now().UTC()}
	}
	k, err := c.load(s.Name, res.Package.Release)
	if err != nil || k.Package == nil || k.Package.SHA256 != res.Package.SHA256 {
		if k, err = c.install(ctx, s.Name, res.Package); err != nil {
			return nil, err
		}
	}
	if !fresh {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(resPath, b, 0o644); err != nil {
			return nil, fmt.Errorf("kernel cache: %w", err)
		}
	}
	return k, nil
}

func (c *Cache) load(name, release string) (*Kernel, error) {
	dir := filepath.Join(c.Dir, release)
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		return nil, err
	}
	var k Kernel
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "kernel.json"), err)
	}
	// Stored relative so the cache can move.
	k.Vmlinuz = filepath.Join(dir, k.Vmlinuz)
	k.Modules = filepath.Join(dir, k.Modules)
	k.Name = name
	for _, p := range []string{k.Vmlinuz, filepath.Join(k.Modules, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	return &k, nil
}

// install downloads the .deb, checks its SHA256 against the signed index,
// unpacks it with dpkg-deb and indexes its modules with depmod (Debian's
// package ships no modules.dep: its postinst generates it).
func (c *Cache) install(ctx context.Context, name string, p KernelPackage) (*Kernel, error) {
	tmp, err := os.MkdirTemp(c.Dir, ".install-"+p.Release+"-")
	if err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	deb := filepath.Join(tmp, path.Base(p.Filename))
	fmt.Fprintf(c.Log, "svclab vm: downloading %s %s from %s/%s (%d MB)\n", p.Package, p.Version, p.Archive, p.Suite, p.Size>>20)
	if err := c.Fetcher.download(ctx, c.Fetcher.url(p.Archive, p.Filename), deb, p.SHA256); err != nil {
		return nil, fmt.Errorf("%s: %w", p.Package, err)
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, strings.TrimSpace(string(out)))
	}
	if err := os.Remove(deb); err != nil {
		return nil, err
	}
	vmlinuz := filepath.Join("boot", "vmlinuz-"+p.Release)
	if _, err := os.Stat(filepath.Join(root, vmlinuz)); err != nil {
		return nil, fmt.Errorf("%s: the package has no /%s", p.Package, vmlinuz)
	}
	// Merged-/usr packages (trixie on) put modules under usr/lib.
	mods := filepath.Join("lib", "modules", p.Release)
	if _, err := os.Stat(filepath.Join(root, mods)); err != nil {
		mods = filepath.Join("usr", "lib", "modules", p.Release)
		if _, err := os.Stat(filepath.Join(root, mods)); err != nil {
			return nil, fmt.Errorf("%s: the package has no lib/modules/%s", p.Package, p.Release)
		}
	}
	if _, err := os.Stat(filepath.Join(root, mods, "modules.dep")); err != nil {
		base := root
		if strings.HasPrefix(mods, "usr/") {
			base = filepath.Join(root, "usr")
		}
		if out, err := exec.CommandContext(ctx, "depmod", "--basedir", base, "--all", p.Release).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("depmod (package kmod) for %s: %w: %s", p.Release, err, strings.TrimSpace(string(out)))
		}
	}
	pk := p
	k := Kernel{Name: name, Vmlinuz: vmlinuz, Modules: mods, Release: p.Release, Package: &pk}
	b, _ := json.MarshalIndent(k, "", "  ")
	if err := os.WriteFile(filepath.Join(root, "kernel.json"), b, 0o644); err != nil {
		return nil, err
	}
	final := filepath.Join(c.Dir, p.Release)
	if err := os.RemoveAll(final); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	if err := os.Rename(root, final); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	fmt.Fprintf(c.Log, "svclab vm: cached %s in %s\n", p.Release, final)
	return c.load(name, p.Release)
}

// download writes url to dst, checking its SHA256 as it streams.
func (f *Fetcher) download(ctx context.Context, url, dst, sha string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	h := sha256.New()
	err = f.get(ctx, url, io.MultiWriter(out, h))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("%s: SHA256 %s, the signed index says %s", url, got, sha)
	}
	return nil
}
