package bus

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrWatchClosed: a KV watcher ended before it delivered the bucket's current values.
var ErrWatchClosed = errors.New("KV watch closed")

// LoadWatch applies every entry a new KV watcher delivers until the bucket's current values
// are in (the watcher's nil marker), so that the caller starts from the bucket's state. On an
// error the watcher is stopped. FollowWatch then applies the changes.
func LoadWatch(ctx context.Context, w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry)) error {
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return ErrWatchClosed
			}
			if e == nil {
				return nil
			}
			apply(e)
		case <-ctx.Done():
			_ = w.Stop()
			return ctx.Err()
		}
	}
}

// FollowWatch applies the changes a KV watcher delivers until ctx ends or the watcher
// closes, then stops it. Run it in a goroutine of its own after LoadWatch.
func FollowWatch(ctx context.Context, w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry)) {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				apply(e)
			}
		case <-ctx.Done():
			return
		}
	}
}
