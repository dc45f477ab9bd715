package webhooker

import "time"

// SetClock gives an endpoint store (and the webhookers that use it) another clock: the
// times written in endpoints, the breaker's and the disabling's. Set it before the store
// is used.
func SetClock(e *Endpoints, now func() time.Time) { e.now = now }
