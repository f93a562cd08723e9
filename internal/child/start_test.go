package child

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
)

// A pin belongs to exactly the directory it names (however the path is
// spelled), not to its parent or children, and unpin ends it.
func TestPin(t *testing.T) {
	var one unix.CPUSet
	one.Set(1)
	unpin := Pin("/sys/fs/cgroup/unified/svclab-x/kubepods/servers/", one)
	tests := []struct {
		dir    string
		pinned bool
	}{
		{"/sys/fs/cgroup/unified/svclab-x/kubepods/servers", true},
		{"/sys/fs/cgroup/unified/svclab-x/kubepods/./servers", true},
		{"/sys/fs/cgroup/unified/svclab-x/kubepods", false},
		{"/sys/fs/cgroup/unified/svclab-x/kubepods/servers/x", false},
		{"/sys/fs/cgroup/unified/svclab-x/kubepods/clients", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			set, ok := PinnedCPUs(tt.dir)
			assert.Equal(t, tt.pinned, ok)
			if tt.pinned {
				assert.Equal(t, one, set)
			}
		})
	}
	unpin()
	_, ok := PinnedCPUs("/sys/fs/cgroup/unified/svclab-x/kubepods/servers")
	assert.False(t, ok, "unpinned")
}
