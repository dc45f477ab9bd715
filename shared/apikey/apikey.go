// Package apikey manages mailpulse's API keys: generated with a role, stored only as
// SHA-256 hashes in the KEYS bucket, kept in memory by watching the bucket (so a key
// created or revoked on one replica applies on every one at once), and checked in constant
// time.
//
// A generated key reads mpk_<id>_<secret>: the id finds the stored hash without comparing
// against every key, and the 160-bit secret makes a fast hash safe (a slow password hash
// would cost every ingest request milliseconds). Fixed keys given in the configuration have
// no id and are checked against the few fixed entries.
package apikey

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// Role is what a key may do.
type Role string

// The roles. Admin may do everything; viewer reads streams, history and metrics; ingest
// only sends events.
const (
	Admin  Role = "admin"
	Viewer Role = "viewer"
	Ingest Role = "ingest"
)

// ParseRole validates a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case Admin, Viewer, Ingest:
		return r, nil
	}
	return "", fmt.Errorf("role %q: want admin, viewer or ingest", s)
}

// Key is a stored key: never the key itself.
type Key struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Hash      string    `json:"hash"` // hex SHA-256 of the whole key
	Fixed     bool      `json:"fixed,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

// Limits.
const (
	MaxKeys    = 1000
	maxNameLen = 100
	prefix     = "mpk_"
)

// Errors.
var (
	ErrNotFound = errors.New("key not found")
	ErrTooMany  = fmt.Errorf("more than %d keys", MaxKeys)
	ErrExists   = errors.New("key already exists")
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// Store is the set of keys. Open it with Open; it follows the bucket until ctx ends.
type Store struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu    sync.RWMutex
	byID  map[string]Key
	fixed []Key
	// revoked holds, per key that something waits on, a channel closed when the key is
	// deleted: open streams end at once, on every replica, since each follows the bucket.
	revoked map[string]chan struct{}
}

// Open loads every key and keeps following the bucket until ctx ends.
func Open(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{kv: kv, log: log, byID: map[string]Key{}, revoked: map[string]chan struct{}{}}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch keys: %w", err)
	}
	if err := bus.LoadWatch(ctx, w, s.apply); err != nil {
		return nil, fmt.Errorf("watch keys: %w", err)
	}
	go bus.FollowWatch(ctx, w, s.apply)
	return s, nil
}

func (s *Store) apply(e jetstream.KeyValueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(s.byID, id)
		if ch, ok := s.revoked[id]; ok {
			close(ch)
			delete(s.revoked, id)
		}
	} else {
		var k Key
		if err := json.Unmarshal(e.Value(), &k); err != nil {
			s.log.Warn("ignoring unreadable key entry", "key_id", id, "err", err)
			return
		}
		s.byID[id] = k
	}
	s.fixed = s.fixed[:0]
	for _, k := range s.byID {
		if k.Fixed {
			s.fixed = append(s.fixed, k)
		}
	}
}

func hashOf(plain string) string {
	h := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(h[:])
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(b32.EncodeToString(b))
}

// Errors of Check.
var (
	// ErrUnauthenticated: no key, or one that is not stored (never known, or revoked).
	ErrUnauthenticated = errors.New("missing or invalid API key")
	// ErrForbidden: a valid key whose role does not allow the request.
	ErrForbidden = errors.New("this key's role does not allow the request")
	// ErrInvalidName: a key name that Create refuses.
	ErrInvalidName = errors.New("invalid key name")
)

// Authenticate returns the key plain belongs to, if it is stored and has one of the roles
// (admin always qualifies).
func (s *Store) Authenticate(plain string, roles ...Role) (Key, bool) {
	k, err := s.Check(plain, roles...)
	return k, err == nil
}

// Check returns the key plain belongs to: ErrUnauthenticated when it is not a stored key,
// ErrForbidden when it is one without any of the roles (admin always qualifies; no roles:
// any key). The comparison takes the same time whichever byte differs.
func (s *Store) Check(plain string, roles ...Role) (Key, error) {
	if plain == "" || len(plain) > 512 {
		return Key{}, ErrUnauthenticated
	}
	sum := sha256.Sum256([]byte(plain))
	var candidates []Key
	s.mu.RLock()
	if id, ok := parseID(plain); ok {
		if k, ok := s.byID[id]; ok {
			candidates = append(candidates, k)
		}
	}
	candidates = append(candidates, s.fixed...)
	s.mu.RUnlock()
	for _, k := range candidates {
		want, err := hex.DecodeString(k.Hash)
		if err != nil || subtle.ConstantTimeCompare(sum[:], want) != 1 {
			continue
		}
		if k.Role == Admin || len(roles) == 0 {
			return k, nil
		}
		for _, r := range roles {
			if k.Role == r {
				return k, nil
			}
		}
		return Key{}, fmt.Errorf("%w: a %s key", ErrForbidden, k.Role)
	}
	return Key{}, ErrUnauthenticated
}

func parseID(plain string) (string, bool) {
	rest, ok := strings.CutPrefix(plain, prefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "_")
	return id, ok && id != ""
}

// Create makes a new key with a generated id and returns it in plain text: the only time it
// is ever seen.
func (s *Store) Create(ctx context.Context, name string, role Role) (string, Key, error) {
	return s.create(ctx, randomToken(8), name, role)
}

func (s *Store) create(ctx context.Context, id, name string, role Role) (string, Key, error) {
	if _, err := ParseRole(string(role)); err != nil {
		return "", Key{}, err
	}
	if len(name) > maxNameLen {
		return "", Key{}, fmt.Errorf("%w: longer than %d characters", ErrInvalidName, maxNameLen)
	}
	if len(s.List()) >= MaxKeys {
		return "", Key{}, ErrTooMany
	}
	plain := prefix + id + "_" + randomToken(20)
	k := Key{ID: id, Name: name, Role: role, Hash: hashOf(plain), CreatedAt: time.Now().UTC()}
	b, _ := json.Marshal(k)
	if _, err := s.kv.Create(ctx, id, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return "", Key{}, ErrExists
		}
		return "", Key{}, fmt.Errorf("store key: %w", err)
	}
	s.apply(putEntry{key: id, value: b})
	return plain, k, nil
}

// PutFixed stores a key chosen by the operator (MAILPULSE_ADMIN_KEY) under id, replacing
// the previous fixed key of that id.
func (s *Store) PutFixed(ctx context.Context, id, name string, role Role, plain string) error {
	k := Key{ID: id, Name: name, Role: role, Hash: hashOf(plain), Fixed: true, CreatedAt: time.Now().UTC()}
	if old, ok := s.Get(id); ok && old.Hash == k.Hash && old.Role == role {
		return nil // unchanged; keep the original creation time
	}
	b, _ := json.Marshal(k)
	if _, err := s.kv.Put(ctx, id, b); err != nil {
		return fmt.Errorf("store key %s: %w", id, err)
	}
	s.apply(putEntry{key: id, value: b})
	return nil
}

// Get returns the key with the id.
func (s *Store) Get(id string) (Key, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.byID[id]
	return k, ok
}

// List returns every key, without secrets.
func (s *Store) List() []Key {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Key, 0, len(s.byID))
	for _, k := range s.byID {
		out = append(out, k)
	}
	return out
}

// Revoked returns a channel that is closed when the key is revoked (at once when it is not
// stored now), on this replica or any other.
func (s *Store) Revoked(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byID[id]; !ok {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	ch, ok := s.revoked[id]
	if !ok {
		ch = make(chan struct{})
		s.revoked[id] = ch
	}
	return ch
}

// Revoke deletes a key; it stops working on every replica as soon as they see the change.
func (s *Store) Revoke(ctx context.Context, id string) error {
	if _, ok := s.Get(id); !ok {
		return ErrNotFound
	}
	if err := s.kv.Delete(ctx, id); err != nil {
		return fmt.Errorf("revoke key %s: %w", id, err)
	}
	s.apply(deleteEntry{key: id})
	return nil
}

// Bootstrap makes sure a key of role exists: the fixed one from the configuration when
// given, otherwise a key generated once (under the id "<role>0"), returned in plain text
// so the caller can print it. It returns "" when nothing new was generated. Several
// processes may run it at once: one of them generates the key.
func (s *Store) Bootstrap(ctx context.Context, role Role, fixed string) (string, error) {
	if fixed != "" {
		return "", s.PutFixed(ctx, "config-"+string(role), "from configuration", role, fixed)
	}
	for _, k := range s.List() {
		if k.Role == role && !k.Fixed {
			return "", nil
		}
	}
	plain, _, err := s.create(ctx, string(role)+"0", "generated on first start", role)
	if errors.Is(err, ErrExists) {
		return "", nil
	}
	return plain, err
}

// putEntry and deleteEntry apply a local change at once, before the watcher echoes it, so
// that a key works as soon as Create returns.
type putEntry struct {
	jetstream.KeyValueEntry
	key   string
	value []byte
}

func (e putEntry) Key() string                        { return e.key }
func (e putEntry) Value() []byte                      { return e.value }
func (e putEntry) Operation() jetstream.KeyValueOp    { return jetstream.KeyValuePut }
func (e deleteEntry) Key() string                     { return e.key }
func (e deleteEntry) Operation() jetstream.KeyValueOp { return jetstream.KeyValueDelete }

type deleteEntry struct {
	jetstream.KeyValueEntry
	key string
}
