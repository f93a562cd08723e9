// Package results holds what svclab makes of its measurements: the result
// schema (Run, written as results.json), the statistics over repetitions
// (Summarize: medians, spreads, confidence intervals, ratios to the direct
// datapath), the text table, the bar and scale-sweep charts, the Go
// benchmark format (bench.txt, for benchstat) and `svclab compare`, which
// tests two runs against each other with thresholds read from a YAML file.
//
// Every figure is an entry of one metric table (Metric, in metrics.go):
// its thresholds-file key, bench.txt unit, which direction is better, how
// to read it from a Trial and where its Stat lives in a Summary. Summarize,
// compare, the thresholds, bench.txt and the scale block and charts iterate
// that table, so a new metric is one entry there plus the code that
// measures it.
//
// A measurement carries its Site: "" for the machine the run ran on, or
// where else it was made (a VM kernel such as "debian-6.12"). Summaries and
// comparisons group by datapath and site, take ratios against direct at the
// same site, and tables and charts name such a datapath "ipvs @
// debian-6.12".
package results

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// SchemaVersion is bumped on any incompatible change to Run.
const SchemaVersion = 1

// Run is one `svclab bench` invocation: everything results.json holds.
type Run struct {
	SchemaVersion int       `json:"schema_version"`
	ID            string    `json:"id"`
	Started       time.Time `json:"started"`
	Finished      time.Time `json:"finished"`
	Env           Env       `json:"env"`
	// Scenario is the effective scenario (file plus command-line overrides).
	Scenario json.RawMessage `json:"scenario"`
	// Datapaths lists every datapath asked for, with what it recorded.
	Datapaths []DatapathInfo `json:"datapaths"`
	// Generator is the load generator's own ceiling at the highest
	// concurrency (the median repetition of Generators; the one trial of
	// runs before Generators existed).
	Generator *Trial `json:"generator,omitempty"`
	// Generators are the ceiling's trials: the client and server alone
	// over loopback, at every concurrency level and repetition,
	// interleaved with the datapaths' trials.
	Generators []Trial `json:"generators,omitempty"`
	Trials     []Trial `json:"trials"`
	// Summary is derived from Trials by Summarize.
	Summary []Summary `json:"summary"`
	// ScaleLimits are the scale points a datapath could not be measured
	// at in a scale sweep: its Apply failed or did not finish within the
	// sweep's apply timeout. Larger points of the same sweep are not tried
	// for that datapath and are not listed.
	ScaleLimits []ScaleLimit `json:"scale_limits,omitempty"`
	// ConcurrentRuns are the ids of other svclab runs (bench, conform, a
	// lab) found live at the start of a trial: they share the machine's
	// CPUs, so this run's figures (and theirs) may be skewed.
	ConcurrentRuns []string `json:"concurrent_runs,omitempty"`
}

// ScaleLimit is one scale point a datapath did not reach.
type ScaleLimit struct {
	Datapath  string `json:"datapath"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`
	// Reason says what happened, e.g. "apply did not finish within 1m0s".
	Reason string `json:"reason"`
	// ApplySeconds is how long the Apply ran before it failed or was
	// stopped.
	ApplySeconds float64 `json:"apply_seconds"`
	// Site is where it was measured: "" for this host, else the kernel of
	// the VM phase (like Trial.Site).
	Site string `json:"site,omitempty"`
}

// name is the limit's datapath with its site, as tables and charts name it.
func (l ScaleLimit) name() string { return SiteName(l.Datapath, l.Site) }

// Standard DatapathState keys, so that a sweep can chart state size across
// datapaths: StateObjects is how many objects the datapath programmed (rules
// for netfilter, entries of the load-balancing maps for BPF, listening
// sockets for a proxy) and StateBytes the kernel memory they take where it
// can be read (BPF map memlock). Both are decimal integers, and the same
// keys as datapath.InfoStateObjects and datapath.InfoStateBytes.
const (
	StateObjects = "state_objects"
	StateBytes   = "state_bytes"
)

// Env records the machine a run was measured on.
type Env struct {
	Kernel    string            `json:"kernel"`
	CPUModel  string            `json:"cpu_model"`
	CPUs      int               `json:"cpus"`
	GoVersion string            `json:"go_version"`
	GitRev    string            `json:"git_rev,omitempty"`
	Hostname  string            `json:"hostname,omitempty"`
	Sysctls   map[string]string `json:"sysctls,omitempty"`
	Extra     map[string]string `json:"extra,omitempty"`
	// Placement is where the run's processes ran (absent in runs before
	// it was recorded: they were not placed).
	Placement *Placement `json:"placement,omitempty"`
}

