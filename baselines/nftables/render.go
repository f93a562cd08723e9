package nftables

import (
	"bytes"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"svclab/baselines/internal/kubeproxy"
	"svclab/datapath"
)

// The table every object of this baseline lives in, one per IP family
// (`ip svclab` and, on a dual-stack node, `ip6 svclab`). kube-proxy calls
// its tables "kube-proxy"; ours are "svclab" so that nothing in a namespace
// can be mistaken for (or cleaned up as) a real kube-proxy's rules, and so
// every object svclab creates carries its name. The name has no effect on
// the packet path: lookups inside a table do not depend on it.
const table = "svclab"

// nftFamily is the nft table family of an IP family: "ip" or "ip6". Like
// kube-proxy's nftables proxier (one per family in a dual-stack cluster),
// the baseline keeps IPv4 and IPv6 in separate tables rather than one inet
// table, so each family's packets walk only their own rules and maps. It is
// also the payload keyword of the family's address matches (ip daddr,
// ip6 daddr).
func nftFamily(f kubeproxy.Family) string {
	if f == kubeproxy.IPv6 {
		return "ip6"
	}
	return "ip"
}

// addrType is the nft data type of an address of f.
func addrType(f kubeproxy.Family) string {
	if f == kubeproxy.IPv6 {
		return "ipv6_addr"
	}
	return "ipv4_addr"
}

// Fixed chains and maps (kube-proxy's names).
const (
	chainServices       = "services"
	chainEndpointsCheck = "endpoints-check"
	chainReject         = "reject-chain"
	chainMarkMasq       = "mark-for-masquerade"
	chainMasquerading   = "masquerading"
	mapServiceIPs       = "service-ips"
	mapNoEndpoints      = "no-endpoint-services"
	prefixService       = "service-"
	prefixEndpoint      = "endpoint-"
	prefixAffinity      = "affinity-"
)

// masqMark is the packet-mark bit mark-for-masquerade sets and the
// masquerading chain turns into an SNAT (kube-proxy's default bit 14).
const masqMark = "0x4000"

// mapKeyType is the key of both service maps: destination address, L4
// protocol and destination port, so one lookup finds the service port.
func mapKeyType(f kubeproxy.Family) string {
	return addrType(f) + " . inet_proto . inet_service : verdict"
}

// maxChainName is the kernel's limit on chain names (NFT_CHAIN_MAXNAMELEN
// is 256 bytes including the terminating NUL).
const maxChainName = 255

// baseChain is a chain attached to a netfilter hook. Priorities are numbers
// because nft 1.0.6 accepts the names dstnat/srcnat only on the hooks where
// they are standard (dstnat on prerouting), not on output.
type baseChain struct {
	name, kind, hook string
	priority         int
	// jump is the one rule of the chain.
	jump string
}

// baseChains are the hooks the baseline uses, like kube-proxy's nftables
// mode:
//   - nat prerouting (-100, dstnat) DNATs traffic from pods, and nat output
//     (-100) traffic from processes in the node namespace itself;
//   - nat postrouting (100, srcnat) masquerades what was marked for it;
//   - filter input, forward and output (-110, just before dstnat) reject new
//     connections to services without endpoints. The reject lives there and
//     not in prerouting because kernels before 5.9 refuse reject in
//     prerouting; this kernel would accept it, but keeping kube-proxy's hooks
//     keeps the per-packet cost kube-proxy has (every new forwarded flow
//     passes one more base chain), which is what the baseline is for.
var baseChains = []baseChain{
	{"filter-input", "filter", "input", -110, "ct state new jump " + chainEndpointsCheck},
	{"filter-forward", "filter", "forward", -110, "ct state new jump " + chainEndpointsCheck},
	{"filter-output", "filter", "output", -110, "ct state new jump " + chainEndpointsCheck},
	{"nat-prerouting", "nat", "prerouting", -100, "jump " + chainServices},
	{"nat-output", "nat", "output", -100, "jump " + chainServices},
	{"nat-postrouting", "nat", "postrouting", 100, "jump " + chainMasquerading},
}

