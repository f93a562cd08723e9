package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"svclab/datapath"
	"svclab/harness/topology"
	"svclab/results"
	"svclab/scenarios"
)

// Plan is a validated scenario resolved into what the runner needs.
type Plan struct {
	Scenario *scenarios.Scenario
	Topology topology.Config
	Service  datapath.Service
	Port     datapath.ServicePort
	// Factories are the datapaths to measure, in the scenario's order;
	// Skipped are those this machine cannot run, with the reason.
	Factories []datapath.Factory
	Skipped   []results.DatapathInfo
	// Placement is the scenario's CPU placement resolved against the CPUs
	// svclab may use (every trial and generator ceiling runs with it).
	Placement topology.Placement
}

// NewPlan validates a scenario against the registry and the machine. An
// unknown datapath is an error; one the machine cannot run is skipped with
// its probe's reason.
func NewPlan(s *scenarios.Scenario) (*Plan, error) { return NewPlanWith(s, datapath.Lookup) }

// NewPlanWith is NewPlan with another registry (tests add datapaths of
// their own).
func NewPlanWith(s *scenarios.Scenario, lookup func(string) (datapath.Factory, error)) (*Plan, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	p := &Plan{Scenario: s}
	p.Topology = topology.Config{
		Clients:     s.Topology.Clients,
		Backends:    s.Topology.Backends,
		PodCIDR:     netip.MustParsePrefix(s.Topology.PodCIDR),
		ServiceCIDR: netip.MustParsePrefix(s.Topology.ServiceCIDR),
	}
	if p6, s6 := s.Ranges6(); p6 != "" {
		// Validate parsed them.
		p.Topology.PodCIDR6, p.Topology.ServiceCIDR6 = netip.MustParsePrefix(p6), netip.MustParsePrefix(s6)
	}
	// Several nodes (issue 18): zero keeps the one-node topology.
	p.Topology.Nodes = s.Topology.Nodes
	if s.Topology.UnderlayCIDR != "" {
		p.Topology.UnderlayCIDR = netip.MustParsePrefix(s.Topology.UnderlayCIDR)
	}
	if err := p.Topology.Validate(); err != nil {
		return nil, fmt.Errorf("topology.%w", err)
	}
	allowed, err := topology.AllowedCPUs()
	if err != nil {
		return nil, err
	}
	if p.Placement, err = topology.PlanPlacement(s.Workload.Placement, allowed); err != nil {
		return nil, fmt.Errorf("workload.%w", err)
	}
	if extra := s.MaxEndpoints() - p.Topology.Backends; extra > 0 {
		// Endpoints past the backend pods are extra pod addresses: check
		// now that they fit, not at the trial that needs them.
		tc := p.Topology
		tc.ExtraEndpoints = extra
		if err := tc.Validate(); err != nil {
			return nil, fmt.Errorf("scale.endpointSweep: %d endpoints on %d backend pods: %w", s.MaxEndpoints(), tc.Backends, err)
		}
	}
	for _, name := range s.Datapaths {
		f, err := lookup(name)
		if err != nil {
			return nil, fmt.Errorf("datapaths: %w", err)
		}
		if f.Probe != nil {
			if err := f.Probe(); err != nil {
				if !errors.Is(err, datapath.ErrUnsupported) {
					return nil, fmt.Errorf("datapath %s: probe: %w", name, err)
				}
				p.Skipped = append(p.Skipped, results.DatapathInfo{Name: name, Description: f.Description, Skipped: err.Error()})
				continue
			}
		}
		p.Factories = append(p.Factories, f)
	}
	p.Port = datapath.ServicePort{Name: "http", Protocol: datapath.Protocol(s.Service.Protocol),
		Port: uint16(s.Service.Port), TargetPort: uint16(s.Service.TargetPort)}
	// The ClusterIP is the service CIDR's 10th address, as a kube-dns-like
	// well-known address; its pods are every backend of the topology.
	p.Service = datapath.Service{Namespace: s.Service.Namespace, Name: s.Service.Name,
		ClusterIP: topology.NthHost(p.serviceCIDR(), 10), Ports: []datapath.ServicePort{p.Port}}
	if topology.PrefixHosts(p.serviceCIDR()) < 10 {
		p.Service.ClusterIP = topology.NthHost(p.serviceCIDR(), 1)
	}
	return p, nil
}

