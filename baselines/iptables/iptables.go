// Package iptables is the kube-proxy iptables-mode baseline: ClusterIP
// services as nat-table DNAT rules in the node network namespace, with a
// chain of random-probability rules picking the endpoint per new connection.
//
// Like kube-proxy, it renders the ruleset as iptables-restore text and
// applies it in one --noflush transaction, so a sync is atomic and never
// touches chains it does not own. The first sync writes every chain; later
// ones write only the top-level chains and the per-service and
// per-endpoint chains that changed (kube-proxy's partial syncs). It
// registers three variants that differ only in the restore binary: the
// system default, iptables-nft and iptables-legacy.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// lockWait is how long iptables-restore waits for the xtables lock. The lock
// is a file shared by every network namespace on the host, so parallel runs
// in other namespaces can hold it briefly.
const lockWait = "5"

// closeTimeout bounds Close, which gets no context.
const closeTimeout = 30 * time.Second

// baselineName names the baseline in render errors, whichever variant.
const baselineName = "iptables"

// variant is one way of reaching netfilter: a restore/save binary pair per
// IP family (iptables-* for IPv4, ip6tables-* for IPv6, of the same
// backend).
type variant struct {
	name        string
	description string
	restore     string
	save        string
	restore6    string
	save6       string

	probeOnce sync.Once
	probeErr  error

	probe6Once sync.Once
	probe6Err  error

	versionOnce sync.Once
	backend     string
	version     string
	versionErr  error
}

var variants = []*variant{
	{
		name:        "iptables",
		description: "kube-proxy iptables mode via the system's default iptables-restore (ip6tables-restore for IPv6)",
		restore:     "iptables-restore",
		save:        "iptables-save",
		restore6:    "ip6tables-restore",
		save6:       "ip6tables-save",
	},
	{
		name:        "iptables-nft",
		description: "kube-proxy iptables mode via iptables-nft-restore (nf_tables backend; ip6tables-nft-restore for IPv6)",
		restore:     "iptables-nft-restore",
		save:        "iptables-nft-save",
		restore6:    "ip6tables-nft-restore",
		save6:       "ip6tables-nft-save",
	},
	{
		name:        "iptables-legacy",
		description: "kube-proxy iptables mode via iptables-legacy-restore (x_tables backend; ip6tables-legacy-restore for IPv6)",
		restore:     "iptables-legacy-restore",
		save:        "iptables-legacy-save",
		restore6:    "ip6tables-legacy-restore",
		save6:       "ip6tables-legacy-save",
	},
}

// bins is the restore and save binary of family f.
func (v *variant) bins(f kubeproxy.Family) (restore, save string) {
	if f == kubeproxy.IPv6 {
		return v.restore6, v.save6
	}
	return v.restore, v.save
}

func init() {
	for _, v := range variants {
		datapath.Register(datapath.Factory{
			InNetfilter: true,
			Name:        v.name,
			Description: v.description,
			Probe:       v.probe,
			New:         func() datapath.Datapath { return &Datapath{v: v} },
		})
	}
}

// versionRE parses "iptables-restore v1.8.9 (nf_tables)".
var versionRE = regexp.MustCompile(`v(\d[^\s]*)\s+\(([^)]+)\)`)

// detectVersion asks the restore binary which iptables release and backend
// it is; the default "iptables-restore" is an alternatives link, so only it
// knows whether it is the nft or the legacy flavour.
func (v *variant) detectVersion() (backend, version string, err error) {
	v.versionOnce.Do(func() {
		m, err := kubeproxy.ToolVersion(v.restore, versionRE)
		if err != nil {
			v.versionErr = err
			return
		}
		v.version, v.backend = m[1], m[2]
	})
	return v.backend, v.version, v.versionErr
}

