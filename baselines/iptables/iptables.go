// Package iptables is the kube-proxy iptables-mode baseline: ClusterIP
// services as nat-table DNAT rules in the node network namespace, with a
// chain of random-probability rules picking the endpoint per new connection.
//
// Like kube-proxy, it renders the complete ruleset as iptables-restore text
// and applies it in one --noflush transaction, so a sync is atomic and never
// touches chains it does not own. It registers three variants that differ
// only in the restore binary: the system default, iptables-nft and
// iptables-legacy.
package iptables

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"svclab/datapath"
	"svclab/internal/nsutil"
)

// lockWait is how long iptables-restore waits for the xtables lock. The lock
// is a file shared by every network namespace on the host, so parallel runs
// in other namespaces can hold it briefly.
const lockWait = "5"

// closeTimeout bounds Close, which gets no context.
const closeTimeout = 30 * time.Second

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
		out, err := exec.Command(v.restore, "--version").CombinedOutput()
		if err != nil {
			v.versionErr = fmt.Errorf("%s --version: %w: %s", v.restore, err, strings.TrimSpace(string(out)))
			return
		}
		m := versionRE.FindStringSubmatch(string(out))
		if m == nil {
			v.versionErr = fmt.Errorf("%s --version: cannot parse %q", v.restore, strings.TrimSpace(string(out)))
			return
		}
		v.version, v.backend = m[1], m[2]
	})
	return v.backend, v.version, v.versionErr
}

// probeFeatures names what the datapath needs from the kernel, each with a
// minimal restore input that uses only that thing. They are tried one by
// one only when the full probe ruleset fails, to say which one is missing.
var probeFeatures = []struct {
	what, input string
}{
	{"nat table", "*nat\nCOMMIT\n"},
	{"filter table", "*filter\nCOMMIT\n"},
	{"comment match", "*nat\n-A OUTPUT -m comment --comment \"svclab probe\" -j RETURN\nCOMMIT\n"},
	{"statistic match", "*nat\n-A OUTPUT -m statistic --mode random --probability 0.5000000000 -j RETURN\nCOMMIT\n"},
	{"mark match", "*nat\n-A OUTPUT -m mark --mark 0x4000/0x4000 -j RETURN\nCOMMIT\n"},
	{"MARK target", "*nat\n-A OUTPUT -j MARK --or-mark 0x4000\nCOMMIT\n"},
	{"DNAT target", "*nat\n-A OUTPUT -m tcp -p tcp -d 192.0.2.1/32 -j DNAT --to-destination 192.0.2.2:80\nCOMMIT\n"},
	{"udp match", "*nat\n-A OUTPUT -m udp -p udp -d 192.0.2.1/32 -j RETURN\nCOMMIT\n"},
	{"MASQUERADE target", "*nat\n-A POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n"},
	{"REJECT target", "*filter\n-A OUTPUT -m udp -p udp -d 192.0.2.1/32 -j REJECT\nCOMMIT\n"},
}

// probe checks that the restore binary exists and that the kernel accepts
// every match and target the baseline renders, by applying the real Setup
// ruleset plus a small service in a throw-away namespace.
func (v *variant) probe() error {
	v.probeOnce.Do(func() { v.probeErr = v.runProbe() })
	return v.probeErr
}

func (v *variant) runProbe() error {
	for _, bin := range []string{v.restore, v.save} {
		if _, err := exec.LookPath(bin); err != nil {
			return datapath.Unsupportedf("%s: %s not found in PATH", v.name, bin)
		}
	}
	if _, _, err := v.detectVersion(); err != nil {
		return datapath.Unsupportedf("%s: %v", v.name, err)
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("%s probe: %w", v.name, err)
	}
	ns, err := nsutil.Create("svclab-probe-" + hex.EncodeToString(rnd[:]))
	if err != nil {
		return datapath.Unsupportedf("%s: cannot create a probe network namespace: %v", v.name, err)
	}
	defer ns.Close()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	input := append(renderSetup(), probeRuleset()...)
	if _, err := v.restoreIn(ctx, ns, input); err == nil {
		return nil
	} else if ctx.Err() != nil {
		return fmt.Errorf("%s probe: %w", v.name, err)
	}
	// Something is missing: find out what, feature by feature.
	var missing []string
	var firstOut string
	for _, f := range probeFeatures {
		if out, err := v.restoreIn(ctx, ns, []byte(f.input)); err != nil {
			missing = append(missing, f.what)
			if firstOut == "" {
				firstOut = firstLine(out)
			}
		}
	}
	if len(missing) == 0 {
		return datapath.Unsupportedf("%s: probe ruleset rejected although every feature passed alone", v.name)
	}
	return datapath.Unsupportedf("%s: kernel lacks %s (%s)", v.name, strings.Join(missing, ", "), firstOut)
}

