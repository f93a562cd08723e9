package datapath

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestStateForNode(t *testing.T) {
	ep := func(pod, node string, ready bool) Endpoint {
		return Endpoint{Pod: pod, Addr: netip.MustParseAddr("10.244.0.1"), Ready: ready, Serving: true, Terminating: !ready, NodeName: node}
	}
	a0, b1, t0 := ep("a", "node-0", true), ep("b", "node-1", true), ep("t", "node-0", false)
	svc := func(p TrafficPolicy, eps ...Endpoint) Service {
		return Service{Namespace: "default", Name: "web", InternalTrafficPolicy: p, Endpoints: eps}
	}
	tests := []struct {
		name string
		in   Service
		want Service
	}{
		{"cluster: untouched", svc("", a0, b1), svc("", a0, b1)},
		{"local: the node's endpoints", svc(TrafficPolicyLocal, a0, b1), svc(TrafficPolicyLocal, a0)},
		{"local: none here, drop", svc(TrafficPolicyLocal, b1), svc(TrafficPolicyLocal)},
		{"local: no endpoint anywhere is a service without endpoints", svc(TrafficPolicyLocal), svc(TrafficPolicyCluster)},
		{"local: terminating fallback among the node's", svc(TrafficPolicyLocal, t0, b1), svc(TrafficPolicyLocal, t0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := State{Services: []Service{tt.in}}
			got := in.ForNode("node-0")
			assert.Equal(t, tt.want, got.Services[0])
			assert.Equal(t, tt.in, in.Services[0], "the input is not modified")
		})
	}
	one := State{Services: []Service{svc(TrafficPolicyLocal, ep("a", "", true))}}
	assert.Equal(t, one, one.ForNode(""), "one node: every endpoint (NodeName \"\") is local")
}
