package datapath

// TrafficPolicy is a Service's spec.internalTrafficPolicy.
type TrafficPolicy string

// Traffic policies, as in Kubernetes.
const (
	// TrafficPolicyCluster (or "") spreads over every endpoint.
	TrafficPolicyCluster TrafficPolicy = "Cluster"
	// TrafficPolicyLocal keeps a node's clients on that node's endpoints;
	// with none there, their traffic is dropped.
	TrafficPolicyLocal TrafficPolicy = "Local"
)

// InternalLocal reports whether the service's internalTrafficPolicy is
// Local.
func (s Service) InternalLocal() bool { return s.InternalTrafficPolicy == TrafficPolicyLocal }

// ForNode returns st as the datapath instance on node must program it,
// which is what kube-proxy does with its own node name: every service with
// internalTrafficPolicy Local keeps only the endpoints whose NodeName is
// node (ReadyEndpoints then applies the terminating fallback among them,
// as kube-proxy categorises local endpoints). A Local service left with no
// endpoint is one whose traffic the node must drop. A Local service that
// has no endpoint to take new connections anywhere is returned as Cluster,
// because Kubernetes treats it as a service without endpoints (rejected,
// "has no endpoints"), not as one without local endpoints. st is not
// modified; services that are not Local are returned as they are.
func (st State) ForNode(node string) State {
	local := false
	for _, svc := range st.Services {
		local = local || svc.InternalLocal()
	}
	if !local {
		return st
	}
	out := State{Services: make([]Service, len(st.Services))}
	for i, svc := range st.Services {
		out.Services[i] = svc
		if !svc.InternalLocal() {
			continue
		}
		if len(svc.ReadyEndpoints()) == 0 {
			out.Services[i].InternalTrafficPolicy = TrafficPolicyCluster
			continue
		}
		var eps []Endpoint
		for _, ep := range svc.Endpoints {
			if ep.NodeName == node {
				eps = append(eps, ep)
			}
		}
		out.Services[i].Endpoints = eps
	}
	return out
}
