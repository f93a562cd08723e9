package userspace

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestParseVmRSS(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    uint64
		wantErr string
	}{
		{"kB to bytes", "Name:\tsvclab\nVmHWM:\t   9000 kB\nVmRSS:\t    1234 kB\nRssAnon:\t 800 kB\n", 1234 * 1024, ""},
		{"zero", "VmRSS:\t       0 kB\n", 0, ""},
		{"no VmRSS line (kernel thread, zombie)", "Name:\tkthreadd\nState:\tS (sleeping)\n", 0, "no VmRSS line"},
		{"unit other than kB", "VmRSS:\t1234 MB\n", 0, `want "<n> kB"`},
		{"not a number", "VmRSS:\tlots kB\n", 0, `VmRSS "lots"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVmRSS(tt.status)
			if tt.wantErr != "" {
				assert.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// TestProcessRSSSelf reads the test process's own RSS: it must be positive
// and no more than the peak the kernel reports through getrusage.
func TestProcessRSSSelf(t *testing.T) {
	rss, err := processRSS(os.Getpid())
	require.NoError(t, err)
	var ru unix.Rusage
	require.NoError(t, unix.Getrusage(unix.RUSAGE_SELF, &ru))
	assert.Positive(t, rss)
	// Linux reports ru_maxrss in kilobytes.
	assert.LessOrEqual(t, rss, uint64(ru.Maxrss)*1024, "RSS now vs peak RSS")

	_, err = processRSS(-1)
	assert.ErrorIs(t, err, os.ErrNotExist, "no such process")
}
