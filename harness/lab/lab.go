// Package lab runs `svclab up`, `exec`, `status` and `down`: a world kept
// up for a person (or a script) to poke at, described by a state file in
// /run/svclab/labs and alive for as long as its `svclab up` process holds
// its run lock: the detached supervisor `svclab up` starts (its output in
// <id>.log beside the state file), or `svclab up --foreground` itself.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"svclab/datapath"
	"svclab/harness/runlock"
	"svclab/harness/topology"
	"svclab/harness/world"
	"svclab/internal/cgroup2"
	"svclab/internal/child"
	"svclab/internal/nsutil"
	"svclab/results"
)

// labDir holds one state file per lab that is up. The file only describes
// the lab; whether it is alive is its run lock (see lock.go), held by the
// `svclab up` process for as long as it lives: the BPF links of
// socket-level datapaths die with that process, so the process is the lab.
var labDir = "/run/svclab/labs"

// Lab defaults and limits.
const (
	TargetPort  = 8080
	ServicePort = 80
	MaxBackends = 200
	MaxClients  = 16
)

// Lab topology ranges: the service is the service CIDR's 10th address,
// 10.96.0.10, as kube-dns usually is.
var (
	podCIDR     = netip.MustParsePrefix("10.244.0.0/16")
	serviceCIDR = netip.MustParsePrefix("10.96.0.0/16")
)

// Config is one `svclab up`.
type Config struct {
	Datapath string
	Backends int
	Clients  int
	// UDP adds a UDP port to the service (same port number, same target).
	UDP             bool
	Affinity        datapath.SessionAffinity
	AffinityTimeout time.Duration
	// Log, when set, is the file a detached lab's supervisor writes its
	// output to (SupervisorLog): Up moves it to <id>.log beside the
	// state file once the lab has an id, and removes it with the lab.
	Log string
}

// Validate checks the configuration and names the field at fault.
func (c Config) Validate() error {
	if _, err := datapath.Lookup(c.Datapath); err != nil {
		return fmt.Errorf("datapath: %w", err)
	}
	if c.Backends < 1 || c.Backends > MaxBackends {
		return fmt.Errorf("backends: %d is out of range [1, %d]", c.Backends, MaxBackends)
	}
	if c.Clients < 1 || c.Clients > MaxClients {
		return fmt.Errorf("clients: %d is out of range [1, %d]", c.Clients, MaxClients)
	}
	switch c.Affinity {
	case "", datapath.SessionAffinityNone, datapath.SessionAffinityClientIP:
	default:
		return fmt.Errorf("affinity: %q is not None or ClientIP", c.Affinity)
	}
	if c.AffinityTimeout < 0 {
		return fmt.Errorf("affinity timeout: %s is negative", c.AffinityTimeout)
	}
	return nil
}

// ParseAffinity parses the --affinity flag: "none", "clientip" or
// "clientip:TIMEOUT" (a Go duration such as 30s, or seconds).
func ParseAffinity(s string) (datapath.SessionAffinity, time.Duration, error) {
	mode, timeout, hasTimeout := strings.Cut(s, ":")
	switch strings.ToLower(mode) {
	case "", "none":
		if hasTimeout {
			return "", 0, fmt.Errorf("affinity: %q: a timeout needs clientip", s)
		}
		return datapath.SessionAffinityNone, 0, nil
	case "clientip":
	default:
		return "", 0, fmt.Errorf("affinity: %q is not none, clientip or clientip:TIMEOUT", s)
	}
	if !hasTimeout {
		return datapath.SessionAffinityClientIP, 0, nil
	}
	d, err := time.ParseDuration(timeout)
	if err != nil {
		secs, serr := strconv.Atoi(timeout)
		if serr != nil {
			return "", 0, fmt.Errorf("affinity: timeout %q is neither a duration such as 30s nor seconds", timeout)
		}
		d = time.Duration(secs) * time.Second
	}
	if d < time.Second || d > 86400*time.Second {
		return "", 0, fmt.Errorf("affinity: timeout %s is out of range [1s, 24h] (sessionAffinityConfig.clientIP.timeoutSeconds)", d)
	}
	return datapath.SessionAffinityClientIP, d, nil
}

