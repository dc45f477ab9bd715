package livegateway

import (
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/cors"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// routes is the gateway's route table. Keys are checked by httpserver.RequireKey (401 for a
// missing or unknown key, 403 for a key of too small a role); streams also take a stream
// token in ?token= (tokens.go).
func (s *Service) routes(reg *prometheus.Registry, mounts []func(fiber.Router, fiber.Handler)) *fiber.App {
	// No write timeout: streams write for as long as their client stays.
	app := httpserver.New(httpserver.Config{Name: "mailpulse-gateway", BodyLimit: 1 << 20, Registry: reg, Log: s.log})
	if len(s.cfg.CORSOrigins) > 0 {
		app.Use(cors.New(cors.Config{AllowOrigins: strings.Join(s.cfg.CORSOrigins, ","), AllowHeaders: "Authorization, Content-Type, Last-Event-ID"}))
	}
	app.Use(s.observeLatency)
	viewer := httpserver.RequireKey(s.keys, apikey.Viewer)
	admin := httpserver.RequireKey(s.keys, apikey.Admin)

	// /healthz, /readyz, and /metrics: the gateway's own metrics (viewer key).
	httpserver.Health(app, s.keys, s.ready, reg)

	// Keys (keys.go).
	app.Get("/api/v1/keys", admin, s.listKeys)
	app.Post("/api/v1/keys", admin, s.createKey)
	app.Delete("/api/v1/keys/:id", admin, s.revokeKey)

	// Stream tokens, Stalwart's routes of both generations (tokens.go).
	app.Get("/api/telemetry/live/tracing-token", viewer, s.tokenJSON(purposeTracing))
	app.Get("/api/telemetry/live/metrics-token", viewer, s.tokenJSON(purposeMetrics))
	app.Get("/api/token/tracing", viewer, s.tokenText(purposeTracing))
	app.Get("/api/token/metrics", viewer, s.tokenText(purposeMetrics))

	// Live event streams (streams.go).
	app.Get("/api/v1/live/events", s.authStream(purposeTracing), s.eventStream(formatNative))
	app.Get("/api/telemetry/traces/live", s.authStream(purposeTracing), s.eventStream(formatStalwart15))
	app.Get("/api/live/tracing", s.authStream(purposeTracing), s.eventStream(formatStalwart16))

	// A time range of the log (replay.go).
	app.Get("/api/v1/replay", viewer, s.replayRange)

	// The mail servers' metrics: Prometheus exposition (prometheus.go) and live streams
	// (metrics_stream.go).
	app.Get("/metrics/prometheus", viewer, s.exposition)
	app.Get("/api/telemetry/metrics/live", s.authStream(purposeMetrics), s.metricsStream(formatStalwart15))
	app.Get("/api/live/metrics", s.authStream(purposeMetrics), s.metricsStream(formatStalwart16))

	// History, answered by the archivers: native (history.go) and Stalwart's
	// (stalwart_history.go).
	app.Get("/api/v1/events", viewer, s.events)
	app.Get("/api/v1/spans/:id", viewer, s.span)
	app.Get("/api/v1/metrics/history", viewer, s.metricsHistory)
	app.Get("/api/telemetry/traces", viewer, s.traces)
	app.Get("/api/telemetry/trace/:id?", viewer, s.trace)
	app.Get("/api/telemetry/metrics", viewer, s.stalwartMetrics)

	// Other services' APIs, mounted by the process (the webhooks API).
	for _, mount := range mounts {
		mount(app, admin)
	}
	return app
}
