package kubeproxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"svclab/baselines/internal/twin6"
	"svclab/datapath"
	"svclab/internal/nsutil"
)

// ProbeTimeout bounds a probe, which gets no context.
const ProbeTimeout = 30 * time.Second

// ProbePodCIDR is the pod CIDR the probe's rulesets are rendered for.
var ProbePodCIDR = netip.MustParsePrefix("10.244.0.0/16")

// ProbePodCIDR6 is the pod CIDR the probe's IPv6 rulesets are rendered
// for: the twin of ProbePodCIDR, which holds the twins of ProbeState's
// endpoints.
var ProbePodCIDR6 = twin6.Prefix(ProbePodCIDR)

// ProbeStateFor is ProbeState for family f (its V6TwinState for IPv6).
func ProbeStateFor(f Family) datapath.State {
	if f == IPv6 {
		return twin6.State(ProbeState())
	}
	return ProbeState()
}

// ProbePodCIDRFor is ProbePodCIDR or ProbePodCIDR6.
func ProbePodCIDRFor(f Family) netip.Prefix {
	if f == IPv6 {
		return ProbePodCIDR6
	}
	return ProbePodCIDR
}

// ProbeState is the probe's small service set: one service with two
// endpoints and a TCP and a UDP port, and one without endpoints (the
// reject path), and a ClientIP-affinity copy of the first, so a probe
// exercises every rule shape a sync writes.
func ProbeState() datapath.State {
	ports := []datapath.ServicePort{
		{Name: "http", Protocol: datapath.TCP, Port: 80, TargetPort: 8080},
		{Name: "dns", Protocol: datapath.UDP, Port: 53, TargetPort: 5353},
	}
	return datapath.State{Services: []datapath.Service{
		{
			Namespace: "svclab", Name: "probe",
			ClusterIP: netip.MustParseAddr("10.96.0.1"),
			Ports:     ports,
			Endpoints: []datapath.Endpoint{
				{Pod: "a", Addr: netip.MustParseAddr("10.244.0.2"), Ready: true, Serving: true},
				{Pod: "b", Addr: netip.MustParseAddr("10.244.0.3"), Ready: true, Serving: true},
			},
		},
		{
			Namespace: "svclab", Name: "sticky",
			ClusterIP:       netip.MustParseAddr("10.96.0.3"),
			Ports:           ports,
			SessionAffinity: datapath.SessionAffinityClientIP,
			Endpoints: []datapath.Endpoint{
				{Pod: "a", Addr: netip.MustParseAddr("10.244.0.2"), Ready: true, Serving: true},
			},
		},
		{
			Namespace: "svclab", Name: "empty",
			ClusterIP: netip.MustParseAddr("10.96.0.2"),
			Ports:     ports,
		},
	}}
}

// ProbeNS creates a throw-away namespace svclab-probe-<pid>-<random> for
// the probe of the datapath called name; the caller closes it. Not being
// able to create one is reported as unsupported. Probes run before a run
// takes its lock, so the pid is what tells runlock.CleanupStale that the
// namespace of a killed probe is dead.
func ProbeNS(name string) (*nsutil.NS, error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("%s probe: %w", name, err)
	}
	ns, err := nsutil.Create(fmt.Sprintf("svclab-probe-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:])))
	if err != nil {
		return nil, datapath.Unsupportedf("%s: cannot create a probe network namespace: %v", name, err)
	}
	return ns, nil
}

// Feature is one thing a ruleset baseline needs from its tool and the
// kernel, with a minimal input that uses only that thing.
type Feature struct {
	What, Input string
}

// RulesetProbe checks a ruleset baseline (a tool that loads a whole ruleset
// in one transaction) by loading its real Setup and a sync of ProbeState
// into a throw-away namespace. Only when that fails does it try Features
// one by one, to name what is missing.
type RulesetProbe struct {
	// Name is the datapath's name; every message starts with it.
	Name string
	// Bins must all be in PATH.
	Bins []string
	// Version asks the tool for its release; its error means the tool
	// cannot be used.
	Version func() error
	// Input renders the full probe input.
	Input func() ([]byte, error)
	// Load applies one input inside ns.
	Load func(ctx context.Context, ns *nsutil.NS, input []byte) ([]byte, error)
	// Features are tried one by one when Input is rejected.
	Features []Feature
	// Lacker is who lacks a feature in the message: "kernel", "nft or the
	// kernel".
	Lacker string
	// Quote picks the line of the tool's output that the message quotes
	// for the first missing feature.
	Quote func(out []byte) string
}

// Run performs the probe. Everything missing is reported as an error that
// wraps datapath.ErrUnsupported and names the missing feature(s); other
// errors are failures of the probe itself.
func (p RulesetProbe) Run() error {
	for _, bin := range p.Bins {
		if _, err := exec.LookPath(bin); err != nil {
			return datapath.Unsupportedf("%s: %s not found in PATH", p.Name, bin)
		}
	}
	if err := p.Version(); err != nil {
		return datapath.Unsupportedf("%s: %v", p.Name, err)
	}
	ns, err := ProbeNS(p.Name)
	if err != nil {
		return err
	}
	defer ns.Close()

	ctx, cancel := context.WithTimeout(context.Background(), ProbeTimeout)
	defer cancel()
	input, err := p.Input()
	if err != nil {
		return fmt.Errorf("%s probe: %w", p.Name, err)
	}
	if _, err := p.Load(ctx, ns, input); err == nil {
		return nil
	} else if ctx.Err() != nil {
		return fmt.Errorf("%s probe: %w", p.Name, err)
	}
	// Something is missing: find out what, feature by feature.
	var missing []string
	var firstOut string
	for _, f := range p.Features {
		if out, err := p.Load(ctx, ns, []byte(f.Input)); err != nil {
			missing = append(missing, f.What)
			if firstOut == "" {
				firstOut = p.Quote(out)
			}
		}
	}
	if len(missing) == 0 {
		return datapath.Unsupportedf("%s: probe ruleset rejected although every feature passed alone", p.Name)
	}
	return datapath.Unsupportedf("%s: %s lacks %s (%s)", p.Name, p.Lacker, strings.Join(missing, ", "), firstOut)
}
