package lbmaps

import (
	"cmp"
	"fmt"
	"slices"
)

// Kind is the kind of a map write. Kinds are declared in the order Plan
// emits them.
type Kind int

// The steps of a resync; see Layout.Plan.
const (
	DeleteMember Kind = iota
	PutBackend
	PutMember
	PutService
	DeleteService
	DeleteBackend
)

func (k Kind) String() string {
	return [...]string{"delete member", "put backend", "put member", "put service", "delete service", "delete backend"}[k]
}

// Op is one map write. Which fields are set depends on Kind: Service and
// Entry for the services map, Slot and Backend for the backends map,
// Member and MemberSlot for the membership map; deletes set only the key.
type Op[SK, SV, BK, BE, MK comparable] struct {
	Kind       Kind
	Service    SK
	Entry      SV
	Slot       BK
	Backend    BE
	Member     MK
	MemberSlot uint32
}

// String names the write by its key, formatted with %v (so a key type's
// String method is used).
func (o Op[SK, SV, BK, BE, MK]) String() string {
	switch o.Kind {
	case PutBackend, DeleteBackend:
		return fmt.Sprintf("%s %v", o.Kind, o.Slot)
	case PutMember, DeleteMember:
		return fmt.Sprintf("%s %v", o.Kind, o.Member)
	default:
		return fmt.Sprintf("%s %v", o.Kind, o.Service)
	}
}

// Plan returns the map writes that turn have into want (as Desired builds
// it), in an order that is safe for concurrent lookups:
//
//  1. memberships of backends that leave a service go first, so from then
//     on nothing that checks membership is steered or translated to them;
//  2. new or changed backend slots (no live service points at a slot
//     that does not exist yet);
//  3. new memberships;
//  4. new or changed service entries (each flips to slots already in
//     place);
//  5. removed services;
//  6. slots nothing points at any more.
//
// Within a step keys are sorted (slots and memberships by service id and
// slot, services by CompareServices), so plans are deterministic.
func (l *Layout[SK, SV, BK, BE, MK]) Plan(have, want Tables[SK, SV, BK, BE, MK]) []Op[SK, SV, BK, BE, MK] {
	// Memberships sort like their slots: a table holds one membership per
	// slot, so the order is total, and comparing two integers is much
	// cheaper than comparing keys.
	cmpMember := func(a, b kv[MK, uint32]) int {
		if ia, ib := l.MemberID(a.k), l.MemberID(b.k); ia != ib {
			return cmp.Compare(ia, ib)
		}
		if a.v != b.v {
			return cmp.Compare(a.v, b.v)
		}
		// Only a table left inconsistent by a failed write gets here.
		return l.CompareMembers(a.k, b.k)
	}
	cmpService := func(a, b kv[SK, SV]) int { return l.CompareServices(a.k, b.k) }

	delMembers := sortedDiff(have.Members, want.Members, false, cmpMember)
	putBackends := l.diffSlots(want.Backends, have.Backends, true)
	putMembers := l.wantedMembers(want, have.Members)
	putServices := sortedDiff(want.Services, have.Services, true, cmpService)
	delServices := sortedDiff(have.Services, want.Services, false, cmpService)
	delBackends := l.diffSlots(have.Backends, want.Backends, false)
	n := len(delMembers) + len(putBackends) + len(putMembers) + len(putServices) + len(delServices) + len(delBackends)
	if n == 0 {
		return nil
	}
	type op = Op[SK, SV, BK, BE, MK]
	ops := make([]op, 0, n)
	for _, e := range delMembers {
		ops = append(ops, op{Kind: DeleteMember, Member: e.k})
	}
	for _, k := range putBackends {
		ops = append(ops, op{Kind: PutBackend, Slot: k, Backend: want.Backends[k]})
	}
	for _, e := range putMembers {
		ops = append(ops, op{Kind: PutMember, Member: e.k, MemberSlot: e.v})
	}
	for _, e := range putServices {
		ops = append(ops, op{Kind: PutService, Service: e.k, Entry: e.v})
	}
	for _, e := range delServices {
		ops = append(ops, op{Kind: DeleteService, Service: e.k})
	}
	for _, k := range delBackends {
		ops = append(ops, op{Kind: DeleteBackend, Slot: k})
	}
	return ops
}

// diffSlots returns, in (service id, slot) order, the slots of a that b
// lacks, and with changed also those whose backend differs in b. A slot key
// packs into one integer, so the (possibly 10^5 long) list sorts without a
// comparison function.
func (l *Layout[SK, SV, BK, BE, MK]) diffSlots(a, b map[BK]BE, changed bool) []BK {
	var packed []uint64
	for k, v := range a {
		if w, ok := b[k]; !ok || (changed && v != w) {
			id, slot := l.SlotOf(k)
			packed = append(packed, uint64(id)<<32|uint64(slot))
		}
	}
	slices.Sort(packed)
	keys := make([]BK, len(packed))
	for i, p := range packed {
		keys[i] = l.SlotKey(uint32(p>>32), uint32(p))
	}
	return keys
}

// wantedMembers returns the memberships of want that have lacks or has with
// another slot, in (service id, slot) order. In want (built by Desired)
// every membership is that of the backend in its slot, so sorting the
// packed slot keys and reading the backend back is enough.
func (l *Layout[SK, SV, BK, BE, MK]) wantedMembers(want Tables[SK, SV, BK, BE, MK], have map[MK]uint32) []kv[MK, uint32] {
	var packed []uint64
	for k, slot := range want.Members {
		if s, ok := have[k]; !ok || s != slot {
			packed = append(packed, uint64(l.MemberID(k))<<32|uint64(slot))
		}
	}
	slices.Sort(packed)
	out := make([]kv[MK, uint32], len(packed))
	for i, p := range packed {
		id, slot := uint32(p>>32), uint32(p)
		out[i] = kv[MK, uint32]{l.MemberKey(id, want.Backends[l.SlotKey(id, slot)]), slot}
	}
	return out
}

type kv[K, V any] struct {
	k K
	v V
}

// sortedDiff returns, sorted, the entries of a whose key b lacks, and with
// changed also those whose value differs in b.
func sortedDiff[K, V comparable](a, b map[K]V, changed bool, cmp func(x, y kv[K, V]) int) []kv[K, V] {
	var out []kv[K, V]
	if len(b) == 0 {
		out = make([]kv[K, V], 0, len(a))
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || (changed && v != w) {
			out = append(out, kv[K, V]{k, v})
		}
	}
	slices.SortFunc(out, cmp)
	return out
}
