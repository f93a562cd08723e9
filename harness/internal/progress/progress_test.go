package progress

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Off a terminal (a log file, a pipe, CI) progress is plain lines with no
// control characters; on one it is rewritten in place.
func TestPlainWhenNotTerminal(t *testing.T) {
	for _, tty := range []bool{false, true} {
		var buf bytes.Buffer
		p := New(&buf, tty, 2, time.Second)
		p.Start("direct c=1 repetition 1/1")
		p.Done("100 conn/s")
		p.Logf("skipping %s: %s", "ipvs", "no ip_vs")
		p.Start("direct c=8 repetition 1/1")
		p.Done("200 conn/s")
		p.Finish()
		out := buf.String()
		if tty {
			assert.Contains(t, out, "\r\x1b[K")
			continue
		}
		assert.NotContains(t, out, "\x1b")
		assert.NotContains(t, out, "\r")
		assert.Contains(t, out, "[1/2] direct c=1 repetition 1/1")
		assert.Contains(t, out, "        200 conn/s\n")
	}
}
