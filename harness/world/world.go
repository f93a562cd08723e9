// Package world builds what every trial, conformance cell and lab runs in:
// a topology, the backend servers in its pods and a datapath set up in it.
// Build makes all of it (removing what it made if any step fails) and Close
// removes all of it, in reverse order, joining every error. Programming the
// datapath's services (Apply) and driving traffic are the caller's.
package world

import (
	"context"
	"errors"
	"fmt"

	"svclab/datapath"
	"svclab/harness/loadgen"
	"svclab/harness/topology"
)

// Spec is what to build.
type Spec struct {
	// Topology is the node and its pods.
	Topology topology.Config
	// Loopback builds topology.NewLoopback(Topology.Prefix) instead: one
	// namespace, client and backend over loopback.
	Loopback bool
	// Port is the target port the backend servers listen on.
	Port uint16
	// Servers, if set, says which backend server processes to start (each
	// with its listeners); by default one process answers on Port in every
	// backend pod.
	Servers func(*topology.Topology) []loadgen.ServerSpec
	// Datapath is set up in the topology; nil builds none.
	Datapath *datapath.Factory
	// Placement pins the topology's role processes (servers, the load
	// generator, the datapath's own) to CPUs; zero places nothing.
	Placement topology.Placement
}

// World is a built Spec.
type World struct {
	Topology *topology.Topology
	// Servers are the backend server processes, in the order Spec.Servers
	// gave them.
	Servers []*loadgen.ServerProcess
	// Datapath is set up (not yet applied); nil without Spec.Datapath.
	// With several nodes it is one instance per node behind one Datapath
	// (Apply to all, Targets and Info of node 0, Close of all); Nodes
	// returns the instances.
	Datapath datapath.Datapath
}

// SetupError is a datapath's Setup failing: the datapath's finding (it
// cannot run in this topology, or refuses it), not the harness's.
type SetupError struct {
	Datapath string
	Err      error
}

func (e *SetupError) Error() string { return fmt.Sprintf("datapath %s: setup: %v", e.Datapath, e.Err) }
func (e *SetupError) Unwrap() error { return e.Err }

// Build builds spec. On error everything built so far is removed.
func Build(ctx context.Context, spec Spec) (_ *World, err error) {
	w := &World{}
	defer func() {
		if err != nil {
			err = errors.Join(err, w.Close())
		}
	}()
	if spec.Loopback {
		w.Topology, err = topology.NewLoopback(spec.Topology.Prefix)
	} else {
		w.Topology, err = topology.New(ctx, spec.Topology)
	}
	if err != nil {
		return nil, err
	}
	t := w.Topology
	// Before any process starts: a child is pinned as it is forked.
	t.Place(spec.Placement)
	if len(t.Nodes) > 1 {
		// Several nodes: each server in its pods' node.
		if err := w.buildNodes(ctx, spec); err != nil {
			return nil, err
		}
		return w, nil
	}
	servers := []loadgen.ServerSpec{loadgen.BackendListeners(t.Backends, spec.Port, t.ExtraEndpoints() > 0)}
	if spec.Servers != nil {
		servers = spec.Servers(t)
	}
	for _, s := range servers {
		p, err := loadgen.StartServer(t.Node, t.ServerCgroup.Path, s)
		if err != nil {
			return nil, err
		}
		w.Servers = append(w.Servers, p)
	}
	if spec.Datapath != nil {
		dp := spec.Datapath.New()
		if err := dp.Setup(ctx, t.Env()); err != nil {
			// A datapath cleans up after a failed Setup in its Close.
			return nil, errors.Join(&SetupError{Datapath: spec.Datapath.Name, Err: err}, dp.Close())
		}
		w.Datapath = dp
	}
	return w, nil
}

// buildNodes starts the servers and sets the datapath up in a topology
// of several nodes: a server per node (or Spec.Servers', each in its pods'
// node) and one datapath instance per node.
func (w *World) buildNodes(ctx context.Context, spec Spec) error {
	t := w.Topology
	servers := nodeServers(t, spec.Port)
	if spec.Servers != nil {
		servers = nil
		for _, s := range spec.Servers(t) {
			servers = append(servers, serverAt{node: homeOf(t, s), spec: s})
		}
	}
	for _, s := range servers {
		p, err := loadgen.StartServer(s.node.NS, s.node.ServerCgroup.Path, s.spec)
		if err != nil {
			return err
		}
		w.Servers = append(w.Servers, p)
	}
	if spec.Datapath != nil {
		dp, err := setupNodes(ctx, t, spec.Datapath)
		if err != nil {
			return err
		}
		w.Datapath = dp
	}
	return nil
}

// Close removes the world: the datapath first (its programs and rules live
// in the topology), then the servers, then the topology. It is safe on a
// partly built world.
func (w *World) Close() error {
	var errs []error
	if w.Datapath != nil {
		if err := w.Datapath.Close(); err != nil {
			errs = append(errs, fmt.Errorf("datapath close: %w", err))
		}
	}
	for _, s := range w.Servers {
		errs = append(errs, s.Stop())
	}
	if w.Topology != nil {
		errs = append(errs, w.Topology.Close())
	}
	return errors.Join(errs...)
}
