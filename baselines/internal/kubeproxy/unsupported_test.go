package kubeproxy

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"svclab/datapath"
)

// An IPv6 service is something an IPv4-only baseline cannot program at
// all: the error matches datapath.ErrUnsupported (a harness skips the cell
// with the message as the reason). A malformed IPv4 State is the caller's
// error and does not.
func TestIPv6IsUnsupported(t *testing.T) {
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
		{"IPv6 cluster IP", svc(v6, "fd00::1"), true},
		{"IPv6 endpoint", svc(v4, "fd00::1"), true},
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
			_, err = IPv4Endpoints(tt.svc, "iptables")
			if assert.Error(t, err) {
				assert.Equal(t, tt.unsupported, errors.Is(err, datapath.ErrUnsupported), "IPv4Endpoints: %v", err)
			}
		})
	}
}
