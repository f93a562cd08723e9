package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"svclab/harness/bench"
	"svclab/harness/runlock"
	"svclab/internal/browsercheck"
	"svclab/internal/cgroup2"
	"svclab/internal/child"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/results"
	"svclab/scenarios"
)

func TestMain(m *testing.M) {
	child.Main(os.Args[1:])
	// Let tests run the real command in a separate process (to signal it).
	if os.Getenv("SVCLAB_TEST_RUN_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// Bad input must end with a clear error naming the field and why, before
// anything is created.
func TestBenchBadInput(t *testing.T) {
	dir := t.TempDir()
	badCIDR := filepath.Join(dir, "bad-cidr.yaml")
	b, err := os.ReadFile("../../scenarios/default.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(badCIDR, bytes.Replace(b, []byte("10.244.0.0/16"), []byte("10.244.0.0/33"), 1), 0o644))
	// A /23 pod CIDR has no room for the scale scenario's 988 extra
	// endpoint addresses.
	smallPods := filepath.Join(dir, "small-pods.yaml")
	sb, err := os.ReadFile("../../scenarios/scale.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(smallPods, bytes.Replace(sb, []byte("10.244.0.0/16"), []byte("10.244.0.0/23"), 1), 0o644))
	unknownField := filepath.Join(dir, "unknown-field.yaml")
	require.NoError(t, os.WriteFile(unknownField, append(b, []byte("colour: blue\n")...), 0o644))
	write := func(name, from, to string) string {
		p := filepath.Join(dir, name)
		require.True(t, bytes.Contains(b, []byte(from)))
		require.NoError(t, os.WriteFile(p, bytes.Replace(b, []byte(from), []byte(to), 1), 0o644))
		return p
	}
	hostile := write("hostile.yaml", "name: echo", `name: "echo\"; flush ruleset; #"`)
	multicast := write("multicast.yaml", "10.244.0.0/16", "224.0.0.0/16")
	wrongType := write("wrong-type.yaml", "backends: 12", "backends: x")

	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		{"unknown datapath", []string{"--datapaths", "socketlb,warp-drive"}, []string{"datapaths", `unknown datapath "warp-drive"`, "known:"}},
		{"zero backends", []string{"--backends", "0"}, []string{"topology.backends", "0 is out of range"}},
		{"10000 backends", []string{"--backends", "10000"}, []string{"topology.backends", "10000 is out of range"}},
		{"zero nodes", []string{"--nodes", "0"}, []string{"topology.nodes", "0 is out of range [1, 8]"}},
		{"nine nodes", []string{"--nodes", "9"}, []string{"topology.nodes", "9 is out of range [1, 8]"}},
		{"malformed CIDR", []string{"--scenario", badCIDR}, []string{"topology.podCIDR", `"10.244.0.0/33" is not a CIDR`}},
		{"unknown scenario field", []string{"--scenario", unknownField}, []string{"colour"}},
		{"unreadable scenario file", []string{"--scenario", filepath.Join(dir, "missing.yaml")}, []string{"cannot read", "missing.yaml"}},
		{"scenario is a directory", []string{"--scenario", dir + "/"}, []string{"cannot read"}},
		{"unknown built-in scenario", []string{"--scenario", "nosuch"}, []string{`"nosuch" is neither a built-in scenario`}},
		{"bad concurrency", []string{"--concurrency", "1,x"}, []string{"--concurrency", `"x" is not an integer`}},
		{"zero concurrency", []string{"--concurrency", "0"}, []string{"workload.concurrency", "0 is out of range"}},
		{"zero repetitions", []string{"--repetitions", "0"}, []string{"workload.repetitions"}},
		{"unknown placement", []string{"--placement", "pinned"}, []string{"workload.placement", `"pinned" is not one of none, split`}},
		{"duplicate datapath", []string{"--datapaths", "direct,direct"}, []string{"datapaths", "listed twice"}},
		{"services without a sweep", []string{"--services", "1,100"}, []string{"--services", "no scale sweep"}},
		{"bad services", []string{"--scenario", "scale", "--services", "1,lots"}, []string{"--services", `"lots" is not an integer`}},
		{"zero services", []string{"--scenario", "scale", "--services", "0"}, []string{"scale.services", "0 is out of range"}},
		{"huge endpoint sweep", []string{"--scenario", "scale", "--endpoint-sweep", "100000"}, []string{"scale.endpointSweep", "out of range"}},
		{"endpoint sweep too big for the pod CIDR", []string{"--scenario", smallPods}, []string{"scale.endpointSweep", "1000 endpoints", "extraEndpoints"}},
		{"negative apply timeout", []string{"--scenario", "scale", "--apply-timeout", "-1s"}, []string{"scale.applyTimeout"}},
		{"unknown VM kernel", []string{"--vm-kernel", "bogus"}, []string{"--vm-kernel", `"bogus" is not a kernel`, "debian-6.1"}},
		{"VM kernel path", []string{"--vm-kernel", "/boot/vmlinuz"}, []string{"--vm-kernel", "is not a kernel"}},
		{"duration past a day", []string{"--duration", "100000h"}, []string{"workload.duration", "100000h0m0s is out of range [100ms, 24h0m0s]"}},
		{"warm-up past a day", []string{"--warmup", "25h"}, []string{"workload.warmup", "out of range"}},
		{"apply timeout past a day", []string{"--scenario", "scale", "--apply-timeout", "48h"}, []string{"scale.applyTimeout", "out of range"}},
		{"hostile service name", []string{"--scenario", hostile}, []string{"hostile.yaml:", "service.name", "is not a Service name"}},
		{"multicast pod CIDR", []string{"--scenario", multicast}, []string{"multicast.yaml:", "topology.podCIDR", "is multicast"}},
		{"wrong type", []string{"--scenario", wrongType}, []string{"wrong-type.yaml:", `topology.backends: "x" is not an integer`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"bench", "--output", t.TempDir()}, tt.args...), &stdout, &stderr)
			assert.NotEqual(t, 0, code)
			for _, w := range tt.want {
				assert.Contains(t, stderr.String(), w)
			}
			assert.NotContains(t, stderr.String(), "panic")
		})
	}
}

