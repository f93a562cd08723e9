// Command slicepair measures how much of the noise in a ratio to direct
// is the pairing's: run inside a lab's client pod (svclab exec), it keeps
// C short connections going (connect, small request, read the reply,
// close) and switches their target every -slice between the Service's
// address and the backend pods' own addresses (round-robin: direct).
// Over windows of -window, each half service and half direct, it prints
// the coefficient of variation of each side's rate and of their ratio.
// With a slice of half the window the pairing is the harness's today (one
// block of each, back to back); with short slices both sides see the same
// moments of the machine. ci/slicepair.sh runs both on a fresh lab.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"gonum.org/v1/gonum/stat"
)

func main() {
	service := flag.String("service", "10.96.0.10:80", "the Service's address")
	pods := flag.String("pods", "", "the backend pods' addresses, comma-separated (direct)")
	conc := flag.Int("c", 16, "concurrent connections")
	dur := flag.Duration("d", 120*time.Second, "measured time (after 1 s of warm-up)")
	slice := flag.Duration("slice", 100*time.Millisecond, "time on one target before switching")
	window := flag.Duration("window", 3*time.Second, "window over which a ratio is taken: a whole number of slice pairs")
	flag.Parse()
	direct := strings.Split(*pods, ",")
	perWindow := int(*window / *slice)
	if *pods == "" || *slice <= 0 || perWindow < 2 || perWindow%2 != 0 || *dur < 2**window {
		fmt.Fprintln(os.Stderr, "slicepair: need -pods, and -window an even number (≥ 2) of -slice, and -d at least two windows")
		os.Exit(2)
	}

	var counts [2]atomic.Int64 // completions by target: 0 service, 1 direct
	var target atomic.Int32
	var next, failed atomic.Uint64
	req := []byte("GET / HTTP/1.1\r\nHost: slicepair\r\n\r\n")
	stop := time.Now().Add(*dur + 2*time.Second)
	for range *conc {
		go func() {
			buf := make([]byte, 4096)
			for time.Now().Before(stop) {
				tg := target.Load()
				addr := *service
				if tg == 1 {
					addr = direct[next.Add(1)%uint64(len(direct))]
				}
				c, err := net.Dial("tcp", addr)
				if err != nil {
					failed.Add(1)
					continue
				}
				// The reply is one small segment; the client closes
				// first, as the harness's client does.
				if _, err := c.Write(req); err == nil {
					if n, err := c.Read(buf); err == nil && n > 0 {
						counts[tg].Add(1)
					} else {
						failed.Add(1)
					}
				}
				c.Close()
			}
		}()
	}
	time.Sleep(time.Second)

	// Per slice: its target and its completions (a connection counts for
	// the slice it ends in: ~0.3 ms each against 100 ms slices).
	var rates [][2]float64 // per window: mean completions per slice, service and direct
	var sum [2]float64
	var n [2]int
	last := [2]int64{counts[0].Load(), counts[1].Load()}
	tick := time.NewTicker(*slice)
	for i := 1; i <= int(*dur / *slice); i++ {
		<-tick.C
		tg := target.Load()
		now := [2]int64{counts[0].Load(), counts[1].Load()}
		sum[tg] += float64(now[0] - last[0] + now[1] - last[1])
		n[tg]++
		last = now
		target.Store(1 - tg)
		if i%perWindow == 0 {
			rates = append(rates, [2]float64{sum[0] / float64(n[0]), sum[1] / float64(n[1])})
			sum, n = [2]float64{}, [2]int{}
		}
	}
	var svc, dir, ratio []float64
	for _, r := range rates {
		svc = append(svc, r[0]/slice.Seconds())
		dir = append(dir, r[1]/slice.Seconds())
		ratio = append(ratio, r[0]/r[1])
	}
	cv := func(xs []float64) float64 {
		m, sd := stat.MeanStdDev(xs, nil)
		return 100 * sd / m
	}
	fmt.Printf("slice %v, %d windows of %v: service %.0f conn/s CV %.1f %%, direct %.0f conn/s CV %.1f %%, ratio %.3f CV %.1f %% (failed %d)\n",
		*slice, len(rates), *window, stat.Mean(svc, nil), cv(svc), stat.Mean(dir, nil), cv(dir), stat.Mean(ratio, nil), cv(ratio), failed.Load())
}
