// Package sqlite is the archiver's default store: one SQLite file (pure Go driver
// modernc.org/sqlite, chosen by measurement: see docs/architecture.md), events in one table
// per day so retention drops whole tables, the stream sequence as primary key (idempotent
// writes for free), dictionary ids for types and sources, a hashed term index for keywords
// and key filters, and a span summary table kept as events arrive.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	_ "modernc.org/sqlite" // the driver

	"github.com/mailpulse/mailpulse/services/archiver/store"
)

// Store is the SQLite store.
type Store struct {
	path string
	w    *sql.DB // the one writer connection
	r    *sql.DB // readers

	wmu sync.Mutex // serializes writers (one SQLite writer at a time anyway)

	cmu   sync.RWMutex // guards the caches; never held across a database call
	days  map[int]bool
	dict  map[string]int64 // "t:"+type, "s:"+source -> id
	names map[int64]string // id -> type or source
}

func (s *Store) name(id int64) string {
	s.cmu.RLock()
	defer s.cmu.RUnlock()
	return s.names[id]
}

var _ store.Store = (*Store)(nil)

const pragmas = "_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(OFF)"

// Open opens (creating if needed) the store in the file path.
func Open(ctx context.Context, path string) (*Store, error) {
	// The history holds every event's data: readable by its owner only. SQLite creates
	// its files 0644; creating the file first (and tightening one that exists) keeps it
	// private, and the -wal and -shm files take the main file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+"&_pragma=auto_vacuum(INCREMENTAL)")
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	s := &Store{path: path, w: w, days: map[int]bool{}, dict: map[string]int64{}, names: map[int64]string{}}
	if err := createSchema(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("create schema in %s: %w", path, err)
	}
	if err := checkVersion(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+"&mode=ro")
	if err != nil {
		w.Close()
		return nil, err
	}
	r.SetMaxOpenConns(4)
	s.r = r
	if err := s.load(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) load(ctx context.Context) error {
	rows, err := s.w.QueryContext(ctx, `SELECT id, name FROM dict`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			rows.Close()
			return err
		}
		s.dict[name] = id
		s.names[id] = name[2:]
	}
	rows.Close()
	days, err := s.partitions(ctx, s.w)
	for _, d := range days {
		s.days[d] = true
	}
	return err
}

// SetMaxBytes bounds the file's size (0: no bound). Past it a write fails with SQLite's
// "database or disk is full", as it would on a full disk: the archiver then stores and
// acknowledges nothing until there is room again.
func (s *Store) SetMaxBytes(ctx context.Context, n int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var pageSize int64
	if err := s.w.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize); err != nil {
		return err
	}
	pages := int64(1073741823) // SQLite's maximum
	if n > 0 {
		pages = max(n/pageSize, 1)
	}
	_, err := s.w.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages))
	return err
}

// Close closes the store.
func (s *Store) Close() error {
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	return errors.Join(errs...)
}

// Stats implements store.Store.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	days, err := s.partitions(ctx, s.r)
	if err != nil {
		return store.Stats{}, err
	}
	st := store.Stats{Partitions: len(days)}
	for _, d := range days {
		var n int64
		if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM ev_`+strconv.Itoa(d)).Scan(&n); err == nil {
			st.Events += n
		}
	}
	for _, suffix := range []string{"", "-wal"} {
		if fi, err := os.Stat(s.path + suffix); err == nil {
			st.Bytes += fi.Size()
		}
	}
	return st, nil
}
