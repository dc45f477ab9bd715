// Package ssrf keeps outbound HTTP requests made on behalf of users (webhooks, later the
// tracers that post to collectors) away from the network they run in: loopback, private,
// link-local, cloud metadata, multicast and unspecified addresses are refused unless an
// operator allows a network explicitly.
//
// The check happens where it cannot be dodged: in the dialer. The host is resolved at
// connection time, every address it resolves to is checked (one bad address refuses the
// whole name, so a name that mixes a public and a private address cannot be used to reach
// the private one), and the connection is made to an address that was checked, never to the
// name again, so a DNS answer that changes between the check and the connect (rebinding)
// does not matter. A Control hook checks the socket's address once more just before
// connect. Clients built here follow no redirects and ignore proxy environment variables.
package ssrf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrBlockedAddress: the destination is, or resolves to, an address in a refused range. It
// is a permanent failure: trying again reaches the same address.
var ErrBlockedAddress = errors.New("destination address not allowed")

// Resolver resolves host names; *net.Resolver is one. Tests give their own to make a name
// resolve to a private address.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Guard decides which addresses may be connected to. It is immutable and safe for
// concurrent use.
type Guard struct {
	allow    []netip.Prefix
	resolver Resolver
	dialer   net.Dialer
}

// Options configure a Guard. Zero fields take the defaults.
type Options struct {
	// Allow lists networks that are reachable even though they are in a refused range (a
	// compose network, a test's loopback receiver).
	Allow []netip.Prefix
	// Resolver resolves host names (net.DefaultResolver).
	Resolver Resolver
	// DialTimeout bounds one TCP connect (10 s); the request's context bounds the rest.
	DialTimeout time.Duration
}

// New returns a Guard.
func New(o Options) *Guard {
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	g := &Guard{allow: append([]netip.Prefix(nil), o.Allow...), resolver: o.Resolver}
	g.dialer = net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second, Control: g.control}
	return g
}

// blocked are the ranges refused besides those netip.Addr classifies itself (loopback,
// private, link-local, multicast, unspecified).
var blocked = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "a 'this network' address"},
	{netip.MustParsePrefix("100.64.0.0/10"), "a shared (carrier-grade NAT) address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol assignment address"},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved or broadcast address"},
	// NAT64 and 6to4 embed an IPv4 address that may be an internal one.
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "a NAT64 address"},
	{netip.MustParsePrefix("2002::/16"), "a 6to4 address"},
}

// metadata are the cloud instance-metadata addresses, named so the reason is plain.
var metadata = map[netip.Addr]bool{
	netip.MustParseAddr("169.254.169.254"): true, // AWS, GCP, Azure, OpenStack…
	netip.MustParseAddr("fd00:ec2::254"):   true, // AWS over IPv6
	netip.MustParseAddr("100.100.100.200"): true, // Alibaba Cloud
}

// Check returns nil when a may be connected to, or an error wrapping ErrBlockedAddress that
// says why not.
func (g *Guard) Check(a netip.Addr) error {
	a = a.Unmap() // ::ffff:127.0.0.1 is 127.0.0.1
	for _, p := range g.allow {
		if p.Contains(a) {
			return nil
		}
	}
	var what string
	switch {
	case !a.IsValid():
		what = "not an address"
	case metadata[a]:
		what = "a cloud metadata address"
	case a.IsLoopback():
		what = "a loopback address"
	case a.IsPrivate():
		what = "a private address"
	case a.IsLinkLocalUnicast():
		what = "a link-local address"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		what = "a multicast address"
	case a.IsUnspecified():
		what = "an unspecified address"
	default:
		for _, b := range blocked {
			if b.prefix.Contains(a) {
				what = b.what
				break
			}
		}
	}
	if what == "" {
		return nil
	}
	return fmt.Errorf("%w: %s is %s (allow its network in allow_networks to reach it)", ErrBlockedAddress, a, what)
}