// IPv6 says whether the service, its endpoints and the client's sockets
// are IPv6.
func (p *Plan) IPv6() bool { return p.Scenario.Service.Family() == scenarios.IPv6 }

// serviceCIDR is the range ClusterIPs come from: the IPv6 one for an
// IPv6 service.
func (p *Plan) serviceCIDR() netip.Prefix {
	if p.IPv6() {
		return p.Topology.ServiceCIDR6
	}
	return p.Topology.ServiceCIDR
}

// State returns the desired datapath state for a topology: n services,
// each with the topology's first `endpoints` endpoints, ready (the backend
// pods' own addresses, then their extra addresses). With one service it is
// the scenario's service; with more, services are named svc-00000… in the
// scenario's namespace with consecutive ClusterIPs, and Target is the last
// one (last in every datapath's rendering order).
func (p *Plan) State(t *topology.Topology, n, endpoints int) (datapath.State, error) {
	eps, err := t.Endpoints(endpoints)
	if err != nil {
		return datapath.State{}, err
	}
	if p.IPv6() {
		// The backend pods' own IPv6 addresses (validation kept the
		// endpoints to one per pod: the extra ones are IPv4).
		for i := range eps {
			if i >= len(t.Backends) || !t.Backends[i].Addr6.IsValid() {
				return datapath.State{}, fmt.Errorf("endpoints: endpoint %d has no IPv6 address (%d backend pods, dual-stack %v)", i, len(t.Backends), t.Backends[0].Addr6.IsValid())
			}
			eps[i].Addr = t.Backends[i].Addr6
		}
	}
	if n <= 1 {
		svc := p.Service
		svc.Endpoints = eps
		return datapath.State{Services: []datapath.Service{svc}}, nil
	}
	st := datapath.State{Services: make([]datapath.Service, n)}
	for i := range n {
		st.Services[i] = datapath.Service{Namespace: p.Service.Namespace, Name: fmt.Sprintf("svc-%05d", i),
			ClusterIP: topology.NthHost(p.serviceCIDR(), 10+i), Ports: p.Service.Ports, Endpoints: eps}
	}
	return st, nil
}

// Target is the service the client talks to: the last one programmed.
func Target(st datapath.State) datapath.Service { return st.Services[len(st.Services)-1] }

// TrialSpec is one trial of the schedule.
type TrialSpec struct {
	Factory datapath.Factory
	// Services and Endpoints are the scale point: how many services,
	// each with how many endpoints.
	Services    int
	Endpoints   int
	Concurrency int
	Repetition  int
	// Rate, if > 0, makes the trial open-loop (Concurrency 0) at Rate
	// connections per second, LoadFraction of the measured capacity, on
	// the schedule drawn from Seed.
	Rate         float64
	LoadFraction float64
	Seed         uint64
	// Slot is the trial's position in its round (0 runs first): recorded,
	// so that an order effect can be looked for.
	Slot int
	// Generator marks the load generator's own ceiling (loopback, no
	// datapath; Factory is zero): measured at every concurrency level and
	// repetition, in the rotation like a datapath.
	Generator bool
	// Cost marks a cost trial (results.ModelCost): the probes that
	// attribute the datapath's own kernel time are attached, over a window
	// of Workload.AttributionWindow. In the round of the attribution
	// level, beside the same datapath's plain trial.
	Cost bool
}

// rotation is the first datapath of the round of cell (the index of a
// scale point × concurrency level, or of a load fraction) in repetition
// rep. It advances by one from one cell to the next and, for the same
// cell, from one repetition to the next, so over n repetitions every
// datapath takes every position of every cell once, whatever the numbers
// of points and levels (advancing by rounds instead stops rotating when
// points × levels is a multiple of n).
func rotation(rep, cell, n int) int { return (rep + cell) % n }

