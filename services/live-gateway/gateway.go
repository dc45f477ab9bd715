// Package livegateway is mailpulse's HTTP front door: live event streams over SSE (native,
// and Stalwart-compatible for both Stalwart generations) with filters and lossless resume,
// stream tokens for EventSource, API key management, and the gateway's own metrics. It
// reads the log with one ordered consumer per process and fans out in memory.
package livegateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/cors"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
)

// Deps are what the gateway uses but does not own.
type Deps struct {
	Conn     *nats.Conn
	Keys     *apikey.Store
	Log      *slog.Logger
	Registry *prometheus.Registry
}

// Service is a running gateway. Create it with New, then call Run once.
type Service struct {
	cfg     Config
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	keys    *apikey.Store
	tokens  *tokens
	hub     *hub
	snaps   *snapshots
	app     *fiber.App
	ln      net.Listener
	metrics *gatewayMetrics
	closing chan struct{} // closed when streams must end

	mu       sync.Mutex
	open     int
	openBy   map[string]int
	closeOne sync.Once
}

// New prepares the gateway and opens its listener.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	cfg.setDefaults()
	if deps.Conn == nil || deps.Keys == nil {
		return nil, errors.New("live-gateway: Conn and Keys are required")
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	js, err := jetstream.New(deps.Conn)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, bus.BucketGateway)
	if err != nil {
		return nil, fmt.Errorf("live-gateway: bucket %s: %w", bus.BucketGateway, err)
	}
	secret, err := loadTokenSecret(ctx, kv)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("live-gateway: listen on %s: %w", cfg.Addr, err)
	}
	s := &Service{
		cfg: cfg, log: deps.Log, nc: deps.Conn, js: js, keys: deps.Keys,
		tokens:  &tokens{secret: secret, now: time.Now},
		hub:     newHub(js, deps.Log),
		snaps:   newSnapshots(js, deps.Log),
		ln:      ln,
		closing: make(chan struct{}),
		openBy:  map[string]int{},
	}
	s.metrics = newGatewayMetrics(deps.Registry, s)
	s.app = s.routes(deps.Registry)
	return s, nil
}

