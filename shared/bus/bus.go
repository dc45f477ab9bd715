// Package bus defines, once, the JetStream streams, subjects, dead-letter streams and KV
// buckets mailpulse's services meet on, provisions them idempotently, and publishes to them.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Streams and their subjects.
const (
	// StreamEvents holds every event, on events.<group>.<name>.
	StreamEvents   = "EVENTS"
	SubjectEvents  = "events.>"
	EventsPrefix   = "events."
	StreamMetrics  = "METRICS"
	SubjectMetrics = "metrics.>"
	MetricsPrefix  = "metrics."
)

// KV buckets of dynamic objects; services watch them, so a change applies on every replica.
const (
	BucketKeys       = "KEYS"        // API keys, hashed
	BucketWebhooks   = "WEBHOOKS"    // webhook endpoints
	BucketAlertRules = "ALERT_RULES" // alert rules
	BucketAlertState = "ALERT_STATE" // firing and resolved alert instances
	BucketGateway    = "GATEWAY"     // state the gateway replicas share (the stream-token secret)
)

// DeadLetterServices are the consuming services with a dead-letter stream each.
var DeadLetterServices = []string{"archiver", "webhooker", "alerter"}

// DeadLetterStream names a service's dead-letter stream (DLQ_ARCHIVER) and its subjects
// (dlq.archiver.>): messages that exhausted their deliveries, kept for inspection and replay.
func DeadLetterStream(service string) (name, subjects string) {
	return "DLQ_" + strings.ToUpper(service), "dlq." + service + ".>"
}

// EventSubject is the subject of an event type: events.<group>.<name>.
func EventSubject(typ string) string { return EventsPrefix + typ }

// MetricsSubject is the subject of a source's metric snapshots. Characters NATS does not
// allow in a token (space, *, >) become underscores; dots stay, so metrics.mx1.example.org
// names the source mx1.example.org.
func MetricsSubject(source string) string {
	if source == "" {
		source = "_"
	}
	tokens := strings.Split(strings.Map(func(r rune) rune {
		if r <= ' ' || r == '*' || r == '>' || r == 0x7f {
			return '_'
		}
		return r
	}, strings.Trim(source, ".")), ".")
	for i, t := range tokens {
		if t == "" {
			tokens[i] = "_" // an empty token would make the subject invalid
		}
	}
	return MetricsPrefix + strings.Join(tokens, ".")
}

// Limits bound what the log keeps. Zero fields take the defaults of DefaultLimits.
type Limits struct {
	EventsMaxAge     time.Duration `koanf:"events_max_age"`
	EventsMaxBytes   int64         `koanf:"events_max_bytes"`
	MetricsMaxAge    time.Duration `koanf:"metrics_max_age"`
	MetricsMaxBytes  int64         `koanf:"metrics_max_bytes"`
	DeadLetterMaxAge time.Duration `koanf:"dead_letter_max_age"`
	// Duplicates is the window in which a re-sent event id is recognised and stored once.
	Duplicates time.Duration `koanf:"duplicates"`
	// Replicas is the stream replication factor (1 alone, 3 on a NATS cluster).
	Replicas int `koanf:"replicas"`
}

// DefaultLimits keeps events 7 days (the archiver keeps history longer) within 10 GiB.
//
// The duplicate window is 1 minute. JetStream keeps every id of the window in memory, about
// 110 bytes each (measured: it was the whole live heap of the producer under load), so the
// window sets the memory: at a sustained 10k events/s, 1 minute is ~65 MB live, 10 minutes
// would be ~650 MB. The retries deduplication guards against (a client whose 202 was lost,
// Stalwart retrying a batch 1 s later) come back within seconds.
func DefaultLimits() Limits {
	return Limits{
		EventsMaxAge:     7 * 24 * time.Hour,
		EventsMaxBytes:   10 << 30,
		MetricsMaxAge:    7 * 24 * time.Hour,
		MetricsMaxBytes:  1 << 30,
		DeadLetterMaxAge: 30 * 24 * time.Hour,
		Duplicates:       time.Minute,
		Replicas:         1,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	l.EventsMaxAge = orDefault(l.EventsMaxAge, d.EventsMaxAge)
	l.EventsMaxBytes = orDefault(l.EventsMaxBytes, d.EventsMaxBytes)
	l.MetricsMaxAge = orDefault(l.MetricsMaxAge, d.MetricsMaxAge)
	l.MetricsMaxBytes = orDefault(l.MetricsMaxBytes, d.MetricsMaxBytes)
	l.DeadLetterMaxAge = orDefault(l.DeadLetterMaxAge, d.DeadLetterMaxAge)
	l.Duplicates = orDefault(l.Duplicates, d.Duplicates)
	l.Replicas = orDefault(l.Replicas, d.Replicas)
	return l
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Validate reports every problem at once.
func (l Limits) Validate() error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"events_max_age", l.EventsMaxAge}, {"metrics_max_age", l.MetricsMaxAge}, {"dead_letter_max_age", l.DeadLetterMaxAge}, {"duplicates", l.Duplicates}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative", d.name))
		}
	}
	if l.EventsMaxBytes < 0 || l.MetricsMaxBytes < 0 {
		errs = append(errs, errors.New("max bytes: must not be negative"))
	}
	if l.Duplicates > 0 && l.EventsMaxAge > 0 && l.Duplicates > l.EventsMaxAge {
		errs = append(errs, errors.New("duplicates: the window must not be longer than events_max_age"))
	}
	if l.Replicas < 0 || l.Replicas > 5 {
		errs = append(errs, errors.New("replicas: want 1 to 5"))
	}
	return errors.Join(errs...)
}

