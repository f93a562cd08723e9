package iptables

import (
	"bytes"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"time"

	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
)

// Tables the baseline writes. filter comes first in every rendered ruleset,
// like kube-proxy, so a reader of the golden files finds the same order.
const (
	tableFilter = "filter"
	tableNAT    = "nat"
)

// Fixed chain names (kube-proxy's).
const (
	chainServices    = "KUBE-SERVICES"
	chainMarkMasq    = "KUBE-MARK-MASQ"
	chainPostrouting = "KUBE-POSTROUTING"
	prefixSVC        = "KUBE-SVC-"
	prefixSEP        = "KUBE-SEP-"
	// prefixSVL is the chain of a service port with internalTrafficPolicy
	// Local: its node's endpoints only (kube-proxy's "local policy chain").
	prefixSVL = "KUBE-SVL-"
)

// masqMark is the packet-mark bit KUBE-MARK-MASQ sets and KUBE-POSTROUTING
// turns into a MASQUERADE.
const masqMark = "0x4000"

// baseJump is a rule in a built-in chain that hands packets to one of our
// chains. Setup inserts these and Close deletes them by the same text, so
// both are rendered from this one table.
type baseJump struct {
	table, from, comment, to string
}

var baseJumps = []baseJump{
	// filter: where the REJECT for endpoint-less services lives. INPUT for
	// VIPs that are local, FORWARD for routed pod traffic, OUTPUT for
	// node-local clients.
	{tableFilter, "INPUT", "kubernetes service portals", chainServices},
	{tableFilter, "FORWARD", "kubernetes service portals", chainServices},
	{tableFilter, "OUTPUT", "kubernetes service portals", chainServices},
	// nat: PREROUTING sees traffic from pods, OUTPUT traffic from the node.
	{tableNAT, "PREROUTING", "kubernetes service portals", chainServices},
	{tableNAT, "OUTPUT", "kubernetes service portals", chainServices},
	{tableNAT, "POSTROUTING", "kubernetes postrouting rules", chainPostrouting},
}

// baseChains are the fixed chains per table: they exist from Setup to Close.
var baseChains = map[string][]string{
	tableFilter: {chainServices},
	tableNAT:    {chainServices, chainMarkMasq, chainPostrouting},
}

// chainSet is the set of our chains per table.
type chainSet map[string]map[string]bool

func (c chainSet) add(table, chain string) {
	if c[table] == nil {
		c[table] = map[string]bool{}
	}
	c[table][chain] = true
}

// sorted returns the table's chains in a stable order.
func (c chainSet) sorted(table string) []string {
	out := make([]string, 0, len(c[table]))
	for ch := range c[table] {
		out = append(out, ch)
	}
	sort.Strings(out)
	return out
}

// tableWriter accumulates one table's section of an iptables-restore input:
// chain declarations first, then rules, then chain deletions, which is the
// only order every iptables-restore backend accepts (a chain must be declared
// before a rule jumps to it, and unreferenced before it is deleted).
type tableWriter struct {
	name    string
	chains  []string
	seen    map[string]bool
	lines   []ruleLine
	nrules  int
	deletes []string
}

// ruleLine is one rule line and the chain it writes to, so that a partial
// sync can pick the lines of the chains it rewrites without reparsing.
type ruleLine struct {
	chain, text string
}

func newTableWriter(name string) *tableWriter {
	return &tableWriter{name: name, seen: map[string]bool{}}
}

// chain declares a chain; declaring it with --noflush empties it, so every
// declared chain must be refilled completely by the same input.
func (w *tableWriter) chain(name string) {
	if w.seen[name] {
		return
	}
	w.seen[name] = true
	w.chains = append(w.chains, name)
}

// rule writes one rule line (without the trailing newline).
func (w *tableWriter) rule(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	// The chain is the word after the command ("-A CHAIN …").
	var chain string
	if _, rest, ok := strings.Cut(line, " "); ok {
		chain, _, _ = strings.Cut(rest, " ")
	}
	w.lines = append(w.lines, ruleLine{chain: chain, text: line})
	if strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "-I ") {
		w.nrules++
	}
}