// State is what /run/svclab/labs/<id>.json records about a lab.
type State struct {
	ID       string    `json:"id"`
	PID      int       `json:"pid"`
	Started  time.Time `json:"started"`
	Datapath string    `json:"datapath"`
	// Prefix names every kernel object of the lab.
	Prefix   string    `json:"prefix"`
	Services []Service `json:"services"`
	Pods     []Pod     `json:"pods"`
	// NetNS lists every network namespace of the lab (pods, node, sink).
	NetNS   []string `json:"netns"`
	Cgroups Cgroups  `json:"cgroups"`
	// Log is the output of a detached lab's supervisor (`svclab up`
	// without --foreground); empty for a lab in the foreground.
	Log string `json:"log,omitempty"`
}

// Service is a service of the lab.
type Service struct {
	Name      string `json:"name"`
	ClusterIP string `json:"cluster_ip"`
	// Ports read "80/TCP->8080".
	Ports           []string `json:"ports"`
	SessionAffinity string   `json:"session_affinity,omitempty"`
	AffinityTimeout string   `json:"affinity_timeout,omitempty"`
}

// Pod is a pod of the lab.
type Pod struct {
	Name  string `json:"name"`
	Role  string `json:"role"` // client or backend
	Addr  string `json:"addr"`
	NetNS string `json:"netns"`
}

// Cgroups are the lab's cgroup v2 directories: Node is where socket-level
// datapaths attach (kubepods); Client and Server, below it, are where
// `svclab exec` runs commands in a client or a backend pod.
type Cgroups struct {
	Node   string `json:"node,omitempty"`
	Client string `json:"client"`
	Server string `json:"server"`
}

// Pod returns the pod named name.
func (s *State) Pod(name string) (Pod, bool) {
	for _, p := range s.Pods {
		if p.Name == name {
			return p, true
		}
	}
	return Pod{}, false
}

// Alive reports whether the lab's up process still holds its run lock.
func (s *State) Alive() bool { return runlock.Alive(s.ID) }

func labFile(id string) string { return filepath.Join(labDir, id+".json") }

// logFile is where a detached lab's supervisor output ends up once the lab
// has an id.
func logFile(id string) string { return filepath.Join(labDir, id+".log") }

// SupervisorLog is the file a detached lab's supervisor (pid) writes to
// until Up knows the lab's id (Config.Log). Prune removes it once that
// process is gone.
func SupervisorLog(pid int) string { return filepath.Join(labDir, fmt.Sprintf("up-%d.log", pid)) }

// supervisorLog matches SupervisorLog's names.
var supervisorLog = regexp.MustCompile(`^up-([0-9]+)\.log$`)

// stopFile marks a lab that `svclab down` stopped: its up process then
// ends with success, while a signal from anyone else is an interruption.
func stopFile(id string) string { return filepath.Join(labDir, id+".down") }

// Left lists the kernel objects of the lab that still exist. For a dead
// lab (killed with SIGKILL, crashed) they are what it left behind.
func (s *State) Left() []string {
	// Only a run's own names: a damaged state file must not make every
	// namespace or the cgroup root look like the lab's.
	if !runlock.IsRunObject(s.Prefix) || s.Prefix != "svclab-"+s.ID {
		return nil
	}
	var left []string
	if names, err := nsutil.List(s.Prefix + "-"); err == nil {
		for _, n := range names {
			left = append(left, "netns "+n)
		}
	}
	// The lab's cgroups sit under one directory named by its prefix.
	if mnt, err := cgroup2.Find(); err == nil {
		top := filepath.Join(mnt, s.Prefix)
		if _, err := os.Stat(top); err == nil {
			left = append(left, "cgroup "+top)
		}
	}
	return left
}

