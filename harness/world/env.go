package world

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"

	"golang.org/x/sys/unix"

	"svclab/internal/nsutil"
	"svclab/results"
)

// CollectEnv records the machine a run is measured on.
func CollectEnv() results.Env {
	e := results.Env{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Sysctls: map[string]string{}, Extra: map[string]string{}}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.Kernel = unix.ByteSliceToString(u.Release[:])
		e.Extra["kernel_version"] = unix.ByteSliceToString(u.Version[:])
	}
	e.Hostname, _ = os.Hostname()
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	e.GitRev = gitRev()
	// The BPF objects are committed, built by the clang of bpf/README.md;
	// the local clang is recorded in case they were regenerated.
	if out, err := exec.Command("clang", "--version").Output(); err == nil {
		e.Extra["clang_version"] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		e.Extra["iptables_default"] = strings.TrimSpace(string(out))
	}
	// Set by `svclab vm` in its guest: a run under emulation must never be
	// compared with a host run, so say so in every result.
	for _, k := range []string{"SVCLAB_VM", "SVCLAB_VM_KERNEL", "SVCLAB_VM_ACCEL"} {
		if v := os.Getenv(k); v != "" {
			e.Extra[strings.ToLower(k)] = v
		}
	}
	// The host's values; client pods override port range and tw_reuse in
	// their own namespace (recorded as client.* below: a setting the
	// kernel lacks is absent there, and the port cap it lifts is in force).
	for _, k := range []string{"net/core/somaxconn", "net/ipv4/ip_local_port_range", "net/ipv4/tcp_tw_reuse", "net/ipv4/tcp_tw_reuse_delay", "net/ipv4/tcp_timestamps"} {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			e.Sysctls[strings.ReplaceAll(k, "/", ".")] = strings.Join(strings.Fields(string(b)), " ")
		}
	}
	for _, c := range nsutil.ClientSysctls {
		if !c.Applies() {
			continue
		}
		e.Sysctls["client."+strings.ReplaceAll(c.Key, "/", ".")] = c.Value
	}
	return e
}

func gitRev() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" {
			if dirty {
				rev += "-dirty"
			}
			return rev
		}
	}
	if out, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return ""
}
