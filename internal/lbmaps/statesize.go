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

// ReadStateSize reads back what AddStateSize recorded: the object count
// and the memlock bytes, or why they are not there.
func ReadStateSize(info map[string]string) (objects int, bytes uint64, err error) {
	if why, ok := info["state_bytes_unavailable"]; ok {
		return 0, 0, fmt.Errorf("state_bytes unavailable: %s", why)
	}
	if objects, err = strconv.Atoi(info[datapath.InfoStateObjects]); err != nil {
		return 0, 0, fmt.Errorf("%s = %q: %w", datapath.InfoStateObjects, info[datapath.InfoStateObjects], err)
	}
	if bytes, err = strconv.ParseUint(info[datapath.InfoStateBytes], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("%s = %q: %w", datapath.InfoStateBytes, info[datapath.InfoStateBytes], err)
	}
	return objects, bytes, nil
}
