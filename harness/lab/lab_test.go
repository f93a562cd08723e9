package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
	_ "svclab/datapath/all"
	"svclab/harness/runlock"
	"svclab/results"
)

func TestParseAffinity(t *testing.T) {
	tests := []struct {
		in      string
		mode    datapath.SessionAffinity
		timeout time.Duration
		err     string
	}{
		{"none", datapath.SessionAffinityNone, 0, ""},
		{"", datapath.SessionAffinityNone, 0, ""},
		{"clientip", datapath.SessionAffinityClientIP, 0, ""},
		{"ClientIP:30s", datapath.SessionAffinityClientIP, 30 * time.Second, ""},
		{"clientip:10", datapath.SessionAffinityClientIP, 10 * time.Second, ""},
		{"clientip:0", "", 0, "out of range"},
		{"clientip:forever", "", 0, "neither a duration"},
		{"none:5s", "", 0, "needs clientip"},
		{"sticky", "", 0, "is not none, clientip"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			mode, timeout, err := ParseAffinity(tt.in)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.mode, mode)
			assert.Equal(t, tt.timeout, timeout)
		})
	}
}

func TestLabConfigValidate(t *testing.T) {
	good := Config{Datapath: "direct", Backends: 3, Clients: 1}
	require.NoError(t, good.Validate())
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string
	}{
		{"unknown datapath", func(c *Config) { c.Datapath = "warp" }, "datapath:"},
		{"no backends", func(c *Config) { c.Backends = 0 }, "backends:"},
		{"too many clients", func(c *Config) { c.Clients = 1000 }, "clients:"},
		{"bad affinity", func(c *Config) { c.Affinity = "Sticky" }, "affinity:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mutate(&c)
			err := c.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.field)
		})
	}
}

// useLabDir points the lab state directory at a test directory.
func useLabDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	old := labDir
	labDir = dir
	t.Cleanup(func() { labDir = old })
	return dir
}

// Labs lists live labs only and removes the state files of dead ones; a
// lab is alive while its run lock is held, whatever its file says.
func TestLabsPrunesDeadLabs(t *testing.T) {
	dir := useLabDir(t)
	live, err := runlock.New()
	require.NoError(t, err)
	t.Cleanup(live.Release)
	require.NoError(t, results.WriteJSON(labFile(live.ID), &State{ID: live.ID, PID: os.Getpid(), Datapath: "direct"}))
	// A lab whose process died: its lock is gone.
	// It left nothing (no namespace or cgroup named svclab-deadbeef), so
	// its state file goes; one with objects left stays (see the
	// privileged TestPrivilegedLabUpExecStatusDown in cmd/svclab).
	require.NoError(t, results.WriteJSON(labFile("deadbeef"), &State{ID: "deadbeef", PID: 1, Prefix: "svclab-deadbeef"}))

	labs, err := List()
	require.NoError(t, err)
	require.Len(t, labs, 1)
	assert.Equal(t, live.ID, labs[0].ID)
	assert.NoFileExists(t, filepath.Join(dir, "deadbeef.json"))

	got, err := Find("")
	require.NoError(t, err, "the only lab is found without an id")
	assert.Equal(t, live.ID, got.ID)
	_, err = Find("0badf00d")
	assert.ErrorIs(t, err, ErrNoLab)

	second, err := runlock.New()
	require.NoError(t, err)
	t.Cleanup(second.Release)
	require.NoError(t, results.WriteJSON(labFile(second.ID), &State{ID: second.ID, PID: os.Getpid(), Started: time.Now()}))
	_, err = Find("")
	require.Error(t, err, "two labs: the user must say which")
	assert.Contains(t, err.Error(), "2 labs are known")

	live.Release()
	second.Release()
	labs, err = List()
	require.NoError(t, err)
	assert.Empty(t, labs)
	_, err = Find("")
	assert.ErrorIs(t, err, ErrNoLab)
}

func TestWriteLab(t *testing.T) {
	st := &State{ID: "1a2b3c4d", PID: 42, Datapath: "socketlb", Prefix: "svclab-1a2b3c4d",
		Services: []Service{{Name: "default/web", ClusterIP: "10.96.0.10", Ports: []string{"80/TCP->8080", "80/UDP->8080"}}},
		Pods:     []Pod{{Name: "client-0", Role: "client", Addr: "10.244.0.1", NetNS: "svclab-1a2b3c4d-client-0"}}}
	var b bytes.Buffer
	Write(&b, st)
	out := b.String()
	for _, want := range []string{"lab 1a2b3c4d is up", "ClusterIP 10.96.0.10", "client-0", "svclab exec client-0 -- curl -s http://10.96.0.10/",
		"nc -u -w1 10.96.0.10 80", "svclab down 1a2b3c4d"} {
		assert.Contains(t, out, want)
	}
}

// A detached lab's description names its log and is stopped with down,
// not Ctrl-C.
func TestWriteDetachedLab(t *testing.T) {
	st := &State{ID: "1a2b3c4d", PID: 42, Datapath: "direct", Prefix: "svclab-1a2b3c4d", Log: "/run/svclab/labs/1a2b3c4d.log"}
	var b bytes.Buffer
	Write(&b, st)
	assert.Contains(t, b.String(), "log:   /run/svclab/labs/1a2b3c4d.log\nstop:  svclab down 1a2b3c4d\n")
	assert.NotContains(t, b.String(), "Ctrl-C")
}

// Prune removes the logs of supervisors and labs that are gone, and keeps
// those of live ones.
func TestPruneLogs(t *testing.T) {
	dir := useLabDir(t)
	live, err := runlock.New()
	require.NoError(t, err)
	t.Cleanup(live.Release)
	gone := exec.Command("true")
	require.NoError(t, gone.Run())
	deadPid := gone.Process.Pid
	tests := []struct {
		name string
		kept bool
	}{
		{fmt.Sprintf("up-%d.log", os.Getpid()), true},
		{fmt.Sprintf("up-%d.log", deadPid), false},
		{live.ID + ".log", true},
		{"deadbeef.log", false},
		{"notes.log", true}, // not ours
	}
	for _, tt := range tests {
		require.NoError(t, os.WriteFile(filepath.Join(dir, tt.name), nil, 0o644))
	}
	Prune()
	for _, tt := range tests {
		if tt.kept {
			assert.FileExists(t, filepath.Join(dir, tt.name))
		} else {
			assert.NoFileExists(t, filepath.Join(dir, tt.name))
		}
	}
}

// running tells a live process from a gone or exited (zombie) one.
func TestRunning(t *testing.T) {
	zombie := exec.Command("true")
	require.NoError(t, zombie.Start())
	require.Eventually(t, func() bool { return !running(zombie.Process.Pid) }, 5*time.Second, 10*time.Millisecond, "an exited child not yet reaped is not running")
	require.NoError(t, zombie.Wait())
	tests := []struct {
		name string
		pid  int
		want bool
	}{
		{"self", os.Getpid(), true},
		{"reaped", zombie.Process.Pid, false},
		{"no pid", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { assert.Equal(t, tt.want, running(tt.pid)) })
	}
}

// Left only ever names the lab's own objects, whatever its state file says.
func TestLeftIgnoresForeignPrefixes(t *testing.T) {
	for _, st := range []State{
		{ID: "deadbeef"},
		{ID: "deadbeef", Prefix: "svclab-0badf00d"},
		{ID: "deadbeef", Prefix: "svclab"},
		{ID: "", Prefix: "svclab-"},
	} {
		assert.Empty(t, st.Left(), "%+v", st)
	}
}
