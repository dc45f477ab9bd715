// Package httpserver is the one HTTP base of mailpulse's services: a Fiber app with one
// error handler and body limit, one credential parser, key authentication by role (401 for
// a missing or wrong key, 403 for too small a role), the health and metrics routes, and a
// bounded graceful stop.
package httpserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
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
	Name        string        // the service, in the Server header's place (none is sent)
	BodyLimit   int           // largest request body (1 MiB)
	ReadTimeout time.Duration // reading one request (30 s)
	// WriteTimeout bounds writing one response; 0 leaves it unbounded, as streams need.
	WriteTimeout time.Duration
	IdleTimeout  time.Duration // keep-alive between requests (2 min)
	Log          *slog.Logger  // where handler failures are logged (discarded when nil)
}

// New returns a Fiber app with mailpulse's error handling: every error is JSON
// {"error": …}; errors raised while parsing a request are answered with their status text
// only, because fasthttp quotes the request's bytes in them (an Authorization header
// included); handler failures are logged and answered 500 without their detail.
func New(cfg Config) *fiber.App {
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = 1 << 20
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	limit := cfg.BodyLimit
	log := cfg.Log
	return fiber.New(fiber.Config{
		AppName:               cfg.Name,
		BodyLimit:             cfg.BodyLimit,
		ReadTimeout:           cfg.ReadTimeout,
		WriteTimeout:          cfg.WriteTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		DisableStartupMessage: true,
		ErrorHandler: func(c *fiber.Ctx, err error) error {
			var fe *fiber.Error
			switch {
			case errors.As(err, &fe) && fe.Code == fiber.StatusRequestEntityTooLarge:
				return Error(c, fe.Code, fmt.Sprintf("body larger than %d bytes", limit))
			case errors.As(err, &fe):
				return Error(c, fe.Code, http.StatusText(fe.Code))
			}
			log.Error("request failed", "method", c.Method(), "path", c.Path(), "err", err)
			return Error(c, fiber.StatusInternalServerError, "internal error")
		},
	})
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
// qualifies): 401 without a valid key, 403 with a valid key of another role. The key is
// available to later handlers through KeyOf.
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
// there, since open streams would hold the stop for the whole grace period.
func Serve(ctx context.Context, app *fiber.App, ln net.Listener, grace time.Duration, beforeStop func()) error {
	errc := make(chan error, 1)
	go func() { errc <- app.Listener(ln) }()
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
