package lbmaps

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Map is the part of *ebpf.Map a sync writes with; tests substitute a fake.
type Map interface {
	Put(key, value any) error
	Delete(key any) error
}

// BatchMap is a Map that also writes many elements with one syscall.
type BatchMap interface {
	Map
	BatchUpdate(keys, values any, opts *ebpf.BatchOptions) (int, error)
	BatchDelete(keys any, opts *ebpf.BatchOptions) (int, error)
}

// Maps names the maps a sync writes. Members is unused (and may be nil)
// for a layout without a membership map.
type Maps struct {
	Services, Backends, Members Map
	// Batch sends each run of writes of one kind to a BatchMap as one
	// BPF_MAP_UPDATE_BATCH or BPF_MAP_DELETE_BATCH (falling back to one
	// syscall per element on kernels before 5.6). Without it every element
	// is one syscall.
	Batch bool
}

// Execute performs ops in order and records each successful write in
// installed. The kernel applies every element of a batch on its own, in
// order and atomically, as it does a single update or delete, so the
// ordering argument of Plan holds element by element either way. After an
// error installed still describes the maps exactly and the next sync
// repairs whatever is left. Deleting what is already gone is not an error.
// A cancelled ctx stops the writes before the next batch, or before the
// next element when they go one by one.
func (l *Layout[SK, SV, BK, BE, MK]) Execute(ctx context.Context, installed *Tables[SK, SV, BK, BE, MK], ops []Op[SK, SV, BK, BE, MK], m Maps) error {
	type op = Op[SK, SV, BK, BE, MK]
	w := writer{batch: m.Batch, cancelled: func() error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("sync %s maps: %w", l.Name, err)
		}
		return nil
	}}
	for i := 0; i < len(ops); {
		if err := w.cancelled(); err != nil {
			return err
		}
		j := i + 1
		for j < len(ops) && ops[j].Kind == ops[i].Kind {
			j++
		}
		run := ops[i:j]
		var err error
		switch run[0].Kind {
		case PutBackend:
			err = write(w, m.Backends, run,
				func(o op) BK { return o.Slot }, func(o op) BE { return o.Backend },
				func(o op) { installed.Backends[o.Slot] = o.Backend })
		case PutMember:
			err = write(w, m.Members, run,
				func(o op) MK { return o.Member }, func(o op) uint32 { return o.MemberSlot },
				func(o op) { installed.Members[o.Member] = o.MemberSlot })
		case PutService:
			err = write(w, m.Services, run,
				func(o op) SK { return o.Service }, func(o op) SV { return o.Entry },
				func(o op) { installed.Services[o.Service] = o.Entry })
		case DeleteMember:
			err = write[op, MK, uint32](w, m.Members, run,
				func(o op) MK { return o.Member }, nil,
				func(o op) { delete(installed.Members, o.Member) })
		case DeleteService:
			err = write[op, SK, SV](w, m.Services, run,
				func(o op) SK { return o.Service }, nil,
				func(o op) { delete(installed.Services, o.Service) })
		case DeleteBackend:
			err = write[op, BK, BE](w, m.Backends, run,
				func(o op) BK { return o.Slot }, nil,
				func(o op) { delete(installed.Backends, o.Slot) })
		}
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

// writer is how Execute writes.
type writer struct {
	batch     bool
	cancelled func() error
}

// write performs a run of ops that all write target: puts when value is
// set, deletes when it is nil. done records one op that took effect.
func write[O fmt.Stringer, K, V any](w writer, target Map, ops []O, key func(O) K, value func(O) V, done func(O)) error {
	if bm, ok := target.(BatchMap); ok && w.batch {
		keys := collect(ops, key)
		var values []V
		if value != nil {
			values = collect(ops, value)
		}
		for len(ops) > 0 {
			var n int
			var err error
			if value != nil {
				n, err = bm.BatchUpdate(keys, values, nil)
			} else {
				n, err = bm.BatchDelete(keys, nil)
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				// No batch API (before 5.6): one syscall per element.
				break
			}
			n = min(max(n, 0), len(ops))
			for _, o := range ops[:n] {
				done(o)
			}
			if err == nil {
				return nil
			}
			if value == nil && errors.Is(err, ebpf.ErrKeyNotExist) && n < len(ops) {
				// A delete of something already gone is done; the batch
				// stopped there and goes on after it.
				done(ops[n])
				n++
			} else {
				failed := "batch"
				if n < len(ops) {
					failed = ops[n].String()
				}
				return fmt.Errorf("%s: %w", failed, err)
			}
			ops, keys = ops[n:], keys[n:]
			if values != nil {
				values = values[n:]
			}
		}
	}
	for _, o := range ops {
		if err := w.cancelled(); err != nil {
			return err
		}
		var err error
		if value != nil {
			err = target.Put(key(o), value(o))
		} else if err = target.Delete(key(o)); errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
		done(o)
	}
	return nil
}

func collect[O, T any](ops []O, f func(O) T) []T {
	out := make([]T, len(ops))
	for i, o := range ops {
		out[i] = f(o)
	}
	return out
}
