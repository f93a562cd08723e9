// Package nftables is the kube-proxy nftables-mode baseline: ClusterIP
// services as one nftables table in the node network namespace, where a
// verdict map keyed by destination address, protocol and port finds the
// service port's chain and one numgen rule picks the endpoint per new
// connection.
//
// Like kube-proxy it renders nft input and applies it with one `nft -f -`,
// which the kernel commits as one transaction: a sync is atomic, and a sync
// the kernel rejects changes nothing. Also like kube-proxy, the first sync
// (and the one after a failure, and one an hour) re-sends the complete
// table, and every other sync sends only the chains and map elements of the
// services that changed.
package nftables

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// Name is the datapath's registered name.
const Name = "nftables"

// closeTimeout bounds Close, which gets no context.
const closeTimeout = 30 * time.Second

// tool is one nft binary with what the baseline learned about it once.
type tool struct {
	bin string

	probeOnce sync.Once
	probeErr  error

	probe6Once sync.Once
	probe6Err  error

	versionOnce sync.Once
	version     string
	versionErr  error
}

// nft is the system's nft, shared by every instance.
var nft = &tool{bin: "nft"}

func init() {
	datapath.Register(datapath.Factory{
		InNetfilter: true,
		Name:        Name,
		Description: "kube-proxy nftables mode: service-ips verdict map, numgen endpoint choice, DNAT (nft)",
		Probe:       nft.probe,
		New:         func() datapath.Datapath { return &Datapath{t: nft} },
	})
}

// versionRE parses "nftables v1.0.6 (Lester Gooch #5)".
var versionRE = regexp.MustCompile(`\bv(\d[^\s]*)`)

// detectVersion asks nft for its release once.
func (t *tool) detectVersion() (string, error) {
	t.versionOnce.Do(func() {
		m, err := kubeproxy.ToolVersion(t.bin, versionRE)
		if err != nil {
			t.versionErr = err
			return
		}
		t.version = m[1]
	})
	return t.version, t.versionErr
}

// probeFeatures names what the baseline needs from nft and the kernel, each
// with a minimal input that uses only that thing in a fresh scratch table.
// They are tried one by one only when the full probe ruleset fails, to say
// which one is missing.
var probeFeatures = []kubeproxy.Feature{
	{What: "nf_tables ip table", Input: probeTable("")},
	{What: "nat base chain", Input: probeTable("chain c { type nat hook prerouting priority -100; policy accept; }")},
	{What: "filter base chain", Input: probeTable("chain c { type filter hook forward priority -110; policy accept; }")},
	{What: "ct state match", Input: probeTable("chain c { type filter hook forward priority -110; policy accept; ct state new accept; }")},
	{What: "concatenated verdict map (ipv4_addr . inet_proto . inet_service)", Input: probeTable(
		"map m { type ipv4_addr . inet_proto . inet_service : verdict; }",
		"chain t { }",
		"chain c { ip daddr . meta l4proto . th dport vmap @m; }",
	) + "add element ip svclab-probe m { 192.0.2.1 . tcp . 80 comment \"probe\" : goto t }\n"},
	{What: "numgen random with a verdict map", Input: probeTable("chain t { }", "chain c { numgen random mod 2 vmap { 0 : goto t, 1 : goto t }; }")},
	{What: "dynamic set with timeouts and update (ClientIP affinity)", Input: probeTable(
		"set s { type ipv4_addr; flags dynamic,timeout; timeout 60s; }",
		"chain t { }",
		"chain c { ip saddr @s goto t; update @s { ip saddr }; }",
	)},
	{What: "meta mark", Input: probeTable("chain c { meta mark set meta mark | 0x4000; meta mark & 0x4000 == 0 return; }")},
	{What: "dnat", Input: probeTable("chain c { type nat hook output priority -100; policy accept; meta l4proto tcp dnat to 192.0.2.2:80; }")},
	{What: "masquerade fully-random", Input: probeTable("chain c { type nat hook postrouting priority 100; policy accept; masquerade fully-random; }")},
	{What: "reject", Input: probeTable("chain c { type filter hook output priority -110; policy accept; ip daddr 192.0.2.1 reject; }")},
}

