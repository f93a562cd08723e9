package lbmaps_test

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/internal/lbmaps"
)

var (
	errUnsupported = errors.New("unsupported")
	errCapacity    = errors.New("capacity")
)

func ep(pod, addr string) datapath.Endpoint {
	return datapath.Endpoint{Pod: pod, Addr: netip.MustParseAddr(addr), Ready: true, Serving: true}
}

// svc builds a one-port TCP service.
func svc(name, vip string, port, target uint16, eps ...datapath.Endpoint) datapath.Service {
	s := datapath.Service{Namespace: "ns", Name: name, Ports: []datapath.ServicePort{{Name: "p", Protocol: datapath.TCP, Port: port, TargetPort: target}}, Endpoints: eps}
	if vip != "" {
		s.ClusterIP = netip.MustParseAddr(vip)
	}
	return s
}

func st(svcs ...datapath.Service) datapath.State { return datapath.State{Services: svcs} }

func aps(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddrPort(a)
	}
	return out
}

// testRules has roomy limits, no datapath checks and backends encoded as
// themselves; tests change what they exercise.
func testRules() lbmaps.Rules[string, netip.AddrPort] {
	return lbmaps.Rules[string, netip.AddrPort]{MaxServices: 100, MaxBackends: 1000, MaxServiceBackends: 100, ErrUnsupported: errUnsupported, ErrCapacity: errCapacity,
		Backend: func(ap netip.AddrPort) netip.AddrPort { return ap }}
}

