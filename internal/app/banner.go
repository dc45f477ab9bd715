package app

import (
	"fmt"
	"io"
	"net"
	"strings"
)

// Ready describes a started process, for the banner and for tests.
type Ready struct {
	Role       string
	IngestAddr net.Addr // the producer's ingest API
	HTTPAddr   net.Addr // the gateway, or the archiver's or webhooker's own address when it runs alone
	NATSURL    string   // the embedded server's TCP URL, if it listens
	NATSUser   string
	NATSPass   string // only when generated now
	AdminKey   string // only when generated now
	IngestKey  string // only when generated now
	Simulate   float64
	DataDir    string
	Embedded   bool
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
	gateway := api != "" && (r.Role == "all" || r.Role == "live-gateway")
	if gateway {
		fmt.Fprintf(w, "  live events      http://%s/api/v1/live/events   (SSE; Stalwart clients: /api/live/tracing)\n", api)
		fmt.Fprintf(w, "  history          http://%s/api/v1/events   sessions: /api/v1/spans/{id}   replay: /api/v1/replay\n", api)
		fmt.Fprintf(w, "  metrics          http://%s/metrics/prometheus (the mail servers')   http://%s/metrics (mailpulse's own)\n", api, api)
		fmt.Fprintf(w, "  API keys         http://%s/api/v1/keys   health: http://%s/healthz\n", api, api)
		fmt.Fprintf(w, "  webhooks         http://%s/api/v1/webhooks (admin key)\n", api)
	} else if api != "" && r.Role == "webhooker" {
		fmt.Fprintf(w, "  webhooks         http://%s/api/v1/webhooks (admin key)   health: http://%s/healthz   metrics: http://%s/metrics\n", api, api, api)
	} else if api != "" {
		fmt.Fprintf(w, "  health           http://%s/healthz   metrics: http://%s/metrics (admin or viewer key)\n", api, api)
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
		fmt.Fprintf(w, "\n  Try:\n    curl -H \"Authorization: Bearer %s\" \\\n      -d '[{\"type\":\"smtp.ehlo\",\"data\":{\"domain\":\"mx.example.com\"}}]' http://%s/api/v1/events\n", key, ingest)
	}
	if gateway {
		admin := r.AdminKey
		if admin == "" {
			admin = "$MAILPULSE_ADMIN_KEY"
		}
		fmt.Fprintf(w, "    curl -N -H \"Authorization: Bearer %s\" 'http://%s/api/v1/live/events?types=smtp.*&level=info'\n", admin, api)
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
