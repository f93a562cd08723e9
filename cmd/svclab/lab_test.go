package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	"svclab/harness/probe"
	"svclab/harness/runlock"
)

// labUp starts `svclab up --foreground` as a child process (the lab lives
// as long as it does) and returns it with the lab id it printed.
func labUp(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"up", "--foreground"}, args...)...)
	cmd.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		_, _ = runlock.CleanupStale()
	})
	lines := make(chan string)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	re := regexp.MustCompile(`^lab ([0-9a-f]{8}) is up`)
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "svclab up ended before the lab was up: %s", stderr.String())
			if m := re.FindStringSubmatch(l); m != nil {
				// Keep draining what it prints.
				go func() {
					for range lines {
					}
				}()
				return cmd, m[1]
			}
		case <-timeout:
			t.Fatalf("lab not up after 30s: %s", stderr.String())
		}
	}
}

// A lab is up in the background; a command run with `svclab exec` in
// client-0 (the test binary as a probe, fed on stdin) reaches the backends
// through the VIP; exit statuses come back; status lists the lab; down
// removes everything it made. A lab killed outright is pruned from status
// and its objects go with `svclab cleanup`.
func TestPrivilegedLabUpExecStatusDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build a lab")
	}
	f, err := datapath.Lookup("socketlb")
	require.NoError(t, err)
	if err := f.Probe(); err != nil {
		require.ErrorIs(t, err, datapath.ErrUnsupported)
		t.Skip(err.Error())
	}
	up, id := labUp(t, "--datapath", "socketlb", "--backends", "3")
	prefix := "svclab-" + id
	require.NotEmpty(t, svclabObjects(t, prefix))

	spec, err := json.Marshal(probe.Spec{Op: probe.TCP, Count: 6, Timeout: 3 * time.Second,
		Targets: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80")}})
	require.NoError(t, err)
	ex := exec.Command(os.Args[0], "exec", "client-0", "--", os.Args[0], "internal-probe")
	ex.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1")
	ex.Stdin = bytes.NewReader(spec)
	var exErr bytes.Buffer
	ex.Stderr = &exErr
	out, err := ex.Output()
	require.NoError(t, err, exErr.String())
	var atts []probe.Attempt
	require.NoError(t, json.Unmarshal(out, &atts), string(out))
	require.Len(t, atts, 6)
	for _, a := range atts {
		assert.Equal(t, "", a.Errno, "attempt %+v", a)
		assert.Regexp(t, `^backend-0[0-2]$`, a.Reply)
		assert.True(t, strings.HasPrefix(a.Local, "10.244.0.1:"), "the command runs in client-0's namespace: local %s", a.Local)
	}

	status := func(args ...string) int {
		ex := exec.Command(os.Args[0], append([]string{"exec"}, args...)...)
		ex.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1")
		_ = ex.Run()
		return ex.ProcessState.ExitCode()
	}
	assert.Equal(t, 7, status("backend-01", "--", "sh", "-c", "exit 7"), "the command's exit status is svclab exec's")
	assert.Equal(t, 127, status("client-0", "--", "no-such-command-svclab"))
	assert.Equal(t, 125, status("no-such-pod", "--", "true"))

	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, run([]string{"status"}, &stdout, &stderr), stderr.String())
	assert.Contains(t, stdout.String(), id)
	assert.Contains(t, stdout.String(), "10.96.0.10")

	stdout.Reset()
	require.Equal(t, 0, run([]string{"down", id}, &stdout, &stderr), stderr.String())
	assert.Contains(t, stdout.String(), "lab "+id+" is down")
	require.NoError(t, up.Wait(), "svclab up exits cleanly when brought down")
	assert.Empty(t, svclabObjects(t, prefix), "down must leave nothing of the lab")
	assert.NoFileExists(t, filepath.Join("/run/svclab/labs", id+".json"))

	// Killed: nothing runs its teardown; status says the lab is dead and
	// what it left, exec refuses it, and down removes what it left.
	up, id = labUp(t, "--datapath", "socketlb", "--backends", "1")
	prefix = "svclab-" + id
	require.NoError(t, up.Process.Kill())
	_ = up.Wait()
	require.NotEmpty(t, svclabObjects(t, prefix), "a killed lab leaves objects (or this test proves nothing)")
	stdout.Reset()
	require.Equal(t, 0, run([]string{"status"}, &stdout, &stderr), stderr.String())
	assert.Contains(t, stdout.String(), "lab "+id+" (socketlb, pid ")
	assert.Contains(t, stdout.String(), "is dead, left: netns "+prefix+"-")
	assert.Contains(t, stdout.String(), "cgroup ")
	assert.Contains(t, stdout.String(), "svclab down "+id)
	assert.Equal(t, 125, status("client-0", "--", "true"), "exec refuses a dead lab")
	stdout.Reset()
	require.Equal(t, 0, run([]string{"down"}, &stdout, &stderr), stderr.String())
	assert.Contains(t, stdout.String(), "lab "+id+" was dead")
	assert.Contains(t, stdout.String(), "removed what it left: netns "+prefix+"-")
	assert.Empty(t, svclabObjects(t, prefix), "down must remove what a killed lab left")
	assert.NoFileExists(t, filepath.Join("/run/svclab/labs", id+".json"))
	stdout.Reset()
	require.Equal(t, 0, run([]string{"status"}, &stdout, &stderr), stderr.String())
	assert.NotContains(t, stdout.String(), id)
	require.Equal(t, 0, run([]string{"cleanup"}, io.Discard, &stderr), stderr.String())
}

