package main

import (
	"bytes"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Logs written to a file or a buffer never get escape sequences; the
// environment override wins both ways.
func TestIsTerminal(t *testing.T) {
	f, err := os.Create(t.TempDir() + "/log")
	require.NoError(t, err)
	defer f.Close()
	tests := []struct {
		name string
		env  string
		w    any
		want bool
	}{
		{"file", "", f, false},
		{"buffer", "", &bytes.Buffer{}, false},
		{"forced plain", "0", f, false},
		{"forced terminal", "1", &bytes.Buffer{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SVCLAB_TTY", tt.env)
			assert.Equal(t, tt.want, isTerminal(tt.w.(interface{ Write([]byte) (int, error) })))
		})
	}
}