// Placement is a run's CPU placement (the scenario's workload.placement).
type Placement struct {
	// Mode is "none" (the scheduler's choice) or "split".
	Mode string `json:"mode"`
	// ClientCPUs are the load generator's CPUs, ServerCPUs the backends'
	// and the datapath's own processes' (CPU lists such as "0" or "2,3");
	// empty with mode none.
	ClientCPUs string `json:"client_cpus,omitempty"`
	ServerCPUs string `json:"server_cpus,omitempty"`
	// Mechanism is how the CPUs were given ("sched_setaffinity").
	Mechanism string `json:"mechanism,omitempty"`
}

// String names the placement for a table header.
func (p *Placement) String() string {
	if p == nil || p.Mode != "split" {
		return "CPU placement: none (the scheduler's choice)"
	}
	return fmt.Sprintf("CPU placement: split (load generator on CPU %s; backends and datapath processes on CPU %s; %s)", p.ClientCPUs, p.ServerCPUs, p.Mechanism)
}

// DatapathInfo is one datapath of the run: measured, or skipped with a reason.
type DatapathInfo struct {
	Name string `json:"name"`
	// Site is where the datapath was measured: "" for the run's own
	// machine, or e.g. the Debian kernel of a VM ("debian-6.12").
	Site        string            `json:"site,omitempty"`
	Description string            `json:"description,omitempty"`
	Skipped     string            `json:"skipped,omitempty"`
	Info        map[string]string `json:"info,omitempty"`
}

// Trial is one measured run of the workload against one datapath at one
// concurrency, in a freshly built topology.
type Trial struct {
	Datapath string `json:"datapath"`
	// Site is where the trial ran: "" for the run's own machine, or e.g.
	// the Debian kernel of a VM ("debian-6.12"). Figures of different
	// sites are never set side by side without it.
	Site        string `json:"site,omitempty"`
	Concurrency int    `json:"concurrency"`
	Repetition  int    `json:"repetition"`
	// Order is the trial's position in the run (0-based), to see order effects.
	Order int `json:"order"`
	// Invalid, when set, says why the trial's figures cannot stand for
	// the datapath (no completed connection, errors above the scenario's
	// tolerance): it is kept in results.json, named in the table and the
	// charts, and left out of every median and comparison.
	Invalid string `json:"invalid,omitempty"`
	// Slot is the trial's position in its round (its repetition, scale
	// point and concurrency level; 0 ran first), to see position effects.
	Slot int `json:"slot,omitempty"`
	// Services and Endpoints size the programmed state: how many services
	// were applied and how many endpoints each had (scale sweeps vary
	// them; the client always talks to the last service programmed).
	Services  int `json:"services,omitempty"`
	Endpoints int `json:"endpoints,omitempty"`
	// ApplySeconds is how long the datapath's Apply of the scenario took.
	ApplySeconds float64 `json:"apply_seconds"`
	// ApplyChangeSeconds is how long one further Apply took that changed a
	// single endpoint of one service at that scale (0 when not measured).
	ApplyChangeSeconds float64 `json:"apply_change_seconds,omitempty"`
	// DatapathState is what the datapath reports about its programmed
	// state after Apply (rule counts, map entries, bytes), from Info().
	DatapathState map[string]string `json:"datapath_state,omitempty"`
	Workload      Workload          `json:"workload"`
	// Model is "open" for an open-loop trial (connections started at
	// OfferedRate per second on a schedule; Concurrency is then 0) and
	// empty for the closed loop.
	Model string `json:"model,omitempty"`
	// OfferedRate is the open-loop trial's rate, LoadFraction × the
	// capacity the run measured (the lowest median closed-loop QPS among
	// its datapaths at the highest concurrency).
	OfferedRate  float64 `json:"offered_rate,omitempty"`
	LoadFraction float64 `json:"load_fraction,omitempty"`
	// Cost is the datapath's own kernel time per connection, measured in
	// the kernel (nil when attribution was off or not possible here).
	Cost *Cost `json:"cost,omitempty"`
	// Nodes is the topology's node count; omitted with one node, as are
	// the fields below (a one-node run's results stay as they were).
	Nodes int `json:"nodes,omitempty"`
	// SameNodeConnections and CrossNodeConnections split the window's
	// connections (Workload.PerBackend) by whether the backend that
	// answered is on the client's node; CrossNodeFraction is the cross
	// share. The generator times every connection in one histogram, so
	// latency is not split by class.
	SameNodeConnections  int64    `json:"same_node_connections,omitempty"`
	CrossNodeConnections int64    `json:"cross_node_connections,omitempty"`
	CrossNodeFraction    *float64 `json:"cross_node_fraction,omitempty"`
}

