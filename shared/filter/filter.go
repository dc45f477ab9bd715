// Package filter is the filter language of mailpulse's live streams (and history): event
// types with wildcards, a minimum level, sources, Stalwart's text filter and per-key
// filters, compiled once from a query string and matched against encoded events without
// decoding them. Type patterns become NATS subject filters wherever a subject can express
// them.
package filter

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/event"
)

// Limits on one filter.
const (
	MaxTypes      = 32
	MaxKeyFilters = 16
	MaxValueLen   = 256
	MaxSources    = 16
)

// Filter is a compiled filter. The zero value matches everything. It is immutable and safe
// for concurrent use.
type Filter struct {
	types    []typePattern
	minLevel event.Level
	hasLevel bool
	sources  map[string]bool
	text     string
	keys     []keyFilter
}

type typePattern struct {
	group, name string // each "*", "x", "x*" or "*x"
}

type keyFilter struct {
	key, value string // camelCase key, substring
}

// Reserved are the query parameters with a meaning of their own; every other parameter is a
// key filter.
var Reserved = map[string]bool{"types": true, "type": true, "level": true, "source": true, "filter": true,
	"token": true, "since": true, "metrics": true, "interval": true, "limit": true}

// KeyPrefix names an event key as a parameter whatever its name: data.type= filters on the
// key "type", which type= cannot, since it names the event's types.
const KeyPrefix = "data."

// Parse compiles the filter of a query string: types= (comma list of group.name patterns
// with * wildcards), level= (minimum), source= (comma list), filter= (substring of any string
// value of the event or of its span's start event) and any other parameter, not in extra,
// named after an event key in camelCase or kebab-case (remoteIp=, remote-ip=, or with
// KeyPrefix, data.remoteIp=) as a substring of that key's value. Every problem is reported
// at once.
func Parse(q url.Values, extra ...string) (*Filter, error) {
	f := &Filter{}
	var errs []error
	skip := map[string]bool{}
	for _, e := range extra {
		skip[e] = true
	}
	for name, vals := range q {
		if skip[name] {
			continue
		}
		v := strings.TrimSpace(strings.Join(vals, ","))
		switch name {
		case "types", "type":
			ts, err := ParseTypes(strings.Split(v, ","))
			if err != nil {
				errs = append(errs, flatten(err)...)
			}
			f.types = append(f.types, ts.pats...)
			if len(f.types) > MaxTypes {
				errs = append(errs, fmt.Errorf("types: at most %d patterns", MaxTypes))
			}
		case "level":
			l, err := event.ParseLevel(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("level: %w", err))
				continue
			}
			f.minLevel, f.hasLevel = l, true
		case "source":
			f.sources = map[string]bool{}
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					f.sources[s] = true
				}
			}
			if len(f.sources) > MaxSources {
				errs = append(errs, fmt.Errorf("source: at most %d sources", MaxSources))
			}
		case "filter":
			if len(v) > MaxValueLen {
				errs = append(errs, fmt.Errorf("filter: longer than %d characters", MaxValueLen))
			}
			f.text = v
		default:
			if Reserved[name] {
				continue
			}
			key := event.CamelKey(strings.TrimPrefix(name, KeyPrefix))
			if !event.ValidKey(key) {
				errs = append(errs, fmt.Errorf("parameter %q: not a filter (an event key is camelCase or kebab-case letters and digits)", name))
				continue
			}
			if len(v) > MaxValueLen {
				errs = append(errs, fmt.Errorf("%s: longer than %d characters", name, MaxValueLen))
				continue
			}
			f.keys = append(f.keys, keyFilter{key, v})
		}
	}
	if len(f.keys) > MaxKeyFilters {
		errs = append(errs, fmt.Errorf("at most %d key filters", MaxKeyFilters))
	}
	sort.Slice(f.keys, func(i, j int) bool { return f.keys[i].key < f.keys[j].key })
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return nil, errors.Join(errs...)
	}
	return f, nil
}

