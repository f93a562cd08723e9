package userspace

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

func endpoints(n int, prefix string) []datapath.Endpoint {
	var eps []datapath.Endpoint
	for i := range n {
		eps = append(eps, datapath.Endpoint{Pod: fmt.Sprintf("b%d", i), Addr: netip.MustParseAddr(fmt.Sprintf("%s.%d", prefix, i+1)), Ready: true, Serving: true})
	}
	return eps
}

func TestDesired(t *testing.T) {
	web := datapath.Service{Namespace: "bench", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}},
		Endpoints: endpoints(2, "10.244.1")}
	dns := datapath.Service{Namespace: "kube-system", Name: "dns", ClusterIP: netip.MustParseAddr("10.96.0.2"),
		Ports: []datapath.ServicePort{
			{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353},
			{Name: "dns-tcp", Protocol: datapath.TCP, Port: 53, TargetPort: 5353},
		},
		Endpoints: endpoints(1, "10.244.2")}
	empty := datapath.Service{Namespace: "bench", Name: "empty", ClusterIP: netip.MustParseAddr("10.96.0.20"),
		Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}}}
	// Terminating endpoints take traffic only when nothing is ready.
	draining := web
	draining.Endpoints = []datapath.Endpoint{
		{Pod: "old", Addr: netip.MustParseAddr("10.244.3.1"), Serving: true, Terminating: true},
		{Pod: "new", Addr: netip.MustParseAddr("10.244.3.2"), Ready: true, Serving: true},
	}
	ap := netip.MustParseAddrPort

	tests := []struct {
		name     string
		services []datapath.Service
		want     []frontend
		wantVIPs []string
	}{
		{"empty state", nil, nil, []string{}},
		{"one service", []datapath.Service{web}, []frontend{
			{Name: "bench/web:80", Protocol: datapath.TCP, VIP: ap("10.96.0.10:80"), Backends: []netip.AddrPort{ap("10.244.1.1:8080"), ap("10.244.1.2:8080")}},
		}, []string{"10.96.0.10"}},
		{"sorted by VIP and protocol, same port on TCP and UDP", []datapath.Service{web, dns}, []frontend{
			{Name: "kube-system/dns:53", Protocol: datapath.TCP, VIP: ap("10.96.0.2:53"), Backends: []netip.AddrPort{ap("10.244.2.1:5353")}},
			{Name: "kube-system/dns:53", Protocol: datapath.UDP, VIP: ap("10.96.0.2:53"), Backends: []netip.AddrPort{ap("10.244.2.1:5353")}},
			{Name: "bench/web:80", Protocol: datapath.TCP, VIP: ap("10.96.0.10:80"), Backends: []netip.AddrPort{ap("10.244.1.1:8080"), ap("10.244.1.2:8080")}},
		}, []string{"10.96.0.2", "10.96.0.10"}},
		{"no endpoints keeps the address, no backends", []datapath.Service{empty}, []frontend{
			{Name: "bench/empty:80", Protocol: datapath.TCP, VIP: ap("10.96.0.20:80")},
		}, []string{"10.96.0.20"}},
		{"only ready endpoints when some are ready", []datapath.Service{draining}, []frontend{
			{Name: "bench/web:80", Protocol: datapath.TCP, VIP: ap("10.96.0.10:80"), Backends: []netip.AddrPort{ap("10.244.3.2:8080")}},
		}, []string{"10.96.0.10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fes, vips, err := desired(datapath.State{Services: tt.services})
			require.NoError(t, err)
			assert.Equal(t, tt.want, fes)
			got := []string{}
			for _, v := range vips {
				got = append(got, v.String())
			}
			assert.Equal(t, tt.wantVIPs, got)
		})
	}
}

func TestDesiredRejects(t *testing.T) {
	good := func() datapath.Service {
		return datapath.Service{Namespace: "bench", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}},
			Endpoints: endpoints(1, "10.244.1")}
	}
	tests := []struct {
		name   string
		mutate func(*datapath.State)
		errHas string
	}{
		{"IPv6 cluster IP, IPv4 endpoints", func(st *datapath.State) { st.Services[0].ClusterIP = netip.MustParseAddr("fd00::10") }, "endpoint 10.244.1.1 (b0) is not IPv6"},
		{"missing cluster IP", func(st *datapath.State) { st.Services[0].ClusterIP = netip.Addr{} }, "cluster IP invalid IP"},
		{"IPv6 endpoint", func(st *datapath.State) { st.Services[0].Endpoints[0].Addr = netip.MustParseAddr("fd00::1") }, "endpoint fd00::1 (b0) is not IPv4"},
		{"SCTP", func(st *datapath.State) { st.Services[0].Ports[0].Protocol = "SCTP" }, `protocol "SCTP"`},
		{"port 0", func(st *datapath.State) { st.Services[0].Ports[0].Port = 0 }, `port "http": port is 0`},
		{"target port 0", func(st *datapath.State) { st.Services[0].Ports[0].TargetPort = 0 }, "bench/web:80: target port is 0"},
		{"two services on one frontend", func(st *datapath.State) {
			other := good()
			other.Name = "other"
			st.Services = append(st.Services, other)
		}, "bench/other:80: frontend 10.96.0.10:80/TCP already used by bench/web:80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := datapath.State{Services: []datapath.Service{good()}}
			tt.mutate(&st)
			_, _, err := desired(st)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.errHas)
		})
	}
}

func TestProcessCPU(t *testing.T) {
	_, err := processCPU(1 << 30)
	assert.Error(t, err, "a pid that cannot exist")
}