// Cost is what a datapath's own work costs per connection, measured in the
// kernel between the edges of a cost trial's measured window (the client
// announces them; the probes are attached before it starts and removed
// with the trial) and divided by the window's connections.
type Cost struct {
	// NsPerConn is the sum of Parts.
	NsPerConn float64 `json:"ns_per_conn"`
	// Parts is ns per connection by part: "nf-<band>" for the netfilter
	// hooks of the run's node namespaces by
	// priority band (early, conntrack, dnat, filter, snat: see
	// bpf/nfcost.c), "bpf-<program>" for the run time of the datapath's
	// own BPF programs, "proxy-cpu" for a userspace proxy's process CPU.
	// The netfilter bands are parts only of a datapath that works in
	// those hooks (datapath.Factory.InNetfilter).
	Parts map[string]float64 `json:"parts"`
	// Beside are the netfilter bands of a datapath that does no work in
	// netfilter, measured the same way: what the node's hooks did beside
	// it (≈ 0 once the floor is subtracted). Reported as a check, never
	// part of NsPerConn.
	Beside map[string]float64 `json:"beside,omitempty"`
	// Connections is the divisor: the window's connections, completed
	// and failed (those it started, drained after it).
	Connections int64 `json:"connections"`
	// BPFStatsSysctl is kernel.bpf_stats_enabled before the trial ("0" or
	// "1"); statistics were held on with BPF_ENABLE_STATS during every
	// client run whatever it said, so every datapath's probes pay the same
	// accounting.
	BPFStatsSysctl string `json:"bpf_stats_sysctl,omitempty"`
	// FloorNS is the probes' own dispatch cost per connection that was
	// subtracted from the netfilter parts (measured in the same trial, on
	// a band of each hook that holds nothing but the probes): what the
	// parts would have shown for an empty hook. 0 when not calibrated.
	FloorNS float64 `json:"floor_ns,omitempty"`
	// FloorPerCrossingNS is that floor per band crossing: one probe
	// dispatch, a small in-kernel benchmark of the machine's speed during
	// the window (it moves with frequency, cache pressure and neighbours,
	// and so does the datapath's own work).
	FloorPerCrossingNS float64 `json:"floor_per_crossing_ns,omitempty"`
	// TraversalsPerConn is the netfilter hook traversals per connection
	// over the probed namespaces (packets × hooks crossed): the divisor
	// of a per-traversal figure.
	TraversalsPerConn float64 `json:"traversals_per_conn,omitempty"`
	// Missing names what could not be measured here (e.g. the probes on a
	// kernel before 6.4); the parts it names are absent, not zero.
	Missing string `json:"missing,omitempty"`
	// CPUShare is NsPerConn as a fraction of the trial's own CPU per
	// connection (its pods' and the datapath process's cgroups, the
	// probes' floor taken out): see CPUShare. Stored for bench.txt's
	// round trip; a trial without it derives it.
	CPUShare float64 `json:"cpu_share,omitempty"`
}

// measured reports whether the cost trial measured anything: no parts
// means nothing could be measured here (Missing says why), which is no
// figure, not a cost of 0. A nil Cost measured nothing.
func (c *Cost) measured() bool {
	return c != nil && c.Connections != 0 && (len(c.Parts) > 0 || c.Missing == "")
}

// costForBench is the trial's Cost, made for a figure read back from
// bench.txt (which has no connection count: 1 keeps it a measurement).
func (t *Trial) costForBench() *Cost {
	if t.Cost == nil {
		t.Cost = &Cost{Connections: 1}
	}
	return t.Cost
}