// Addr is the listen address.
func (s *Service) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends, then ends every stream, lets requests finish within the grace
// period and returns.
func (s *Service) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.hub.run(gctx) })
	g.Go(func() error { return s.snaps.run(gctx) })
	g.Go(func() error { return s.app.Listener(s.ln) })
	g.Go(func() error {
		<-gctx.Done()
		s.closeOne.Do(func() { close(s.closing) }) // stream writers return; fasthttp can then shut down
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.Grace)
		defer cancel()
		return s.app.ShutdownWithContext(sctx)
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (s *Service) routes(reg *prometheus.Registry) *fiber.App {
	app := fiber.New(fiber.Config{
		AppName:               "mailpulse-gateway",
		BodyLimit:             1 << 20,
		ReadTimeout:           30 * time.Second,
		IdleTimeout:           2 * time.Minute,
		DisableStartupMessage: true,
		ErrorHandler: func(c *fiber.Ctx, err error) error {
			code := fiber.StatusInternalServerError
			var fe *fiber.Error
			if errors.As(err, &fe) {
				code = fe.Code
			}
			return c.Status(code).JSON(fiber.Map{"error": err.Error()})
		},
	})
	if len(s.cfg.CORSOrigins) > 0 {
		app.Use(cors.New(cors.Config{AllowOrigins: strings.Join(s.cfg.CORSOrigins, ","), AllowHeaders: "Authorization, Content-Type, Last-Event-ID"}))
	}
	// Latency of every request but the streams (whose handlers return at once; their life
	// is counted by the stream metrics).
	app.Use(func(c *fiber.Ctx) error {
		start := time.Now()
		err := c.Next()
		if c.GetRespHeader(fiber.HeaderContentType) != "text/event-stream" {
			route := "unmatched"
			if r := c.Route(); r != nil && r.Path != "/" {
				route = r.Path
			}
			s.metrics.requests.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}
		return err
	})
	app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok\n") })
	app.Get("/readyz", func(c *fiber.Ctx) error {
		if s.nc.Status() != nats.CONNECTED {
			return c.Status(fiber.StatusServiceUnavailable).SendString("NATS not connected\n")
		}
		select {
		case <-s.hub.ready:
			return c.SendString("ready\n")
		default:
			return c.Status(fiber.StatusServiceUnavailable).SendString("live consumer not started\n")
		}
	})
	own := adaptor.HTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	app.Get("/metrics", s.authKey(apikey.Viewer), own)

	// Keys (admin).
	app.Get("/api/v1/keys", s.authKey(apikey.Admin), s.listKeys)
	app.Post("/api/v1/keys", s.authKey(apikey.Admin), s.createKey)
	app.Delete("/api/v1/keys/:id", s.authKey(apikey.Admin), s.revokeKey)

	// Stream tokens, Stalwart's routes of both generations.
	app.Get("/api/telemetry/live/tracing-token", s.authKey(apikey.Viewer), s.tokenJSON(purposeTracing))
	app.Get("/api/telemetry/live/metrics-token", s.authKey(apikey.Viewer), s.tokenJSON(purposeMetrics))
	app.Get("/api/token/tracing", s.authKey(apikey.Viewer), s.tokenText(purposeTracing))
	app.Get("/api/token/metrics", s.authKey(apikey.Viewer), s.tokenText(purposeMetrics))

	// The mail servers' metrics: Prometheus exposition and live streams.
	mailReg := prometheus.NewRegistry()
	mailReg.MustRegister(collector{s.snaps})
	app.Get("/metrics/prometheus", s.authKey(apikey.Viewer), adaptor.HTTPHandler(promhttp.HandlerFor(mailReg, promhttp.HandlerOpts{})))
	app.Get("/api/telemetry/metrics/live", s.authStream(purposeMetrics), s.metricsStream(formatStalwart15))
	app.Get("/api/live/metrics", s.authStream(purposeMetrics), s.metricsStream(formatStalwart16))

	// History, answered by the archivers.
	app.Get("/api/v1/events", s.authKey(apikey.Viewer), s.events)
	app.Get("/api/v1/spans/:id", s.authKey(apikey.Viewer), s.span)
	app.Get("/api/v1/replay", s.authKey(apikey.Viewer), s.replayRange)
	app.Get("/api/telemetry/traces", s.authKey(apikey.Viewer), s.traces)
	app.Get("/api/telemetry/metrics", s.authKey(apikey.Viewer), s.stalwartMetrics)
	app.Get("/api/v1/metrics/history", s.authKey(apikey.Viewer), s.metricsHistory)
	app.Get("/api/telemetry/trace/:id?", s.authKey(apikey.Viewer), s.trace)

	// Live event streams.
	app.Get("/api/v1/live/events", s.authStream(purposeTracing), s.eventStream(formatNative))
	app.Get("/api/telemetry/traces/live", s.authStream(purposeTracing), s.eventStream(formatStalwart15))
	app.Get("/api/live/tracing", s.authStream(purposeTracing), s.eventStream(formatStalwart16))
	return app
}

func (s *Service) listKeys(c *fiber.Ctx) error {
	keys := s.keys.List()
	out := make([]fiber.Map, 0, len(keys))
	for _, k := range keys {
		out = append(out, fiber.Map{"id": k.ID, "name": k.Name, "role": k.Role, "fixed": k.Fixed, "createdAt": k.CreatedAt})
	}
	return c.JSON(fiber.Map{"keys": out})
}

func (s *Service) createKey(c *fiber.Ctx) error {
	var req struct {
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := json.Unmarshal(c.Body(), &req); err != nil {
		return deny(c, fiber.StatusBadRequest, "body: want {\"name\":…,\"role\":\"admin|viewer|ingest\"}")
	}
	role, err := apikey.ParseRole(req.Role)
	if err != nil {
		return deny(c, fiber.StatusBadRequest, err.Error())
	}
	ctx, cancel := requestContext()
	defer cancel()
	plain, k, err := s.keys.Create(ctx, req.Name, role)
	switch {
	case errors.Is(err, apikey.ErrTooMany):
		return deny(c, fiber.StatusConflict, err.Error())
	case errors.Is(err, apikey.ErrInvalidName):
		return deny(c, fiber.StatusBadRequest, err.Error())
	case err != nil:
		return deny(c, fiber.StatusServiceUnavailable, err.Error())
	}
	s.log.Info("API key created", "key_id", k.ID, "role", k.Role, "by", keyOf(c).ID)
	return c.Status(fiber.StatusCreated).JSON(fiber.Map{"id": k.ID, "name": k.Name, "role": k.Role, "key": plain,
		"note": "the key is shown this once; only its hash is stored"})
}

func (s *Service) revokeKey(c *fiber.Ctx) error {
	id := c.Params("id")
	ctx, cancel := requestContext()
	defer cancel()
	if err := s.keys.Revoke(ctx, id); err != nil {
		if errors.Is(err, apikey.ErrNotFound) {
			return deny(c, fiber.StatusNotFound, "no key "+id)
		}
		return deny(c, fiber.StatusServiceUnavailable, err.Error())
	}
	s.log.Info("API key revoked", "key_id", id, "by", keyOf(c).ID)
	return c.SendStatus(fiber.StatusNoContent)
}

func (s *Service) tokenJSON(purpose string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"data": s.tokens.issue(purpose, keyOf(c).ID)})
	}
}

