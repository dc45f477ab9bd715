package webhooker

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The retry schedule lives in JetStream, not in memory: a failed batch is handed back with
// NakWithDelay, so the server holds it until its next attempt, and the attempt number is
// the delivery count JetStream keeps for each message (its metadata's NumDelivered). A
// restarted webhooker, or another replica, therefore continues the schedule where it was.
// The time a batch has been retried is computed from that count (the sum of the nominal
// delays before it), not from a clock kept in memory; a crash between attempts (an ack
// wait expiry, which counts as a delivery) only makes it look older. An open circuit
// breaker can hold a batch longer than its nominal delay (until the probe, breaker.go) and
// so make it look younger than it is. With the default policies it never does (the delay
// after the 5th attempt, when the breaker opens, is 80 s to its 30 s, and both double),
// and an endpoint failing all along is disabled after disableAfter, whatever its batches'
// age.

// maxRetryAfter bounds how long a Retry-After can hold an endpoint's deliveries.
const maxRetryAfter = 24 * time.Hour

// nominal is the delay before attempt k+1, after k failed attempts, without jitter.
func (r Retry) nominal(k int) time.Duration {
	if k < 1 {
		k = 1
	}
	if n := len(r.Schedule); n > 0 {
		return r.Schedule[min(k-1, n-1)].D()
	}
	d := r.Initial.D()
	for i := 1; i < k && d < r.Max.D(); i++ {
		d *= 2
	}
	return min(d, r.Max.D())
}

// elapsed is how long the schedule has run before attempt k: the nominal delays of the
// attempts before it. It stops counting past MaxAge, which is all callers compare it with.
func (r Retry) elapsed(k int) time.Duration {
	var sum time.Duration
	for i := 1; i < k && sum <= r.MaxAge.D(); i++ {
		sum += r.nominal(i)
	}
	return sum
}

// giveUp reports whether a batch whose attempt k just failed, and would next be tried
// after next, has had its chances: k reached MaxAttempts, or the next attempt would come
// after MaxAge.
func (r Retry) giveUp(k int, next time.Duration) bool {
	if r.MaxAttempts > 0 && k >= r.MaxAttempts {
		return true
	}
	return r.elapsed(k)+next > r.MaxAge.D()
}

// jitter spreads d by ±20 %, so that endpoints that failed together do not retry together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}

// retryAfter reads a Retry-After header: seconds or an HTTP date, bounded to a day.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		d = time.Duration(min(n, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = max(t.Sub(now), 0)
	} else {
		return 0, false
	}
	return min(d, maxRetryAfter), true
}
