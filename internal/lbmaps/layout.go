package lbmaps

import "slices"

// Tables is the content of a datapath's service, backend and membership
// maps. SK and SV are the services map's key and value, BK and BE the
// backends map's, MK the membership map's key (its value is the slot).
type Tables[SK, SV, BK, BE, MK comparable] struct {
	Services map[SK]SV
	Backends map[BK]BE
	// Members is nil for a datapath without a membership map.
	Members map[MK]uint32
}

// NoMember is the membership key type of a datapath without a membership
// map.
type NoMember struct{}

// Layout is how one datapath encodes the entries lbmaps writes: the Go
// types bpf2go generated for it and the few functions that read and build
// them. Every function must be set, except the membership ones of a
// datapath without a membership map.
type Layout[SK, SV, BK, BE, MK comparable] struct {
	// Name names the maps in errors, as in "sync <Name> maps".
	Name string
	// SlotKey builds the backends map key of slot of service id; SlotOf
	// reads it back.
	SlotKey func(id, slot uint32) BK
	SlotOf  func(BK) (id, slot uint32)
	// Slots reads the service id and slot count of a services map value;
	// SetSlots returns v with them set.
	Slots    func(v SV) (id, count uint32)
	SetSlots func(v SV, id, count uint32) SV
	// CompareServices orders services map keys. Plans write in this order
	// within a step, so they are deterministic.
	CompareServices func(a, b SK) int

	// MemberKey builds the membership key of backend be of service id; nil
	// when the datapath has no membership map. MemberID reads the service
	// id back, and CompareMembers orders keys of one service id and slot,
	// which only a table left behind by a failed write can hold.
	MemberKey      func(id uint32, be BE) MK
	MemberID       func(MK) uint32
	CompareMembers func(a, b MK) int
}

// NewTables returns empty tables, with a membership table if the layout
// has one.
func (l *Layout[SK, SV, BK, BE, MK]) NewTables() Tables[SK, SV, BK, BE, MK] {
	t := Tables[SK, SV, BK, BE, MK]{Services: map[SK]SV{}, Backends: map[BK]BE{}}
	if l.MemberKey != nil {
		t.Members = map[MK]uint32{}
	}
	return t
}

// Frontend is one service port as the maps must hold it.
type Frontend[SK, SV, BE comparable] struct {
	Key SK
	// Service is the services map value but for the service id and slot
	// count, which Desired sets.
	Service SV
	// Backends holds no duplicates.
	Backends []BE
}

// Desired lays fronts out in map entries, reusing as much of installed as
// it can: a frontend keeps its service id, and a backend that stays keeps
// its slot, so a resync that adds or removes one endpoint rewrites a slot
// or two, not the whole service. A new frontend gets its id from newID,
// which must not return one that installed uses; whether ids may be reused
// later is the datapath's choice.
func (l *Layout[SK, SV, BK, BE, MK]) Desired(installed Tables[SK, SV, BK, BE, MK], fronts []Frontend[SK, SV, BE], newID func() uint32) Tables[SK, SV, BK, BE, MK] {
	n := 0
	for _, f := range fronts {
		n += len(f.Backends)
	}
	want := Tables[SK, SV, BK, BE, MK]{
		Services: make(map[SK]SV, len(fronts)),
		Backends: make(map[BK]BE, n),
	}
	if l.MemberKey != nil {
		want.Members = make(map[MK]uint32, n)
	}
	for _, f := range fronts {
		old, exists := installed.Services[f.Key]
		id, count := l.Slots(old)
		if !exists {
			id, count = newID(), 0
		}
		slots := assignSlots(f.Backends, func(slot uint32) (BE, bool) {
			if slot >= count {
				var none BE
				return none, false
			}
			be, ok := installed.Backends[l.SlotKey(id, slot)]
			return be, ok
		})
		want.Services[f.Key] = l.SetSlots(f.Service, id, uint32(len(slots)))
		for i, be := range slots {
			want.Backends[l.SlotKey(id, uint32(i))] = be
			if want.Members != nil {
				want.Members[l.MemberKey(id, be)] = uint32(i)
			}
		}
	}
	return want
}

// assignSlots places backends (which holds no duplicates) in slots
// 0..len-1. A backend already live in a slot below the new count stays
// there; the others fill the gaps in order.
func assignSlots[BE comparable](backends []BE, live func(slot uint32) (BE, bool)) []BE {
	n := len(backends)
	out := make([]BE, n)
	filled := make([]bool, n)
	placed := make([]bool, n) // placed[i]: backends[i] kept its slot
	index := indexOf(backends)
	for i := range n {
		if be, ok := live(uint32(i)); ok {
			if j := index(be); j >= 0 && !placed[j] {
				out[i], filled[i], placed[j] = be, true, true
			}
		}
	}
	gap := 0
	for j, be := range backends {
		if placed[j] {
			continue
		}
		for filled[gap] {
			gap++
		}
		out[gap], filled[gap] = be, true
	}
	return out
}

// indexOf returns a lookup of an element's position in s (which holds no
// duplicates), or -1. Services are mostly small, where a scan beats
// building a map.
func indexOf[E comparable](s []E) func(E) int {
	if len(s) <= 32 {
		return func(e E) int { return slices.Index(s, e) }
	}
	m := make(map[E]int, len(s))
	for i, e := range s {
		m[e] = i
	}
	return func(e E) int {
		if i, ok := m[e]; ok {
			return i
		}
		return -1
	}
}
