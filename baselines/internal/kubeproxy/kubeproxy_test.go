package kubeproxy

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

// TestNameHash checks the hash against chain names in kube-proxy's
// published test expectations (iptables mode hashes "ns/name:port" plus
// the protocol, nftables mode "ns/name/proto/port"), so it is checked
// against the real thing and not only against itself.
func TestNameHash(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"ns1/svc1:p80tcp", 16, "XPGD46QRK7WJZT7O"},
		{"ns1/svc1:p80tcp10.180.0.1:80", 16, "SXIVWICOYRO3J4NJ"},
		{"ns1/svc1/tcp/p80", 8, "ULMVA6XW"},
		{"ns1/svc1/tcp/p80__10.180.0.1/80", 8, "5OJB2KTY"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			assert.Equal(t, tt.want, NameHash(tt.in, tt.n))
		})
	}
	assert.Equal(t, NameHash("x", 16)[:8], NameHash("x", 8), "a shorter hash is a prefix of a longer one")
}

func TestProto(t *testing.T) {
	tests := []struct {
		p       datapath.Protocol
		want    string
		wantErr string
	}{
		{datapath.TCP, "tcp", ""},
		{datapath.UDP, "udp", ""},
		{"SCTP", "", `protocol "SCTP" not supported by the nftables baseline`},
	}
	for _, tt := range tests {
		t.Run(string(tt.p), func(t *testing.T) {
			got, err := Proto(tt.p, "nftables")
			if tt.wantErr != "" {
				assert.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestSortedServices(t *testing.T) {
	st := datapath.State{Services: []datapath.Service{
		{Namespace: "kube-system", Name: "dns"},
		{Namespace: "bench", Name: "web"},
		{Namespace: "bench", Name: "empty"},
	}}
	var got []string
	for _, svc := range SortedServices(st) {
		got = append(got, svc.String())
	}
	assert.Equal(t, []string{"bench/empty", "bench/web", "kube-system/dns"}, got)
	assert.Equal(t, "kube-system/dns", st.Services[0].String(), "the caller's slice keeps its order")
}

func ep(addr string, ready bool) datapath.Endpoint {
	return datapath.Endpoint{Pod: "pod-" + addr, Addr: netip.MustParseAddr(addr), Ready: ready, Serving: true, Terminating: !ready}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestUniqueEndpoints(t *testing.T) {
	eps := []datapath.Endpoint{ep("10.244.1.2", true), ep("10.244.1.1", true), ep("10.244.1.2", true)}
	assert.Equal(t, addrs("10.244.1.2", "10.244.1.1"), UniqueEndpoints(eps), "first occurrence kept, order kept")
	assert.Nil(t, UniqueEndpoints(nil))
}

func TestIPv4Endpoints(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.1")
	tests := []struct {
		name    string
		svc     datapath.Service
		want    []netip.Addr
		wantErr string
	}{
		{
			name: "ready endpoints, duplicates once",
			svc:  datapath.Service{Namespace: "a", Name: "b", ClusterIP: vip, Endpoints: []datapath.Endpoint{ep("10.244.1.1", true), ep("10.244.1.1", true), ep("10.244.1.2", true)}},
			want: addrs("10.244.1.1", "10.244.1.2"),
		},
		{
			// Terminating endpoints take traffic only when none is ready.
			name: "ready before terminating",
			svc:  datapath.Service{Namespace: "a", Name: "b", ClusterIP: vip, Endpoints: []datapath.Endpoint{ep("10.244.1.1", false), ep("10.244.1.2", true)}},
			want: addrs("10.244.1.2"),
		},
		{
			name: "no endpoints",
			svc:  datapath.Service{Namespace: "a", Name: "b", ClusterIP: vip},
		},
		{
			name:    "IPv6 cluster IP",
			svc:     datapath.Service{Namespace: "a", Name: "b", ClusterIP: netip.MustParseAddr("fd00::1")},
			wantErr: "service a/b: cluster IP fd00::1 is not IPv4 (the iptables baseline's IPv4 rules)",
		},
		{
			name:    "IPv6 endpoint",
			svc:     datapath.Service{Namespace: "a", Name: "b", ClusterIP: vip, Endpoints: []datapath.Endpoint{ep("fd00::2", true)}},
			wantErr: "service a/b: endpoint fd00::2 is not IPv4",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := IPv4Endpoints(tt.svc, "iptables")
			if tt.wantErr != "" {
				assert.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestVIPPorts(t *testing.T) {
	web := datapath.Service{Namespace: "bench", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}},
		Endpoints: []datapath.Endpoint{ep("10.244.1.1", true), ep("10.244.1.2", false)}}
	dns := datapath.Service{Namespace: "kube-system", Name: "dns", ClusterIP: netip.MustParseAddr("10.96.0.2"),
		Ports: []datapath.ServicePort{
			{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353},
			{Name: "dns-tcp", Protocol: datapath.TCP, Port: 53, TargetPort: 5353},
		}}
	ports, vips, err := VIPPorts(datapath.State{Services: []datapath.Service{web, dns}}, "ipvs", "virtual server")
	require.NoError(t, err)
	assert.Equal(t, []VIPPort{
		{Name: "bench/web:80", Protocol: datapath.TCP, VIP: netip.MustParseAddrPort("10.96.0.10:80"), TargetPort: 8080, Ready: []datapath.Endpoint{ep("10.244.1.1", true)}},
		{Name: "kube-system/dns:53", Protocol: datapath.UDP, VIP: netip.MustParseAddrPort("10.96.0.2:53"), TargetPort: 5353},
		{Name: "kube-system/dns:53", Protocol: datapath.TCP, VIP: netip.MustParseAddrPort("10.96.0.2:53"), TargetPort: 5353},
	}, ports, "service ports in the state's order, only the endpoints that take new connections")
	assert.Equal(t, addrs("10.96.0.2", "10.96.0.10"), vips, "ClusterIPs sorted")

	// Dual-stack: an IPv6 service beside the IPv4 ones; its VIP sorts
	// after every IPv4 one.
	web6 := datapath.Service{Namespace: "bench", Name: "web6", ClusterIP: netip.MustParseAddr("fd00:10:96::a"),
		Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}},
		Endpoints: []datapath.Endpoint{ep("fd00:10:244::2", true)}}
	ports, vips, err = VIPPorts(datapath.State{Services: []datapath.Service{web6, dns}}, "ipvs", "virtual server")
	require.NoError(t, err)
	require.Len(t, ports, 3)
	assert.Equal(t, netip.MustParseAddrPort("[fd00:10:96::a]:80"), ports[0].VIP)
	assert.Equal(t, addrs("10.96.0.2", "fd00:10:96::a"), vips, "IPv4 before IPv6")

	ports, vips, err = VIPPorts(datapath.State{}, "ipvs", "virtual server")
	require.NoError(t, err)
	assert.Empty(t, ports)
	assert.Equal(t, []netip.Addr{}, vips)
}

func TestVIPPortsRejects(t *testing.T) {
	good := func() datapath.Service {
		return datapath.Service{Namespace: "bench", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports:     []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}},
			Endpoints: []datapath.Endpoint{ep("10.244.1.1", true)}}
	}
	tests := []struct {
		name    string
		mutate  func(*datapath.State)
		wantErr string
	}{
		{"IPv6 cluster IP, IPv4 endpoint", func(st *datapath.State) { st.Services[0].ClusterIP = netip.MustParseAddr("fd00::10") },
			"service bench/web: endpoint 10.244.1.1 (pod-10.244.1.1) is not IPv6 like the cluster IP"},
		{"missing cluster IP", func(st *datapath.State) { st.Services[0].ClusterIP = netip.Addr{} },
			"service bench/web: cluster IP invalid IP is not a usable IPv4 or IPv6 address (the userspace baseline)"},
		{"unspecified cluster IP", func(st *datapath.State) { st.Services[0].ClusterIP = netip.IPv4Unspecified() },
			"service bench/web: cluster IP 0.0.0.0 is not a usable IPv4 or IPv6 address (the userspace baseline)"},
		{"unspecified IPv6 cluster IP", func(st *datapath.State) { st.Services[0].ClusterIP = netip.IPv6Unspecified() },
			"service bench/web: cluster IP :: is not a usable IPv4 or IPv6 address (the userspace baseline)"},
		{"IPv4-mapped cluster IP", func(st *datapath.State) { st.Services[0].ClusterIP = netip.MustParseAddr("::ffff:10.96.0.10") },
			"service bench/web: cluster IP ::ffff:10.96.0.10 is not a usable IPv4 or IPv6 address (the userspace baseline)"},
		{"IPv6 endpoint", func(st *datapath.State) { st.Services[0].Endpoints[0].Addr = netip.MustParseAddr("fd00::1") },
			"service bench/web: endpoint fd00::1 (pod-10.244.1.1) is not IPv4 like the cluster IP"},
		{"SCTP", func(st *datapath.State) { st.Services[0].Ports[0].Protocol = "SCTP" },
			`service bench/web:80: protocol "SCTP" not supported by the userspace baseline`},
		{"port 0", func(st *datapath.State) { st.Services[0].Ports[0].Port = 0 },
			`service bench/web port "http": port is 0`},
		{"target port 0", func(st *datapath.State) { st.Services[0].Ports[0].TargetPort = 0 },
			"service bench/web:80: target port is 0"},
		{"two services on one VIP, port and protocol", func(st *datapath.State) {
			other := good()
			other.Name = "other"
			st.Services = append(st.Services, other)
		}, "service bench/other:80: frontend 10.96.0.10:80/TCP already used by bench/web:80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := datapath.State{Services: []datapath.Service{good()}}
			tt.mutate(&st)
			_, _, err := VIPPorts(st, "userspace", "frontend")
			assert.EqualError(t, err, tt.wantErr)
		})
	}
	// The same port number over TCP and UDP is two service ports, not a
	// clash.
	st := datapath.State{Services: []datapath.Service{good()}}
	st.Services[0].Ports = append(st.Services[0].Ports, datapath.ServicePort{Name: "http-udp", Protocol: datapath.UDP, Port: 80, TargetPort: 8080})
	_, _, err := VIPPorts(st, "userspace", "frontend")
	assert.NoError(t, err)
}

// TestAddrDiff holds the cases of both former copies (ipvs passed the
// addresses on kube-ipvs0 in the kernel's order, userspace its own set).
func TestAddrDiff(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name        string
		have, want  []netip.Addr
		add, remove []netip.Addr
	}{
		{"from nothing", nil, []netip.Addr{a("10.96.0.2"), a("10.96.0.1")}, []netip.Addr{a("10.96.0.1"), a("10.96.0.2")}, nil},
		{"unchanged", []netip.Addr{a("10.96.0.1")}, []netip.Addr{a("10.96.0.1")}, nil, nil},
		{"swap", []netip.Addr{a("10.96.0.1"), a("10.96.0.3")}, []netip.Addr{a("10.96.0.1"), a("10.96.0.2")}, []netip.Addr{a("10.96.0.2")}, []netip.Addr{a("10.96.0.3")}},
		{"swap, have unsorted", []netip.Addr{a("10.96.0.3"), a("10.96.0.1")}, []netip.Addr{a("10.96.0.1"), a("10.96.0.2")}, []netip.Addr{a("10.96.0.2")}, []netip.Addr{a("10.96.0.3")}},
		{"to nothing", []netip.Addr{a("10.96.0.1")}, nil, nil, []netip.Addr{a("10.96.0.1")}},
		{"sorted output", []netip.Addr{a("10.96.0.9"), a("10.96.0.8")}, []netip.Addr{a("10.96.0.2"), a("10.96.0.1")},
			[]netip.Addr{a("10.96.0.1"), a("10.96.0.2")}, []netip.Addr{a("10.96.0.8"), a("10.96.0.9")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add, remove := AddrDiff(tt.have, tt.want)
			assert.Equal(t, tt.add, add, "add")
			assert.Equal(t, tt.remove, remove, "remove")
		})
	}
}

func TestHostAddr(t *testing.T) {
	a := HostAddr(netip.MustParseAddr("10.96.0.10"))
	assert.Equal(t, "10.96.0.10/32", a.IPNet.String())
}

func TestSplitFamilies(t *testing.T) {
	svc := func(name, vip string) datapath.Service {
		return datapath.Service{Namespace: "a", Name: name, ClusterIP: netip.MustParseAddr(vip)}
	}
	tests := []struct {
		name         string
		st           datapath.State
		want4, want6 []string
	}{
		{"empty", datapath.State{}, nil, nil},
		{"IPv4 only", datapath.State{Services: []datapath.Service{svc("a", "10.96.0.1"), svc("b", "10.96.0.2")}}, []string{"a", "b"}, nil},
		{"both, order kept", datapath.State{Services: []datapath.Service{svc("z6", "fd00::1"), svc("a", "10.96.0.1"), svc("b6", "fd00::2")}}, []string{"a"}, []string{"z6", "b6"}},
		// Refused by the IPv4 renderer with its usual message.
		{"IPv4-mapped goes to IPv4", datapath.State{Services: []datapath.Service{svc("m", "::ffff:10.96.0.1")}}, []string{"m"}, nil},
	}
	names := func(st datapath.State) []string {
		var out []string
		for _, s := range st.Services {
			out = append(out, s.Name)
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SplitFamilies(tt.st)
			assert.Equal(t, tt.want4, names(got[IPv4]))
			assert.Equal(t, tt.want6, names(got[IPv6]))
		})
	}
}

func TestUDPServingBothFamilies(t *testing.T) {
	st := datapath.State{Services: []datapath.Service{
		{Namespace: "a", Name: "dns", ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports:     []datapath.ServicePort{{Protocol: datapath.UDP, Port: 53, TargetPort: 5353}},
			Endpoints: []datapath.Endpoint{ep("10.244.1.1", true)}},
		{Namespace: "a", Name: "dns6", ClusterIP: netip.MustParseAddr("fd00::a"),
			Ports:     []datapath.ServicePort{{Protocol: datapath.UDP, Port: 53, TargetPort: 5353}, {Protocol: datapath.TCP, Port: 53, TargetPort: 5353}},
			Endpoints: []datapath.Endpoint{ep("fd00:1::1", true)}},
	}}
	assert.Equal(t, UDPEndpoints{
		netip.MustParseAddrPort("10.96.0.10:53"): {netip.MustParseAddrPort("10.244.1.1:5353"): true},
		netip.MustParseAddrPort("[fd00::a]:53"):  {netip.MustParseAddrPort("[fd00:1::1]:5353"): true},
	}, UDPServing(st))
}

// The probe's IPv6 state is ProbeState on IPv6 addresses: every service
// renders in the IPv6 rules.
func TestProbeStateFor(t *testing.T) {
	st := ProbeStateFor(IPv6)
	require.Len(t, st.Services, len(ProbeState().Services))
	for _, svc := range st.Services {
		assert.True(t, IPv6.Has(svc.ClusterIP), svc.String())
		eps, err := FamilyEndpoints(svc, IPv6, "test")
		assert.NoError(t, err)
		for _, ep := range eps {
			assert.True(t, ProbePodCIDRFor(IPv6).Contains(ep), "%v in the probe's IPv6 pod CIDR", ep)
		}
	}
	assert.True(t, ProbeStateFor(IPv4).Services[0].ClusterIP.Is4(), "the IPv4 state is ProbeState")
}