// remove flushes and deletes a chain we no longer need. The flush drops the
// chain's own jumps (SVC → SEP) so that deleting it cannot fail on a
// reference held by another stale chain.
func (w *tableWriter) remove(name string) {
	w.chain(name)
	w.deletes = append(w.deletes, name)
}

// content is the rules text of every declared chain ("" for a chain without
// rules), which is what a later partial sync compares against.
func (w *tableWriter) content() map[string]string {
	sb := make(map[string]*strings.Builder, len(w.chains))
	for _, ch := range w.chains {
		sb[ch] = &strings.Builder{}
	}
	for _, l := range w.lines {
		if b := sb[l.chain]; b != nil {
			b.WriteString(l.text)
			b.WriteByte('\n')
		}
	}
	out := make(map[string]string, len(sb))
	for ch, b := range sb {
		out[ch] = b.String()
	}
	return out
}

// writeTo writes the table's section. keep, if not nil, limits the chains
// declared and the rules written to those it holds (a partial sync); the
// chains to delete must be in it too.
func (w *tableWriter) writeTo(b *bytes.Buffer, keep map[string]bool) {
	fmt.Fprintf(b, "*%s\n", w.name)
	for _, ch := range w.chains {
		if keep == nil || keep[ch] {
			fmt.Fprintf(b, ":%s - [0:0]\n", ch)
		}
	}
	for _, l := range w.lines {
		if keep == nil || keep[l.chain] {
			b.WriteString(l.text)
			b.WriteByte('\n')
		}
	}
	for _, ch := range w.deletes {
		fmt.Fprintf(b, "-X %s\n", ch)
	}
	b.WriteString("COMMIT\n")
}

// rendered is one complete iptables-restore input for Apply.
type rendered struct {
	text []byte
	// chains is what the ruleset leaves installed, base chains included.
	chains chainSet
	// rules counts the rules of the whole state (both tables), whether
	// this input writes them all or only the changed chains.
	rules int
	// content is the rules text of every chain the state has: what the
	// kernel holds once this input is applied, for the next partial sync.
	content chainRules
	// partial is true when only the changed chains are written.
	partial bool
}

// chainRules is the rules text per chain per table.
type chainRules map[string]map[string]string

// alwaysFull says whether a partial sync rewrites chain in full whatever it
// held: the fixed chains, KUBE-SERVICES above all, whose rules reference
// every service, like kube-proxy's top-level chains.
func alwaysFull(table, chain string) bool {
	for _, ch := range baseChains[table] {
		if ch == chain {
			return true
		}
	}
	return false
}

// chainHash names a per-service or per-endpoint chain the way kube-proxy
// does: the 16-character kube-proxy hash over the concatenated parts.
// iptables caps chain names at 28 characters, so the readable service name
// cannot be used.
func chainHash(parts ...string) string {
	return kubeproxy.NameHash(strings.Join(parts, ""), 16)
}

// svcChainName is KUBE-SVC-<hash(service port name, protocol)>.
func svcChainName(portName, proto string) string {
	return prefixSVC + chainHash(portName, proto)
}

// svlChainName is KUBE-SVL-<hash(service port name, protocol)>: the same
// hash as the port's KUBE-SVC chain, as in kube-proxy.
func svlChainName(portName, proto string) string {
	return prefixSVL + chainHash(portName, proto)
}

// sepChainName is KUBE-SEP-<hash(service port name, protocol, ip:port)>.
func sepChainName(portName, proto, endpoint string) string {
	return prefixSEP + chainHash(portName, proto, endpoint)
}

// servicePortName is kube-proxy's "namespace/name:port" (":port" only when
// the port is named).
func servicePortName(svc datapath.Service, p datapath.ServicePort) string {
	if p.Name == "" {
		return svc.String()
	}
	return svc.String() + ":" + p.Name
}