// nameHash is the 8-character kube-proxy hash of name, which kube-proxy's
// nftables mode puts in front of its readable chain names: it keeps two
// names distinct if they ever need truncating, and makes chains that differ
// in one digit easy to tell apart.
func nameHash(name string) string {
	return kubeproxy.NameHash(name, 8)
}

// hashedChain is prefix + hash(base) + "-" + base, cut to the kernel's
// limit (never reached for valid Kubernetes names, but an overlong name
// must not make the whole sync fail).
func hashedChain(prefix, base string) string {
	name := prefix + nameHash(base) + "-" + base
	if len(name) > maxChainName {
		name = name[:maxChainName-3] + "..."
	}
	return name
}

// portBase is "namespace/name/protocol/port" naming one service port. Like
// kube-proxy it uses the port's name; an unnamed port uses its number, so
// that two unnamed ports of one service cannot share a chain.
func portBase(svc datapath.Service, p datapath.ServicePort, proto string) string {
	port := p.Name
	if port == "" {
		port = strconv.Itoa(int(p.Port))
	}
	return fmt.Sprintf("%s/%s/%s/%s", svc.Namespace, svc.Name, proto, port)
}

// serviceChainName is service-<hash>-ns/name/proto/port.
func serviceChainName(svc datapath.Service, p datapath.ServicePort, proto string) string {
	return hashedChain(prefixService, portBase(svc, p, proto))
}

// prefixLocal starts the chain of a service port with
// internalTrafficPolicy Local (kube-proxy's local policy chain).
const prefixLocal = "local-"

// localChainName is local-<hash>-ns/name/proto/port: the service port's
// chain over its node's endpoints under internalTrafficPolicy Local.
func localChainName(svc datapath.Service, p datapath.ServicePort, proto string) string {
	return hashedChain(prefixLocal, portBase(svc, p, proto))
}

// endpointChainName is endpoint-<hash>-ns/name/proto/port__ip/targetport.
// nft chain names allow only letters, digits and "/-_.", so the endpoint is
// written ip/port, not ip:port (nft rejects ':' even in a quoted name).
func endpointChainName(svc datapath.Service, p datapath.ServicePort, proto string, ep netip.AddrPort) string {
	return hashedChain(prefixEndpoint, endpointBase(svc, p, proto, ep))
}

// endpointBase is "ns/name/proto/port__ip/targetport". An IPv6 address is
// written with "." for ":" (fd00.10.244.1..1), as kube-proxy does: nft
// refuses ':' in chain and set names, and '.' cannot appear in an IPv6
// address, so the name stays unambiguous.
func endpointBase(svc datapath.Service, p datapath.ServicePort, proto string, ep netip.AddrPort) string {
	return fmt.Sprintf("%s__%s/%d", portBase(svc, p, proto), strings.ReplaceAll(ep.Addr().String(), ":", "."), ep.Port())
}

// affinitySetName is affinity-<hash>-ns/name/proto/port__ip/targetport: the
// set of client addresses stuck to one endpoint under ClientIP affinity.
// Set names share the chain namespace's length limit.
func affinitySetName(svc datapath.Service, p datapath.ServicePort, proto string, ep netip.AddrPort) string {
	return hashedChain(prefixAffinity, endpointBase(svc, p, proto, ep))
}

// affinitySet is one ClientIP-affinity set: client addresses whose
// elements expire after timeout seconds unless a packet refreshes them.
type affinitySet struct {
	name    string
	timeout int64
}

// chainBlock is one regular chain with its rules.
type chainBlock struct {
	name  string
	rules []string
}

// element is one entry of a verdict map.
type element struct {
	key, comment, verdict string
}

// rendered is one complete nft transaction for Apply.
type rendered struct {
	text []byte
	// chains is every per-service and per-endpoint chain, and every
	// affinity set (named affinity-…, which no chain is), the transaction
	// leaves in the table (the fixed chains and maps are not listed).
	chains map[string]bool
	// rules counts the rules in the table after the transaction.
	rules int
}

// sortedChains returns the chain set in a stable order.
func sortedChains(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for ch := range set {
		out = append(out, ch)
	}
	sort.Strings(out)
	return out
}

