package bus_test

import (
	"context"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// TestLoadThenFollowAWatch: LoadWatch returns once the bucket's current values are applied;
// FollowWatch applies later changes, deletions included, and ends with its context.
func TestLoadThenFollowAWatch(t *testing.T) {
	s := brokertest.Start(t)
	js, err := jetstream.New(s.Conn())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "WATCHED"})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if _, err := kv.Put(t.Context(), k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	held := map[string]bool{}
	apply := func(e jetstream.KeyValueEntry) {
		mu.Lock()
		defer mu.Unlock()
		held[e.Key()] = e.Operation() == jetstream.KeyValuePut
	}
	has := func(k string) bool { mu.Lock(); defer mu.Unlock(); return held[k] }
	ctx, cancel := context.WithCancel(t.Context())
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.LoadWatch(ctx, w, apply); err != nil || !has("a") || !has("b") {
		t.Fatalf("LoadWatch = %v; held %v, want a and b", err, held)
	}
	done := make(chan struct{})
	go func() { bus.FollowWatch(ctx, w, apply); close(done) }()
	if _, err := kv.Put(t.Context(), "c", []byte("c")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the change and the deletion to be applied", func() bool { return has("c") && !has("a") })
	cancel()
	<-done
}
