// Package httpserver is the one HTTP base of mailpulse's services: a Fiber app with one
// error handler, one credential parser, key authentication by role (401 for a missing or
// wrong key, 403 for too small a role), the health and metrics routes, and a bounded
// graceful stop. It also holds the bounds one hostile client meets: request bodies read
// only after authentication and within a limit, a time and a shared memory budget
// (body.go); connections capped in all and per client address, accept errors that do not
// stop the server, and lingering closes (listener.go); header and idle timeouts.
package httpserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mailpulse/mailpulse/shared/apikey"
)

// Config configures an app. Zero fields take the defaults in parentheses.
type Config struct {
	Name      string // the service, in the Server header's place (none is sent), and in metrics
	BodyLimit int    // largest request body ReadBody (and so RequireKey) reads (1 MiB)
	// HeaderTimeout bounds the arrival of a request's line and headers, from its first
	// byte (10 s): a client sending them slowly (slowloris) is cut.
	HeaderTimeout time.Duration
	// ReadTimeout bounds a request body: ReadBody's whole body, or each read of a streamed
	// one (30 s).
	ReadTimeout time.Duration
	// WriteTimeout bounds writing one response; 0 leaves it unbounded, as streams need.
	WriteTimeout time.Duration
	IdleTimeout  time.Duration // keep-alive between requests (2 min)
	// BodyMemory bounds the request bodies held in memory at once, across requests (256
	// MiB); a request waits for room for at most BodyWait (5 s), then gets 503.
	BodyMemory int64
	BodyWait   time.Duration
	Registry   prometheus.Registerer // the app's metrics (none when nil)
	Log        *slog.Logger          // where handler failures are logged (discarded when nil)
}

