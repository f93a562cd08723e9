package results

import (
	"cmp"
	"encoding/json"
)

// WorkloadKind is what a run's connections were, read from its scenario:
// the service protocol, the UDP socket mode and the IP family. A run
// without a scenario (read from bench.txt) is the default, TCP over IPv4.
type WorkloadKind struct {
	Protocol string // TCP or UDP
	UDPMode  string // UDP only: socket-per-request (default), long-lived, connected
	Family   string // IPv4 or IPv6
}

// WorkloadOf reads the workload kind from run's scenario.
func WorkloadOf(run *Run) WorkloadKind {
	var sc struct {
		Service struct {
			Protocol string `json:"protocol"`
			IPFamily string `json:"ipFamily"`
		} `json:"service"`
		Workload struct {
			UDPMode string `json:"udpMode"`
		} `json:"workload"`
	}
	if run != nil && len(run.Scenario) > 0 {
		_ = json.Unmarshal(run.Scenario, &sc)
	}
	k := WorkloadKind{Protocol: cmp.Or(sc.Service.Protocol, "TCP"), Family: cmp.Or(sc.Service.IPFamily, "IPv4")}
	if k.Protocol == "UDP" {
		k.UDPMode = cmp.Or(sc.Workload.UDPMode, "socket-per-request")
	}
	return k
}

// Title is the workload as chart titles begin: "Short-connection TCP",
// "UDP, connected socket per request: …, IPv6". A title without a family
// is IPv4, as on every chart made before IPv6 was measured.
func (k WorkloadKind) Title() string {
	t := "Short-connection TCP"
	if k.Protocol == "UDP" {
		t = "UDP, " + udpModePhrase(k.UDPMode)
	}
	if k.Family == "IPv6" {
		t += ", IPv6"
	}
	return t
}

// Note is the table's line naming the workload, every part spelled out.
func (k WorkloadKind) Note() string {
	n := "workload: " + k.Protocol
	if k.Protocol == "UDP" {
		n += " " + k.UDPMode + " (" + udpModePhrase(k.UDPMode) + ")"
	} else {
		n += " short connections (connect, request, reply, close)"
	}
	return n + ", " + k.Family
}

func udpModePhrase(mode string) string {
	switch mode {
	case "long-lived":
		return "one unconnected socket per slot, request after request"
	case "connected":
		return "connected socket per request: connect, send, recv, close"
	default:
		return "unconnected socket per request: sendto, recvfrom, close"
	}
}
