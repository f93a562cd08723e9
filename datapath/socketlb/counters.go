package socketlb

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"svclab/datapath"
)

// counterBook turns the per-CPU counter maps, which are keyed by service id
// and {service id, backend}, into datapath.Counters, which are keyed by
// names. Counters of removed services and backends are folded into the
// retired totals and deleted from the maps by collect, so the maps only
// hold live entries and Counters still reports everything since Setup.
type counterBook struct {
	// metas names every live service id (and dead ones until collect).
	metas map[uint32]frontendMeta
	// fronts has the backends and pod names of every id in metas;
	// podIndex caches a lookup of them for large services.
	fronts     map[uint32]*frontend
	podIndex   map[uint32]map[socketlbBackendEntry]string
	retiredSvc map[frontendMeta]svcCount
	retiredBe  map[backendName]uint64
}

type svcCount struct{ connections, refused uint64 }

// backendName identifies a backend of a frontend across service ids: a
// service removed and added again is one line in the counters.
type backendName struct {
	meta    frontendMeta
	pod     string
	backend netip.AddrPort
}

func newCounterBook() counterBook {
	return counterBook{
		metas:      map[uint32]frontendMeta{},
		fronts:     map[uint32]*frontend{},
		podIndex:   map[uint32]map[socketlbBackendEntry]string{},
		retiredSvc: map[frontendMeta]svcCount{},
		retiredBe:  map[backendName]uint64{},
	}
}

// note records the names of what installed now holds. Apply calls it
// after collect, so collect still names removed backends by the state
// that had them.
func (b *counterBook) note(fronts []frontend, installed tables) {
	for i := range fronts {
		f := &fronts[i]
		if e, ok := installed.services[f.key]; ok {
			b.metas[e.Id] = f.meta
			b.fronts[e.Id] = f
			delete(b.podIndex, e.Id)
		}
	}
}

func (b *counterBook) backendName(k socketlbMemberKey) (backendName, bool) {
	meta, ok := b.metas[k.SvcId]
	name := backendName{meta: meta, backend: k.backend().addrPort()}
	f := b.fronts[k.SvcId]
	switch {
	case f == nil:
	case len(f.backends) <= 32:
		if i := slices.Index(f.backends, k.backend()); i >= 0 {
			name.pod = f.pods[i]
		}
	default:
		idx := b.podIndex[k.SvcId]
		if idx == nil {
			idx = make(map[socketlbBackendEntry]string, len(f.backends))
			for i, be := range f.backends {
				idx[be] = f.pods[i]
			}
			b.podIndex[k.SvcId] = idx
		}
		name.pod = idx[k.backend()]
	}
	return name, ok
}

// perCPUMap is the part of *ebpf.Map the book reads.
type perCPUMap interface {
	Iterate() *ebpf.MapIterator
	Delete(key any) error
}

// collect moves the counts of everything installed no longer holds into the
// retired totals and deletes their entries. An increment that races with
// it (a connection to a backend in the instant it is removed) may be lost.
func (b *counterBook) collect(svcCtr, beCtr perCPUMap, installed tables) error {
	live := make(map[uint32]bool, len(installed.services))
	for _, e := range installed.services {
		live[e.Id] = true
	}
	var errs []error

	var deadSvc []uint32
	err := eachSvcCounter(svcCtr, func(id uint32, c svcCount) {
		if live[id] {
			return
		}
		if meta, ok := b.metas[id]; ok {
			r := b.retiredSvc[meta]
			r.connections += c.connections
			r.refused += c.refused
			b.retiredSvc[meta] = r
		}
		deadSvc = append(deadSvc, id)
	})
	errs = append(errs, err)
	for _, id := range deadSvc {
		errs = append(errs, ignoreNotExist(svcCtr.Delete(id)))
	}

	var deadBe []socketlbMemberKey
	err = eachBackendCounter(beCtr, func(k socketlbMemberKey, n uint64) {
		if _, ok := installed.members[k]; ok {
			return
		}
		if name, ok := b.backendName(k); ok {
			b.retiredBe[name] += n
		}
		deadBe = append(deadBe, k)
	})
	errs = append(errs, err)
	for _, k := range deadBe {
		errs = append(errs, ignoreNotExist(beCtr.Delete(k)))
	}

	for id := range b.metas {
		if !live[id] {
			delete(b.metas, id)
			delete(b.fronts, id)
			delete(b.podIndex, id)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("collect counters of removed services: %w", err)
	}
	return nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

func eachSvcCounter(m perCPUMap, fn func(uint32, svcCount)) error {
	var id uint32
	var perCPU []socketlbSvcCounter
	it := m.Iterate()
	for it.Next(&id, &perCPU) {
		var c svcCount
		for _, v := range perCPU {
			c.connections += v.Connections
			c.refused += v.Refused
		}
		fn(id, c)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", socketlbMapSvclabSvcCtr, err)
	}
	return nil
}

func eachBackendCounter(m perCPUMap, fn func(socketlbMemberKey, uint64)) error {
	var k socketlbMemberKey
	var perCPU []uint64
	it := m.Iterate()
	for it.Next(&k, &perCPU) {
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		fn(k, n)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", socketlbMapSvclabBeCtr, err)
	}
	return nil
}

// read returns the live counts plus the retired ones. Every installed
// service port is listed, with zero counts if it had no traffic.
func (b *counterBook) read(svcCtr, beCtr perCPUMap, installed tables) (datapath.Counters, error) {
	svcs := map[frontendMeta]*datapath.ServiceCounters{}
	bes := map[backendName]uint64{}
	entry := func(meta frontendMeta) *datapath.ServiceCounters {
		sc, ok := svcs[meta]
		if !ok {
			sc = &datapath.ServiceCounters{Service: meta.service, Port: meta.port, Protocol: meta.protocol, Frontend: meta.vip}
			svcs[meta] = sc
		}
		return sc
	}
	for _, e := range installed.services {
		if meta, ok := b.metas[e.Id]; ok {
			entry(meta)
		}
	}
	err := eachSvcCounter(svcCtr, func(id uint32, c svcCount) {
		if meta, ok := b.metas[id]; ok {
			sc := entry(meta)
			sc.Connections += c.connections
			sc.Refused += c.refused
		}
	})
	if err != nil {
		return datapath.Counters{}, err
	}
	err = eachBackendCounter(beCtr, func(k socketlbMemberKey, n uint64) {
		if name, ok := b.backendName(k); ok {
			bes[name] += n
		}
	})
	if err != nil {
		return datapath.Counters{}, err
	}
	for meta, c := range b.retiredSvc {
		sc := entry(meta)
		sc.Connections += c.connections
		sc.Refused += c.refused
	}
	for name, n := range b.retiredBe {
		bes[name] += n
	}
	for name, n := range bes {
		sc := entry(name.meta)
		sc.Backends = append(sc.Backends, datapath.BackendCounters{Pod: name.pod, Backend: name.backend, Connections: n})
	}

	var out datapath.Counters
	for _, sc := range svcs {
		slices.SortFunc(sc.Backends, func(a, b datapath.BackendCounters) int {
			return cmp.Or(a.Backend.Compare(b.Backend), cmp.Compare(a.Pod, b.Pod))
		})
		out.Services = append(out.Services, *sc)
	}
	slices.SortFunc(out.Services, func(a, b datapath.ServiceCounters) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol), a.Frontend.Compare(b.Frontend))
	})
	return out, nil
}
