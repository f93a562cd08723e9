package direct

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

func ep(addr string, ready, serving, terminating bool) datapath.Endpoint {
	return datapath.Endpoint{Pod: "pod-" + addr, Addr: netip.MustParseAddr(addr), Ready: ready, Serving: serving, Terminating: terminating}
}

func addrPorts(s ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range s {
		out = append(out, netip.MustParseAddrPort(a))
	}
	return out
}

var (
	http = datapath.ServicePort{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080}
	dns  = datapath.ServicePort{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353}
)

func TestTargets(t *testing.T) {
	f, err := datapath.Lookup("direct")
	require.NoError(t, err, "direct registers itself")
	require.NoError(t, f.Probe(), "direct needs nothing from the machine")

	tests := []struct {
		name      string
		endpoints []datapath.Endpoint
		port      datapath.ServicePort
		want      []netip.AddrPort
	}{
		{
			// Not-ready and terminating endpoints must not get new
			// connections while a ready one exists.
			name: "only ready endpoints, at the target port",
			endpoints: []datapath.Endpoint{
				ep("10.244.1.1", true, true, false),
				ep("10.244.1.2", false, false, false),
				ep("10.244.1.3", true, true, false),
				ep("10.244.1.4", false, true, true),
			},
			port: http,
			want: addrPorts("10.244.1.1:8080", "10.244.1.3:8080"),
		},
		{
			name:      "second port of the service uses its own target port",
			endpoints: []datapath.Endpoint{ep("10.244.1.1", true, true, false)},
			port:      dns,
			want:      addrPorts("10.244.1.1:5353"),
		},
		{
			// Kubernetes' terminating fallback: with nothing ready, the
			// serving terminating endpoints still take traffic.
			name: "terminating fallback when none is ready",
			endpoints: []datapath.Endpoint{
				ep("10.244.1.1", false, true, true),
				ep("10.244.1.2", false, false, true),
				ep("10.244.1.3", false, false, false),
			},
			port: http,
			want: addrPorts("10.244.1.1:8080"),
		},
		{
			name:      "no endpoints: nowhere to go",
			endpoints: nil,
			port:      http,
			want:      nil,
		},
		{
			name:      "a port the service does not have",
			endpoints: []datapath.Endpoint{ep("10.244.1.1", true, true, false)},
			port:      datapath.ServicePort{Name: "x", Protocol: datapath.TCP, Port: 81, TargetPort: 81},
			want:      nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := datapath.Service{
				Namespace: "bench", Name: "web",
				ClusterIP: netip.MustParseAddr("10.96.0.10"),
				Ports:     []datapath.ServicePort{http, dns},
				Endpoints: tt.endpoints,
			}
			dp := f.New()
			ctx := context.Background()
			require.NoError(t, dp.Setup(ctx, &datapath.Env{}))
			require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{svc}}))
			assert.Equal(t, tt.want, dp.Targets(svc, tt.port))
			assert.NoError(t, dp.Close())
		})
	}
}

// TestTargetsFollowApply: Targets answers from the last applied state, as a
// real datapath would route by what it was last programmed with.
func TestTargetsFollowApply(t *testing.T) {
	dp := &Datapath{}
	ctx := context.Background()
	svc := datapath.Service{
		Namespace: "bench", Name: "web",
		ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []datapath.ServicePort{http},
		Endpoints: []datapath.Endpoint{ep("10.244.1.1", true, true, false)},
	}
	assert.Empty(t, dp.Targets(svc, http), "nothing applied yet")

	require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{svc}}))
	assert.Equal(t, addrPorts("10.244.1.1:8080"), dp.Targets(svc, http))

	moved := svc
	moved.Endpoints = []datapath.Endpoint{ep("10.244.1.2", true, true, false)}
	require.NoError(t, dp.Apply(ctx, datapath.State{Services: []datapath.Service{moved}}))
	assert.Equal(t, addrPorts("10.244.1.2:8080"), dp.Targets(svc, http), "the applied endpoints win over the argument's")

	require.NoError(t, dp.Apply(ctx, datapath.State{}))
	assert.Empty(t, dp.Targets(svc, http), "a removed service has no targets")
	assert.Nil(t, dp.Info())
}
