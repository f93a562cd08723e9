// Package scenarios holds svclab's built-in scenario files (data, embedded
// in the binary) and the code that reads and validates a scenario.
package scenarios

import (
	"cmp"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

//go:embed *.yaml
var builtin embed.FS

// Limits on topology size: enough for endpoint sweeps, small enough that a
// typo cannot create thousands of namespaces.
const (
	MaxBackends = 1024
	MaxClients  = 64
	// MaxNodes bounds topology.nodes: every node is a namespace with its
	// own datapath instance, built again for every trial.
	MaxNodes = 8
)

// Duration is a time.Duration written as "5s" in scenario files.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string such as "500ms".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"5s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"500ms\" or \"3s\"", s)
	}
	*d = Duration(v)
	return nil
}

// Scenario is one benchmark setup.
type Scenario struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Topology    Topology `json:"topology"`
	Service     Service  `json:"service"`
	Workload    Workload `json:"workload"`
	// Scale, if set, sweeps the number of services and endpoints.
	Scale     *Scale   `json:"scale,omitempty"`
	Datapaths []string `json:"datapaths"`
	// Quick, if set, is what --quick changes (see ApplyQuick).
	Quick *Quick `json:"quick,omitempty"`
}

// Scale sweeps how much state the datapath holds. The services sweep
// programs, for every value of Services, that many ClusterIP services with
// Endpoints endpoints each (drawn from the backend pods), and the client
// talks to the last service programmed, so a datapath that scans linearly
// pays in full. The endpoint sweep programs one service with each
// EndpointSweep count of endpoints; counts above topology.backends are
// served by extra addresses on the backend pods.
type Scale struct {
	Services []int `json:"services"`
	// Endpoints per service in the services sweep; at most
	// topology.backends (0 means every backend).
	Endpoints int `json:"endpoints"`
	// EndpointSweep, if set, are the endpoint counts of the one-service
	// sweep.
	EndpointSweep []int `json:"endpointSweep,omitempty"`
	// MeasureChange also times an Apply that changes one endpoint of one
	// service at each scale point.
	MeasureChange bool `json:"measureChange,omitempty"`
	// ApplyTimeout bounds each Apply of a scale point (default
	// DefaultApplyTimeout). A datapath whose Apply fails or times out is
	// recorded as limited at that point and not tried at larger points
	// of the same sweep, so one datapath cannot stall the run.
	ApplyTimeout Duration `json:"applyTimeout,omitempty"`
}

// Scale sweep bounds: the socket-LB maps hold 65,536 services; the endpoint
// sweep's extra addresses come from the upper half of the pod CIDR.
const (
	MaxServices         = 50000
	MaxSweepEndpoints   = 16384
	DefaultApplyTimeout = Duration(60 * time.Second)
)

// ScalePoint is one point of a scale sweep: how many services, each with
// how many endpoints.
type ScalePoint struct {
	Services  int
	Endpoints int
}

// ScalePoints returns the points to measure, in order: the services sweep
// (ascending as written) then the endpoint sweep's points that the
// services sweep does not already have. Without Scale it is the one point
// of every backend behind one service.
func (s *Scenario) ScalePoints() []ScalePoint {
	e := s.EndpointsPerService()
	if s.Scale == nil {
		return []ScalePoint{{1, e}}
	}
	var out []ScalePoint
	seen := map[ScalePoint]bool{}
	add := func(p ScalePoint) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, n := range s.ServiceCounts() {
		add(ScalePoint{n, e})
	}
	for _, n := range s.Scale.EndpointSweep {
		add(ScalePoint{1, n})
	}
	return out
}

// MaxEndpoints is the most endpoints any one service of the scenario has.
func (s *Scenario) MaxEndpoints() int {
	m := s.EndpointsPerService()
	if s.Scale != nil {
		for _, n := range s.Scale.EndpointSweep {
			m = max(m, n)
		}
	}
	return m
}

