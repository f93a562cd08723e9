package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// brokenPipe is a pipe whose reader is closed: writing to w raises SIGPIPE.
func brokenPipe(t *testing.T) *os.File {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	require.NoError(t, r.Close())
	t.Cleanup(func() { w.Close() })
	return w
}

// swapStdout points fd 1 at f until the test ends.
func swapStdout(t *testing.T, f *os.File) {
	saved, err := unix.Dup(1)
	require.NoError(t, err)
	require.NoError(t, unix.Dup2(int(f.Fd()), 1))
	t.Cleanup(func() {
		_ = unix.Dup2(saved, 1)
		unix.Close(saved)
	})
}

// A broken pipe to a child (iptables-restore gone before its input was
// written) raised SIGPIPE, which ended a whole scale sweep as if the user
// had pressed Ctrl-C; only our own stdout or stderr gone may do that.
func TestSIGPIPEFromAChildPipeIsNotAnInterrupt(t *testing.T) {
	ctx, stop := signalContext()
	defer stop()
	defer interrupted.Store(false)

	_, err := brokenPipe(t).Write([]byte("x"))
	require.ErrorIs(t, err, unix.EPIPE, "the writer gets its error")
	select {
	case <-ctx.Done():
		t.Fatalf("the run was interrupted by a child's broken pipe: %v", context.Cause(ctx))
	case <-time.After(200 * time.Millisecond):
	}
	assert.False(t, interrupted.Load())
}

func TestSIGPIPEOnStdoutIsAnInterrupt(t *testing.T) {
	w := brokenPipe(t)
	swapStdout(t, w)
	assert.True(t, stdioBroken())

	ctx, stop := signalContext()
	defer stop()
	defer interrupted.Store(false)
	_, _ = unix.Write(1, []byte("x"))
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("stdout gone did not end the run")
	}
	assert.True(t, interrupted.Load())
}
