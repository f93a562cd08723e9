package scenarios

import (
	"embed"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// The conformance scenarios: one YAML file per checked behaviour.
//
//go:embed conformance/*.yaml
var conformanceFS embed.FS

// Conformance is one conformance scenario: a Kubernetes Service behaviour,
// the services that show it, the socket operations a client performs and
// what it must observe. It is data; harness.Conform runs it against every
// datapath the same way.
type Conformance struct {
	// Name is the scenario's identifier (its file name without .yaml).
	Name string `json:"name"`
	// Behaviour states the Kubernetes behaviour checked, in one sentence.
	Behaviour string `json:"behaviour"`
	// Source is where Kubernetes states it: e2e test names verbatim, or
	// the API documentation.
	Source string `json:"source"`
	// Notes say what known implementations do, or how the check maps to
	// the e2e test.
	Notes string `json:"notes,omitempty"`
	// Family is "ipv4" (default) or "ipv6": which addresses the services,
	// endpoints and probes use.
	Family string `json:"family,omitempty"`
	// Backends is the number of backend pods (default 12).
	Backends int `json:"backends,omitempty"`
	// Nodes is the node count the scenario is written for (its
	// expectations name which backends share the client's node); unset,
	// the scenario runs on `svclab conform --nodes` (default 1). Backends
	// are spread round-robin (backend i on node i % nodes), clients on
	// node 0.
	Nodes    int                  `json:"nodes,omitempty"`
	Services []ConformanceService `json:"services"`
	Steps    []Step               `json:"steps"`
	// Report names an observation shown in the table even when the
	// scenario passes: "errno" (what the failures were and how fast), or
	// "backends" (how many distinct backends answered).
	Report string `json:"report,omitempty"`
	// Advisory, if set, says why the scenario shows a known structural
	// difference rather than a requirement: its failures are in the table
	// but `svclab conform --strict` does not count them.
	Advisory string `json:"advisory,omitempty"`
	// NeedsService says the behaviour exists only where a Service sits
	// between client and endpoints (refusing with no endpoints, affinity,
	// following endpoint changes under a running client): a datapath that
	// implements no Service (datapath.Scope.NoService) shows the row as
	// n/a, not as a failure of something it never claimed to do.
	NeedsService bool `json:"needsService,omitempty"`
}

// HostClient reports whether a probe of the scenario runs in the node's own
// network namespace (from: host), which only a datapath serving hostNetwork
// clients can answer.
func (c *Conformance) HostClient() bool {
	for _, st := range c.Steps {
		if st.Probe != nil && st.Probe.From == "host" {
			return true
		}
	}
	return false
}

// ConformanceService is one ClusterIP service of a scenario; services get
// consecutive ClusterIPs from the service CIDR's 10th address on.
type ConformanceService struct {
	Name  string            `json:"name"`
	Ports []ConformancePort `json:"ports,omitempty"`
	// Endpoints; in an update, a missing list leaves them as they were and
	// an empty list removes them all.
	Endpoints []EndpointSet `json:"endpoints,omitempty"`
	// SessionAffinity is None (default) or ClientIP.
	SessionAffinity string `json:"sessionAffinity,omitempty"`
	// InternalTrafficPolicy is Cluster (default) or Local: a node's
	// clients reach that node's endpoints only (backend i is on node
	// i % nodes, the clients on node 0).
	InternalTrafficPolicy string `json:"internalTrafficPolicy,omitempty"`
	// AffinityTimeoutSeconds is sessionAffinityConfig.clientIP.timeoutSeconds
	// (default 10800, as in Kubernetes).
	AffinityTimeoutSeconds int `json:"affinityTimeoutSeconds,omitempty"`
}

// ConformancePort is one service port.
type ConformancePort struct {
	Name       string `json:"name"`
	Protocol   string `json:"protocol"`
	Port       int    `json:"port"`
	TargetPort int    `json:"targetPort"`
}

// EndpointSet is a group of backend pods with the same EndpointSlice
// conditions.
type EndpointSet struct {
	// Pods are backend pod indexes: "0-11", "3", "0,2,5-7".
	Pods string `json:"pods"`
	// Ready defaults to true; Serving defaults to Ready.
	Ready       *bool `json:"ready,omitempty"`
	Serving     *bool `json:"serving,omitempty"`
	Terminating bool  `json:"terminating,omitempty"`
}

// IsReady returns Ready with its default.
func (e EndpointSet) IsReady() bool { return e.Ready == nil || *e.Ready }

// IsServing returns Serving with its default.
func (e EndpointSet) IsServing() bool {
	if e.Serving != nil {
		return *e.Serving
	}
	return e.IsReady()
}

// Step is one thing the runner does, in order. Exactly one of Probe,
// Update, Kill, Sleep and Wait is set. Every step that has an ID leaves two
// time marks, when it began and when it completed (an update: when Apply
// returned; a background probe: when it started), which expectations use
// as windows.
type Step struct {
	ID string `json:"id,omitempty"`
	// Probe runs socket operations from a pod.
	Probe *ProbeStep `json:"probe,omitempty"`
	// Update changes services (matched by name; set fields replace) and
	// applies the whole new state to the datapath.
	Update []ConformanceService `json:"update,omitempty"`
	// Kill stops the backend server of these pods (pod indexes), as if the
	// pods were deleted: nothing answers on their addresses any more.
	Kill string `json:"kill,omitempty"`
	// Sleep pauses the runner (background probes keep running).
	Sleep Duration `json:"sleep,omitempty"`
	// Wait waits for the background probe with this ID to finish.
	Wait string `json:"wait,omitempty"`
	// LateReply makes a backend send a datagram to a client socket out of
	// turn, as a backend answering late after the client moved on does.
	LateReply *LateReply `json:"lateReply,omitempty"`
	// Expect is checked on the probe's attempts (a foreground probe, or
	// the background probe a Wait step waits for).
	Expect []Expect `json:"expect,omitempty"`
}

// LateReply is one datagram from a backend pod, from the target port of a
// UDP service port, to a probe's socket bound to LocalPort. The probe
// records it as late (not as a reply) and the late-from check judges its
// source. A raw socket sends it, so the backend's server keeps its port.
type LateReply struct {
	// Pod is the sending backend's index.
	Pod string `json:"pod"`
	// Service and Port name the UDP service port whose target port is the
	// datagram's source port.
	Service string `json:"service"`
	Port    string `json:"port"`
	// To is the probe's pod, as ProbeStep.From (default client).
	To string `json:"to,omitempty"`
	// LocalPort is the port the probe's socket is bound to.
	LocalPort int `json:"localPort"`
}

// Probe operations, as harness.ProbeSpec.Op.
var probeOps = []string{"tcp", "udp", "udp-connected", "udp-reconnect"}

// ProbeStep is a probe run: the same operation Count times or for Duration.
type ProbeStep struct {
	// From is "client" (default: client-0), "backend:N" (hairpin) or
	// "host" (a hostNetwork client in the node's namespace; ipv4 only).
	From string `json:"from,omitempty"`
	// Op is tcp, udp (unconnected sendto/recvfrom), udp-connected or
	// udp-reconnect (connect to the target, connect(AF_UNSPEC), connect to
	// ReconnectTo).
	Op     string `json:"op"`
	Target Target `json:"target"`
	// ReconnectTo is udp-reconnect's second destination.
	ReconnectTo *Target `json:"reconnectTo,omitempty"`
	// Socket is "per-attempt" (default) or "long-lived" (UDP only).
	Socket string `json:"socket,omitempty"`
	// V4Mapped uses an AF_INET6 socket and ::ffff:a.b.c.d targets.
	V4Mapped bool `json:"v4mapped,omitempty"`
	// LocalPort binds every socket to this port.
	LocalPort int      `json:"localPort,omitempty"`
	Count     int      `json:"count,omitempty"`
	Duration  Duration `json:"duration,omitempty"`
	Interval  Duration `json:"interval,omitempty"`
	// Timeout bounds one attempt (default 1s).
	Timeout Duration `json:"timeout,omitempty"`
	// Resend (UDP) sends the request again after this long without a
	// reply, until Timeout.
	Resend Duration `json:"resend,omitempty"`
	// ReconnectOnError (long-lived sockets) opens a new socket after an
	// error other than a timeout, as an application handling it would.
	ReconnectOnError bool `json:"reconnectOnError,omitempty"`
	// Background starts the probe and goes on with the next step; a later
	// Wait step collects it.
	Background bool `json:"background,omitempty"`
}

// Target is where a probe sends: a service port (through the datapath's
// Targets), a port of a service's ClusterIP that is not a service port
// (RawPort), or a pod's own address.
type Target struct {
	Service string `json:"service,omitempty"`
	// Port names a service port.
	Port string `json:"port,omitempty"`
	// RawPort is a port number used on the service's ClusterIP as is.
	RawPort int `json:"rawPort,omitempty"`
	// Pod is "backend:N": that pod's address, at PodPort.
	Pod     string `json:"pod,omitempty"`
	PodPort int    `json:"podPort,omitempty"`
}

// Expect is one check on a probe's attempts. The window (After, Grace,
// Before, Phase) selects the attempts checked.
type Expect struct {
	Check string `json:"check"`
	// After is a step ID: only attempts that started after that step's
	// mark plus Grace count.
	After string   `json:"after,omitempty"`
	Grace Duration `json:"grace,omitempty"`
	// Before is a step ID: only attempts that started before that step
	// began (a change may show while its step runs).
	Before string `json:"before,omitempty"`
	// Phase selects udp-reconnect records: "first" or "second".
	Phase string `json:"phase,omitempty"`

	// Pods (backend indexes) for reached, only, not-reached, reaches,
	// spread and recovers.
	Pods string `json:"pods,omitempty"`
	// Errno lists accepted errno names for the errno check.
	Errno []string `json:"errno,omitempty"`
	// Within is the bound of fail-within and recovers.
	Within Duration `json:"within,omitempty"`
	// Alpha is the spread test's significance level.
	Alpha float64 `json:"alpha,omitempty"`
	// Min is distinct's lower bound.
	Min int `json:"min,omitempty"`
	// Port is target-port's expected target port.
	Port int `json:"port,omitempty"`
	// Equals is what peer and reply-from compare with: "dialed" (the
	// address the client used: VIP:port for a service) or "backend" (the
	// answering backend's own address and target port).
	Equals string `json:"equals,omitempty"`
}

// Checks an Expect can name, with what each means.
var Checks = map[string]string{
	"ok":                "every attempt got a backend's reply",
	"fail":              "no attempt got a backend's reply",
	"errno":             "every attempt failed with one of errno",
	"fail-within":       "every failed attempt failed within `within` (no long timeout)",
	"reached":           "the backends that answered are exactly pods",
	"only":              "every reply came from pods",
	"not-reached":       "no reply came from pods",
	"reaches":           "every pod of pods answered at least once",
	"spread":            "replies from pods fit a uniform distribution (chi-square, significance alpha)",
	"single-backend":    "every reply came from one backend",
	"distinct":          "at least min distinct backends answered",
	"peer":              "getpeername() equals `equals` on every attempt",
	"reply-from":        "every reply datagram's source equals `equals`",
	"target-port":       "every reply came from target port `port`",
	"recovers":          "from the `after` mark, within `within`, every later attempt is answered (by pods, if given)",
	"local-port-stable": "every attempt used the same local port",
	"late-from":         "every late datagram (a lateReply step's) the socket received came from `equals`; none received passes",
}

// ConformanceNames lists the built-in conformance scenarios, sorted.
func ConformanceNames() []string {
	ents, _ := conformanceFS.ReadDir("conformance")
	var out []string
	for _, e := range ents {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(out)
	return out
}

// LoadConformance reads a built-in conformance scenario by name, or a file
// by path.
func LoadConformance(nameOrFile string) (*Conformance, error) {
	var b []byte
	var err error
	name := nameOrFile
	if !strings.ContainsAny(nameOrFile, "/.") {
		if b, err = conformanceFS.ReadFile("conformance/" + nameOrFile + ".yaml"); err != nil {
			return nil, fmt.Errorf("conformance scenario: %q is neither a built-in one (%s) nor a file path", nameOrFile, strings.Join(ConformanceNames(), ", "))
		}
	} else {
		if b, err = readFile(nameOrFile); err != nil {
			return nil, fmt.Errorf("conformance scenario: cannot read %s: %w", nameOrFile, err)
		}
		name = strings.TrimSuffix(nameOrFile[strings.LastIndex(nameOrFile, "/")+1:], ".yaml")
		return parseConformance(b, name, nameOrFile)
	}
	return ParseConformance(b, name)
}

// LoadAllConformance reads every built-in conformance scenario.
func LoadAllConformance() ([]*Conformance, error) {
	var out []*Conformance
	for _, n := range ConformanceNames() {
		c, err := LoadConformance(n)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// ParseConformance decodes a conformance scenario strictly and validates
// it; name is used when the file has no name field.
func ParseConformance(b []byte, name string) (*Conformance, error) {
	return parseConformance(b, name, name)
}

// parseConformance is ParseConformance with the source (the file path)
// that errors name.
func parseConformance(b []byte, name, source string) (*Conformance, error) {
	var c Conformance
	ln, err := decodeStrict(b, &c)
	if err != nil {
		return nil, fileError("conformance scenario", source, err, ln)
	}
	if c.Name == "" {
		c.Name = name
	}
	if c.Backends == 0 {
		c.Backends = 12
	}
	if c.Family == "" {
		c.Family = "ipv4"
	}
	if err := c.Validate(); err != nil {
		return nil, fileError("conformance scenario", source, err, ln)
	}
	return &c, nil
}

// ParsePods parses a backend index set such as "0-11" or "0,2,5-7" into
// sorted, distinct indexes, each below n.
func ParsePods(s string, n int) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("%q is not a pod index or range such as 0-11", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil || b < a {
				return nil, fmt.Errorf("%q is not a range low-high", part)
			}
		}
		if a < 0 || b >= n {
			return nil, fmt.Errorf("%q: pod indexes run from 0 to %d", part, n-1)
		}
		for i := a; i <= b; i++ {
			if !seen[i] {
				seen[i] = true
				out = append(out, i)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}

// From values ParseFrom returns besides a backend index.
const (
	// FromClient is the first client pod.
	FromClient = -1
	// FromHost is a hostNetwork client: a process in the node's own
	// network namespace.
	FromHost = -2
)

// ParseFrom parses a probe's From: FromClient, FromHost ("host"), else a
// backend index.
func ParseFrom(s string, backends int) (int, error) {
	if s == "" || s == "client" {
		return FromClient, nil
	}
	if s == "host" {
		return FromHost, nil
	}
	idx, ok := strings.CutPrefix(s, "backend:")
	if !ok {
		return 0, fmt.Errorf("%q is neither client, host nor backend:N", s)
	}
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || i >= backends {
		return 0, fmt.Errorf("%q: backend index must be in [0, %d]", s, backends-1)
	}
	return i, nil
}

// Validate checks the scenario and names the field at fault.
func (c *Conformance) Validate() error {
	if len(c.Name) > MaxLabelLength || !scenarioName.MatchString(c.Name) {
		return fieldErr(ErrName, "name", "%q is not a scenario name (letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most %d characters)", truncate(c.Name), MaxLabelLength)
	}
	for _, t := range []struct{ field, text string }{{"behaviour", c.Behaviour}, {"source", c.Source}, {"notes", c.Notes}, {"advisory", c.Advisory}} {
		if err := checkPrintable(t.text); err != nil {
			return fieldErr(ErrInvalid, t.field, "%v", err)
		}
	}
	if c.Behaviour == "" {
		return fmt.Errorf("behaviour: required")
	}
	if c.Source == "" {
		return fmt.Errorf("source: required")
	}
	if c.Family != "ipv4" && c.Family != "ipv6" {
		return fmt.Errorf("family: %q is not ipv4 or ipv6", c.Family)
	}
	if c.Backends < 1 || c.Backends > 64 {
		return fmt.Errorf("backends: %d is out of range [1, 64]", c.Backends)
	}
	if c.Nodes < 0 || c.Nodes > MaxNodes {
		return fmt.Errorf("nodes: %d is out of range [1, %d]", c.Nodes, MaxNodes)
	}
	switch c.Report {
	case "", "errno", "backends":
	default:
		return fmt.Errorf("report: %q is not errno or backends", c.Report)
	}
	if len(c.Services) == 0 {
		return fmt.Errorf("services: none given")
	}
	svcs := map[string]*ConformanceService{}
	for i := range c.Services {
		s := &c.Services[i]
		if err := c.validateService(s, true); err != nil {
			return fmt.Errorf("services[%d].%w", i, err)
		}
		if svcs[s.Name] != nil {
			return fmt.Errorf("services[%d].name: %q is used twice", i, s.Name)
		}
		svcs[s.Name] = s
	}
	// Ports of every service across updates, to check probe targets.
	ports := map[string]map[string]bool{}
	addPorts := func(s ConformanceService) {
		if ports[s.Name] == nil {
			ports[s.Name] = map[string]bool{}
		}
		for _, p := range s.Ports {
			ports[s.Name][p.Name] = true
		}
	}
	for _, s := range c.Services {
		addPorts(s)
	}
	marks := map[string]bool{}
	background := map[string]bool{}
	waited := map[string]bool{}
	if len(c.Steps) == 0 {
		return fmt.Errorf("steps: none given")
	}
	for i, st := range c.Steps {
		at := fmt.Sprintf("steps[%d]", i)
		n := 0
		for _, set := range []bool{st.Probe != nil, st.Update != nil, st.Kill != "", st.Sleep != 0, st.Wait != "", st.LateReply != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%s: exactly one of probe, update, kill, sleep, wait and lateReply must be set", at)
		}
		if st.ID != "" {
			if marks[st.ID] {
				return fmt.Errorf("%s.id: %q is used twice", at, st.ID)
			}
		}
		switch {
		case st.Probe != nil:
			if err := c.validateProbe(st.Probe, ports); err != nil {
				return fmt.Errorf("%s.probe.%w", at, err)
			}
			if st.Probe.Background {
				if st.ID == "" {
					return fmt.Errorf("%s.id: a background probe needs an id for its wait step", at)
				}
				if len(st.Expect) > 0 {
					return fmt.Errorf("%s.expect: a background probe's expectations go on its wait step", at)
				}
				background[st.ID] = true
			}
		case st.Update != nil:
			for j := range st.Update {
				u := &st.Update[j]
				if svcs[u.Name] == nil {
					return fmt.Errorf("%s.update[%d].name: %q is not a service of the scenario", at, j, u.Name)
				}
				if err := c.validateService(u, false); err != nil {
					return fmt.Errorf("%s.update[%d].%w", at, j, err)
				}
				addPorts(*u)
			}
		case st.Kill != "":
			if _, err := ParsePods(st.Kill, c.Backends); err != nil {
				return fmt.Errorf("%s.kill: %w", at, err)
			}
		case st.Sleep != 0:
			if e := checkDuration(at+".sleep", st.Sleep, 0); e != nil {
				return e
			}
		case st.LateReply != nil:
			if err := c.validateLateReply(st.LateReply, svcs); err != nil {
				return fmt.Errorf("%s.lateReply.%w", at, err)
			}
		case st.Wait != "":
			if !background[st.Wait] {
				return fmt.Errorf("%s.wait: %q is not an earlier background probe", at, st.Wait)
			}
			if waited[st.Wait] {
				return fmt.Errorf("%s.wait: %q is waited for twice", at, st.Wait)
			}
			waited[st.Wait] = true
		}
		if len(st.Expect) > 0 && (st.Probe == nil || st.Probe.Background) && st.Wait == "" {
			return fmt.Errorf("%s.expect: only a probe or a wait step has expectations", at)
		}
		for j, e := range st.Expect {
			if err := c.validateExpect(e, marks, st.ID); err != nil {
				return fmt.Errorf("%s.expect[%d].%w", at, j, err)
			}
		}
		if st.ID != "" {
			marks[st.ID] = true
		}
	}
	for id := range background {
		if !waited[id] {
			return fmt.Errorf("steps: background probe %q is never waited for", id)
		}
	}
	return nil
}

func (c *Conformance) validateLateReply(l *LateReply, svcs map[string]*ConformanceService) error {
	i, err := ParseFrom("backend:"+l.Pod, c.Backends)
	if err != nil || i < 0 {
		return fmt.Errorf("pod: %q is not a backend index", l.Pod)
	}
	if to, err := ParseFrom(l.To, c.Backends); err != nil || to == FromHost {
		return fmt.Errorf("to: %q is not client or backend:N", l.To)
	}
	s := svcs[l.Service]
	if s == nil {
		return fmt.Errorf("service: %q is not a service of the scenario", l.Service)
	}
	found := false
	for _, p := range s.Ports {
		if p.Name == l.Port {
			if p.Protocol != "UDP" {
				return fmt.Errorf("port: %q is %s; a late reply is a UDP datagram", l.Port, p.Protocol)
			}
			found = true
		}
	}
	if !found {
		return fmt.Errorf("port: service %q has no port named %q", l.Service, l.Port)
	}
	if l.LocalPort < 1 || l.LocalPort > 65535 {
		return fmt.Errorf("localPort: %d is out of range [1, 65535]", l.LocalPort)
	}
	return nil
}

func (c *Conformance) validateService(s *ConformanceService, initial bool) error {
	// The name goes into nft and iptables scripts: only Kubernetes names.
	if err := CheckServiceName(s.Name); err != nil {
		return fieldErr(ErrName, "name", "%v", err)
	}
	if initial && len(s.Ports) == 0 {
		return fmt.Errorf("ports: none given")
	}
	names := map[string]bool{}
	for i, p := range s.Ports {
		if err := CheckPortName(p.Name); err != nil {
			return fieldErr(ErrName, fmt.Sprintf("ports[%d].name", i), "%v", err)
		}
		if names[p.Name] {
			return fmt.Errorf("ports[%d].name: %q is used twice", i, p.Name)
		}
		names[p.Name] = true
		if p.Protocol != "TCP" && p.Protocol != "UDP" {
			return fmt.Errorf("ports[%d].protocol: %q is not TCP or UDP", i, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("ports[%d].port: %d is out of range [1, 65535]", i, p.Port)
		}
		if p.TargetPort < 1 || p.TargetPort > 65535 {
			return fmt.Errorf("ports[%d].targetPort: %d is out of range [1, 65535]", i, p.TargetPort)
		}
	}
	for i, e := range s.Endpoints {
		if _, err := ParsePods(e.Pods, c.Backends); err != nil {
			return fmt.Errorf("endpoints[%d].pods: %w", i, err)
		}
	}
	switch s.SessionAffinity {
	case "", "None", "ClientIP":
	default:
		return fmt.Errorf("sessionAffinity: %q is not None or ClientIP", s.SessionAffinity)
	}
	switch s.InternalTrafficPolicy {
	case "", "Cluster", "Local":
	default:
		return fmt.Errorf("internalTrafficPolicy: %q is not Cluster or Local", s.InternalTrafficPolicy)
	}
	if s.AffinityTimeoutSeconds < 0 || s.AffinityTimeoutSeconds > 86400 {
		return fmt.Errorf("affinityTimeoutSeconds: %d is out of range [1, 86400]", s.AffinityTimeoutSeconds)
	}
	return nil
}

func (c *Conformance) validateTarget(t Target, ports map[string]map[string]bool) error {
	switch {
	case t.Pod != "":
		i, err := ParseFrom(t.Pod, c.Backends)
		if err != nil || i < 0 {
			return fmt.Errorf("pod: %q is not backend:N", t.Pod)
		}
		if t.PodPort < 1 || t.PodPort > 65535 {
			return fmt.Errorf("podPort: %d is out of range [1, 65535]", t.PodPort)
		}
		if t.Service != "" {
			return fmt.Errorf("service: not with pod")
		}
	case t.Service != "":
		if ports[t.Service] == nil {
			return fmt.Errorf("service: %q is not a service of the scenario", t.Service)
		}
		if (t.Port == "") == (t.RawPort == 0) {
			return fmt.Errorf("port: exactly one of port and rawPort must be set")
		}
		if t.Port != "" && !ports[t.Service][t.Port] {
			return fmt.Errorf("port: service %q has no port named %q", t.Service, t.Port)
		}
		if t.RawPort < 0 || t.RawPort > 65535 {
			return fmt.Errorf("rawPort: %d is out of range [1, 65535]", t.RawPort)
		}
	default:
		return fmt.Errorf("service or pod: one is required")
	}
	return nil
}

func (c *Conformance) validateProbe(p *ProbeStep, ports map[string]map[string]bool) error {
	from, err := ParseFrom(p.From, c.Backends)
	if err != nil {
		return fmt.Errorf("from: %w", err)
	}
	if from == FromHost && c.Family != "ipv4" {
		// The node's only address is the IPv4 pod gateway.
		return fmt.Errorf("from: host is for ipv4 scenarios only (the node has no IPv6 address of its own)")
	}
	ok := false
	for _, op := range probeOps {
		ok = ok || p.Op == op
	}
	if !ok {
		return fmt.Errorf("op: %q is not one of %s", p.Op, strings.Join(probeOps, ", "))
	}
	if err := c.validateTarget(p.Target, ports); err != nil {
		return fmt.Errorf("target.%w", err)
	}
	if (p.Op == "udp-reconnect") != (p.ReconnectTo != nil) {
		return fmt.Errorf("reconnectTo: required by op udp-reconnect and only by it")
	}
	if p.ReconnectTo != nil {
		if err := c.validateTarget(*p.ReconnectTo, ports); err != nil {
			return fmt.Errorf("reconnectTo.%w", err)
		}
	}
	switch p.Socket {
	case "", "per-attempt":
	case "long-lived":
		if p.Op != "udp" && p.Op != "udp-connected" {
			return fmt.Errorf("socket: long-lived is for udp and udp-connected only")
		}
	default:
		return fmt.Errorf("socket: %q is not per-attempt or long-lived", p.Socket)
	}
	if p.V4Mapped && c.Family != "ipv4" {
		return fmt.Errorf("v4mapped: only in an ipv4 scenario")
	}
	if p.Resend < 0 || (p.Resend > 0 && p.Op == "tcp") {
		return fmt.Errorf("resend: only for UDP operations, and not negative")
	}
	if p.ReconnectOnError && p.Socket != "long-lived" {
		return fmt.Errorf("reconnectOnError: only with socket long-lived")
	}
	if p.LocalPort < 0 || p.LocalPort > 65535 {
		return fmt.Errorf("localPort: %d is out of range [1, 65535]", p.LocalPort)
	}
	if p.Count < 0 || p.Count > 100000 {
		return fmt.Errorf("count: %d is out of range [1, 100000]", p.Count)
	}
	if p.Count == 0 && p.Duration == 0 {
		return fmt.Errorf("count or duration: one is required")
	}
	for _, d := range []struct {
		field string
		d     Duration
	}{{"duration", p.Duration}, {"interval", p.Interval}, {"timeout", p.Timeout}, {"resend", p.Resend}} {
		if e := checkDuration(d.field, d.d, 0); e != nil {
			return e
		}
	}
	return nil
}

func (c *Conformance) validateExpect(e Expect, marks map[string]bool, self string) error {
	if _, ok := Checks[e.Check]; !ok {
		var names []string
		for n := range Checks {
			names = append(names, n)
		}
		sort.Strings(names)
		return fmt.Errorf("check: %q is not one of %s", e.Check, strings.Join(names, ", "))
	}
	for _, m := range []struct{ field, id string }{{"after", e.After}, {"before", e.Before}} {
		if m.id != "" && (!marks[m.id] || m.id == self) {
			return fmt.Errorf("%s: %q is not the id of an earlier step", m.field, m.id)
		}
	}
	for _, d := range []struct {
		field string
		d     Duration
	}{{"grace", e.Grace}, {"within", e.Within}} {
		if e := checkDuration(d.field, d.d, 0); e != nil {
			return e
		}
	}
	switch e.Phase {
	case "", "first", "second":
	default:
		return fmt.Errorf("phase: %q is not first or second", e.Phase)
	}
	needPods := map[string]bool{"reached": true, "only": true, "not-reached": true, "reaches": true, "spread": true}
	if needPods[e.Check] && e.Pods == "" {
		return fmt.Errorf("pods: required by check %s", e.Check)
	}
	if e.Pods != "" {
		if _, err := ParsePods(e.Pods, c.Backends); err != nil {
			return fmt.Errorf("pods: %w", err)
		}
	}
	switch e.Check {
	case "errno":
		if len(e.Errno) == 0 {
			return fmt.Errorf("errno: required by check errno")
		}
	case "fail-within":
		if e.Within <= 0 {
			return fmt.Errorf("within: required by check %s", e.Check)
		}
	case "recovers":
		if e.Within <= 0 {
			return fmt.Errorf("within: required by check %s", e.Check)
		}
		if e.After == "" {
			return fmt.Errorf("after: required by check recovers")
		}
	case "spread":
		if e.Alpha <= 0 || e.Alpha >= 1 {
			return fmt.Errorf("alpha: %v is not a significance level in (0, 1)", e.Alpha)
		}
	case "distinct":
		if e.Min < 1 {
			return fmt.Errorf("min: required by check distinct")
		}
	case "target-port":
		if e.Port < 1 || e.Port > 65535 {
			return fmt.Errorf("port: %d is out of range [1, 65535]", e.Port)
		}
	case "peer", "reply-from", "late-from":
		if e.Equals != "dialed" && e.Equals != "backend" {
			return fmt.Errorf("equals: %q is not dialed or backend", e.Equals)
		}
	}
	return nil
}

// BuiltinConformance returns the text of a built-in conformance scenario.
func BuiltinConformance(name string) ([]byte, error) {
	return conformanceFS.ReadFile("conformance/" + name + ".yaml")
}
