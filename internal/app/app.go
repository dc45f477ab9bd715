// Package app assembles mailpulse's roles from the configuration: it starts the embedded
// NATS server (all mode) or connects to an external one, provisions the log, makes sure API
// keys exist, runs the services of the role until the context ends, and shuts everything
// down in order.
package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/services/archiver"
	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/services/archiver/store/postgres"
	"github.com/mailpulse/mailpulse/services/archiver/store/sqlite"
	livegateway "github.com/mailpulse/mailpulse/services/live-gateway"
	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/event"
)

// autoSimulateRate is the simulator's rate in all mode when no real source is configured.
const autoSimulateRate = 20

// Ready describes a started process, for the banner and for tests.
type Ready struct {
	Role       string
	IngestAddr net.Addr
	HTTPAddr   net.Addr
	NATSURL    string // the embedded server's TCP URL, if it listens
	NATSUser   string
	NATSPass   string // only when generated now
	AdminKey   string // only when generated now
	IngestKey  string // only when generated now
	Simulate   float64
	DataDir    string
	Embedded   bool
}

// Run runs role until ctx ends. ready, when not nil, is called once everything is up.
func Run(ctx context.Context, role string, cfg config.Config, log *slog.Logger, ready func(Ready)) error {
	switch role {
	case "all", "producer", "live-gateway", "archiver":
	default:
		return fmt.Errorf("role %s is not built yet: this version runs all, producer, live-gateway and archiver", role)
	}
	info := Ready{Role: role, DataDir: cfg.DataDir}

	var nc *nats.Conn
	var srv *broker.Server
	if role == "all" && cfg.NATS.URL == "" {
		var err error
		srv, err = startBroker(cfg, log, &info)
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		nc, err = srv.Connect(bus.ConnectOptions("mailpulse-"+role, log)...)
		if err != nil {
			return err
		}
	} else {
		opts := bus.ConnectOptions("mailpulse-"+role, log)
		if cfg.NATS.User != "" {
			opts = append(opts, nats.UserInfo(cfg.NATS.User, cfg.NATS.Password))
		}
		var err error
		nc, err = nats.Connect(cfg.NATS.URL, opts...)
		if err != nil {
			return fmt.Errorf("connect to NATS %s: %w", cfg.NATS.URL, err)
		}
	}
	defer nc.Close()

	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{Window: cfg.Ingest.Window})
	if err != nil {
		return err
	}
	if err := provision(ctx, pub.JetStream(), cfg.Stream, log); err != nil {
		return err
	}
	kv, err := pub.JetStream().KeyValue(ctx, bus.BucketKeys)
	if err != nil {
		return fmt.Errorf("open key bucket: %w", err)
	}
	keysCtx, stopKeys := context.WithCancel(ctx)
	defer stopKeys()
	keys, err := apikey.Open(keysCtx, kv, log)
	if err != nil {
		return err
	}
	if info.AdminKey, err = keys.Bootstrap(ctx, apikey.Admin, cfg.AdminKey); err != nil {
		return fmt.Errorf("admin key: %w", err)
	}
	if info.IngestKey, err = keys.Bootstrap(ctx, apikey.Ingest, cfg.IngestKey); err != nil {
		return fmt.Errorf("ingest key: %w", err)
	}

	simulate := cfg.Simulate
	if simulate < 0 {
		simulate = 0
		if role == "all" && cfg.Stalwart.Secret == "" && cfg.Stalwart.MetricsURL == "" {
			simulate = autoSimulateRate
		}
	}
	info.Simulate = simulate

	// One registry for the services of this process: in all mode the gateway's /metrics
	// serves them all (producer, gateway, archiver).
	reg := prometheus.NewRegistry()
	g, gctx := errgroup.WithContext(ctx)
	if role == "all" || role == "producer" {
		prod, err := producer.New(producer.Config{
			Addr:           cfg.IngestAddr,
			Source:         cfg.Source,
			MaxBodyBytes:   cfg.Ingest.MaxBodyBytes,
			MaxBatch:       cfg.Ingest.MaxBatch,
			Timeout:        cfg.Ingest.Timeout,
			StalwartSecret: cfg.Stalwart.Secret,
			StalwartSource: cfg.Stalwart.Source,
			Scrape: producer.ScrapeConfig{
				URL: cfg.Stalwart.MetricsURL, User: cfg.Stalwart.MetricsUser, Password: cfg.Stalwart.MetricsPassword,
				Interval: cfg.Stalwart.MetricsInterval, Buckets: cfg.Stalwart.HistogramBuckets, Source: cfg.Stalwart.Source,
			},
			MetricsInterval: cfg.Metrics.Interval,
			Simulate:        simulate,
			SimulateSeed:    cfg.SimulateSeed,
			Grace:           cfg.Shutdown.Grace,
		}, producer.Deps{Conn: nc, Publisher: pub, Keys: keys, Log: log.With("service", "producer"), Registry: reg})
		if err != nil {
			return err
		}
		info.IngestAddr = prod.Addr()
		g.Go(func() error { return prod.Run(gctx) })
	}
	if role == "all" || role == "live-gateway" {
		origins := splitComma(cfg.Gateway.CORSOrigins)
		gw, err := livegateway.New(ctx, livegateway.Config{
			Addr: cfg.HTTPAddr, Heartbeat: cfg.Gateway.Heartbeat, QueueSize: cfg.Gateway.QueueSize,
			MaxStreams: cfg.Gateway.MaxStreams, MaxStreamsPerKey: cfg.Gateway.MaxStreamsPerKey,
			CORSOrigins: origins, Grace: cfg.Shutdown.Grace,
		}, livegateway.Deps{Conn: nc, Keys: keys, Log: log.With("service", "live-gateway"), Registry: reg})
		if err != nil {
			return err
		}
		info.HTTPAddr = gw.Addr()
		g.Go(func() error { return gw.Run(gctx) })
	}
	if role == "all" || role == "archiver" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		var st store.Store
		var err error
		if cfg.Archiver.Store == "postgresql" {
			st, err = postgres.Open(ctx, cfg.Archiver.PostgresURL)
		} else {
			st, err = sqlite.Open(ctx, filepath.Join(cfg.DataDir, "history.db"))
		}
		if err != nil {
			return err
		}
		defer st.Close()
		minLevel, _ := event.ParseLevel(cfg.Archiver.MinLevel) // validated
		arc, err := archiver.New(archiver.Config{
			MinLevel: minLevel, Include: splitComma(cfg.Archiver.Include), Exclude: splitComma(cfg.Archiver.Exclude),
			Retention: cfg.Archiver.Retention, MetricsRetention: cfg.Archiver.MetricsRetention, Grace: cfg.Shutdown.Grace,
		}, archiver.Deps{Conn: nc, Store: st, Log: log.With("service", "archiver"), Registry: reg})
		if err != nil {
			return err
		}
		g.Go(func() error { return arc.Run(gctx) })
		if role == "archiver" {
			// Alone, the archiver has no HTTP front door of its own: health and metrics.
			srv, err := ownMetricsServer(cfg.HTTPAddr, reg, keys, nc)
			if err != nil {
				return err
			}
			info.HTTPAddr = srv.addr
			g.Go(func() error { return srv.run(gctx) })
		}
	}
	if ready != nil {
		ready(info)
	}
	return g.Wait()
}

