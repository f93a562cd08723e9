package world_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/harness/bench"
	"svclab/harness/internal/harnesstest"
	"svclab/harness/world"
	"svclab/results"
	"svclab/scenarios"
)

// meminfo reads kB fields of /proc/meminfo.
func meminfo(t *testing.T, keys ...string) map[string]int64 {
	f, err := os.Open("/proc/meminfo")
	require.NoError(t, err)
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for _, k := range keys {
			if len(fields) >= 2 && fields[0] == k+":" {
				out[k], _ = strconv.ParseInt(fields[1], 10, 64)
			}
		}
	}
	return out
}

// TestPrivilegedNodeScale measures how building and closing a world grows
// with the node count (the default scenario's 12 backends, one datapath
// instance per node): wall time of Build and Close, and the machine's
// memory the world holds while up (MemAvailable and unreclaimable slab,
// /proc/meminfo, before Build and after it, medians of a few builds). It
// is a measurement, not a check: it runs only with SVCLAB_NODE_SCALE set
// (e.g. SVCLAB_NODE_SCALE=socketlb,iptables-nft) and logs a table.
func TestPrivilegedNodeScale(t *testing.T) {
	dps := os.Getenv("SVCLAB_NODE_SCALE")
	if dps == "" {
		t.Skip("a measurement: set SVCLAB_NODE_SCALE=<datapaths> to run it")
	}
	harnesstest.RequireRoot(t)
	base, err := scenarios.Load("default")
	require.NoError(t, err)
	const builds = 3
	var rows []string
	for _, name := range strings.Split(dps, ",") {
		f, err := datapath.Lookup(name)
		require.NoError(t, err)
		for _, n := range []int{1, 2, 4, 8} {
			sc := *base
			sc.Topology.Nodes = n
			sc.Datapaths = []string{name}
			plan, err := bench.NewPlan(&sc)
			require.NoError(t, err)
			var build, closing, avail, slab []float64
			for range builds {
				run := harnesstest.NewRun(t)
				tc := plan.Topology
				tc.Prefix = run.Prefix + "-ns"
				before := meminfo(t, "MemAvailable", "SUnreclaim")
				t0 := time.Now()
				w, err := world.Build(context.Background(), world.Spec{Topology: tc, Port: plan.Port.TargetPort, Datapath: &f})
				require.NoError(t, err)
				st, err := plan.State(w.Topology, 1, tc.Backends)
				require.NoError(t, err)
				require.NoError(t, w.Datapath.Apply(context.Background(), st))
				build = append(build, time.Since(t0).Seconds())
				time.Sleep(200 * time.Millisecond) // let deferred frees and RCU settle
				after := meminfo(t, "MemAvailable", "SUnreclaim")
				avail = append(avail, float64(before["MemAvailable"]-after["MemAvailable"])/1024)
				slab = append(slab, float64(after["SUnreclaim"]-before["SUnreclaim"])/1024)
				t1 := time.Now()
				require.NoError(t, w.Close())
				closing = append(closing, time.Since(t1).Seconds())
			}
			med := func(v []float64) float64 { return results.NewStat(v).Median }
			rows = append(rows, fmt.Sprintf("%-14s %5d %9.2f %9.2f %12.1f %12.1f", name, n, med(build), med(closing), med(avail), med(slab)))
		}
	}
	t.Logf("node scale (median of %d builds; memory: MemAvailable drop and SUnreclaim growth while the world is up)\n%-14s %5s %9s %9s %12s %12s\n%s",
		builds, "DATAPATH", "NODES", "BUILD s", "CLOSE s", "MEM MiB", "SLAB MiB", strings.Join(rows, "\n"))
}