// probability is the chance with which the i-th of n endpoint rules matches
// a packet that reached it: 1/(n-i) gives every endpoint 1/n overall. Ten
// decimals, like kube-proxy, so the rendered text is stable.
func probability(remaining int) string {
	return fmt.Sprintf("%0.10f", 1.0/float64(remaining))
}

// renderSetup is the ruleset Setup applies: the fixed chains with their
// fixed rules, and the jumps into them from the built-in chains. The jumps are
// inserted (-I) so they run before anything else on the node, and only here:
// Apply never touches built-in chains, so repeated syncs cannot duplicate them.
func renderSetup() []byte {
	var b bytes.Buffer
	for _, table := range []string{tableFilter, tableNAT} {
		w := newTableWriter(table)
		for _, ch := range baseChains[table] {
			w.chain(ch)
		}
		if table == tableNAT {
			writeFixedNATRules(w)
		}
		for _, j := range baseJumps {
			if j.table == table {
				w.rule("-I %s -m comment --comment %q -j %s", j.from, j.comment, j.to)
			}
		}
		w.writeTo(&b, nil)
	}
	return b.Bytes()
}

// writeFixedNATRules fills KUBE-MARK-MASQ and KUBE-POSTROUTING. They are
// rewritten on every Apply because declaring a chain flushes it.
func writeFixedNATRules(w *tableWriter) {
	w.rule("-A %s -j MARK --or-mark %s", chainMarkMasq, masqMark)
	// Only marked packets are masqueraded; the mark is cleared first so a
	// packet re-entering the stack (e.g. over a tunnel) is not masqueraded
	// twice.
	w.rule("-A %s -m mark ! --mark %s/%s -j RETURN", chainPostrouting, masqMark, masqMark)
	w.rule("-A %s -j MARK --xor-mark %s", chainPostrouting, masqMark)
	// --random-fully randomises the source port, avoiding the SNAT port
	// collisions that make plain MASQUERADE drop SYNs under connection churn.
	w.rule("-A %s -m comment --comment %q -j MASQUERADE --random-fully", chainPostrouting, "kubernetes service traffic requiring SNAT")
}

// renderTeardown is the ruleset Close applies: delete the jumps from the
// built-in chains, then flush and delete every chain we installed.
func renderTeardown(installed chainSet) []byte {
	var b bytes.Buffer
	for _, table := range []string{tableFilter, tableNAT} {
		w := newTableWriter(table)
		for _, j := range baseJumps {
			if j.table == table {
				w.rule("-D %s -m comment --comment %q -j %s", j.from, j.comment, j.to)
			}
		}
		for _, ch := range installed.sorted(table) {
			w.remove(ch)
		}
		w.writeTo(&b, nil)
	}
	return b.Bytes()
}

// renderSync renders the whole filter+nat ruleset of family fam (iptables
// or ip6tables input) for st, whose services must all be of fam. prev is
// what the previous successful Apply installed; chains in prev that st no
// longer needs are deleted in the same transaction.
func renderSync(fam kubeproxy.Family, podCIDR netip.Prefix, st datapath.State, prev chainSet) (rendered, error) {
	return renderSyncPadded(fam, podCIDR, st, prev, 0)
}

// renderSyncPadded is renderSync with pad rules that never match put at the
// head of nat KUBE-SERVICES, so every new connection walks them before its
// service's rule: a deliberate, known slowdown to prove the regression gate
// (see padEnv). They match destinations in 198.18.0.0/15 (RFC 2544
// benchmarking addresses, never a service or pod here).
func renderSyncPadded(fam kubeproxy.Family, podCIDR netip.Prefix, st datapath.State, prev chainSet, pad int) (rendered, error) {
	filter, nat, cur, err := buildSync(fam, podCIDR, st, pad)
	if err != nil {
		return rendered{}, err
	}
	// Before the deletions below declare the stale chains: they must not
	// be recorded as installed.
	content := contentOf(filter, nat)
	// Chains from the previous Apply that this state no longer uses.
	for _, w := range []*tableWriter{filter, nat} {
		for _, ch := range prev.sorted(w.name) {
			if !cur[w.name][ch] {
				w.remove(ch)
			}
		}
	}

	var b bytes.Buffer
	filter.writeTo(&b, nil)
	nat.writeTo(&b, nil)
	return rendered{text: b.Bytes(), chains: cur, rules: filter.nrules + nat.nrules, content: content}, nil
}