type metricsServer struct {
	addr net.Addr
	srv  *http.Server
	ln   net.Listener
}

// ownMetricsServer serves /healthz, /readyz and /metrics (viewer key) for a role without
// an HTTP server of its own.
func ownMetricsServer(addr string, reg *prometheus.Registry, keys *apikey.Store, nc *nats.Conn) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if nc.Status() != nats.CONNECTED {
			http.Error(w, "NATS not connected", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		key, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if _, ok := keys.Authenticate(key, apikey.Viewer); !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mailpulse"`)
			http.Error(w, "missing or invalid API key", http.StatusUnauthorized)
			return
		}
		metrics.ServeHTTP(w, r)
	})
	return &metricsServer{addr: ln.Addr(), ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

func (m *metricsServer) run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.srv.Shutdown(sctx)
	}()
	if err := m.srv.Serve(m.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
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

// credentialsFile keeps the embedded listener's generated credentials across restarts; only
// the bcrypt hash of the password is written.
type credentialsFile struct {
	User         string `json:"user"`
	PasswordHash string `json:"passwordHash"`
}

func startBroker(cfg config.Config, log *slog.Logger, info *Ready) (*broker.Server, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	bc := broker.Config{StoreDir: filepath.Join(cfg.DataDir, "nats"), Name: "mailpulse"}
	if cfg.NATS.Listen != "" {
		bc.Listen = cfg.NATS.Listen
		user, pass := cfg.NATS.User, cfg.NATS.Password
		if user == "" {
			user = "mailpulse"
		}
		if pass == "" {
			var err error
			if pass, err = generatedPassword(filepath.Join(cfg.DataDir, "nats-credentials.json"), user, info); err != nil {
				return nil, err
			}
		}
		bc.User, bc.Password = user, pass
		info.NATSUser = user
	}
	srv, err := broker.Start(bc, log)
	if err != nil {
		return nil, err
	}
	info.Embedded = true
	info.NATSURL = srv.ClientURL()
	return srv, nil
}

// generatedPassword returns the bcrypt hash the listener checks. On first use it makes a
// password, shows it once through info, and stores only its hash.
func generatedPassword(path, user string, info *Ready) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		var c credentialsFile
		if err := json.Unmarshal(b, &c); err == nil && c.User == user && c.PasswordHash != "" {
			return c.PasswordHash, nil
		}
	}
	raw := make([]byte, 18)
	_, _ = rand.Read(raw)
	plain := hex.EncodeToString(raw)
	hash, err := bcrypt.GenerateFromPassword([]byte(plain), bcrypt.DefaultCost)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(credentialsFile{User: user, PasswordHash: string(hash)})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("store NATS credentials: %w", err)
	}
	info.NATSPass = plain
	return string(hash), nil
}