// --vm-kernel with nothing for the VM to do is said, not ignored.
func TestVMKernelNotNeededIsSaid(t *testing.T) {
	var stderr bytes.Buffer
	_, sc, err := parseBenchFlags([]string{"--datapaths", "direct", "--vm-kernel", "debian-6.1"}, &stderr)
	require.NoError(t, err)
	plan, err := bench.NewPlan(sc)
	require.NoError(t, err)
	assert.Contains(t, vmKernelNote("debian-6.1", plan), "--vm-kernel debian-6.1 is not used")
	assert.Empty(t, vmKernelNote("", plan))
	plan.Skipped = append(plan.Skipped, results.DatapathInfo{Name: "ipvs", Skipped: "no IPVS"})
	assert.Empty(t, vmKernelNote("debian-6.1", plan), "a datapath for the VM: no note")
}

// benchCheckDir is where TestPrivilegedBenchQuick leaves its run, with the
// report checked in Chromium and its screenshot, for a person to open
// (gitignored, replaced by every test run).
const benchCheckDir = "../../results/check/bench-quick"

// An end-to-end run of the quick scenario: the real binary path (child
// processes, topology per trial, three datapaths, charts), and nothing left.
// Its report.html is opened in headless Chromium (when installed): no
// console error or undecodable image, every chart laid out, the summary
// table there; the run stays in results/check/bench-quick/<run-id>/ with
// report.png beside report.html.
func TestPrivilegedBenchQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build topologies")
	}
	out, err := filepath.Abs(benchCheckDir)
	require.NoError(t, err)
	require.NoError(t, os.RemoveAll(out))
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--scenario", "quick", "--output", out}, &stdout, &stderr)
	require.Equal(t, 0, code, "stderr: %s", stderr.String())
	ents, err := os.ReadDir(out)
	require.NoError(t, err)
	require.Len(t, ents, 1)
	for _, f := range []string{"results.json", "report.html", "qps.png", "p90.png"} {
		fi, err := os.Stat(filepath.Join(out, ents[0].Name(), f))
		require.NoError(t, err)
		assert.Greater(t, fi.Size(), int64(100), f)
	}
	for _, dp := range []string{"socketlb", "iptables", "direct"} {
		assert.Contains(t, stdout.String(), dp)
	}
	assert.True(t, strings.Contains(stderr.String(), "[1/"), "progress lines on stderr: %s", stderr.String())
	left, err := runlock.CleanupStale()
	require.NoError(t, err)
	assert.Empty(t, left, "a finished run must leave nothing for cleanup")

	chromium := browsercheck.Chromium()
	if chromium == "" {
		t.Log("chromium not found on PATH (ci/install-deps.sh installs it): the report is not checked in a browser")
		return
	}
	report := filepath.Join(out, ents[0].Name(), "report.html")
	shot := filepath.Join(out, ents[0].Name(), "report.png")
	html, err := os.ReadFile(report)
	require.NoError(t, err)
	page, err := browsercheck.Check(chromium, report, shot)
	require.NoError(t, err)
	assert.Empty(t, page.Problems, "the report opens without errors")
	assert.Equal(t, strings.Count(string(html), `<svg class="chart"`), page.Charts, "every chart laid out")
	assert.Positive(t, page.Charts)
	assert.Positive(t, page.SummaryRow, "summary rows")
	assert.Positive(t, page.ValueRows, "rows of the tables under the charts")
	assert.Contains(t, page.Sections, "summary")
	fi, err := os.Stat(shot)
	require.NoError(t, err)
	assert.Greater(t, fi.Size(), int64(10000), "a screenshot of a whole page")
	t.Logf("quick run's report %s, screenshot %s", report, shot)
	fmt.Fprintf(os.Stderr, "quick bench report: %s\nscreenshot: %s\n", report, shot)
}