// Up builds a lab (topology, one backend server answering TCP with HTTP and
// UDP with a datagram naming the pod, the datapath with one service), writes
// its state file, calls ready, and keeps everything until ctx is done; then
// it removes all of it. On error everything built so far is removed.
func Up(ctx context.Context, cfg Config, log io.Writer, ready func(*State)) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	f, _ := datapath.Lookup(cfg.Datapath)
	if f.Probe != nil {
		if err := f.Probe(); err != nil {
			return fmt.Errorf("datapath %s cannot run here: %w", f.Name, err)
		}
	}
	Prune()
	lock, err := runlock.Begin(log)
	if err != nil {
		return err
	}
	// Teardown runs in reverse: datapath, server, topology, state file,
	// and the lock last, so a waiting `svclab down` sees the lock go only
	// when everything else is gone.
	defer lock.Release()
	var logName string
	if cfg.Log != "" {
		// Renamed, not reopened: the supervisor's stdout and stderr
		// keep writing to it.
		if rerr := os.Rename(cfg.Log, logFile(lock.ID)); rerr == nil {
			logName = logFile(lock.ID)
		}
	}
	defer func() {
		_ = os.Remove(stopFile(lock.ID))
		if logName != "" {
			_ = os.Remove(logName)
		}
		if rerr := os.Remove(labFile(lock.ID)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}()
	tc := topology.Config{Prefix: lock.Prefix, Clients: cfg.Clients, Backends: cfg.Backends, PodCIDR: podCIDR, ServiceCIDR: serviceCIDR}
	w, err := world.Build(ctx, world.Spec{Topology: tc, Port: TargetPort, Datapath: &f})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.Close()) }()
	topo, dp := w.Topology, w.Datapath
	svc := datapath.Service{Namespace: "default", Name: "web", ClusterIP: topology.NthHost(serviceCIDR, 10),
		Ports:           []datapath.ServicePort{{Name: "http", Protocol: datapath.TCP, Port: ServicePort, TargetPort: TargetPort}},
		SessionAffinity: cfg.Affinity, AffinityTimeout: cfg.AffinityTimeout}
	if cfg.UDP {
		svc.Ports = append(svc.Ports, datapath.ServicePort{Name: "udp", Protocol: datapath.UDP, Port: ServicePort, TargetPort: TargetPort})
	}
	for _, b := range topo.Backends {
		svc.Endpoints = append(svc.Endpoints, datapath.Endpoint{Pod: b.Name, Addr: b.Addr, Ready: true, Serving: true})
	}
	if err := dp.Apply(ctx, datapath.State{Services: []datapath.Service{svc}}); err != nil {
		return fmt.Errorf("datapath %s: apply: %w", f.Name, err)
	}

	st := &State{ID: lock.ID, PID: os.Getpid(), Started: time.Now().UTC(), Datapath: f.Name, Prefix: lock.Prefix,
		Cgroups: Cgroups{Node: topo.NodeCgroup.Path, Client: topo.ClientCgroup.Path, Server: topo.ServerCgroup.Path}, Log: logName}
	ls := Service{Name: svc.String(), ClusterIP: svc.ClusterIP.String(), SessionAffinity: string(svc.SessionAffinity)}
	if svc.SessionAffinity == datapath.SessionAffinityClientIP {
		ls.AffinityTimeout = svc.EffectiveAffinityTimeout().String()
	}
	for _, p := range svc.Ports {
		ls.Ports = append(ls.Ports, fmt.Sprintf("%d/%s->%d", p.Port, p.Protocol, p.TargetPort))
	}
	st.Services = []Service{ls}
	for _, p := range topo.Clients {
		st.Pods = append(st.Pods, Pod{Name: p.Name, Role: "client", Addr: p.Addr.String(), NetNS: p.NS.Name})
	}
	for _, p := range topo.Backends {
		st.Pods = append(st.Pods, Pod{Name: p.Name, Role: "backend", Addr: p.Addr.String(), NetNS: p.NS.Name})
	}
	if st.NetNS, err = nsutil.List(lock.Prefix + "-"); err != nil {
		return err
	}
	if err := os.MkdirAll(labDir, 0o755); err != nil {
		return fmt.Errorf("lab state: %w", err)
	}
	if err := results.WriteJSON(labFile(lock.ID), st); err != nil {
		return fmt.Errorf("lab state: %w", err)
	}
	if ready != nil {
		ready(st)
	}
	<-ctx.Done()
	if _, serr := os.Stat(stopFile(lock.ID)); serr == nil {
		return nil // svclab down asked for it
	}
	// A signal from anyone else (Ctrl-C, a dropped ssh session) is an
	// interruption, which the exit status says.
	return context.Cause(ctx)
}

// read reads a lab's state file.
func read(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", path, err)
	}
	return &st, nil
}