// PrintBanner writes what a newcomer needs after start-up: where things listen, how to
// authenticate, and a first command to try.
func PrintBanner(w io.Writer, r Ready) {
	ingest := hostPort(r.IngestAddr)
	api := hostPort(r.HTTPAddr)
	fmt.Fprintf(w, "\nmailpulse is running (%s mode", r.Role)
	if r.Embedded {
		fmt.Fprintf(w, ", embedded NATS, data in %s", r.DataDir)
	}
	fmt.Fprintf(w, ")\n\n")
	if api != "" {
		fmt.Fprintf(w, "  live events      http://%s/api/v1/live/events   (SSE; Stalwart clients: /api/live/tracing)\n", api)
		fmt.Fprintf(w, "  API              http://%s/api/v1/keys   health: http://%s/healthz\n", api, api)
	}
	if ingest != "" {
		fmt.Fprintf(w, "  ingest API       http://%s/api/v1/events\n", ingest)
		fmt.Fprintf(w, "  Stalwart webhook http://%s/ingest/stalwart\n", ingest)
		fmt.Fprintf(w, "  health           http://%s/healthz   metrics: http://%s/metrics (admin or viewer key)\n", ingest, ingest)
	}
	switch {
	case r.NATSURL != "":
		fmt.Fprintf(w, "  NATS             %s  user %s", r.NATSURL, r.NATSUser)
		if r.NATSPass != "" {
			fmt.Fprintf(w, "  password %s  (shown once; only its hash is stored)", r.NATSPass)
		} else {
			fmt.Fprintf(w, "  (password as configured, or as printed at first start)")
		}
		fmt.Fprintln(w)
	case r.Embedded:
		fmt.Fprintf(w, "  NATS             in-process only (set MAILPULSE_NATS_LISTEN=127.0.0.1:4222 to let other processes join)\n")
	}
	if r.Simulate > 0 {
		fmt.Fprintf(w, "  simulator        %.0f events/s (MAILPULSE_SIMULATE=0 turns it off)\n", r.Simulate)
	}
	if r.AdminKey != "" || r.IngestKey != "" {
		fmt.Fprintf(w, "\n  New API keys, shown this once (only their hashes are stored):\n")
		if r.AdminKey != "" {
			fmt.Fprintf(w, "    admin   %s\n", r.AdminKey)
		}
		if r.IngestKey != "" {
			fmt.Fprintf(w, "    ingest  %s\n", r.IngestKey)
		}
	} else {
		fmt.Fprintf(w, "\n  API keys: as printed at first start, or MAILPULSE_ADMIN_KEY / MAILPULSE_INGEST_KEY.\n")
	}
	key := r.IngestKey
	if key == "" {
		key = "$MAILPULSE_INGEST_KEY"
	}
	if ingest != "" {
		fmt.Fprintf(w, "\n  Try:\n    curl -H 'Authorization: Bearer %s' \\\n      -d '[{\"type\":\"smtp.ehlo\",\"data\":{\"domain\":\"mx.example.com\"}}]' http://%s/api/v1/events\n", key, ingest)
	}
	if api != "" {
		admin := r.AdminKey
		if admin == "" {
			admin = "$MAILPULSE_ADMIN_KEY"
		}
		fmt.Fprintf(w, "    curl -N -H 'Authorization: Bearer %s' 'http://%s/api/v1/live/events?types=smtp.*&level=info'\n", admin, api)
	}
	fmt.Fprintln(w)
}

