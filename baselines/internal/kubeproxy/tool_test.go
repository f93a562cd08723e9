package kubeproxy

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeTool writes an executable script that prints out for --version.
func fakeTool(t *testing.T, out string, exit int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tool")
	script := "#!/bin/sh\nprintf '%s\\n' '" + out + "'\nexit " + strconv.Itoa(exit) + "\n"
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	return path
}

func TestToolVersion(t *testing.T) {
	re := regexp.MustCompile(`v(\d[^\s]*)\s+\(([^)]+)\)`)
	t.Run("parsed", func(t *testing.T) {
		m, err := ToolVersion(fakeTool(t, "iptables-restore v1.8.9 (nf_tables)", 0), re)
		require.NoError(t, err)
		assert.Equal(t, []string{"v1.8.9 (nf_tables)", "1.8.9", "nf_tables"}, m)
	})
	t.Run("unparsable", func(t *testing.T) {
		bin := fakeTool(t, "something else", 0)
		_, err := ToolVersion(bin, re)
		assert.EqualError(t, err, bin+` --version: cannot parse "something else"`)
	})
	t.Run("fails", func(t *testing.T) {
		bin := fakeTool(t, "broken", 2)
		_, err := ToolVersion(bin, re)
		require.Error(t, err)
		assert.Contains(t, err.Error(), bin+" --version: exit status 2: broken")
	})
	t.Run("missing", func(t *testing.T) {
		_, err := ToolVersion(filepath.Join(t.TempDir(), "absent"), re)
		assert.Error(t, err)
	})
}

func TestFailedLines(t *testing.T) {
	errLine := regexp.MustCompile(`line (\d+)`)
	input := []byte("one\ntwo\nthree\nfour\nfive\n")
	tests := []struct {
		name, output, want string
	}{
		{"middle: two before, one after", "error at line 3", "  1: one\n  2: two\n> 3: three\n  4: four\n"},
		{"first line", "error at line 1", "> 1: one\n  2: two\n"},
		{"last line", "error at line 5", "  3: three\n  4: four\n> 5: five\n  6: \n"},
		{"no line number", "it broke", ""},
		{"line 0 is not in the input", "error at line 0", ""},
		{"beyond the input", "error at line 99", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, FailedLines(errLine, input, tt.output))
		})
	}
}

func TestFirstLine(t *testing.T) {
	assert.Equal(t, "first", FirstLine([]byte("\n  first\nsecond\n")))
	assert.Equal(t, "only", FirstLine([]byte("only")))
	assert.Empty(t, FirstLine(nil))
}