// ApplyTimeout is the bound on one Apply of a scale point (0 without Scale:
// outside a sweep an Apply that fails ends the run).
func (s *Scenario) ApplyTimeout() time.Duration {
	if s.Scale == nil {
		return 0
	}
	if s.Scale.ApplyTimeout == 0 {
		return time.Duration(DefaultApplyTimeout)
	}
	return time.Duration(s.Scale.ApplyTimeout)
}

// ServiceCounts returns the services sweep ([1] without Scale).
func (s *Scenario) ServiceCounts() []int {
	if s.Scale == nil || len(s.Scale.Services) == 0 {
		return []int{1}
	}
	return s.Scale.Services
}

// EndpointsPerService returns the endpoints of each service (every backend
// without Scale).
func (s *Scenario) EndpointsPerService() int {
	if s.Scale == nil || s.Scale.Endpoints == 0 {
		return s.Topology.Backends
	}
	return s.Scale.Endpoints
}

// Quick is what `svclab bench --quick` changes in a scenario: a smaller
// sweep and shorter trials, for CI. Unset fields keep the scenario's value.
type Quick struct {
	Services      []int    `json:"services,omitempty"`
	EndpointSweep []int    `json:"endpointSweep,omitempty"`
	Datapaths     []string `json:"datapaths,omitempty"`
	Repetitions   int      `json:"repetitions,omitempty"`
	Warmup        Duration `json:"warmup,omitempty"`
	Duration      Duration `json:"duration,omitempty"`
}

// Quick trial defaults for a scenario without a quick block.
const (
	quickWarmup   = Duration(200 * time.Millisecond)
	quickDuration = Duration(time.Second)
)

// ApplyQuick shrinks the scenario as its quick block says; without one it
// runs one repetition of 1 s trials after a 200 ms warm-up. The result is
// validated again by the caller.
func (s *Scenario) ApplyQuick() {
	q := s.Quick
	if q == nil {
		q = &Quick{}
	}
	s.Workload.Repetitions = cmp.Or(q.Repetitions, 1)
	s.Workload.Warmup = min(s.Workload.Warmup, cmp.Or(q.Warmup, quickWarmup))
	s.Workload.Duration = min(s.Workload.Duration, cmp.Or(q.Duration, quickDuration))
	if len(q.Datapaths) > 0 {
		s.Datapaths = q.Datapaths
	}
	if s.Scale != nil {
		if len(q.Services) > 0 {
			s.Scale.Services = q.Services
		}
		if len(q.EndpointSweep) > 0 {
			s.Scale.EndpointSweep = q.EndpointSweep
		}
	}
	s.Quick = nil
}

// Topology sizes the node and its pods.
type Topology struct {
	Clients     int    `json:"clients"`
	Backends    int    `json:"backends"`
	PodCIDR     string `json:"podCIDR"`
	ServiceCIDR string `json:"serviceCIDR"`
	// PodCIDR6 and ServiceCIDR6 make the node dual-stack (every pod also
	// gets an IPv6 address). Either may be left out with service.ipFamily
	// IPv6, which then uses DefaultPodCIDR6 and DefaultServiceCIDR6.
	PodCIDR6     string `json:"podCIDR6,omitempty"`
	ServiceCIDR6 string `json:"serviceCIDR6,omitempty"`
	// Nodes is how many nodes the topology has (0 or 1: one, as before
	// nodes existed, which keeps one-node scenarios and results as they
	// were): the pod range is split over them, backends spread
	// round-robin, the clients on the first node.
	Nodes int `json:"nodes,omitempty"`
	// UnderlayCIDR is where the nodes' addresses on the network joining
	// them come from (default 172.18.0.0/24); unused with one node.
	UnderlayCIDR string `json:"underlayCIDR,omitempty"`
}

// The IPv6 ranges of an IPv6 scenario that names none (the ULA
// counterparts of kubeadm's 10.244/16 and 10.96/16).
const (
	DefaultPodCIDR6     = "fd00:10:244::/64"
	DefaultServiceCIDR6 = "fd00:10:96::/112"
)