// Prune removes the state files (and logs) of labs whose up process is
// gone and whose kernel objects are gone too (removed by CleanupStale, by
// any later run's runlock.Begin or by Down). The state file and log of a
// dead lab with objects left are kept: they are how status and down know
// about them. Logs of supervisors that died before their lab had an id go
// too.
func Prune() {
	ents, _ := os.ReadDir(labDir)
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || runlock.Alive(id) {
			continue
		}
		st, err := read(filepath.Join(labDir, e.Name()))
		if err == nil && len(st.Left()) > 0 {
			continue
		}
		_ = os.Remove(filepath.Join(labDir, e.Name()))
		_ = os.Remove(stopFile(id))
		_ = os.Remove(logFile(id))
	}
	for _, e := range ents {
		name := e.Name()
		if m := supervisorLog.FindStringSubmatch(name); m != nil {
			if pid, err := strconv.Atoi(m[1]); err == nil && pid > 0 && errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
				_ = os.Remove(filepath.Join(labDir, name))
			}
			continue
		}
		// A log whose lab is gone (no live lock, no state file).
		if id, ok := strings.CutSuffix(name, ".log"); ok && runlock.IsRunObject("svclab-"+id) && !runlock.Alive(id) {
			if _, err := os.Stat(labFile(id)); errors.Is(err, os.ErrNotExist) {
				_ = os.Remove(filepath.Join(labDir, name))
			}
		}
	}
}

// List returns the labs that are up and the dead labs whose objects are
// still there (Alive tells them apart), oldest first. State files of dead
// labs that left nothing are removed on the way.
func List() ([]*State, error) {
	Prune()
	ents, err := os.ReadDir(labDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("labs: %w", err)
	}
	var out []*State
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		st, err := read(filepath.Join(labDir, e.Name()))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // went down meanwhile
			}
			return nil, err
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}

// ErrNoLab is returned when no lab (or not the one asked for) is up.
var ErrNoLab = errors.New("no lab is up")

// ErrDeadLab is returned when a lab's up process is gone (killed) but its
// objects are still there: svclab down removes them.
var ErrDeadLab = errors.New("lab is dead (its svclab up was killed)")

// Find returns the lab with this id, or the only lab when id is empty; a
// dead lab with objects left counts, so that down can remove them.
func Find(id string) (*State, error) {
	labs, err := List()
	if err != nil {
		return nil, err
	}
	if id != "" {
		for _, l := range labs {
			if l.ID == id {
				return l, nil
			}
		}
		return nil, fmt.Errorf("lab %q: %w (see svclab status)", id, ErrNoLab)
	}
	switch len(labs) {
	case 0:
		return nil, fmt.Errorf("%w (start one with svclab up)", ErrNoLab)
	case 1:
		return labs[0], nil
	}
	var ids []string
	for _, l := range labs {
		if l.Alive() {
			ids = append(ids, l.ID)
		} else {
			ids = append(ids, l.ID+" (dead)")
		}
	}
	return nil, fmt.Errorf("%d labs are known (%s): say which", len(labs), strings.Join(ids, ", "))
}

// Exec runs argv in a lab pod's network namespace and in its role's cgroup
// (both under the node cgroup a socket-level datapath attaches to, as every
// pod's processes are in a cluster), with the given
// standard streams, and returns its exit status (128+N if killed by signal
// N). Signals svclab receives meanwhile are passed on to the command.
func (s *State) Exec(pod string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("exec: no command given")
	}
	p, ok := s.Pod(pod)
	if !ok {
		var names []string
		for _, p := range s.Pods {
			names = append(names, p.Name)
		}
		return 0, fmt.Errorf("exec: lab %s has no pod %q (pods: %s)", s.ID, pod, strings.Join(names, ", "))
	}
	if !s.Alive() {
		return 0, fmt.Errorf("exec: lab %s: %w; remove what it left with svclab down %s", s.ID, ErrDeadLab, s.ID)
	}
	ns, err := nsutil.Open(p.NetNS)
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	// Only the handle: Close would delete the lab's namespace.
	defer func() {
		h := ns.Handle()
		h.Close()
	}()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT)
	defer signal.Stop(sigs)
	cg := s.Cgroups.Client
	if p.Role == "backend" {
		cg = s.Cgroups.Server
	}
	if err := child.Start(cmd, ns, cg); err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case sig := <-sigs:
				_ = cmd.Process.Signal(sig)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return exit.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	return 0, nil
}

