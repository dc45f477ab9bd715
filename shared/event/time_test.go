package event

import (
	"strings"
	"testing"
	"time"
)

// Issue 9 #3 and #4: createdAt had no bounds. Every distinct day made history partitions,
// and times outside what int64 nanoseconds hold wrapped (year 9999 read back as 1816).
func TestCreatedAtBounds(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	bounded := Defaults{Now: func() time.Time { return now }, IDs: NewIDs(), Source: "mx", MaxFuture: time.Hour, MaxAge: 7 * 24 * time.Hour}
	unbounded := Defaults{Now: func() time.Time { return now }, IDs: NewIDs(), Source: "mx"}
	for _, tt := range []struct {
		name      string
		createdAt string
		bounded   string // "" when accepted, else a part of the error
		unbounded string
	}{
		{"now", "2026-11-21T12:00:00Z", "", ""},
		{"missing: now", "", "", ""},
		{"skew within the bound", "2026-11-21T12:59:59.999Z", "", ""},
		{"just past the skew", "2026-11-21T13:00:00.001Z", "more than 1h ahead", ""},
		{"a week back", "2026-11-14T12:00:00Z", "", ""},
		{"just past the age", "2026-11-14T11:59:59.999Z", "older than 168h", ""},
		{"far future", "2099-01-01T00:00:00Z", "more than 1h ahead", ""},
		{"last representable", "2261-12-31T23:59:59.999999999Z", "more than 1h ahead", ""},
		{"first unrepresentable", "2262-01-01T00:00:00Z", "outside the years 1970 to 2261", "outside the years 1970 to 2261"},
		{"year 9999", "9999-12-31T23:59:59Z", "outside the years 1970 to 2261", "outside the years 1970 to 2261"},
		{"year 1", "0001-01-01T00:00:00Z", "outside the years 1970 to 2261", "outside the years 1970 to 2261"},
		{"before 1970", "1969-12-31T23:59:59Z", "outside the years 1970 to 2261", "outside the years 1970 to 2261"},
		{"1970", "1970-01-01T00:00:00Z", "older than 168h", ""},
		{"offset ahead, same instant", "2026-11-21T13:30:00+01:30", "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"id":"x1","type":"smtp.ehlo"}`
			if tt.createdAt != "" {
				body = `{"id":"x1","type":"smtp.ehlo","createdAt":"` + tt.createdAt + `"}`
			}
			for _, c := range []struct {
				d    *Defaults
				want string
			}{{&bounded, tt.bounded}, {&unbounded, tt.unbounded}} {
				for _, parse := range []struct {
					name string
					fn   func([]byte) (Event, error)
				}{{"Parse", c.d.Parse}, {"ParseStalwart", c.d.ParseStalwart}} {
					e, err := parse.fn([]byte(body))
					switch {
					case c.want == "" && err != nil:
						t.Errorf("%s(%s) bounds %v/%v = %v, want it accepted", parse.name, tt.createdAt, c.d.MaxFuture, c.d.MaxAge, err)
					case c.want == "" && !Representable(e.CreatedAt):
						t.Errorf("%s(%s) = %v: accepted an unrepresentable time", parse.name, tt.createdAt, e.CreatedAt)
					case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
						t.Errorf("%s(%s) bounds %v/%v = %v, want an error saying %q", parse.name, tt.createdAt, c.d.MaxFuture, c.d.MaxAge, err, c.want)
					}
				}
			}
		})
	}
}

// The clock is read at each event, not once: a long-lived Defaults follows time.
func TestCreatedAtBoundsFollowTheClock(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	d := Defaults{Now: func() time.Time { return now }, IDs: NewIDs(), MaxFuture: time.Hour}
	body := []byte(`{"type":"smtp.ehlo","createdAt":"2026-11-21T14:00:00Z"}`)
	if _, err := d.Parse(body); err == nil {
		t.Fatal("Parse accepted an event 2h ahead with a 1h bound")
	}
	now = now.Add(90 * time.Minute)
	if _, err := d.Parse(body); err != nil {
		t.Errorf("Parse 30 min ahead = %v, want it accepted", err)
	}
}

func TestRepresentable(t *testing.T) {
	for _, tt := range []struct {
		t    time.Time
		want bool
	}{
		{time.Unix(0, 0), true},
		{time.Unix(0, -1), false},
		{time.Date(2261, 12, 31, 23, 59, 59, 999999999, time.UTC), true},
		{time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{time.Time{}, false},
	} {
		if got := Representable(tt.t); got != tt.want {
			t.Errorf("Representable(%v) = %v, want %v", tt.t, got, tt.want)
		}
		// What is representable survives int64 nanoseconds unchanged.
		if tt.want && !time.Unix(0, tt.t.UnixNano()).Equal(tt.t) {
			t.Errorf("%v does not survive UnixNano", tt.t)
		}
	}
}
