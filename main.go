// Command mailpulse is an event-sourced telemetry pipeline for mail servers on NATS
// JetStream. Alone it runs everything on an embedded NATS server; "mailpulse <role>" runs
// one service against an external NATS; "mailpulse bench <what>" measures it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/mailpulse/mailpulse/internal/app"
	"github.com/mailpulse/mailpulse/internal/bench"
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

const usage = `mailpulse — telemetry pipeline for mail servers, on NATS JetStream

Usage:
  mailpulse [all] [flags]      run everything, on an embedded NATS server (the default)
  mailpulse <role> [flags]     run one role against an external NATS (--nats-url)
                               roles: producer, live-gateway, archiver, webhooker (more arrive with later versions)
  mailpulse archiver rebuild   recreate the history from the log
  mailpulse bench <what>       measure: ingest, live, archive, consume, pipeline, webhooks, abuse
                               (run "mailpulse bench ingest -h")
  mailpulse <role> --help      every setting of a role

`

func run(args, environ []string, stdout, stderr io.Writer) int {
	role := "all"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		role, args = args[0], args[1:]
	}
	switch role {
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "bench":
		return bench.Main(args, stdout, stderr)
	case "archiver":
		if len(args) > 0 && args[0] == "rebuild" {
			return rebuild(args[1:], environ, stdout, stderr)
		}
	}
	set, loader, err := app.Load(role, args, environ)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		fmt.Fprint(stdout, loader.Usage())
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailpulse %s: invalid configuration:\n", role)
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "  - %s\n", line)
		}
		return 2
	}
	log := set.Process.Logger(stderr)
	if set.Process.MemoryLimit > 0 && !hasEnv(environ, "GOMEMLIMIT") {
		debug.SetMemoryLimit(set.Process.MemoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("starting", "role", role, "settings", set.Redacted())
	err = app.Run(ctx, role, set, log, func(r app.Ready) { app.PrintBanner(stdout, r) })
	if err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// rebuild is "mailpulse archiver rebuild": the history recreated from the log.
func rebuild(args, environ []string, stdout, stderr io.Writer) int {
	// The settings of all mode: the embedded log is used when no external NATS is given.
	set, _, err := app.Load("all", args, environ)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stdout, "usage: mailpulse archiver rebuild [--data-dir DIR] [--nats-url URL …]\n  recreates the history from the log; stop mailpulse first when it runs the embedded server")
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailpulse archiver rebuild: invalid configuration:\n  - %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  - "))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Rebuild(ctx, set, set.Process.Logger(stderr), stdout); err != nil {
		fmt.Fprintln(stderr, "mailpulse archiver rebuild:", err)
		return 1
	}
	return 0
}

func hasEnv(environ []string, name string) bool {
	for _, kv := range environ {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}
