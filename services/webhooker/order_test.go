package webhooker_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// TestTwoReplicasKeepTheLogOrder: with two replicas on one endpoint, events trickling in
// (batches smaller than the batch size) used to be split between the replicas' pulls and
// arrive out of order. One replica at a time is pinned to the endpoint's consumer: the order
// is the log's.
func TestTwoReplicasKeepTheLogOrder(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		wait := webhooker.Duration(20 * time.Millisecond)
		e.Batch = webhooker.Batch{MaxEvents: 10, MaxWait: &wait}
	})
	h.waitConsumer(ep.ID)
	var ids []string
	for i := range 30 { // one at a time: every batch is partial
		ids = append(ids, h.publish(1, "auth.failed", fmt.Sprintf("e%02d", i))...)
	}
	poll.Until(t, "every event delivered", func() bool { return rc.hasAll(ids) })
	if got := rc.ids(); !slices.Equal(got, ids) {
		t.Errorf("received %v, want the log's order %v", got, ids)
	}
}
