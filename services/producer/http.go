package producer

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
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
}

func newHTTPServer(s *Service) *httpServer {
	h := &httpServer{s: s}
	h.app = httpserver.New(httpserver.Config{
		Name:         "mailpulse-producer",
		BodyLimit:    s.cfg.Ingest.MaxBodyBytes,
		WriteTimeout: 30 * time.Second,
		Log:          s.log,
	})
	httpserver.Health(h.app, s.deps.Keys, h.ready, s.deps.Registry)
	h.app.Post("/api/v1/events", httpserver.RequireKey(s.deps.Keys, apikey.Ingest), h.events)
	h.app.Post("/ingest/stalwart", h.stalwart)
	return h
}

func (h *httpServer) serve(ctx context.Context, ln net.Listener) error {
	return httpserver.Serve(ctx, h.app, ln, h.s.cfg.Grace, nil)
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

// stalwart is POST /ingest/stalwart: Stalwart's webhook payload.
func (h *httpServer) stalwart(c *fiber.Ctx) error {
	if secret := h.s.cfg.Stalwart.Secret; secret != "" {
		if !validSignature(secret, c.Body(), c.Get("X-Signature")) {
			c.Set(fiber.HeaderWWWAuthenticate, `Signature header="X-Signature"`)
			return c.Status(fiber.StatusUnauthorized).JSON(fiber.Map{"error": "missing or invalid X-Signature"})
		}
	} else if _, err := h.s.deps.Keys.Check(httpserver.Credential(c), apikey.Ingest); err != nil {
		status := fiber.StatusUnauthorized
		if errors.Is(err, apikey.ErrForbidden) {
			status = fiber.StatusForbidden
		}
		return httpserver.Error(c, status, err.Error())
	}
	d := h.s.defaults
	d.Source = h.s.cfg.Stalwart.Source
	if src := c.Query("source"); src != "" {
		if err := event.ValidateSource(src); err != nil {
			return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": "source parameter: " + err.Error()})
		}
		// Fiber's strings point into the request's buffer, which fasthttp reuses for the
		// next request: a source kept by the events and the metrics projection must be a
		// copy, or a later request rewrites it.
		d.Source = strings.Clone(src)
	}
	return h.accept(c, "stalwart", event.SplitStalwart, d.ParseStalwart, byContent)
}

// validSignature checks Stalwart's X-Signature: base64(HMAC-SHA256(secret, body)), in
// constant time.
func validSignature(secret string, body []byte, header string) bool {
	got, err := base64.StdEncoding.DecodeString(strings.TrimSpace(header))
	if err != nil || len(got) != sha256.Size {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

type eventError struct {
	Index int    `json:"index"`
	ID    string `json:"id,omitempty"`
	Error string `json:"error"`
}

// accept splits, validates and stores a batch, answering 202 only once JetStream has stored
// every accepted event.
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
	m := h.s.metrics
	m.received.WithLabelValues(endpoint).Add(float64(len(raw)))
	evs := make([]event.Event, 0, len(raw))
	rejected := []eventError{}
	rejectedCount := 0
	for i, r := range raw {
		e, err := parse(r)
		if err != nil {
			rejectedCount++
			if len(rejected) < maxListedErrors {
				rejected = append(rejected, eventError{Index: i, Error: strings.ReplaceAll(err.Error(), "\n", "; ")})
			}
			continue
		}
		evs = append(evs, e)
	}
	m.rejected.WithLabelValues(endpoint).Add(float64(rejectedCount))
	if len(evs) == 0 {
		return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": "no valid event in the batch", "accepted": 0, "rejected": rejectedCount, "errors": rejected})
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.s.cfg.Ingest.Timeout)
	defer cancel()
	errs := make([]error, len(evs))
	dups := h.s.ingest(ctx, evs, errs, key)
	stored, failed := 0, 0
	var firstErr error
	for _, err := range errs {
		if err == nil {
			stored++
		} else {
			failed++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	m.stored.WithLabelValues(endpoint).Add(float64(stored - dups))
	m.duplicates.WithLabelValues(endpoint).Add(float64(dups))
	if failed > 0 {
		m.unavailable.WithLabelValues(endpoint).Add(float64(failed))
		status := fiber.StatusServiceUnavailable
		if !errors.Is(firstErr, bus.ErrUnavailable) && !errors.Is(firstErr, bus.ErrSaturated) {
			status = fiber.StatusInternalServerError
		}
		c.Set(fiber.HeaderRetryAfter, "1")
		// Sending the whole batch again is safe for events with an id: those already
		// stored are recognised and stored once.
		return c.Status(status).JSON(fiber.Map{"error": firstErr.Error(), "stored": stored - dups, "duplicates": dups, "notStored": failed, "rejected": rejectedCount, "errors": rejected})
	}
	// accepted counts the events stored now; duplicates, those the log already had (a batch
	// sent again): together, every valid event of the request is in the log once.
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"accepted": stored - dups, "duplicates": dups, "rejected": rejectedCount, "errors": rejected})
}

func defaultInstance() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "producer"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}