// A script drives a lab with no `&`: `svclab up` returns once the lab is
// ready (a detached supervisor keeps it), `svclab exec` reaches the
// backends through the ClusterIP (curl when installed, else the test
// binary's probe), `status` lists it and `down` stops the supervisor and
// removes everything: no namespace, cgroup, lock, state file, log or
// process is left.
func TestPrivilegedLabScript(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to build a lab")
	}
	f, err := datapath.Lookup("socketlb")
	require.NoError(t, err)
	if err := f.Probe(); err != nil {
		require.ErrorIs(t, err, datapath.ErrUnsupported)
		t.Skip(err.Error())
	}
	// svclab on PATH is this test binary running main.
	bin := t.TempDir()
	require.NoError(t, os.Symlink(os.Args[0], filepath.Join(bin, "svclab")))
	spec, err := json.Marshal(probe.Spec{Op: probe.TCP, Count: 1, Timeout: 3 * time.Second,
		Targets: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80")}})
	require.NoError(t, err)
	script := `set -eu
svclab up --datapath socketlb --backends 2 >up.out
cat up.out
id=$(sed -n 's/^lab \([0-9a-f]\{8\}\) is up.*/\1/p' up.out)
pid=$(sed -n 's/^lab .* pid \([0-9]*\),.*/\1/p' up.out)
echo "id=$id pid=$pid"
if command -v curl >/dev/null; then
	svclab exec --lab "$id" client-0 -- curl -sS --max-time 5 http://10.96.0.10/
else
	echo "$PROBE" | svclab exec --lab "$id" client-0 -- svclab internal-probe
fi
echo
svclab status
svclab down "$id"
if [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat; then echo "supervisor $pid still running"; exit 1; fi
svclab status
`
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1", "PATH="+bin+":"+os.Getenv("PATH"), "PROBE="+string(spec))
	done := make(chan struct{})
	var out []byte
	go func() {
		defer close(done)
		out, err = cmd.CombinedOutput()
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("the script did not end in 2 minutes: %s", out)
	}
	t.Logf("script output:\n%s", out)
	text := string(out)
	m := regexp.MustCompile(`id=([0-9a-f]{8}) pid=([0-9]+)`).FindStringSubmatch(text)
	require.NotNil(t, m, "up printed the lab id and pid: %s", text)
	id := m[1]
	t.Cleanup(func() {
		// A failed script may have left its lab up.
		if runlock.Alive(id) {
			_ = run([]string{"down", id}, io.Discard, io.Discard)
		}
		_, _ = runlock.CleanupStale()
	})
	require.NoError(t, err, "the script must end by itself, with status 0")
	assert.Contains(t, text, "lab "+id+" is up: datapath socketlb")
	assert.Contains(t, text, "log:   /run/svclab/labs/"+id+".log")
	assert.Contains(t, text, "stop:  svclab down "+id)
	assert.NotContains(t, text, "Ctrl-C", "a detached lab is not stopped with Ctrl-C")
	assert.Regexp(t, `backend-0[01]`, text, "exec reached a backend through the ClusterIP")
	assert.Contains(t, text, id+"  socketlb", "status lists the lab")
	assert.Contains(t, text, "lab "+id+" is down")
	assert.True(t, strings.HasSuffix(strings.TrimSpace(text), "no lab is up"), "status after down")
	assert.Empty(t, svclabObjects(t, "svclab-"+id), "down must leave nothing of the lab")
	assert.False(t, runlock.Alive(id))
	for _, f := range []string{id + ".json", id + ".log", id + ".down"} {
		assert.NoFileExists(t, filepath.Join("/run/svclab/labs", f))
	}
	logs, _ := filepath.Glob("/run/svclab/labs/up-*.log")
	assert.Empty(t, logs, "no supervisor log is left")
}

// `svclab up` that cannot build its lab says why and exits with the
// supervisor's status, leaving nothing; a killed supervisor's lab shows as
// dead and `svclab down` removes it.
func TestPrivilegedLabDetachedFailureAndKill(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to build a lab")
	}
	svclab := func(args ...string) (string, int) {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), "SVCLAB_TEST_RUN_MAIN=1")
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	t.Cleanup(func() { _, _ = runlock.CleanupStale() })

	// A datapath this kernel cannot run: the supervisor's error and exit
	// status (2, unusable environment) come back through up.
	if f, err := datapath.Lookup("ipvs"); err == nil && f.Probe() != nil {
		out, code := svclab("up", "--datapath", "ipvs", "--backends", "1")
		assert.Equal(t, exitBadInput, code, out)
		assert.Contains(t, out, "svclab up: datapath ipvs cannot run here")
		logs, _ := filepath.Glob("/run/svclab/labs/up-*.log")
		assert.Empty(t, logs, "a failed up leaves no log")
		out, _ = svclab("status")
		assert.Equal(t, "no lab is up\n", out)
	}

	// Killed supervisor: status says dead, down removes what it left.
	out, code := svclab("up", "--datapath", "direct", "--backends", "1")
	require.Equal(t, 0, code, out)
	m := regexp.MustCompile(`lab ([0-9a-f]{8}) is up: datapath direct, pid ([0-9]+)`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	id := m[1]
	pid, err := strconv.Atoi(m[2])
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !runlock.Alive(id) }, 10*time.Second, 20*time.Millisecond)
	require.NotEmpty(t, svclabObjects(t, "svclab-"+id), "a killed supervisor leaves its lab (or this test proves nothing)")
	out, code = svclab("status")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "lab "+id+" (direct, pid "+m[2]+") is dead")
	out, code = svclab("down", id)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "lab "+id+" was dead")
	assert.Empty(t, svclabObjects(t, "svclab-"+id))
	for _, f := range []string{id + ".json", id + ".log"} {
		assert.NoFileExists(t, filepath.Join("/run/svclab/labs", f))
	}
}

