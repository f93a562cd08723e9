// Package lbmaps keeps the service and backend maps of a BPF Service
// datapath equal to a desired datapath.State. It is shared by the datapaths
// whose BPF side picks a backend as a service lookup followed by a slot
// lookup (datapath/socketlb and baselines/tcebpf):
//
//   - a services map, frontend key -> {service id, slot count, ...};
//   - a backends map, {service id, slot} -> backend;
//   - optionally a membership map, {service id, backend} -> slot, the
//     reverse index socketlb uses to tell whether a backend still belongs
//     to a service.
//
// lbmaps checks a State against what the maps can hold (Rules.Ports), lays
// the frontends out in slots that stay put across resyncs (Layout.Desired),
// orders the writes so that a concurrent lookup never sees a service
// pointing at a missing slot (Layout.Plan), and performs them while keeping
// a copy of the kernel maps exact, also when a write fails
// (Layout.Execute). Each datapath keeps its own key and value encodings (the
// Go types bpf2go generates for it) and hands them in through Layout.
package lbmaps
