package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"svclab/internal/cgroup2"
	"svclab/results"
)

// cpuTimes is the machine-wide "cpu" line of /proc/stat, in clock ticks,
// and how many CPUs it sums.
type cpuTimes struct {
	user, nice, system, idle, iowait, irq, softirq, steal uint64
	// cpus counts the per-CPU lines ("cpu0", "cpu1", …): the machine's
	// online CPUs, which the "cpu" line covers. The client's own affinity
	// is no measure of it: a placed run pins the client to some of them.
	cpus int
}

// userHZ is the unit of /proc/stat (USER_HZ, 100 on every Linux ABI that
// svclab runs on; sysconf(_SC_CLK_TCK) needs cgo).
const userHZ = 100

func readCPUTimes() (cpuTimes, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	defer f.Close()
	return parseCPUTimes(f)
}

// parseCPUTimes reads the "cpu" line of /proc/stat and counts the per-CPU
// lines.
func parseCPUTimes(r io.Reader) (cpuTimes, error) {
	var t cpuTimes
	found := false
	s := bufio.NewScanner(r)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu") {
			continue
		}
		if fields[0] != "cpu" {
			t.cpus++
			continue
		}
		if len(fields) < 9 {
			return cpuTimes{}, fmt.Errorf("/proc/stat: short cpu line")
		}
		var v [8]uint64
		for i := range v {
			var err error
			if v[i], err = strconv.ParseUint(fields[i+1], 10, 64); err != nil {
				return cpuTimes{}, fmt.Errorf("/proc/stat: %w", err)
			}
		}
		t.user, t.nice, t.system, t.idle, t.iowait, t.irq, t.softirq, t.steal = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
		found = true
	}
	if err := s.Err(); err != nil {
		return cpuTimes{}, fmt.Errorf("/proc/stat: %w", err)
	}
	if !found {
		return cpuTimes{}, fmt.Errorf("/proc/stat: no cpu line")
	}
	return t, nil
}

// cpuUsage turns two readings around a window into the schema's figure:
// machine-wide busy time per successful connection. It counts the
// generator and the backends too, equally for every datapath, so the
// differences between datapaths are the datapath's own cost, softirq
// (where per-packet NAT runs) included.
func cpuUsage(a, b cpuTimes, windowSeconds float64, conns int64) *results.CPUUsage {
	sec := func(x, y uint64) float64 { return float64(y-x) / userHZ }
	u := &results.CPUUsage{
		WindowSeconds:  windowSeconds,
		CPUs:           b.cpus,
		UserSeconds:    sec(a.user+a.nice, b.user+b.nice),
		SystemSeconds:  sec(a.system, b.system),
		SoftirqSeconds: sec(a.softirq, b.softirq),
		IRQSeconds:     sec(a.irq, b.irq),
		IdleSeconds:    sec(a.idle+a.iowait, b.idle+b.iowait),
		StealSeconds:   sec(a.steal, b.steal),
	}
	if u.CPUs == 0 {
		u.CPUs = onlineCPUs()
	}
	u.BusySeconds = u.UserSeconds + u.SystemSeconds + u.SoftirqSeconds + u.IRQSeconds + sec(a.steal, b.steal)
	if conns > 0 {
		u.PerConnectionUS = u.BusySeconds / float64(conns) * 1e6
	}
	if windowSeconds > 0 && u.CPUs > 0 {
		u.BusyFraction = u.BusySeconds / (windowSeconds * float64(u.CPUs))
	}
	return u
}

func onlineCPUs() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil {
		return set.Count()
	}
	return 1
}

// runCPU is the CPU time charged so far to the cgroup directory dir (0 when
// dir is empty).
func runCPU(dir string) (time.Duration, error) {
	if dir == "" {
		return 0, nil
	}
	return cgroup2.CPUUsage(dir)
}

// meter reads what a trial's window costs: SYN retransmits, the machine's
// CPU time and the run's own (cgroup) CPU time, in total and by role, at
// the window's start and end.
type meter struct {
	cgroup         string
	roles          map[string]string
	syn0, syn1     int64
	cpu0, cpu1     cpuTimes
	run0, run1     time.Duration
	role0, role1   map[string]time.Duration
	cpuErr, runErr error
}

func startMeter(cgroup string, roles map[string]string) *meter {
	m := &meter{cgroup: cgroup, roles: roles, syn0: synRetrans()}
	m.cpu0, m.cpuErr = readCPUTimes()
	m.run0, m.role0, m.runErr = m.readRun()
	return m
}

func (m *meter) stop() {
	cpu1, err := readCPUTimes()
	m.cpu1, m.cpuErr = cpu1, errors.Join(m.cpuErr, err)
	run1, role1, err := m.readRun()
	m.run1, m.role1, m.runErr = run1, role1, errors.Join(m.runErr, err)
	m.syn1 = synRetrans()
}

// readRun reads the run's cgroup and its role cgroups.
func (m *meter) readRun() (time.Duration, map[string]time.Duration, error) {
	total, err := runCPU(m.cgroup)
	if err != nil || len(m.roles) == 0 {
		return total, nil, err
	}
	roles := make(map[string]time.Duration, len(m.roles))
	for r, dir := range m.roles {
		v, err := runCPU(dir)
		if err != nil {
			return 0, nil, err
		}
		roles[r] = v
	}
	return total, roles, nil
}

func (m *meter) synRetrans() int64 { return m.syn1 - m.syn0 }

// cpu is the window's CPU figures (nil when /proc/stat could not be read;
// without the run's figures when the cgroups could not).
func (m *meter) cpu(window time.Duration, conns int64) *results.CPUUsage {
	if m.cpuErr != nil {
		return nil
	}
	u := cpuUsage(m.cpu0, m.cpu1, window.Seconds(), conns)
	if m.cgroup != "" && m.runErr == nil {
		var roles map[string]time.Duration
		if m.role0 != nil {
			roles = map[string]time.Duration{}
			for r, v := range m.role1 {
				roles[r] = v - m.role0[r]
			}
		}
		u.AddRun(m.run1-m.run0, roles, conns)
	}
	return u
}