// IP families of the service (Service.IPFamily), spelled as Kubernetes'
// spec.ipFamilies.
const (
	IPv4 = "IPv4"
	IPv6 = "IPv6"
)

// Family is the service's IP family, IPv4 when not set.
func (s *Service) Family() string { return cmp.Or(s.IPFamily, IPv4) }

// Ranges6 are the scenario's IPv6 pod and Service ranges, the defaults
// filled in for an IPv6 service; both empty for an IPv4-only node.
func (s *Scenario) Ranges6() (pods, services string) {
	pods, services = s.Topology.PodCIDR6, s.Topology.ServiceCIDR6
	if s.Service.Family() == IPv6 || pods != "" || services != "" {
		pods, services = cmp.Or(pods, DefaultPodCIDR6), cmp.Or(services, DefaultServiceCIDR6)
	}
	return pods, services
}

// NodeCount is Nodes, or 1 when it is zero.
func (t Topology) NodeCount() int { return max(1, t.Nodes) }

// Service is the ClusterIP service under test.
type Service struct {
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Port       int    `json:"port"`
	TargetPort int    `json:"targetPort"`
	Protocol   string `json:"protocol"`
	// IPFamily is IPv4 (default) or IPv6: the family of the ClusterIP,
	// of the endpoints (the backend pods' IPv6 addresses) and of the
	// client's sockets. IPv6 makes the node dual-stack (see
	// Topology.PodCIDR6).
	IPFamily string `json:"ipFamily,omitempty"`
}

// Workload is the load and the repetitions.
type Workload struct {
	// UDPMode, for UDP services: "socket-per-request" (a fresh unconnected
	// socket per request: sendto, recvfrom, close), "long-lived" (one
	// unconnected socket per connection slot sending request after
	// request) or "connected" (a fresh socket per request connected to
	// the service: connect, send, recv, close, as most DNS resolvers do;
	// socket-LB translates it at connect).
	UDPMode string `json:"udpMode,omitempty"`
	// Client is where the load generator runs: ClientPod (default: the
	// first client pod) or ClientHost (a hostNetwork client: the node's
	// own namespace and hostNetwork cgroup, IPv4), which kube-proxy serves
	// in nat OUTPUT and socket-LB through the node cgroup.
	Client      string   `json:"client,omitempty"`
	Concurrency []int    `json:"concurrency"`
	Warmup      Duration `json:"warmup"`
	Duration    Duration `json:"duration"`
	Repetitions int      `json:"repetitions"`
	// Model is the load model: ModelClosed (default: Concurrency
	// connections in flight, each followed at once by the next, which
	// gives the maximum rate) or ModelOpen, which runs the closed-loop
	// trials first and then, for every LoadFractions entry f, open-loop
	// trials of every datapath at f × the lowest median closed-loop QPS
	// among them at the highest concurrency: connections started on a
	// Poisson schedule, latency from each one's intended start.
	Model string `json:"model,omitempty"`
	// LoadFractions are the open loop's offered loads as fractions of that
	// capacity, e.g. [0.5, 0.8]; only with model open.
	LoadFractions []float64 `json:"loadFractions,omitempty"`
	// MaxErrorFraction is the share of a trial's connections that may
	// fail (overload excepted) before the trial is invalid: its figures
	// are then left out of the medians and named instead. Zero means
	// DefaultMaxErrorFraction.
	MaxErrorFraction float64 `json:"maxErrorFraction,omitempty"`
	// Attribution adds cost trials (results.ModelCost) beside the plain
	// ones: per datapath, repetition and scale point, at
	// AttributionConcurrency, with the probes that measure the datapath's
	// own kernel time per connection attached (netfilter probes in the
	// trial's namespaces, the BPF datapaths' program run times, the
	// userspace proxy's CPU): the "DP ns/C" figure. Plain trials never
	// carry the probes, whose own cost would slow them. Nil means on
	// (AttributionOn).
	Attribution *bool `json:"attribution,omitempty"`
	// AttributionConcurrency is the cost trials' concurrency, one of
	// Concurrency; 0 picks the level nearest DefaultAttributionConcurrency
	// (AttributionLevel).
	AttributionConcurrency int `json:"attributionConcurrency,omitempty"`
	// AttributionDuration is a cost trial's measured window; 0 means
	// DefaultAttributionDuration, or Duration if that is shorter. Cost per
	// connection settles faster than QPS: it needs enough connections,
	// not a long window.
	AttributionDuration Duration `json:"attributionDuration,omitempty"`
	// Placement is where the run's processes run: PlacementNone (default:
	// wherever the scheduler puts them) or PlacementSplit (the load
	// generator on one half of svclab's CPUs, the backends and the
	// datapath's own processes on the other; needs 2 CPUs).
	Placement string `json:"placement,omitempty"`
}

