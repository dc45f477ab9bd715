package metric

import (
	"fmt"
	"strings"
)

// OriginPolicy chooses which origin's metrics stand for a source. A server that is both
// scraped and sends its events has every counter twice, once per origin: adding the two
// would double every figure, so each source is shown from one origin only.
type OriginPolicy string

// The policies.
const (
	// PreferPrometheus (the default) shows a source from its scraped metrics when it has
	// any, since they are the mail server's own numbers, and from its events otherwise.
	PreferPrometheus OriginPolicy = "auto"
	OnlyEvents       OriginPolicy = "events"     // events only; scraped metrics are ignored
	OnlyPrometheus   OriginPolicy = "prometheus" // scraped metrics only
)

// ParseOriginPolicy reads a policy; "" is the default.
func ParseOriginPolicy(s string) (OriginPolicy, error) {
	switch p := OriginPolicy(strings.TrimSpace(s)); p {
	case "":
		return PreferPrometheus, nil
	case PreferPrometheus, OnlyEvents, OnlyPrometheus:
		return p, nil
	}
	return "", fmt.Errorf("origin %q: want auto, events or prometheus", s)
}

// UnmarshalText lets configuration files and flags name a policy.
func (p *OriginPolicy) UnmarshalText(b []byte) error {
	v, err := ParseOriginPolicy(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Pick returns the origin that stands for a source which has metrics of the given origins,
// or "" when none may.
func (p OriginPolicy) Pick(has func(origin string) bool) string {
	switch p {
	case OnlyEvents:
		if has(OriginEvents) {
			return OriginEvents
		}
	case OnlyPrometheus:
		if has(OriginPrometheus) {
			return OriginPrometheus
		}
	default:
		if has(OriginPrometheus) {
			return OriginPrometheus
		}
		if has(OriginEvents) {
			return OriginEvents
		}
	}
	return ""
}

// Chosen returns, for every source, the origin that stands for it among the (source,
// origin) pairs given.
func (p OriginPolicy) Chosen(pairs map[[2]string]bool) map[string]string {
	out := map[string]string{}
	for pair := range pairs {
		src := pair[0]
		if _, done := out[src]; done {
			continue
		}
		out[src] = p.Pick(func(o string) bool { return pairs[[2]string{src, o}] })
	}
	return out
}