// Down stops a lab: it signals the lab's up process and waits until that
// process has removed everything and let go of its lock. A dead lab (its
// up process killed) is not signalled (its pid may be another process's by
// now): CleanupStale removes what it left, and removed lists that.
func Down(ctx context.Context, id string, timeout time.Duration) (st *State, removed []string, err error) {
	st, err = Find(id)
	if err != nil {
		return nil, nil, err
	}
	if !st.Alive() {
		removed = st.Left()
		if _, err := runlock.CleanupStale(); err != nil {
			return st, nil, fmt.Errorf("down: remove what dead lab %s left: %w", st.ID, err)
		}
		if left := st.Left(); len(left) > 0 {
			return st, nil, fmt.Errorf("down: dead lab %s: still left: %s", st.ID, strings.Join(left, ", "))
		}
		Prune()
		return st, removed, nil
	}
	if err := os.WriteFile(stopFile(st.ID), nil, 0o644); err != nil {
		return st, nil, fmt.Errorf("down: %w", err)
	}
	if err := unix.Kill(st.PID, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return st, nil, fmt.Errorf("down: signal lab %s (pid %d): %w", st.ID, st.PID, err)
	}
	deadline := time.Now().Add(timeout)
	for runlock.Alive(st.ID) {
		if time.Now().After(deadline) {
			return st, nil, fmt.Errorf("down: lab %s (pid %d) still up after %s", st.ID, st.PID, timeout)
		}
		select {
		case <-ctx.Done():
			return st, nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The lock goes just before the up process exits: wait for that too,
	// so that a script's next command sees no svclab process of the lab.
	for running(st.PID) {
		if time.Now().After(deadline) {
			return st, nil, fmt.Errorf("down: lab %s is down but its process %d still runs after %s", st.ID, st.PID, timeout)
		}
		select {
		case <-ctx.Done():
			return st, nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := runlock.CleanupStale(); err != nil {
		return st, nil, fmt.Errorf("down: clean up what lab %s left: %w", st.ID, err)
	}
	Prune()
	return st, nil, nil
}

// running reports whether process pid exists and has not exited (a zombie
// waiting for its parent to reap it has).
func running(pid int) bool {
	if pid <= 0 || errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// Write prints a lab's services and pods, and how to use it.
func Write(w io.Writer, st *State) {
	fmt.Fprintf(w, "lab %s is up: datapath %s, pid %d, kernel objects %s-*\n\n", st.ID, st.Datapath, st.PID, st.Prefix)
	for _, s := range st.Services {
		fmt.Fprintf(w, "service %s  ClusterIP %s  ports %s", s.Name, s.ClusterIP, strings.Join(s.Ports, " "))
		if s.SessionAffinity == string(datapath.SessionAffinityClientIP) {
			fmt.Fprintf(w, "  sessionAffinity ClientIP (timeout %s)", s.AffinityTimeout)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	for _, p := range st.Pods {
		fmt.Fprintf(w, "%-8s %-12s %-15s netns %s\n", p.Role, p.Name, p.Addr, p.NetNS)
	}
	if len(st.Services) > 0 && len(st.Pods) > 0 {
		s := st.Services[0]
		fmt.Fprintf(w, "\ntry:   svclab exec %s -- curl -s http://%s/\n", st.Pods[0].Name, s.ClusterIP)
		for _, p := range s.Ports {
			if strings.Contains(p, "/UDP") {
				port, _, _ := strings.Cut(p, "/")
				fmt.Fprintf(w, "       svclab exec %s -- sh -c 'echo hi | nc -u -w1 %s %s'\n", st.Pods[0].Name, s.ClusterIP, port)
			}
		}
	}
	if st.Log != "" {
		fmt.Fprintf(w, "log:   %s\n", st.Log)
		fmt.Fprintf(w, "stop:  svclab down %s\n", st.ID)
		return
	}
	fmt.Fprintf(w, "stop:  Ctrl-C here, or svclab down %s\n", st.ID)
}
