package event

import (
	"fmt"
	"strings"
)

// Level orders events by importance: trace < debug < info < warn < error.
type Level uint8

// The levels, in Stalwart's order.
const (
	Trace Level = iota
	Debug
	Info
	Warn
	Error
)

var levelNames = [...]string{"trace", "debug", "info", "warn", "error"}

func (l Level) valid() bool { return int(l) < len(levelNames) }

// String returns the lowercase name used on the wire.
func (l Level) String() string {
	if l.valid() {
		return levelNames[l]
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// ParseLevel accepts the five names in any case, and "warning" for warn.
func ParseLevel(s string) (Level, error) {
	for i, n := range levelNames {
		if strings.EqualFold(s, n) {
			return Level(i), nil
		}
	}
	if strings.EqualFold(s, "warning") {
		return Warn, nil
	}
	return 0, fmt.Errorf("level %q: want one of trace, debug, info, warn, error", s)
}

// MarshalText implements encoding.TextMarshaler.
func (l Level) MarshalText() ([]byte, error) {
	if !l.valid() {
		return nil, fmt.Errorf("invalid level %d", uint8(l))
	}
	return []byte(levelNames[l]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *Level) UnmarshalText(b []byte) error {
	v, err := ParseLevel(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}
