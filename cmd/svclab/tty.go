package main

import (
	"io"
	"os"

	"golang.org/x/term"
)

// isTerminal reports whether progress written to w may be rewritten in
// place with terminal escape sequences. SVCLAB_TTY=0 or 1 overrides the
// check: svclab vm sets 0 in the guest, whose serial console is a
// terminal but whose output ends up in the host's logs line by line.
func isTerminal(w io.Writer) bool {
	switch os.Getenv("SVCLAB_TTY") {
	case "0":
		return false
	case "1":
		return true
	}
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
