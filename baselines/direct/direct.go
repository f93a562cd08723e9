// Package direct is the "no Service datapath" baseline: the client is handed
// the endpoints and picks one itself, so no rule, program or NAT sits between
// it and the backend. It measures the physical limit every real datapath is
// compared against.
package direct

import (
	"context"
	"net/netip"
	"sync"

	"svclab/datapath"
	"svclab/results"
)

func init() {
	datapath.Register(datapath.Factory{
		Name:        results.DirectDatapath, // the datapath every ratio is taken against
		Description: "no Service datapath: the client connects straight to an endpoint (physical limit)",
		Probe:       func() error { return nil },
		New:         func() datapath.Datapath { return &Datapath{} },
		Scope: datapath.Scope{NoService: "direct has no Service: its client connects to endpoints it was handed, " +
			"so there is no ClusterIP to refuse, keep affinity or follow endpoint changes"},
	})
}

// Datapath programs nothing; it only remembers the applied state so that
// Targets reflects the same endpoint set a real datapath would be
// implementing at that moment.
type Datapath struct {
	mu sync.Mutex
	st datapath.State
}

// Setup does nothing: there is nothing to install.
func (d *Datapath) Setup(context.Context, *datapath.Env) error { return nil }

// Apply records st.
func (d *Datapath) Apply(_ context.Context, st datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, svc := range st.Services {
		if svc.InternalLocal() {
			// No datapath, so no traffic policy: the client picks the
			// endpoint itself, wherever it is.
			return datapath.Unsupportedf("direct: service %s: internalTrafficPolicy Local is a Service datapath's to apply, and direct has none", svc)
		}
	}
	d.st = st
	return nil
}

// Targets returns every endpoint that should take new connections (ready
// ones, or serving terminating ones when none is ready), at the port's
// target port. The service and port are looked up in the applied state by
// namespace/name and protocol/port, so a service that was never applied (or
// was removed) has no targets, just as its VIP would lead nowhere.
func (d *Datapath) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.st.Services {
		if s.Namespace != svc.Namespace || s.Name != svc.Name {
			continue
		}
		for _, p := range s.Ports {
			if p.Protocol != port.Protocol || p.Port != port.Port {
				continue
			}
			var out []netip.AddrPort
			for _, ep := range s.ReadyEndpoints() {
				out = append(out, netip.AddrPortFrom(ep.Addr, p.TargetPort))
			}
			return out
		}
	}
	return nil
}

// Info is nil: there is nothing to record.
func (d *Datapath) Info() map[string]string { return nil }

// Close forgets the state.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.st = datapath.State{}
	return nil
}
