package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"svclab/internal/cgroup2"
	"svclab/results"
)

// cpuTimes is the machine-wide "cpu" line of /proc/stat, in clock ticks.
type cpuTimes struct {
	user, nice, system, idle, iowait, irq, softirq, steal uint64
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
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 9 || fields[0] != "cpu" {
			continue
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(fields[i+1], 10, 64); err != nil {
				return cpuTimes{}, fmt.Errorf("/proc/stat: %w", err)
			}
		}
		return cpuTimes{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}, nil
	}
	return cpuTimes{}, fmt.Errorf("/proc/stat: no cpu line")
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
		CPUs:           onlineCPUs(),
		UserSeconds:    sec(a.user+a.nice, b.user+b.nice),
		SystemSeconds:  sec(a.system, b.system),
		SoftirqSeconds: sec(a.softirq, b.softirq),
		IRQSeconds:     sec(a.irq, b.irq),
		IdleSeconds:    sec(a.idle+a.iowait, b.idle+b.iowait),
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
// CPU time and the run's own (cgroup) CPU time, at the window's start and
// end.
type meter struct {
	cgroup         string
	syn0, syn1     int64
	cpu0, cpu1     cpuTimes
	run0, run1     time.Duration
	cpuErr, runErr error
}

func startMeter(cgroup string) *meter {
	m := &meter{cgroup: cgroup, syn0: synRetrans()}
	var err error
	m.cpu0, m.cpuErr = readCPUTimes()
	m.run0, err = runCPU(cgroup)
	m.runErr = err
	return m
}

func (m *meter) stop() {
	cpu1, err := readCPUTimes()
	m.cpu1, m.cpuErr = cpu1, errors.Join(m.cpuErr, err)
	run1, err := runCPU(m.cgroup)
	m.run1, m.runErr = run1, errors.Join(m.runErr, err)
	m.syn1 = synRetrans()
}

func (m *meter) synRetrans() int64 { return m.syn1 - m.syn0 }

// cpu is the window's CPU figures (nil when /proc/stat could not be read;
// without the run's figures when the cgroup could not).
func (m *meter) cpu(window time.Duration, conns int64) *results.CPUUsage {
	if m.cpuErr != nil {
		return nil
	}
	u := cpuUsage(m.cpu0, m.cpu1, window.Seconds(), conns)
	if m.cgroup != "" && m.runErr == nil {
		u.AddRun(m.run1-m.run0, conns)
	}
	return u
}