func parseType(p string) (typePattern, error) {
	if len(p) > event.MaxTypeLen {
		return typePattern{}, fmt.Errorf("types: pattern longer than %d characters", event.MaxTypeLen)
	}
	if p == "*" || p == ">" {
		return typePattern{"*", "*"}, nil
	}
	g, n, ok := strings.Cut(p, ".")
	if !ok {
		// A bare group ("smtp") means all its types.
		g, n = p, "*"
	}
	if !validPart(g) || !validPart(n) {
		return typePattern{}, fmt.Errorf("types: pattern %q: want group.name where each part is kebab-case, *, prefix* or *suffix (smtp.*, *.connection-start, auth.failed)", p)
	}
	return typePattern{g, n}, nil
}

// validPart accepts "*", a kebab-case token, or one with a single leading or trailing *.
func validPart(s string) bool {
	if s == "*" {
		return true
	}
	core := s
	if strings.HasPrefix(core, "*") {
		core = core[1:]
	} else if strings.HasSuffix(core, "*") {
		core = core[:len(core)-1]
	}
	if core == "" || strings.Contains(core, "*") {
		return false
	}
	for i := 0; i < len(core); i++ {
		c := core[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func matchPart(pattern, s string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(s, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(s, pattern[:len(pattern)-1])
	}
	return pattern == s
}

// ValidPattern checks a type pattern: group.name (or a bare group), each part kebab-case,
// *, prefix* or *suffix.
func ValidPattern(p string) error {
	_, err := parseType(p)
	return err
}

// MatchPattern reports whether typ matches a pattern that ValidPattern accepts.
func MatchPattern(pattern, typ string) bool {
	tp, err := parseType(pattern)
	if err != nil {
		return false
	}
	g, n, _ := strings.Cut(typ, ".")
	return matchPart(tp.group, g) && matchPart(tp.name, n)
}

// Subjects returns NATS subject filters that select at least every event the type patterns
// match (exactly those, when no pattern has a partial wildcard): the filters a JetStream
// consumer can apply on the server.
func (f *Filter) Subjects() []string {
	if len(f.types) == 0 {
		return []string{"events.>"}
	}
	seen := map[string]bool{}
	var out []string
	for _, t := range f.types {
		g, n := t.group, t.name
		if strings.Contains(g, "*") {
			g = "*"
		}
		if strings.Contains(n, "*") {
			n = "*"
		}
		s := "events." + g + "." + n
		if g == "*" && n == "*" {
			return []string{"events.>"}
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	// A subject covered by a wider one in the list is redundant, and JetStream rejects
	// overlapping filter subjects.
	var kept []string
	for _, s := range out {
		covered := false
		for _, o := range out {
			if o != s && subjectCovers(o, s) {
				covered = true
				break
			}
		}
		if !covered {
			kept = append(kept, s)
		}
	}
	sort.Strings(kept)
	return kept
}

func subjectCovers(wide, narrow string) bool {
	w, n := strings.Split(wide, "."), strings.Split(narrow, ".")
	if len(w) != len(n) {
		return false
	}
	for i := range w {
		if w[i] != "*" && w[i] != n[i] {
			return false
		}
	}
	return true
}

// MatchType reports whether an event type passes the type patterns; the cheap test, done
// on the subject before anything reads the event.
func (f *Filter) MatchType(typ string) bool {
	if len(f.types) == 0 {
		return true
	}
	g, n, _ := strings.Cut(typ, ".")
	for _, t := range f.types {
		if matchPart(t.group, g) && matchPart(t.name, n) {
			return true
		}
	}
	return false
}

// HasContentFilter reports whether Match needs more than the type: level, source, text or
// keys.
func (f *Filter) HasContentFilter() bool {
	return f.hasLevel || f.sources != nil || f.text != "" || len(f.keys) > 0
}

// NeedsSpan reports whether the filter looks at span start events (text and key filters
// do, as Stalwart's do).
func (f *Filter) NeedsSpan() bool { return f.text != "" || len(f.keys) > 0 }

// Match reports whether an encoded event passes every part of the filter. spanStart, when
// not nil, is the encoded start event of the event's span: text and key filters also look
// at its values, as Stalwart's do.
func (f *Filter) Match(typ string, raw, spanStart []byte) bool {
	if !f.MatchType(typ) {
		return false
	}
	if !f.HasContentFilter() {
		return true
	}
	return f.matchLevelSource(raw) && f.MatchContent(raw, spanStart)
}

func (f *Filter) matchLevelSource(raw []byte) bool {
	if !f.hasLevel && f.sources == nil {
		return true
	}
	res := gjson.GetManyBytes(raw, "level", "source")
	if f.hasLevel {
		l, err := event.ParseLevel(res[0].Str)
		if err != nil || l < f.minLevel {
			return false
		}
	}
	return f.sources == nil || f.sources[res[1].Str]
}

// MatchContent applies only the text and key filters.
func (f *Filter) MatchContent(raw, spanStart []byte) bool {
	if f.text == "" && len(f.keys) == 0 {
		return true
	}
	data := gjson.GetBytes(raw, "data")
	var span gjson.Result
	if spanStart != nil {
		span = gjson.GetBytes(spanStart, "data")
	}
	for _, k := range f.keys {
		if !containsValue(data.Get(k.key), k.value) && !(span.Exists() && containsValue(span.Get(k.key), k.value)) {
			return false
		}
	}
	if f.text != "" && !anyStringContains(data, f.text) && !(span.Exists() && anyStringContains(span, f.text)) {
		return false
	}
	return true
}

// containsValue: a string (or each string of a list) contains v; numbers and booleans match
// their text exactly.
func containsValue(r gjson.Result, v string) bool {
	switch {
	case !r.Exists():
		return false
	case r.Type == gjson.String:
		return strings.Contains(r.Str, v)
	case r.IsArray():
		found := false
		r.ForEach(func(_, e gjson.Result) bool {
			found = containsValue(e, v)
			return !found
		})
		return found
	case r.Type == gjson.Number, r.Type == gjson.True, r.Type == gjson.False:
		return r.Raw == v
	}
	return false
}

// anyStringContains: Stalwart's filter= matches string, IP, timestamp and boolean values,
// not numbers, lists or nested events.
func anyStringContains(obj gjson.Result, text string) bool {
	found := false
	obj.ForEach(func(_, v gjson.Result) bool {
		switch v.Type {
		case gjson.String:
			found = strings.Contains(v.Str, text)
		case gjson.True, gjson.False:
			found = strings.Contains(v.Raw, text)
		}
		return !found
	})
	return found
}

// String describes the filter for logs.
func (f *Filter) String() string {
	var parts []string
	for _, t := range f.types {
		parts = append(parts, "type="+t.group+"."+t.name)
	}
	if f.hasLevel {
		parts = append(parts, "level>="+f.minLevel.String())
	}
	for s := range f.sources {
		parts = append(parts, "source="+s)
	}
	if f.text != "" {
		parts = append(parts, "filter="+url.QueryEscape(f.text))
	}
	for _, k := range f.keys {
		parts = append(parts, k.key+"="+url.QueryEscape(k.value))
	}
	sort.Strings(parts)
	return strings.Join(parts, "&")
}

// Types is a compiled list of type patterns, for settings such as the archiver's include and
// exclude lists: parsed once at start (a bad pattern is an error then), matched without
// parsing afterwards. The zero value holds no pattern.
type Types struct {
	pats []typePattern
	src  []string
}

// ParseTypes compiles patterns; the error names every bad one.
func ParseTypes(patterns []string) (Types, error) {
	var t Types
	var errs []error
	for _, p := range patterns {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		tp, err := parseType(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.pats = append(t.pats, tp)
		t.src = append(t.src, p)
	}
	return t, errors.Join(errs...)
}

// Empty reports whether the list holds no pattern.
func (t Types) Empty() bool { return len(t.pats) == 0 }

// Match reports whether typ matches one of the patterns.
func (t Types) Match(typ string) bool {
	g, n, _ := strings.Cut(typ, ".")
	for _, p := range t.pats {
		if matchPart(p.group, g) && matchPart(p.name, n) {
			return true
		}
	}
	return false
}

// String is the comma-separated list.
func (t Types) String() string { return strings.Join(t.src, ",") }

// MarshalText writes the comma-separated list.
func (t Types) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText compiles a comma-separated list.
func (t *Types) UnmarshalText(b []byte) error {
	v, err := ParseTypes(strings.Split(string(b), ","))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
