package tcebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// The flow maps are written by the programs alone. The Go side reads them
// in tests and deletes UDP flows whose backend left the service, as
// kube-proxy clears the conntrack entries of stale UDP endpoints: a UDP
// flow has no end the datapath could see, so without this a client that
// keeps its socket would keep sending into a removed pod. TCP flows are left
// to finish on their old backend, as conntrack lets them.

// connKey builds a flow map key from a packet's source and destination, in
// network byte order like svcKey.
func connKey(src, dst netip.AddrPort, proto uint8) tcebpfConnKey {
	return tcebpfConnKey{Saddr: be32(src.Addr()), Daddr: be32(dst.Addr()), Sport: be16(src.Port()), Dport: be16(dst.Port()), Proto: proto}
}

func addrPortOf(addr uint32, port uint16) netip.AddrPort {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], addr)
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], port)
	return netip.AddrPortFrom(netip.AddrFrom4(a), binary.BigEndian.Uint16(p[:]))
}

func (k tcebpfConnKey) src() netip.AddrPort { return addrPortOf(k.Saddr, k.Sport) }
func (k tcebpfConnKey) dst() netip.AddrPort { return addrPortOf(k.Daddr, k.Dport) }

func (k tcebpfConnKey) String() string {
	return fmt.Sprintf("%s->%s/%d", k.src(), k.dst(), k.Proto)
}

// backend returns where a forward entry sends its flow.
func (v tcebpfConnFwd) backend() netip.AddrPort { return addrPortOf(v.Addr, v.Port) }

// vip returns what a reverse entry rewrites the backend's source to.
func (v tcebpfConnRev) vip() netip.AddrPort { return addrPortOf(v.Addr, v.Port) }

// revKey is the reverse map key of the forward flow k -> v: the tuple of the
// backend's answers, as the program builds it.
func revKey(k tcebpfConnKey, v tcebpfConnFwd) tcebpfConnKey {
	return tcebpfConnKey{Saddr: v.Addr, Sport: v.Port, Daddr: k.Saddr, Dport: k.Sport, Proto: k.Proto}
}

// backendSet returns the backends a frontend's slots hold in t.
func backendSet(t tables, key tcebpfSvcKey) map[tcebpfBackendEntry]bool {
	out := map[tcebpfBackendEntry]bool{}
	svc, ok := t.services[key]
	if !ok {
		return out
	}
	for slot := range uint32(svc.Count) {
		if be, ok := t.backends[tcebpfBackendKey{SvcId: svc.Id, Slot: slot}]; ok {
			out[be] = true
		}
	}
	return out
}

// udpLost compares the installed tables with the desired ones and returns,
// for every UDP frontend that loses a backend (or disappears), the backends
// its flows may keep. It returns nil when no UDP flow can have gone stale,
// so the common resync never walks the flow map.
func udpLost(have, want tables) map[tcebpfSvcKey]map[tcebpfBackendEntry]bool {
	var out map[tcebpfSvcKey]map[tcebpfBackendEntry]bool
	for key := range have.services {
		if key.Proto != ipprotoUDP {
			continue
		}
		keep := backendSet(want, key)
		for be := range backendSet(have, key) {
			if !keep[be] {
				if out == nil {
					out = map[tcebpfSvcKey]map[tcebpfBackendEntry]bool{}
				}
				out[key] = keep
				break
			}
		}
	}
	return out
}

// staleFlow reports whether the forward entry k -> v is a UDP flow of a
// frontend in lost whose backend is no longer one the frontend keeps.
func staleFlow(lost map[tcebpfSvcKey]map[tcebpfBackendEntry]bool, k tcebpfConnKey, v tcebpfConnFwd) bool {
	if k.Proto != ipprotoUDP {
		return false
	}
	keep, ok := lost[tcebpfSvcKey{Addr: k.Daddr, Port: k.Dport, Proto: k.Proto}]
	return ok && !keep[tcebpfBackendEntry{Addr: v.Addr, Port: v.Port}]
}

// flushStaleUDP deletes the stale UDP flows (both directions) and returns
// how many it deleted. The next datagram of such a flow starts a new one
// on a live backend. Entries the programs evict or replace meanwhile are
// not an error.
func flushStaleUDP(lost map[tcebpfSvcKey]map[tcebpfBackendEntry]bool, fwd, rev *ebpf.Map) (int, error) {
	if len(lost) == 0 {
		return 0, nil
	}
	var (
		k     tcebpfConnKey
		v     tcebpfConnFwd
		stale []tcebpfConnKey
		revs  []tcebpfConnKey
	)
	it := fwd.Iterate()
	for it.Next(&k, &v) {
		if staleFlow(lost, k, v) {
			stale = append(stale, k)
			revs = append(revs, revKey(k, v))
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("walk %s: %w", tcebpfMapSvclabTcFwd, err)
	}
	var errs []error
	for i := range stale {
		if err := fwd.Delete(stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete stale UDP flow %s: %w", stale[i], err))
		}
		if err := rev.Delete(revs[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete reverse entry %s: %w", revs[i], err))
		}
	}
	return len(stale), errors.Join(errs...)
}