// New returns a Fiber app with mailpulse's error handling and request bounds. Every error
// is JSON {"error": …}; errors raised while parsing a request are answered with their
// status text only, because fasthttp quotes the request's bytes in them (an Authorization
// header included); the body errors of body.go get their status (413 names the limit, 503
// says when to retry); other handler failures are logged and answered 500 without their
// detail. Bodies are streamed: see body.go for what handlers may read, and when.
func New(cfg Config) *fiber.App {
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = 1 << 20
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.BodyMemory <= 0 {
		cfg.BodyMemory = 256 << 20
	}
	if cfg.BodyWait <= 0 {
		cfg.BodyWait = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	limit := cfg.BodyLimit
	log := cfg.Log
	app := fiber.New(fiber.Config{
		AppName: cfg.Name,
		// With bodies streamed, fasthttp's limit only decides how it reads ahead: under it,
		// exactly min(length, 8 KiB); over it, into whatever buffer it has. Unlimited, the
		// read-ahead is always the former. The limit is ReadBody's.
		BodyLimit: math.MaxInt32,
		// fasthttp's read timeout runs from a request's first byte to the handler: with
		// bodies streamed, that is the request line and headers (and at most 8 KiB of body
		// read ahead). The body's own bound is ReadTimeout, set as it is read.
		ReadTimeout:       cfg.HeaderTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		StreamRequestBody: true,
		// Streamed, a multipart body would otherwise be parsed (to memory and temporary
		// files, without a size limit) before any handler, and so before authentication.
		DisablePreParseMultipartForm: true,
		DisableStartupMessage:        true,
		ErrorHandler: func(c *fiber.Ctx, err error) error {
			var fe *fiber.Error
			var large *BodyTooLargeError
			switch status := BodyStatus(err); {
			case errors.As(err, &large):
				return c.Status(status).JSON(fiber.Map{"error": large.Error(), "limit": large.Limit})
			case status == fiber.StatusServiceUnavailable:
				c.Set(fiber.HeaderRetryAfter, "1")
				return Error(c, status, err.Error())
			case status == fiber.StatusBadRequest:
				return Error(c, status, ErrBodyIncomplete.Error()) // the cause may quote the request
			case status != 0:
				return Error(c, status, err.Error())
			case errors.As(err, &fe) && fe.Code == fiber.StatusRequestEntityTooLarge:
				return Error(c, fe.Code, fmt.Sprintf("body larger than %d bytes", limit))
			case errors.As(err, &fe):
				return Error(c, fe.Code, http.StatusText(fe.Code))
			}
			log.Error("request failed", "method", c.Method(), "path", c.Path(), "err", err)
			return Error(c, fiber.StatusInternalServerError, "internal error")
		},
	})
	app.Use(newBodies(cfg).guard)
	return app
}

// Error answers with status and {"error": msg}; a 401 also names the schemes accepted.
func Error(c *fiber.Ctx, status int, msg string) error {
	if status == fiber.StatusUnauthorized {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="mailpulse", Basic realm="mailpulse"`)
	}
	return c.Status(status).JSON(fiber.Map{"error": msg})
}

// Credential returns the key a request presents: the token of "Authorization: Bearer
// <key>", or the password of "Authorization: Basic …" (Stalwart's webhooks send either;
// the user name is not read). Schemes are matched case-insensitively. "" when there is none.
func Credential(c *fiber.Ctx) string {
	return ParseCredential(c.Get(fiber.HeaderAuthorization))
}

// ParseCredential is Credential for an Authorization header's value.
func ParseCredential(header string) string {
	scheme, value, _ := strings.Cut(strings.TrimSpace(header), " ")
	value = strings.TrimSpace(value)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return value
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return ""
		}
		_, pass, _ := strings.Cut(string(raw), ":")
		return pass
	}
	return ""
}

// Keys checks API keys (apikey.Store).
type Keys interface {
	Check(plain string, roles ...apikey.Role) (apikey.Key, error)
}

// localKey is where RequireKey leaves the request's key.
const localKey = "mailpulse-key"

// RequireKey lets a request through only with a key of one of the roles (admin always
// qualifies): 401 without a valid key, 403 with a valid key of another role, answered from
// the headers alone (the body is never read, and the connection closes). Only then is the
// body read into memory (ReadBody: within the app's body limit, time and memory), so that
// later handlers may use c.Body(). The key is available to them through KeyOf.
func RequireKey(keys Keys, roles ...apikey.Role) fiber.Handler {
	return func(c *fiber.Ctx) error {
		k, err := keys.Check(Credential(c), roles...)
		switch {
		case errors.Is(err, apikey.ErrForbidden):
			return Error(c, fiber.StatusForbidden, err.Error())
		case err != nil:
			return Error(c, fiber.StatusUnauthorized, apikey.ErrUnauthenticated.Error())
		}
		SetKey(c, k)
		if err := ReadBody(c); err != nil {
			return err
		}
		return c.Next()
	}
}

// SetKey records the key a request was authenticated with (by RequireKey, or by another
// means such as a stream token).
func SetKey(c *fiber.Ctx, k apikey.Key) { c.Locals(localKey, k) }

// KeyOf returns the key the request was authenticated with.
func KeyOf(c *fiber.Ctx) apikey.Key {
	k, _ := c.Locals(localKey).(apikey.Key)
	return k
}

// Health adds /healthz (alive, no key), /readyz (ready returns nil, no key) and /metrics
// (the registry in Prometheus text, viewer key).
func Health(app *fiber.App, keys Keys, ready func() error, metrics prometheus.Gatherer) {
	app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok\n") })
	app.Get("/readyz", func(c *fiber.Ctx) error {
		if err := ready(); err != nil {
			return c.Status(fiber.StatusServiceUnavailable).SendString(err.Error() + "\n")
		}
		return c.SendString("ready\n")
	})
	h := adaptor.HTTPHandler(promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	app.Get("/metrics", RequireKey(keys, apikey.Viewer), h)
}

// Serve serves app on ln until ctx ends, then stops accepting, lets requests finish for at
// most grace, and returns. beforeStop, when set, runs first: services end their streams
// there, since open streams would hold the stop for the whole grace period. ln is wrapped
// in a Listener with the default caps unless it is one already (NewListener, for caps of
// one's own and metrics), so that running out of file descriptors never ends the server;
// lingering closes still under way when it returns are cut short and waited for.
func Serve(ctx context.Context, app *fiber.App, ln net.Listener, grace time.Duration, beforeStop func()) error {
	l, ok := ln.(*Listener)
	if !ok {
		l = NewListener(ln, ListenerConfig{})
	}
	defer func() {
		_ = l.Close() // fasthttp closed it already when it stopped; this cuts lingering short
		l.waitLingering()
	}()
	errc := make(chan error, 1)
	go func() { errc <- app.Listener(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	if beforeStop != nil {
		beforeStop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := app.ShutdownWithContext(sctx)
	<-errc
	return err
}