// Cost trial defaults (Workload.AttributionConcurrency, AttributionDuration).
const (
	DefaultAttributionConcurrency = 8
	DefaultAttributionDuration    = Duration(time.Second)
)

// AttributionOn says whether the run has cost trials (the default).
func (w *Workload) AttributionOn() bool { return w.Attribution == nil || *w.Attribution }

// AttributionLevel is the cost trials' concurrency: AttributionConcurrency,
// or the level of Concurrency nearest DefaultAttributionConcurrency (the
// lower of two equally near).
func (w *Workload) AttributionLevel() int {
	if w.AttributionConcurrency > 0 {
		return w.AttributionConcurrency
	}
	best := 0
	for _, c := range w.Concurrency {
		d, bd := abs(c-DefaultAttributionConcurrency), abs(best-DefaultAttributionConcurrency)
		if best == 0 || d < bd || (d == bd && c < best) {
			best = c
		}
	}
	return best
}

// AttributionWindow is a cost trial's measured window.
func (w *Workload) AttributionWindow() time.Duration {
	if w.AttributionDuration > 0 {
		return time.Duration(w.AttributionDuration)
	}
	return time.Duration(min(DefaultAttributionDuration, w.Duration))
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// CPU placements (Workload.Placement).
const (
	PlacementNone  = "none"
	PlacementSplit = "split"
)

// Placements are the values of Workload.Placement.
var Placements = []string{PlacementNone, PlacementSplit}

// DefaultMaxErrorFraction is Workload.MaxErrorFraction when not set: 1 %
// of connections failing says more about the trial than about the
// datapath's cost.
const DefaultMaxErrorFraction = 0.01

// ErrorTolerance is the workload's MaxErrorFraction, or its default.
func (w *Workload) ErrorTolerance() float64 {
	return cmp.Or(w.MaxErrorFraction, DefaultMaxErrorFraction)
}

// UDPModes are the values of Workload.UDPMode (the load generator's own,
// loadgen.UDPModes, which this package cannot import).
var UDPModes = []string{"socket-per-request", "long-lived", "connected"}

// Where the load generator runs (Workload.Client).
const (
	ClientPod  = "pod"
	ClientHost = "host"
)

// Load models (Workload.Model).
const (
	ModelClosed = "closed"
	ModelOpen   = "open"
)

// MaxLoadFraction bounds Workload.LoadFractions: past 1 the slowest
// datapath is overloaded on purpose (its overload errors show it).
const MaxLoadFraction = 2.0

// OpenLoop says whether the workload has an open-loop phase.
func (w *Workload) OpenLoop() bool { return w.Model == ModelOpen }

// Names lists the built-in scenarios.
func Names() []string {
	ents, _ := builtin.ReadDir(".")
	var out []string
	for _, e := range ents {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(out)
	return out
}

// Load reads a built-in scenario by name, or a scenario file by path.
func Load(nameOrFile string) (*Scenario, error) {
	var b []byte
	var err error
	if !strings.ContainsAny(nameOrFile, "/.") {
		b, err = builtin.ReadFile(nameOrFile + ".yaml")
		if err != nil {
			return nil, fmt.Errorf("scenario: %q is neither a built-in scenario (%s) nor a file path", nameOrFile, strings.Join(Names(), ", "))
		}
	} else if b, err = readFile(nameOrFile); err != nil {
		return nil, fmt.Errorf("scenario: cannot read %s: %w", nameOrFile, err)
	}
	return Parse(b, nameOrFile)
}

// Parse decodes a YAML (or JSON) scenario strictly and validates it. An
// error names the source, the line and the key path of every refused
// field (see FieldError, SourceError).
func Parse(b []byte, source string) (*Scenario, error) {
	var s Scenario
	ln, err := decodeStrict(b, &s)
	if err != nil {
		return nil, fileError("scenario", source, err, ln)
	}
	if err := s.Validate(); err != nil {
		return nil, fileError("scenario", source, err, ln)
	}
	return &s, nil
}

// Validate checks every field, before anything is built, and refuses
// every value that can only fail later: address ranges no pod or Service
// can use, names that are not Kubernetes names (they end up in rulesets),
// durations past a day. It returns every refused field, each a
// *FieldError named by its key in the file.
func (s *Scenario) Validate() error {
	var errs []error
	bad := func(kind error, field, format string, args ...any) {
		errs = append(errs, fieldErr(kind, field, format, args...))
	}
	badErr := func(kind error, field string, err error) {
		if err != nil {
			errs = append(errs, &FieldError{Field: field, Msg: err.Error(), Kind: kind})
		}
	}
	if s.Name == "" {
		bad(ErrName, "name", "must not be empty")
	} else if len(s.Name) > MaxLabelLength || !scenarioName.MatchString(s.Name) {
		bad(ErrName, "name", "%q is not a scenario name (letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most %d characters)", truncate(s.Name), MaxLabelLength)
	}
	badErr(ErrInvalid, "description", checkPrintable(s.Description))
	if s.Topology.Clients < 1 || s.Topology.Clients > MaxClients {
		bad(ErrInvalid, "topology.clients", "%d is out of range [1, %d]", s.Topology.Clients, MaxClients)
	}
	if s.Topology.Backends < 1 || s.Topology.Backends > MaxBackends {
		bad(ErrInvalid, "topology.backends", "%d is out of range [1, %d]", s.Topology.Backends, MaxBackends)
	}
	if s.Topology.Nodes < 0 || s.Topology.Nodes > MaxNodes {
		bad(ErrInvalid, "topology.nodes", "%d is out of range [1, %d] (each node is a namespace with its own datapath instance)", s.Topology.Nodes, MaxNodes)
	}
	s.validateRanges(bad, badErr)
	if s.Service.Port < 1 || s.Service.Port > 65535 {
		bad(ErrInvalid, "service.port", "%d is not a port (1-65535)", s.Service.Port)
	}
	if s.Service.TargetPort < 1 || s.Service.TargetPort > 65535 {
		bad(ErrInvalid, "service.targetPort", "%d is not a port (1-65535)", s.Service.TargetPort)
	}
	switch s.Service.Protocol {
	case "TCP":
		if s.Workload.UDPMode != "" {
			bad(ErrInvalid, "workload.udpMode", "is only for UDP services")
		}
	case "UDP":
		if m := s.Workload.UDPMode; m != "" && !slices.Contains(UDPModes, m) {
			bad(ErrInvalid, "workload.udpMode", "%q is not one of %s", m, strings.Join(UDPModes, ", "))
		}
	default:
		bad(ErrInvalid, "service.protocol", "%q is not supported by this workload (TCP or UDP)", s.Service.Protocol)
	}
	switch s.Service.Family() {
	case IPv4, IPv6:
	default:
		bad(ErrInvalid, "service.ipFamily", "%q is not one of %s, %s", s.Service.IPFamily, IPv4, IPv6)
	}
	switch s.Workload.Client {
	case "", ClientPod:
	case ClientHost:
		if s.Service.Family() == IPv6 {
			// The node's own namespace has no global IPv6 address to
			// send from (its gateways are link-local).
			bad(ErrInvalid, "workload.client", "%s is IPv4 only: service.ipFamily %s needs a client pod", ClientHost, IPv6)
		}
	default:
		bad(ErrInvalid, "workload.client", "%q is not one of %s, %s", s.Workload.Client, ClientPod, ClientHost)
	}
	// The names go into nft and iptables scripts: only Kubernetes names.
	badErr(ErrName, "service.namespace", CheckNamespace(s.Service.Namespace))
	badErr(ErrName, "service.name", CheckServiceName(s.Service.Name))
	if len(s.Workload.Concurrency) == 0 {
		bad(ErrInvalid, "workload.concurrency", "needs at least one level")
	}
	for _, c := range s.Workload.Concurrency {
		if c < 1 || c > 1024 {
			bad(ErrInvalid, "workload.concurrency", "%d is out of range [1, 1024]", c)
		}
	}
	if e := checkDuration("workload.duration", s.Workload.Duration, Duration(100*time.Millisecond)); e != nil {
		errs = append(errs, e)
	}
	if e := checkDuration("workload.warmup", s.Workload.Warmup, 0); e != nil {
		errs = append(errs, e)
	}
	if c := s.Workload.AttributionConcurrency; c != 0 && !slices.Contains(s.Workload.Concurrency, c) {
		bad(ErrInvalid, "workload.attributionConcurrency", "%d is not one of workload.concurrency %v (0 picks the level nearest %d)", c, s.Workload.Concurrency, DefaultAttributionConcurrency)
	}
	if d := s.Workload.AttributionDuration; d != 0 {
		if e := checkDuration("workload.attributionDuration", d, Duration(100*time.Millisecond)); e != nil {
			errs = append(errs, e)
		}
	}
	if s.Workload.Repetitions < 1 || s.Workload.Repetitions > 100 {
		bad(ErrInvalid, "workload.repetitions", "%d is out of range [1, 100]", s.Workload.Repetitions)
	}
	if f := s.Workload.MaxErrorFraction; !(f >= 0 && f <= 1) {
		bad(ErrInvalid, "workload.maxErrorFraction", "%v is out of range [0, 1]", f)
	}
	if p := s.Workload.Placement; p != "" && !slices.Contains(Placements, p) {
		bad(ErrInvalid, "workload.placement", "%q is not one of %s", p, strings.Join(Placements, ", "))
	}
	switch s.Workload.Model {
	case "", ModelClosed:
		if len(s.Workload.LoadFractions) > 0 {
			bad(ErrInvalid, "workload.loadFractions", "is only for model %s", ModelOpen)
		}
	case ModelOpen:
		if len(s.Workload.LoadFractions) == 0 {
			bad(ErrInvalid, "workload.loadFractions", "model %s needs at least one fraction of capacity (e.g. [0.5, 0.8])", ModelOpen)
		}
		for _, f := range s.Workload.LoadFractions {
			if !(f > 0 && f <= MaxLoadFraction) {
				bad(ErrInvalid, "workload.loadFractions", "%v is out of range (0, %g]", f, MaxLoadFraction)
			}
		}
		if s.Scale != nil {
			bad(ErrInvalid, "workload.model", "%s is not supported with scale (capacity is measured at one scale point)", ModelOpen)
		}
	default:
		bad(ErrInvalid, "workload.model", "%q is not one of %s, %s", s.Workload.Model, ModelClosed, ModelOpen)
	}
	if sc := s.Scale; sc != nil {
		if len(sc.Services) == 0 {
			bad(ErrInvalid, "scale.services", "needs at least one count")
		}
		for _, n := range sc.Services {
			if n < 1 || n > MaxServices {
				bad(ErrInvalid, "scale.services", "%d is out of range [1, %d]", n, MaxServices)
			}
		}
		if sc.Endpoints < 0 || sc.Endpoints > s.Topology.Backends {
			bad(ErrInvalid, "scale.endpoints", "%d is out of range [0, topology.backends=%d] (0 means every backend)", sc.Endpoints, s.Topology.Backends)
		}
		for _, n := range sc.EndpointSweep {
			if n < 1 || n > MaxSweepEndpoints {
				bad(ErrInvalid, "scale.endpointSweep", "%d is out of range [1, %d]", n, MaxSweepEndpoints)
			}
		}
		if e := checkDuration("scale.applyTimeout", sc.ApplyTimeout, 0); e != nil {
			errs = append(errs, e)
		}
	}
	if q := s.Quick; q != nil {
		if q.Repetitions < 0 || q.Repetitions > 100 {
			bad(ErrInvalid, "quick.repetitions", "%d is out of range [0, 100] (0 means 1)", q.Repetitions)
		}
		if e := checkDuration("quick.warmup", q.Warmup, 0); e != nil {
			errs = append(errs, e)
		}
		if e := checkDuration("quick.duration", q.Duration, 0); e != nil {
			errs = append(errs, e)
		}
		if s.Scale == nil && (len(q.Services) > 0 || len(q.EndpointSweep) > 0) {
			bad(ErrInvalid, "quick.services", "services and endpointSweep are only for a scenario with scale")
		}
		checkDatapaths(bad, "quick.datapaths", q.Datapaths, true)
	}
	checkDatapaths(bad, "datapaths", s.Datapaths, false)
	return errors.Join(errs...)
}

// checkDatapaths refuses an empty (unless optional) or repeated list, and
// names that are not words: a datapath name is looked up in the registry
// later, but it is printed before that.
func checkDatapaths(bad func(error, string, string, ...any), field string, dps []string, optional bool) {
	if len(dps) == 0 && !optional {
		bad(ErrInvalid, field, "needs at least one datapath")
	}
	seen := map[string]bool{}
	for _, d := range dps {
		if seen[d] {
			bad(ErrInvalid, field, "%q is listed twice", d)
		}
		seen[d] = true
		if !scenarioName.MatchString(d) {
			bad(ErrName, field, "%q is not a datapath name (see 'svclab datapaths')", truncate(d))
		}
	}
}

// validateRanges refuses pod and Service CIDRs no pod or Service can use,
// that overlap each other, or that are too small for the pods and the
// ClusterIPs (services get consecutive ClusterIPs from the 10th address:
// a sweep past the end of the range would program addresses outside it).
func (s *Scenario) validateRanges(bad func(error, string, string, ...any), badErr func(error, string, error)) {
	pods, perr := ParseRange(s.Topology.PodCIDR, "10.244.0.0/16")
	badErr(ErrRange, "topology.podCIDR", perr)
	svcs, serr := ParseRange(s.Topology.ServiceCIDR, "10.96.0.0/16")
	badErr(ErrRange, "topology.serviceCIDR", serr)
	if perr == nil && !pods.Addr().Is4() {
		bad(ErrRange, "topology.podCIDR", "%s is not IPv4: bench topologies are IPv4 (e.g. 10.244.0.0/16)", pods)
		perr = ErrRange
	}
	if serr == nil && !svcs.Addr().Is4() {
		bad(ErrRange, "topology.serviceCIDR", "%s is not IPv4: bench topologies are IPv4 (e.g. 10.96.0.0/16)", svcs)
		serr = ErrRange
	}
	s.validateRanges6(bad, badErr)
	if perr != nil || serr != nil {
		return
	}
	if pods.Overlaps(svcs) {
		bad(ErrRange, "topology.serviceCIDR", "%s overlaps topology.podCIDR %s: they must be disjoint", svcs, pods)
		return
	}
	if s.Topology.UnderlayCIDR != "" {
		under, uerr := ParseRange(s.Topology.UnderlayCIDR, "172.18.0.0/24")
		badErr(ErrRange, "topology.underlayCIDR", uerr)
		switch {
		case uerr != nil:
		case !under.Addr().Is4():
			bad(ErrRange, "topology.underlayCIDR", "%s is not IPv4 (e.g. 172.18.0.0/24)", under)
		case under.Overlaps(pods) || under.Overlaps(svcs):
			bad(ErrRange, "topology.underlayCIDR", "%s overlaps topology.podCIDR %s or topology.serviceCIDR %s: they must be disjoint", under, pods, svcs)
		}
	}
	if need := s.Topology.Clients + s.Topology.Backends; hosts(pods) < need {
		bad(ErrRange, "topology.podCIDR", "%s has %d host addresses; %d pods (topology.clients + topology.backends) need one each", pods, hosts(pods), need)
	}
	maxSvcs := 1
	for _, n := range s.ServiceCounts() {
		maxSvcs = max(maxSvcs, n)
	}
	if maxSvcs > 1 && hosts(svcs) < 9+maxSvcs {
		bad(ErrRange, "topology.serviceCIDR", "%s has %d host addresses; scale.services up to %d needs %d (ClusterIPs from the 10th address on)", svcs, hosts(svcs), maxSvcs, 9+maxSvcs)
	} else if hosts(svcs) < 1 {
		bad(ErrRange, "topology.serviceCIDR", "%s has no host address for a ClusterIP", svcs)
	}
}

// validateRanges6 checks the IPv6 ranges of a dual-stack node as
// validateRanges does the IPv4 ones, and refuses what IPv6 cannot do here:
// the endpoint sweep's extra addresses are IPv4 only.
func (s *Scenario) validateRanges6(bad func(error, string, string, ...any), badErr func(error, string, error)) {
	p6, s6 := s.Ranges6()
	if p6 == "" {
		return
	}
	pods, perr := ParseRange(p6, DefaultPodCIDR6)
	badErr(ErrRange, "topology.podCIDR6", perr)
	svcs, serr := ParseRange(s6, DefaultServiceCIDR6)
	badErr(ErrRange, "topology.serviceCIDR6", serr)
	if perr == nil && (!pods.Addr().Is6() || pods.Addr().Is4In6()) {
		bad(ErrRange, "topology.podCIDR6", "%s is not IPv6 (e.g. %s)", pods, DefaultPodCIDR6)
		perr = ErrRange
	}
	if serr == nil && (!svcs.Addr().Is6() || svcs.Addr().Is4In6()) {
		bad(ErrRange, "topology.serviceCIDR6", "%s is not IPv6 (e.g. %s)", svcs, DefaultServiceCIDR6)
		serr = ErrRange
	}
	if s.Service.Family() == IPv6 && s.MaxEndpoints() > s.Topology.Backends {
		bad(ErrInvalid, "scale.endpointSweep", "endpoints past topology.backends are extra IPv4 addresses: service.ipFamily %s has one endpoint per backend pod (at most %d)", IPv6, s.Topology.Backends)
	}
	if perr != nil || serr != nil {
		return
	}
	if pods.Overlaps(svcs) {
		bad(ErrRange, "topology.serviceCIDR6", "%s overlaps topology.podCIDR6 %s: they must be disjoint", svcs, pods)
		return
	}
	if need := s.Topology.Clients + s.Topology.Backends; hosts(pods) < need {
		bad(ErrRange, "topology.podCIDR6", "%s has %d host addresses; %d pods (topology.clients + topology.backends) need one each", pods, hosts(pods), need)
	}
	maxSvcs := slices.Max(append([]int{1}, s.ServiceCounts()...))
	if s.Service.Family() == IPv6 && hosts(svcs) < 9+maxSvcs {
		bad(ErrRange, "topology.serviceCIDR6", "%s has %d host addresses; %d service(s) need %d (ClusterIPs from the 10th address on)", svcs, hosts(svcs), maxSvcs, 9+maxSvcs)
	}
}

// Builtin returns the text of a built-in scenario.
func Builtin(name string) ([]byte, error) { return builtin.ReadFile(name + ".yaml") }