// StreamConfigs returns the configuration of every stream, with l's limits.
func StreamConfigs(l Limits) []jetstream.StreamConfig {
	l = l.withDefaults()
	cfgs := []jetstream.StreamConfig{
		{
			Name:        StreamEvents,
			Description: "mail-server events, one per message, deduplicated by event id",
			Subjects:    []string{SubjectEvents},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      l.EventsMaxAge,
			MaxBytes:    l.EventsMaxBytes,
			Duplicates:  l.Duplicates,
			Replicas:    l.Replicas,
		},
		{
			Name:        StreamMetrics,
			Description: "periodic metric snapshots per source",
			Subjects:    []string{SubjectMetrics},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      l.MetricsMaxAge,
			MaxBytes:    l.MetricsMaxBytes,
			Duplicates:  l.Duplicates,
			Replicas:    l.Replicas,
		},
	}
	for _, svc := range DeadLetterServices {
		name, subj := DeadLetterStream(svc)
		cfgs = append(cfgs, jetstream.StreamConfig{
			Name:        name,
			Description: "messages the " + svc + " could not process, with the reason in headers",
			Subjects:    []string{subj},
			Storage:     jetstream.FileStorage,
			MaxAge:      l.DeadLetterMaxAge,
			MaxBytes:    1 << 30,
			// Dead letters carry the consumer and sequence as their id. The window is set
			// explicitly: left to the server's default it reads back as a change, and every
			// start updated the stream (and said so).
			Duplicates: l.Duplicates,
			Replicas:   l.Replicas,
		})
	}
	return cfgs
}

// BucketConfigs returns the configuration of every KV bucket.
func BucketConfigs(l Limits) []jetstream.KeyValueConfig {
	l = l.withDefaults()
	mk := func(name, desc string, history uint8) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{Bucket: name, Description: desc, History: history, Storage: jetstream.FileStorage, Replicas: l.Replicas}
	}
	return []jetstream.KeyValueConfig{
		mk(BucketKeys, "API keys (SHA-256 hashes, never the keys)", 1),
		mk(BucketWebhooks, "webhook endpoints", 5),
		mk(BucketAlertRules, "alert rules", 5),
		mk(BucketAlertState, "alert instances and their state", 1),
		mk(BucketGateway, "state shared by the gateway replicas", 1),
	}
}

// ErrIncompatible reports a stream whose stored configuration cannot be changed into the
// configured one (a different storage type, say): nothing was changed.
var ErrIncompatible = errors.New("existing stream is incompatible with the configuration")

// Provision creates every stream and bucket that is missing and updates those whose
// configuration changed in a way JetStream allows. It is safe to run at every start and from
// several processes at once.
func Provision(ctx context.Context, js jetstream.JetStream, l Limits, log *slog.Logger) error {
	var errs []error
	for _, cfg := range StreamConfigs(l) {
		if err := provisionStream(ctx, js, cfg, log); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cfg := range BucketConfigs(l) {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			errs = append(errs, fmt.Errorf("KV bucket %s: %w", cfg.Bucket, err))
		}
	}
	return errors.Join(errs...)
}

func provisionStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, log *slog.Logger) error {
	s, err := js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
		if log != nil {
			log.Info("stream created", "stream", cfg.Name)
		}
		return nil
	case err != nil:
		return fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	old := s.CachedInfo().Config
	if old.Storage != cfg.Storage {
		return fmt.Errorf("stream %s: stored as %s, configured as %s: %w (move the data with the nats CLI, or delete the stream)", cfg.Name, old.Storage, cfg.Storage, ErrIncompatible)
	}
	if sameStream(old, cfg) {
		return nil
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code == 400 {
			return fmt.Errorf("stream %s: %w: %s", cfg.Name, ErrIncompatible, apiErr.Description)
		}
		return fmt.Errorf("update stream %s: %w", cfg.Name, err)
	}
	if log != nil {
		log.Info("stream updated", "stream", cfg.Name, "max_age", cfg.MaxAge, "max_bytes", cfg.MaxBytes)
	}
	return nil
}

func sameStream(a, b jetstream.StreamConfig) bool {
	return a.MaxAge == b.MaxAge && a.MaxBytes == b.MaxBytes && a.Duplicates == b.Duplicates &&
		a.Replicas == b.Replicas && a.Description == b.Description && a.Discard == b.Discard &&
		strings.Join(a.Subjects, ",") == strings.Join(b.Subjects, ",")
}

// ConnectOptions are the options every mailpulse connection to NATS uses: reconnect for ever
// with back-off, and no reconnect buffer, so that a publish during an outage fails at once
// (and its HTTP client gets a 503) instead of waiting in memory for an acknowledgement
// that may never come.
func ConnectOptions(name string, log *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.ReconnectBufSize(-1),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if log != nil && err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			if log != nil {
				log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
			}
		}),
	}
}
