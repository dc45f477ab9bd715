package webhooker

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// Format is the shape of the requests an endpoint receives.
type Format string

const (
	// FormatStandard is Standard Webhooks: webhook-id, webhook-timestamp and
	// webhook-signature ("v1,<base64>", one per secret) over
	// {"type":"mailpulse.events","timestamp":…,"data":{"events":[native events]}}.
	FormatStandard Format = "standard"
	// FormatStalwart is what Stalwart's webhook sender posts: {"events":[{id, createdAt,
	// type, data}]} with X-Signature = base64(HMAC-SHA256(secret, body)), so a receiver
	// written for Stalwart works unchanged.
	FormatStalwart Format = "stalwart"
)

// Duration is a time.Duration that JSON writes as Go's text ("1.5s") and reads from that
// or from a number of milliseconds (Stalwart's unit). A value that is neither is kept as
// invalid for Validate to report, so one bad duration does not hide the other problems.
type Duration time.Duration

const invalidDuration = Duration(math.MinInt64)

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads "1.5s" or a number of milliseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			*d = invalidDuration
			return nil
		}
		*d = Duration(v)
		return nil
	}
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil || ms > float64(math.MaxInt64/int64(time.Millisecond)) || ms < 0 {
		*d = invalidDuration
		return nil
	}
	*d = Duration(ms * float64(time.Millisecond))
	return nil
}

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Auth is how the endpoint authenticates our requests, besides the signature.
type Auth struct {
	Type     string `json:"type"` // basic or bearer
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"` // basic
	Token    string `json:"token,omitempty"`    // bearer
}

// Batch bounds a request: at most MaxEvents events, gathered for at most MaxWait after the
// first. MaxWait 0 sends each event alone, as soon as it is in the log.
type Batch struct {
	MaxEvents int       `json:"maxEvents"`
	MaxWait   *Duration `json:"maxWait,omitempty"` // absent: the default (1 s, as Stalwart)
}

// Retry is an endpoint's retry policy. The delay before attempt k+1 is Schedule[k-1] (the
// last entry repeating) when a schedule is given, otherwise Initial·2^(k-1) up to Max; ±20 %
// jitter spreads endpoints that failed together. A batch goes to the dead letters after
// MaxAttempts attempts (0: no count limit) or once its retries would run past MaxAge.
type Retry struct {
	Schedule    []Duration `json:"schedule,omitempty"`
	Initial     Duration   `json:"initial"`
	Max         Duration   `json:"max"`
	MaxAttempts int        `json:"maxAttempts"`
	MaxAge      Duration   `json:"maxAge"`
}

// RateLimit bounds the requests per second an endpoint gets (0: no limit), with bursts of
// Burst requests.
type RateLimit struct {
	PerSecond float64 `json:"perSecond"`
	Burst     int     `json:"burst"`
}

// Endpoint is a webhook endpoint as stored in the WEBHOOKS bucket (JSON, under its id).
//
// Secrets are stored in clear: signing needs them. The bucket is the webhooker's, reached
// only with NATS credentials; the API shows a secret once, when it is created, and masks
// it ever after; logs never carry one.
type Endpoint struct {
	ID          string            `json:"id"`
	Description string            `json:"description,omitempty"`
	URL         string            `json:"url"`
	Headers     map[string]string `json:"headers,omitempty"`
	Auth        *Auth             `json:"auth,omitempty"`

	// What it receives: event types (patterns with *), a minimum level, sources (none: all).
	Types    []string `json:"types"`
	MinLevel string   `json:"minLevel,omitempty"`
	Sources  []string `json:"sources,omitempty"`

	Format  Format   `json:"format"`
	Secrets []string `json:"secrets,omitempty"` // the first signs Stalwart's format; all sign Standard Webhooks

	Batch     Batch     `json:"batch"`
	Timeout   Duration  `json:"timeout"`
	Retry     Retry     `json:"retry"`
	RateLimit RateLimit `json:"rateLimit"`
	Breaker   Breaker   `json:"breaker"`
	// DisableAfter: an endpoint failing continuously for longer is disabled (breaker.go).
	// Absent: the webhooker's disable_after; 0: never.
	DisableAfter *Duration `json:"disableAfter,omitempty"`

	// Start is where a new endpoint starts reading the log: "now", "beginning", or an RFC
	// 3339 time (a backfill). It applies once, when its consumer is created.
	Start string `json:"start"`

	Paused         bool       `json:"paused"`
	Disabled       bool       `json:"disabled"`
	DisabledReason string     `json:"disabledReason,omitempty"`
	DisabledAt     *time.Time `json:"disabledAt,omitempty"`
	CreatedAt      time.Time  `json:"createdAt"`
	UpdatedAt      time.Time  `json:"updatedAt"`

	// Health is written by the webhookers on the breaker's transitions (breaker.go).
	Health Health `json:"health"`
}