// CPUShare is the datapath's own kernel time per connection (NsPerConn)
// as a fraction of the CPU the trial's pods and datapath process used per
// connection in the same window, less the probes' own floor (which only
// the cost trial pays). Both come from the same window on the same CPUs,
// so a machine that runs slower or faster for a while (frequency, a busy
// neighbour, the hypervisor) moves both alike and the fraction keeps the
// datapath's weight: across 10 quiet runs of this machine kind it varied
// 0.6 % between runs for iptables where the nanoseconds varied 8.6 %. It
// is a little below the datapath's share of an unprobed trial, whose CPU
// per connection lacks the probes' accounting beyond the floor. ok is
// false without the figures it is made of.
func (t Trial) CPUShare() (share float64, ok bool) {
	c := t.Cost
	if !c.measured() {
		return 0, false
	}
	if c.CPUShare != 0 {
		return c.CPUShare, true
	}
	if t.Workload.CPU == nil || t.Workload.CPU.RunPerConnectionUS == 0 {
		return 0, false
	}
	own := t.Workload.CPU.RunPerConnectionUS*1e3 - c.FloorNS
	if own <= 0 {
		return 0, false
	}
	return c.NsPerConn / own, true
}

// Valid reports whether the trial's figures count (Invalid is empty).
func (t Trial) Valid() bool { return t.Invalid == "" }

// ModelOpen is Trial.Model of an open-loop trial.
const ModelOpen = "open"

// ModelCost is Trial.Model of a cost trial: a closed-loop trial run with
// the cost-attribution probes attached (Trial.Cost set). Its throughput
// and latency carry the probes' own overhead, so they are never mixed
// with the plain trials' figures: they give the datapath's own cost per
// connection, and, paired with the plain trial of the same datapath, point
// and repetition, the probes' overhead.
const ModelCost = "cost"

// Workload is what the load generator measured in one trial.
type Workload struct {
	// DurationSeconds is the measured window (warm-up excluded).
	DurationSeconds float64 `json:"duration_seconds"`
	Connections     int64   `json:"connections"`
	// EdgeWarmup counts the warm-up connections started between a cost
	// trial's start edge and its window (while the parent read the
	// probes): inside the edges, so in the cost's divisor too.
	EdgeWarmup int64 `json:"edge_warmup,omitempty"`
	// Started counts every connection (or UDP request) the client
	// started over its whole run, warm-up and drain included, successful
	// or not: the divisor of figures measured around the whole run
	// (Trial.Cost).
	Started int64   `json:"started,omitempty"`
	QPS     float64 `json:"qps"`
	// Errors counts failed connections by kind (errno name or "short-reply").
	Errors map[string]int64 `json:"errors,omitempty"`
	// PerBackend counts successful connections by the pod that answered.
	PerBackend map[string]int64 `json:"per_backend,omitempty"`
	// Latency is connect start to close, in microseconds.
	Latency Latency `json:"latency_us"`
	// Histogram is the full HDR histogram of latency in nanoseconds.
	Histogram *Histogram `json:"histogram,omitempty"`
	// SynRetrans counts TCP SYN retransmissions in the client namespace: a
	// clean trial has none.
	SynRetrans int64 `json:"syn_retrans"`
	// WrongSource counts UDP replies whose source address was not the
	// address the request was sent to (a Service must answer from its
	// VIP:port); such replies are counted as connections too. Always 0
	// for TCP.
	WrongSource int64 `json:"wrong_source,omitempty"`
	// Lost counts the UDP requests of the window that got no reply within
	// the timeout (also in Errors as "timeout"), and LossRate is their
	// share of the window's requests: a dropped request or reply shows
	// here, not only as a lower QPS.
	Lost     int64   `json:"lost,omitempty"`
	LossRate float64 `json:"loss_rate,omitempty"`
	// CPU is the machine-wide CPU time spent during the measured window
	// (from /proc/stat), nil when not measured.
	CPU *CPUUsage `json:"cpu,omitempty"`

	// The fields below are set by the open-loop generator only.

	// OfferedRate is the open loop's schedule in connections (or UDP
	// requests) per second; 0 for the closed loop. QPS is then the
	// achieved rate: successful connections whose intended start fell in
	// the window, per second of window, and Latency runs from each
	// connection's intended start, queueing in the generator included.
	OfferedRate float64 `json:"offered_rate,omitempty"`
	// Arrivals is the open loop's arrival process ("poisson" or
	// "constant") and ScheduleSeed the seed its schedule was drawn from.
	Arrivals     string `json:"arrivals,omitempty"`
	ScheduleSeed uint64 `json:"schedule_seed,omitempty"`
	// MaxInFlight is the open loop's cap on connections in flight; an
	// arrival that found it reached is counted in Errors as "overload".
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// Scheduled counts the open-loop arrivals whose intended start fell in
	// the window; each ended as a connection or an error, so Scheduled is
	// Connections plus the sum of Errors.
	Scheduled int64 `json:"scheduled,omitempty"`
	// StartLag is how late the generator started the window's connections
	// after their intended start, in microseconds (part of Latency): when
	// it is a large part of Latency the generator, not the datapath, fell
	// behind.
	StartLag *Latency `json:"start_lag_us,omitempty"`
}