// The CI variant of the scale sweep, end to end with every datapath this
// kernel runs: both sweeps (1,000 services, 100 endpoints on extra pod
// addresses), every point reached, the line charts and the scale table.
func TestPrivilegedBenchScaleQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build topologies")
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--scenario", "scale", "--quick", "--output", out}, &stdout, &stderr)
	require.Equal(t, 0, code, "stderr: %s", stderr.String())
	ents, err := os.ReadDir(out)
	require.NoError(t, err)
	require.Len(t, ents, 1)
	dir := filepath.Join(out, ents[0].Name())
	for _, f := range []string{"results.json", "scale-services-p90.png", "scale-services-apply.png", "scale-services-change.png",
		"scale-endpoints-qps.png", "scale-endpoints-state.png"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err, f)
		assert.Greater(t, fi.Size(), int64(1000), f)
	}
	run, err := results.Read(filepath.Join(dir, "results.json"))
	require.NoError(t, err)
	assert.Empty(t, run.ScaleLimits, "every datapath reaches 1,000 services and 100 endpoints well within the apply timeout")
	points, costs := map[string]int{}, map[string]int{}
	for _, tr := range run.Trials {
		if tr.Model == results.ModelCost {
			costs[tr.Datapath]++
			assert.NotNil(t, tr.Cost, "%s cost trial at %d×%d", tr.Datapath, tr.Services, tr.Endpoints)
		} else {
			points[tr.Datapath]++
		}
		assert.Empty(t, tr.Workload.Errors, "%s at %d×%d", tr.Datapath, tr.Services, tr.Endpoints)
		assert.Positive(t, tr.Workload.Connections, "%s at %d×%d", tr.Datapath, tr.Services, tr.Endpoints)
	}
	for _, d := range run.Datapaths {
		if d.Skipped == "" {
			assert.Equal(t, 3, points[d.Name], "%s: 1×12, 1,000×12 and 1×100", d.Name)
			assert.Equal(t, 3, costs[d.Name], "%s: a cost trial at each point", d.Name)
		}
	}
	assert.Contains(t, stdout.String(), "socketlb: connect p90 at 1,000 services vs 1: ×")
	left, err := runlock.CleanupStale()
	require.NoError(t, err)
	assert.Empty(t, left)
}

