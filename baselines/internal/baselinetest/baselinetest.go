// Package baselinetest holds the test fixtures the baseline packages share:
// privileged-test setup (root, a fresh namespace, the root namespace left
// unchanged, no probe namespace left behind), the service sets the golden
// tests of the ruleset baselines render, the checks of a packet-flow trace
// over a rendered ruleset, and a small TCP server loop. Only tests import
// it.
package baselinetest

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/internal/nsutil"
)

// RequireRoot skips the test unless it runs as root; why says what the
// test does with the privilege. On root every later failure is a real one.
func RequireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
}

// NewNS creates a fresh namespace svclab-test-<random>, deleted when the
// test ends whatever its outcome.
func NewNS(t *testing.T) *nsutil.NS {
	t.Helper()
	var rnd [4]byte
	_, err := rand.Read(rnd[:])
	require.NoError(t, err)
	ns, err := nsutil.Create("svclab-test-" + hex.EncodeToString(rnd[:]))
	require.NoError(t, err, "create test netns")
	t.Cleanup(func() { assert.NoError(t, ns.Close(), "delete test netns") })
	return ns
}

// CheckRootUnchanged takes a snapshot of the root namespace now and, when
// the test ends, asserts that a second one is equal: the test must not
// change the root namespace's what ("netfilter rules"). snapshot must only
// read.
func CheckRootUnchanged(t *testing.T, what string, snapshot func(*testing.T) string) {
	t.Helper()
	before := snapshot(t)
	t.Cleanup(func() {
		assert.Equal(t, before, snapshot(t), "the root namespace's %s must not change", what)
	})
}

// AssertProbeNSGone asserts that no probe namespace (svclab-probe-…) is
// left, as a probe must delete its throw-away namespace.
func AssertProbeNSGone(t *testing.T) {
	t.Helper()
	left, err := nsutil.List("svclab-probe-")
	require.NoError(t, err)
	assert.Empty(t, left, "probe namespace deleted")
}

// ServeTCP accepts connections on ln until it is closed, and runs handle on
// each in its own goroutine, with a 10 s deadline, closing the connection
// afterwards.
func ServeTCP(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			handle(c)
		}()
	}
}
