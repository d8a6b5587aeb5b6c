// Command history checks and draws a history of the chaos safety run (the history.json that
// TestChaosSafety in e2e/product writes; see package e2e/product/internal/chaos and
// docs/testing.md). It runs the history's checks, prints their counts and any violations, and
// writes a self-contained HTML page: holds per Pod on a time line, faults and rejected writes
// marked, violations ringed. With -porcupine it also writes porcupine's visualization of the
// linearizability check. It exits with status 1 when a check fails, 2 on a usage or I/O error.
//
//	go run ./e2e/product/cmd/history [-o history.html] [-porcupine porcupine.html] [-strip 10s] [-scale 120] [-from 0s] [-to 0s] [-timeout 5m] history.json
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is the command with its arguments; it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "history.html", "the HTML page to write")
	porc := fs.String("porcupine", "", "also write porcupine's visualization of the linearizability check to this file")
	porcMax := fs.Int("porcupine-max", chaos.PorcupineHTMLMaxOps, "draw at most about this many grants and writes in the -porcupine page")
	strip := fs.Duration("strip", 10*time.Second, "time one row of the page covers")
	scale := fs.Float64("scale", 120, "pixels per second")
	from := fs.Duration("from", 0, "draw from this offset from the history's start")
	to := fs.Duration("to", 0, "draw up to this offset from the history's start (0: to the end)")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on porcupine's search (0: none)")
	title := fs.String("title", "", "the page's title (default: Chaos run history: <file>)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: history [flags] history.json\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "history:", err)
		return 2
	}
	path := fs.Arg(0)
	h, err := chaos.ReadHistoryFile(path)
	if err != nil {
		return fail(err)
	}
	v := chaos.Check(h, chaos.CheckOptions{Timeout: *timeout})
	fmt.Fprintln(stdout, v.Summary())
	for _, viol := range v.Violations {
		fmt.Fprintln(stdout, "violation:", viol)
	}
	if *title == "" {
		*title = "Chaos run history: " + path
	}
	if err := writeFile(*out, func(w io.Writer) error {
		return chaos.RenderHTML(w, h, v, chaos.RenderOptions{Title: *title, Strip: *strip, PxPerSecond: *scale, From: *from, To: *to})
	}); err != nil {
		return fail(err)
	}
	fmt.Fprintln(stdout, "wrote", *out)
	if *porc != "" {
		var drawn string
		if err := writeFile(*porc, func(w io.Writer) (err error) {
			drawn, err = v.WritePorcupineHTML(w, *porcMax)
			return err
		}); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "wrote %s (%s)\n", *porc, drawn)
	}
	if v.Failed() {
		return 1
	}
	return 0
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
