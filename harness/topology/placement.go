package topology

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"svclab/internal/cgroup2"
	"svclab/internal/child"
	"svclab/scenarios"
)

// PlacementMechanism is how Place gives CPUs: the affinity each child is
// forked with (internal/child). The cpuset controller is not used: on a
// hybrid host it is bound to cgroup v1 and cannot be enabled in the v2
// hierarchy without rebinding it machine-wide, and affinity works on every
// host.
const PlacementMechanism = "sched_setaffinity"

// Placement is where a topology's role processes run (Config.Placement).
type Placement struct {
	// Mode is scenarios.PlacementNone or scenarios.PlacementSplit.
	Mode string
	// Clients are the load generator's CPUs (client pods and hostNetwork
	// clients); Servers the backends' and the datapath's own processes'
	// (the userspace proxy). Both empty with PlacementNone.
	Clients, Servers unix.CPUSet
}

// PlanPlacement resolves mode against allowed, the CPUs svclab may use
// (its own affinity). Split gives the load generator the lower half and
// the backends with the datapath's processes the upper half: on 2 CPUs
// one each. The datapath's process goes with the backends so that the
// generator's CPU carries nothing but the generator and the softirq work
// its own sends raise (see the README's placement note).
func PlanPlacement(mode string, allowed unix.CPUSet) (Placement, error) {
	switch mode {
	case "", scenarios.PlacementNone:
		return Placement{Mode: scenarios.PlacementNone}, nil
	case scenarios.PlacementSplit:
	default:
		return Placement{}, fmt.Errorf("placement: %q is not one of %s", mode, strings.Join(scenarios.Placements, ", "))
	}
	cpus := cpuList(allowed)
	if len(cpus) < 2 {
		return Placement{}, fmt.Errorf("placement: %s needs at least 2 CPUs, svclab may use %d", mode, len(cpus))
	}
	p := Placement{Mode: mode}
	half := len(cpus) / 2
	for i, c := range cpus {
		if i < half {
			p.Clients.Set(c)
		} else {
			p.Servers.Set(c)
		}
	}
	return p, nil
}

// AllowedCPUs is the CPUs svclab may use: its own affinity.
func AllowedCPUs() (unix.CPUSet, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return set, fmt.Errorf("placement: read CPU affinity: %w", err)
	}
	return set, nil
}

// cpuList is the CPUs of set in ascending order.
func cpuList(set unix.CPUSet) []int {
	var out []int
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	return out
}

// FormatCPUs writes set as a comma-separated CPU list ("0", "2,3").
func FormatCPUs(set unix.CPUSet) string {
	var parts []string
	for _, c := range cpuList(set) {
		parts = append(parts, strconv.Itoa(c))
	}
	return strings.Join(parts, ",")
}

// Place pins the topology's role cgroups (every node's) to p's CPUs: each
// child started in one of them (internal/child) is forked on those CPUs.
// With PlacementNone it does nothing. Close undoes it.
func (t *Topology) Place(p Placement) {
	if p.Mode != scenarios.PlacementSplit {
		return
	}
	type roles struct{ clients, host, servers, dp *cgroup2.Cgroup }
	all := []roles{{t.ClientCgroup, t.HostCgroup, t.ServerCgroup, t.DatapathCgroup}}
	for _, nd := range t.Nodes[min(1, len(t.Nodes)):] {
		all = append(all, roles{nd.ClientCgroup, nd.HostCgroup, nd.ServerCgroup, nd.DatapathCgroup})
	}
	for _, r := range all {
		for _, cg := range []*cgroup2.Cgroup{r.clients, r.host} {
			if cg != nil {
				t.unpin = append(t.unpin, child.Pin(cg.Path, p.Clients))
			}
		}
		for _, cg := range []*cgroup2.Cgroup{r.servers, r.dp} {
			if cg != nil {
				t.unpin = append(t.unpin, child.Pin(cg.Path, p.Servers))
			}
		}
	}
}
