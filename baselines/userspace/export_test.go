package userspace

import "svclab/datapath"

// ProxyPID returns the pid of dp's proxy process, 0 if it has none, for the
// external tests that check Close leaves no process behind.
func ProxyPID(dp datapath.Datapath) int {
	d := dp.(*Datapath)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}
