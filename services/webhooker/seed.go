package webhooker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Endpoints declared in the configuration file are seeded into the WEBHOOKS bucket by every
// process that opens it (OpenEndpoints), so a fresh install comes up with its endpoints and
// a changed file applies at the next start. Seeding is idempotent and safe on replicas
// starting together: an endpoint is created with a KV create (one replica wins, the others
// find it there and compare), and changed only when its definition differs from the file's,
// with a compare-and-set on the revision.
//
// The file is the source of truth for the definitions it declares: an API change to a seeded
// endpoint lasts until the next start, when the file's definition is written back. The
// endpoint's state (paused, disabled) is the API's: the file's paused applies only when the
// endpoint is created. An endpoint removed from the file is not deleted (nothing records that
// the file made it): delete it through the API.

// EndpointSeed is one [[webhooker.endpoints]] table of the configuration file, as the TOML
// parser made it. It is read as the API reads a definition (the same fields, names and
// checks; unknown fields are refused), plus the endpoint's id.
//
// Why a map and not the Endpoint struct: shared/config decodes a setting with mapstructure,
// which knows neither the JSON names nor the durations as text ("1.5s") of Endpoint; and a
// type that reads text would receive an array of tables joined into one string. The map
// keeps the tables as they are, and encoding/json does the rest, as for a request body.
type EndpointSeed map[string]any

// seedDefinition is a definition with the id a seed must give.
type seedDefinition struct {
	ID string `json:"id"`
	definition
}

type seedProblem struct{ key, problem string }

// seeds reads the declared endpoints: each defaulted and checked as the API would, with an
// id and its secrets (used as given: a generated secret could never be shown), every
// problem reported under its table (endpoints[i]).
func (c *Config) seeds() ([]Endpoint, []seedProblem) {
	if len(c.Endpoints) == 0 {
		return nil, nil
	}
	var probs []seedProblem
	if c.MaxEndpoints > 0 && len(c.Endpoints) > c.MaxEndpoints {
		probs = append(probs, seedProblem{"endpoints", fmt.Sprintf("%d endpoints, more than max_endpoints (%d)", len(c.Endpoints), c.MaxEndpoints)})
	}
	g := c.guard(nil)
	seen := map[string]int{}
	defs := make([]Endpoint, 0, len(c.Endpoints))
	for i, raw := range c.Endpoints {
		key := fmt.Sprintf("endpoints[%d]", i)
		bad := func(err error) {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				probs = append(probs, seedProblem{key, err.Error()})
				return
			}
			for _, p := range ve.Problems {
				probs = append(probs, seedProblem{key, p})
			}
		}
		ep, err := decodeSeed(raw)
		if err != nil {
			bad(err)
			continue
		}
		var own []string
		if ep.ID == "" {
			own = append(own, "id: required (1 to 64 lowercase letters, digits or hyphens): the endpoint's identity across starts")
		} else if j, dup := seen[ep.ID]; dup {
			own = append(own, fmt.Sprintf("id %q: endpoints[%d] has it too", ep.ID, j))
		} else {
			seen[ep.ID] = i
		}
		if len(ep.Secrets) == 0 {
			own = append(own, "secret: required in the configuration file (a generated secret could never be shown)")
		}
		ep.setDefaults()
		_, err = ep.compile(g)
		var ve *ValidationError
		if errors.As(err, &ve) {
			for _, p := range ve.Problems {
				if ep.ID == "" && strings.HasPrefix(p, "id: ") {
					continue // said above
				}
				own = append(own, strings.Replace(p, " (omit it to have one generated)", "", 1))
			}
		}
		for _, p := range own {
			probs = append(probs, seedProblem{key, p})
		}
		if len(own) == 0 {
			defs = append(defs, ep)
		}
	}
	return defs, probs
}

// decodeSeed reads a table as a definition with an id.
func decodeSeed(raw EndpointSeed) (Endpoint, error) {
	b, err := json.Marshal(map[string]any(raw))
	if err != nil {
		return Endpoint{}, &ValidationError{Problems: []string{"not representable as JSON: " + err.Error()}}
	}
	var d seedDefinition
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return Endpoint{}, &ValidationError{Problems: []string{describeJSONError(err)}}
	}
	ep, err := d.endpoint()
	if err != nil {
		return Endpoint{}, err
	}
	ep.ID = d.ID
	return ep, nil
}

