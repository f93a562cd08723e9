package scenarios

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every input that can only fail later (or that would put text of the
// user's into a ruleset) is refused by Parse, and the error names the
// file, the key as the file spells it, and the kind of refusal. Rows edit
// one line of a built-in scenario, or replace the whole file.
func TestParseRefusesBadInput(t *testing.T) {
	def := readBuiltin(t, "default.yaml")
	scale := readBuiltin(t, "scale.yaml")
	tests := []struct {
		name string
		base string // "" for def
		// from is replaced by to; with from empty, to is the whole file.
		from, to  string
		wantField string
		wantKind  error
	}{
		// Address ranges no pod or Service can use.
		{"multicast pod CIDR", "", "podCIDR: 10.244.0.0/16", "podCIDR: 224.0.0.0/16", "topology.podCIDR", ErrRange},
		{"multicast service CIDR", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 239.1.0.0/16", "topology.serviceCIDR", ErrRange},
		{"loopback pod CIDR", "", "podCIDR: 10.244.0.0/16", "podCIDR: 127.0.0.0/16", "topology.podCIDR", ErrRange},
		{"loopback service CIDR", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 127.0.0.0/8", "topology.serviceCIDR", ErrRange},
		{"link-local pod CIDR", "", "podCIDR: 10.244.0.0/16", "podCIDR: 169.254.0.0/16", "topology.podCIDR", ErrRange},
		{"link-local service CIDR", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 169.254.100.0/24", "topology.serviceCIDR", ErrRange},
		{"unspecified pod CIDR", "", "podCIDR: 10.244.0.0/16", "podCIDR: 0.0.0.0/16", "topology.podCIDR", ErrRange},
		{"everything", "", "podCIDR: 10.244.0.0/16", "podCIDR: 0.0.0.0/0", "topology.podCIDR", ErrRange},
		{"reserved class E", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 240.0.0.0/16", "topology.serviceCIDR", ErrRange},
		{"broadcast", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 255.255.255.255/32", "topology.serviceCIDR", ErrRange},
		{"range covering loopback", "", "podCIDR: 10.244.0.0/16", "podCIDR: 64.0.0.0/2", "topology.podCIDR", ErrRange},
		{"IPv6 loopback", "", "podCIDR: 10.244.0.0/16", "podCIDR: ::1/128", "topology.podCIDR", ErrRange},
		{"IPv6 unspecified", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: ::/128", "topology.serviceCIDR", ErrRange},
		{"IPv6 link-local", "", "podCIDR: 10.244.0.0/16", "podCIDR: fe80::/64", "topology.podCIDR", ErrRange},
		{"IPv6 multicast", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: ff02::/16", "topology.serviceCIDR", ErrRange},
		{"IPv6 unicast in an IPv4 topology", "", "podCIDR: 10.244.0.0/16", "podCIDR: fd00:10:244::/64", "topology.podCIDR", ErrRange},
		{"host bits set", "", "podCIDR: 10.244.0.0/16", "podCIDR: 10.244.1.0/16", "topology.podCIDR", ErrRange},
		{"prefix length 33", "", "podCIDR: 10.244.0.0/16", "podCIDR: 10.244.0.0/33", "topology.podCIDR", ErrRange},
		{"no prefix length", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.96.0.0", "topology.serviceCIDR", ErrRange},
		{"empty CIDR", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: ''", "topology.serviceCIDR", ErrRange},
		{"service CIDR inside pod CIDR", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.244.128.0/20", "topology.serviceCIDR", ErrRange},
		{"same CIDR twice", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.244.0.0/16", "topology.serviceCIDR", ErrRange},
		{"pod CIDR inside service CIDR", "", "podCIDR: 10.244.0.0/16", "podCIDR: 10.96.4.0/24", "topology.serviceCIDR", ErrRange},
		{"pod CIDR too small for the pods", "", "podCIDR: 10.244.0.0/16", "podCIDR: 10.244.0.0/29", "topology.podCIDR", ErrRange},
		{"pod CIDR /32", "", "podCIDR: 10.244.0.0/16", "podCIDR: 10.244.0.1/32", "topology.podCIDR", ErrRange},
		{"service CIDR too small for the sweep", scale, "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.96.0.0/24", "topology.serviceCIDR", ErrRange},
		{"service CIDR /32", "", "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.96.0.1/32", "topology.serviceCIDR", ErrRange},

		// Names that are not Kubernetes names: they would reach rulesets.
		{"name closing a quote", "", "name: echo", `name: "echo\"; flush ruleset; #"`, "service.name", ErrName},
		{"name with a newline", "", "name: echo", `name: "echo\nflush ruleset"`, "service.name", ErrName},
		{"namespace with a newline", "", "namespace: default", `namespace: "default\nflush ruleset"`, "service.namespace", ErrName},
		{"namespace with a quote", "", "namespace: default", `namespace: 'a"b'`, "service.namespace", ErrName},
		{"upper-case name", "", "name: echo", "name: Echo", "service.name", ErrName},
		{"upper-case namespace", "", "namespace: default", "namespace: Default", "service.namespace", ErrName},
		{"name of 64 characters", "", "name: echo", "name: " + strings.Repeat("a", 64), "service.name", ErrName},
		{"namespace of 64 characters", "", "namespace: default", "namespace: " + strings.Repeat("a", 64), "service.namespace", ErrName},
		{"name starting with a digit", "", "name: echo", "name: 1echo", "service.name", ErrName},
		{"name ending with a dash", "", "name: echo", "name: echo-", "service.name", ErrName},
		{"name with a dot", "", "name: echo", "name: echo.svc", "service.name", ErrName},
		{"name with a space", "", "name: echo", "name: 'echo server'", "service.name", ErrName},
		{"name with a slash", "", "name: echo", "name: default/echo", "service.name", ErrName},
		{"name with an underscore", "", "name: echo", "name: echo_1", "service.name", ErrName},
		{"name with a non-ASCII letter", "", "name: echo", "name: écho", "service.name", ErrName},
		{"empty name", "", "name: echo", "name: ''", "service.name", ErrName},
		{"namespace with a null byte", "", "namespace: default", `namespace: "def\0ault"`, "service.namespace", ErrName},
		{"namespace with an escape sequence", "", "namespace: default", `namespace: "\e[31mred"`, "service.namespace", ErrName},
		{"scenario name with a newline", "", "name: default", `name: "default\nx"`, "name", ErrName},
		{"scenario name with a slash", "", "name: default", `name: ../../etc`, "name", ErrName},
		{"description with an escape sequence", "", "description: one client", `description: "\e]0;pwned\a" #`, "description", ErrInvalid},
		{"datapath name with a quote", "", "datapaths: [socketlb,", `datapaths: ['sock"etlb',`, "datapaths", ErrName},

		// Durations that can only fail later.
		{"duration past a day", "", "duration: 1500ms", "duration: 100000h", "workload.duration", ErrDuration},
		{"duration of 25h", "", "duration: 1500ms", "duration: 25h", "workload.duration", ErrDuration},
		{"negative duration", "", "duration: 1500ms", "duration: -3s", "workload.duration", ErrDuration},
		{"warm-up past a day", "", "warmup: 300ms", "warmup: 48h", "workload.warmup", ErrDuration},
		{"negative warm-up", "", "warmup: 300ms", "warmup: -1s", "workload.warmup", ErrDuration},
		{"apply timeout past a day", scale, "applyTimeout: 60s", "applyTimeout: 1000h", "scale.applyTimeout", ErrDuration},
		{"negative apply timeout", scale, "applyTimeout: 60s", "applyTimeout: -60s", "scale.applyTimeout", ErrDuration},
		{"quick duration past a day", scale, "  duration: 1s", "  duration: 30h", "quick.duration", ErrDuration},
		{"duration overflowing int64", "", "duration: 1500ms", "duration: 9999999999999h", "workload.duration", ErrType},
		{"duration without a unit", "", "duration: 1500ms", "duration: 3", "workload.duration", ErrType},
		{"duration not a duration", "", "duration: 1500ms", "duration: soon", "workload.duration", ErrType},

		// Wrong types: named by key and line, not by Go type.
		{"word for an integer", "", "backends: 12", "backends: x", "topology.backends", ErrType},
		{"float for an integer", "", "backends: 12", "backends: 1.5", "topology.backends", ErrType},
		{"integer overflowing", "", "backends: 12", "backends: 99999999999999999999999", "topology.backends", ErrType},
		{"list for an integer", "", "port: 80", "port: [80]", "service.port", ErrType},
		{"mapping for a string", "", "protocol: TCP", "protocol: {tcp: true}", "service.protocol", ErrType},
		{"scalar for a list", "", "concurrency: [1, 16]", "concurrency: 8", "workload.concurrency", ErrType},
		{"word in a list of integers", "", "concurrency: [1, 16]", "concurrency: [1, eight]", "workload.concurrency[1]", ErrType},
		{"scalar for a mapping", "", "service:\n", "service: echo\nx:\n", "service", ErrType},
		{"NaN load fraction", "", "loadFractions: [0.8]", "loadFractions: [.nan]", "workload.loadFractions[0]", ErrType},
		{"yes for a bool", scale, "measureChange: true", "measureChange: yes", "scale.measureChange", ErrType},

		// Unknown and repeated keys.
		{"unknown top-level key", "", "name: default", "name: default\ncolour: blue", "colour", ErrUnknownKey},
		{"unknown nested key", "", "backends: 12", "backends: 12\n  zones: 3", "topology.zones", ErrUnknownKey},
		{"snake_case key", "", "podCIDR: 10.244.0.0/16", "pod_cidr: 10.244.0.0/16", "topology.pod_cidr", ErrUnknownKey},
		{"wrong case key", "", "podCIDR: 10.244.0.0/16", "PodCIDR: 10.244.0.0/16", "topology.PodCIDR", ErrUnknownKey},
		{"repeated key", "", "backends: 12", "backends: 12\n  backends: 13", "topology.backends", ErrUnknownKey},

		// Not a scenario at all.
		{"binary garbage", "", "", "\x7fELF\x02\x01\x01\x00\x00\x00", "", ErrNotYAML},
		{"invalid UTF-8", "", "", "name: \xff\xfe\n", "", ErrNotYAML},
		{"gzip bytes", "", "", "\x1f\x8b\x08\x00\x00\x00\x00\x00", "", ErrNotYAML},
		{"YAML syntax error", "", "", "name: [unclosed\n", "", ErrNotYAML},
		{"a list, not a mapping", "", "", "- a\n- b\n", "", ErrNotYAML},
		{"a scalar", "", "", "just words\n", "", ErrNotYAML},
		{"empty file", "", "", "", "", ErrNotYAML},
		{"two documents", "", "datapaths:", "---\nname: other\n---\ndatapaths:", "", ErrNotYAML},
		{"JSON array", "", "", `[{"name": "x"}]`, "", ErrNotYAML},
	}
	require.GreaterOrEqual(t, len(tests), 40)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.to
			if tt.from != "" {
				base := def
				if tt.base != "" {
					base = tt.base
				}
				require.Contains(t, base, tt.from, "the row edits a line that exists")
				in = strings.Replace(base, tt.from, tt.to, 1)
			}
			s, err := Parse([]byte(in), "test.yaml")
			require.Error(t, err, "accepted: %+v", s)
			msg := err.Error()
			assert.ErrorIs(t, err, tt.wantKind)
			assert.Contains(t, msg, "test.yaml", "the error names the file")
			if tt.wantField != "" {
				assert.Contains(t, msg, tt.wantField+":", "the error names the key as the file spells it")
			}
			// Never Go internals.
			for _, internal := range []string{"Go struct field", "json:", "unmarshal", "scenarios.", "reflect"} {
				assert.NotContains(t, msg, internal)
			}
		})
	}
}

func readBuiltin(t *testing.T, name string) string {
	t.Helper()
	b, err := builtin.ReadFile(name)
	require.NoError(t, err)
	return string(b)
}

// Errors point at the line of the refused key, compiler style.
func TestParseErrorsGiveTheLine(t *testing.T) {
	in := "name: t\ntopology:\n  clients: 1\n  backends: x\n"
	_, err := Parse([]byte(in), "t.yaml")
	require.Error(t, err)
	assert.Equal(t, `scenario t.yaml:4: topology.backends: "x" is not an integer`, err.Error())

	def := readBuiltin(t, "default.yaml")
	_, err = Parse([]byte(strings.Replace(def, "podCIDR: 10.244.0.0/16", "podCIDR: 224.0.0.0/16", 1)), "d.yaml")
	require.Error(t, err)
	line := 1 + strings.Count(def[:strings.Index(def, "podCIDR:")], "\n")
	assert.Contains(t, err.Error(), "d.yaml:"+strconv.Itoa(line)+": topology.podCIDR: 224.0.0.0/16 is multicast (224.0.0.0/4)")

	_, err = Parse([]byte("name: x\n\x00\n"), "bin")
	require.Error(t, err)
	assert.Equal(t, "scenario bin:2: is not a text file (control byte 0x00 at offset 8): not a YAML scenario", err.Error())
}

// Every refusal is a FieldError with a sentinel, so a caller can tell bad
// input from a broken machine.
func TestValidateReturnsFieldErrors(t *testing.T) {
	s, err := Load("default")
	require.NoError(t, err)
	s.Service.Name = "a;b"
	s.Topology.PodCIDR = "127.0.0.0/16"
	err = s.Validate()
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.ErrorIs(t, err, ErrName)
	assert.ErrorIs(t, err, ErrRange)
	assert.False(t, errors.Is(err, ErrDuration))
}

// Conformance scenarios name services and ports too: the same rules.
func TestParseConformanceRefusesBadInput(t *testing.T) {
	b, err := conformanceFS.ReadFile("conformance/multi-port.yaml")
	require.NoError(t, err)
	base := string(b)
	tests := []struct {
		name, from, to, wantField string
		wantKind                  error
	}{
		{"service name closing a quote", "- name: web", `- name: "web\"; flush ruleset; #"`, "services[0].name", ErrName},
		{"service name with a newline", "- name: web", `- name: "web\nx"`, "services[0].name", ErrName},
		{"upper-case service name", "- name: web", "- name: Web", "services[0].name", ErrName},
		{"port name with a quote", "{name: http,", `{name: 'ht"tp',`, "services[0].ports[0].name", ErrName},
		{"port name of 16 characters", "{name: http,", "{name: httpxxxxxxxxxxxx,", "services[0].ports[0].name", ErrName},
		{"port name without a letter", "{name: http,", "{name: '8080',", "services[0].ports[0].name", ErrName},
		{"port name with a double dash", "{name: http,", "{name: h--p,", "services[0].ports[0].name", ErrName},
		{"timeout past a day", "count: 120, timeout: 3s}", "count: 120, timeout: 100000h}", "steps[0].probe.timeout", ErrDuration},
		{"word for a count", "count: 120,", "count: many,", "steps[0].probe.count", ErrType},
		{"unknown probe key", "count: 120,", "count: 120, colour: red,", "steps[0].probe.colour", ErrUnknownKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Contains(t, base, tt.from)
			_, err := ParseConformance([]byte(strings.Replace(base, tt.from, tt.to, 1)), "multi-port")
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.wantKind)
			assert.Contains(t, err.Error(), tt.wantField+":")
			assert.Contains(t, err.Error(), "multi-port:", "the error names the file and line")
		})
	}
}
