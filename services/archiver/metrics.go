package archiver

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/history"
)

// maxSnapshots bounds the snapshots one series request reads.
const maxSnapshots = 200_000

func (s *Service) answerMetrics(ctx context.Context, m *nats.Msg) {
	start := time.Now()
	var req history.MetricsRequest
	var reply history.MetricsReply
	if err := json.Unmarshal(m.Data, &req); err != nil {
		reply.Error = "request: " + err.Error()
	} else {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		// From a little before the range: each producer's last snapshot before it is the
		// base of the first step's deltas.
		snaps, err := s.st.Snapshots(qctx, req.From.Add(-baseLookback(req.Step)), req.To, req.Source, maxSnapshots)
		cancel()
		if err != nil {
			reply.Error = err.Error()
		} else {
			reply.Series = BuildSeries(snaps, req)
		}
	}
	respond(m, reply)
	s.metrics.querySeconds.WithLabelValues("metrics").Observe(time.Since(start).Seconds())
}