// probeFeatures6 is probeFeatures for the ip6 table.
var probeFeatures6 = []kubeproxy.Feature{
	{What: "nf_tables ip6 table", Input: probeTable6("")},
	{What: "IPv6 nat base chain", Input: probeTable6("chain c { type nat hook prerouting priority -100; policy accept; }")},
	{What: "IPv6 filter base chain", Input: probeTable6("chain c { type filter hook forward priority -110; policy accept; }")},
	{What: "concatenated verdict map (ipv6_addr . inet_proto . inet_service)", Input: probeTable6(
		"map m { type ipv6_addr . inet_proto . inet_service : verdict; }",
		"chain t { }",
		"chain c { ip6 daddr . meta l4proto . th dport vmap @m; }",
	) + "add element ip6 svclab-probe m { 2001:db8::1 . tcp . 80 comment \"probe\" : goto t }\n"},
	{What: "IPv6 dynamic set with timeouts and update (ClientIP affinity)", Input: probeTable6(
		"set s { type ipv6_addr; flags dynamic,timeout; timeout 60s; }",
		"chain t { }",
		"chain c { ip6 saddr @s goto t; update @s { ip6 saddr }; }",
	)},
	{What: "IPv6 dnat", Input: probeTable6("chain c { type nat hook output priority -100; policy accept; meta l4proto tcp dnat to [2001:db8::2]:80; }")},
	{What: "IPv6 masquerade fully-random", Input: probeTable6("chain c { type nat hook postrouting priority 100; policy accept; masquerade fully-random; }")},
	{What: "IPv6 reject", Input: probeTable6("chain c { type filter hook output priority -110; policy accept; ip6 daddr 2001:db8::1 reject; }")},
}

// probeTable6 is probeTable in the ip6 family.
func probeTable6(decls ...string) string {
	return strings.ReplaceAll(probeTable(decls...), "table ip svclab-probe", "table ip6 svclab-probe")
}

