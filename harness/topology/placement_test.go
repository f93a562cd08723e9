package topology

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"svclab/harness/internal/harnesstest"
	"svclab/internal/child"
	"svclab/scenarios"
)

func cpus(list ...int) unix.CPUSet {
	var s unix.CPUSet
	for _, c := range list {
		s.Set(c)
	}
	return s
}

func TestPlanPlacement(t *testing.T) {
	tests := []struct {
		name             string
		mode             string
		allowed          unix.CPUSet
		clients, servers string
		err              string
	}{
		{name: "default places nothing", mode: "", allowed: cpus(0, 1), clients: "", servers: ""},
		{name: "none places nothing", mode: scenarios.PlacementNone, allowed: cpus(0, 1)},
		{name: "split on 2 CPUs: one each", mode: scenarios.PlacementSplit, allowed: cpus(0, 1), clients: "0", servers: "1"},
		{name: "split keeps to the allowed CPUs", mode: scenarios.PlacementSplit, allowed: cpus(2, 5, 7), clients: "2", servers: "5,7"},
		{name: "split on 4 CPUs: halves", mode: scenarios.PlacementSplit, allowed: cpus(0, 1, 2, 3), clients: "0,1", servers: "2,3"},
		{name: "split needs 2 CPUs", mode: scenarios.PlacementSplit, allowed: cpus(0), err: "needs at least 2 CPUs"},
		{name: "unknown mode", mode: "pinned", allowed: cpus(0, 1), err: "is not one of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PlanPlacement(tt.mode, tt.allowed)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.clients, FormatCPUs(p.Clients))
			assert.Equal(t, tt.servers, FormatCPUs(p.Servers))
			want := tt.mode
			if want == "" {
				want = scenarios.PlacementNone
			}
			assert.Equal(t, want, p.Mode)
		})
	}
}

// allowedList is a process's Cpus_allowed_list.
func allowedList(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("no Cpus_allowed_list")
	return ""
}

func TestPrivilegedPlacementPinsChildren(t *testing.T) {
	harnesstest.RequireRoot(t)
	allowed, err := AllowedCPUs()
	require.NoError(t, err)
	if allowed.Count() < 2 {
		t.Skip("split placement needs 2 CPUs")
	}
	run := harnesstest.NewRun(t)
	topo, err := NewLoopback(run.Prefix + "-place")
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	p, err := PlanPlacement(scenarios.PlacementSplit, allowed)
	require.NoError(t, err)
	topo.Place(p)
	for _, tc := range []struct {
		role, cgroup, want string
	}{
		{"clients", topo.ClientCgroup.Path, FormatCPUs(p.Clients)},
		{"hostnet", topo.HostCgroup.Path, FormatCPUs(p.Clients)},
		{"servers", topo.ServerCgroup.Path, FormatCPUs(p.Servers)},
		{"datapath", topo.DatapathCgroup.Path, FormatCPUs(p.Servers)},
	} {
		t.Run(tc.role, func(t *testing.T) {
			cmd := exec.Command("sleep", "30")
			require.NoError(t, child.Start(cmd, topo.Node, tc.cgroup))
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			assert.Equal(t, tc.want, normalize(allowedList(t, cmd.Process.Pid)))
		})
	}
	// The forking threads are restored: children started without a pin
	// afterwards (on whichever thread the runtime picks, often one that
	// forked a pinned child) get every CPU svclab may use.
	for range 8 {
		cmd := exec.Command("sleep", "30")
		require.NoError(t, child.Start(cmd, topo.Node, ""))
		got := normalize(allowedList(t, cmd.Process.Pid))
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		require.Equal(t, FormatCPUs(allowed), got, "an unpinned child after pinned ones")
	}
	require.NoError(t, topo.Close())
	_, pinned := child.PinnedCPUs(topo.ClientCgroup.Path)
	assert.False(t, pinned, "Close unpins the topology's cgroups")
	assert.Empty(t, harnesstest.Leftovers(t, run.Prefix))
}

// normalize turns a kernel CPU list ("0-1,3") into FormatCPUs' form.
func normalize(list string) string {
	var out []string
	for _, part := range strings.Split(list, ",") {
		lo, hi, ok := strings.Cut(part, "-")
		if !ok {
			out = append(out, part)
			continue
		}
		a, _ := strconv.Atoi(lo)
		b, _ := strconv.Atoi(hi)
		for c := a; c <= b; c++ {
			out = append(out, strconv.Itoa(c))
		}
	}
	return strings.Join(out, ",")
}
