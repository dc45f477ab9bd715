package event

import (
	_ "embed"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// TypeInfo describes a known event type.
type TypeInfo struct {
	Type        string
	Level       Level  // the default level: Stalwart's for Stalwart's types
	Description string // mailpulse's own short description
	// Legacy marks a type of Stalwart 0.15 that 0.16 no longer has: removed, or renamed
	// (From015 gives the new name). A 0.15 server still sends it.
	Legacy bool
	// Own marks a type that mailpulse emits itself and Stalwart does not have.
	Own bool
}

// catalogueText lists the known types as "type level description" lines under the
// sections [stalwart] (Stalwart 0.16.18's 637 types), [stalwart-0.15] (0.15 types that 0.16
// removed) and [mailpulse] (our own types); see the file's header. Unknown but well-formed
// types are still accepted everywhere, at level info.
//
//go:embed catalogue.txt
var catalogueText string

// Catalogue is the set of known event types. It is immutable once built.
type Catalogue struct {
	byType map[string]TypeInfo
	byProm map[string]string // Stalwart's Prometheus name (smtp_connection_start) -> type
	groups []string
}

var builtin = sync.OnceValue(func() *Catalogue {
	c, err := parseCatalogue(catalogueText, renames015[:])
	if err != nil {
		panic("event: " + err.Error()) // a build error, caught by tests
	}
	return c
})

// parseCatalogue reads the catalogue's text and adds the 0.15 name of every renamed type,
// with the level and description of its 0.16 name.
func parseCatalogue(text string, renames []Rename) (*Catalogue, error) {
	c := &Catalogue{byType: map[string]TypeInfo{}, byProm: map[string]string{}}
	add := func(i TypeInfo) error {
		if err := ValidateType(i.Type); err != nil {
			return err
		}
		if _, dup := c.byType[i.Type]; dup {
			return fmt.Errorf("type %s listed twice", i.Type)
		}
		p := PromName(i.Type)
		if o, dup := c.byProm[p]; dup {
			return fmt.Errorf("types %s and %s have the same Prometheus name %s", o, i.Type, p)
		}
		c.byType[i.Type] = i
		c.byProm[p] = i.Type
		return nil
	}
	section := ""
	for n, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if s, ok := strings.CutPrefix(line, "["); ok {
			section, _ = strings.CutSuffix(s, "]")
			if section != "stalwart" && section != "stalwart-0.15" && section != "mailpulse" {
				return nil, fmt.Errorf("catalogue line %d: unknown section %q", n+1, line)
			}
			continue
		}
		typ, rest, _ := strings.Cut(line, " ")
		lvl, desc, _ := strings.Cut(rest, " ")
		l, err := ParseLevel(lvl)
		if err == nil && desc == "" {
			err = errors.New("no description")
		}
		if err == nil && section == "" {
			err = errors.New("outside a section")
		}
		if err == nil {
			err = add(TypeInfo{Type: typ, Level: l, Description: desc, Legacy: section == "stalwart-0.15", Own: section == "mailpulse"})
		}
		if err != nil {
			return nil, fmt.Errorf("catalogue line %d %q: %w", n+1, line, err)
		}
	}
	for _, r := range renames {
		i, ok := c.byType[r.V016]
		if !ok || i.Legacy || i.Own {
			return nil, fmt.Errorf("rename %s -> %s: %s is not a Stalwart 0.16 type of the catalogue", r.V015, r.V016, r.V016)
		}
		i.Type, i.Legacy = r.V015, true
		if err := add(i); err != nil {
			return nil, fmt.Errorf("rename %s -> %s: %w", r.V015, r.V016, err)
		}
	}
	seen := map[string]bool{}
	for typ := range c.byType {
		g, _, _ := strings.Cut(typ, ".")
		if !seen[g] {
			seen[g] = true
			c.groups = append(c.groups, g)
		}
	}
	sort.Strings(c.groups)
	return c, nil
}

// Known returns the built-in catalogue.
func Known() *Catalogue { return builtin() }

// Lookup returns the information on a known type.
func (c *Catalogue) Lookup(typ string) (TypeInfo, bool) {
	i, ok := c.byType[typ]
	return i, ok
}

// All returns every known type, sorted: Stalwart's, the 0.15 legacy ones and our own (see
// TypeInfo's flags).
func (c *Catalogue) All() []TypeInfo {
	out := make([]TypeInfo, 0, len(c.byType))
	for _, i := range c.byType {
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Type < out[b].Type })
	return out
}

// Groups returns the known groups, sorted.
func (c *Catalogue) Groups() []string { return c.groups }

// FromPromName maps a Stalwart Prometheus metric name (smtp_connection_start) back to the
// event type it counts. A 0.15 name (queue_queue_message) gives the 0.15 type; From015
// gives its 0.16 name.
func (c *Catalogue) FromPromName(name string) (string, bool) {
	t, ok := c.byProm[name]
	return t, ok
}

// DefaultLevel returns a known type's default level, and Info for an unknown one.
func DefaultLevel(typ string) Level {
	if i, ok := builtin().byType[typ]; ok {
		return i.Level
	}
	return Info
}

// PromName is Stalwart's Prometheus name of a metric: every character other than a letter
// or digit becomes an underscore.
func PromName(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}
