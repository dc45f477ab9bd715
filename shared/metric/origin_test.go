package metric

import (
	"maps"
	"testing"
)

func TestOriginPolicyChoosesOneOriginPerSource(t *testing.T) {
	pairs := map[[2]string]bool{
		{"both", OriginEvents}: true, {"both", OriginPrometheus}: true,
		{"events-only", OriginEvents}: true, {"scraped-only", OriginPrometheus}: true,
	}
	for _, tc := range []struct {
		policy string
		want   map[string]string
	}{
		{"", map[string]string{"both": OriginPrometheus, "events-only": OriginEvents, "scraped-only": OriginPrometheus}},
		{"events", map[string]string{"both": OriginEvents, "events-only": OriginEvents, "scraped-only": ""}},
		{"prometheus", map[string]string{"both": OriginPrometheus, "events-only": "", "scraped-only": OriginPrometheus}},
	} {
		p, err := ParseOriginPolicy(tc.policy)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Chosen(pairs); !maps.Equal(got, tc.want) {
			t.Errorf("%q: %v, want %v", tc.policy, got, tc.want)
		}
	}
	var p OriginPolicy
	if err := p.UnmarshalText([]byte("sum")); err == nil {
		t.Error(`policy "sum" accepted: the origins are never added`)
	}
}
