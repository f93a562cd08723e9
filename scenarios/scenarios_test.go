package scenarios

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every built-in scenario parses and validates: a broken file would only
// show up when a user asks for it.
func TestBuiltinScenariosAreValid(t *testing.T) {
	names := Names()
	require.Contains(t, names, "default")
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			s, err := Load(n)
			require.NoError(t, err)
			assert.Equal(t, n, s.Name, "a scenario's name matches its file name")
		})
	}
}

func TestDefaultScenarioIsTheSkeletonComparison(t *testing.T) {
	s, err := Load("default")
	require.NoError(t, err)
	assert.Equal(t, 12, s.Topology.Backends)
	assert.Equal(t, 1, s.Topology.Clients)
	assert.Equal(t, []string{"socketlb", "iptables-nft", "iptables-legacy", "nftables", "ipvs", "tc-ebpf", "userspace", "direct"}, s.Datapaths)
	assert.Equal(t, []int{1}, s.ServiceCounts())
	assert.Equal(t, 12, s.EndpointsPerService())
}

func TestParseErrorsNameTheField(t *testing.T) {
	base, err := builtin.ReadFile("default.yaml")
	require.NoError(t, err)
	tests := []struct {
		name      string
		from, to  string
		wantField string
	}{
		{"malformed pod CIDR", "podCIDR: 10.244.0.0/16", "podCIDR: 10.244.0.0", "topology.podCIDR"},
		{"malformed service CIDR", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: ten", "topology.serviceCIDR"},
		{"zero backends", "backends: 12", "backends: 0", "topology.backends"},
		{"too many backends", "backends: 12", "backends: 10000", "topology.backends"},
		{"too many nodes", "backends: 12", "backends: 12\n  nodes: 9", "topology.nodes"},
		{"negative nodes", "backends: 12", "backends: 12\n  nodes: -1", "topology.nodes"},
		{"underlay overlaps pods", "backends: 12", "backends: 12\n  underlayCIDR: 10.244.0.0/24", "topology.underlayCIDR"},
		{"IPv6 underlay", "backends: 12", "backends: 12\n  underlayCIDR: fd00::/64", "topology.underlayCIDR"},
		{"bad port", "port: 80", "port: 70000", "service.port"},
		{"unsupported protocol", "protocol: TCP", "protocol: SCTP", "service.protocol"},
		{"udp mode on TCP", "concurrency: [1, 16]", "udpMode: long-lived\n  concurrency: [1, 16]", "workload.udpMode"},
		{"negative concurrency", "concurrency: [1, 16]", "concurrency: [1, -8]", "workload.concurrency"},
		{"tiny duration", "duration: 1500ms", "duration: 1ms", "workload.duration"},
		{"duration not a duration", "duration: 1500ms", "duration: soon", "duration"},
		{"no datapaths", "datapaths: [socketlb, iptables-nft, iptables-legacy, nftables, ipvs, tc-ebpf, userspace, direct]", "datapaths: []", "datapaths"},
		{"unknown field", "name: default", "name: default\ncolour: blue", "colour"},
		{"wrong type", "backends: 12", "backends: twelve", "backends"},
		{"unknown load model", "model: open", "model: half-open", "workload.model"},
		{"load fractions, closed loop", "model: open", "model: closed", "workload.loadFractions"},
		{"open loop, no fractions", "\n  loadFractions: [0.8]", "", "workload.loadFractions"},
		{"load fraction out of range", "loadFractions: [0.8]", "loadFractions: [0.5, 3]", "workload.loadFractions"},
		{"load fraction zero", "loadFractions: [0.8]", "loadFractions: [0]", "workload.loadFractions"},
		{"cost trials at an unlisted level", "repetitions: 6", "repetitions: 6\n  attributionConcurrency: 12", "workload.attributionConcurrency"},
		{"cost trials too short", "repetitions: 6", "repetitions: 6\n  attributionDuration: 10ms", "workload.attributionDuration"},
		{"cost trials of negative length", "repetitions: 6", "repetitions: 6\n  attributionDuration: -1s", "workload.attributionDuration"},
		{"attribution not a bool", "repetitions: 6", "repetitions: 6\n  attribution: sometimes", "attribution"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Contains(t, string(base), tt.from, "test case edits a line that exists")
			_, err := Parse([]byte(strings.Replace(string(base), tt.from, tt.to, 1)), "test.yaml")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantField)
			assert.Contains(t, err.Error(), "test.yaml", "the error names the file")
		})
	}
}

