package baselinetest

import "svclab/datapath"

// LocalPolicyState is two services with internalTrafficPolicy Local on a
// two-node cluster, as the instance on node-0 is given it: web's three
// endpoints are on node-0, node-1, node-0 (node-0 keeps the first and
// third), the dns service's two are both on node-1 (node-0 has none: its
// traffic is dropped), and the empty service has no endpoint anywhere (a
// service without endpoints: rejected, as under Cluster).
func LocalPolicyState() datapath.State {
	web, dns, empty := WebService(3), DNSService(), EmptyService()
	for _, svc := range []*datapath.Service{&web, &dns, &empty} {
		svc.InternalTrafficPolicy = datapath.TrafficPolicyLocal
	}
	for i := range web.Endpoints {
		web.Endpoints[i].NodeName = []string{"node-0", "node-1", "node-0"}[i]
	}
	for i := range dns.Endpoints {
		dns.Endpoints[i].NodeName = "node-1"
	}
	return datapath.State{Services: []datapath.Service{web, dns, empty}}.ForNode("node-0")
}
