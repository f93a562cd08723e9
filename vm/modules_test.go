package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A cut of a real Debian 6.12 modules.dep: depmod lists every transitive
// dependency on each line.
const modulesDep = `kernel/lib/libcrc32c.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz:
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz:
kernel/net/netfilter/nf_conntrack.ko.xz: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/ipvs/ip_vs_wrr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/drivers/net/dummy.ko.xz:
kernel/drivers/net/veth.ko.xz:
kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/drivers/some-thing.ko.xz:
`

func testIndex(t *testing.T) *ModuleIndex {
	t.Helper()
	paths, deps, err := ParseModulesDep(strings.NewReader(modulesDep))
	require.NoError(t, err)
	pre := ParseSoftdeps(strings.NewReader("softdep libcrc32c pre: crc32c\nsoftdep veth post: dummy\n"), paths,
		ParseAliases(strings.NewReader("alias crc32c crc32c_generic\nalias crc32c crc32c_intel\n")))
	return &ModuleIndex{Dir: "/m", Paths: paths, Deps: deps, Pre: pre, Builtin: map[string]bool{"virtio_pci": true}}
}

func TestParseModulesDep(t *testing.T) {
	ix := testIndex(t)
	assert.Equal(t, "kernel/net/netfilter/ipvs/ip_vs.ko.xz", ix.Paths["ip_vs"])
	assert.Equal(t, "kernel/drivers/some-thing.ko.xz", ix.Paths["some_thing"], "dashes in file names are underscores in module names")
	assert.ElementsMatch(t, []string{"nf_conntrack", "nf_defrag_ipv6", "nf_defrag_ipv4", "libcrc32c"}, ix.Deps["ip_vs"])
	assert.Equal(t, []string{"crc32c_generic"}, ix.Pre["libcrc32c"], "a soft dependency resolves through aliases to modules that exist")
	assert.Empty(t, ix.Pre["veth"], "post: soft dependencies do not order loading before")

	tests := []struct{ name, dep, want string }{
		{"no colon", "kernel/a.ko\n", `has no "module:"`},
		{"dangling dependency", "kernel/a.ko: kernel/b.ko\n", "a needs b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ParseModulesDep(strings.NewReader(tt.dep))
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestSelect(t *testing.T) {
	ix := testIndex(t)
	tests := []struct {
		name     string
		patterns []string
		want     []string
		missing  []string
	}{
		{"names", []string{"veth", "dummy"}, []string{"dummy", "veth"}, nil},
		{"glob", []string{"ip_vs_*"}, []string{"ip_vs_rr", "ip_vs_wrr"}, nil},
		{"directory", []string{"kernel/net/9p/"}, []string{"9pnet", "9pnet_virtio"}, nil},
		{"built in is not missing", []string{"virtio_pci"}, nil, nil},
		{"absent is missing", []string{"xt_nosuch", "veth"}, []string{"veth"}, []string{"xt_nosuch"}},
		{"glob matching nothing is fine", []string{"nft_*"}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, missing := ix.Select(tt.patterns)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.missing, missing)
		})
	}
}

// Every module comes after what it needs, soft dependencies included, so
// insmod in this order never meets an unknown symbol.
func TestClosureOrdersDependenciesFirst(t *testing.T) {
	ix := testIndex(t)
	got, err := ix.Closure([]string{"ip_vs_rr", "9p", "veth"})
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"ip_vs_rr", "ip_vs", "nf_conntrack", "nf_defrag_ipv4", "nf_defrag_ipv6", "libcrc32c", "crc32c_generic", "9p", "9pnet", "netfs", "veth"}, got)
	pos := map[string]int{}
	for i, n := range got {
		pos[n] = i
	}
	for _, n := range got {
		for _, d := range append(append([]string(nil), ix.Deps[n]...), ix.Pre[n]...) {
			assert.Less(t, pos[d], pos[n], "%s must load before %s", d, n)
		}
	}
	again, err := ix.Closure([]string{"veth", "9p", "ip_vs_rr"})
	require.NoError(t, err)
	assert.Equal(t, got, again, "the order does not depend on the order asked in")

	_, err = ix.Closure([]string{"nosuch"})
	assert.ErrorContains(t, err, "module nosuch is not in /m/modules.dep")

	ix.Deps["netfs"] = []string{"9p"}
	_, err = ix.Closure([]string{"9p"})
	assert.ErrorContains(t, err, "dependency cycle")
}

func TestRenderModulesDepAndAliases(t *testing.T) {
	ix := testIndex(t)
	dep := string(ix.RenderModulesDep([]string{"netfs", "9pnet"}))
	assert.Equal(t, "kernel/fs/netfs/netfs.ko:\nkernel/net/9p/9pnet.ko: kernel/fs/netfs/netfs.ko\n", dep, "paths lose their compression suffix")

	aliases := string(FilterAliases(strings.NewReader("alias rtnl-link-veth veth\nalias rtnl-link-dummy dummy\nalias x y z\n"), map[string]bool{"veth": true}))
	assert.Equal(t, "alias rtnl-link-veth veth\n", aliases)

	assert.Equal(t, "a/b.ko", UncompressedPath("a/b.ko.zst"))
	assert.Equal(t, "a/b.ko", UncompressedPath("a/b.ko"))
}

func TestPlanModules(t *testing.T) {
	ix := testIndex(t)
	p, err := PlanModules(ix, []string{"kernel/net/9p/", "veth"}, []string{"ip_vs_rr", "virtio_pci", "xt_nosuch"})
	require.NoError(t, err)
	assert.Contains(t, p.Ship, "ip_vs", "preloaded modules and their dependencies are shipped")
	assert.Contains(t, p.Ship, "netfs")
	assert.NotContains(t, p.Preload, "veth", "shipped for autoload, not preloaded")
	assert.Equal(t, "ip_vs_rr", p.Preload[len(p.Preload)-1])
	assert.Equal(t, []string{"xt_nosuch"}, p.Missing)
	assert.Contains(t, p.PreloadPaths(), "kernel/net/netfilter/ipvs/ip_vs.ko")
}

func TestLoadModuleIndex(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(modulesDep), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_pci.ko\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "modules.alias"), []byte("alias crc32c crc32c_generic\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "modules.softdep"), []byte("# comment\nsoftdep libcrc32c pre: crc32c\n"), 0o644))
	ix, err := LoadModuleIndex(dir)
	require.NoError(t, err)
	assert.True(t, ix.Builtin["virtio_pci"])
	assert.Equal(t, []string{"crc32c_generic"}, ix.Pre["libcrc32c"])

	_, err = LoadModuleIndex(t.TempDir())
	assert.ErrorContains(t, err, "depmod")
}
