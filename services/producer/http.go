package producer

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// maxListedErrors bounds the per-event errors in one response.
const maxListedErrors = 100

type httpServer struct {
	s   *Service
	app *fiber.App
	// stalwartSlots bounds the Stalwart webhook requests read at once
	// (stalwart.max_concurrent): each may spool up to stalwart.max_body_bytes to disk.
	stalwartSlots chan struct{}
	// stopping is closed when the server starts to stop: long Stalwart batches end early.
	stopping chan struct{}
}

func newHTTPServer(s *Service) *httpServer {
	in := s.cfg.Ingest
	h := &httpServer{s: s, stalwartSlots: make(chan struct{}, s.cfg.Stalwart.MaxConcurrent), stopping: make(chan struct{})}
	h.app = httpserver.New(httpserver.Config{
		Name:          "mailpulse-producer",
		BodyLimit:     in.MaxBodyBytes,
		HeaderTimeout: in.HeaderTimeout,
		ReadTimeout:   in.BodyTimeout,
		WriteTimeout:  30 * time.Second,
		IdleTimeout:   in.IdleTimeout,
		BodyMemory:    int64(in.MaxBodyMemory),
		BodyWait:      in.BodyWait,
		Registry:      s.deps.Registry,
		Log:           s.log,
	})
	httpserver.Health(h.app, s.deps.Keys, h.ready, s.deps.Registry)
	// RequireKey reads the body only once the key is good (httpserver.ReadBody).
	h.app.Post("/api/v1/events", httpserver.RequireKey(s.deps.Keys, apikey.Ingest), h.events)
	h.app.Post("/ingest/stalwart", h.stalwart) // authenticates itself, then streams (http_stream.go)
	return h
}

// serve serves on ln under the ingest connection caps until ctx ends. Run calls it once.
func (h *httpServer) serve(ctx context.Context, ln net.Listener) error {
	in := h.s.cfg.Ingest
	l := httpserver.NewListener(ln, httpserver.ListenerConfig{
		Name: "producer", MaxConns: in.MaxConns, MaxConnsPerIP: in.MaxConnsPerIP,
		Registry: h.s.deps.Registry, Log: h.s.log,
	})
	return httpserver.Serve(ctx, h.app, l, h.s.cfg.Grace, func() { close(h.stopping) })
}

func (h *httpServer) ready() error {
	if h.s.deps.Conn.Status() != nats.CONNECTED {
		return errors.New("NATS not connected")
	}
	return nil
}

// events is POST /api/v1/events: a JSON array or NDJSON of native events.
func (h *httpServer) events(c *fiber.Ctx) error {
	return h.accept(c, "events", event.SplitBatch, h.s.defaults.Parse, byID)
}

type eventError struct {
	Index int    `json:"index"`
	ID    string `json:"id,omitempty"`
	Error string `json:"error"`
}

// tally is what became of a batch's events, for the answer and the metrics.
type tally struct {
	received, rejected int
	stored, dups       int // stored counts duplicates too: every event the log has
	failed             int
	firstErr           error
	listed             []eventError
}

// reject counts event i as invalid, listing the first maxListedErrors.
func (t *tally) reject(i int, err error) {
	t.rejected++
	if len(t.listed) < maxListedErrors {
		t.listed = append(t.listed, eventError{Index: i, Error: strings.ReplaceAll(err.Error(), "\n", "; ")})
	}
}

// store publishes evs and waits for each to be stored or to fail. It reports whether all
// were stored.
func (h *httpServer) store(t *tally, evs []event.Event, key keyFunc) bool {
	if len(evs) == 0 {
		return true
	}
	// Not the request's context: a request being stopped still waits for what it sent.
	ctx, cancel := context.WithTimeout(context.Background(), h.s.cfg.Ingest.Timeout)
	defer cancel()
	errs := make([]error, len(evs))
	t.dups += h.s.ingest(ctx, evs, errs, key)
	for _, err := range errs {
		if err == nil {
			t.stored++
			continue
		}
		t.failed++
		if t.firstErr == nil {
			t.firstErr = err
		}
	}
	return t.failed == 0
}

// record adds the tally to the metrics of endpoint.
func (h *httpServer) record(endpoint string, t *tally) {
	m := h.s.metrics
	m.received.WithLabelValues(endpoint).Add(float64(t.received))
	m.rejected.WithLabelValues(endpoint).Add(float64(t.rejected))
	m.stored.WithLabelValues(endpoint).Add(float64(t.stored - t.dups))
	m.duplicates.WithLabelValues(endpoint).Add(float64(t.dups))
	m.unavailable.WithLabelValues(endpoint).Add(float64(t.failed))
}

// unstored answers a batch some of whose events the log did not store: 503 (or 500 for an
// error that is not the log being away or full) with what was stored.
func unstored(c *fiber.Ctx, t *tally) error {
	status := fiber.StatusServiceUnavailable
	if !errors.Is(t.firstErr, bus.ErrUnavailable) && !errors.Is(t.firstErr, bus.ErrSaturated) {
		status = fiber.StatusInternalServerError
	}
	c.Set(fiber.HeaderRetryAfter, "1")
	// Sending the whole batch again is safe: events already stored are recognised and
	// stored once.
	return c.Status(status).JSON(fiber.Map{"error": t.firstErr.Error(), "stored": t.stored - t.dups, "duplicates": t.dups, "notStored": t.failed, "rejected": t.rejected, "errors": t.errors()})
}

func (t *tally) errors() []eventError {
	if t.listed == nil {
		return []eventError{}
	}
	return t.listed
}

// accepted answers 202: every valid event of the request is in the log once. accepted
// counts the events stored now; duplicates, those the log already had (a batch sent
// again).
func accepted(c *fiber.Ctx, t *tally) error {
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"accepted": t.stored - t.dups, "duplicates": t.dups, "rejected": t.rejected, "errors": t.errors()})
}

// accept splits, validates and stores a batch held in memory, answering 202 only once
// JetStream has stored every accepted event.
func (h *httpServer) accept(c *fiber.Ctx, endpoint string, split func([]byte, int) ([][]byte, error), parse func([]byte) (event.Event, error), key keyFunc) (err error) {
	start := time.Now()
	defer func() {
		h.s.metrics.duration.WithLabelValues(endpoint, strconv.Itoa(c.Response().StatusCode())).Observe(time.Since(start).Seconds())
	}()
	raw, err := split(c.Body(), h.s.cfg.Ingest.MaxBatch)
	if err != nil {
		status := fiber.StatusBadRequest
		if errors.Is(err, event.ErrTooManyEvents) {
			status = fiber.StatusRequestEntityTooLarge
		}
		return c.Status(status).JSON(fiber.Map{"error": err.Error()})
	}
	t := &tally{received: len(raw)}
	defer h.record(endpoint, t)
	evs := make([]event.Event, 0, len(raw))
	for i, r := range raw {
		e, err := parse(r)
		if err != nil {
			t.reject(i, err)
			continue
		}
		evs = append(evs, e)
	}
	if len(evs) == 0 {
		return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": "no valid event in the batch", "accepted": 0, "rejected": t.rejected, "errors": t.errors()})
	}
	if !h.store(t, evs, key) {
		return unstored(c, t)
	}
	return accepted(c, t)
}

func defaultInstance() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "producer"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}
