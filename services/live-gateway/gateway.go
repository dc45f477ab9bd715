// Package livegateway is mailpulse's HTTP front door: live event streams over SSE (native,
// and Stalwart-compatible for both Stalwart generations) with filters and lossless resume,
// replays of the log, the history API answered by the archivers, the mail servers' metrics
// (Prometheus exposition and live streams), stream tokens for EventSource, API key
// management, and the gateway's own metrics. It reads the log with one ordered consumer per
// process and fans out in memory.
//
// Where to find a route: routes.go has the table; the handlers live in a file named for
// their noun (streams.go, replay.go, history.go, stalwart_history.go, metrics_stream.go,
// prometheus.go, keys.go, tokens.go); frames.go writes SSE frames, hub.go fans the log out
// and snapshots.go follows the metric snapshots.
package livegateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// Deps are what the gateway uses but does not own.
type Deps struct {
	Conn     *nats.Conn
	Keys     *apikey.Store
	Log      *slog.Logger
	Registry *prometheus.Registry
	// Mount adds other services' API routes (the webhooks API) to the gateway's front
	// door: services do not import each other, the process assembles them. admin is the
	// admin-key middleware.
	Mount []func(r fiber.Router, admin fiber.Handler)
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

	// readStall is how long a read of the log waits for a message before it asks where the
	// log stands (bus.Range.Stall; 0: its default). Tests shorten it.
	readStall time.Duration
	// replays counts the replay goroutines, which Run waits for.
	replays sync.WaitGroup

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
		tokens: &tokens{secret: secret, now: time.Now},
		hub:    newHub(js, deps.Log),
		snaps:  newSnapshots(js, deps.Log),
		// Under the connection caps, with their metrics (accept errors are retried there).
		ln: httpserver.NewListener(ln, httpserver.ListenerConfig{
			Name: "gateway", MaxConns: cfg.MaxConns, MaxConnsPerIP: cfg.MaxConnsPerIP,
			Registry: deps.Registry, Log: deps.Log,
		}),
		closing: make(chan struct{}),
		openBy:  map[string]int{},
	}
	s.metrics = newGatewayMetrics(deps.Registry, s)
	s.app = s.routes(deps.Registry, deps.Mount)
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
	g.Go(func() error {
		// Streams end first (their writers return), so that the server can stop.
		err := httpserver.Serve(gctx, s.app, s.ln, s.cfg.Grace, func() { s.closeOne.Do(func() { close(s.closing) }) })
		s.closeOne.Do(func() { close(s.closing) })
		s.waitReplays()
		return err
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// waitReplays waits for the replays to end, for at most the grace period: one whose client
// stopped reading can be blocked for as long as the client keeps its connection.
func (s *Service) waitReplays() {
	done := make(chan struct{})
	go func() {
		s.replays.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(s.cfg.Grace):
		s.log.Warn("replays still running after the grace period")
	}
}

// observeLatency records the latency of every request but the streams (whose handlers
// return at once; their life is counted by the stream metrics).
func (s *Service) observeLatency(c *fiber.Ctx) error {
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
}

// ready is /readyz: NATS connected and the live consumer started.
func (s *Service) ready() error {
	if s.nc.Status() != nats.CONNECTED {
		return errors.New("NATS not connected")
	}
	select {
	case <-s.hub.ready:
		return nil
	default:
		return errors.New("live consumer not started")
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

// tooManyStreams answers a stream that acquire refused.
func tooManyStreams(c *fiber.Ctx, err error) error {
	c.Set(fiber.HeaderRetryAfter, "5")
	return httpserver.Error(c, fiber.StatusTooManyRequests, err.Error())
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
