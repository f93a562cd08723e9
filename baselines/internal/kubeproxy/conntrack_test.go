package kubeproxy

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/datapath"
)

// TestStaleUDPFilter: which conntrack entries an Apply from prev to cur
// deletes. Only UDP entries to a service port count; of those, the ones
// whose reply does not come from a current endpoint of that port.
func TestStaleUDPFilter(t *testing.T) {
	ep := func(a string) datapath.Endpoint {
		return datapath.Endpoint{Pod: a, Addr: netip.MustParseAddr(a), Ready: true, Serving: true}
	}
	dns := func(eps ...datapath.Endpoint) datapath.Service {
		return datapath.Service{Namespace: "kube-system", Name: "dns", ClusterIP: netip.MustParseAddr("10.96.0.53"),
			Ports: []datapath.ServicePort{
				{Name: "udp", Protocol: datapath.UDP, Port: 53, TargetPort: 5353},
				{Name: "tcp", Protocol: datapath.TCP, Port: 53, TargetPort: 5353},
			}, Endpoints: eps}
	}
	prev := UDPServing(datapath.State{Services: []datapath.Service{dns(ep("10.244.1.1"), ep("10.244.1.2"))}})
	cur := UDPServing(datapath.State{Services: []datapath.Service{dns(ep("10.244.1.2"))}})
	ports := UDPEndpoints{}
	for k, v := range cur {
		ports[k] = v
	}
	ports[netip.MustParseAddrPort("10.96.0.99:53")] = map[netip.AddrPort]bool{} // a service that is gone
	f := staleUDPFilter{ports: ports}

	flow := func(proto uint8, dst string, dport uint16, rsrc string, rport uint16) *netlink.ConntrackFlow {
		fl := &netlink.ConntrackFlow{}
		fl.Forward = netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP("10.244.2.1").To4(), SrcPort: 40000, DstIP: net.ParseIP(dst).To4(), DstPort: dport}
		fl.Reverse = netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP(rsrc).To4(), SrcPort: rport, DstIP: net.ParseIP("10.244.2.1").To4(), DstPort: 40000}
		return fl
	}
	tests := []struct {
		name string
		flow *netlink.ConntrackFlow
		want bool
	}{
		{"to a removed endpoint", flow(unix.IPPROTO_UDP, "10.96.0.53", 53, "10.244.1.1", 5353), true},
		{"to a remaining endpoint", flow(unix.IPPROTO_UDP, "10.96.0.53", 53, "10.244.1.2", 5353), false},
		{"untranslated (the port had no endpoints)", flow(unix.IPPROTO_UDP, "10.96.0.53", 53, "10.96.0.53", 53), true},
		{"to a service that is gone", flow(unix.IPPROTO_UDP, "10.96.0.99", 53, "10.244.1.7", 5353), true},
		{"TCP is left alone", flow(unix.IPPROTO_TCP, "10.96.0.53", 53, "10.244.1.1", 5353), false},
		{"not a service port", flow(unix.IPPROTO_UDP, "10.244.1.1", 5353, "10.244.1.1", 5353), false},
		{"other port of the VIP", flow(unix.IPPROTO_UDP, "10.96.0.53", 54, "10.244.1.1", 5353), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, f.MatchConntrackFlow(tt.flow))
		})
	}
	assert.Len(t, prev, 1, "the TCP port is not a UDP service port")
}
