package kubeproxy

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"svclab/datapath"
)

// A service mixing families (an IPv6 cluster IP with IPv4 endpoints, or
// the reverse) is something no proxier is given and a baseline cannot
// program: the error matches datapath.ErrUnsupported (a harness skips the
// cell with the message as the reason). A malformed State is the caller's
// error and does not; an IPv6 service is served.
func TestMixedFamiliesAreUnsupported(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")
	svc := func(vip netip.Addr, ep string) datapath.Service {
		return datapath.Service{Namespace: "bench", Name: "web", ClusterIP: vip,
			Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}},
			Endpoints: []datapath.Endpoint{{Pod: "pod-a", Addr: netip.MustParseAddr(ep), Ready: true}}}
	}
	tests := []struct {
		name        string
		svc         datapath.Service
		unsupported bool
	}{
		{"IPv6 cluster IP, IPv4 endpoint", svc(v6, "10.244.0.1"), true},
		{"IPv4 cluster IP, IPv6 endpoint", svc(v4, "fd00::1"), true},
		{"unspecified cluster IP", svc(netip.IPv4Unspecified(), "10.244.0.1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := VIPPorts(datapath.State{Services: []datapath.Service{tt.svc}}, "ipvs", "virtual server")
			if assert.Error(t, err) {
				assert.Equal(t, tt.unsupported, errors.Is(err, datapath.ErrUnsupported), "VIPPorts: %v", err)
			}
			if tt.svc.ClusterIP.IsUnspecified() {
				return // IPv4Endpoints does not check for 0.0.0.0
			}
			_, err = FamilyEndpoints(tt.svc, FamilyOf(tt.svc.ClusterIP), "iptables")
			if assert.Error(t, err) {
				assert.Equal(t, tt.unsupported, errors.Is(err, datapath.ErrUnsupported), "FamilyEndpoints: %v", err)
			}
		})
	}
	_, _, err := VIPPorts(datapath.State{Services: []datapath.Service{svc(v6, "fd00::1")}}, "ipvs", "virtual server")
	assert.NoError(t, err, "an IPv6 service is served")
	_, err = FamilyEndpoints(svc(v6, "fd00::1"), IPv6, "iptables")
	assert.NoError(t, err, "an IPv6 service is served by the IPv6 rules")
}
