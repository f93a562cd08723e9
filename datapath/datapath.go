// Package datapath defines the one interface that every Service datapath under
// test implements (the reference socket-LB in datapath/socketlb and every
// baseline under baselines/), the Service model they are programmed with, and
// the registry the harness looks them up in.
//
// The harness never branches on a datapath's name: it sets a datapath up in a
// topology (Setup), hands it the complete desired set of services and
// endpoints (Apply, declarative like a kube-proxy sync), asks it where a client
// should connect (Targets) and tears it down (Close).
package datapath

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"svclab/internal/nsutil"
)

// Protocol is a Service port's L4 protocol.
type Protocol string

// Protocols a Service port can carry.
const (
	TCP Protocol = "TCP"
	UDP Protocol = "UDP"
)

// Endpoint is one backend of a Service (one address of an EndpointSlice).
type Endpoint struct {
	// Pod names the backend pod; it is what the backend answers with.
	Pod string
	// Addr is the pod's IP address.
	Addr netip.Addr
	// Ready, Serving and Terminating follow EndpointSlice conditions.
	Ready       bool
	Serving     bool
	Terminating bool
	// NodeName is the node the endpoint runs on, as an EndpointSlice
	// endpoint's nodeName: a datapath compares it with Env.NodeName to
	// tell its node's endpoints (internalTrafficPolicy: Local). Empty in
	// a one-node topology, where every endpoint is local.
	NodeName string
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name       string
	Protocol   Protocol
	Port       uint16
	TargetPort uint16
}

// SessionAffinity is a Service's spec.sessionAffinity.
type SessionAffinity string

// Session affinity modes, as in Kubernetes.
const (
	// SessionAffinityNone (or "") spreads every new connection.
	SessionAffinityNone SessionAffinity = "None"
	// SessionAffinityClientIP sends one client to the same endpoint until
	// the client has been idle for the affinity timeout.
	SessionAffinityClientIP SessionAffinity = "ClientIP"
)

// DefaultAffinityTimeout is Kubernetes' default
// sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// Service is one ClusterIP Service with its endpoints.
type Service struct {
	// Namespace/Name as in Kubernetes; used for rule comments and hashes.
	Namespace string
	Name      string
	ClusterIP netip.Addr
	Ports     []ServicePort
	Endpoints []Endpoint
	// SessionAffinity is None when empty. ClientIP applies to every port
	// of the service, each port keeping its own client-to-endpoint choice.
	SessionAffinity SessionAffinity
	// AffinityTimeout is how long a client may stay idle and keep its
	// endpoint under ClientIP affinity; zero means DefaultAffinityTimeout.
	AffinityTimeout time.Duration
	// InternalTrafficPolicy is Cluster when empty; Local sends a node's
	// clients to that node's endpoints only (see State.ForNode).
	InternalTrafficPolicy TrafficPolicy
}

// EffectiveAffinityTimeout returns AffinityTimeout, or the Kubernetes
// default when it is zero.
func (s Service) EffectiveAffinityTimeout() time.Duration {
	if s.AffinityTimeout == 0 {
		return DefaultAffinityTimeout
	}
	return s.AffinityTimeout
}

// String returns "namespace/name".
func (s Service) String() string { return s.Namespace + "/" + s.Name }

