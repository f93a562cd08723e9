package cgroup2

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestPrivilegedNewAndRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	group := "/svclab-test-" + hex.EncodeToString(b[:])
	cg, err := New(group + "/clients")
	require.NoError(t, err)
	t.Cleanup(func() { _ = RemoveDir(filepath.Dir(cg.Path)) })

	mnt, err := Find()
	require.NoError(t, err, "New mounted or found cgroup2, so Find must see it")
	assert.Equal(t, filepath.Join(mnt, group, "clients"), cg.Path)
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(cg.Path, &st))
	assert.Equal(t, int64(unix.CGROUP2_SUPER_MAGIC), int64(st.Type), "the directory is on a cgroup2 filesystem")

	// A process born in the cgroup is killed by RemoveDir of its parent.
	fd, err := cg.OpenFD()
	require.NoError(t, err)
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
	require.NoError(t, cmd.Start())
	fd.Close()
	assert.Equal(t, []int{cmd.Process.Pid}, pids(cg.Path))

	// The sleeper costs next to nothing; a busy child is charged to the
	// cgroup and to its parent.
	fd2, err := cg.OpenFD()
	require.NoError(t, err)
	busy := exec.Command("sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done")
	busy.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd2.Fd())}
	require.NoError(t, busy.Run())
	fd2.Close()
	own, err := CPUUsage(cg.Path)
	require.NoError(t, err)
	parent, err := CPUUsage(filepath.Join(mnt, group))
	require.NoError(t, err)
	assert.Greater(t, own, 10*time.Millisecond, "the busy loop's CPU time is charged to its cgroup")
	assert.GreaterOrEqual(t, parent, own, "a parent's usage includes its children's")

	require.NoError(t, RemoveDir(filepath.Join(mnt, group)))
	_ = cmd.Wait()
	assert.True(t, cmd.ProcessState.Exited() || cmd.ProcessState.String() == "signal: killed", "the sleeper was killed: %v", cmd.ProcessState)
	assert.NoDirExists(t, filepath.Join(mnt, group))
	assert.NoError(t, RemoveDir(filepath.Join(mnt, group)), "removing what is gone is not an error")
}
