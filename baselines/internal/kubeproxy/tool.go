package kubeproxy

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"svclab/internal/nsutil"
)

// ToolVersion runs `bin --version` and returns the submatches of re in its
// output (m[0] the whole match), or an error naming bin and quoting the
// output it could not parse.
func ToolVersion(bin string, re *regexp.Regexp) ([]string, error) {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w: %s", bin, err, strings.TrimSpace(string(out)))
	}
	m := re.FindStringSubmatch(string(out))
	if m == nil {
		return nil, fmt.Errorf("%s --version: cannot parse %q", bin, strings.TrimSpace(string(out)))
	}
	return m, nil
}

// Load feeds input on stdin to one run of bin with args inside ns: one
// kernel transaction for `iptables-restore --noflush` and `nft -f -`. On
// failure the error quotes the input around the line the tool's output
// names, found by errLine (see FailedLines); the output is returned either
// way.
func Load(ctx context.Context, ns *nsutil.NS, errLine *regexp.Regexp, input []byte, bin string, args ...string) ([]byte, error) {
	out, err := ns.Run(ctx, input, bin, args...)
	if err != nil {
		if near := FailedLines(errLine, input, string(out)); near != "" {
			err = fmt.Errorf("%w\ninput near the failure:\n%s", err, near)
		}
		return out, err
	}
	return out, nil
}

// FailedLines returns the input lines around the one a tool reported as
// failing, so an error names the offending rule and not just a number.
// errLine's first group is the 1-based line number in output. It returns ""
// when output names no line or a line that is not in input.
func FailedLines(errLine *regexp.Regexp, input []byte, output string) string {
	m := errLine.FindStringSubmatch(output)
	if m == nil {
		return ""
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return ""
	}
	lines := strings.Split(string(input), "\n")
	if n < 1 || n > len(lines) {
		return ""
	}
	var b strings.Builder
	for i := max(n-2, 1); i <= min(n+1, len(lines)); i++ {
		mark := "  "
		if i == n {
			mark = "> "
		}
		fmt.Fprintf(&b, "%s%d: %s\n", mark, i, lines[i-1])
	}
	return b.String()
}

// FirstLine is the first line of a tool's output, trimmed.
func FirstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