func TestPorts(t *testing.T) {
	notReady := ep("old", "10.0.0.9")
	notReady.Ready = false
	terminating := ep("term", "10.0.0.8")
	terminating.Terminating = true
	multi := svc("multi", "10.96.0.20", 80, 8080, ep("a", "10.0.0.1"))
	multi.Ports = append(multi.Ports, datapath.ServicePort{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353})
	// More than 32 endpoints take the map path of the deduplication.
	var many []datapath.Endpoint
	var manyWant []netip.AddrPort
	var manyPods []string
	for i := range 40 {
		e := ep(fmt.Sprintf("p%d", i), fmt.Sprintf("10.0.1.%d", i))
		many = append(many, e, e)
		manyWant = append(manyWant, netip.AddrPortFrom(e.Addr, 80))
		manyPods = append(manyPods, e.Pod)
	}

	type port struct {
		name     string
		frontend string
		proto    uint8
		backends []netip.AddrPort
		pods     []string
	}
	tests := []struct {
		name string
		st   datapath.State
		want []port
	}{
		{
			name: "target port applied to every endpoint",
			st:   st(svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"), ep("b", "10.0.0.2"))),
			want: []port{{"ns/web:80", "10.96.0.10:80", 6, aps("10.0.0.1:8080", "10.0.0.2:8080"), []string{"a", "b"}}},
		},
		{
			name: "target port defaults to port",
			st:   st(svc("web", "10.96.0.10", 80, 0, ep("a", "10.0.0.1"))),
			want: []port{{"ns/web:80", "10.96.0.10:80", 6, aps("10.0.0.1:80"), []string{"a"}}},
		},
		{
			name: "only ready endpoints, duplicates once, the first pod names them",
			st:   st(svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"), notReady, ep("a2", "10.0.0.1"), terminating)),
			want: []port{{"ns/web:80", "10.96.0.10:80", 6, aps("10.0.0.1:8080"), []string{"a"}}},
		},
		{
			name: "serving terminating endpoints when none is ready",
			st:   st(svc("web", "10.96.0.10", 80, 8080, notReady, terminating)),
			want: []port{{"ns/web:80", "10.96.0.10:80", 6, aps("10.0.0.8:8080"), []string{"term"}}},
		},
		{
			name: "v4-mapped addresses are unmapped",
			st:   st(svc("web", "::ffff:10.96.0.10", 80, 8080, ep("a", "::ffff:10.0.0.1"), ep("a2", "10.0.0.1"))),
			want: []port{{"ns/web:80", "10.96.0.10:80", 6, aps("10.0.0.1:8080"), []string{"a"}}},
		},
		{
			name: "many endpoints deduplicated in order",
			st:   st(svc("big", "10.96.0.10", 80, 80, many...)),
			want: []port{{"ns/big:80", "10.96.0.10:80", 6, manyWant, manyPods}},
		},
		{
			name: "no endpoints still gives the port",
			st:   st(svc("empty", "10.96.0.11", 80, 8080)),
			want: []port{{"ns/empty:80", "10.96.0.11:80", 6, nil, nil}},
		},
		{
			name: "one port per port and protocol",
			st:   st(multi),
			want: []port{
				{"ns/multi:80", "10.96.0.20:80", 6, aps("10.0.0.1:8080"), []string{"a"}},
				{"ns/multi:53", "10.96.0.20:53", 17, aps("10.0.0.1:5353"), []string{"a"}},
			},
		},
		{
			name: "headless service skipped",
			st:   st(svc("headless", "", 80, 8080, ep("a", "10.0.0.1"))),
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRules()
			ports, err := r.Ports(tt.st)
			require.NoError(t, err)
			var got []port
			for _, p := range ports {
				got = append(got, port{p.Name, p.Frontend.String(), p.Protocol, p.Backends, p.Pods})
				assert.Equal(t, fmt.Sprintf("%s:%d", p.Service, p.Port.Port), p.Name)
			}
			assert.Equal(t, tt.want, got)
		})
	}

	t.Run("service check result reaches every port", func(t *testing.T) {
		r := testRules()
		r.Service = func(svc datapath.Service, vip netip.Addr) (string, error) { return svc.Name + "@" + vip.String(), nil }
		ports, err := r.Ports(st(multi))
		require.NoError(t, err)
		require.Len(t, ports, 2)
		for _, p := range ports {
			assert.Equal(t, "multi@10.96.0.20", p.Info)
		}
	})
}

func TestPortsRejects(t *testing.T) {
	sctp := svc("sctp", "10.96.0.10", 80, 80)
	sctp.Ports[0].Protocol = "SCTP"
	// A service both the datapath's service check and the port checks
	// reject: the service check goes first.
	badTwice := svc("bad", "10.96.0.10", 0, 80)
	noV6 := func(svc datapath.Service, vip netip.Addr) (string, error) {
		if !vip.Is4() {
			return "", fmt.Errorf("service %s: no IPv6: %w", svc, errUnsupported)
		}
		return "", nil
	}
	noPod9 := func(port string, _ netip.Addr, ep datapath.Endpoint) error {
		if ep.Pod == "p9" {
			return fmt.Errorf("service %s: endpoint %s: %w", port, ep.Pod, errUnsupported)
		}
		return nil
	}
	eps := func(n int) []datapath.Endpoint {
		out := make([]datapath.Endpoint, n)
		for i := range out {
			out[i] = ep(fmt.Sprintf("p%d", i), fmt.Sprintf("10.0.%d.%d", i>>8, i&0xff))
		}
		return out
	}
	var tenServices []datapath.Service
	for i := range 10 {
		tenServices = append(tenServices, svc(fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.0.%d", i+1), 80, 80, eps(3)...))
	}

	tests := []struct {
		name    string
		rules   func(*lbmaps.Rules[string, netip.AddrPort])
		st      datapath.State
		wantErr error
		wantMsg string
	}{
		{"unknown protocol", nil, st(sctp), errUnsupported, `service ns/sctp:80: protocol "SCTP"`},
		{"port zero", nil, st(svc("zero", "10.96.0.10", 0, 80)), errUnsupported, "service ns/zero:0: port 0"},
		{"duplicate frontend", nil, st(svc("a", "10.96.0.10", 80, 80), svc("b", "10.96.0.10", 80, 81)), errUnsupported, "service ns/b:80: frontend 10.96.0.10:80/TCP already used by ns/a:80"},
		{"duplicate frontend through a v4-mapped ClusterIP", nil, st(svc("a", "10.96.0.10", 80, 80), svc("b", "::ffff:10.96.0.10", 80, 81)), errUnsupported, "already used by ns/a:80"},
		{"service check", func(r *lbmaps.Rules[string, netip.AddrPort]) { r.Service = noV6 }, st(svc("v6", "fd00::10", 80, 80)), errUnsupported, "service ns/v6: no IPv6"},
		{"service check before port checks", func(r *lbmaps.Rules[string, netip.AddrPort]) { r.Service = noV6 }, st(svc("v6", "fd00::10", 0, 80), badTwice), errUnsupported, "no IPv6"},
		{"endpoint check", func(r *lbmaps.Rules[string, netip.AddrPort]) { r.Endpoint = noPod9 }, st(svc("web", "10.96.0.10", 80, 80, eps(10)...)), errUnsupported, "service ns/web:80: endpoint p9"},
		{"too many backends for one service", func(r *lbmaps.Rules[string, netip.AddrPort]) { r.MaxServiceBackends = 4 }, st(svc("big", "10.96.0.10", 80, 80, eps(5)...)), errCapacity, "service ns/big:80: 5 endpoints, at most 4"},
		{"too many service ports", func(r *lbmaps.Rules[string, netip.AddrPort]) { r.MaxServices = 9 }, st(tenServices...), errCapacity, "10 service ports, at most 9"},
		{"too many backends", func(r *lbmaps.Rules[string, netip.AddrPort]) { r.MaxBackends = 29 }, st(tenServices...), errCapacity, "30 backends, at most 29"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRules()
			if tt.rules != nil {
				tt.rules(&r)
			}
			_, err := r.Ports(tt.st)
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.wantErr)
			assert.Contains(t, err.Error(), tt.wantMsg)
		})
	}

	t.Run("limits are inclusive", func(t *testing.T) {
		r := testRules()
		r.MaxServices, r.MaxBackends, r.MaxServiceBackends = 10, 30, 3
		_, err := r.Ports(st(tenServices...))
		assert.NoError(t, err)
	})
}