// A bench interrupted halfway (SIGINT) removes everything it made, and one
// killed outright (SIGKILL) leaves objects that the next run's cleanup
// removes.
func TestPrivilegedInterruptedBenchLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build topologies")
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			var stderr bytes.Buffer
			output := t.TempDir()
			cmd := exec.Command(os.Args[0], "bench", "--scenario", "quick", "--repetitions", "10", "--output", output)
			cmd.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1")
			cmd.Stderr = &stderr
			require.NoError(t, cmd.Start())
			// Wait until a trial is under way: its namespaces exist.
			deadline := time.Now().Add(30 * time.Second)
			for !strings.Contains(stderr.String(), "repetition 2/") {
				require.True(t, time.Now().Before(deadline), "bench did not reach its second repetition: %s", stderr.String())
				time.Sleep(50 * time.Millisecond)
			}
			m := regexp.MustCompile(`kernel objects are named (svclab-[0-9a-f]{8})-`).FindStringSubmatch(stderr.String())
			require.NotNil(t, m, "the run names its object prefix: %s", stderr.String())
			prefix := m[1]
			// The progress line comes before the trial's topology:
			// signal once the run has objects of its own.
			for len(svclabObjects(t, prefix)) == 0 {
				require.True(t, time.Now().Before(deadline), "the run made no objects: %s", stderr.String())
				time.Sleep(10 * time.Millisecond)
			}
			require.NoError(t, cmd.Process.Signal(sig))
			err := cmd.Wait()
			require.Error(t, err, "the run was interrupted and must say so in its exit status")
			if sig == syscall.SIGINT {
				assert.Equal(t, 130, cmd.ProcessState.ExitCode(), stderr.String())
				assert.Empty(t, svclabObjects(t, prefix), "an interrupted run must remove what it made")
				ents, err := os.ReadDir(output)
				require.NoError(t, err)
				assert.Empty(t, ents, "an interrupted run that wrote nothing leaves no empty run directory")
				return
			}
			// SIGKILL runs no cleanup; the next run's does.
			time.Sleep(200 * time.Millisecond)
			require.NotEmpty(t, svclabObjects(t, prefix), "a killed run leaves objects (or this test proves nothing)")
			var out, errb bytes.Buffer
			require.Equal(t, 0, run([]string{"cleanup"}, &out, &errb), errb.String())
			assert.Contains(t, out.String(), "removed")
			assert.Empty(t, svclabObjects(t, prefix))
		})
	}
}

// svclabObjects lists the objects (netns, cgroups) of the run with prefix.
func svclabObjects(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "netns "+e.Name())
		}
	}
	mnt, err := cgroup2.Mount()
	require.NoError(t, err)
	ents, _ = os.ReadDir(mnt)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "cgroup "+e.Name())
		}
	}
	return out
}

// --quick shrinks the scenario by its quick block, and flags given with it
// still apply on top.
func TestBenchQuickFlag(t *testing.T) {
	_, sc, err := parseBenchFlags([]string{"--scenario", "scale", "--quick", "--datapaths", "socketlb,direct", "--apply-timeout", "5s"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []scenarios.ScalePoint{{Services: 1, Endpoints: 12}, {Services: 1000, Endpoints: 12}, {Services: 1, Endpoints: 100}}, sc.ScalePoints())
	assert.Equal(t, 1, sc.Workload.Repetitions)
	assert.Equal(t, []string{"socketlb", "direct"}, sc.Datapaths)
	assert.Equal(t, 5*time.Second, sc.ApplyTimeout())

	_, sc, err = parseBenchFlags([]string{"--scenario", "scale", "--quick", "--services", "1,10", "--endpoint-sweep", "12,50"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []scenarios.ScalePoint{{Services: 1, Endpoints: 12}, {Services: 10, Endpoints: 12}, {Services: 1, Endpoints: 50}}, sc.ScalePoints())
}

// A bench killed with SIGKILL at any point (while probing datapaths before
// its lock, building the generator's namespace, during trials) leaves
// nothing that
// `svclab cleanup` does not remove.
func TestPrivilegedKilledBenchCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build topologies")
	}
	for _, delay := range []time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 300 * time.Millisecond, 800 * time.Millisecond, 1500 * time.Millisecond, 2500 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			output := t.TempDir()
			cmd := exec.Command(os.Args[0], "bench", "--scenario", "quick", "--output", output)
			cmd.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1")
			require.NoError(t, cmd.Start())
			time.Sleep(delay)
			require.NoError(t, cmd.Process.Kill())
			_ = cmd.Wait()
			var out, errb bytes.Buffer
			require.Equal(t, 0, run([]string{"cleanup"}, &out, &errb), errb.String())
			assert.Empty(t, deadRunObjects(t), "cleanup output: %s", out.String())
			// The run directory is made when the results are written, at
			// the end: a run killed before then leaves no empty one.
			ents, err := os.ReadDir(output)
			require.NoError(t, err)
			assert.Empty(t, ents, "a killed run leaves no run directory")
		})
	}
}

