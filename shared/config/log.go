package config

import (
	"io"
	"log/slog"
)

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// Logger returns the logger the configuration asks for, writing to w.
func (c *Process) Logger(w io.Writer) *slog.Logger {
	level, _ := parseLogLevel(c.LogLevel) // validated by Load
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
