package scenarios

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every built-in conformance scenario parses and validates, and states its
// behaviour and source (the table and docs print them).
func TestBuiltinConformanceScenarios(t *testing.T) {
	all, err := LoadAllConformance()
	require.NoError(t, err)
	// The twelve behaviours need at least this many files.
	require.GreaterOrEqual(t, len(all), 20)
	for _, c := range all {
		t.Run(c.Name, func(t *testing.T) {
			assert.NotEmpty(t, c.Behaviour)
			assert.NotEmpty(t, c.Source)
			hasExpect := false
			for _, st := range c.Steps {
				hasExpect = hasExpect || len(st.Expect) > 0
			}
			assert.True(t, hasExpect, "a scenario without expectations checks nothing")
		})
	}
}

func TestParsePods(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		err  string
	}{
		{"0-3", []int{0, 1, 2, 3}, ""},
		{"3", []int{3}, ""},
		{"5-6,0,2,0", []int{0, 2, 5, 6}, ""},
		{"0-12", nil, "run from 0 to 11"},
		{"x", nil, "not a pod index"},
		{"4-2", nil, "not a range"},
		{"", nil, "not a pod index"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePods(tt.in, 12)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// A valid base scenario; each bad case breaks one field, and the error must
// name that field.
const baseConformance = `
behaviour: b
source: s
backends: 4
services:
- name: web
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
  endpoints: [{pods: 0-3}]
steps:
- id: traffic
  probe: {op: tcp, target: {service: web, port: http}, count: 10, background: true}
- id: change
  update: [{name: web, endpoints: []}]
- wait: traffic
  expect:
  - {check: ok}
  - {check: recovers, after: change, within: 1s}
`

func TestParseConformanceBadInput(t *testing.T) {
	_, err := ParseConformance([]byte(baseConformance), "base")
	require.NoError(t, err, "the base scenario must be valid for the cases below to mean anything")
	tests := []struct {
		name, old, new, field string
	}{
		{"unknown field", "backends: 4", "backends: 4\ncolour: blue", "colour"},
		{"no behaviour", "behaviour: b", "", "behaviour"},
		{"bad family", "backends: 4", "backends: 4\nfamily: ipx", "family"},
		{"too many nodes", "backends: 4", "backends: 4\nnodes: 9", "nodes"},
		{"bad traffic policy", "- name: web\n", "- name: web\n  internalTrafficPolicy: Node\n", "services[0].internalTrafficPolicy"},
		{"bad protocol", "protocol: TCP", "protocol: SCTP", "services[0].ports[0].protocol"},
		{"port range", "port: 80", "port: 70000", "services[0].ports[0].port"},
		{"pods out of range", "pods: 0-3", "pods: 0-4", "services[0].endpoints[0].pods"},
		{"unknown op", "op: tcp", "op: sctp", "steps[0].probe.op"},
		{"unknown service", "service: web, port: http", "service: api, port: http", "steps[0].probe.target.service"},
		{"unknown port", "port: http}", "port: https}", "steps[0].probe.target.port"},
		{"no count", "count: 10", "interval: 1s", "steps[0].probe.count or duration"},
		{"update unknown service", "update: [{name: web", "update: [{name: api", "steps[1].update[0].name"},
		{"unknown check", "check: ok", "check: fine", "steps[2].expect[0].check"},
		{"mark not earlier", "after: change", "after: later", "steps[2].expect[1].after"},
		{"recovers without within", ", within: 1s", "", "steps[2].expect[1].within"},
		{"wait for nothing", "wait: traffic", "wait: other", "steps[2].wait"},
		{"two actions", "- id: change\n  update", "- id: change\n  sleep: 1s\n  update", "steps[1]: exactly one"},
		{"bad from", "op: tcp,", "op: tcp, from: \"backend:9\",", "steps[0].probe.from"},
		{"long-lived tcp", "op: tcp,", "op: tcp, socket: long-lived,", "steps[0].probe.socket"},
		{"late reply from a TCP port", "- wait: traffic", "- lateReply: {pod: \"0\", service: web, port: http, localPort: 4000}\n- wait: traffic", "steps[2].lateReply.port"},
		{"late reply from no pod", "- wait: traffic", "- lateReply: {pod: \"7\", service: web, port: http, localPort: 4000}\n- wait: traffic", "steps[2].lateReply.pod"},
		{"late-from without equals", "{check: ok}", "{check: late-from}", "steps[2].expect[0].equals"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := strings.Replace(baseConformance, tt.old, tt.new, 1)
			require.NotEqual(t, baseConformance, y, "test case does not change the scenario")
			_, err := ParseConformance([]byte(y), "bad")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.field)
		})
	}
}

func TestLoadConformanceUnknown(t *testing.T) {
	_, err := LoadConformance("nosuch")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "tcp-spread", "the error lists the built-in scenarios")
}

// A lateReply step names a UDP port of a scenario service and the port the
// probe is bound to.
func TestParseConformanceLateReply(t *testing.T) {
	const y = `
behaviour: b
source: s
backends: 2
services:
- name: dns
  ports: [{name: dns, protocol: UDP, port: 53, targetPort: 5353}]
  endpoints: [{pods: "0"}]
steps:
- id: traffic
  probe: {op: udp, socket: long-lived, localPort: 40053, target: {service: dns, port: dns}, count: 3, background: true}
- lateReply: {pod: "1", service: dns, port: dns, localPort: 40053}
- wait: traffic
  expect: [{check: late-from, equals: dialed}]
`
	c, err := ParseConformance([]byte(y), "late")
	require.NoError(t, err)
	require.NotNil(t, c.Steps[1].LateReply)
	assert.Equal(t, LateReply{Pod: "1", Service: "dns", Port: "dns", LocalPort: 40053}, *c.Steps[1].LateReply)
	for _, tt := range []struct{ name, old, new, field string }{
		{"no local port", ", localPort: 40053}\n- wait", "}\n- wait", "steps[1].lateReply.localPort"},
		{"unknown service", "service: dns, port: dns, localPort: 40053}\n- wait", "service: api, port: dns, localPort: 40053}\n- wait", "steps[1].lateReply.service"},
		{"bad to", "lateReply: {pod", "lateReply: {to: nowhere, pod", "steps[1].lateReply.to"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := strings.Replace(y, tt.old, tt.new, 1)
			require.NotEqual(t, y, bad)
			_, err := ParseConformance([]byte(bad), "bad")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.field)
		})
	}
}

// Rows declare that they need a Service (needsService) and are hostNetwork
// rows by their probes (from: host); the built-in files say so where the
// behaviour demands it.
func TestConformanceScope(t *testing.T) {
	tests := []struct {
		name         string
		needsService bool
		host         bool
	}{
		{"affinity-clientip", true, false},
		{"no-endpoints-tcp", true, false},
		{"no-endpoints-udp", true, false},
		{"terminating-fallback", true, false},
		{"endpoint-removed-added", true, false},
		{"udp-backend-change-new-socket", true, false},
		{"udp-late-reply-after-resteer", true, false},
		{"tcp-spread", false, false},
		{"hairpin", false, false},
		{"host-client-tcp", false, true},
		{"host-client-udp", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadConformance(tt.name)
			require.NoError(t, err)
			assert.Equal(t, tt.needsService, c.NeedsService)
			assert.Equal(t, tt.host, c.HostClient())
		})
	}
}
