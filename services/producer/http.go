package producer

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

// maxListedErrors bounds the per-event errors in one response.
const maxListedErrors = 100

type httpServer struct {
	s   *Service
	app *fiber.App
}

func newHTTPServer(s *Service) *httpServer {
	h := &httpServer{s: s}
	h.app = fiber.New(fiber.Config{
		AppName:               "mailpulse-producer",
		BodyLimit:             s.cfg.MaxBodyBytes,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          30 * time.Second,
		IdleTimeout:           2 * time.Minute,
		DisableStartupMessage: true,
		ErrorHandler: func(c *fiber.Ctx, err error) error {
			code := fiber.StatusInternalServerError
			var fe *fiber.Error
			if errors.As(err, &fe) {
				code = fe.Code
			}
			msg := err.Error()
			if code == fiber.StatusRequestEntityTooLarge {
				msg = fmt.Sprintf("body larger than %d bytes", s.cfg.MaxBodyBytes)
			}
			return c.Status(code).JSON(fiber.Map{"error": msg})
		},
	})
	h.app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok\n") })
	h.app.Get("/readyz", h.ready)
	h.app.Post("/api/v1/events", h.events)
	h.app.Post("/ingest/stalwart", h.stalwart)
	metrics := adaptor.HTTPHandler(promhttp.HandlerFor(s.deps.Registry, promhttp.HandlerOpts{}))
	h.app.Get("/metrics", func(c *fiber.Ctx) error {
		if _, ok := h.s.deps.Keys.Authenticate(credential(c), apikey.Viewer); !ok {
			return unauthorized(c)
		}
		return metrics(c)
	})
	return h
}

func (h *httpServer) serve(ln net.Listener) error { return h.app.Listener(ln) }

func (h *httpServer) shutdown(ctx context.Context) error { return h.app.ShutdownWithContext(ctx) }

func (h *httpServer) ready(c *fiber.Ctx) error {
	if h.s.deps.Conn.Status() != nats.CONNECTED {
		return c.Status(fiber.StatusServiceUnavailable).SendString("NATS not connected\n")
	}
	return c.SendString("ready\n")
}

// credential returns the key from "Authorization: Bearer <key>", or the password of
// "Authorization: Basic …" (Stalwart's webhooks can send either; the user name is ignored).
func credential(c *fiber.Ctx) string {
	auth := c.Get(fiber.HeaderAuthorization)
	scheme, value, _ := strings.Cut(auth, " ")
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return strings.TrimSpace(value)
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(value))
		if err != nil {
			return ""
		}
		_, pass, _ := strings.Cut(string(raw), ":")
		return pass
	}
	return ""
}

func unauthorized(c *fiber.Ctx) error {
	c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="mailpulse", Basic realm="mailpulse"`)
	return c.Status(fiber.StatusUnauthorized).JSON(fiber.Map{"error": "missing or invalid API key"})
}

// events is POST /api/v1/events: a JSON array or NDJSON of native events.
func (h *httpServer) events(c *fiber.Ctx) error {
	if _, ok := h.s.deps.Keys.Authenticate(credential(c), apikey.Ingest); !ok {
		return unauthorized(c)
	}
	return h.accept(c, "events", event.SplitBatch, h.s.defaults.Parse)
}

// stalwart is POST /ingest/stalwart: Stalwart's webhook payload.
func (h *httpServer) stalwart(c *fiber.Ctx) error {
	if secret := h.s.cfg.StalwartSecret; secret != "" {
		if !validSignature(secret, c.Body(), c.Get("X-Signature")) {
			c.Set(fiber.HeaderWWWAuthenticate, `Signature header="X-Signature"`)
			return c.Status(fiber.StatusUnauthorized).JSON(fiber.Map{"error": "missing or invalid X-Signature"})
		}
	} else if _, ok := h.s.deps.Keys.Authenticate(credential(c), apikey.Ingest); !ok {
		return unauthorized(c)
	}
	d := h.s.defaults
	d.Source = h.s.cfg.StalwartSource
	if src := c.Query("source"); src != "" {
		if err := event.ValidateSource(src); err != nil {
			return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": "source parameter: " + err.Error()})
		}
		d.Source = src
	}
	return h.accept(c, "stalwart", event.SplitStalwart, d.ParseStalwart)
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
func (h *httpServer) accept(c *fiber.Ctx, endpoint string, split func([]byte, int) ([][]byte, error), parse func([]byte) (event.Event, error)) (err error) {
	start := time.Now()
	defer func() {
		h.s.metrics.duration.WithLabelValues(endpoint, strconv.Itoa(c.Response().StatusCode())).Observe(time.Since(start).Seconds())
	}()
	raw, err := split(c.Body(), h.s.cfg.MaxBatch)
	if err != nil {
		status := fiber.StatusBadRequest
		if strings.Contains(err.Error(), "events in one batch") {
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
	ctx, cancel := context.WithTimeout(context.Background(), h.s.cfg.Timeout)
	defer cancel()
	errs := make([]error, len(evs))
	h.s.ingest(ctx, evs, errs)
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
	m.stored.WithLabelValues(endpoint).Add(float64(stored))
	if failed > 0 {
		m.unavailable.WithLabelValues(endpoint).Add(float64(failed))
		status := fiber.StatusServiceUnavailable
		if !errors.Is(firstErr, bus.ErrUnavailable) && !errors.Is(firstErr, bus.ErrSaturated) {
			status = fiber.StatusInternalServerError
		}
		c.Set(fiber.HeaderRetryAfter, "1")
		// Sending the whole batch again is safe for events with an id: those already
		// stored are recognised and stored once.
		return c.Status(status).JSON(fiber.Map{"error": firstErr.Error(), "stored": stored, "notStored": failed, "rejected": rejectedCount, "errors": rejected})
	}
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"accepted": stored, "rejected": rejectedCount, "errors": rejected})
}

func defaultInstance() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "producer"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}