func (s *Service) tokenText(purpose string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.SendString(s.tokens.issue(purpose, keyOf(c).ID))
	}
}

// acquire takes a stream slot for a key, or says why not.
func (s *Service) acquire(keyID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open >= s.cfg.MaxStreams {
		return fmt.Errorf("too many open streams (%d); try again later", s.cfg.MaxStreams)
	}
	if s.openBy[keyID] >= s.cfg.MaxStreamsPerKey {
		return fmt.Errorf("too many open streams for this key (%d)", s.cfg.MaxStreamsPerKey)
	}
	s.open++
	s.openBy[keyID]++
	return nil
}

func (s *Service) release(keyID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open--
	if s.openBy[keyID]--; s.openBy[keyID] <= 0 {
		delete(s.openBy, keyID)
	}
}

func (s *Service) openStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// requestContext bounds the NATS work of one request. fasthttp's RequestCtx must not be
// used as a context.Context: deriving from it races with the server's shutdown.
func requestContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func queryValues(c *fiber.Ctx) (url.Values, error) {
	return url.ParseQuery(string(c.Request().URI().QueryString()))
}

type gatewayMetrics struct {
	replays   prometheus.Counter
	dropped   prometheus.Counter
	closed    *prometheus.CounterVec
	requests  *prometheus.HistogramVec
	frames    prometheus.Counter
	streamsBy *prometheus.CounterVec
}

func newGatewayMetrics(reg *prometheus.Registry, s *Service) *gatewayMetrics {
	m := &gatewayMetrics{
		replays:   prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_gateway_replays_total", Help: "Streams that resumed from a point in the log."}),
		dropped:   prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_gateway_dropped_frames_total", Help: "Events a slow stream lost (reported to it in a dropped event)."}),
		closed:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_gateway_streams_closed_total", Help: "Streams closed, by reason."}, []string{"reason"}),
		requests:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mailpulse_gateway_request_duration_seconds", Help: "Latency of non-streaming requests."}, []string{"route"}),
		frames:    prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_gateway_frames_sent_total", Help: "Events written to streams."}),
		streamsBy: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_gateway_streams_opened_total", Help: "Streams opened, by format."}, []string{"format"}),
	}
	reg.MustRegister(m.replays, m.dropped, m.closed, m.requests, m.frames, m.streamsBy,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mailpulse_gateway_streams_open", Help: "Open streams."}, func() float64 { return float64(s.openStreams()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mailpulse_gateway_consumer_restarts_total", Help: "Restarts of the live consumer (NATS outages)."}, func() float64 { return float64(s.hub.restarts.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mailpulse_gateway_last_sequence", Help: "Stream sequence of the last event fanned out."}, func() float64 { return float64(s.hub.lastSeq.Load()) }),
	)
	return m
}