// Defaults and bounds of an endpoint.
const (
	DefaultMaxEvents = 100
	DefaultMaxWait   = time.Second // Stalwart's throttle
	DefaultTimeout   = 30 * time.Second
	DefaultInitial   = 5 * time.Second
	DefaultMax       = time.Hour
	DefaultMaxAge    = 72 * time.Hour // Standard Webhooks' "about 3 days"

	maxEventsLimit = 1000
	maxHeaders     = 32
	maxSecrets     = 10
	maxURLLen      = 2048
	maxSchedule    = 100
	secretPrefix   = "whsec_"
)

// ErrInvalid: an endpoint definition was refused; the error lists every reason.
var ErrInvalid = errors.New("invalid endpoint")

// ValidationError lists every problem of an endpoint definition.
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string {
	return ErrInvalid.Error() + ": " + strings.Join(e.Problems, "; ")
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// setDefaults fills what a definition left out.
func (e *Endpoint) setDefaults() {
	if e.Format == "" {
		e.Format = FormatStandard
	}
	if e.Batch.MaxEvents == 0 {
		e.Batch.MaxEvents = DefaultMaxEvents
	}
	if e.Batch.MaxWait == nil {
		w := Duration(DefaultMaxWait)
		e.Batch.MaxWait = &w
	}
	if e.Timeout == 0 {
		e.Timeout = Duration(DefaultTimeout)
	}
	if e.Retry.Initial == 0 {
		e.Retry.Initial = Duration(DefaultInitial)
	}
	if e.Retry.Max == 0 {
		e.Retry.Max = Duration(max(DefaultMax, e.Retry.Initial.D()))
	}
	if e.Retry.MaxAge == 0 {
		e.Retry.MaxAge = Duration(DefaultMaxAge)
	}
	e.Breaker.setDefaults()
	if e.RateLimit.PerSecond > 0 && e.RateLimit.Burst == 0 {
		e.RateLimit.Burst = 1
	}
	if e.Start == "" {
		e.Start = "now"
	}
	if e.MinLevel == "" {
		e.MinLevel = event.Trace.String()
	}
}

// plan is an endpoint compiled for delivery: what the worker needs, checked once.
type plan struct {
	Endpoint
	types    filter.Types
	subjects []string
	level    event.Level
	sources  map[string]bool
	start    time.Time // zero: now or beginning (Start says which)
	maxWait  time.Duration
}

// compile validates e (every problem at once) and compiles it.
func (e Endpoint) compile(g *ssrf.Guard) (*plan, error) {
	p := &plan{Endpoint: e}
	var probs []string
	bad := func(format string, a ...any) { probs = append(probs, fmt.Sprintf(format, a...)) }

	if !validID(e.ID) {
		bad("id: %q: want 1 to 64 lowercase letters, digits or hyphens", e.ID)
	}
	if len(e.Description) > 256 {
		bad("description: longer than 256 characters")
	}
	probs = append(probs, checkURL(e.URL, g)...)
	probs = append(probs, checkHeaders(e.Headers)...)
	if e.Auth != nil {
		switch strings.ToLower(e.Auth.Type) {
		case "basic":
			if e.Auth.Username == "" && e.Auth.Password == "" {
				bad("auth: basic needs a username or a password")
			}
			if strings.Contains(e.Auth.Username, ":") {
				bad("auth.username: must not contain ':'")
			}
		case "bearer":
			if e.Auth.Token == "" {
				bad("auth.token: required for bearer")
			}
		default:
			bad("auth.type: %q: want basic or bearer", e.Auth.Type)
		}
		if badHeaderValue(e.Auth.Username) || badHeaderValue(e.Auth.Password) || badHeaderValue(e.Auth.Token) {
			bad("auth: values must not contain control characters")
		}
	}

	switch {
	case len(e.Types) == 0:
		bad(`types: at least one pattern ("*" for every event)`)
	case len(e.Types) > filter.MaxTypes:
		bad("types: at most %d patterns", filter.MaxTypes)
	default:
		ts, err := filter.ParseTypes(e.Types)
		if err != nil {
			for _, e := range flatten(err) {
				bad("%v", e)
			}
		} else {
			p.types = ts
			f, err := filter.Parse(url.Values{"types": {strings.Join(e.Types, ",")}})
			if err != nil {
				bad("%v", err)
			} else {
				p.subjects = f.Subjects()
			}
		}
	}
	if l, err := event.ParseLevel(e.MinLevel); err != nil {
		bad("minLevel: %v", err)
	} else {
		p.level = l
	}
	if len(e.Sources) > filter.MaxSources {
		bad("sources: at most %d", filter.MaxSources)
	}
	if len(e.Sources) > 0 {
		p.sources = map[string]bool{}
		for _, s := range e.Sources {
			if err := event.ValidateSource(s); err != nil || s == "" {
				bad("sources: %q is not a source name", s)
			}
			p.sources[s] = true
		}
	}

	switch e.Format {
	case FormatStandard, FormatStalwart:
	default:
		bad("format: %q: want standard or stalwart", e.Format)
	}
	if len(e.Secrets) > maxSecrets {
		bad("secrets: at most %d (rotate by adding the new one first, then removing the old)", maxSecrets)
	}
	for i, s := range e.Secrets {
		if err := checkSecret(s, e.Format); err != nil {
			bad("secrets[%d]: %v", i, err)
		}
	}

	if n := e.Batch.MaxEvents; n < 1 || n > maxEventsLimit {
		bad("batch.maxEvents: want 1 to %d", maxEventsLimit)
	}
	if e.Batch.MaxWait != nil {
		p.maxWait = e.Batch.MaxWait.D()
		checkDuration(&probs, "batch.maxWait", *e.Batch.MaxWait, 0, time.Minute)
	}
	checkDuration(&probs, "timeout", e.Timeout, 100*time.Millisecond, 2*time.Minute)
	checkDuration(&probs, "retry.initial", e.Retry.Initial, 10*time.Millisecond, 24*time.Hour)
	checkDuration(&probs, "retry.max", e.Retry.Max, 10*time.Millisecond, 7*24*time.Hour)
	if e.Retry.Max != invalidDuration && e.Retry.Initial != invalidDuration && e.Retry.Max < e.Retry.Initial {
		bad("retry.max: must not be below retry.initial")
	}
	checkDuration(&probs, "retry.maxAge", e.Retry.MaxAge, time.Second, 30*24*time.Hour)
	if len(e.Retry.Schedule) > maxSchedule {
		bad("retry.schedule: at most %d delays", maxSchedule)
	}
	for i, d := range e.Retry.Schedule {
		checkDuration(&probs, fmt.Sprintf("retry.schedule[%d]", i), d, 0, 7*24*time.Hour)
	}
	if e.Retry.MaxAttempts < 0 || e.Retry.MaxAttempts > 10000 {
		bad("retry.maxAttempts: want 0 (no limit but maxAge) to 10000")
	}
	if r := e.RateLimit; r.PerSecond < 0 || r.PerSecond > 10000 || math.IsNaN(r.PerSecond) || r.Burst < 0 || r.Burst > 10000 {
		bad("rateLimit: perSecond 0 (none) to 10000, burst 0 to 10000")
	}
	probs = append(probs, e.checkHealthPolicy()...)

	switch e.Start {
	case "now", "beginning":
	default:
		t, err := time.Parse(time.RFC3339Nano, e.Start)
		if err != nil || !event.Representable(t) {
			bad(`start: %q: want "now", "beginning" or an RFC 3339 time`, e.Start)
		}
		p.start = t
	}
	if len(probs) > 0 {
		return nil, &ValidationError{Problems: probs}
	}
	return p, nil
}

func checkDuration(probs *[]string, key string, d Duration, lo, hi time.Duration) {
	switch {
	case d == invalidDuration:
		*probs = append(*probs, key+`: not a duration (want text such as "1.5s" or a number of milliseconds)`)
	case d.D() < lo || d.D() > hi:
		*probs = append(*probs, fmt.Sprintf("%s: %s: want %s to %s", key, d.D(), lo, hi))
	}
}

func checkURL(raw string, g *ssrf.Guard) []string {
	if raw == "" {
		return []string{"url: required"}
	}
	if len(raw) > maxURLLen {
		return []string{fmt.Sprintf("url: longer than %d characters", maxURLLen)}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return []string{fmt.Sprintf("url: %v", errors.Unwrap(err))}
	}
	var probs []string
	if u.Scheme != "http" && u.Scheme != "https" {
		probs = append(probs, fmt.Sprintf("url: scheme %q: want http or https", u.Scheme))
	}
	if u.Hostname() == "" {
		probs = append(probs, "url: no host")
	} else if err := g.CheckHost(u.Hostname()); err != nil {
		probs = append(probs, "url: "+err.Error())
	}
	if u.User != nil {
		probs = append(probs, "url: credentials in the URL are not allowed (use auth)")
	}
	if u.Fragment != "" {
		probs = append(probs, "url: no fragment (#…) allowed")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			probs = append(probs, fmt.Sprintf("url: port %q: want 1 to 65535", p))
		}
	}
	return probs
}