// renderSetup creates the table from scratch with its fixed chains and
// empty maps. The table is added and deleted first so that Setup starts
// from a clean table even if an earlier run left one behind.
func renderSetup(f kubeproxy.Family) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "add table %s %s\n", nftFamily(f), table)
	fmt.Fprintf(&b, "delete table %s %s\n", nftFamily(f), table)
	writeTable(&b, f, nil, nil)
	return b.Bytes()
}

// renderTeardown deletes the family's table and with it every chain, rule
// and map.
func renderTeardown(f kubeproxy.Family) []byte {
	return []byte(fmt.Sprintf("delete table %s %s\n", nftFamily(f), table))
}

// desired is everything the per-service part of the table should hold
// for one State, in render order. Full and partial syncs are both written
// from it, so they cannot disagree on what a service looks like.
type desired struct {
	// fam is the IP family of the table (every service is of it).
	fam                     kubeproxy.Family
	chains                  []chainBlock
	sets                    []affinitySet
	serviceIPs, noEndpoints []element
	// names is every per-service and per-endpoint chain and every affinity
	// set (see rendered.chains).
	names map[string]bool
	// rules counts the rules in the table once it holds this state.
	rules int
}

// renderSync renders the whole table for st as one transaction: flush every
// rule of the table (base chains included) and both maps, delete the chains
// of the previous sync (prev) that st no longer uses, then add everything
// back. nft applies the file atomically, so packets see either the old or the
// new ruleset. Deleting a chain whose map element was flushed in the same
// transaction needs kernel 6.2 or newer; kube-proxy defers such deletions to
// a later sync to support older kernels.
func renderSync(f kubeproxy.Family, podCIDR netip.Prefix, st datapath.State, prev map[string]bool) (rendered, error) {
	d, err := desire(f, podCIDR, st)
	if err != nil {
		return rendered{}, err
	}
	return rendered{text: renderFull(d, prev), chains: d.names, rules: d.rules}, nil
}