// probeTable is a scratch table holding the given declarations, one a line
// (nft wants a newline or ';' between a block's closing brace and the next).
// The table is added and deleted first, so that each feature starts from an
// empty one.
func probeTable(decls ...string) string {
	var b strings.Builder
	b.WriteString("add table ip svclab-probe\ndelete table ip svclab-probe\n")
	b.WriteString("table ip svclab-probe {\n")
	for _, d := range decls {
		b.WriteString("\t" + d + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// probe checks that nft exists and that the kernel accepts every construct
// the baseline renders, by applying the real Setup and a sync of a small
// service set in a throw-away namespace. The answer is cached. It checks
// the ip table only: a kernel without IPv6 nf_tables can still run every
// IPv4 service, and Setup asks probe6 when a dual-stack node needs IPv6.
func (t *tool) probe() error {
	t.probeOnce.Do(func() { t.probeErr = t.runProbe(kubeproxy.IPv4) })
	return t.probeErr
}

// probe6 is probe for the ip6 table; its error names what IPv6 lacks.
func (t *tool) probe6() error {
	t.probe6Once.Do(func() { t.probe6Err = t.runProbe(kubeproxy.IPv6) })
	return t.probe6Err
}

func (t *tool) runProbe(f kubeproxy.Family) error {
	name, features := Name, probeFeatures
	if f == kubeproxy.IPv6 {
		name, features = Name+" (IPv6)", probeFeatures6
	}
	return kubeproxy.RulesetProbe{
		Name: name,
		Bins: []string{t.bin},
		Version: func() error {
			_, err := t.detectVersion()
			return err
		},
		Input: func() ([]byte, error) {
			r, err := renderSync(f, kubeproxy.ProbePodCIDRFor(f), kubeproxy.ProbeStateFor(f), nil)
			if err != nil {
				return nil, fmt.Errorf("probe state does not render: %w", err)
			}
			return append(renderSetup(f), r.text...), nil
		},
		Load:     t.apply,
		Features: features,
		Lacker:   "nft or the kernel",
		Quote:    firstErrorLine,
	}.Run()
}

// firstErrorLine is nft's first "Error:" line, or its first line.
func firstErrorLine(b []byte) string {
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.Contains(line, "Error:") {
			return strings.TrimSpace(line)
		}
	}
	return kubeproxy.FirstLine(b)
}

// apply runs input through one `nft -f -` inside ns: one kernel
// transaction. On failure the error quotes the input around the line nft
// complained about.
func (t *tool) apply(ctx context.Context, ns *nsutil.NS, input []byte) ([]byte, error) {
	return kubeproxy.Load(ctx, ns, errLine, input, t.bin, "-f", "-")
}

// fullSyncPeriod is how long partial syncs may follow one another before
// Apply does a full sync again, which repairs anything changed behind the
// datapath's back (kube-proxy resyncs fully once an hour too).
const fullSyncPeriod = time.Hour

// Datapath is one nftables baseline instance in one node namespace. Like
// kube-proxy on a dual-stack node it runs one proxier per IP family, each
// with its own table (ip svclab, ip6 svclab), record and transactions.
type Datapath struct {
	t *tool

	mu  sync.Mutex
	env *datapath.Env
	// fams is each family set up: IPv4 always, IPv6 on a dual-stack node
	// whose nft and kernel handle the ip6 table.
	fams map[kubeproxy.Family]*famState
	// noIPv6 says why IPv6 is not set up; Apply refuses IPv6 services with
	// it (wrapping datapath.ErrUnsupported).
	noIPv6 error
	// lastSync is "full" or "partial" for the last successful Apply of
	// the IPv4 table.
	lastSync string
}

// famState is one family's proxier.
type famState struct {
	fam     kubeproxy.Family
	podCIDR netip.Prefix
	// installed is what the table holds now, as left by the last
	// successful Setup or Apply.
	installed *installed
	// needFull makes the next Apply a full sync: the first one after
	// Setup, and the one after a failed sync (the kernel then kept the old
	// table, but the datapath does not trust that the diff fits it).
	needFull bool
	// distrust is set by a failed sync: nft may have been killed (a
	// cancelled context) after the kernel committed, so the next full sync
	// asks the kernel which chains and sets exist instead of trusting
	// installed, whose deletions would otherwise fail on chains already
	// gone, and every full sync after that too.
	distrust bool
	// lastFull is when the last full sync succeeded.
	lastFull time.Time
	// lastSync is "full" or "partial" for the last successful Apply.
	lastSync string
	// udp is the UDP service ports and endpoints of the last successful
	// Apply, for the conntrack cleanup of the next one.
	udp kubeproxy.UDPEndpoints
}

// setupFamily creates family f's table with its base chains, fixed chains
// and empty maps, in one transaction.
func (d *Datapath) setupFamily(ctx context.Context, env *datapath.Env, f kubeproxy.Family, podCIDR netip.Prefix) (*famState, error) {
	if _, err := d.t.apply(ctx, env.Node, renderSetup(f)); err != nil {
		return nil, err
	}
	empty, err := desire(f, podCIDR, datapath.State{})
	if err != nil {
		return nil, err
	}
	return &famState{fam: f, podCIDR: podCIDR, installed: newInstalled(empty), needFull: true}, nil
}

// Setup creates the ip table, and the ip6 table as well when the node is
// dual-stack (env has an IPv6 pod or service CIDR) and nft and the kernel
// handle it. Without IPv6, Setup still succeeds and Apply refuses IPv6
// services as unsupported, naming why.
func (d *Datapath) Setup(ctx context.Context, env *datapath.Env) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if env == nil || env.Node == nil {
		return fmt.Errorf("%s setup: env has no node namespace", Name)
	}
	if d.env != nil {
		return fmt.Errorf("%s setup: already set up in %s", Name, d.env.Node.Name)
	}
	fs, err := d.setupFamily(ctx, env, kubeproxy.IPv4, env.PodCIDR)
	if err != nil {
		return fmt.Errorf("%s setup: %w", Name, err)
	}
	d.fams = map[kubeproxy.Family]*famState{kubeproxy.IPv4: fs}
	d.noIPv6 = nil
	switch {
	case !env.PodCIDR6.IsValid() && !env.ServiceCIDR6.IsValid():
		d.noIPv6 = datapath.Unsupportedf("%s: the node is IPv4-only (no IPv6 pod or service CIDR), so it runs no IPv6 proxier", Name)
	case d.t.probe6() != nil:
		d.noIPv6 = d.t.probe6()
	default:
		fs6, err := d.setupFamily(ctx, env, kubeproxy.IPv6, env.PodCIDR6)
		if err != nil {
			// Leave nothing behind: the ip table goes again.
			_, _ = d.t.apply(ctx, env.Node, renderTeardown(kubeproxy.IPv4))
			d.fams = nil
			return fmt.Errorf("%s setup (IPv6): %w", Name, err)
		}
		d.fams[kubeproxy.IPv6] = fs6
	}
	d.env = env
	d.lastSync = ""
	return nil
}

// Apply makes the tables hold st, in one transaction per family (IPv4,
// then IPv6). The first Apply after Setup or after a failure, and one an
// hour, is a full sync that re-sends the whole table; every other Apply
// sends only the chains, sets and map elements that differ from what the
// last successful sync installed. If nft fails, the kernel keeps that
// family's previous ruleset and so does the record of what is installed,
// and the next Apply is a full sync (as kube-proxy does after an error).
func (d *Datapath) Apply(ctx context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return fmt.Errorf("%s apply: Setup has not run", Name)
	}
	// This node's view: internalTrafficPolicy Local services keep this
	// node's endpoints.
	st = st.ForNode(d.env.NodeName)
	split := kubeproxy.SplitFamilies(st)
	if v6 := split[kubeproxy.IPv6].Services; d.fams[kubeproxy.IPv6] == nil && len(v6) > 0 {
		return fmt.Errorf("%s apply: service %s: cluster IP %v is IPv6: %w", Name, v6[0], v6[0].ClusterIP, d.noIPv6)
	}
	for _, f := range kubeproxy.Families {
		if fs := d.fams[f]; fs != nil {
			if err := d.applyFamily(ctx, fs, split[f]); err != nil {
				return err
			}
		}
	}
	d.lastSync = d.fams[kubeproxy.IPv4].lastSync
	return nil
}

