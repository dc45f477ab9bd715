// Package event defines the mail-server event that flows through mailpulse: its envelope,
// levels, type names, the catalogue of known types, the JSON wire format and the conversion
// from Stalwart's JSON. It has no NATS dependency, so any consumer can use it.
package event

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// Limits that keep one event bounded; the ingest API rejects events past them.
const (
	MaxIDLen     = 128
	MaxTypeLen   = 96
	MaxSourceLen = 255
	MaxDataBytes = 64 << 10 // encoded size of the data object
	MaxDataKeys  = 128      // keys at the top level of data
	MaxKeyLen    = 64
	MaxDepth     = 16 // nesting of objects and arrays inside data
)

// The times an event may carry, [minTime, maxTime): ULIDs start in 1970, and int64
// nanoseconds since 1970 (the history stores', JetStream's start times) run out in April
// 2262. Outside them a time would wrap (year 9999 read back as 1816), so they are refused
// where events enter; consumers meet them only in what the log held before that check.
var (
	minTime = time.Unix(0, 0).UTC()
	maxTime = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
)

// Representable reports whether t is within the times every part of mailpulse holds
// without wrapping: from 1970-01-01 to the end of 2261 (UTC).
func Representable(t time.Time) bool {
	return !t.Before(minTime) && t.Before(maxTime)
}

// Event is one mail-server event: the envelope of design.md §4.
//
// Data holds the event's keys as a JSON object kept in its encoded form: consumers that
// forward events never decode it, and those that need a key read it with [Data.Get].
type Event struct {
	ID        string    // unique; the JetStream Nats-Msg-Id, so a re-sent event is stored once
	CreatedAt time.Time // when the event happened, sub-second
	Type      string    // <group>.<name>, kebab-case
	Level     Level
	Source    string // the mail server (or other emitter) the event came from
	Data      Data
}

// Group returns the part of the type before the dot ("smtp" for "smtp.ehlo").
func (e *Event) Group() string {
	g, _, _ := strings.Cut(e.Type, ".")
	return g
}

// Subject is the NATS subject the event is published on: events.<group>.<name>.
func (e *Event) Subject() string { return "events." + e.Type }

// Validate reports every problem of a decoded or built event at once.
func (e *Event) Validate() error {
	return errors.Join(e.validateEnvelope(), e.Data.Validate())
}

// validateEnvelope checks every field but Data.
func (e *Event) validateEnvelope() error {
	var errs []error
	if err := ValidateID(e.ID); err != nil {
		errs = append(errs, err)
	}
	if e.CreatedAt.IsZero() {
		errs = append(errs, errors.New("createdAt: missing"))
	}
	if err := ValidateType(e.Type); err != nil {
		errs = append(errs, err)
	}
	if !e.Level.valid() {
		errs = append(errs, fmt.Errorf("level: invalid value %d", e.Level))
	}
	if err := ValidateSource(e.Source); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ValidateID accepts any printable string of 1 to MaxIDLen characters without spaces.
func ValidateID(id string) error {
	switch {
	case id == "":
		return errors.New("id: missing")
	case len(id) > MaxIDLen:
		return fmt.Errorf("id: longer than %d characters", MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c == 0x7f {
			return errors.New("id: only printable characters without spaces are allowed")
		}
	}
	return nil
}

// ValidateType checks the form <group>.<name>: each part starts with a lowercase letter and
// holds lowercase letters, digits and single dashes. Unknown but well-formed types are valid.
func ValidateType(t string) error {
	if t == "" {
		return errors.New("type: missing")
	}
	if len(t) > MaxTypeLen {
		return fmt.Errorf("type: longer than %d characters", MaxTypeLen)
	}
	group, name, ok := strings.Cut(t, ".")
	if !ok || !validTypePart(group) || !validTypePart(name) {
		return fmt.Errorf("type %q: want <group>.<name> in kebab-case, like smtp.connection-start", t)
	}
	return nil
}

func validTypePart(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '-' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && s[i-1] != '-':
		default:
			return false
		}
	}
	return true
}

// ValidateSource accepts an empty source or up to MaxSourceLen printable characters without
// spaces (a host name, usually).
func ValidateSource(s string) error {
	if len(s) > MaxSourceLen {
		return fmt.Errorf("source: longer than %d characters", MaxSourceLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return errors.New("source: only printable characters without spaces are allowed")
		}
		if c := s[i]; c == '*' || c == '>' {
			return errors.New("source: * and > are not allowed (a source names a subject of the log)")
		}
	}
	// Dots separate the tokens of the source's metrics subject: none may be empty.
	if strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return errors.New("source: no leading, trailing or doubled dots (mx1.example.org)")
	}
	return nil
}

// IDs makes unique, lexically sortable event ids (ULIDs). The zero value is not usable; use
// NewIDs. It is safe for concurrent use.
type IDs struct {
	mu      sync.Mutex
	entropy *ulid.MonotonicEntropy
}

// NewIDs returns an id generator drawing on crypto/rand.
func NewIDs() *IDs {
	return &IDs{entropy: ulid.Monotonic(rand.Reader, 0)}
}

// NewIDsFrom returns an id generator drawing on r, for deterministic ids (the simulator).
func NewIDsFrom(r interface{ Read([]byte) (int, error) }) *IDs {
	return &IDs{entropy: ulid.Monotonic(r, 0)}
}

// New returns an id for an event created at t.
func (g *IDs) New(t time.Time) string {
	g.mu.Lock()
	id, err := ulid.New(ulid.Timestamp(t), g.entropy)
	g.mu.Unlock()
	if err != nil {
		// Only when more than 2^80 ids are asked for in one millisecond, or t is
		// before 1970: fall back to a fresh random id rather than fail an event.
		id = ulid.Make()
	}
	return id.String()
}
