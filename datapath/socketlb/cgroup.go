package socketlb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// errNoCgroup2 is returned when no cgroup v2 hierarchy is mounted.
var errNoCgroup2 = errors.New("no cgroup2 mount in /proc/self/mountinfo")

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted. It reads
// mountinfo rather than assuming /sys/fs/cgroup, because hybrid hosts mount
// it at /sys/fs/cgroup/unified and containers elsewhere.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return parseCgroup2Mount(f)
}

// parseCgroup2Mount finds the first cgroup2 mount in mountinfo(5) text:
// "id parent major:minor root mountpoint options [optional...] - fstype ...".
func parseCgroup2Mount(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, fstype := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(fstype) < 1 || fstype[0] != "cgroup2" {
			continue
		}
		return unescapeMountinfo(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errNoCgroup2
}

// unescapeMountinfo undoes the octal escapes (\040 for space and so on) the
// kernel writes into mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