// probeFeatures names what the datapath needs from the kernel, each with a
// minimal restore input that uses only that thing. They are tried one by
// one only when the full probe ruleset fails, to say which one is missing.
var probeFeatures = []kubeproxy.Feature{
	{What: "nat table", Input: "*nat\nCOMMIT\n"},
	{What: "filter table", Input: "*filter\nCOMMIT\n"},
	{What: "comment match", Input: "*nat\n-A OUTPUT -m comment --comment \"svclab probe\" -j RETURN\nCOMMIT\n"},
	{What: "statistic match", Input: "*nat\n-A OUTPUT -m statistic --mode random --probability 0.5000000000 -j RETURN\nCOMMIT\n"},
	{What: "mark match", Input: "*nat\n-A OUTPUT -m mark --mark 0x4000/0x4000 -j RETURN\nCOMMIT\n"},
	{What: "MARK target", Input: "*nat\n-A OUTPUT -j MARK --or-mark 0x4000\nCOMMIT\n"},
	{What: "DNAT target", Input: "*nat\n-A OUTPUT -m tcp -p tcp -d 192.0.2.1/32 -j DNAT --to-destination 192.0.2.2:80\nCOMMIT\n"},
	{What: "udp match", Input: "*nat\n-A OUTPUT -m udp -p udp -d 192.0.2.1/32 -j RETURN\nCOMMIT\n"},
	{What: "MASQUERADE target", Input: "*nat\n-A POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n"},
	{What: "recent match (xt_recent, for ClientIP affinity)", Input: "*nat\n-A OUTPUT -m recent --name svclab-probe --rcheck --seconds 60 --reap -j RETURN\n-A OUTPUT -m recent --name svclab-probe --set -j RETURN\nCOMMIT\n"},
	{What: "REJECT target", Input: "*filter\n-A OUTPUT -m udp -p udp -d 192.0.2.1/32 -j REJECT\nCOMMIT\n"},
}

// probeFeatures6 is probeFeatures for ip6tables: the same matches and
// targets with IPv6 addresses (REJECT answers with ICMPv6
// port-unreachable, ip6tables' default).
var probeFeatures6 = []kubeproxy.Feature{
	{What: "IPv6 nat table", Input: "*nat\nCOMMIT\n"},
	{What: "IPv6 filter table", Input: "*filter\nCOMMIT\n"},
	{What: "IPv6 comment match", Input: "*nat\n-A OUTPUT -m comment --comment \"svclab probe\" -j RETURN\nCOMMIT\n"},
	{What: "IPv6 statistic match", Input: "*nat\n-A OUTPUT -m statistic --mode random --probability 0.5000000000 -j RETURN\nCOMMIT\n"},
	{What: "IPv6 mark match", Input: "*nat\n-A OUTPUT -m mark --mark 0x4000/0x4000 -j RETURN\nCOMMIT\n"},
	{What: "IPv6 MARK target", Input: "*nat\n-A OUTPUT -j MARK --or-mark 0x4000\nCOMMIT\n"},
	{What: "IPv6 DNAT target", Input: "*nat\n-A OUTPUT -m tcp -p tcp -d 2001:db8::1/128 -j DNAT --to-destination [2001:db8::2]:80\nCOMMIT\n"},
	{What: "IPv6 udp match", Input: "*nat\n-A OUTPUT -m udp -p udp -d 2001:db8::1/128 -j RETURN\nCOMMIT\n"},
	{What: "IPv6 MASQUERADE target", Input: "*nat\n-A POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n"},
	{What: "IPv6 recent match (xt_recent, for ClientIP affinity)", Input: "*nat\n-A OUTPUT -m recent --name svclab-probe --rcheck --seconds 60 --reap -j RETURN\n-A OUTPUT -m recent --name svclab-probe --set -j RETURN\nCOMMIT\n"},
	{What: "IPv6 REJECT target", Input: "*filter\n-A OUTPUT -m udp -p udp -d 2001:db8::1/128 -j REJECT\nCOMMIT\n"},
}

// probe checks that the restore binary exists and that the kernel accepts
// every match and target the baseline renders, by applying the real Setup
// ruleset plus a small service in a throw-away namespace. It checks IPv4
// only: a kernel without IPv6 netfilter can still run every IPv4 service,
// and Setup asks probe6 when a dual-stack node needs IPv6 too.
func (v *variant) probe() error {
	v.probeOnce.Do(func() { v.probeErr = v.runProbe(kubeproxy.IPv4) })
	return v.probeErr
}

// probe6 is probe for ip6tables; its error names what IPv6 lacks.
func (v *variant) probe6() error {
	v.probe6Once.Do(func() { v.probe6Err = v.runProbe(kubeproxy.IPv6) })
	return v.probe6Err
}

