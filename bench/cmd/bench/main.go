// Command bench runs the Metaparticle Sync benchmarks (`make bench`): it starts a real
// kube-apiserver and etcd on 127.0.0.1, measures the side-car and, in the same run on the same
// API server, client-go's leader election with a LeaseLock, prints one table, and writes
// bench/results/latest.json and the generated part of docs/benchmarks.md.
//
// BENCH_QUICK=1 (or -quick) takes fewer samples and shorter windows: a smoke check that the
// harness works (`make bench-smoke`, part of `make test`). Its results go to a temporary
// directory unless -json or -md say otherwise, so that it never overwrites the full results.
//
// Nothing is asserted: targets are reported as met or missed. The exit status is non-zero only
// when a benchmark could not run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/metaparticle-io/sync/bench/internal/harness"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "app-holder" {
		appHolder(os.Args[2:])
		return
	}
	quickDefault := os.Getenv("BENCH_QUICK") != "" && os.Getenv("BENCH_QUICK") != "0"
	var (
		quick    = flag.Bool("quick", quickDefault, "fewer samples and short windows (default from $BENCH_QUICK)")
		jsonPath = flag.String("json", "", "where to write the JSON results (default bench/results/latest.json; a temporary directory with -quick)")
		mdPath   = flag.String("md", "", "where to write the Markdown report (default docs/benchmarks.md; a temporary directory with -quick)")
		only     = flag.String("only", "", "run only the scenarios whose phase name contains this text (for development: the report then lacks the others; write it with -json and -md elsewhere)")
		fromJSON = flag.String("from-json", "", "run nothing: render the table and the Markdown report from this JSON results file (after editing the analysis, or the rendering)")
	)
	flag.Parse()
	klog.SetLogger(logr.Discard())
	crlog.SetLogger(logr.Discard())

	wd, err := os.Getwd()
	if err != nil {
		fatal(err)
	}
	root, err := harness.FindRoot(wd)
	if err != nil {
		fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	if *jsonPath == "" || *mdPath == "" {
		dir := root
		if *quick {
			dir = filepath.Join(os.TempDir(), "metaparticle-sync-bench-quick")
		}
		if *jsonPath == "" {
			*jsonPath = filepath.Join(dir, "bench", "results", "latest.json")
		}
		if *mdPath == "" {
			*mdPath = filepath.Join(dir, "docs", "benchmarks.md")
			if *quick {
				// Start from the real document so the quick one shows the same analysis around it.
				if b, err := os.ReadFile(filepath.Join(root, "docs", "benchmarks.md")); err == nil {
					_ = os.MkdirAll(filepath.Dir(*mdPath), 0o755)
					_ = os.WriteFile(*mdPath, b, 0o644)
				}
			}
		}
	}

	if *fromJSON != "" {
		b, err := os.ReadFile(*fromJSON)
		if err != nil {
			fatal(err)
		}
		var report harness.Report
		if err := json.Unmarshal(b, &report); err != nil {
			fatal(fmt.Errorf("%s: %w", *fromJSON, err))
		}
		fmt.Print(report.Table())
		if err := harness.WriteMarkdown(*mdPath, report.Markdown()); err != nil {
			fatal(err)
		}
		fmt.Printf("\nwrote %s\n", rel(root, *mdPath))
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report, runErr := harness.Run(ctx, harness.Options{
		Quick: *quick,
		Only:  *only,
		Root:  root,
		Self:  self,
		Log:   func(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...) },
	})
	if report != nil {
		fmt.Print("\n" + report.Table())
		if err := report.WriteJSON(*jsonPath); err != nil {
			fatal(err)
		}
		if err := harness.WriteMarkdown(*mdPath, report.Markdown()); err != nil {
			fatal(err)
		}
		fmt.Printf("\nwrote %s and %s\n", rel(root, *jsonPath), rel(root, *mdPath))
	}
	if runErr != nil {
		fatal(runErr)
	}
}

func rel(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil && filepath.IsLocal(r) {
		return r
	}
	return p
}

// appHolder is the application process of the "application killed" failover scenario.
func appHolder(args []string) {
	fs := flag.NewFlagSet("app-holder", flag.ExitOnError)
	addr := fs.String("addr", "", "side-car address")
	lock := fs.String("lock", "", "lock name")
	_ = fs.Parse(args)
	fatal(harness.AppHolder(*addr, *lock)) // returns only on failure
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
