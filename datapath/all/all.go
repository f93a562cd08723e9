// Package all registers every datapath svclab knows. Adding a datapath is
// one new package plus one import line here.
package all

import (
	// The reference socket-level load balancer.
	_ "svclab/datapath/socketlb"

	// Baselines.
	_ "svclab/baselines/direct"
	_ "svclab/baselines/iptables"
	_ "svclab/baselines/ipvs"
	_ "svclab/baselines/nftables"
	_ "svclab/baselines/tcebpf"
	_ "svclab/baselines/userspace"
)