// renderPartialSync renders only what changed since the sync that left
// installed (the content of a rendered): the always-full chains, every
// chain that is new or whose rules differ, and the chains the state no
// longer uses, declared (which flushes them, dropping their own jumps) and
// then deleted after all rules, when the rewritten chains no longer
// reference them. Applied over installed, it leaves the kernel exactly as a
// full sync of st would.
func renderPartialSync(fam kubeproxy.Family, podCIDR netip.Prefix, st datapath.State, installed chainRules, pad int) (rendered, error) {
	filter, nat, cur, err := buildSync(fam, podCIDR, st, pad)
	if err != nil {
		return rendered{}, err
	}
	content := contentOf(filter, nat) // before the stale chains are declared
	var b bytes.Buffer
	for _, w := range []*tableWriter{filter, nat} {
		keep := map[string]bool{}
		for _, ch := range w.chains {
			old, ok := installed[w.name][ch]
			if alwaysFull(w.name, ch) || !ok || old != content[w.name][ch] {
				keep[ch] = true
			}
		}
		var stale []string
		for ch := range installed[w.name] {
			if !cur[w.name][ch] {
				stale = append(stale, ch)
			}
		}
		sort.Strings(stale)
		for _, ch := range stale {
			w.remove(ch)
			keep[ch] = true
		}
		w.writeTo(&b, keep)
	}
	return rendered{text: b.Bytes(), chains: cur, rules: filter.nrules + nat.nrules, content: content, partial: true}, nil
}

// contentOf is the rules text per chain of both tables.
func contentOf(filter, nat *tableWriter) chainRules {
	return chainRules{tableFilter: filter.content(), tableNAT: nat.content()}
}

