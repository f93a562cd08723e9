package scenarios_test

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/harness/bench"
	"svclab/harness/topology"
	"svclab/scenarios"
)

// ruleSafe is what a name may contain once it is in a ruleset: nft chain
// names and iptables comments are built from namespace/name.
var ruleSafe = regexp.MustCompile(`^[a-z0-9][-a-z0-9]*/[a-z][-a-z0-9]*$`)

// fakeLookup knows every datapath name and probes nothing: the fuzz
// target checks input handling, not this machine.
func fakeLookup(name string) (datapath.Factory, error) {
	return datapath.Factory{Name: name}, nil
}

// FuzzParse feeds arbitrary bytes to scenario parsing and validation. It
// must never panic, never leak Go internals into the message, and
// whatever it accepts must be buildable: the topology's own Validate
// passes, the plan is made, and the state the datapaths are given holds
// only rule-safe names and addresses inside the scenario's ranges. The
// seed corpus (the built-in scenarios and testdata/fuzz/FuzzParse) runs in
// every plain `go test`.
func FuzzParse(f *testing.F) {
	for _, n := range scenarios.Names() {
		b, err := scenarios.Builtin(n)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := scenarios.Parse(b, "fuzz.yaml")
		if err != nil {
			msg := err.Error()
			require.True(t, strings.HasPrefix(msg, "scenario fuzz.yaml"), "the error names the file: %s", msg)
			require.NotContains(t, msg, "Go struct field")
			return
		}
		// Accepted: every name is a Kubernetes name.
		require.NoError(t, scenarios.CheckNamespace(s.Service.Namespace))
		require.NoError(t, scenarios.CheckServiceName(s.Service.Name))
		pods := netip.MustParsePrefix(s.Topology.PodCIDR)
		svcs := netip.MustParsePrefix(s.Topology.ServiceCIDR)
		cfg := topology.Config{Prefix: "svclab-fuzz", Clients: s.Topology.Clients, Backends: s.Topology.Backends, PodCIDR: pods, ServiceCIDR: svcs}
		if p6, s6 := s.Ranges6(); p6 != "" {
			cfg.PodCIDR6, cfg.ServiceCIDR6 = netip.MustParsePrefix(p6), netip.MustParsePrefix(s6)
			if s.Service.Family() == scenarios.IPv6 {
				// ClusterIPs come from the IPv6 range.
				svcs = cfg.ServiceCIDR6
			}
		}
		require.NoError(t, cfg.Validate(), "accepted by the scenario, refused by the topology")
		p, err := bench.NewPlanWith(s, fakeLookup)
		if err != nil {
			// Only the endpoint sweep's extra addresses are laid out by
			// the topology; they are still refused before anything is
			// built.
			require.Contains(t, err.Error(), "scale.endpointSweep")
			return
		}
		// The state a datapath is given: the service, or the sweep's last
		// service, each with every backend.
		var eps []datapath.Endpoint
		for i := range s.Topology.Backends {
			a := topology.NthHost(pods, s.Topology.Clients+i+1)
			require.True(t, pods.Contains(a))
			eps = append(eps, datapath.Endpoint{Addr: a, Ready: true, Serving: true})
		}
		svc := p.Service
		svc.Endpoints = eps
		require.Regexp(t, ruleSafe, svc.String())
		require.True(t, svcs.Contains(svc.ClusterIP), "ClusterIP %s outside %s", svc.ClusterIP, svcs)
		if n := s.ServiceCounts(); len(n) > 0 {
			last := topology.NthHost(svcs, 9+maxOf(n))
			if maxOf(n) > 1 {
				require.True(t, svcs.Contains(last), "the sweep's last ClusterIP %s is outside %s", last, svcs)
				require.NotEqual(t, topology.NthHost(svcs, 0), last)
			}
		}
		for _, a := range []netip.Addr{svc.ClusterIP, eps[0].Addr} {
			require.NoError(t, scenarios.CheckRange(netip.PrefixFrom(a, a.BitLen())))
		}
	})
}

func maxOf(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// FuzzParseConformance: no panic, and accepted services have Kubernetes
// names and port names.
func FuzzParseConformance(f *testing.F) {
	for _, n := range scenarios.ConformanceNames() {
		b, err := scenarios.BuiltinConformance(n)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := scenarios.ParseConformance(b, "fuzz")
		if err != nil {
			require.NotContains(t, err.Error(), "Go struct field")
			return
		}
		for _, s := range c.Services {
			require.NoError(t, scenarios.CheckServiceName(s.Name))
			for _, p := range s.Ports {
				require.NoError(t, scenarios.CheckPortName(p.Name))
			}
		}
	})
}
