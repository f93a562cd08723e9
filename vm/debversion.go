package vm

import (
	"strconv"
	"strings"
)

// CompareDebianVersions orders two Debian package versions
// ([epoch:]upstream[-revision]) as dpkg does: negative when a < b, zero when
// equal, positive when a > b. Kernel versions need it rather than a plain
// string or semver order: "6.12.95-1~bpo12+1" sorts before "6.12.95-1", and
// "6.1.10-1" after "6.1.9-1".
func CompareDebianVersions(a, b string) int {
	ae, au, ar := splitDebianVersion(a)
	be, bu, br := splitDebianVersion(b)
	if ae != be {
		if ae < be {
			return -1
		}
		return 1
	}
	if c := verrevcmp(au, bu); c != 0 {
		return c
	}
	return verrevcmp(ar, br)
}

func splitDebianVersion(v string) (epoch int, upstream, revision string) {
	if e, rest, ok := strings.Cut(v, ":"); ok {
		epoch, _ = strconv.Atoi(e)
		v = rest
	}
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		return epoch, v[:i], v[i+1:]
	}
	return epoch, v, ""
}

// order ranks one non-digit character: '~' before the end of the string,
// the end before letters, letters before everything else.
func order(c byte, ok bool) int {
	switch {
	case !ok:
		return 0
	case c >= '0' && c <= '9':
		return 0
	case (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
		return int(c)
	case c == '~':
		return -1
	default:
		return int(c) + 256
	}
}

func isDigit(s string, i int) bool { return i < len(s) && s[i] >= '0' && s[i] <= '9' }

// verrevcmp compares alternating non-digit and digit runs, dpkg's algorithm.
func verrevcmp(a, b string) int {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		for (i < len(a) && !isDigit(a, i)) || (j < len(b) && !isDigit(b, j)) {
			var ac, bc int
			if i < len(a) {
				ac = order(a[i], true)
			}
			if j < len(b) {
				bc = order(b[j], true)
			}
			if ac != bc {
				return sign(ac - bc)
			}
			i++
			j++
		}
		for i < len(a) && a[i] == '0' {
			i++
		}
		for j < len(b) && b[j] == '0' {
			j++
		}
		firstDiff := 0
		for isDigit(a, i) && isDigit(b, j) {
			if firstDiff == 0 {
				firstDiff = int(a[i]) - int(b[j])
			}
			i++
			j++
		}
		if isDigit(a, i) {
			return 1
		}
		if isDigit(b, j) {
			return -1
		}
		if firstDiff != 0 {
			return sign(firstDiff)
		}
	}
	return 0
}

func sign(x int) int {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}