func (v *variant) runProbe(f kubeproxy.Family) error {
	restore, save := v.bins(f)
	name, features := v.name, probeFeatures
	if f == kubeproxy.IPv6 {
		name, features = v.name+" (IPv6)", probeFeatures6
	}
	return kubeproxy.RulesetProbe{
		Name: name,
		Bins: []string{restore, save},
		Version: func() error {
			_, _, err := v.detectVersion()
			return err
		},
		Input: func() ([]byte, error) {
			return append(renderSetup(), probeRuleset(f)...), nil
		},
		Load: func(ctx context.Context, ns *nsutil.NS, input []byte) ([]byte, error) {
			return v.restoreFam(ctx, f, ns, input)
		},
		Features: features,
		Lacker:   "kernel",
		Quote:    kubeproxy.FirstLine,
	}.Run()
}

// probeRuleset is a rendered sync of one service with two endpoints and one
// without, so the probe exercises exactly the rule shapes Apply writes.
func probeRuleset(f kubeproxy.Family) []byte {
	r, err := renderSync(f, kubeproxy.ProbePodCIDRFor(f), kubeproxy.ProbeStateFor(f), nil)
	if err != nil {
		panic("iptables: probe state does not render: " + err.Error())
	}
	return r.text
}

// liveChains lists the KUBE-* chains the kernel holds in ns for family f,
// per table.
func (v *variant) liveChains(ctx context.Context, f kubeproxy.Family, ns *nsutil.NS) (chainSet, error) {
	_, save := v.bins(f)
	out := chainSet{}
	for _, table := range []string{tableFilter, tableNAT} {
		b, err := ns.Run(ctx, nil, save, "-t", table)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, ":KUBE-"); ok {
				out.add(table, "KUBE-"+strings.Fields(name)[0])
			}
		}
	}
	return out, nil
}

// restoreIn applies input with one iptables-restore --noflush inside ns.
func (v *variant) restoreIn(ctx context.Context, ns *nsutil.NS, input []byte) ([]byte, error) {
	return v.restoreFam(ctx, kubeproxy.IPv4, ns, input)
}

// restoreFam applies input with one (ip6)iptables-restore --noflush of
// family f inside ns.
func (v *variant) restoreFam(ctx context.Context, f kubeproxy.Family, ns *nsutil.NS, input []byte) ([]byte, error) {
	restore, _ := v.bins(f)
	return kubeproxy.Load(ctx, ns, errLine, input, restore, "--noflush", "-w", lockWait)
}

// Datapath is one iptables baseline instance in one node namespace. Like
// kube-proxy on a dual-stack node it runs one proxier per IP family: the
// IPv4 services in iptables, the IPv6 ones in ip6tables, each with its own
// chains, sync record and transactions (a sync is atomic per family, as
// kube-proxy's are).
type Datapath struct {
	v *variant

	mu  sync.Mutex
	env *datapath.Env
	// fams is the per-family state of each family set up: IPv4 always,
	// IPv6 on a dual-stack node whose kernel has IPv6 netfilter.
	fams map[kubeproxy.Family]*famState
	// noIPv6 says why IPv6 is not set up; Apply refuses IPv6 services with
	// it (wrapping datapath.ErrUnsupported).
	noIPv6 error
	// pad is the number of never-matching rules put ahead of the service
	// rules, from padEnv at Setup (0 normally).
	pad int
}

// famState is one family's proxier: what it installed and synced.
type famState struct {
	fam kubeproxy.Family
	// podCIDR is the family's pod CIDR (masquerade traffic from outside it).
	podCIDR netip.Prefix
	// installed is every chain of ours that exists in the namespace now.
	installed chainSet
	// synced is the rules text per chain the last successful Apply left,
	// which the next Apply diffs against to write only changed chains. nil
	// means the next Apply is a full sync: the first one after Setup, and
	// the one after a failed restore.
	synced chainRules
	// resync is set by a failed restore: the next full sync also deletes
	// stale chains the kernel holds but the record may lack.
	resync bool
	// lastSync is "full" or "partial": how the last successful Apply wrote.
	lastSync string
	// rules is the rule count of the last successful Apply.
	rules int
	// udp is the UDP service ports and endpoints of the last successful
	// Apply, for the conntrack cleanup of the next one.
	udp kubeproxy.UDPEndpoints
}

// newFamState is a family just set up: the base chains exist.
func newFamState(f kubeproxy.Family, podCIDR netip.Prefix) *famState {
	fs := &famState{fam: f, podCIDR: podCIDR, installed: chainSet{}}
	for table, chains := range baseChains {
		for _, ch := range chains {
			fs.installed.add(table, ch)
		}
	}
	return fs
}

// padEnv names the environment variable that pads KUBE-SERVICES with that
// many never-matching rules: an injected regression for the CI gate's
// detection test, recorded in Info as pad_rules. Unset means 0.
const padEnv = "SVCLAB_IPTABLES_PAD_RULES"