// CPUUsage is machine-wide CPU time over a measured window: it includes the
// generator and the backends as well as the datapath, which is the same
// for every datapath, so differences between datapaths are the datapath's.
type CPUUsage struct {
	WindowSeconds  float64 `json:"window_seconds"`
	CPUs           int     `json:"cpus"`
	UserSeconds    float64 `json:"user_seconds"`
	SystemSeconds  float64 `json:"system_seconds"`
	SoftirqSeconds float64 `json:"softirq_seconds"`
	IRQSeconds     float64 `json:"irq_seconds"`
	IdleSeconds    float64 `json:"idle_seconds"`
	// BusySeconds is user+nice+system+irq+softirq+steal.
	BusySeconds float64 `json:"busy_seconds"`
	// PerConnectionUS is BusySeconds per successful connection, in µs.
	PerConnectionUS float64 `json:"per_connection_us"`
	// BusyFraction is BusySeconds / (WindowSeconds × CPUs): a low value
	// means the trial stalled (lost SYNs, timeouts), not that it was fast.
	BusyFraction float64 `json:"busy_fraction"`
	// RunSeconds is the CPU time charged to the run's own cgroups (client
	// and backend pods: cgroup v2 cpu.stat usage_usec) over the window,
	// and RunPerConnectionUS that per successful connection: unlike
	// BusySeconds, another tenant's work and hypervisor steal are not in
	// it; softirq work the kernel does outside the pods' tasks (ksoftirqd)
	// is not either. Absent when not measured.
	RunSeconds         float64 `json:"run_seconds,omitempty"`
	RunPerConnectionUS float64 `json:"run_per_connection_us,omitempty"`
	// RunRoleSeconds splits RunSeconds by role cgroup ("clients",
	// "servers", "hostnet", "datapath": a datapath's own process such as
	// the userspace proxy).
	RunRoleSeconds map[string]float64 `json:"run_role_seconds,omitempty"`
	// StealSeconds is the time the hypervisor ran something else on the
	// machine's CPUs (part of BusySeconds; the run did not get it).
	StealSeconds float64 `json:"steal_seconds,omitempty"`
	// OutsideSeconds is CPU busy outside the run over the window: the
	// machine's user, system, irq and softirq time less what was charged
	// to the run's cgroups, plus steal. Interrupt and softirq work count on
	// both sides because the kernel charges the softirq it runs in a task's
	// context to that task's cgroup: most of the run's packet work. With
	// user and system alone on the machine's side, a run whose cgroups had
	// more softirq charged to them than another tenant used showed ≈ 0
	// (with --placement split, one core kept busy read as 0-0.5 %, 10-19 %
	// this way; unplaced, 9-34 % against 47-51 %: the busy core is 50 %).
	// What ksoftirqd does for the run is counted outside: 1-4 % of a quiet
	// machine here. OutsideFraction is it per second of window and CPU: a
	// few percent says another tenant was busy during the trial, and the
	// table flags it.
	OutsideSeconds  float64 `json:"outside_seconds,omitempty"`
	OutsideFraction float64 `json:"outside_fraction,omitempty"`
}

// AddRun records the run's own CPU time d over the window (by role
// when roles is not empty), per connection, and what was busy outside it.
func (u *CPUUsage) AddRun(d time.Duration, roles map[string]time.Duration, conns int64) {
	u.RunSeconds = d.Seconds()
	for r, v := range roles {
		if u.RunRoleSeconds == nil {
			u.RunRoleSeconds = map[string]float64{}
		}
		u.RunRoleSeconds[r] = v.Seconds()
	}
	u.OutsideSeconds = max(0, u.UserSeconds+u.SystemSeconds+u.IRQSeconds+u.SoftirqSeconds-u.RunSeconds) + u.StealSeconds
	if u.WindowSeconds > 0 && u.CPUs > 0 {
		u.OutsideFraction = u.OutsideSeconds / (u.WindowSeconds * float64(u.CPUs))
	}
	if conns > 0 {
		u.RunPerConnectionUS = u.RunSeconds / float64(conns) * 1e6
	}
}

