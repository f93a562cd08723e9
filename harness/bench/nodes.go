package bench

import (
	"svclab/datapath"
	"svclab/harness/topology"
	"svclab/results"
)

// splitByNode fills a multi-node trial's node fields: the window's
// connections (per answering backend) split into those answered on the
// client's node and those answered across the underlay. A one-node
// topology leaves the trial as it was.
func splitByNode(tr *results.Trial, topo *topology.Topology, client datapath.Pod) {
	if len(topo.Nodes) < 2 {
		return
	}
	home := topo.NodeOf(client)
	on := map[string]*topology.Node{}
	for _, nd := range topo.Nodes {
		for _, b := range nd.Backends {
			on[b.Name] = nd
		}
	}
	tr.Nodes = len(topo.Nodes)
	for pod, n := range tr.Workload.PerBackend {
		if on[pod] == home {
			tr.SameNodeConnections += n
		} else {
			tr.CrossNodeConnections += n
		}
	}
	if total := tr.SameNodeConnections + tr.CrossNodeConnections; total > 0 {
		f := float64(tr.CrossNodeConnections) / float64(total)
		tr.CrossNodeFraction = &f
	}
}
