package world

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"

	"svclab/datapath"
	"svclab/harness/loadgen"
	"svclab/harness/topology"
)

// perNode is the datapath of a topology of several nodes: one instance per
// node, as kube-proxy (or a CNI agent) runs on every node, each set up in
// its node's Env and programmed with the same state. It is a Datapath
// itself, so the harness drives N nodes as it drives one: Apply goes to
// every instance, Close closes them all, and Targets and Info are the
// client's node's (node 0), which is where a client's traffic is
// translated.
type perNode struct {
	nodes []datapath.Datapath
}

var _ datapath.Datapath = (*perNode)(nil)

// Setup is not used: Build sets up each instance in its node's Env.
func (p *perNode) Setup(context.Context, *datapath.Env) error {
	return errors.New("world: a per-node datapath is set up node by node")
}

// Apply programs every node with st; the errors of all nodes are joined,
// each naming its node.
func (p *perNode) Apply(ctx context.Context, st datapath.State) error {
	var errs []error
	for i, dp := range p.nodes {
		if err := dp.Apply(ctx, st); err != nil {
			errs = append(errs, fmt.Errorf("node-%d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

func (p *perNode) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return p.nodes[0].Targets(svc, port)
}

// Info is node 0's, with "nodes" added: the state size of one node is
// what a one-node run reports, so the two compare.
func (p *perNode) Info() map[string]string {
	info := maps.Clone(p.nodes[0].Info())
	if info == nil {
		info = map[string]string{}
	}
	info["nodes"] = fmt.Sprint(len(p.nodes))
	return info
}

func (p *perNode) Close() error {
	var errs []error
	for i := len(p.nodes) - 1; i >= 0; i-- {
		if err := p.nodes[i].Close(); err != nil {
			errs = append(errs, fmt.Errorf("node-%d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// perNodeCounting is perNode for datapaths that count connections: node
// 0's counts are the client's connections.
type perNodeCounting struct{ *perNode }

func (p perNodeCounting) Counters() (datapath.Counters, error) {
	return p.nodes[0].(datapath.CounterReader).Counters()
}

// Nodes returns the datapath's instance on every node: the datapath
// itself with one node, the per-node instances with several.
func (w *World) Nodes() []datapath.Datapath {
	switch dp := w.Datapath.(type) {
	case nil:
		return nil
	case *perNode:
		return dp.nodes
	case perNodeCounting:
		return dp.nodes
	default:
		return []datapath.Datapath{dp}
	}
}

// setupNodes sets up one instance of f on every node of t, node 0 first.
// A failed Setup closes every instance set up so far (a datapath cleans up
// after its own failed Setup in its Close).
func setupNodes(ctx context.Context, t *topology.Topology, f *datapath.Factory) (datapath.Datapath, error) {
	p := &perNode{}
	for i := range t.Nodes {
		dp := f.New()
		p.nodes = append(p.nodes, dp)
		if err := dp.Setup(ctx, t.NodeEnv(i)); err != nil {
			return nil, errors.Join(&SetupError{Datapath: f.Name, Err: fmt.Errorf("node-%d: %w", i, err)}, p.Close())
		}
	}
	if _, ok := p.nodes[0].(datapath.CounterReader); ok {
		return perNodeCounting{p}, nil
	}
	return p, nil
}

// nodeServers is the default backend servers of a topology of several
// nodes: one process per node, in that node's namespace and server
// cgroup, answering in the node's backend pods.
func nodeServers(t *topology.Topology, port uint16) []serverAt {
	var out []serverAt
	for _, nd := range t.Nodes {
		if len(nd.Backends) == 0 {
			continue
		}
		out = append(out, serverAt{node: nd, spec: loadgen.BackendListeners(nd.Backends, port, false)})
	}
	return out
}

// serverAt is a server process and the node it runs on.
type serverAt struct {
	node *topology.Node
	spec loadgen.ServerSpec
}

// homeOf is the node whose pods spec's listeners are in (the first
// listener's), so that a server runs in its pods' node and server
// cgroup; node 0 if none matches.
func homeOf(t *topology.Topology, spec loadgen.ServerSpec) *topology.Node {
	if len(spec.Listeners) > 0 {
		for _, nd := range t.Nodes {
			for _, b := range nd.Backends {
				if b.NS.Name == spec.Listeners[0].NetNS {
					return nd
				}
			}
		}
	}
	return t.Nodes[0]
}
