package lbmaps_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/internal/lbmaps"
	"svclab/internal/lbmaps/lbmapstest"
)

// A layout of plain types: a service is named by a string, its entry
// carries a flag besides id and count (like socketlb's affinity), a backend
// is its address as a string.
type (
	svcEntry struct {
		ID     uint32
		Count  uint16
		Sticky bool
	}
	slotKey struct{ ID, Slot uint32 }
	member  struct {
		ID      uint32
		Backend string
	}
)

func (k slotKey) String() string { return fmt.Sprintf("%d/%d", k.ID, k.Slot) }
func (k member) String() string  { return fmt.Sprintf("%d/%s", k.ID, k.Backend) }

// members is a layout with a membership map, plain one without.
var (
	members = lbmaps.Layout[string, svcEntry, slotKey, string, member]{
		Name:     "test",
		SlotKey:  func(id, slot uint32) slotKey { return slotKey{id, slot} },
		SlotOf:   func(k slotKey) (uint32, uint32) { return k.ID, k.Slot },
		Slots:    func(e svcEntry) (uint32, uint32) { return e.ID, uint32(e.Count) },
		SetSlots: func(e svcEntry, id, count uint32) svcEntry { e.ID, e.Count = id, uint16(count); return e },

		CompareServices: cmp.Compare[string],
		MemberKey:       func(id uint32, be string) member { return member{id, be} },
		MemberID:        func(k member) uint32 { return k.ID },
		CompareMembers:  func(a, b member) int { return cmp.Compare(a.Backend, b.Backend) },
	}
	plain = lbmaps.Layout[string, svcEntry, slotKey, string, lbmaps.NoMember]{
		Name:            "plain",
		SlotKey:         members.SlotKey,
		SlotOf:          members.SlotOf,
		Slots:           members.Slots,
		SetSlots:        members.SetSlots,
		CompareServices: cmp.Compare[string],
	}
)

type (
	memberTables = lbmaps.Tables[string, svcEntry, slotKey, string, member]
	memberOp     = lbmaps.Op[string, svcEntry, slotKey, string, member]
	frontend     = lbmaps.Frontend[string, svcEntry, string]
)

// counter hands out ids that only grow, as socketlb does.
func counter() func() uint32 {
	var last uint32
	return func() uint32 { last++; return last }
}

func fe(key string, sticky bool, backends ...string) frontend {
	return frontend{Key: key, Service: svcEntry{Sticky: sticky}, Backends: backends}
}

// fmtOp renders an op with its value, for readable plan expectations.
func fmtOp[MK comparable](o lbmaps.Op[string, svcEntry, slotKey, string, MK]) string {
	switch o.Kind {
	case lbmaps.PutBackend:
		return fmt.Sprintf("%s = %s", o, o.Backend)
	case lbmaps.PutService:
		return fmt.Sprintf("%s = id %d count %d sticky %t", o, o.Entry.ID, o.Entry.Count, o.Entry.Sticky)
	case lbmaps.PutMember:
		return fmt.Sprintf("%s = slot %d", o, o.MemberSlot)
	default:
		return o.String()
	}
}