// applyFamily syncs one family's table. d.mu is held.
func (d *Datapath) applyFamily(ctx context.Context, fs *famState, st datapath.State) error {
	what := Name
	if fs.fam == kubeproxy.IPv6 {
		what += " (IPv6)"
	}
	want, err := desire(fs.fam, fs.podCIDR, st)
	if err != nil {
		return fmt.Errorf("%s apply: %w", what, err)
	}
	kind, text := "partial", []byte(nil)
	if !fs.needFull && time.Since(fs.lastFull) < fullSyncPeriod {
		text, err = renderPartial(fs.installed, want)
		if err != nil {
			// Not a failure: the change just needs the whole table.
			kind = "full"
		}
	} else {
		kind = "full"
	}
	if kind == "full" {
		prev := fs.installed.names()
		if fs.distrust {
			if names, err := d.t.kernelNames(ctx, fs.fam, d.env.Node); err == nil {
				prev = names
			}
		}
		text = renderFull(want, prev)
	}
	// An empty partial sync has nothing to send.
	if len(text) > 0 {
		if _, err := d.t.apply(ctx, d.env.Node, text); err != nil {
			fs.needFull, fs.distrust = true, true
			return fmt.Errorf("%s apply (%s sync): %w", what, kind, err)
		}
	}
	fs.installed = newInstalled(want)
	fs.lastSync = kind
	if kind == "full" {
		fs.needFull, fs.distrust = false, false
		fs.lastFull = time.Now()
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

// kernelNames reads from the kernel the per-service and per-endpoint
// chains and the affinity sets our table holds (names only: listing chains
// and sets does not list rules or elements).
func (t *tool) kernelNames(ctx context.Context, f kubeproxy.Family, ns *nsutil.NS) (map[string]bool, error) {
	names := map[string]bool{}
	for _, kind := range []string{"chain", "set"} {
		out, err := ns.Run(ctx, nil, t.bin, "-j", "list", kind+"s", nftFamily(f))
		if err != nil {
			return nil, err
		}
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			return nil, fmt.Errorf("nft -j list %ss: %w", kind, err)
		}
		for _, obj := range doc.Nftables {
			raw, ok := obj[kind]
			if !ok {
				continue
			}
			var o struct{ Table, Name string }
			if err := json.Unmarshal(raw, &o); err != nil {
				return nil, fmt.Errorf("nft -j list %ss: %w", kind, err)
			}
			if o.Table != table {
				continue
			}
			for _, p := range []string{prefixService, prefixLocal, prefixEndpoint, prefixAffinity} {
				if strings.HasPrefix(o.Name, p) {
					names[o.Name] = true
				}
			}
		}
	}
	return names, nil
}

// Targets is the ClusterIP: the kernel picks the endpoint.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info records the nft release and how many rules the tables hold
// ("rules", and the same count as datapath.InfoStateObjects, over both
// families; "rules_ipv6" is the ip6 table's part on a dual-stack node; the
// elements of the service-ips and no-endpoint-services maps are not
// counted), and whether the last Apply of the ip table was a "full" or a
// "partial" sync ("sync").
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	rules, rules6, v6 := 0, 0, false
	for f, fs := range d.fams {
		if fs.installed == nil {
			continue
		}
		rules += fs.installed.rules
		if f == kubeproxy.IPv6 {
			v6, rules6 = true, fs.installed.rules
		}
	}
	lastSync := d.lastSync
	d.mu.Unlock()
	info := map[string]string{
		"rules": strconv.Itoa(rules),
		// The rules are the programmed objects; the kernel memory they
		// take is not readable per table, so there is no StateBytes.
		datapath.InfoStateObjects: strconv.Itoa(rules),
	}
	if v6 {
		info["rules_ipv6"] = strconv.Itoa(rules6)
	}
	if v, err := d.t.detectVersion(); err == nil {
		info["nft_version"] = v
	}
	// "full" or "partial": how the last Apply changed the table.
	if lastSync != "" {
		info["sync"] = lastSync
	}
	return info
}

// Close deletes the tables, and with them everything Setup and Apply
// installed; it tries both families even when one fails. Calling it again
// is a no-op.
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
		if d.fams[f] == nil {
			continue
		}
		if _, err := d.t.apply(ctx, d.env.Node, renderTeardown(f)); err != nil {
			errs = append(errs, fmt.Errorf("%s table: %w", nftFamily(f), err))
			continue
		}
		delete(d.fams, f)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s close: %w", Name, errors.Join(errs...))
	}
	d.env = nil
	d.fams = nil
	d.noIPv6 = nil
	d.lastSync = ""
	return nil
}
