package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A partition that retention dropped after a query listed it reads as empty; any other
// failure on a partition that exists is an error.
func TestQueryRangeOnDroppedPartition(t *testing.T) {
	s := openTest(t)
	at := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	day := dayOf(at)
	rec := store.Record{Seq: 1, Event: event.Event{ID: "id-1", CreatedAt: at, Type: "smtp.connection-start", Source: "mx1", Data: event.Data(`{"spanId":"s1"}`)}}
	if err := s.Write(t.Context(), []store.Record{rec}); err != nil {
		t.Fatal(err)
	}
	q := &history.Query{}
	terms := []int64{store.KeywordTerm("mx1")}
	for _, tt := range []struct {
		name  string
		terms []int64
	}{{"scan", nil}, {"terms", terms}} {
		rows, err := s.queryRange(t.Context(), day, q, nil, nil, nil, 10, tt.terms, 0, 86399)
		if err != nil || (tt.terms == nil && len(rows) != 1) {
			t.Fatalf("%s: queryRange(existing day) = %d rows, %v; want the stored row, nil", tt.name, len(rows), err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := s.queryRange(ctx, day, q, nil, nil, nil, 10, tt.terms, 0, 86399); err == nil {
			t.Errorf("%s: queryRange(cancelled context) = nil error, want an error", tt.name)
		}
	}
	if n, err := s.DropBefore(t.Context(), at.Add(48*time.Hour)); err != nil || n != 1 {
		t.Fatalf("DropBefore = %d, %v; want 1, nil", n, err)
	}
	for _, tt := range []struct {
		name  string
		terms []int64
	}{{"scan", nil}, {"terms", terms}} {
		rows, err := s.queryRange(t.Context(), day, q, nil, nil, nil, 10, tt.terms, 0, 86399)
		if err != nil || len(rows) != 0 {
			t.Errorf("%s: queryRange(dropped day) = %d rows, %v; want 0, nil", tt.name, len(rows), err)
		}
	}
}

func TestMissing(t *testing.T) {
	s := openTest(t)
	ctx := t.Context()
	if err := s.Write(ctx, []store.Record{{Seq: 1, Event: event.Event{ID: "id-1", CreatedAt: time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC), Type: "auth.failed", Source: "mx1"}}}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		tables []string
		want   bool
	}{
		{"both exist", []string{"ev_20261120", "terms_20261120"}, false},
		{"one missing", []string{"ev_20261120", "terms_20261121"}, true},
		{"none", []string{"ev_20261121"}, true},
		{"an index is not a table", []string{"ev_20261120_ts"}, true},
	} {
		if got := missing(ctx, s.r, tt.tables...); got != tt.want {
			t.Errorf("%s: missing(%q) = %v, want %v", tt.name, tt.tables, got, tt.want)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if missing(cancelled, s.r, "ev_20261121") {
		t.Error("missing(cancelled context) = true, want false: an unverifiable check must not hide the caller's error")
	}
}

// The history file and its journal are private to their owner (issue 9: it was 0644).
func TestHistoryFileIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.db")
	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			continue // no journal yet
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
}
