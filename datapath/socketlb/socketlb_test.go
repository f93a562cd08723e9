package socketlb

import (
	"context"
	"strings"
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

func TestParseCgroup2Mount(t *testing.T) {
	tests := []struct {
		name      string
		mountinfo string
		want      string
		wantErr   error
	}{
		{
			name: "hybrid host",
			mountinfo: "25 31 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n" +
				"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n",
			want: "/sys/fs/cgroup/unified",
		},
		{
			name:      "unified host",
			mountinfo: "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n",
			want:      "/sys/fs/cgroup",
		},
		{
			name:      "escaped mount point",
			mountinfo: `50 24 0:30 / /mnt/my\040cgroups rw - cgroup2 none rw` + "\n",
			want:      "/mnt/my cgroups",
		},
		{
			name:      "cgroup v1 only",
			mountinfo: "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
			wantErr:   errNoCgroup2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCgroup2Mount(strings.NewReader(tt.mountinfo))
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}
