// Package progress prints a run's progress: one line rewritten in place on a
// terminal, plain lines otherwise.
package progress

import (
	"fmt"
	"io"
	"time"
)

// Progress reports trial progress on stderr: one line rewritten in place on
// a terminal, plain lines otherwise (CI logs, pipes).
type Progress struct {
	w       io.Writer
	tty     bool
	total   int
	done    int
	started time.Time
	perStep time.Duration // expected duration of one trial before any finished
	dirty   bool
}

// New returns a reporter for total trials.
func New(w io.Writer, tty bool, total int, perStep time.Duration) *Progress {
	return &Progress{w: w, tty: tty, total: total, started: time.Now(), perStep: perStep}
}

// Start announces a trial.
func (p *Progress) Start(what string) {
	left := p.remaining()
	msg := fmt.Sprintf("[%d/%d] %s (about %s left)", p.done+1, p.total, what, left.Round(time.Second))
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", msg)
		p.dirty = true
	} else {
		fmt.Fprintln(p.w, msg)
	}
}

// Done marks a trial finished, with a short result.
func (p *Progress) Done(result string) {
	p.done++
	if !p.tty {
		fmt.Fprintf(p.w, "        %s\n", result)
	}
}

// Logf prints a line that stays, above the progress line.
func (p *Progress) Logf(format string, args ...any) {
	if p.tty && p.dirty {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}

// Finish clears the progress line.
func (p *Progress) Finish() {
	if p.tty && p.dirty {
		fmt.Fprint(p.w, "\r\033[K")
		p.dirty = false
	}
}

func (p *Progress) remaining() time.Duration {
	per := p.perStep
	if p.done > 0 {
		per = time.Since(p.started) / time.Duration(p.done)
	}
	return per * time.Duration(p.total-p.done)
}

// Skip drops a trial that will not run from the total.
func (p *Progress) Skip() {
	p.total = max(p.done, p.total-1)
}
