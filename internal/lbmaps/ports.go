package lbmaps

import (
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"svclab/datapath"
)

// Rules are what one datapath's maps can express and hold. S is what the
// datapath keeps of a service for each of its ports (e.g. an affinity
// timeout; struct{} when nothing), BE its backends map value.
type Rules[S any, BE comparable] struct {
	// MaxServices is the most service ports, MaxBackends the most backend
	// slots of all services together, MaxServiceBackends the most slots of
	// one service port.
	MaxServices, MaxBackends, MaxServiceBackends int
	// ErrUnsupported is wrapped by errors about a service the maps cannot
	// express, ErrCapacity by errors about a state that does not fit them.
	ErrUnsupported, ErrCapacity error
	// Service checks a service that has a ClusterIP (vip is that ClusterIP,
	// IPv4 unmapped) before its ports are; nil accepts every service.
	Service func(svc datapath.Service, vip netip.Addr) (S, error)
	// Endpoint checks one ready endpoint of the service port named port
	// ("namespace/name:port"); nil accepts every endpoint.
	Endpoint func(port string, vip netip.Addr, ep datapath.Endpoint) error
	// Backend encodes a backend (an endpoint's address, IPv4 unmapped,
	// with the target port) as the backends map holds it. Two different
	// backends must not encode alike.
	Backend func(netip.AddrPort) BE
}

// Port is one port of a service, checked and reduced to what a datapath's
// maps hold.
type Port[S any, BE comparable] struct {
	// Service is "namespace/name"; Name is "namespace/name:port".
	Service, Name string
	// Info is what Rules.Service returned for the service.
	Info     S
	Port     datapath.ServicePort
	Protocol uint8
	// Frontend is the ClusterIP (IPv4 unmapped) and port.
	Frontend netip.AddrPort
	// Backends are the ready endpoints, encoded by Rules.Backend, without
	// duplicates and in endpoint order; Pods names them. Both are nil when
	// there are none.
	Backends []BE
	Pods     []string
}

// Ports converts st into one Port per port of every service that has a
// ClusterIP (headless services have nothing to translate), checking
// everything the maps cannot hold before anything is written. Endpoints are
// those datapath.Service.ReadyEndpoints returns; a target port of 0 means
// the port, as in Kubernetes.
func (r *Rules[S, BE]) Ports(st datapath.State) ([]Port[S, BE], error) {
	type frontendID struct {
		ap    netip.AddrPort
		proto uint8
	}
	var out []Port[S, BE]
	seen := map[frontendID]string{}
	total := 0
	for _, svc := range st.Services {
		if !svc.ClusterIP.IsValid() {
			continue
		}
		vip := svc.ClusterIP.Unmap()
		var info S
		if r.Service != nil {
			var err error
			if info, err = r.Service(svc, vip); err != nil {
				return nil, err
			}
		}
		ready := svc.ReadyEndpoints()
		for _, sp := range svc.Ports {
			name := fmt.Sprintf("%s:%d", svc, sp.Port)
			proto, ok := ipProto(sp.Protocol)
			if !ok {
				return nil, fmt.Errorf("service %s: protocol %q: %w", name, sp.Protocol, r.ErrUnsupported)
			}
			if sp.Port == 0 {
				return nil, fmt.Errorf("service %s: port 0: %w", name, r.ErrUnsupported)
			}
			target := sp.TargetPort
			if target == 0 {
				target = sp.Port
			}

			id := frontendID{netip.AddrPortFrom(vip, sp.Port), proto}
			if other, dup := seen[id]; dup {
				return nil, fmt.Errorf("service %s: frontend %s/%s already used by %s: %w", name, id.ap, sp.Protocol, other, r.ErrUnsupported)
			}
			seen[id] = name

			p := Port[S, BE]{Service: svc.String(), Name: name, Info: info, Port: sp, Protocol: proto, Frontend: id.ap}
			if len(ready) > 0 {
				p.Backends = make([]BE, 0, len(ready))
				p.Pods = make([]string, 0, len(ready))
			}
			// Services are mostly small, where a scan beats a map.
			var dedup map[BE]bool
			if len(ready) > 32 {
				dedup = make(map[BE]bool, len(ready))
			}
			for _, ep := range ready {
				if r.Endpoint != nil {
					if err := r.Endpoint(name, vip, ep); err != nil {
						return nil, err
					}
				}
				be := r.Backend(netip.AddrPortFrom(ep.Addr.Unmap(), target))
				if dedup == nil && slices.Contains(p.Backends, be) || dedup[be] {
					continue
				}
				if dedup != nil {
					dedup[be] = true
				}
				p.Backends = append(p.Backends, be)
				p.Pods = append(p.Pods, ep.Pod)
			}
			if len(p.Backends) > r.MaxServiceBackends {
				return nil, fmt.Errorf("service %s: %d endpoints, at most %d: %w", name, len(p.Backends), r.MaxServiceBackends, r.ErrCapacity)
			}
			total += len(p.Backends)
			out = append(out, p)
		}
	}
	if len(out) > r.MaxServices {
		return nil, fmt.Errorf("%d service ports, at most %d: %w", len(out), r.MaxServices, r.ErrCapacity)
	}
	if total > r.MaxBackends {
		return nil, fmt.Errorf("%d backends, at most %d: %w", total, r.MaxBackends, r.ErrCapacity)
	}
	return out, nil
}

// ipProto returns the IP protocol number of a Service protocol, as both the
// IP header and bpf_sock_addr.protocol carry it.
func ipProto(p datapath.Protocol) (uint8, bool) {
	switch p {
	case datapath.TCP:
		return unix.IPPROTO_TCP, true
	case datapath.UDP:
		return unix.IPPROTO_UDP, true
	}
	return 0, false
}