func hostPort(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if host == "" || host == "::" || host == "0.0.0.0" || strings.HasPrefix(host, "[::]") {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// Rebuild recreates the history store from the log: it replays EVENTS into a new file,
// puts it in place of the old one (kept as history.db.old) and points the archivers'
// consumer after the rebuilt point. Without an external NATS it opens the embedded
// server's store in the data dir, so mailpulse must not be running.
func Rebuild(ctx context.Context, cfg config.Config, log *slog.Logger, out io.Writer) error {
	var nc *nats.Conn
	if cfg.NATS.URL == "" {
		srv, err := broker.Start(broker.Config{StoreDir: filepath.Join(cfg.DataDir, "nats"), Name: "mailpulse-rebuild", ReadyTimeout: 10 * time.Second}, log)
		if err != nil {
			return fmt.Errorf("open the embedded log in %s (is mailpulse still running?): %w", cfg.DataDir, err)
		}
		defer srv.Shutdown()
		if nc, err = srv.Connect(); err != nil {
			return err
		}
	} else {
		opts := bus.ConnectOptions("mailpulse-rebuild", log)
		if cfg.NATS.User != "" {
			opts = append(opts, nats.UserInfo(cfg.NATS.User, cfg.NATS.Password))
		}
		var err error
		if nc, err = nats.Connect(cfg.NATS.URL, opts...); err != nil {
			return err
		}
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := provision(ctx, js, cfg.Stream, log); err != nil {
		return err
	}
	minLevel, _ := event.ParseLevel(cfg.Archiver.MinLevel)
	acfg := archiver.Config{MinLevel: minLevel, Include: splitComma(cfg.Archiver.Include), Exclude: splitComma(cfg.Archiver.Exclude)}
	start := time.Now()
	// SQLite: into a new file, swapped in only when complete. PostgreSQL: emptied, then
	// filled again (the archivers must be stopped; if it is interrupted, run it again).
	var st store.Store
	path := filepath.Join(cfg.DataDir, "history.db")
	tmp := path + ".rebuild"
	if cfg.Archiver.Store == "postgresql" {
		pg, err := postgres.Open(ctx, cfg.Archiver.PostgresURL)
		if err != nil {
			return err
		}
		if err := pg.Reset(ctx); err != nil {
			pg.Close()
			return fmt.Errorf("empty the PostgreSQL history: %w", err)
		}
		st = pg
	} else {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			_ = os.Remove(tmp + suffix)
		}
		if st, err = sqlite.Open(ctx, tmp); err != nil {
			return err
		}
	}
	n, last, err := archiver.Rebuild(ctx, js, st, acfg, log)
	var snaps int
	var lastSnap uint64
	if err == nil {
		snaps, lastSnap, err = archiver.RebuildMetrics(ctx, js, st)
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	if cfg.Archiver.Store != "postgresql" {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if _, err := os.Stat(path + suffix); err == nil {
				if err := os.Rename(path+suffix, path+".old"+suffix); err != nil {
					return err
				}
			}
			if _, err := os.Stat(tmp + suffix); err == nil {
				if err := os.Rename(tmp+suffix, path+suffix); err != nil {
					return err
				}
			}
		}
	}
	if err := archiver.ResetConsumer(ctx, js, "archiver", last); err != nil {
		return err
	}
	if err := archiver.ResetMetricsConsumer(ctx, js, "archiver", lastSnap); err != nil {
		return err
	}
	where := path + " (the previous file is " + path + ".old)"
	if cfg.Archiver.Store == "postgresql" {
		where = "PostgreSQL"
	}
	fmt.Fprintf(out, "history rebuilt from the log in %s: %d events up to sequence %d and %d metric snapshots, in %s\n",
		time.Since(start).Round(time.Millisecond), n, last, snaps, where)
	return nil
}