// Latency percentiles in microseconds.
type Latency struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// Summary aggregates the repetitions of one datapath at one concurrency.
type Summary struct {
	Datapath string `json:"datapath"`
	// Site is the trials' Site.
	Site        string `json:"site,omitempty"`
	Concurrency int    `json:"concurrency"`
	Repetitions int    `json:"repetitions"`
	// Invalid counts the trials left out as invalid (Trial.Invalid);
	// Repetitions counts the valid ones the figures come from.
	Invalid int  `json:"invalid,omitempty"`
	QPS     Stat `json:"qps"`
	P50     Stat `json:"p50_us"`
	P90     Stat `json:"p90_us"`
	P99     Stat `json:"p99_us"`
	// QPSRatioToDirect and P90RatioToDirect compare medians with the
	// "direct" datapath of the same run at the same site and point (0
	// when direct was not measured there).
	QPSRatioToDirect float64 `json:"qps_ratio_to_direct,omitempty"`
	P90RatioToDirect float64 `json:"p90_ratio_to_direct,omitempty"`
	Errors           int64   `json:"errors"`
	ApplySeconds     Stat    `json:"apply_seconds"`
	// ApplyChangeSeconds is the time of an Apply that changed one endpoint
	// at this scale (absent when not measured).
	ApplyChangeSeconds Stat `json:"apply_change_seconds,omitzero"`
	// StateObjects and StateBytes are the medians of the trials'
	// DatapathState[StateObjects] and [StateBytes] (absent when the
	// datapath does not report them).
	StateObjects Stat `json:"state_objects,omitzero"`
	StateBytes   Stat `json:"state_bytes,omitzero"`
	// Services and Endpoints are the scale point of a sweep (0 when the
	// run was not a sweep).
	Services  int `json:"services,omitempty"`
	Endpoints int `json:"endpoints,omitempty"`
	// CPUPerConnUS is machine-wide busy CPU time per connection in µs,
	// over the repetitions that measured it (absent when none did).
	CPUPerConnUS Stat `json:"cpu_per_conn_us,omitzero"`
	// CPURatioToDirect compares CPUPerConnUS medians with direct at the
	// same scale point and concurrency (0 when there is none).
	CPURatioToDirect float64 `json:"cpu_ratio_to_direct,omitempty"`
	// RunCPUPerConnUS is the CPU time of the run's own cgroups per
	// connection in µs (absent when not measured).
	RunCPUPerConnUS Stat `json:"run_cpu_per_conn_us,omitzero"`
	// SynRetrans totals the SYN retransmissions of all repetitions: a
	// clean measurement has none.
	SynRetrans int64 `json:"syn_retrans"`
	// Model and LoadFraction are those of the summarised trials (empty and
	// 0 for the closed loop); OfferedRate is the median of their offered
	// rates. An open-loop summary's QPS is the achieved rate, its latency
	// runs from the intended start and its Errors include overload.
	Model        string  `json:"model,omitempty"`
	LoadFraction float64 `json:"load_fraction,omitempty"`
	OfferedRate  float64 `json:"offered_rate,omitempty"`
	// Overload is the part of Errors the open-loop generator counted as
	// "overload" (an arrival that found its in-flight cap reached).
	Overload int64 `json:"overload,omitempty"`
	// StartLagP99 is the open-loop generator's p99 start lag in µs per
	// repetition (absent for the closed loop).
	StartLagP99 Stat `json:"start_lag_p99_us,omitzero"`
	// DatapathNsPerConn is Trial.Cost.NsPerConn over the cost trials
	// (Model ModelCost) of the same datapath, site, point and concurrency
	// (absent when not measured). A run written before cost trials
	// existed carried Cost on its plain trials; their figures are read
	// then.
	DatapathNsPerConn Stat `json:"datapath_ns_per_conn,omitzero"`
	// DatapathCPUShare is Trial.CPUShare over the same cost trials: the
	// datapath's own time as a fraction of the trial's CPU per connection,
	// the figure the gate compares (it does not move with the machine's
	// speed the way nanoseconds do).
	DatapathCPUShare Stat `json:"datapath_cpu_share,omitzero"`
	// Cost is the rest of what those cost trials measured (nil when there
	// were none).
	Cost *CostSummary `json:"cost,omitempty"`
}

