package lbmaps

import (
	"fmt"
	"strconv"

	"github.com/cilium/ebpf"

	"svclab/datapath"
)

// AddStateSize records the standard state-size keys: objects, the number
// of load-balancing map entries, and bytes, the kernel's memlock figure
// for maps summed. The maps are created with BPF_F_NO_PREALLOC, so from
// Linux 6.4 (map_mem_usage) that figure grows with the entries; older
// kernels report an estimate from max_entries. When the kernel reports no
// memlock for a map, state_bytes is left out and state_bytes_unavailable
// says why, rather than recording a partial sum.
func AddStateSize(info map[string]string, objects int, maps ...*ebpf.Map) {
	info[datapath.InfoStateObjects] = strconv.Itoa(objects)
	var total uint64
	for _, m := range maps {
		mi, err := m.Info()
		if err != nil {
			info["state_bytes_unavailable"] = fmt.Sprintf("map %s: info: %v", m, err)
			return
		}
		n, ok := mi.Memlock()
		if !ok {
			info["state_bytes_unavailable"] = fmt.Sprintf("map %s: kernel reports no memlock", mi.Name)
			return
		}
		total += n
	}
	info[datapath.InfoStateBytes] = strconv.FormatUint(total, 10)
}
