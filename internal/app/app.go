// Package app assembles mailpulse's roles from the settings: it starts the embedded NATS
// server (all mode) or connects to an external one, provisions the log, makes sure API
// keys exist, runs the services of the role until the context ends, and shuts everything
// down in order. It only wires: each service owns its settings and its work.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/services/archiver"
	livegateway "github.com/mailpulse/mailpulse/services/live-gateway"
	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/datadir"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// autoSimulateRate is the simulator's rate in all mode when no real source is configured.
const autoSimulateRate = 20

// Run runs role until ctx ends. ready, when not nil, is called once everything is up.
func Run(ctx context.Context, role string, set *Settings, log *slog.Logger, ready func(Ready)) error {
	if !known(role) {
		return fmt.Errorf("role %s is not built yet: this version runs all, producer, live-gateway, archiver and webhooker", role)
	}
	// Every connection is a file: the soft limit (often 1,024) is raised to the hard one, so
	// that the listeners' caps, not the limit, decide how many clients are served.
	if n, err := httpserver.RaiseFileLimit(); err != nil {
		log.Warn("open-file limit not raised", "limit", n, "err", err)
	} else if n > 0 {
		log.Info("open-file limit", "limit", n)
	}
	p := &set.Process
	info := Ready{Role: role, DataDir: p.DataDir}
	if usesDataDir(role, set) {
		lock, err := datadir.Acquire(p.DataDir, "mailpulse "+role)
		if err != nil {
			return err
		}
		defer lock.Release()
	}
	nc, srv, err := connect(role, set, log, &info)
	if err != nil {
		return err
	}
	if srv != nil {
		defer srv.Shutdown()
	}
	defer nc.Close()

	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{Window: set.Producer.Ingest.Window})
	if err != nil {
		return err
	}
	if err := provision(ctx, pub.JetStream(), p.Stream, log); err != nil {
		return err
	}
	kctx, stopKeys := context.WithCancel(ctx) // the keys' watch ends with Run
	defer stopKeys()
	keys, err := openKeys(kctx, pub.JetStream(), p, log, &info)
	if err != nil {
		return err
	}

	// One registry for the services of this process, with the Go runtime's and the
	// process's own metrics: in all mode the gateway's /metrics serves them all.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g, gctx := errgroup.WithContext(ctx)
	if runs(role, "producer") {
		cfg := set.Producer
		cfg.Grace = p.Shutdown.Grace
		if cfg.Simulate < 0 { // auto: something to see at once in all mode without a real source
			cfg.Simulate = 0
			if role == "all" && cfg.Stalwart.Secret == "" && cfg.Stalwart.MetricsURL == "" {
				cfg.Simulate = autoSimulateRate
			}
		}
		info.Simulate = cfg.Simulate
		if cfg.Stalwart.SpoolDir == "" && usesDataDir(role, set) {
			// Signed batches wait on disk while their signature is checked: in the data
			// dir, a disk, rather than a temporary directory that may be a tmpfs.
			cfg.Stalwart.SpoolDir = filepath.Join(p.DataDir, "spool")
			if err := os.MkdirAll(cfg.Stalwart.SpoolDir, 0o700); err != nil {
				return fmt.Errorf("producer: spool dir: %w", err)
			}
		}
		prod, err := producer.New(cfg, producer.Deps{Conn: nc, Publisher: pub, Keys: keys, Log: log.With("service", "producer"), Registry: reg})
		if err != nil {
			return err
		}
		info.IngestAddr = prod.Addr()
		g.Go(func() error { return prod.Run(gctx) })
	}
	// The webhook endpoints: one store per process, which the webhooker and its API share.
	var endpoints *webhooker.Endpoints
	if runs(role, "webhooker") || runs(role, "live-gateway") {
		if endpoints, err = webhooker.OpenEndpoints(kctx, pub.JetStream(), set.Webhooker, log.With("service", "webhooker")); err != nil {
			return err
		}
	}
	if runs(role, "live-gateway") {
		cfg := set.Gateway
		cfg.Grace = p.Shutdown.Grace
		mounts := []func(fiber.Router, fiber.Handler){webhooker.NewAPI(endpoints).Mount}
		gw, err := livegateway.New(ctx, cfg, livegateway.Deps{Conn: nc, Keys: keys, Log: log.With("service", "live-gateway"), Registry: reg, Mount: mounts})
		if err != nil {
			return err
		}
		info.HTTPAddr = gw.Addr()
		g.Go(func() error { return gw.Run(gctx) })
	}
	if runs(role, "archiver") {
		cfg := set.Archiver
		cfg.Grace = p.Shutdown.Grace
		st, err := archiver.OpenStore(ctx, cfg, p.DataDir)
		if err != nil {
			return err
		}
		defer st.Close()
		arc, err := archiver.New(cfg, archiver.Deps{Conn: nc, Store: st, Log: log.With("service", "archiver"), Registry: reg})
		if err != nil {
			return err
		}
		g.Go(func() error { return arc.Run(gctx) })
		if role == "archiver" {
			// Alone, the archiver has no front door: its own health and metrics.
			ln, err := net.Listen("tcp", cfg.Addr)
			if err != nil {
				return fmt.Errorf("archiver: listen on %s: %w", cfg.Addr, err)
			}
			app := httpserver.New(httpserver.Config{Name: "mailpulse-archiver", WriteTimeout: 30 * time.Second, Log: log})
			httpserver.Health(app, keys, natsReady(nc), reg)
			info.HTTPAddr = ln.Addr()
			g.Go(func() error { return httpserver.Serve(gctx, app, ln, p.Shutdown.Grace, nil) })
		}
	}
	if runs(role, "webhooker") {
		cfg := set.Webhooker
		cfg.Grace = p.Shutdown.Grace
		wh, err := webhooker.New(cfg, webhooker.Deps{Conn: nc, Endpoints: endpoints, Log: log.With("service", "webhooker"), Registry: reg})
		if err != nil {
			return err
		}
		g.Go(func() error { return wh.Run(gctx) })
		if role == "webhooker" {
			// Alone: its health, metrics and the webhooks API on its own address.
			ln, err := net.Listen("tcp", cfg.Addr)
			if err != nil {
				return fmt.Errorf("webhooker: listen on %s: %w", cfg.Addr, err)
			}
			app := httpserver.New(httpserver.Config{Name: "mailpulse-webhooker", WriteTimeout: 30 * time.Second, Registry: reg, Log: log})
			httpserver.Health(app, keys, natsReady(nc), reg)
			webhooker.NewAPI(endpoints).Mount(app, httpserver.RequireKey(keys, apikey.Admin))
			info.HTTPAddr = ln.Addr()
			g.Go(func() error { return httpserver.Serve(gctx, app, ln, p.Shutdown.Grace, nil) })
		}
	}
	if ready != nil {
		ready(info)
	}
	return g.Wait()
}