// Cost trials are on unless turned off, at the level nearest 8 unless
// named, and no longer than 1 s unless asked.
func TestAttributionDefaults(t *testing.T) {
	off, on := false, true
	tests := []struct {
		name     string
		w        Workload
		wantOn   bool
		wantC    int
		wantSpan time.Duration
	}{
		{"defaults", Workload{Concurrency: []int{1, 8, 32}, Duration: Duration(3 * time.Second)}, true, 8, time.Second},
		{"nearest 8, the lower of a tie", Workload{Concurrency: []int{32, 4, 12}, Duration: Duration(3 * time.Second)}, true, 4, time.Second},
		{"one level", Workload{Concurrency: []int{64}, Duration: Duration(3 * time.Second)}, true, 64, time.Second},
		{"named level and window", Workload{Concurrency: []int{1, 8, 32}, Duration: Duration(3 * time.Second), Attribution: &on,
			AttributionConcurrency: 32, AttributionDuration: Duration(2 * time.Second)}, true, 32, 2 * time.Second},
		{"window no longer than the plain one", Workload{Concurrency: []int{8}, Duration: Duration(500 * time.Millisecond)}, true, 8, 500 * time.Millisecond},
		{"off", Workload{Concurrency: []int{8}, Duration: Duration(time.Second), Attribution: &off}, false, 8, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.wantOn, tt.w.AttributionOn())
			assert.Equal(t, tt.wantC, tt.w.AttributionLevel())
			assert.Equal(t, tt.wantSpan, tt.w.AttributionWindow())
		})
	}
}

func TestScaleValidation(t *testing.T) {
	s, err := Load("scale")
	require.NoError(t, err)
	assert.Equal(t, []int{1, 100, 1000, 10000}, s.ServiceCounts())
	s.Scale.Endpoints = 13
	assert.ErrorContains(t, s.Validate(), "scale.endpoints")
	s.Scale.Endpoints = 12
	s.Scale.Services = []int{0}
	assert.ErrorContains(t, s.Validate(), "scale.services")
	s.Scale.Services = []int{1}
	s.Scale.EndpointSweep = []int{12, MaxSweepEndpoints + 1}
	assert.ErrorContains(t, s.Validate(), "scale.endpointSweep")
	s.Scale.EndpointSweep = nil
	s.Scale.ApplyTimeout = -1
	assert.ErrorContains(t, s.Validate(), "scale.applyTimeout")
}

func TestScalePoints(t *testing.T) {
	s, err := Load("scale")
	require.NoError(t, err)
	// The services sweep first, then the endpoint sweep without the point
	// both share.
	assert.Equal(t, []ScalePoint{{1, 12}, {100, 12}, {1000, 12}, {10000, 12}, {1, 100}, {1, 1000}}, s.ScalePoints())
	assert.Equal(t, 1000, s.MaxEndpoints())
	assert.Equal(t, time.Minute, s.ApplyTimeout())

	d, err := Load("default")
	require.NoError(t, err)
	assert.Equal(t, []ScalePoint{{1, 12}}, d.ScalePoints())
	assert.Zero(t, d.ApplyTimeout(), "outside a sweep a failed Apply ends the run")
}

func TestApplyQuick(t *testing.T) {
	s, err := Load("scale")
	require.NoError(t, err)
	s.ApplyQuick()
	require.NoError(t, s.Validate())
	assert.Equal(t, []ScalePoint{{1, 12}, {1000, 12}, {1, 100}}, s.ScalePoints())
	assert.Equal(t, 1, s.Workload.Repetitions)
	assert.Equal(t, Duration(time.Second), s.Workload.Duration)
	assert.Nil(t, s.Quick)

	// A scenario without a quick block gets one short repetition, and
	// never longer trials than it had.
	d, err := Load("default")
	require.NoError(t, err)
	d.Workload.Duration = Duration(500 * time.Millisecond)
	d.ApplyQuick()
	assert.Equal(t, 1, d.Workload.Repetitions)
	assert.Equal(t, Duration(500*time.Millisecond), d.Workload.Duration)
	assert.Equal(t, Duration(200*time.Millisecond), d.Workload.Warmup)

	d.Quick = &Quick{Services: []int{1, 10}}
	assert.ErrorContains(t, d.Validate(), "quick.services")
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("/nonexistent/x.yaml")
	assert.ErrorContains(t, err, "cannot read /nonexistent/x.yaml")
}