// deadRunObjects lists the svclab objects (netns, cgroups, lock files) of
// runs that are not alive: what cleanup should have removed.
func deadRunObjects(t *testing.T) []string {
	t.Helper()
	var out []string
	dead := func(name string) bool {
		id, ok := strings.CutPrefix(name, "svclab-")
		return ok && runlock.IsRunObject(name) && !runlock.Alive(id[:8])
	}
	// Datapath probes run before the run lock: their namespaces carry the
	// prober's pid.
	probe := regexp.MustCompile(`^svclab-probe-([0-9]+)-`)
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		if dead(e.Name()) {
			out = append(out, "netns "+e.Name())
		}
		if m := probe.FindStringSubmatch(e.Name()); m != nil {
			pid, _ := strconv.Atoi(m[1])
			if syscall.Kill(pid, 0) == syscall.ESRCH {
				out = append(out, "probe netns "+e.Name())
			}
		}
	}
	mnt, err := cgroup2.Mount()
	require.NoError(t, err)
	ents, _ = os.ReadDir(mnt)
	for _, e := range ents {
		if dead(e.Name()) {
			out = append(out, "cgroup "+e.Name())
		}
	}
	ents, _ = os.ReadDir("/run/svclab/runs")
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".lock"); ok && !runlock.Alive(id) {
			out = append(out, "lock "+e.Name())
		}
	}
	return out
}

// A bench that finds another svclab run live at the start of a trial says
// so on stderr, in results.json and in the table.
func TestPrivilegedBenchWarnsOfConcurrentRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build topologies")
	}
	other, err := runlock.New()
	require.NoError(t, err)
	defer other.Release()
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--scenario", "quick", "--datapaths", "direct", "--concurrency", "1", "--output", out}, &stdout, &stderr)
	require.Equal(t, 0, code, "stderr: %s", stderr.String())
	assert.Contains(t, stderr.String(), "warning: another svclab run ("+other.ID+") is live")
	assert.Contains(t, stdout.String(), "warning: other svclab runs were live during trials (")
	ents, err := os.ReadDir(out)
	require.NoError(t, err)
	require.Len(t, ents, 1)
	res, err := results.Read(filepath.Join(out, ents[0].Name(), "results.json"))
	require.NoError(t, err)
	assert.Contains(t, res.ConcurrentRuns, other.ID)
}

// A dropped ssh session: the terminal's process group gets SIGHUP (the
// run's servers and clients too) and the pipe its stderr went to is gone.
// The run still removes everything it made and exits 130.
func TestPrivilegedBenchHangup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build topologies")
	}
	output := t.TempDir()
	cmd := exec.Command(os.Args[0], "bench", "--scenario", "quick", "--repetitions", "10", "--output", output)
	cmd.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stderr, cmd.Stdout = w, w
	require.NoError(t, cmd.Start())
	w.Close()
	var seen strings.Builder
	buf := make([]byte, 4096)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(seen.String(), "repetition 2/") {
		require.True(t, time.Now().Before(deadline), "bench did not reach its second repetition: %s", seen.String())
		n, err := r.Read(buf)
		require.NoError(t, err, seen.String())
		seen.Write(buf[:n])
	}
	m := regexp.MustCompile(`kernel objects are named (svclab-[0-9a-f]{8})-`).FindStringSubmatch(seen.String())
	require.NotNil(t, m, seen.String())
	require.NoError(t, r.Close())
	require.NoError(t, syscall.Kill(-cmd.Process.Pid, syscall.SIGHUP))
	require.Error(t, cmd.Wait())
	assert.Equal(t, exitInterrupted, cmd.ProcessState.ExitCode(), "%s", cmd.ProcessState)
	assert.Empty(t, svclabObjects(t, m[1]), "a hung-up run must remove what it made")
	ents, err := os.ReadDir(output)
	require.NoError(t, err)
	assert.Empty(t, ents, "no empty run directory")
}