// usesDataDir tells whether the role keeps state in the data dir (the embedded server's
// store, the SQLite history), which one process at a time may use.
func usesDataDir(role string, set *Settings) bool {
	embedded := role == "all" && set.Process.NATS.URL == ""
	sqliteHistory := runs(role, "archiver") && set.Archiver.Store == "sqlite"
	return embedded || sqliteHistory
}

// connect starts the embedded server (all mode without nats.url) or connects to NATS.
func connect(role string, set *Settings, log *slog.Logger, info *Ready) (*nats.Conn, *broker.Server, error) {
	p := &set.Process
	opts := bus.ConnectOptions("mailpulse-"+role, log)
	if role == "all" && p.NATS.URL == "" {
		srv, err := startBroker(p, log, info)
		if err != nil {
			return nil, nil, err
		}
		nc, err := srv.Connect(opts...)
		if err != nil {
			srv.Shutdown()
			return nil, nil, err
		}
		return nc, srv, nil
	}
	if p.NATS.User != "" {
		opts = append(opts, nats.UserInfo(p.NATS.User, p.NATS.Password))
	}
	nc, err := nats.Connect(p.NATS.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS: %w", err)
	}
	return nc, nil, nil
}

func natsReady(nc *nats.Conn) func() error {
	return func() error {
		if nc.Status() != nats.CONNECTED {
			return errors.New("NATS not connected")
		}
		return nil
	}
}

// provision creates the streams and buckets, waiting for NATS while it is not reachable.
func provision(ctx context.Context, js jetstream.JetStream, l bus.Limits, log *slog.Logger) error {
	wait := 250 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := bus.Provision(pctx, js, l, log)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, bus.ErrIncompatible) {
			return err
		}
		log.Warn("event log not ready; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("provision the event log: %w", err)
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// Rebuild recreates the history from the log (the archiver does the work). Without an
// external NATS it opens the embedded server's store in the data dir, so mailpulse must not
// be running.
func Rebuild(ctx context.Context, set *Settings, log *slog.Logger, out io.Writer) error {
	p := &set.Process
	if usesDataDir("all", set) {
		lock, err := datadir.Acquire(p.DataDir, "mailpulse archiver rebuild")
		if err != nil {
			return err
		}
		defer lock.Release()
	}
	var nc *nats.Conn
	if p.NATS.URL == "" {
		srv, err := broker.Start(broker.Config{StoreDir: natsDir(p), Name: "mailpulse-rebuild", ReadyTimeout: 10 * time.Second}, log)
		if err != nil {
			return fmt.Errorf("open the embedded log in %s (is mailpulse still running?): %w", p.DataDir, err)
		}
		defer srv.Shutdown()
		if nc, err = srv.Connect(); err != nil {
			return err
		}
	} else {
		var err error
		if nc, _, err = connect("rebuild", set, log, &Ready{}); err != nil {
			return err
		}
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := provision(ctx, js, p.Stream, log); err != nil {
		return err
	}
	rep, err := archiver.RebuildHistory(ctx, js, set.Archiver, p.DataDir, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "history rebuilt from the log in %s: %d events up to sequence %d and %d metric snapshots, in %s\n",
		rep.Took.Round(time.Millisecond), rep.Events, rep.LastSeq, rep.Snapshots, rep.Where)
	return nil
}

// openKeys opens the API keys and makes sure an admin and an ingest key exist.
func openKeys(ctx context.Context, js jetstream.JetStream, p *config.Process, log *slog.Logger, info *Ready) (*apikey.Store, error) {
	kv, err := js.KeyValue(ctx, bus.BucketKeys)
	if err != nil {
		return nil, fmt.Errorf("open key bucket: %w", err)
	}
	keys, err := apikey.Open(ctx, kv, log)
	if err != nil {
		return nil, err
	}
	if info.AdminKey, err = keys.Bootstrap(ctx, apikey.Admin, p.AdminKey); err != nil {
		return nil, fmt.Errorf("admin key: %w", err)
	}
	if info.IngestKey, err = keys.Bootstrap(ctx, apikey.Ingest, p.IngestKey); err != nil {
		return nil, fmt.Errorf("ingest key: %w", err)
	}
	return keys, nil
}
