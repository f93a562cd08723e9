package nftables

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
)

// installed is what the per-service part of the table holds after a
// successful sync: enough to render a partial sync that changes only what
// differs from the next desired state, as kube-proxy's nftables proxier
// does after its first full sync. A full sync re-sends every chain, and
// with it every numgen rule's anonymous map; the kernel's cost of binding
// those grows with their number, so re-sending 10,000 services for one
// endpoint change is what partial syncs avoid.
type installed struct {
	// chains is every per-service and per-endpoint chain → its rules.
	chains map[string][]string
	// sets is every affinity set → its timeout in seconds.
	sets map[string]int64
	// serviceIPs and noEndpoints are the elements of the two maps by key.
	serviceIPs, noEndpoints map[string]element
	rules                   int
}

// newInstalled is the record of a table that holds d.
func newInstalled(d desired) *installed {
	in := &installed{
		chains:      make(map[string][]string, len(d.chains)),
		sets:        make(map[string]int64, len(d.sets)),
		serviceIPs:  elementsByKey(d.serviceIPs),
		noEndpoints: elementsByKey(d.noEndpoints),
		rules:       d.rules,
	}
	for _, ch := range d.chains {
		in.chains[ch.name] = ch.rules
	}
	for _, s := range d.sets {
		in.sets[s.name] = s.timeout
	}
	return in
}

// names is every per-service chain and affinity set installed, the form
// renderFull takes for the objects of the previous sync.
func (in *installed) names() map[string]bool {
	out := make(map[string]bool, len(in.chains)+len(in.sets))
	for ch := range in.chains {
		out[ch] = true
	}
	for s := range in.sets {
		out[s] = true
	}
	return out
}

func elementsByKey(elems []element) map[string]element {
	out := make(map[string]element, len(elems))
	for _, e := range elems {
		out[e.key] = e
	}
	return out
}

// errNeedsFull says a change cannot be expressed as a partial sync.
type errNeedsFull struct{ reason string }

func (e errNeedsFull) Error() string { return "partial sync impossible: " + e.reason }

// renderPartial renders one transaction that turns the table recorded in
// in into d, touching only what differs. The order keeps every reference
// valid at each step, as the kernel checks them within the transaction:
//
//  1. add new affinity sets and new chains (empty), so rules and map
//     elements added later can name them;
//  2. flush changed chains and chains that go away, dropping their
//     references to other chains and sets;
//  3. add the rules of new and changed chains;
//  4. delete map elements that go away or change, then add the new and
//     changed ones;
//  5. delete the chains and sets nothing refers to any more.
//
// A set whose timeout changed cannot be changed in place; renderPartial
// returns errNeedsFull for it and the caller does a full sync.
func renderPartial(in *installed, d desired) ([]byte, error) {
	var b bytes.Buffer
	family := nftFamily(d.fam)
	for _, s := range d.sets {
		if old, ok := in.sets[s.name]; ok && old != s.timeout {
			return nil, errNeedsFull{fmt.Sprintf("affinity set %s: timeout changes from %ds to %ds", s.name, old, s.timeout)}
		}
	}
	for _, s := range d.sets {
		if _, ok := in.sets[s.name]; !ok {
			fmt.Fprintf(&b, "add set %s %s %s { type %s; flags dynamic,timeout; timeout %ds; }\n", family, table, s.name, addrType(d.fam), s.timeout)
		}
	}
	var changed []chainBlock
	for _, ch := range d.chains {
		old, ok := in.chains[ch.name]
		switch {
		case !ok:
			fmt.Fprintf(&b, "add chain %s %s %s\n", family, table, ch.name)
			changed = append(changed, ch)
		case !slices.Equal(old, ch.rules):
			changed = append(changed, ch)
		}
	}
	want := d.names
	var stale []string
	for ch := range in.chains {
		if !want[ch] {
			stale = append(stale, ch)
		}
	}
	sort.Strings(stale)
	for _, ch := range changed {
		if _, ok := in.chains[ch.name]; ok {
			fmt.Fprintf(&b, "flush chain %s %s %s\n", family, table, ch.name)
		}
	}
	for _, ch := range stale {
		fmt.Fprintf(&b, "flush chain %s %s %s\n", family, table, ch)
	}
	for _, ch := range changed {
		for _, r := range ch.rules {
			fmt.Fprintf(&b, "add rule %s %s %s %s\n", family, table, ch.name, r)
		}
	}
	for _, m := range []struct {
		name string
		old  map[string]element
		new  []element
	}{
		{mapServiceIPs, in.serviceIPs, d.serviceIPs},
		{mapNoEndpoints, in.noEndpoints, d.noEndpoints},
	} {
		del, add := diffElements(m.old, m.new)
		writeElements(&b, d.fam, "delete", m.name, del)
		writeElements(&b, d.fam, "add", m.name, add)
	}
	for _, ch := range stale {
		fmt.Fprintf(&b, "delete chain %s %s %s\n", family, table, ch)
	}
	var staleSets []string
	for s := range in.sets {
		if !want[s] {
			staleSets = append(staleSets, s)
		}
	}
	sort.Strings(staleSets)
	for _, s := range staleSets {
		fmt.Fprintf(&b, "delete set %s %s %s\n", family, table, s)
	}
	return b.Bytes(), nil
}

// diffElements is the elements of old to delete (gone, or changed in
// verdict or comment) and the elements of cur to add (new or changed), in
// a stable order: deletions by key, additions in cur's order.
func diffElements(old map[string]element, cur []element) (del, add []element) {
	keep := make(map[string]bool, len(cur))
	for _, e := range cur {
		o, ok := old[e.key]
		if ok && o == e {
			keep[e.key] = true
			continue
		}
		add = append(add, e)
	}
	for k, o := range old {
		if !keep[k] {
			del = append(del, o)
		}
	}
	sort.Slice(del, func(i, j int) bool { return del[i].key < del[j].key })
	return del, add
}