// probeRuleset is a rendered sync of one service with two endpoints and one
// without, so the probe exercises exactly the rule shapes Apply writes.
func probeRuleset() []byte {
	st := probeState()
	r, err := renderSync(probePodCIDR, st, nil)
	if err != nil {
		panic("iptables: probe state does not render: " + err.Error())
	}
	return r.text
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// restoreIn applies input with one iptables-restore --noflush inside ns.
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

func (v *variant) restoreIn(ctx context.Context, ns *nsutil.NS, input []byte) ([]byte, error) {
	out, err := ns.Run(ctx, input, v.restore, "--noflush", "-w", lockWait)
	if err != nil {
		if near := failedLines(input, string(out)); near != "" {
			err = fmt.Errorf("%w\ninput near the failure:\n%s", err, near)
		}
		return out, err
	}
	return out, nil
}

// Datapath is one iptables baseline instance in one node namespace.
type Datapath struct {
	v *variant

	mu  sync.Mutex
	env *datapath.Env
	// installed is every chain of ours that exists in the namespace now.
	installed chainSet
	// rules is the rule count of the last successful Apply.
	rules int
}

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
// Chains of services that disappeared are deleted in the same transaction;
// if the restore fails, the kernel keeps the previous ruleset and so does
// the record of what is installed.
func (d *Datapath) Apply(ctx context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return fmt.Errorf("%s apply: Setup has not run", d.v.name)
	}
	r, err := renderSync(d.env.PodCIDR, st, d.installed)
	if err != nil {
		return fmt.Errorf("%s apply: %w", d.v.name, err)
	}
	if _, err := d.v.restoreIn(ctx, d.env.Node, r.text); err != nil {
		return fmt.Errorf("%s apply: %w", d.v.name, err)
	}
	d.installed = r.chains
	d.rules = r.rules
	return nil
}

// Targets is the ClusterIP: the kernel picks the endpoint.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info records the iptables backend and release actually used, and how big
// the last ruleset was.
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	rules := d.rules
	d.mu.Unlock()
	info := map[string]string{"rules": strconv.Itoa(rules)}
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
	installed := chainSet{}
	for table, chains := range d.installed {
		for ch := range chains {
			installed.add(table, ch)
		}
	}
	if live, err := d.v.liveChains(ctx, d.env.Node); err == nil {
		for table, chains := range live {
			for ch := range chains {
				installed.add(table, ch)
			}
		}
	}
	if _, err := d.v.restoreIn(ctx, d.env.Node, renderTeardown(installed)); err != nil {
		return fmt.Errorf("%s close: %w", d.v.name, err)
	}
	d.env = nil
	d.installed = nil
	d.rules = 0
	return nil
}

// probePodCIDR and probeState are the probe's small service set: one
// service with two endpoints and a TCP and a UDP port, and one without
// endpoints (the REJECT path).
var probePodCIDR = netip.MustParsePrefix("10.244.0.0/16")

func probeState() datapath.State {
	ports := []datapath.ServicePort{
		{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080},
		{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353},
	}
	return datapath.State{Services: []datapath.Service{
		{
			Namespace: "svclab", Name: "probe",
			ClusterIP: netip.MustParseAddr("10.96.0.1"),
			Ports:     ports,
			Endpoints: []datapath.Endpoint{
				{Pod: "a", Addr: netip.MustParseAddr("10.244.0.2"), Ready: true, Serving: true},
				{Pod: "b", Addr: netip.MustParseAddr("10.244.0.3"), Ready: true, Serving: true},
			},
		},
		{
			Namespace: "svclab", Name: "empty",
			ClusterIP: netip.MustParseAddr("10.96.0.2"),
			Ports:     ports,
		},
	}}
}
