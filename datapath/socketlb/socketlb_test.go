package socketlb

import (
	"context"
	"testing"

	"github.com/cilium/ebpf/asm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

func TestRegistered(t *testing.T) {
	f, err := datapath.Lookup(Name)
	require.NoError(t, err)
	assert.NotEmpty(t, f.Description)
	assert.NotNil(t, f.Probe)
	require.NotNil(t, f.New)
	assert.IsType(t, &SocketLB{}, f.New())
}

func TestLifecycleWithoutKernel(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		run  func(t *testing.T, s *SocketLB)
	}{
		{"apply before setup", func(t *testing.T, s *SocketLB) {
			assert.ErrorIs(t, s.Apply(ctx, datapath.State{}), ErrNotSetUp)
		}},
		{"setup without env", func(t *testing.T, s *SocketLB) {
			assert.ErrorIs(t, s.Setup(ctx, nil), ErrNoCgroup)
		}},
		{"setup without cgroup", func(t *testing.T, s *SocketLB) {
			assert.ErrorIs(t, s.Setup(ctx, &datapath.Env{}), ErrNoCgroup)
		}},
		{"close twice without setup", func(t *testing.T, s *SocketLB) {
			assert.NoError(t, s.Close())
			assert.NoError(t, s.Close())
		}},
		{"info before setup names the hooks", func(t *testing.T, s *SocketLB) {
			assert.Equal(t, map[string]string{
				"hooks":     "connect4,connect6,sendmsg4,sendmsg6,recvmsg4,recvmsg6,getpeername4,getpeername6",
				"protocols": "TCP,UDP",
			}, s.Info())
		}},
		{"counters before setup", func(t *testing.T, s *SocketLB) {
			_, err := s.Counters()
			assert.ErrorIs(t, err, ErrNotSetUp)
		}},
		{"targets are the VIP", func(t *testing.T, s *SocketLB) {
			sv := svc("web", "10.96.0.10", 80, 8080, ep("a", "10.0.0.1"))
			assert.Equal(t, datapath.VIPTargets(sv, sv.Ports[0]), s.Targets(sv, sv.Ports[0]))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, New()) })
	}
}

func TestHelperName(t *testing.T) {
	assert.Equal(t, "sk_storage_get", helperName(asm.FnSkStorageGet))
	assert.Equal(t, "get_netns_cookie", helperName(asm.FnGetNetnsCookie))
}