func TestDesired(t *testing.T) {
	t.Run("new frontends get ids from newID and slots in order", func(t *testing.T) {
		want := members.Desired(members.NewTables(), []frontend{fe("web", true, "a", "b"), fe("api", false)}, counter())
		assert.Equal(t, memberTables{
			Services: map[string]svcEntry{"web": {ID: 1, Count: 2, Sticky: true}, "api": {ID: 2}},
			Backends: map[slotKey]string{{1, 0}: "a", {1, 1}: "b"},
			Members:  map[member]uint32{{1, "a"}: 0, {1, "b"}: 1},
		}, want)
	})

	t.Run("without a membership map", func(t *testing.T) {
		want := plain.Desired(plain.NewTables(), []frontend{fe("web", false, "a")}, counter())
		assert.Nil(t, want.Members)
		assert.Equal(t, map[slotKey]string{{1, 0}: "a"}, want.Backends)
	})

	t.Run("installed frontends keep their id and live backends their slot", func(t *testing.T) {
		next := counter()
		have := members.Desired(members.NewTables(), []frontend{fe("web", false, "a", "b", "c", "d")}, next)
		// b leaves, e joins, order shuffled: a, c and d stay put, e
		// fills b's slot.
		want := members.Desired(have, []frontend{fe("web", false, "e", "d", "c", "a")}, next)
		assert.Equal(t, map[slotKey]string{{1, 0}: "a", {1, 1}: "e", {1, 2}: "c", {1, 3}: "d"}, want.Backends)
		// Shrinking: a backend in a slot at or above the new count moves
		// into the gap below it.
		want = members.Desired(want, []frontend{fe("web", false, "d", "a")}, next)
		assert.Equal(t, map[slotKey]string{{1, 0}: "a", {1, 1}: "d"}, want.Backends)
		assert.Equal(t, svcEntry{ID: 1, Count: 2}, want.Services["web"])
	})

	t.Run("large services keep slots too", func(t *testing.T) {
		var bes []string
		for i := range 100 {
			bes = append(bes, fmt.Sprintf("b%03d", i))
		}
		next := counter()
		have := members.Desired(members.NewTables(), []frontend{fe("big", false, bes...)}, next)
		shuffled := slices.Clone(bes[1:])
		rand.New(rand.NewPCG(1, 0)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		want := members.Desired(have, []frontend{fe("big", false, shuffled...)}, next)
		ops := members.Plan(have, want)
		var got []string
		for _, o := range ops {
			got = append(got, fmtOp(o))
		}
		assert.Equal(t, []string{
			"delete member 1/b000",
			"put backend 1/0 = b099",
			"put member 1/b099 = slot 0",
			"put service big = id 1 count 99 sticky false",
			"delete backend 1/99",
		}, got)
	})
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name string
		// before is installed first (its ops are not checked), then after.
		before, after []frontend
		want          []string
		// wantPlain is the plan without a membership map.
		wantPlain []string
	}{
		{
			name:  "first sync writes backends and members before the services, in key order",
			after: []frontend{fe("web", false, "a", "b"), fe("api", true, "c")},
			want: []string{
				"put backend 1/0 = a", "put backend 1/1 = b", "put backend 2/0 = c",
				"put member 1/a = slot 0", "put member 1/b = slot 1", "put member 2/c = slot 0",
				"put service api = id 2 count 1 sticky true", "put service web = id 1 count 2 sticky false",
			},
			wantPlain: []string{
				"put backend 1/0 = a", "put backend 1/1 = b", "put backend 2/0 = c",
				"put service api = id 2 count 1 sticky true", "put service web = id 1 count 2 sticky false",
			},
		},
		{
			name:   "nothing changed",
			before: []frontend{fe("web", false, "a", "b")},
			after:  []frontend{fe("web", false, "b", "a")},
		},
		{
			name:   "everything in one plan, each step after the one it depends on",
			before: []frontend{fe("web", false, "a", "b", "c"), fe("old", false, "x")},
			after:  []frontend{fe("web", true, "a", "c", "d", "e"), fe("new", false, "y")},
			want: []string{
				"delete member 1/b", "delete member 2/x",
				"put backend 1/1 = d", "put backend 1/3 = e", "put backend 3/0 = y",
				"put member 1/d = slot 1", "put member 1/e = slot 3", "put member 3/y = slot 0",
				"put service new = id 3 count 1 sticky false", "put service web = id 1 count 4 sticky true",
				"delete service old",
				"delete backend 2/0",
			},
			wantPlain: []string{
				"put backend 1/1 = d", "put backend 1/3 = e", "put backend 3/0 = y",
				"put service new = id 3 count 1 sticky false", "put service web = id 1 count 4 sticky true",
				"delete service old",
				"delete backend 2/0",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := counter()
			have := members.Desired(members.NewTables(), tt.before, next)
			var got []string
			for _, o := range members.Plan(have, members.Desired(have, tt.after, next)) {
				got = append(got, fmtOp(o))
			}
			assert.Equal(t, tt.want, got)

			next = counter()
			havePlain := plain.Desired(plain.NewTables(), tt.before, next)
			got = nil
			for _, o := range plain.Plan(havePlain, plain.Desired(havePlain, tt.after, next)) {
				got = append(got, fmtOp(o))
			}
			assert.Equal(t, tt.wantPlain, got)
		})
	}

	t.Run("stray memberships of one slot are deleted in a fixed order", func(t *testing.T) {
		// A failed write can leave two memberships naming one slot.
		have := members.NewTables()
		have.Members[member{1, "b"}] = 0
		have.Members[member{1, "a"}] = 0
		var got []string
		for _, o := range members.Plan(have, members.NewTables()) {
			got = append(got, o.String())
		}
		assert.Equal(t, []string{"delete member 1/a", "delete member 1/b"}, got)
	})
}

// execCase is one Execute run against fake maps.
type execCase struct {
	name    string
	batch   bool
	noBatch bool
}

var execCases = []execCase{
	{"batch", true, false},
	{"batch API missing", true, true},
	{"one by one", false, false},
}