func TestOpenLoopScenario(t *testing.T) {
	s, err := Load("openloop")
	require.NoError(t, err)
	assert.True(t, s.Workload.OpenLoop())
	assert.Equal(t, []float64{0.5, 0.8}, s.Workload.LoadFractions)
	// Capacity is measured at one scale point: a sweep has many.
	s.Scale = &Scale{Services: []int{1, 10}}
	assert.ErrorContains(t, s.Validate(), "workload.model")

	// The default scenario adds one open-loop fraction after its
	// closed-loop trials, so make bench reports latency at a fixed load.
	d, err := Load("default")
	require.NoError(t, err)
	assert.True(t, d.Workload.OpenLoop())
	assert.Equal(t, []float64{0.8}, d.Workload.LoadFractions)
}

// The socket-kind scenarios: connected UDP and IPv6, each refused with the
// field named when it asks for what the bench cannot do.
func TestSocketKindValidation(t *testing.T) {
	tests := []struct {
		name      string
		scenario  string
		change    func(*Scenario)
		wantField string // "" means valid
	}{
		{"udp-connected as shipped", "udp-connected", func(*Scenario) {}, ""},
		{"ipv6 as shipped", "ipv6", func(*Scenario) {}, ""},
		{"IPv6 with default ranges", "default", func(s *Scenario) { s.Service.IPFamily = IPv6 }, ""},
		{"dual-stack IPv4 service", "default", func(s *Scenario) { s.Topology.PodCIDR6 = "fd00:1::/64" }, ""},
		{"connected on TCP", "default", func(s *Scenario) { s.Workload.UDPMode = "connected" }, "workload.udpMode"},
		{"unknown UDP mode", "udp", func(s *Scenario) { s.Workload.UDPMode = "connect" }, "workload.udpMode"},
		{"unknown family", "default", func(s *Scenario) { s.Service.IPFamily = "ipv6" }, "service.ipFamily"},
		{"IPv4 pod CIDR6", "ipv6", func(s *Scenario) { s.Topology.PodCIDR6 = "10.1.0.0/16" }, "topology.podCIDR6"},
		{"mapped service CIDR6", "ipv6", func(s *Scenario) { s.Topology.ServiceCIDR6 = "::ffff:10.96.0.0/112" }, "topology.serviceCIDR6"},
		{"link-local pod CIDR6", "ipv6", func(s *Scenario) { s.Topology.PodCIDR6 = "fe80::/64" }, "topology.podCIDR6"},
		{"overlapping v6 ranges", "ipv6", func(s *Scenario) { s.Topology.ServiceCIDR6 = "fd00:10:244::/112" }, "topology.serviceCIDR6"},
		{"pod CIDR6 too small", "ipv6", func(s *Scenario) { s.Topology.PodCIDR6 = "fd00:10:244::/125" }, "topology.podCIDR6"},
		{"IPv6 from the host", "ipv6", func(s *Scenario) { s.Workload.Client = ClientHost }, "workload.client"},
		{"split placement", "default", func(s *Scenario) { s.Workload.Placement = PlacementSplit }, ""},
		{"no placement", "default", func(s *Scenario) { s.Workload.Placement = PlacementNone }, ""},
		{"unknown placement", "default", func(s *Scenario) { s.Workload.Placement = "pinned" }, "workload.placement"},
		{"IPv6 endpoint sweep past the pods", "ipv6", func(s *Scenario) {
			s.Scale = &Scale{Services: []int{1}, EndpointSweep: []int{12, 48}}
		}, "scale.endpointSweep"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Load(tt.scenario)
			require.NoError(t, err)
			tt.change(s)
			err = s.Validate()
			if tt.wantField == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantField)
		})
	}
}

func TestRanges6(t *testing.T) {
	tests := []struct {
		name           string
		family         string
		pods, services string
		wantP, wantS   string
	}{
		{"IPv4 only", "", "", "", "", ""},
		{"IPv6 defaults", IPv6, "", "", DefaultPodCIDR6, DefaultServiceCIDR6},
		{"IPv6 given", IPv6, "fd00:1::/64", "fd00:2::/112", "fd00:1::/64", "fd00:2::/112"},
		{"dual-stack IPv4 service, one range given", IPv4, "fd00:1::/64", "", "fd00:1::/64", DefaultServiceCIDR6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Scenario{Topology: Topology{PodCIDR6: tt.pods, ServiceCIDR6: tt.services}, Service: Service{IPFamily: tt.family}}
			p, sv := s.Ranges6()
			assert.Equal(t, tt.wantP, p)
			assert.Equal(t, tt.wantS, sv)
		})
	}
}