// maxPad bounds padEnv (198.18.0.0/15 holds 131,072 addresses).
const maxPad = 1 << 17

// Setup creates the fixed chains and the jumps into them from the built-in
// chains, in one restore per family: IPv4 always, and IPv6 as well when the
// node is dual-stack (env has an IPv6 pod or service CIDR) and the variant's
// ip6tables works here. Without IPv6, Setup still succeeds and Apply
// refuses IPv6 services as unsupported, naming why.
func (d *Datapath) Setup(ctx context.Context, env *datapath.Env) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if env == nil || env.Node == nil {
		return fmt.Errorf("%s setup: env has no node namespace", d.v.name)
	}
	if d.env != nil {
		return fmt.Errorf("%s setup: already set up in %s", d.v.name, d.env.Node.Name)
	}
	if v := os.Getenv(padEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxPad {
			return fmt.Errorf("%s setup: %s=%q: want an integer from 0 to %d", d.v.name, padEnv, v, maxPad)
		}
		d.pad = n
	}
	if _, err := d.v.restoreIn(ctx, env.Node, renderSetup()); err != nil {
		return fmt.Errorf("%s setup: %w", d.v.name, err)
	}
	d.fams = map[kubeproxy.Family]*famState{kubeproxy.IPv4: newFamState(kubeproxy.IPv4, env.PodCIDR)}
	d.noIPv6 = nil
	switch {
	case !env.PodCIDR6.IsValid() && !env.ServiceCIDR6.IsValid():
		d.noIPv6 = datapath.Unsupportedf("%s: the node is IPv4-only (no IPv6 pod or service CIDR), so it runs no IPv6 proxier", d.v.name)
	case d.v.probe6() != nil:
		d.noIPv6 = d.v.probe6()
	default:
		if _, err := d.v.restoreFam(ctx, kubeproxy.IPv6, env.Node, renderSetup()); err != nil {
			// Leave nothing behind: the IPv4 chains go again.
			_, _ = d.v.restoreIn(ctx, env.Node, renderTeardown(d.fams[kubeproxy.IPv4].installed))
			d.fams = nil
			return fmt.Errorf("%s setup (IPv6): %w", d.v.name, err)
		}
		d.fams[kubeproxy.IPv6] = newFamState(kubeproxy.IPv6, env.PodCIDR6)
	}
	d.env = env
	return nil
}

// Apply replaces the whole service ruleset with st, in one transaction per
// family (IPv4, then IPv6). The first Apply after Setup, and the first
// after a failed restore, write every chain (a full sync); the others write
// only the always-full chains (KUBE-SERVICES, KUBE-MARK-MASQ,
// KUBE-POSTROUTING) and the per-service and per-endpoint chains that are
// new or changed, like kube-proxy's partial syncs. Either way, chains of
// services and endpoints that disappeared are deleted in the same
// transaction; if a restore fails, the kernel keeps that family's previous
// ruleset and so does the record of what is installed.
func (d *Datapath) Apply(ctx context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return fmt.Errorf("%s apply: Setup has not run", d.v.name)
	}
	// This node's view: internalTrafficPolicy Local services keep this
	// node's endpoints (kube-proxy's --hostname-override is the node).
	st = st.ForNode(d.env.NodeName)
	split := kubeproxy.SplitFamilies(st)
	if d.fams[kubeproxy.IPv6] == nil && len(split[kubeproxy.IPv6].Services) > 0 {
		return fmt.Errorf("%s apply: service %s: cluster IP %v is IPv6: %w", d.v.name, split[kubeproxy.IPv6].Services[0], split[kubeproxy.IPv6].Services[0].ClusterIP, d.noIPv6)
	}
	for _, f := range kubeproxy.Families {
		fs := d.fams[f]
		if fs == nil {
			continue
		}
		if err := d.applyFamily(ctx, fs, split[f]); err != nil {
			return err
		}
	}
	return nil
}