// seed creates or updates each declared endpoint.
func (s *Endpoints) seed(ctx context.Context, defs []Endpoint) error {
	var errs []error
	for _, def := range defs {
		if err := s.seedOne(ctx, def); err != nil {
			errs = append(errs, fmt.Errorf("seed webhook endpoint %s: %w", def.ID, err))
		}
	}
	return errors.Join(errs...)
}

// seedOne writes def unless the bucket holds it already: created if absent, its definition
// replaced if different (id, creation time and state kept), left alone otherwise.
func (s *Endpoints) seedOne(ctx context.Context, def Endpoint) error {
	for range 5 {
		e, err := s.kv.Get(ctx, def.ID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			s.mu.RLock()
			n := len(s.byID)
			s.mu.RUnlock()
			if n >= s.max {
				return fmt.Errorf("%w: at most %d", ErrTooMany, s.max)
			}
			ep := def
			ep.Disabled, ep.DisabledReason, ep.DisabledAt = false, "", nil
			ep.CreatedAt = s.now().UTC()
			ep.UpdatedAt = ep.CreatedAt
			b, err := json.Marshal(ep)
			if err != nil {
				return err
			}
			rev, err := s.kv.Create(ctx, ep.ID, b)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another replica seeded it a moment ago: compare with theirs
			}
			if err != nil {
				return fmt.Errorf("store: %w", err)
			}
			s.apply(ep.ID, jetstream.KeyValuePut, b, rev)
			s.log.Info("webhook endpoint seeded from the configuration", "endpoint", ep.ID)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		var cur Endpoint
		if err := json.Unmarshal(e.Value(), &cur); err != nil {
			cur = Endpoint{ID: def.ID, CreatedAt: s.now().UTC()} // unreadable: the file's definition replaces it
		}
		wb, same, err := seeded(cur, def, s.now().UTC())
		if err != nil {
			return err
		}
		if same {
			return nil // as declared already
		}
		rev, err := s.kv.Update(ctx, def.ID, wb, e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		s.apply(def.ID, jetstream.KeyValuePut, wb, rev)
		s.log.Info("webhook endpoint updated from the configuration", "endpoint", def.ID)
		return nil
	}
	return ErrConflict
}

// seeded is cur with the definition def declares: every field a definition sets (the API's
// definition type, paused excepted) is def's, every other one (id, times, state, health)
// stays cur's, so that fields added later on either side are treated right without a list
// here. same reports that nothing changes; otherwise b is the endpoint to write, updated
// at now.
func seeded(cur, def Endpoint, now time.Time) (b []byte, same bool, err error) {
	cm, err := fieldsOf(cur)
	if err != nil {
		return nil, false, err
	}
	dm, err := fieldsOf(def)
	if err != nil {
		return nil, false, err
	}
	defined := definitionFields()
	for k := range dm {
		if !defined[k] {
			delete(dm, k)
		}
	}
	for k, v := range cm {
		if !defined[k] {
			dm[k] = v
		}
	}
	wb, err := json.Marshal(dm)
	if err != nil {
		return nil, false, err
	}
	cb, err := json.Marshal(cm)
	if err != nil {
		return nil, false, err
	}
	if bytes.Equal(wb, cb) {
		return nil, true, nil
	}
	dm["updatedAt"], _ = json.Marshal(now)
	b, err = json.Marshal(dm)
	return b, false, err
}

func fieldsOf(ep Endpoint) (map[string]json.RawMessage, error) {
	b, err := json.Marshal(ep)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	return m, json.Unmarshal(b, &m)
}

// definitionFields are the JSON names of the fields a definition sets, but paused: the
// state is the API's once the endpoint exists.
func definitionFields() map[string]bool {
	out := map[string]bool{}
	t := reflect.TypeOf(definition{})
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" && name != "paused" {
			out[name] = true
		}
	}
	return out
}
