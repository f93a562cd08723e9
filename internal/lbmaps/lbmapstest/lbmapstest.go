// Package lbmapstest provides an in-memory stand-in for the maps lbmaps
// writes, for tests of lbmaps and of the datapaths built on it.
package lbmapstest

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"svclab/internal/lbmaps"
)

// ErrInjected is what a write fails with at Maps.FailAt.
var ErrInjected = errors.New("injected map failure")

// Maps stands in for a layout's service, backend and membership maps.
// After every element written it plays the lookup a BPF program makes (the
// service, then each of its slots) and records any service that points at
// a missing slot. Batch calls apply elements one by one, like the kernel.
type Maps[SK, SV, BK, BE, MK comparable] struct {
	// Tables is what the maps hold.
	Tables lbmaps.Tables[SK, SV, BK, BE, MK]
	// Writes counts the element writes so far.
	Writes int
	// FailAt fails the FailAt-th element write (1-based) with
	// ErrInjected; 0 never fails.
	FailAt int
	// NoBatch answers batch calls with ebpf.ErrNotSupported, as a kernel
	// before 5.6 does; Batches counts the batch calls answered.
	NoBatch bool
	Batches int
	// Violations are the first few lookups that found a service pointing
	// at a missing slot.
	Violations []string

	layout *lbmaps.Layout[SK, SV, BK, BE, MK]
}

// New returns empty maps for layout l.
func New[SK, SV, BK, BE, MK comparable](l *lbmaps.Layout[SK, SV, BK, BE, MK]) *Maps[SK, SV, BK, BE, MK] {
	return &Maps[SK, SV, BK, BE, MK]{Tables: l.NewTables(), layout: l}
}

// Set returns the maps as lbmaps.Execute takes them.
func (f *Maps[SK, SV, BK, BE, MK]) Set(batch bool) lbmaps.Maps {
	return lbmaps.Maps{Services: f.Services(), Backends: f.Backends(), Members: f.Members(), Batch: batch}
}

// Services, Backends and Members return one map each.
func (f *Maps[SK, SV, BK, BE, MK]) Services() lbmaps.BatchMap {
	return fakeMap[SK, SV]{f.write, &f.NoBatch, &f.Batches, f.Tables.Services}
}

// Backends returns the backends map; see Services.
func (f *Maps[SK, SV, BK, BE, MK]) Backends() lbmaps.BatchMap {
	return fakeMap[BK, BE]{f.write, &f.NoBatch, &f.Batches, f.Tables.Backends}
}

// Members returns the membership map; see Services.
func (f *Maps[SK, SV, BK, BE, MK]) Members() lbmaps.BatchMap {
	return fakeMap[MK, uint32]{f.write, &f.NoBatch, &f.Batches, f.Tables.Members}
}

func (f *Maps[SK, SV, BK, BE, MK]) write(fn func()) error {
	f.Writes++
	if f.Writes == f.FailAt {
		return ErrInjected
	}
	fn()
	for k, v := range f.Tables.Services {
		id, count := f.layout.Slots(v)
		for slot := range count {
			if _, ok := f.Tables.Backends[f.layout.SlotKey(id, slot)]; !ok && len(f.Violations) < 5 {
				f.Violations = append(f.Violations, fmt.Sprintf("write %d: %v points at missing slot %d/%d", f.Writes, k, id, slot))
			}
		}
	}
	return nil
}

type fakeMap[K comparable, V any] struct {
	write   func(func()) error
	noBatch *bool
	batches *int
	m       map[K]V
}

func (m fakeMap[K, V]) Put(key, value any) error {
	return m.write(func() { m.m[key.(K)] = value.(V) })
}

func (m fakeMap[K, V]) Delete(key any) error {
	if _, ok := m.m[key.(K)]; !ok {
		return ebpf.ErrKeyNotExist
	}
	return m.write(func() { delete(m.m, key.(K)) })
}

func (m fakeMap[K, V]) BatchUpdate(keys, values any, _ *ebpf.BatchOptions) (int, error) {
	if *m.noBatch {
		return 0, ebpf.ErrNotSupported
	}
	*m.batches++
	ks, vs := keys.([]K), values.([]V)
	for i := range ks {
		if err := m.Put(ks[i], vs[i]); err != nil {
			return i, err
		}
	}
	return len(ks), nil
}

func (m fakeMap[K, V]) BatchDelete(keys any, _ *ebpf.BatchOptions) (int, error) {
	if *m.noBatch {
		return 0, ebpf.ErrNotSupported
	}
	*m.batches++
	ks := keys.([]K)
	for i := range ks {
		if err := m.Delete(ks[i]); err != nil {
			return i, err
		}
	}
	return len(ks), nil
}