// Every signal that ends a run ends `svclab up` the way Ctrl-C does: the
// lab is removed and the exit status is 130. SIGHUP (a dropped ssh
// session) and SIGQUIT used to kill it outright, leaving everything.
func TestPrivilegedLabSignals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to build a lab")
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT} {
		t.Run(sig.String(), func(t *testing.T) {
			up, id := labUp(t, "--datapath", "direct", "--backends", "1")
			prefix := "svclab-" + id
			require.NotEmpty(t, svclabObjects(t, prefix))
			require.NoError(t, up.Process.Signal(sig))
			err := up.Wait()
			require.Error(t, err)
			assert.Equal(t, exitInterrupted, up.ProcessState.ExitCode(), "stderr: %s", up.Stderr)
			assert.Empty(t, svclabObjects(t, prefix), "an interrupted lab must remove what it made")
			assert.NoFileExists(t, filepath.Join("/run/svclab/labs", id+".json"))
			assert.False(t, runlock.Alive(id))
			assert.NotContains(t, fmt.Sprint(up.Stderr), "goroutine ", "SIGQUIT must not dump goroutines")
		})
	}
}

// Bad command lines end with an error naming the flag, before anything is
// created.
func TestConformAndLabBadInput(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"conform", "--datapaths", "warp-drive"}, `unknown datapath "warp-drive"`},
		{[]string{"conform", "--scenarios", "nosuch"}, `"nosuch" is neither a built-in one`},
		{[]string{"conform", "--scenarios", "tcp-spread,tcp-spread"}, "listed twice"},
		{[]string{"conform", "--datapaths", "direct", "--strict", "iptables"}, "--strict"},
		{[]string{"up", "--backends", "0"}, "--backends: 0 is out of range"},
		{[]string{"up", "--affinity", "sticky"}, "--affinity"},
		{[]string{"up", "--datapath", "warp-drive"}, `unknown datapath "warp-drive"`},
		{[]string{"down", "0badf00d"}, `lab "0badf00d"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			assert.Equal(t, exitBadInput, code, "bad input exits 2")
			assert.Contains(t, stderr.String(), tt.want)
		})
	}
}

// Failed expectations are findings (exit 0) unless the datapath is named
// in --strict (exit 1, naming the scenario). The scenario is a file whose
// expectation no datapath without affinity can meet.
func TestPrivilegedConformStrict(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to build topologies")
	}
	file := filepath.Join(t.TempDir(), "always-one-backend.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
behaviour: every connection lands on one endpoint (true only with affinity)
source: test
backends: 4
services:
- name: web
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
  endpoints: [{pods: 0-3}]
steps:
- probe: {op: tcp, target: {service: web, port: http}, count: 40, timeout: 3s}
  expect:
  - {check: single-backend}
`), 0o644))
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, run([]string{"conform", "--datapaths", "direct", "--scenarios", file, "--output", out}, &stdout, &stderr), stderr.String())
	assert.Contains(t, stdout.String(), "**FAIL**")
	assert.Contains(t, stdout.String(), "conformance.md")

	stdout.Reset()
	stderr.Reset()
	assert.Equal(t, 1, run([]string{"conform", "--datapaths", "direct", "--scenarios", file, "--output", out, "--strict", "direct"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "--strict direct: always-one-backend: fail")
}