func TestExecute(t *testing.T) {
	first := []frontend{fe("web", false, "a", "b", "c"), fe("api", false, "d")}
	second := []frontend{fe("web", true, "a", "e")}

	for _, tc := range execCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("applies the plan and records it", func(t *testing.T) {
				m := lbmapstest.New(&members)
				m.NoBatch = tc.noBatch
				installed, next := members.NewTables(), counter()
				for _, fronts := range [][]frontend{first, second, nil} {
					want := members.Desired(installed, fronts, next)
					require.NoError(t, members.Execute(context.Background(), &installed, members.Plan(installed, want), m.Set(tc.batch)))
					assert.Equal(t, want, installed)
					assert.Equal(t, want, m.Tables)
				}
				assert.Empty(t, m.Violations)
				// Batches are used exactly when asked for and available.
				assert.Equal(t, tc.batch && !tc.noBatch, m.Batches > 0, "batches: %d", m.Batches)
			})

			t.Run("a failed write leaves installed equal to the maps", func(t *testing.T) {
				for failAt := 1; ; failAt++ {
					m := lbmapstest.New(&members)
					m.NoBatch = tc.noBatch
					installed, next := members.NewTables(), counter()
					require.NoError(t, members.Execute(context.Background(), &installed, members.Plan(installed, members.Desired(installed, first, next)), m.Set(tc.batch)))
					m.FailAt = m.Writes + failAt
					ops := members.Plan(installed, members.Desired(installed, second, next))
					err := members.Execute(context.Background(), &installed, ops, m.Set(tc.batch))
					assert.Equal(t, m.Tables, installed, "fail at write %d", failAt)
					if err == nil {
						// failAt is past the last write: every write was
						// tried once.
						assert.Equal(t, len(ops)+1, failAt)
						return
					}
					require.ErrorIs(t, err, lbmapstest.ErrInjected)
					// The error names the write that failed.
					assert.Regexp(t, `^(put|delete) (backend|member|service) \S+: `, err.Error())
				}
			})

			t.Run("deleting what is already gone is done", func(t *testing.T) {
				m := lbmapstest.New(&members)
				m.NoBatch = tc.noBatch
				installed, next := members.NewTables(), counter()
				require.NoError(t, members.Execute(context.Background(), &installed, members.Plan(installed, members.Desired(installed, first, next)), m.Set(tc.batch)))
				// Someone else removed the first and a middle slot: the
				// deletes step over the gaps.
				delete(m.Tables.Backends, slotKey{1, 0})
				delete(m.Tables.Backends, slotKey{1, 2})
				require.NoError(t, members.Execute(context.Background(), &installed, members.Plan(installed, members.NewTables()), m.Set(tc.batch)))
				assert.Equal(t, members.NewTables(), m.Tables)
				assert.Equal(t, m.Tables, installed)
			})
		})
	}

	t.Run("a cancelled context writes nothing", func(t *testing.T) {
		m := lbmapstest.New(&members)
		installed := members.NewTables()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := members.Execute(ctx, &installed, members.Plan(installed, members.Desired(installed, first, counter())), m.Set(true))
		require.ErrorIs(t, err, context.Canceled)
		assert.ErrorContains(t, err, "sync test maps")
		assert.Zero(t, m.Writes)
	})

	t.Run("a cancelled context stops one-by-one writes at the next element", func(t *testing.T) {
		m := lbmapstest.New(&members)
		installed := members.NewTables()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		set := m.Set(false)
		set.Backends = cancelAfterPut{set.Backends, cancel}
		err := members.Execute(ctx, &installed, members.Plan(installed, members.Desired(installed, first, counter())), set)
		require.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, 1, m.Writes)
		assert.Equal(t, m.Tables, installed)
	})

	t.Run("a failed batch", func(t *testing.T) {
		boom := errors.New("boom")
		tests := []struct {
			name string
			// done is what the batch reports done: -1 as the kernel may
			// before the first element, or more than there were.
			done    int
			wantMsg string
			wantLen int
		}{
			{"before the first element", -1, "put backend 1/0: boom", 0},
			{"after the third", 3, "put backend 2/0: boom", 3},
			{"without naming an element", 99, "batch: boom", 4},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				installed := members.NewTables()
				ops := members.Plan(installed, members.Desired(installed, first, counter()))
				err := members.Execute(context.Background(), &installed, ops, lbmaps.Maps{Backends: failingBatch{tt.done, boom}, Batch: true})
				require.ErrorIs(t, err, boom)
				assert.Equal(t, tt.wantMsg, err.Error())
				// What the batch did is recorded.
				assert.Len(t, installed.Backends, tt.wantLen)
			})
		}
	})

	t.Run("puts that fail for a missing key fail", func(t *testing.T) {
		// Only deletes may find their key gone.
		installed := members.NewTables()
		ops := []memberOp{{Kind: lbmaps.PutBackend, Slot: slotKey{1, 0}, Backend: "a"}}
		err := members.Execute(context.Background(), &installed, ops, lbmaps.Maps{Backends: failingBatch{-1, ebpf.ErrKeyNotExist}, Batch: true})
		require.ErrorIs(t, err, ebpf.ErrKeyNotExist)
		assert.Empty(t, installed.Backends)
	})
}

