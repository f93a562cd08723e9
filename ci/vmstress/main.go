// Command vmstress is the guest workload of ci/vm-panics.sh: it flips the
// kernel's netfilter static keys (nf_hooks_needed, patched with the x86
// int3 text-poking protocol) as fast as it can while loopback TCP
// connections run through __ip_local_out on every other CPU. Under QEMU's
// multi-threaded TCG this reproduced the guest "Oops: int3" in
// __ip_local_out of issue 15 part 8 within seconds; see ci/README.md.
//
// The first IPVS virtual service in a network namespace registers IPVS's
// netfilter hooks and the last one removed unregisters them; with no other
// hook on those points, each add/delete pair turns nf_hooks_needed for
// IPv4 and IPv6 LOCAL_IN, LOCAL_OUT and FORWARD on and off again.
//
// It runs as the guest command of `svclab vm --binary` (build it with
// CGO_ENABLED=0):
//
//	CGO_ENABLED=0 go build -o /tmp/vmstress ./ci/vmstress
//	svclab vm --kernel debian-6.12 --binary /tmp/vmstress -- stress -seconds 60
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moby/ipvs"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "stress" {
		fmt.Fprintln(os.Stderr, "usage: vmstress stress [-seconds N] [-conns N]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("stress", flag.ExitOnError)
	seconds := fs.Int("seconds", 60, "how long to run")
	conns := fs.Int("conns", runtime.NumCPU(), "concurrent loopback TCP clients")
	_ = fs.Parse(os.Args[2:])

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	go serve(ln)

	deadline := time.Now().Add(time.Duration(*seconds) * time.Second)
	var requests, toggles, errs atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for time.Now().Before(deadline) {
				c, err := net.Dial("tcp4", ln.Addr().String())
				if err != nil {
					errs.Add(1)
					continue
				}
				if _, err := c.Write(buf); err == nil {
					_, err = io.ReadFull(c, buf)
				}
				if err != nil {
					errs.Add(1)
				}
				c.Close()
				requests.Add(1)
			}
		}()
	}

	h, err := ipvs.New("")
	if err != nil {
		fail(fmt.Errorf("ipvs: %w", err))
	}
	svc := &ipvs.Service{Address: net.ParseIP("10.96.0.1").To4(), Protocol: syscall.IPPROTO_TCP, Port: 80,
		AddressFamily: syscall.AF_INET, SchedName: "rr", Netmask: 0xffffffff}
	start := time.Now()
	for time.Now().Before(deadline) {
		if err := h.NewService(svc); err != nil {
			fail(fmt.Errorf("ipvs add: %w", err))
		}
		if err := h.DelService(svc); err != nil {
			fail(fmt.Errorf("ipvs del: %w", err))
		}
		toggles.Add(1)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	fmt.Printf("vmstress: %d static-key toggles (IPVS service add+delete), %d loopback TCP requests (%.0f/s), %d errors in %.1fs\n",
		toggles.Load(), requests.Load(), float64(requests.Load())/el, errs.Load(), el)
	fmt.Fprintf(os.Stderr, "vmstress: %d toggles, %d requests, %d errors in %.1fs\n", toggles.Load(), requests.Load(), errs.Load(), el)
}

func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 64)
			if _, err := io.ReadFull(c, buf); err == nil {
				_, _ = c.Write(buf)
			}
		}()
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "vmstress:", err)
	os.Exit(1)
}