// desire computes what family f's table should hold for st, whose services
// must all be of f. The IPv6 table is the IPv4 one with ip6 matches and
// IPv6 addresses (DNAT to [ip]:port), as kube-proxy's IPv6 proxier writes
// its ip6 table; chain names hash the same strings.
func desire(f kubeproxy.Family, podCIDR netip.Prefix, st datapath.State) (desired, error) {
	ip := nftFamily(f)
	var chains []chainBlock
	var sets []affinitySet
	var serviceIPs, noEndpoints []element
	cur := map[string]bool{}
	keys := map[string]string{} // map key → service port that uses it

	for _, svc := range kubeproxy.SortedServices(st) {
		eps, err := kubeproxy.FamilyEndpoints(svc, f, Name)
		if err != nil {
			return desired{}, err
		}
		for _, port := range svc.Ports {
			proto, err := kubeproxy.Proto(port.Protocol, Name)
			if err != nil {
				return desired{}, fmt.Errorf("service %s port %d: %w", svc, port.Port, err)
			}
			if port.Port == 0 || port.TargetPort == 0 {
				return desired{}, fmt.Errorf("service %s port %q: port %d and target port %d must both be non-zero", svc, port.Name, port.Port, port.TargetPort)
			}
			base := portBase(svc, port, proto)
			key := fmt.Sprintf("%s . %s . %d", svc.ClusterIP, proto, port.Port)
			if other, dup := keys[key]; dup {
				return desired{}, fmt.Errorf("service %s port %d/%s: %s:%d is already used by %s", svc, port.Port, proto, svc.ClusterIP, port.Port, other)
			}
			keys[key] = base

			if len(eps) == 0 && svc.InternalLocal() {
				// internalTrafficPolicy Local and none of its
				// endpoints on this node (see datapath.State.ForNode):
				// kube-proxy's verdict is drop, not reject.
				noEndpoints = append(noEndpoints, element{key: key, comment: base, verdict: "drop"})
				continue
			}
			if len(eps) == 0 {
				// The filter chains reject new connections to it: an
				// ICMP port-unreachable, so connect() fails at once
				// with ECONNREFUSED instead of timing out.
				noEndpoints = append(noEndpoints, element{key: key, comment: base, verdict: "goto " + chainReject})
				continue
			}

			svcChain := serviceChainName(svc, port, proto)
			if svc.InternalLocal() {
				svcChain = localChainName(svc, port, proto)
			}
			if cur[svcChain] {
				return desired{}, fmt.Errorf("service %s port %d/%s: chain %s is rendered twice (two ports with the same name and protocol?)", svc, port.Port, proto, svcChain)
			}
			cur[svcChain] = true
			serviceIPs = append(serviceIPs, element{key: key, verdict: "goto " + svcChain})
			sc := chainBlock{name: svcChain}
			if podCIDR.IsValid() {
				// Traffic to the VIP from outside the pod network
				// (the node itself) is masqueraded so replies come
				// back through this node.
				sc.rules = append(sc.rules, fmt.Sprintf("%s daddr %s %s dport %d %s saddr != %s jump %s",
					ip, svc.ClusterIP, proto, port.Port, ip, podCIDR.Masked(), chainMarkMasq))
			}
			// One rule picks the endpoint: a random number modulo n
			// indexes an anonymous verdict map with one entry per
			// endpoint, so each gets 1/n of the new connections.
			affinity := svc.SessionAffinity == datapath.SessionAffinityClientIP
			targets := make([]string, len(eps))
			var epChains []chainBlock
			for i, ep := range eps {
				dest := netip.AddrPortFrom(ep, port.TargetPort)
				epChain := endpointChainName(svc, port, proto, dest)
				cur[epChain] = true
				targets[i] = fmt.Sprintf("%d : goto %s", i, epChain)
				ec := chainBlock{name: epChain, rules: []string{
					// Hairpin: a backend reaching itself through the
					// VIP would otherwise get a reply from its own
					// address and drop it.
					fmt.Sprintf("%s saddr %s jump %s", ip, ep, chainMarkMasq),
				}}
				if affinity {
					// ClientIP affinity: a client already in this
					// endpoint's set (and not idle past the timeout)
					// goes straight back to it, before the random
					// pick; every packet through the endpoint adds the
					// client or restarts its timeout.
					set := affinitySetName(svc, port, proto, dest)
					cur[set] = true
					sets = append(sets, affinitySet{name: set, timeout: int64(svc.EffectiveAffinityTimeout() / time.Second)})
					sc.rules = append(sc.rules, fmt.Sprintf("%s saddr @%s goto %s", ip, set, epChain))
					ec.rules = append(ec.rules, fmt.Sprintf("update @%s { %s saddr }", set, ip))
				}
				ec.rules = append(ec.rules, fmt.Sprintf("meta l4proto %s dnat to %s", proto, dest))
				epChains = append(epChains, ec)
			}
			sc.rules = append(sc.rules, fmt.Sprintf("numgen random mod %d vmap { %s }", len(eps), strings.Join(targets, ", ")))
			chains = append(chains, sc)
			chains = append(chains, epChains...)
		}
	}

	d := desired{fam: f, chains: chains, sets: sets, serviceIPs: serviceIPs, noEndpoints: noEndpoints, names: cur, rules: fixedRules}
	for _, ch := range chains {
		d.rules += len(ch.rules)
	}
	return d, nil
}

// renderFull writes d as a full sync that replaces whatever the table
// holds; prev is the per-service chains and sets installed now.
func renderFull(d desired, prev map[string]bool) []byte {
	var b bytes.Buffer
	family := nftFamily(d.fam)
	fmt.Fprintf(&b, "add table %s %s\n", family, table)
	fmt.Fprintf(&b, "flush table %s %s\n", family, table)
	// flush table empties chains but not maps.
	fmt.Fprintf(&b, "flush map %s %s %s\n", family, table, mapServiceIPs)
	fmt.Fprintf(&b, "flush map %s %s %s\n", family, table, mapNoEndpoints)
	for _, ch := range sortedChains(prev) {
		if !d.names[ch] {
			fmt.Fprintf(&b, "delete %s %s %s %s\n", objectKind(ch), family, table, ch)
		}
	}
	writeTable(&b, d.fam, d.chains, d.sets)
	writeElements(&b, d.fam, "add", mapServiceIPs, d.serviceIPs)
	writeElements(&b, d.fam, "add", mapNoEndpoints, d.noEndpoints)
	return b.Bytes()
}

