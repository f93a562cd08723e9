package baselinetest

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/baselines/internal/twin6"
	"svclab/datapath"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current renderer")

// PodCIDR is the pod network of the fixtures: every endpoint is in it.
var PodCIDR = netip.MustParsePrefix("10.244.0.0/16")

// Endpoints returns n ready endpoints 10.244.<subnet>.1 … .n.
func Endpoints(subnet, n int) []datapath.Endpoint {
	eps := make([]datapath.Endpoint, n)
	for i := range eps {
		eps[i] = datapath.Endpoint{
			Pod:     fmt.Sprintf("backend-%d-%d", subnet, i),
			Addr:    netip.AddrFrom4([4]byte{10, 244, byte(subnet), byte(i + 1)}),
			Ready:   true,
			Serving: true,
		}
	}
	return eps
}

// Service ports of the fixtures.
var (
	HTTPPort = datapath.ServicePort{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}
	DNSTCP   = datapath.ServicePort{Name: "dns-tcp", Protocol: datapath.TCP, Port: 53, TargetPort: 5353}
	DNSUDP   = datapath.ServicePort{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353}
)

// WebService is bench/web on 10.96.0.10:80/TCP with n endpoints in
// 10.244.1.0/24.
func WebService(n int) datapath.Service {
	return datapath.Service{
		Namespace: "bench", Name: "web",
		ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []datapath.ServicePort{HTTPPort},
		Endpoints: Endpoints(1, n),
	}
}

// DNSService is kube-system/dns on 10.96.0.53, port 53 over TCP and UDP,
// with two endpoints in 10.244.2.0/24.
func DNSService() datapath.Service {
	return datapath.Service{
		Namespace: "kube-system", Name: "dns",
		ClusterIP: netip.MustParseAddr("10.96.0.53"),
		Ports:     []datapath.ServicePort{DNSTCP, DNSUDP},
		Endpoints: Endpoints(2, 2),
	}
}

// EmptyService is bench/empty on 10.96.0.20:80/TCP without endpoints.
func EmptyService() datapath.Service {
	return datapath.Service{
		Namespace: "bench", Name: "empty",
		ClusterIP: netip.MustParseAddr("10.96.0.20"),
		Ports:     []datapath.ServicePort{HTTPPort},
	}
}

// DrainingWebService is WebService(3) with every endpoint terminating
// and the third one no longer serving: the first two must still take new
// connections (ReadyEndpoints' fallback), the third never.
func DrainingWebService() datapath.Service {
	svc := WebService(3)
	for i := range svc.Endpoints {
		svc.Endpoints[i].Ready = false
		svc.Endpoints[i].Terminating = true
	}
	svc.Endpoints[2].Serving = false
	return svc
}

// TwoServices is web with 3 endpoints and the two-port dns service.
func TwoServices() datapath.State {
	return datapath.State{Services: []datapath.Service{WebService(3), DNSService()}}
}

// GoldenCase is one sync whose rendered text a golden file pins: State,
// rendered after a sync of Prev (nil: the first sync after Setup).
type GoldenCase struct {
	Name  string
	State datapath.State
	Prev  *datapath.State
}

// GoldenCases are the syncs every ruleset baseline pins in
// testdata/<Name>.golden.
func GoldenCases() []GoldenCase {
	two := TwoServices()
	return []GoldenCase{
		{Name: "one_service_12_endpoints", State: datapath.State{Services: []datapath.Service{WebService(12)}}},
		{Name: "no_endpoints", State: datapath.State{Services: []datapath.Service{EmptyService()}}},
		{Name: "two_services_multiport", State: two},
		// The second sync drops kube-system/dns: its per-service and
		// per-endpoint chains must be deleted in the same transaction.
		{Name: "second_apply_drops_service", State: datapath.State{Services: []datapath.Service{WebService(3)}}, Prev: &two},
	}
}

// CheckGoldenCases renders every GoldenCase with render and compares the
// text with its golden file (CheckGolden), each in a subtest. render turns
// a state into the text of one sync and the per-service chains it leaves;
// a case with Prev gets the chains a render of Prev after Setup left (the
// zero C for the first sync), so the chains it no longer uses are deleted
// in the same transaction.
func CheckGoldenCases[C any](t *testing.T, render func(st datapath.State, prev C) (text []byte, chains C, err error)) {
	t.Helper()
	checkGoldenCases(t, "", func(st datapath.State) datapath.State { return st }, render)
}

// checkGoldenCases is CheckGoldenCases with every case's states passed
// through family and its names (subtest and golden file) prefixed.
func checkGoldenCases[C any](t *testing.T, prefix string, family func(datapath.State) datapath.State, render func(st datapath.State, prev C) (text []byte, chains C, err error)) {
	t.Helper()
	for _, tc := range GoldenCases() {
		t.Run(prefix+tc.Name, func(t *testing.T) {
			var prev C
			if tc.Prev != nil {
				_, chains, err := render(family(*tc.Prev), prev)
				require.NoError(t, err)
				prev = chains
			}
			text, _, err := render(family(tc.State), prev)
			require.NoError(t, err)
			CheckGolden(t, prefix+tc.Name, text)
		})
	}
}

// PodCIDR6 is the IPv6 pod network of the fixtures: it holds the
// twin6.Addr of every endpoint address (fd00:10:244::/48).
var PodCIDR6 = twin6.Prefix(PodCIDR)

// CheckGoldenCases6 is CheckGoldenCases for the IPv6 ruleset: every case's
// states replaced by their twin6.State (the same services on
// IPv6 addresses), pinned in testdata/ipv6_<Name>.golden beside the IPv4
// files, which it leaves alone.
func CheckGoldenCases6[C any](t *testing.T, render func(st datapath.State, prev C) (text []byte, chains C, err error)) {
	t.Helper()
	checkGoldenCases(t, "ipv6_", twin6.State, render)
}

// CheckGolden compares got with testdata/<name>.golden, or rewrites the
// file under -update.
func CheckGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "read golden file (run go test -update to create it)")
	assert.Equal(t, string(want), string(got), "rendered ruleset differs from %s (go test -update rewrites it)", path)
}

// ThreeByTwo is three one-port services bench/s0 … s2 on 10.96.1.1 … .3,
// with two endpoints each in 10.244.1.0/24 … 10.244.3.0/24.
func ThreeByTwo() datapath.State {
	var st datapath.State
	for i := range 3 {
		st.Services = append(st.Services, datapath.Service{
			Namespace: "bench", Name: fmt.Sprintf("s%d", i),
			ClusterIP: netip.AddrFrom4([4]byte{10, 96, 1, byte(i + 1)}),
			Ports:     []datapath.ServicePort{HTTPPort},
			Endpoints: Endpoints(i+1, 2),
		})
	}
	return st
}

// ScaleState is the state the harness programs at a scale point: n
// services bench/svc-00000 … on port 80 → 8080 with consecutive ClusterIPs
// from 10.96.0.10, all with the same endpoints 10.244.0.1 … .<endpoints>
// (at most 254).
func ScaleState(n, endpoints int) datapath.State {
	eps := Endpoints(0, endpoints)
	st := datapath.State{Services: make([]datapath.Service, n)}
	for i := range n {
		v := 10 + i
		st.Services[i] = datapath.Service{Namespace: "bench", Name: fmt.Sprintf("svc-%05d", i),
			ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte(v >> 8), byte(v)}),
			Ports:     []datapath.ServicePort{HTTPPort}, Endpoints: eps}
	}
	return st
}