// CostSummary is what the cost trials of one datapath at one site, point
// and concurrency measured besides DatapathNsPerConn. They run with the
// attribution probes attached, so their QPS and latency are never in the
// summary's other figures; they are here only as the probes' overhead.
type CostSummary struct {
	// Repetitions counts the valid cost trials the figures come from,
	// Invalid the ones left out (Trial.Invalid).
	Repetitions int `json:"repetitions"`
	Invalid     int `json:"invalid,omitempty"`
	// Parts is the median of each part of Cost.Parts (ns per connection)
	// over the trials that measured it: the netfilter bands can be near 0
	// or slightly negative once the floor is subtracted.
	Parts map[string]float64 `json:"parts,omitempty"`
	// Beside is the median of each of Cost.Beside: the netfilter bands of
	// a datapath that does not work there, not part of its cost.
	Beside map[string]float64 `json:"beside,omitempty"`
	// FloorNS is the median of the trials' Cost.FloorNS: the probes' own
	// cost per connection subtracted from the netfilter parts.
	FloorNS float64 `json:"floor_ns,omitempty"`
	// FloorPerCrossingNS is that floor per band crossing: one probe
	// dispatch, a small in-kernel benchmark of the machine's speed during
	// the window (it moves with frequency, cache pressure and neighbours,
	// and so does the datapath's own work).
	FloorPerCrossingNS float64 `json:"floor_per_crossing_ns,omitempty"`
	// TraversalsPerConn is the netfilter hook traversals per connection
	// over the probed namespaces (packets × hooks crossed): the divisor
	// of a per-traversal figure.
	TraversalsPerConn float64 `json:"traversals_per_conn,omitempty"`
	// Missing are the distinct Cost.Missing of the trials: what the
	// probes could not measure here.
	Missing []string `json:"missing,omitempty"`
	// ProbeOverhead is, per repetition, the cost trial's QPS divided by
	// the plain trial's of the same repetition (below 1: the probes slow
	// the datapath), with its 95% interval; absent when no repetition has
	// both (and for a run whose cost figures came from its plain trials).
	ProbeOverhead Stat `json:"probe_overhead,omitzero"`
}

// Stat is a figure over repetitions: the median and the spread.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// Values are the per-repetition figures, in repetition order.
	Values []float64 `json:"values"`
	// CI is the 95% confidence interval of the median (distribution-free,
	// from order statistics); nil when there are too few repetitions for
	// a finite interval (6 at 95%) or it was not computed.
	CI *Interval `json:"ci95,omitempty"`
}

// Interval is a confidence interval of a median.
type Interval struct {
	Lo float64 `json:"lo"`
	Hi float64 `json:"hi"`
	// Confidence is the interval's actual coverage (at least the level
	// asked for: order statistics give discrete levels).
	Confidence float64 `json:"confidence"`
}

// Write stores the run as indented JSON.
func (r *Run) Write(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// Read loads a results.json, refusing other schema versions.
func Read(path string) (*Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	var r Run
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode results %s: %w", path, err)
	}
	if r.SchemaVersion != SchemaVersion {
		return nil, fmt.Errorf("results %s: schema_version %d, this svclab reads %d", path, r.SchemaVersion, SchemaVersion)
	}
	r.moveSitesOutOfNames()
	return &r, nil
}

// moveSitesOutOfNames reads results written before Site existed, which
// named a datapath measured in a VM "ipvs@debian-6.12": the suffix becomes
// the Site, so such a run groups, pairs with direct and compares like a
// new one.
func (r *Run) moveSitesOutOfNames() {
	fix := func(name, site *string) {
		if *site == "" {
			*name, *site = SplitSite(*name)
		}
	}
	for i := range r.Datapaths {
		fix(&r.Datapaths[i].Name, &r.Datapaths[i].Site)
	}
	for i := range r.Trials {
		fix(&r.Trials[i].Datapath, &r.Trials[i].Site)
	}
	for i := range r.Summary {
		fix(&r.Summary[i].Datapath, &r.Summary[i].Site)
	}
}
