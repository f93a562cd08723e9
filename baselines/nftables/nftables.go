// Package nftables is the kube-proxy nftables-mode baseline: ClusterIP
// services as one nftables table in the node network namespace, where a
// verdict map keyed by destination address, protocol and port finds the
// service port's chain and one numgen rule picks the endpoint per new
// connection.
//
// Like kube-proxy it renders the complete table as nft input and applies it
// with one `nft -f -`, which the kernel commits as one transaction: a sync is
// atomic, and a sync the kernel rejects changes nothing.
package nftables

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

// Name is the datapath's registered name.
const Name = "nftables"

// closeTimeout bounds Close and the probe, which get no context.
const closeTimeout = 30 * time.Second

// tool is one nft binary with what the baseline learned about it once.
type tool struct {
	bin string

	probeOnce sync.Once
	probeErr  error

	versionOnce sync.Once
	version     string
	versionErr  error
}

// nft is the system's nft, shared by every instance.
var nft = &tool{bin: "nft"}

func init() {
	datapath.Register(datapath.Factory{
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
		out, err := exec.Command(t.bin, "--version").CombinedOutput()
		if err != nil {
			t.versionErr = fmt.Errorf("%s --version: %w: %s", t.bin, err, strings.TrimSpace(string(out)))
			return
		}
		m := versionRE.FindStringSubmatch(string(out))
		if m == nil {
			t.versionErr = fmt.Errorf("%s --version: cannot parse %q", t.bin, strings.TrimSpace(string(out)))
			return
		}
		t.version = m[1]
	})
	return t.version, t.versionErr
}

// probeFeatures names what the baseline needs from nft and the kernel, each
// with a minimal input that uses only that thing in a scratch table. They
// are tried one by one only when the full probe ruleset fails, to say which
// one is missing.
var probeFeatures = []struct {
	what, input string
}{
	{"nf_tables ip table", probeTable("")},
	{"nat base chain", probeTable("chain c { type nat hook prerouting priority -100; policy accept; }")},
	{"filter base chain", probeTable("chain c { type filter hook forward priority -110; policy accept; }")},
	{"ct state match", probeTable("chain c { type filter hook forward priority -110; policy accept; ct state new accept; }")},
	{"concatenated verdict map (ipv4_addr . inet_proto . inet_service)", probeTable(
		"map m { type ipv4_addr . inet_proto . inet_service : verdict; }",
		"chain t { }",
		"chain c { ip daddr . meta l4proto . th dport vmap @m; }",
	) + "add element ip svclab-probe m { 192.0.2.1 . tcp . 80 comment \"probe\" : goto t }\n"},
	{"numgen random with a verdict map", probeTable("chain t { }", "chain c { numgen random mod 2 vmap { 0 : goto t, 1 : goto t }; }")},
	{"meta mark", probeTable("chain c { meta mark set meta mark | 0x4000; meta mark & 0x4000 == 0 return; }")},
	{"dnat", probeTable("chain c { type nat hook output priority -100; policy accept; meta l4proto tcp dnat to 192.0.2.2:80; }")},
	{"masquerade fully-random", probeTable("chain c { type nat hook postrouting priority 100; policy accept; masquerade fully-random; }")},
	{"reject", probeTable("chain c { type filter hook output priority -110; policy accept; ip daddr 192.0.2.1 reject; }")},
}