// reservedHeaders are set by the webhooker itself; an endpoint may not override them.
var reservedHeaders = map[string]bool{
	"content-type": true, "content-length": true, "host": true, "authorization": true,
	"x-signature": true, "webhook-id": true, "webhook-timestamp": true, "webhook-signature": true,
	"webhook-replay": true, "transfer-encoding": true, "connection": true, "te": true,
	"upgrade": true, "trailer": true, "expect": true, "keep-alive": true, "proxy-authorization": true,
}

func checkHeaders(h map[string]string) []string {
	var probs []string
	if len(h) > maxHeaders {
		probs = append(probs, fmt.Sprintf("headers: at most %d", maxHeaders))
	}
	for name, v := range h {
		switch {
		case !validToken(name):
			probs = append(probs, fmt.Sprintf("headers: %q is not a header name", name))
		case reservedHeaders[strings.ToLower(name)]:
			probs = append(probs, fmt.Sprintf("headers: %s is set by the webhooker (auth and signatures have fields of their own)", name))
		}
		if len(v) > 4096 || badHeaderValue(v) {
			probs = append(probs, fmt.Sprintf("headers: the value of %q must be at most 4096 characters without control characters", name))
		}
	}
	return probs
}

func validToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func badHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return true
		}
	}
	return false
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkSecret: Standard Webhooks secrets are whsec_ and base64 of 24 to 64 bytes; Stalwart
// uses its key's text as the HMAC key, so any printable text will do there.
func checkSecret(s string, f Format) error {
	if s == "" || len(s) > 512 || badHeaderValue(s) {
		return errors.New("want 1 to 512 printable characters")
	}
	if f != FormatStandard {
		return nil
	}
	raw, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return errors.New("a Standard Webhooks secret starts with whsec_ (omit it to have one generated)")
	}
	key, err := base64.StdEncoding.DecodeString(raw)
	if err != nil || len(key) < 24 || len(key) > 64 {
		return errors.New("want whsec_ followed by the base64 of 24 to 64 random bytes")
	}
	return nil
}

// newSecret generates a Standard Webhooks secret: whsec_ and 32 random bytes in base64.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return secretPrefix + base64.StdEncoding.EncodeToString(b)
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID generates an endpoint id: 16 characters of base32, 80 random bits.
func newID() string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return idEncoding.EncodeToString(b)
}

// masked is e as the API shows it after creation: secrets and credentials hidden, their
// last characters kept so an operator can tell which is which.
func (e Endpoint) masked() Endpoint {
	if len(e.Secrets) > 0 {
		s := make([]string, len(e.Secrets))
		for i, v := range e.Secrets {
			s[i] = mask(v)
		}
		e.Secrets = s
	}
	if e.Auth != nil {
		a := *e.Auth
		if a.Password != "" {
			a.Password = mask(a.Password)
		}
		if a.Token != "" {
			a.Token = mask(a.Token)
		}
		e.Auth = &a
	}
	return e
}

func mask(s string) string {
	if len(s) <= 12 {
		return "…"
	}
	return "…" + s[len(s)-4:]
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