// CheckHost checks a URL's host without resolving it: an IP literal is checked, and a host
// written as a number in a form other than a dotted quad or an IPv6 literal (2130706433,
// 0x7f.1, 0177.0.0.1, 127.1), which resolvers read as an IP in ways that differ between
// libraries, is refused. A name is left to the dialer, which checks what it resolves to
// at connection time. Endpoint validation uses it to refuse what is bound to fail.
func (g *Guard) CheckHost(host string) error {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(host); err == nil {
		return g.Check(a)
	}
	if numericLooking(host) {
		return fmt.Errorf("%w: host %q is a number, not a name or a dotted IPv4 address", ErrBlockedAddress, host)
	}
	return nil
}

// numericLooking reports whether every label of host is a decimal, octal or hex number:
// what inet_aton accepts as an IPv4 address in its short and non-decimal forms.
func numericLooking(host string) bool {
	host = strings.TrimSuffix(host, ".")
	if host == "" {
		return false
	}
	for _, label := range strings.Split(host, ".") {
		l := strings.ToLower(label)
		if strings.HasPrefix(l, "0x") {
			l = l[2:]
			if l == "" {
				return false
			}
			for _, c := range l {
				if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
					return false
				}
			}
			continue
		}
		if l == "" {
			return false
		}
		for _, c := range l {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// DialContext resolves addr's host, checks every address, and connects to the first
// checked address that answers. It is an http.Transport's DialContext.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if err := g.CheckHost(host); err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		addrs, err = g.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("resolve %s: no addresses", host)
		}
	}
	for _, a := range addrs {
		if err := g.Check(a); err != nil {
			return nil, fmt.Errorf("%s resolves to %s: %w", host, a.Unmap(), err)
		}
	}
	var errs []error
	for _, a := range addrs {
		c, err := g.dialer.DialContext(ctx, network, net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// control checks the address the socket is about to connect to: the last word, whatever
// path the connection took to get here.
func (g *Guard) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot read the address %q", ErrBlockedAddress, address)
	}
	return g.Check(ap.Addr())
}

// Transport returns an http.Transport that dials through the guard and ignores proxy
// settings (a proxy would make the connection on our behalf, past the check). Each caller
// gets its own, so idle connections of one user are never shared with another's.
func (g *Guard) Transport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           g.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// Client returns an http.Client on Transport that never follows a redirect: the 3xx
// response is returned as it is, so a redirect cannot lead a request past the guard's
// decision about the URL it was given (the dialer would check the new address anyway, but
// the request, its body and its signature were meant for the first URL).
func (g *Guard) Client() *http.Client {
	return &http.Client{
		Transport:     g.Transport(),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// IsBlocked reports whether err (from a request through a guarded client) is a refusal.
func IsBlocked(err error) bool {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return errors.Is(err, ErrBlockedAddress)
}

// Networks is a list of networks in CIDR notation, as settings give it (a comma-separated
// list or a TOML array): "10.0.0.0/8,fd00::/8". A bare address is a network of one.
type Networks []netip.Prefix

// ParseNetworks parses a comma-separated list; the error names every bad entry.
func ParseNetworks(s string) (Networks, error) {
	var out Networks
	var errs []error
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if p, err := netip.ParsePrefix(part); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(part); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		errs = append(errs, fmt.Errorf("%q: not a network in CIDR notation (10.0.0.0/8, fd00::/8) or an address", part))
	}
	return out, errors.Join(errs...)
}

// UnmarshalText parses a comma-separated list.
func (n *Networks) UnmarshalText(b []byte) error {
	v, err := ParseNetworks(string(b))
	if err != nil {
		return err
	}
	*n = v
	return nil
}

// MarshalText writes the comma-separated list.
func (n Networks) MarshalText() ([]byte, error) {
	parts := make([]string, len(n))
	for i, p := range n {
		parts[i] = p.String()
	}
	return []byte(strings.Join(parts, ",")), nil
}