// applyFamily syncs one family's services. d.mu is held.
func (d *Datapath) applyFamily(ctx context.Context, fs *famState, st datapath.State) error {
	what := d.v.name
	if fs.fam == kubeproxy.IPv6 {
		what += " (IPv6)"
	}
	var r rendered
	var err error
	if fs.synced != nil {
		r, err = renderPartialSync(fs.fam, fs.podCIDR, st, fs.synced, d.pad)
	} else {
		prev := fs.installed
		if fs.resync {
			// A restore that failed might still have committed (killed
			// after the kernel took it): delete what the kernel holds too.
			prev = d.installedWithLive(ctx, fs)
		}
		r, err = renderSyncPadded(fs.fam, fs.podCIDR, st, prev, d.pad)
	}
	if err != nil {
		return fmt.Errorf("%s apply: %w", what, err)
	}
	if _, err := d.v.restoreFam(ctx, fs.fam, d.env.Node, r.text); err != nil {
		// The record stays the old one; the next Apply rewrites
		// everything rather than trusting a diff against it.
		fs.synced = nil
		fs.resync = true
		return fmt.Errorf("%s apply: %w", what, err)
	}
	fs.installed = r.chains
	fs.synced = r.content
	fs.resync = false
	fs.rules = r.rules
	fs.lastSync = "full"
	if r.partial {
		fs.lastSync = "partial"
	}
	// The new rules decide only new flows: drop the UDP conntrack entries
	// that would keep sending clients to endpoints st no longer has.
	prev, cur := fs.udp, kubeproxy.UDPServing(st)
	fs.udp = cur
	if _, err := kubeproxy.CleanStaleUDP(d.env.Node, prev, cur); err != nil {
		return fmt.Errorf("%s apply: ruleset installed, but: %w", what, err)
	}
	return nil
}

// Targets is the ClusterIP: the kernel picks the endpoint.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info records the iptables backend and release actually used, and how big
// the last ruleset was ("rules", and the same count as
// datapath.InfoStateObjects, over both families; "rules_ipv6" is the IPv6
// part on a dual-stack node).
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	var rules, rules6 int
	var sync string
	v6 := false
	if fs := d.fams[kubeproxy.IPv4]; fs != nil {
		rules, sync = fs.rules, fs.lastSync
	}
	if fs := d.fams[kubeproxy.IPv6]; fs != nil {
		v6, rules6 = true, fs.rules
		rules += fs.rules
	}
	pad := d.pad
	d.mu.Unlock()
	info := map[string]string{
		"rules": strconv.Itoa(rules),
		// The rules are the programmed objects; the kernel memory they
		// take is not readable per ruleset, so there is no StateBytes.
		datapath.InfoStateObjects: strconv.Itoa(rules),
	}
	if v6 {
		info["rules_ipv6"] = strconv.Itoa(rules6)
	}
	if sync != "" {
		// How the last Apply wrote IPv4: "full" (every chain) or
		// "partial" (only the changed ones). IPv6 follows the same
		// schedule: both start full and go partial after a success.
		info["sync"] = sync
	}
	if pad > 0 {
		info["pad_rules"] = strconv.Itoa(pad)
	}
	if backend, version, err := d.v.detectVersion(); err == nil {
		info["iptables_backend"] = backend
		info["iptables_version"] = version
	}
	return info
}

// Close deletes the jumps from the built-in chains and every chain Setup and
// Apply created, in one restore per family; it tries every family even
// when one fails. Calling it again is a no-op.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	for _, f := range kubeproxy.Families {
		fs := d.fams[f]
		if fs == nil {
			continue
		}
		// What the kernel holds can be more than the record: an Apply
		// killed after its transaction committed (Ctrl-C) installed
		// chains the record never saw. Tear down the union, or a leftover
		// SEP chain keeps KUBE-MARK-MASQ busy and the teardown fails.
		installed := d.installedWithLive(ctx, fs)
		if _, err := d.v.restoreFam(ctx, f, d.env.Node, renderTeardown(installed)); err != nil {
			if f == kubeproxy.IPv6 {
				err = fmt.Errorf("IPv6: %w", err)
			}
			errs = append(errs, err)
			continue
		}
		delete(d.fams, f)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s close: %w", d.v.name, errors.Join(errs...))
	}
	d.env = nil
	d.fams = nil
	d.noIPv6 = nil
	return nil
}

// installedWithLive is the family's recorded chains plus the KUBE-* chains
// the kernel holds (only the record if the save binary fails). d.mu is
// held.
func (d *Datapath) installedWithLive(ctx context.Context, fs *famState) chainSet {
	out := chainSet{}
	for table, chains := range fs.installed {
		for ch := range chains {
			out.add(table, ch)
		}
	}
	if live, err := d.v.liveChains(ctx, fs.fam, d.env.Node); err == nil {
		for table, chains := range live {
			for ch := range chains {
				out.add(table, ch)
			}
		}
	}
	return out
}
