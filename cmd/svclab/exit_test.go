package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os/exec"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"

	"svclab/datapath"
	"svclab/harness/lab"
)

// Every kind of ending maps to its documented status, through wrapping.
func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"success", nil, exitOK},
		{"help", flag.ErrHelp, exitOK},
		{"failed run", errors.New("trial 3: boom"), exitFailed},
		{"strict", errStrict, exitFailed},
		{"bad flag", badInput(errors.New("--backends: 0 is out of range")), exitBadInput},
		{"bad flag wrapped", fmt.Errorf("up: %w", badInput(errors.New("x"))), exitBadInput},
		{"not root", requireRootErr(), exitBadInput},
		{"unsupported", fmt.Errorf("datapath ipvs: %w", datapath.ErrUnsupported), exitBadInput},
		{"missing tool", &exec.Error{Name: "nft", Err: exec.ErrNotFound}, exitBadInput},
		{"no lab", fmt.Errorf("lab %q: %w", "x", lab.ErrNoLab), exitBadInput},
		{"interrupted", fmt.Errorf("interrupted during trial 2: %w", &interruptError{sig: syscall.SIGHUP}), exitInterrupted},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), exitInterrupted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, exitCode(tt.err))
		})
	}
	assert.Equal(t, "interrupted (SIGHUP)", (&interruptError{sig: syscall.SIGHUP}).Error())
	assert.Equal(t, "x", badInput(errors.New("x")).Error(), "the mark does not change the message")
}

func requireRootErr() error { return unusable(errors.New("needs root")) }