// probeTable is a scratch table holding the given declarations, one a line
// (nft wants a newline or ';' between a block's closing brace and the next).
func probeTable(decls ...string) string {
	var b strings.Builder
	b.WriteString("table ip svclab-probe {\n")
	for _, d := range decls {
		b.WriteString("\t" + d + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// probe checks that nft exists and that the kernel accepts every construct
// the baseline renders, by applying the real Setup and a sync of a small
// service set in a throw-away namespace. The answer is cached.
func (t *tool) probe() error {
	t.probeOnce.Do(func() { t.probeErr = t.runProbe() })
	return t.probeErr
}

func (t *tool) runProbe() error {
	if _, err := exec.LookPath(t.bin); err != nil {
		return datapath.Unsupportedf("%s: %s not found in PATH", Name, t.bin)
	}
	if _, err := t.detectVersion(); err != nil {
		return datapath.Unsupportedf("%s: %v", Name, err)
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("%s probe: %w", Name, err)
	}
	ns, err := nsutil.Create("svclab-probe-" + hex.EncodeToString(rnd[:]))
	if err != nil {
		return datapath.Unsupportedf("%s: cannot create a probe network namespace: %v", Name, err)
	}
	defer ns.Close()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	r, err := renderSync(probePodCIDR, probeState(), nil)
	if err != nil {
		return fmt.Errorf("%s probe: probe state does not render: %w", Name, err)
	}
	input := append(renderSetup(), r.text...)
	if _, err := t.apply(ctx, ns, input); err == nil {
		return nil
	} else if ctx.Err() != nil {
		return fmt.Errorf("%s probe: %w", Name, err)
	}
	// Something is missing: find out what, feature by feature, each in a
	// fresh scratch table.
	var missing []string
	var firstOut string
	for _, f := range probeFeatures {
		in := "add table ip svclab-probe\ndelete table ip svclab-probe\n" + f.input
		if out, err := t.apply(ctx, ns, []byte(in)); err != nil {
			missing = append(missing, f.what)
			if firstOut == "" {
				firstOut = firstErrorLine(out)
			}
		}
	}
	if len(missing) == 0 {
		return datapath.Unsupportedf("%s: probe ruleset rejected although every feature passed alone", Name)
	}
	return datapath.Unsupportedf("%s: nft or the kernel lacks %s (%s)", Name, strings.Join(missing, ", "), firstOut)
}

// firstErrorLine is nft's first "Error:" line, or its first line.
func firstErrorLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "Error:") {
			return strings.TrimSpace(line)
		}
	}
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// apply runs input through one `nft -f -` inside ns: one kernel
// transaction. On failure the error quotes the input around the line nft
// complained about.
func (t *tool) apply(ctx context.Context, ns *nsutil.NS, input []byte) ([]byte, error) {
	out, err := ns.Run(ctx, input, t.bin, "-f", "-")
	if err != nil {
		if near := failedLines(input, string(out)); near != "" {
			err = fmt.Errorf("%w\ninput near the failure:\n%s", err, near)
		}
		return out, err
	}
	return out, nil
}

// Datapath is one nftables baseline instance in one node namespace.
type Datapath struct {
	t *tool

	mu  sync.Mutex
	env *datapath.Env
	// installed is every per-service and per-endpoint chain in the table
	// now, as left by the last successful Apply.
	installed map[string]bool
	// rules is the rule count of the table after the last successful
	// Setup or Apply.
	rules int
}

// Setup creates the table with its base chains, fixed chains and empty
// maps, in one transaction.
func (d *Datapath) Setup(ctx context.Context, env *datapath.Env) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if env == nil || env.Node == nil {
		return fmt.Errorf("%s setup: env has no node namespace", Name)
	}
	if d.env != nil {
		return fmt.Errorf("%s setup: already set up in %s", Name, d.env.Node.Name)
	}
	if _, err := d.t.apply(ctx, env.Node, renderSetup()); err != nil {
		return fmt.Errorf("%s setup: %w", Name, err)
	}
	empty, err := renderSync(env.PodCIDR, datapath.State{}, nil)
	if err != nil {
		return fmt.Errorf("%s setup: %w", Name, err)
	}
	d.env = env
	d.installed = map[string]bool{}
	d.rules = empty.rules
	return nil
}

// Apply replaces the table's contents with st in one transaction, deleting
// the chains of services and endpoints that disappeared. If nft fails, the
// kernel keeps the previous ruleset and so does the record of what is
// installed.
func (d *Datapath) Apply(ctx context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return fmt.Errorf("%s apply: Setup has not run", Name)
	}
	r, err := renderSync(d.env.PodCIDR, st, d.installed)
	if err != nil {
		return fmt.Errorf("%s apply: %w", Name, err)
	}
	if _, err := d.t.apply(ctx, d.env.Node, r.text); err != nil {
		return fmt.Errorf("%s apply: %w", Name, err)
	}
	d.installed = r.chains
	d.rules = r.rules
	return nil
}

// Targets is the ClusterIP: the kernel picks the endpoint.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}

// Info records the nft release and how many rules the table holds.
func (d *Datapath) Info() map[string]string {
	d.mu.Lock()
	rules := d.rules
	d.mu.Unlock()
	info := map[string]string{"rules": strconv.Itoa(rules)}
	if v, err := d.t.detectVersion(); err == nil {
		info["nft_version"] = v
	}
	return info
}

// Close deletes the table, and with it everything Setup and Apply
// installed. Calling it again is a no-op.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if _, err := d.t.apply(ctx, d.env.Node, renderTeardown()); err != nil {
		return fmt.Errorf("%s close: %w", Name, err)
	}
	d.env = nil
	d.installed = nil
	d.rules = 0
	return nil
}

// probePodCIDR and probeState are the probe's small service set: one
// service with two endpoints and a TCP and a UDP port, and one without
// endpoints (the reject path).
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