// cancelAfterPut cancels a context after every put.
type cancelAfterPut struct {
	lbmaps.Map
	cancel func()
}

func (c cancelAfterPut) Put(k, v any) error {
	defer c.cancel()
	return c.Map.Put(k, v)
}

// failingBatch fails every call; a batch reports done elements done.
type failingBatch struct {
	done int
	err  error
}

func (f failingBatch) Put(any, any) error                                      { return f.err }
func (f failingBatch) Delete(any) error                                        { return f.err }
func (f failingBatch) BatchUpdate(_, _ any, _ *ebpf.BatchOptions) (int, error) { return f.done, f.err }
func (f failingBatch) BatchDelete(_ any, _ *ebpf.BatchOptions) (int, error)    { return f.done, f.err }

// randomFronts draws frontends with random backend sets from small pools,
// so consecutive draws share services, backends and ids.
func randomFronts(r *rand.Rand) []frontend {
	var out []frontend
	for i := range 6 {
		if r.IntN(4) == 0 {
			continue
		}
		var bes []string
		for j := range 8 {
			if r.IntN(2) == 0 {
				bes = append(bes, fmt.Sprintf("b%d:%d", j, 8080+r.IntN(2)))
			}
		}
		r.Shuffle(len(bes), func(x, y int) { bes[x], bes[y] = bes[y], bes[x] })
		out = append(out, fe(fmt.Sprintf("s%d", i), r.IntN(3) == 0, bes...))
	}
	return out
}

// TestSyncConvergesAndNeverExposesMissingSlots drives both layouts through
// random resyncs, some failing at a random write, and checks after every
// write that no service points at a missing slot, and after every sync
// that the maps hold exactly what was asked and installed equals them.
func TestSyncConvergesAndNeverExposesMissingSlots(t *testing.T) {
	for seed := range uint64(3) {
		for _, tc := range execCases {
			t.Run(fmt.Sprintf("%s seed %d", tc.name, seed), func(t *testing.T) {
				converge(t, &members, rand.New(rand.NewPCG(seed, 0)), tc)
				converge(t, &plain, rand.New(rand.NewPCG(seed, 0)), tc)
			})
		}
	}
}

func converge[MK comparable](t *testing.T, l *lbmaps.Layout[string, svcEntry, slotKey, string, MK], r *rand.Rand, tc execCase) {
	t.Helper()
	m := lbmapstest.New(l)
	m.NoBatch = tc.noBatch
	installed, next := l.NewTables(), counter()
	ctx := context.Background()
	for step := range 200 {
		fronts := randomFronts(r)
		if r.IntN(2) == 0 {
			m.FailAt = m.Writes + 1 + r.IntN(6)
			err := l.Execute(ctx, &installed, l.Plan(installed, l.Desired(installed, fronts, next)), m.Set(tc.batch))
			if err != nil {
				require.ErrorIs(t, err, lbmapstest.ErrInjected)
			}
			require.Equal(t, m.Tables, installed, "step %d: installed diverged from the maps after a failure", step)
			m.FailAt = 0
		}
		want := l.Desired(installed, fronts, next)
		require.NoError(t, l.Execute(ctx, &installed, l.Plan(installed, want), m.Set(tc.batch)), "step %d", step)
		require.Equal(t, want, m.Tables, "step %d", step)
		require.Equal(t, m.Tables, installed, "step %d", step)
		// Everything asked for is there, in its service's slots.
		for _, f := range fronts {
			e := installed.Services[f.Key]
			require.Equal(t, f.Service.Sticky, e.Sticky)
			var got []string
			for slot := range uint32(e.Count) {
				got = append(got, installed.Backends[slotKey{e.ID, slot}])
			}
			require.ElementsMatch(t, f.Backends, got, "step %d: %s", step, f.Key)
		}
		require.Len(t, installed.Services, len(fronts), "step %d: stray services", step)
		// A second sync of the same frontends is free.
		require.Empty(t, l.Plan(installed, l.Desired(installed, fronts, next)), "step %d", step)
	}
	assert.Empty(t, m.Violations)
}
