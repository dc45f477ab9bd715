package webhooker_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/bus"
)

var (
	errSignature = errors.New("X-Signature does not match")
	errShape     = errors.New("not Stalwart's shape")
)

// fakeDNS answers names from a table: a resolver, so the guard's own code runs unchanged.
type fakeDNS map[string][]netip.Addr

func (f fakeDNS) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

// gjsonEvents returns the events of a request body of either format.
func gjsonEvents(body []byte) []gjson.Result {
	if e := gjson.GetBytes(body, "events"); e.Exists() {
		return e.Array()
	}
	return gjson.GetBytes(body, "data.events").Array()
}

// recordsIn returns the delivery records a receiver got, all or those about one endpoint.
func recordsIn(rc *receiver, about string) []gjson.Result {
	var out []gjson.Result
	for _, r := range rc.requests() {
		if r.status/100 != 2 {
			continue
		}
		for _, e := range gjsonEvents(r.body) {
			if strings.HasPrefix(e.Get("type").Str, "telemetry.webhook-") && (about == "" || e.Get("data.endpoint").Str == about) {
				out = append(out, e)
			}
		}
	}
	return out
}

func pendingZero(t *testing.T, h *harness, id string) bool {
	c, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(id))
	if err != nil {
		return false
	}
	info, err := c.Info(t.Context())
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, endpoint string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" && l.GetValue() == endpoint {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}
