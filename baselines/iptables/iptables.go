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

// variant is one way of reaching netfilter: a restore/save binary pair.
type variant struct {
	name        string
	description string
	restore     string
	save        string

	probeOnce sync.Once
	probeErr  error

	versionOnce sync.Once
	backend     string
	version     string
	versionErr  error
}

var variants = []*variant{
	{
		name:        "iptables",
		description: "kube-proxy iptables mode via the system's default iptables-restore",
		restore:     "iptables-restore",
		save:        "iptables-save",
	},
	{
		name:        "iptables-nft",
		description: "kube-proxy iptables mode via iptables-nft-restore (nf_tables backend)",
		restore:     "iptables-nft-restore",
		save:        "iptables-nft-save",
	},
	{
		name:        "iptables-legacy",
		description: "kube-proxy iptables mode via iptables-legacy-restore (x_tables backend)",
		restore:     "iptables-legacy-restore",
		save:        "iptables-legacy-save",
	},
}

func init() {
	for _, v := range variants {
		datapath.Register(datapath.Factory{
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

// probe checks that the restore binary exists and that the kernel accepts
// every match and target the baseline renders, by applying the real Setup
// ruleset plus a small service in a throw-away namespace.
func (v *variant) probe() error {
	v.probeOnce.Do(func() { v.probeErr = v.runProbe() })
	return v.probeErr
}

func (v *variant) runProbe() error {
	return kubeproxy.RulesetProbe{
		Name: v.name,
		Bins: []string{v.restore, v.save},
		Version: func() error {
			_, _, err := v.detectVersion()
			return err
		},
		Input: func() ([]byte, error) {
			return append(renderSetup(), probeRuleset()...), nil
		},
		Load:     v.restoreIn,
		Features: probeFeatures,
		Lacker:   "kernel",
		Quote:    kubeproxy.FirstLine,
	}.Run()
}

// probeRuleset is a rendered sync of one service with two endpoints and one
// without, so the probe exercises exactly the rule shapes Apply writes.
func probeRuleset() []byte {
	r, err := renderSync(kubeproxy.ProbePodCIDR, kubeproxy.ProbeState(), nil)
	if err != nil {
		panic("iptables: probe state does not render: " + err.Error())
	}
	return r.text
}

// liveChains lists the KUBE-* chains the kernel holds in ns, per table.
func (v *variant) liveChains(ctx context.Context, ns *nsutil.NS) (chainSet, error) {
	out := chainSet{}
	for _, table := range []string{tableFilter, tableNAT} {
		b, err := ns.Run(ctx, nil, v.save, "-t", table)
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
	return kubeproxy.Load(ctx, ns, errLine, input, v.restore, "--noflush", "-w", lockWait)
}

// Datapath is one iptables baseline instance in one node namespace.
type Datapath struct {
	v *variant

	mu  sync.Mutex
	env *datapath.Env
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
	// pad is the number of never-matching rules put ahead of the service
	// rules, from padEnv at Setup (0 normally).
	pad int
}

// padEnv names the environment variable that pads KUBE-SERVICES with that
// many never-matching rules: an injected regression for the CI gate's
// detection test, recorded in Info as pad_rules. Unset means 0.
const padEnv = "SVCLAB_IPTABLES_PAD_RULES"

// maxPad bounds padEnv (198.18.0.0/15 holds 131,072 addresses).
const maxPad = 1 << 17

// Setup creates the fixed chains and the jumps into them from the built-in
// chains, in one restore.
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
	d.env = env
	d.installed = chainSet{}
	for table, chains := range baseChains {
		for _, ch := range chains {
			d.installed.add(table, ch)
		}
	}
	return nil
}

// Apply replaces the whole service ruleset with st in one transaction.
// The first Apply after Setup, and the first after a failed restore, write
// every chain (a full sync); the others write only the always-full chains
// (KUBE-SERVICES, KUBE-MARK-MASQ, KUBE-POSTROUTING) and the per-service
// and per-endpoint chains that are new or changed, like kube-proxy's
// partial syncs. Either way, chains of services and endpoints that
// disappeared are deleted in the same transaction; if the restore fails,
// the kernel keeps the previous ruleset and so does the record of what is
// installed.
func (d *Datapath) Apply(ctx context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return fmt.Errorf("%s apply: Setup has not run", d.v.name)
	}
	var r rendered
	var err error
	if d.synced != nil {
		r, err = renderPartialSync(d.env.PodCIDR, st, d.synced, d.pad)
	} else {
		prev := d.installed
		if d.resync {
			// A restore that failed might still have committed (killed
			// after the kernel took it): delete what the kernel holds too.
			prev = d.installedWithLive(ctx)
		}
		r, err = renderSyncPadded(d.env.PodCIDR, st, prev, d.pad)
	}
	if err != nil {
		return fmt.Errorf("%s apply: %w", d.v.name, err)
	}
	if _, err := d.v.restoreIn(ctx, d.env.Node, r.text); err != nil {
		// The record stays the old one; the next Apply rewrites
		// everything rather than trusting a diff against it.
		d.synced = nil
		d.resync = true
		return fmt.Errorf("%s apply: %w", d.v.name, err)
	}
	d.installed = r.chains
	d.synced = r.content
	d.resync = false
	d.rules = r.rules
	d.lastSync = "full"
	if r.partial {
		d.lastSync = "partial"
	}
	// The new rules decide only new flows: drop the UDP conntrack entries
	// that would keep sending clients to endpoints st no longer has.
	prev, cur := d.udp, kubeproxy.UDPServing(st)
	d.udp = cur
	if _, err := kubeproxy.CleanStaleUDP(d.env.Node, prev, cur); err != nil {
		return fmt.Errorf("%s apply: ruleset installed, but: %w", d.v.name, err)
	}
	return nil
}

// Targets is the ClusterIP: the kernel picks the endpoint.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info records the iptables backend and release actually used, and how big
// the last ruleset was ("rules", and the same count as
// datapath.InfoStateObjects).
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	rules, pad, sync := d.rules, d.pad, d.lastSync
	d.mu.Unlock()
	info := map[string]string{
		"rules": strconv.Itoa(rules),
		// The rules are the programmed objects; the kernel memory they
		// take is not readable per ruleset, so there is no StateBytes.
		datapath.InfoStateObjects: strconv.Itoa(rules),
	}
	if sync != "" {
		// How the last Apply wrote: "full" (every chain) or "partial"
		// (only the changed ones).
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
// Apply created, in one restore. Calling it again is a no-op.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	// What the kernel holds can be more than the record: an Apply killed
	// after its transaction committed (Ctrl-C) installed chains the record
	// never saw. Tear down the union, or a leftover SEP chain keeps
	// KUBE-MARK-MASQ busy and the teardown fails.
	installed := d.installedWithLive(ctx)
	if _, err := d.v.restoreIn(ctx, d.env.Node, renderTeardown(installed)); err != nil {
		return fmt.Errorf("%s close: %w", d.v.name, err)
	}
	d.env = nil
	d.installed = nil
	d.synced = nil
	d.resync = false
	d.lastSync = ""
	d.udp = nil
	d.rules = 0
	return nil
}

// installedWithLive is the recorded chains plus the KUBE-* chains the
// kernel holds (only the record if iptables-save fails). d.mu is held.
func (d *Datapath) installedWithLive(ctx context.Context) chainSet {
	out := chainSet{}
	for table, chains := range d.installed {
		for ch := range chains {
			out.add(table, ch)
		}
	}
	if live, err := d.v.liveChains(ctx, d.env.Node); err == nil {
		for table, chains := range live {
			for ch := range chains {
				out.add(table, ch)
			}
		}
	}
	return out
}