// ReadyEndpoints returns the endpoints that should receive new connections:
// the ready ones, or the serving terminating ones when none is ready
// (Kubernetes' ProxyTerminatingEndpoints fallback).
func (s Service) ReadyEndpoints() []Endpoint {
	var ready, terminating []Endpoint
	for _, ep := range s.Endpoints {
		switch {
		case ep.Ready && !ep.Terminating:
			ready = append(ready, ep)
		case ep.Serving && ep.Terminating:
			terminating = append(terminating, ep)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

// State is the complete desired set of services a datapath must implement.
type State struct {
	Services []Service
}

// Pod is a pod of the topology as a datapath sees it.
type Pod struct {
	Name string
	Addr netip.Addr
	// Addr6 is the pod's IPv6 address in a dual-stack topology; invalid
	// (the zero Addr) in an IPv4-only one.
	Addr6 netip.Addr
	// NS is the pod's network namespace.
	NS *nsutil.NS
	// HostVeth is the name of the pod's veth peer inside the node namespace.
	HostVeth string
}

// Env is what the topology gives a datapath to set itself up in.
type Env struct {
	// Node is the node network namespace: where per-packet datapaths
	// (iptables, nftables, IPVS, tc) live.
	Node *nsutil.NS
	// NodeName names the node this instance of the datapath runs on, as
	// kube-proxy's --hostname-override: the endpoints whose NodeName
	// equals it are local. Empty in a one-node topology.
	NodeName string
	// NodeCgroup is the cgroup v2 directory every process the datapath
	// serves runs under, as kubelet's kubepods: client pods, backend pods
	// and hostNetwork pods are in child cgroups of it. Socket-level
	// datapaths attach here, so they serve every pod of the node, as
	// Cilium's socket-LB attached at the root cgroup does.
	NodeCgroup string
	// DatapathCgroup is the cgroup v2 directory a datapath's own processes
	// (a proxy) are started in, outside NodeCgroup, so that their CPU is
	// accounted apart from the pods' ("" runs them where svclab runs).
	DatapathCgroup string
	Clients        []Pod
	Backends       []Pod
	PodCIDR        netip.Prefix
	ServiceCIDR    netip.Prefix
	// PodCIDR6 and ServiceCIDR6 are the IPv6 ranges of a dual-stack
	// topology; invalid (zero) in an IPv4-only one.
	PodCIDR6     netip.Prefix
	ServiceCIDR6 netip.Prefix
}

// Datapath is a Service datapath under test.
type Datapath interface {
	// Setup installs the datapath's fixed parts (programs, base chains) in env.
	Setup(ctx context.Context, env *Env) error
	// Apply makes the datapath implement exactly the given state. It is
	// called again with the whole new state on every change.
	Apply(ctx context.Context, st State) error
	// Targets returns where a client should send traffic for a service port:
	// the ClusterIP and port for real Service datapaths, the endpoints
	// themselves for datapaths where the client picks (direct).
	Targets(svc Service, port ServicePort) []netip.AddrPort
	// Info returns facts worth recording with results (e.g. the iptables
	// backend); nil if there are none. Where they can be read, it reports
	// the size of the programmed state under InfoStateObjects and
	// InfoStateBytes.
	Info() map[string]string
	// Close removes everything Setup and Apply installed.
	Close() error
}

// CounterReader is implemented by datapaths that count connections
// themselves (the harness type-asserts for it and records the counts with
// the results). What "a connection" is depends on the datapath and is
// documented by it; for socketlb it is one translated connect(), or one UDP
// socket starting to send to a backend.
type CounterReader interface {
	// Counters returns the counts accumulated since Setup, including
	// those of services and endpoints that have since been removed.
	Counters() (Counters, error)
}

// Counters are a datapath's cumulative connection counts.
type Counters struct {
	// Services has one entry per service port, sorted by Service, Port
	// and Protocol.
	Services []ServiceCounters
}

// ServiceCounters counts the connections to one service port.
type ServiceCounters struct {
	// Service is "namespace/name".
	Service  string
	Port     uint16
	Protocol Protocol
	// Frontend is ClusterIP:port.
	Frontend netip.AddrPort
	// Connections were sent to an endpoint; Refused were rejected because
	// the service had no endpoint.
	Connections uint64
	Refused     uint64
	// Backends has one entry per endpoint that received a connection,
	// sorted by Backend.
	Backends []BackendCounters
}

// BackendCounters counts the connections one endpoint received through a
// service port.
type BackendCounters struct {
	// Pod is the endpoint's pod name, as given in Endpoint.Pod.
	Pod string
	// Backend is the endpoint's address and target port.
	Backend     netip.AddrPort
	Connections uint64
}

// VIPTargets is the Targets of every datapath that implements the ClusterIP.
func VIPTargets(svc Service, port ServicePort) []netip.AddrPort {
	return []netip.AddrPort{netip.AddrPortFrom(svc.ClusterIP, port.Port)}
}

// ErrUnsupported is wrapped by Probe errors: the machine lacks something the
// datapath needs, and the error says what.
var ErrUnsupported = errors.New("not supported here")

// ErrUnknown is returned for a datapath name that is not registered.
var ErrUnknown = errors.New("unknown datapath")

// Factory registers one datapath.
type Factory struct {
	// Name is what users type in --datapaths.
	Name string
	// Description is a one-line summary for listings and charts.
	Description string
	// Probe reports whether this machine can run the datapath; its error
	// wraps ErrUnsupported and names the missing thing.
	Probe func() error
	// New returns an unconfigured datapath.
	New func() Datapath
	// Scope says which clients and behaviours the datapath does not serve
	// by design, known before any traffic; the zero value serves them all.
	Scope Scope
	// InNetfilter says the datapath does its work in the node's netfilter
	// hooks (iptables or nftables rules, IPVS, and the conntrack they
	// bring): a cost trial counts what the netfilter probes measure there
	// as its own. For any other datapath those hooks hold nothing of its,
	// and what they measure is reported beside its cost, not added to it
	// (≈ 0, the probes' floor subtracted; added, that subtraction's noise
	// of ±30-70 ns was most of socket-LB's ~480 ns from run to run).
	InNetfilter bool
}

// Scope is what a datapath leaves out by design, each with the reason. The
// harness reads it instead of branching on names: conformance shows such a
// cell as n/a or skipped with this reason rather than running traffic that
// can only fail for a reason already known.
type Scope struct {
	// NoService, if set, says why the datapath implements no Service at
	// all (the direct baseline: its client is handed the endpoints).
	// Behaviour that only a Service has (a ClusterIP that refuses when
	// there are no endpoints, session affinity, following endpoint changes
	// under a running client) is not applicable to it.
	NoService string
	// NoHostNetwork, if set, says why the datapath does not serve clients
	// in the node's own network namespace (hostNetwork pods, node agents).
	NoHostNetwork string
}

var (
	mu       sync.Mutex
	registry = map[string]Factory{}
)

// Register adds a datapath; it is called from init functions.
func Register(f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if f.Name == "" || f.New == nil {
		panic("datapath: Register needs Name and New")
	}
	if _, dup := registry[f.Name]; dup {
		panic("datapath: duplicate registration of " + f.Name)
	}
	registry[f.Name] = f
}

// Lookup returns the factory registered under name.
func Lookup(name string) (Factory, error) {
	mu.Lock()
	defer mu.Unlock()
	f, ok := registry[name]
	if !ok {
		return Factory{}, fmt.Errorf("%w %q (known: %s)", ErrUnknown, name, strings.Join(namesLocked(), ", "))
	}
	return f, nil
}

// Names lists registered datapaths, sorted.
func Names() []string {
	mu.Lock()
	defer mu.Unlock()
	return namesLocked()
}

func namesLocked() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Unsupportedf builds a Probe error that wraps ErrUnsupported.
func Unsupportedf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrUnsupported)
}

// Info keys for the size of a datapath's programmed state, so that a scale
// sweep can chart it across datapaths: InfoStateObjects is how many objects
// it programmed (netfilter rules, entries of the load-balancing maps for
// BPF, listening sockets for a proxy) and InfoStateBytes the kernel memory
// they take where that can be read (BPF map memlock). Values are decimal
// integers; datapath.InfoStateObjects and datapath.InfoStateBytes are the same keys.
const (
	InfoStateObjects = "state_objects"
	InfoStateBytes   = "state_bytes"
)
