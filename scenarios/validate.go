package scenarios

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"
	"unicode"
)

// Kubernetes names. A name from a scenario ends up in nft and iptables
// scripts (chain names, comments) and in file and log lines, so anything
// but a Kubernetes name is refused: a quote, a semicolon or a newline
// could otherwise end one rule and start another.
var (
	// dns1035Label is a Service name (RFC 1035 label: starts with a letter).
	dns1035Label = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	// dns1123Label is a namespace (RFC 1123 label: may start with a digit).
	dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// ianaSvcName is a port name (IANA service name, RFC 6335).
	ianaSvcName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// scenarioName is a scenario's own name: it names result files and
	// appears in tables, so it is a plain word.
	scenarioName = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
)

// Name limits, as in Kubernetes.
const (
	MaxLabelLength    = 63
	MaxPortNameLength = 15
)

// CheckServiceName refuses what is not a Kubernetes Service name.
func CheckServiceName(s string) error {
	return checkName(s, dns1035Label, MaxLabelLength, "a Service name (RFC 1035 label: lower-case letters, digits and '-', starting with a letter, ending with a letter or digit, at most 63 characters, e.g. echo)")
}

// CheckNamespace refuses what is not a Kubernetes namespace name.
func CheckNamespace(s string) error {
	return checkName(s, dns1123Label, MaxLabelLength, "a namespace (RFC 1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters, e.g. default)")
}

// CheckPortName refuses what is not a Kubernetes port name (IANA_SVC_NAME).
func CheckPortName(s string) error {
	const want = "a port name (IANA service name: lower-case letters, digits and '-', at most 15 characters, at least one letter, no '--', not starting or ending with '-', e.g. http)"
	if err := checkName(s, ianaSvcName, MaxPortNameLength, want); err != nil {
		return err
	}
	if strings.Contains(s, "--") || !strings.ContainsFunc(s, unicode.IsLetter) {
		return fmt.Errorf("%q is not %s", s, want)
	}
	return nil
}

func checkName(s string, re *regexp.Regexp, maxLen int, want string) error {
	if s == "" {
		return fmt.Errorf("must not be empty: want %s", want)
	}
	if len(s) > maxLen {
		return fmt.Errorf("%q is %d characters long: want %s", truncate(s), len(s), want)
	}
	if !re.MatchString(s) {
		return fmt.Errorf("%q is not %s", truncate(s), want)
	}
	return nil
}

// truncate shortens s for a message; %q then shows any control bytes.
func truncate(s string) string {
	if len(s) > 70 {
		return s[:70] + "…"
	}
	return s
}

// reserved are the ranges no pod or Service address may come from: a
// socket to them fails (EINVAL, ENETUNREACH) or never leaves the host, so
// a run with them can only measure errors.
var reserved = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network" (0.0.0.0/8, with the unspecified address 0.0.0.0)`},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16, where svclab's pod gateways live)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (240.0.0.0/4, with the broadcast address 255.255.255.255)"},
	{netip.MustParsePrefix("::/128"), "the unspecified address (::)"},
	{netip.MustParsePrefix("::1/128"), "loopback (::1)"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped (::ffff:0:0/96)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)"},
}

// allowedRanges is said with every refused range.
const allowedRanges = "use a unicast range outside 0/8, 127/8, 169.254/16, 224/4 and 240/4, e.g. a private one (10/8, 172.16/12, 192.168/16)"

// ParseRange parses a pod or Service CIDR and refuses what no pod or
// Service can use: a malformed or non-canonical prefix, or one that
// overlaps multicast, loopback, link-local, unspecified or reserved space.
func ParseRange(s, example string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%q is not a CIDR (e.g. %s)", s, example)
	}
	if p != p.Masked() {
		return p, fmt.Errorf("%s has host bits set: the range is %s", s, p.Masked())
	}
	return p, CheckRange(p)
}

// CheckRange refuses a prefix that overlaps space no pod or Service
// address may come from.
func CheckRange(p netip.Prefix) error {
	for _, r := range reserved {
		if p.Overlaps(r.p) {
			if r.p.Bits() <= p.Bits() {
				return fmt.Errorf("%s is %s: %s", p, r.what, allowedRanges)
			}
			return fmt.Errorf("%s overlaps %s: %s", p, r.what, allowedRanges)
		}
	}
	return nil
}

// hosts is the number of host addresses of p (no network or broadcast
// address), capped: as topology.PrefixHosts counts them.
func hosts(p netip.Prefix) int {
	bits := p.Addr().BitLen() - p.Bits()
	if bits >= 30 {
		return 1 << 30
	}
	return max(1<<bits-2, 0)
}

// MaxDuration bounds every duration of a scenario: a trial, a warm-up or
// an Apply of more than a day is a typo (100000h), and would hold the lock
// and the machine until killed.
const MaxDuration = Duration(24 * time.Hour)

// checkDuration refuses a duration outside [lo, MaxDuration].
func checkDuration(field string, d, lo Duration) *FieldError {
	if d < lo || d > MaxDuration {
		return fieldErr(ErrDuration, field, "%s is out of range [%s, %s]", time.Duration(d), time.Duration(lo), time.Duration(MaxDuration))
	}
	return nil
}

// checkPrintable refuses control characters other than tab and newline
// (a terminal escape sequence, say) in text that is printed to terminals
// and logs.
func checkPrintable(s string) error {
	if i := strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\t' && r != '\n' }); i >= 0 {
		return fmt.Errorf("contains the control character %q at offset %d", s[i], i)
	}
	return nil
}