// objectKind is what kind of nft object a per-service name is: affinity
// sets share the naming scheme (and namespace) of the chains.
func objectKind(name string) string {
	if strings.HasPrefix(name, prefixAffinity) {
		return "set"
	}
	return "chain"
}

// fixedChainBlocks are the regular chains family f's table has from Setup
// to Close, with their rules.
func fixedChainBlocks(f kubeproxy.Family) []chainBlock {
	ip := nftFamily(f)
	return []chainBlock{
		{chainServices, []string{fmt.Sprintf("%s daddr . meta l4proto . th dport vmap @%s", ip, mapServiceIPs)}},
		{chainEndpointsCheck, []string{fmt.Sprintf("%s daddr . meta l4proto . th dport vmap @%s", ip, mapNoEndpoints)}},
		{chainReject, []string{"reject"}},
		{chainMarkMasq, []string{"meta mark set meta mark | " + masqMark}},
		{chainMasquerading, []string{
			// Only marked packets are masqueraded; the mark is cleared
			// first so a packet that re-enters the stack is not
			// masqueraded twice.
			fmt.Sprintf("meta mark & %s == 0 return", masqMark),
			"meta mark set meta mark ^ " + masqMark,
			// fully-random picks the source port at random, avoiding
			// the SNAT port collisions that drop SYNs under churn.
			"masquerade fully-random",
		}},
	}
}

// fixedRules is the number of rules in an empty table: one jump per base
// chain and the rules of the fixed chains (the same in both families).
var fixedRules = func() int {
	n := len(baseChains)
	for _, ch := range fixedChainBlocks(kubeproxy.IPv4) {
		n += len(ch.rules)
	}
	return n
}()

// writeTable writes the table block: base chains, fixed chains, the two
// maps (declared empty; elements are added after the block) and the given
// per-service chains and affinity sets. Sets are declared before the chains
// whose rules name them.
func writeTable(b *bytes.Buffer, f kubeproxy.Family, chains []chainBlock, sets []affinitySet) {
	fmt.Fprintf(b, "table %s %s {\n", nftFamily(f), table)
	for _, bc := range baseChains {
		fmt.Fprintf(b, "\tchain %s {\n\t\ttype %s hook %s priority %d; policy accept;\n\t\t%s\n\t}\n", bc.name, bc.kind, bc.hook, bc.priority, bc.jump)
	}
	for _, m := range []string{mapServiceIPs, mapNoEndpoints} {
		fmt.Fprintf(b, "\tmap %s {\n\t\ttype %s\n\t}\n", m, mapKeyType(f))
	}
	for _, s := range sets {
		fmt.Fprintf(b, "\tset %s {\n\t\ttype %s\n\t\tflags dynamic,timeout\n\t\ttimeout %ds\n\t}\n", s.name, addrType(f), s.timeout)
	}
	for _, ch := range append(fixedChainBlocks(f), chains...) {
		fmt.Fprintf(b, "\tchain %s {\n", ch.name)
		for _, r := range ch.rules {
			fmt.Fprintf(b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
}

// writeElements adds (verb "add") or deletes (verb "delete") elements of a
// map, one per line. Deletion names only the key.
func writeElements(b *bytes.Buffer, f kubeproxy.Family, verb, m string, elems []element) {
	if len(elems) == 0 {
		return
	}
	fmt.Fprintf(b, "%s element %s %s %s {\n", verb, nftFamily(f), table, m)
	for i, e := range elems {
		sep := ","
		if i == len(elems)-1 {
			sep = ""
		}
		if verb == "delete" {
			fmt.Fprintf(b, "\t%s%s\n", e.key, sep)
			continue
		}
		comment := ""
		if e.comment != "" {
			comment = fmt.Sprintf(" comment %q", e.comment)
		}
		fmt.Fprintf(b, "\t%s%s : %s%s\n", e.key, comment, e.verdict, sep)
	}
	b.WriteString("}\n")
}

// errLine matches the location nft reports for an error in its input
// ("/dev/stdin:12:5-9: Error: ...").
var errLine = regexp.MustCompile(`(?m)^[^:\s]+:(\d+):\d+(?:-\d+)?: Error:`)
