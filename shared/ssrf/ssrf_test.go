package ssrf_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// fakeDNS answers every name from a table: a real resolver's interface, so the guard's own
// code runs unchanged.
type fakeDNS map[string][]netip.Addr

func (f fakeDNS) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestCheckRefusesInternalRanges(t *testing.T) {
	g := ssrf.New(ssrf.Options{})
	for _, tc := range []struct {
		addr string
		want string // "" when allowed
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.0.9", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"192.168.1.1", "private"},
		{"fd12::1", "private"},
		{"169.254.169.254", "metadata"},
		{"fd00:ec2::254", "metadata"},
		{"169.254.1.1", "link-local"},
		{"fe80::1", "link-local"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"100.64.0.1", "carrier-grade"},
		{"255.255.255.255", "broadcast"},
		{"64:ff9b::a00:1", "NAT64"},
		{"93.184.215.14", ""},
		{"2606:4700::1111", ""},
	} {
		err := g.Check(netip.MustParseAddr(tc.addr))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Check(%s) = %v, want allowed", tc.addr, err)
		case tc.want != "" && !errors.Is(err, ssrf.ErrBlockedAddress):
			t.Errorf("Check(%s) = %v, want ErrBlockedAddress", tc.addr, err)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("Check(%s) = %v, want the reason to say %q", tc.addr, err, tc.want)
		}
	}
}

func TestAllowNetworksOpensARange(t *testing.T) {
	allow, err := ssrf.ParseNetworks("127.0.0.0/8, fd00::/8,10.0.0.7")
	if err != nil {
		t.Fatal(err)
	}
	g := ssrf.New(ssrf.Options{Allow: allow})
	for _, a := range []string{"127.0.0.1", "fd00:ec2::254", "10.0.0.7"} {
		if err := g.Check(netip.MustParseAddr(a)); err != nil {
			t.Errorf("Check(%s) = %v with it allowed", a, err)
		}
	}
	if err := g.Check(netip.MustParseAddr("10.0.0.8")); !errors.Is(err, ssrf.ErrBlockedAddress) {
		t.Errorf("Check(10.0.0.8) = %v, want blocked (only 10.0.0.7 allowed)", err)
	}
}

func TestParseNetworksNamesEveryBadEntry(t *testing.T) {
	_, err := ssrf.ParseNetworks("10.0.0.0/8,nope,300.1.1.1/8")
	if err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), `"300.1.1.1/8"`) {
		t.Fatalf("ParseNetworks = %v, want both bad entries named", err)
	}
	var n ssrf.Networks
	if err := n.UnmarshalText([]byte("192.168.0.0/16,::1")); err != nil {
		t.Fatal(err)
	}
	if b, _ := n.MarshalText(); string(b) != "192.168.0.0/16,::1/128" {
		t.Errorf("MarshalText = %s", b)
	}
}

// TestClientRefusesInternalDestinations sends real requests through a guarded client to a
// real server listening on loopback: each is refused before a connection is made.
func TestClientRefusesInternalDestinations(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	dns := fakeDNS{
		"internal.example": {netip.MustParseAddr("10.0.0.5")},
		"mixed.example":    {netip.MustParseAddr("93.184.215.14"), netip.MustParseAddr("127.0.0.1")},
		"localhost":        {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
	}
	c := ssrf.New(ssrf.Options{Resolver: dns}).Client()
	defer c.CloseIdleConnections()
	for _, u := range []string{
		"http://127.0.0.1:" + port + "/",
		"http://169.254.169.254/latest/meta-data/",
		"http://[::1]:" + port + "/",
		"http://[fd00:ec2::254]/",
		"http://2130706433:" + port + "/", // 127.0.0.1 as one decimal number
		"http://0x7f.1:" + port + "/",
		"http://localhost:" + port + "/",
		"http://internal.example/",
		"http://mixed.example/",
	} {
		resp, err := c.Get(u)
		if err == nil {
			resp.Body.Close()
			t.Errorf("GET %s succeeded, want it refused", u)
			continue
		}
		if !ssrf.IsBlocked(err) {
			t.Errorf("GET %s = %v, want ErrBlockedAddress", u, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the loopback server got %d requests, want none", n)
	}
}

func TestClientReachesAllowedNetworkAndFollowsNoRedirect(t *testing.T) {
	final := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer final.Close()
	redirect := httptest.NewServer(http.RedirectHandler(final.URL, http.StatusFound))
	defer redirect.Close()
	t.Setenv("HTTP_PROXY", "http://192.0.2.1:3128") // must be ignored
	t.Setenv("http_proxy", "http://192.0.2.1:3128")
	allow, _ := ssrf.ParseNetworks("127.0.0.0/8")
	c := ssrf.New(ssrf.Options{Allow: allow}).Client()
	defer c.CloseIdleConnections()
	resp, err := c.Get(final.URL)
	if err != nil {
		t.Fatalf("GET allowed loopback: %v", err)
	}
	resp.Body.Close()
	resp, err = c.Get(redirect.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Errorf("status = %d, want the 302 itself (no redirect followed)", resp.StatusCode)
	}
}

func TestCheckHost(t *testing.T) {
	g := ssrf.New(ssrf.Options{})
	for host, blocked := range map[string]bool{
		"2130706433": true, "0177.0.0.1": true, "127.1": true, "0x7f000001": true, "[::1]": true,
		"example.org": false, "8.8.8.8": false, "1password.com": false, "123.example": false,
	} {
		if err := g.CheckHost(host); (err != nil) != blocked {
			t.Errorf("CheckHost(%q) = %v, want blocked=%v", host, err, blocked)
		}
	}
}
