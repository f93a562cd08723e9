package kubeproxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"svclab/internal/nsutil"
)

// Sysctl is one node sysctl a baseline sets: Key is the path under
// /proc/sys ("net/ipv4/vs/conntrack").
type Sysctl = nsutil.Sysctl

// SetSysctls sets each sysctl in ns, recording in restore the value it had
// before, once it has been changed: Close writes restore back, also after a
// Setup that failed half-way.
func SetSysctls(ns *nsutil.NS, set []Sysctl, restore map[string]string) error {
	for _, s := range set {
		old, err := ReadSysctl(ns, s.Key)
		if err != nil {
			return err
		}
		if err := ns.Sysctl(s.Key, s.Value); err != nil {
			return err
		}
		restore[s.Key] = old
	}
	return nil
}

// RestoreSysctls writes back the values SetSysctls recorded in restore,
// going on after a failure, and returns every failure.
func RestoreSysctls(ns *nsutil.NS, restore map[string]string) []error {
	var errs []error
	for k, v := range restore {
		if err := ns.Sysctl(k, v); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// ReadSysctl reads a sysctl in ns, with runs of white space (the tab in
// "1024\t65535") folded into one space, the form it is written back in.
func ReadSysctl(ns *nsutil.NS, key string) (string, error) {
	var v string
	err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			return fmt.Errorf("netns %s: read sysctl %s: %w", ns.Name, key, err)
		}
		v = strings.Join(strings.Fields(string(b)), " ")
		return nil
	})
	return v, err
}

// HostAddr is a as a /32 (IPv4) or /128 (IPv6) interface address, the way
// a ClusterIP is put on a node's interface (kube-ipvs0, lo). An IPv6 one
// skips duplicate address detection: until DAD ends an address is
// tentative and not local, so the first connections to a new VIP would not
// be delivered (kube-proxy's netlink calls set the same flag).
func HostAddr(a netip.Addr) *netlink.Addr {
	bits := FamilyOf(a).HostBits()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, bits)}}
	if bits == 128 {
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}