// buildSync renders the complete ruleset of family fam for st into one
// writer per table, and returns the chains it uses. The IPv6 ruleset is the
// IPv4 one with IPv6 addresses (/128 host matches, DNAT to [ip]:port), as
// kube-proxy's IPv6 proxier writes it through ip6tables-restore; chain names
// hash the same strings, so a dual-stack service has the same KUBE-SVC name
// in both (kube-proxy's too: the endpoint strings differ, the service's do
// not). Pad rules are IPv4 addresses and are only ever asked of IPv4.
func buildSync(fam kubeproxy.Family, podCIDR netip.Prefix, st datapath.State, pad int) (filter, nat *tableWriter, cur chainSet, err error) {
	filter, nat = newTableWriter(tableFilter), newTableWriter(tableNAT)
	cur = chainSet{}
	for table, chains := range baseChains {
		for _, ch := range chains {
			cur.add(table, ch)
		}
	}
	for _, ch := range baseChains[tableFilter] {
		filter.chain(ch)
	}
	for _, ch := range baseChains[tableNAT] {
		nat.chain(ch)
	}
	writeFixedNATRules(nat)
	if fam != kubeproxy.IPv4 {
		pad = 0
	}
	for i := range pad {
		nat.rule("-A %s -d 198.%d.%d.%d/32 -p tcp -m tcp --dport 80 -j RETURN", chainServices, 18+(i>>16)&1, (i>>8)&0xff, i&0xff)
	}

	for _, svc := range kubeproxy.SortedServices(st) {
		eps, err := kubeproxy.FamilyEndpoints(svc, fam, baselineName)
		if err != nil {
			return nil, nil, nil, err
		}
		for _, port := range svc.Ports {
			proto, err := kubeproxy.Proto(port.Protocol, baselineName)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("service %s port %d: %w", svc, port.Port, err)
			}
			spn := servicePortName(svc, port)
			match := fmt.Sprintf("-m %s -p %s -d %s/%d --dport %d", proto, proto, svc.ClusterIP, fam.HostBits(), port.Port)

			if len(eps) == 0 && svc.InternalLocal() {
				// internalTrafficPolicy Local and none of the service's
				// endpoints on this node (the Apply kept only this
				// node's, see datapath.State.ForNode): kube-proxy drops
				// the traffic rather than reject it, as Kubernetes
				// specifies.
				filter.rule("-A %s -m comment --comment %q %s -j DROP", chainServices, spn+" has no local endpoints", match)
				continue
			}
			if len(eps) == 0 {
				// An ICMP port-unreachable makes the client's connect()
				// fail fast with ECONNREFUSED instead of timing out.
				filter.rule("-A %s -m comment --comment %q %s -j REJECT", chainServices, spn+" has no endpoints", match)
				continue
			}

			svcChain := svcChainName(spn, proto)
			if svc.InternalLocal() {
				// The same rules in kube-proxy's local policy chain,
				// over this node's endpoints.
				svcChain = svlChainName(spn, proto)
			}
			nat.chain(svcChain)
			cur.add(tableNAT, svcChain)
			comment := spn + " cluster IP"
			nat.rule("-A %s -m comment --comment %q %s -j %s", chainServices, comment, match, svcChain)
			if podCIDR.IsValid() {
				// Traffic to the VIP from outside the pod network must be
				// masqueraded so replies come back through this node.
				nat.rule("-A %s -m comment --comment %q %s ! -s %s -j %s", svcChain, comment, match, podCIDR.Masked(), chainMarkMasq)
			}
			affinity := svc.SessionAffinity == datapath.SessionAffinityClientIP
			seps := make([]string, len(eps))
			for i, ep := range eps {
				dest := netip.AddrPortFrom(ep, port.TargetPort).String()
				seps[i] = sepChainName(spn, proto, dest)
				nat.chain(seps[i])
				cur.add(tableNAT, seps[i])
			}
			if affinity {
				// ClientIP affinity: a client whose address the SEP chain
				// recorded (in the xt_recent list named after it) less than
				// the timeout ago goes straight back to that endpoint;
				// --reap drops expired addresses so the list cannot grow
				// without bound. Only clients in no list reach the cascade.
				secs := int64(svc.EffectiveAffinityTimeout() / time.Second)
				for i, ep := range eps {
					dest := netip.AddrPortFrom(ep, port.TargetPort).String()
					nat.rule("-A %s -m comment --comment %q -m recent --name %s --rcheck --seconds %d --reap -j %s", svcChain, spn+" -> "+dest, seps[i], secs, seps[i])
				}
			}
			for i, ep := range eps {
				dest := netip.AddrPortFrom(ep, port.TargetPort).String()
				rule := fmt.Sprintf("-A %s -m comment --comment %q", svcChain, spn+" -> "+dest)
				if i < len(eps)-1 {
					rule += " -m statistic --mode random --probability " + probability(len(eps)-i)
				}
				nat.rule("%s -j %s", rule, seps[i])
			}
			for i, ep := range eps {
				dest := netip.AddrPortFrom(ep, port.TargetPort).String()
				// Hairpin: a backend reaching itself through the VIP would
				// otherwise get a reply from its own address and drop it.
				nat.rule("-A %s -m comment --comment %q -s %s/%d -j %s", seps[i], spn, ep, fam.HostBits(), chainMarkMasq)
				if affinity {
					// Record (or refresh) the client's address, so its next
					// packets take the affinity rule above.
					nat.rule("-A %s -m comment --comment %q -m recent --name %s --set -m %s -p %s -j DNAT --to-destination %s", seps[i], spn, seps[i], proto, proto, dest)
					continue
				}
				nat.rule("-A %s -m comment --comment %q -m %s -p %s -j DNAT --to-destination %s", seps[i], spn, proto, proto, dest)
			}
		}
	}

	return filter, nat, cur, nil
}

// errLine matches the line number iptables-restore reports for a failure
// ("Error occurred at line: 7" in 1.8; "line 7 failed" in older releases).
var errLine = regexp.MustCompile(`line:? (\d+)`)