// Schedule interleaves datapaths: within each repetition, scale point and
// concurrency level (a round) every datapath runs once, and so does the
// generator's own ceiling at the first scale point, in an order that
// rotates (see rotation), so neither drift of the machine nor position
// favours one. With attribution on, the rounds of the attribution level
// also hold one cost trial per datapath.
func (p *Plan) Schedule() []TrialSpec {
	var out []TrialSpec
	levels := p.Scenario.Workload.Concurrency
	cost, costLevel := p.Scenario.Workload.AttributionOn(), p.Scenario.Workload.AttributionLevel()
	for rep := range p.Scenario.Workload.Repetitions {
		points := p.Scenario.ScalePoints()
		idx := make([]int, len(points))
		for i := range idx {
			idx[i] = i
		}
		if rep%2 == 1 {
			// Scale points run in turn, so a machine that drifts over
			// the run would tilt a sweep; odd repetitions go back down,
			// which cancels a steady drift. The first repetition goes
			// up, so a datapath's scale limit is found at its smallest
			// point and larger ones are not tried.
			slices.Reverse(idx)
		}
		for _, pi := range idx {
			pt := points[pi]
			for ci, c := range levels {
				round := make([]TrialSpec, 0, len(p.Factories)+1)
				for _, f := range p.Factories {
					round = append(round, TrialSpec{Factory: f, Services: pt.Services, Endpoints: pt.Endpoints, Concurrency: c, Repetition: rep})
					if cost && c == costLevel {
						// A cost trial is a participant of the round
						// like the plain ones, so it rotates through
						// its positions too, and it runs next to the
						// plain trial it is paired with for the
						// probes' overhead (the same machine state).
						round = append(round, TrialSpec{Factory: f, Services: pt.Services, Endpoints: pt.Endpoints, Concurrency: c, Repetition: rep, Cost: true})
					}
				}
				if pi == 0 {
					// The generator's ceiling does not depend on the scale
					// point: once per level and repetition.
					round = append(round, TrialSpec{Generator: true, Services: pt.Services, Endpoints: pt.Endpoints, Concurrency: c, Repetition: rep})
				}
				first := rotation(rep, pi*len(levels)+ci, len(round))
				for slot := range round {
					ts := round[(first+slot)%len(round)]
					ts.Slot = slot
					out = append(out, ts)
				}
			}
		}
	}
	return out
}

// costTrials is the number of cost trials in Schedule.
func (p *Plan) costTrials() int {
	w := p.Scenario.Workload
	if !w.AttributionOn() {
		return 0
	}
	return w.Repetitions * len(p.Scenario.ScalePoints()) * len(p.Factories)
}

// openTrials is the number of open-loop trials the plan runs.
func (p *Plan) openTrials() int {
	w := p.Scenario.Workload
	if !w.OpenLoop() {
		return 0
	}
	return w.Repetitions * len(w.LoadFractions) * len(p.Factories)
}

// OpenSchedule is the open-loop phase's trials at capacity × each load
// fraction, interleaved and rotated as Schedule does. Every datapath of a
// repetition and fraction gets the same seed, so the same arrivals: they
// differ by their datapath only.
func (p *Plan) OpenSchedule(capacity float64, seed uint64) []TrialSpec {
	w := p.Scenario.Workload
	var out []TrialSpec
	n := len(p.Factories)
	for rep := range w.Repetitions {
		for fi, f := range w.LoadFractions {
			s := seed + uint64(rep*len(w.LoadFractions)+fi)
			first := rotation(rep, fi, n)
			for slot := range n {
				out = append(out, TrialSpec{Factory: p.Factories[(first+slot)%n], Services: 1, Endpoints: p.Scenario.EndpointsPerService(), Repetition: rep,
					Rate: f * capacity, LoadFraction: f, Seed: s, Slot: slot})
			}
		}
	}
	return out
}
