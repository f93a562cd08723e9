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

// labUp starts `svclab up` as a child process (the lab lives as long as
// it does) and returns it with the lab id it printed.
func labUp(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"up"}, args...)...)
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
