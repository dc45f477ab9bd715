package producer

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
)

// Simulator makes realistic mail-server traffic: interleaved sessions with spans (inbound
// SMTP, outbound delivery attempts, IMAP, POP3 and JMAP logins and activity), brute-force
// bursts from one address, spam and ham verdicts, queue growth and occasional errors. The
// same seed and clock give the same events, ids included. It is not safe for concurrent
// use.
type Simulator struct {
	rng    *rand.Rand
	ids    *event.IDs
	now    func() time.Time
	source string

	active  []*simSession
	spanSeq uint64
	queueID uint64
	b       event.Builder

	ips      []string
	accounts []string
	senders  []string
	remotes  []string
}

type simSession struct {
	events []simEvent
}

type simEvent struct {
	typ  string
	data event.Data
}

// maxActiveSessions is how many sessions interleave at once.
const maxActiveSessions = 48

// NewSimulator returns a simulator. now may be nil for the wall clock.
func NewSimulator(seed int64, source string, now func() time.Time) *Simulator {
	if now == nil {
		now = time.Now
	}
	var key [32]byte
	copy(key[:], strconv.FormatInt(seed, 16))
	src := rand.NewChaCha8(key)
	s := &Simulator{
		rng:    rand.New(src),
		ids:    event.NewIDsFrom(rand.NewChaCha8([32]byte(append(key[:31:31], 'i')))),
		now:    now,
		source: source,
	}
	for i := range 160 {
		switch {
		case i < 60:
			s.ips = append(s.ips, fmt.Sprintf("203.0.113.%d", i+1))
		case i < 110:
			s.ips = append(s.ips, fmt.Sprintf("198.51.100.%d", i-59))
		case i < 140:
			s.ips = append(s.ips, fmt.Sprintf("192.0.2.%d", i-109))
		default:
			s.ips = append(s.ips, fmt.Sprintf("2001:db8::%x", i))
		}
	}
	for _, n := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "postmaster"} {
		s.accounts = append(s.accounts, n+"@example.org")
	}
	s.senders = []string{"newsletter@shop.example.com", "noreply@bank.example.net", "friend@mail.example.com", "support@vendor.example", "jobs@careers.example.net", "offers@deals.example.biz", "team@project.example.org", "billing@saas.example.io"}
	s.remotes = []string{"example.com", "example.net", "mail.example.io", "corp.example", "example.biz", "gmail.example", "outlook.example"}
	return s
}

// Next returns the next event.
func (s *Simulator) Next() event.Event {
	for len(s.active) == 0 || (len(s.active) < maxActiveSessions && s.rng.IntN(4) == 0) {
		s.active = append(s.active, s.newSession())
	}
	i := s.rng.IntN(len(s.active))
	if s.rng.IntN(3) == 0 {
		i = 0 // favour the oldest session, so sessions end
	}
	sess := s.active[i]
	ev := sess.events[0]
	sess.events = sess.events[1:]
	if len(sess.events) == 0 {
		s.active[i] = s.active[len(s.active)-1]
		s.active = s.active[:len(s.active)-1]
	}
	now := s.now().UTC()
	return event.Event{
		ID:        s.ids.New(now),
		CreatedAt: now,
		Type:      ev.typ,
		Level:     event.DefaultLevel(ev.typ),
		Source:    s.source,
		Data:      ev.data,
	}
}

func (s *Simulator) pick(xs []string) string { return xs[s.rng.IntN(len(xs))] }
func (s *Simulator) chance(p float64) bool   { return s.rng.Float64() < p }

// span returns a new span id: a number, as Stalwart's span ids are (u64), so that Stalwart's
// clients read them as they read Stalwart's.
func (s *Simulator) span() uint64 {
	s.spanSeq++
	return 0x5a000000 + s.spanSeq
}

// noSpan is the span of an event outside any session.
const noSpan = 0

// data starts a data object with the span's keys.
func (s *Simulator) data(span uint64) *event.Builder {
	s.b.Reset()
	if span != noSpan {
		s.b.Uint("spanId", span)
	}
	return &s.b
}

func (s *Simulator) newSession() *simSession {
	r := s.rng.IntN(100)
	switch {
	case r < 34:
		return s.inboundSMTP()
	case r < 58:
		return s.delivery()
	case r < 73:
		return s.imap(false)
	case r < 77:
		return s.pop3()
	case r < 87:
		return s.jmap()
	case r < 89:
		return s.bruteForce()
	default:
		return s.misc()
	}
}

func (s *Simulator) connStart(ev *[]simEvent, group string, span uint64, ip string, port int) {
	*ev = append(*ev, simEvent{group + ".connection-start", s.data(span).Str("listenerId", group).Int("localPort", int64(port)).Str("remoteIp", ip).Int("remotePort", int64(1024+s.rng.IntN(60000))).Data()})
}

func (s *Simulator) connEnd(ev *[]simEvent, group string, span uint64, ip string, maxMs int) {
	*ev = append(*ev, simEvent{group + ".connection-end", s.data(span).Str("remoteIp", ip).Int("elapsed", int64(20+s.rng.IntN(maxMs))).Data()})
}

func (s *Simulator) inboundSMTP() *simSession {
	var ev []simEvent
	span, ip := s.span(), s.pick(s.ips)
	helo := "mail." + s.pick(s.remotes)
	s.connStart(&ev, "smtp", span, ip, 25)
	ev = append(ev, simEvent{"smtp.ehlo", s.data(span).Str("domain", helo).Data()})
	if s.chance(0.8) {
		ev = append(ev, simEvent{"smtp.start-tls", s.data(span).Data()},
			simEvent{"tls.handshake", s.data(span).Str("version", "TLSv1.3").Str("details", "TLS13_AES_256_GCM_SHA384").Data()})
	}
	from := s.pick(s.senders)
	ev = append(ev, simEvent{"smtp.mail-from", s.data(span).Str("from", from).Data()})
	spfPass := s.chance(0.85)
	ev = append(ev, simEvent{map[bool]string{true: "smtp.spf-from-pass", false: "smtp.spf-from-fail"}[spfPass], s.data(span).Str("domain", domainOf(from)).Data()})
	var rcpts []string
	for range 1 + s.rng.IntN(3) {
		to := s.pick(s.accounts)
		switch {
		case s.chance(0.05):
			ev = append(ev, simEvent{"smtp.mailbox-does-not-exist", s.data(span).Str("to", "unknown"+strconv.Itoa(s.rng.IntN(99))+"@example.org").Data()})
		case s.chance(0.03):
			ev = append(ev, simEvent{"smtp.rcpt-to-greylisted", s.data(span).Str("to", to).Data()})
		default:
			ev = append(ev, simEvent{"smtp.rcpt-to", s.data(span).Str("to", to).Data()})
			rcpts = append(rcpts, to)
		}
	}
	if len(rcpts) == 0 {
		ev = append(ev, simEvent{"smtp.quit", s.data(span).Data()})
		s.connEnd(&ev, "smtp", span, ip, 3000)
		return &simSession{ev}
	}
	dkim := s.chance(0.9)
	ev = append(ev, simEvent{map[bool]string{true: "smtp.dkim-pass", false: "smtp.dkim-fail"}[dkim], s.data(span).Data()})
	ev = append(ev, simEvent{map[bool]string{true: "smtp.dmarc-pass", false: "smtp.dmarc-fail"}[dkim && spfPass], s.data(span).Str("domain", domainOf(from)).Data()})
	size := int64(800 + s.rng.ExpFloat64()*40_000)
	if s.chance(0.02) {
		ev = append(ev, simEvent{"smtp.message-too-large", s.data(span).Int("size", size*100).Data()})
	} else {
		score := s.rng.NormFloat64()*3 + 2
		if !spfPass || !dkim {
			score += 5
		}
		ev = append(ev, simEvent{"spam.classify", s.data(span).Float("score", float64(int(score*100))/100).Data()})
		verdict := "message-ingest.ham"
		if score > 5 {
			verdict = "message-ingest.spam"
		}
		s.queueID++
		for _, to := range rcpts {
			ev = append(ev, simEvent{verdict, s.data(span).Str("accountName", to).Str("from", from).Int("size", size).Int("elapsed", int64(2+s.rng.IntN(120))).Str("messageId", fmt.Sprintf("<%d.%d@%s>", s.queueID, s.rng.IntN(1e6), helo)).Data()})
		}
	}
	ev = append(ev, simEvent{"smtp.quit", s.data(span).Data()})
	s.connEnd(&ev, "smtp", span, ip, 5000)
	return &simSession{ev}
}

func (s *Simulator) delivery() *simSession {
	var ev []simEvent
	span := s.span()
	s.queueID++
	qid := strconv.FormatUint(0x7e0000000+s.queueID, 10)
	from := s.pick(s.accounts)
	domain := s.pick(s.remotes)
	to := []string{"user" + strconv.Itoa(s.rng.IntN(500)) + "@" + domain}
	size := int64(600 + s.rng.ExpFloat64()*25_000)
	authd := s.chance(0.7)
	queued := "queue.message-queued"
	if authd {
		queued = "queue.authenticated-message-queued"
	}
	ev = append(ev, simEvent{queued, s.data(span).Str("queueId", qid).Str("from", from).Strs("to", to).Int("size", size).Data()})
	ev = append(ev, simEvent{"delivery.attempt-start", s.data(span).Str("queueId", qid).Str("queueName", "remote").Str("from", from).Strs("to", to).Data()})
	ev = append(ev, simEvent{"delivery.mx-lookup", s.data(span).Str("domain", domain).Int("elapsed", int64(1+s.rng.IntN(80))).Data()})
	host := "mx" + strconv.Itoa(1+s.rng.IntN(3)) + "." + domain
	attempt := int64(100 + s.rng.IntN(4000))
	switch r := s.rng.IntN(100); {
	case r < 4:
		ev = append(ev, simEvent{"delivery.connect-error", s.data(span).Str("hostname", host).Str("details", "connection timed out").Data()})
		ev = append(ev, simEvent{"delivery.attempt-end", s.data(span).Str("queueId", qid).Int("elapsed", attempt+30_000).Data()})
		ev = append(ev, simEvent{"queue.rescheduled", s.data(span).Str("queueId", qid).Time("nextRetry", s.now().Add(15*time.Minute)).Data()})
		return &simSession{ev}
	case r < 7:
		ev = append(ev, simEvent{"delivery.connect", s.data(span).Str("hostname", host).Data()})
		ev = append(ev, simEvent{"delivery.rcpt-to-rejected", s.data(span).Str("hostname", host).Strs("to", to).Int("code", 550).Str("details", "5.1.1 user unknown").Data()})
		ev = append(ev, simEvent{"delivery.dsn-perm-fail", s.data(span).Strs("to", to).Int("code", 550).Data()})
		ev = append(ev, simEvent{"delivery.attempt-end", s.data(span).Str("queueId", qid).Int("elapsed", attempt).Data()})
		ev = append(ev, simEvent{"delivery.completed", s.data(span).Str("queueId", qid).Int("elapsed", attempt+int64(s.rng.IntN(2000))).Data()})
		return &simSession{ev}
	case r < 12:
		ev = append(ev, simEvent{"delivery.connect", s.data(span).Str("hostname", host).Data()})
		ev = append(ev, simEvent{"delivery.rcpt-to-failed", s.data(span).Str("hostname", host).Strs("to", to).Int("code", 451).Str("details", "4.7.1 try again later").Data()})
		ev = append(ev, simEvent{"delivery.dsn-temp-fail", s.data(span).Strs("to", to).Int("code", 451).Data()})
		ev = append(ev, simEvent{"delivery.attempt-end", s.data(span).Str("queueId", qid).Int("elapsed", attempt).Data()})
		ev = append(ev, simEvent{"queue.rescheduled", s.data(span).Str("queueId", qid).Time("nextRetry", s.now().Add(5*time.Minute)).Data()})
		return &simSession{ev}
	}
	ev = append(ev, simEvent{"delivery.connect", s.data(span).Str("hostname", host).Data()})
	if s.chance(0.93) {
		ev = append(ev, simEvent{"delivery.start-tls", s.data(span).Str("hostname", host).Data()})
	} else {
		ev = append(ev, simEvent{"delivery.start-tls-unavailable", s.data(span).Str("hostname", host).Data()})
	}
	ev = append(ev, simEvent{"delivery.delivered", s.data(span).Str("hostname", host).Strs("to", to).Int("code", 250).Str("details", "2.0.0 OK queued as "+strconv.FormatUint(s.rng.Uint64()%1e10, 36)).Int("elapsed", attempt).Data()})
	ev = append(ev, simEvent{"delivery.attempt-end", s.data(span).Str("queueId", qid).Int("elapsed", attempt).Data()})
	ev = append(ev, simEvent{"delivery.completed", s.data(span).Str("queueId", qid).Int("elapsed", attempt+int64(s.rng.IntN(500))).Data()})
	return &simSession{ev}
}

func (s *Simulator) imap(failing bool) *simSession {
	var ev []simEvent
	span, ip, acct := s.span(), s.pick(s.ips), s.pick(s.accounts)
	s.connStart(&ev, "imap", span, ip, 993)
	if failing || s.chance(0.06) {
		ev = append(ev, simEvent{"auth.failed", s.data(span).Str("accountName", acct).Str("remoteIp", ip).Data()})
		s.connEnd(&ev, "imap", span, ip, 2000)
		return &simSession{ev}
	}
	ev = append(ev, simEvent{"auth.success", s.data(span).Str("accountName", acct).Int("accountId", int64(s.rng.IntN(500))).Str("remoteIp", ip).Data()})
	ev = append(ev, simEvent{"imap.select", s.data(span).Str("mailboxName", "INBOX").Data()})
	for range s.rng.IntN(4) {
		ev = append(ev, simEvent{"imap.fetch", s.data(span).Int("total", int64(1+s.rng.IntN(50))).Data()})
	}
	if s.chance(0.3) {
		ev = append(ev, simEvent{"imap.store", s.data(span).Int("total", 1).Data()})
	}
	if s.chance(0.4) {
		ev = append(ev, simEvent{"imap.idle-start", s.data(span).Data()}, simEvent{"imap.idle-stop", s.data(span).Int("elapsed", int64(s.rng.IntN(600_000))).Data()})
	}
	ev = append(ev, simEvent{"imap.logout", s.data(span).Data()})
	s.connEnd(&ev, "imap", span, ip, 900_000)
	return &simSession{ev}
}

func (s *Simulator) pop3() *simSession {
	var ev []simEvent
	span, ip, acct := s.span(), s.pick(s.ips), s.pick(s.accounts)
	s.connStart(&ev, "pop3", span, ip, 995)
	ev = append(ev, simEvent{"auth.success", s.data(span).Str("accountName", acct).Str("remoteIp", ip).Data()},
		simEvent{"pop3.stat", s.data(span).Int("total", int64(s.rng.IntN(30))).Data()},
		simEvent{"pop3.uidl", s.data(span).Data()})
	for range s.rng.IntN(3) {
		ev = append(ev, simEvent{"pop3.fetch", s.data(span).Int("size", int64(1000+s.rng.IntN(90_000))).Data()})
	}
	ev = append(ev, simEvent{"pop3.quit", s.data(span).Data()})
	s.connEnd(&ev, "pop3", span, ip, 20_000)
	return &simSession{ev}
}

func (s *Simulator) jmap() *simSession {
	var ev []simEvent
	span, ip, acct := s.span(), s.pick(s.ips), s.pick(s.accounts)
	s.connStart(&ev, "http", span, ip, 443)
	ev = append(ev, simEvent{"http.request-url", s.data(span).Str("url", "/jmap/").Data()},
		simEvent{"auth.success", s.data(span).Str("accountName", acct).Str("remoteIp", ip).Data()})
	for _, m := range []string{"Mailbox/get", "Email/query", "Email/get"}[:1+s.rng.IntN(3)] {
		ev = append(ev, simEvent{"jmap.method-call", s.data(span).Str("id", m).Int("elapsed", int64(1+s.rng.IntN(40))).Data()})
	}
	s.connEnd(&ev, "http", span, ip, 60_000)
	return &simSession{ev}
}

// bruteForce is a burst of failed logins from one address, ending in a ban.
func (s *Simulator) bruteForce() *simSession {
	var ev []simEvent
	ip := fmt.Sprintf("185.220.%d.%d", s.rng.IntN(255), 1+s.rng.IntN(254))
	span := s.span()
	s.connStart(&ev, "smtp", span, ip, 587)
	n := 5 + s.rng.IntN(20)
	for i := range n {
		ev = append(ev, simEvent{"auth.failed", s.data(span).Str("accountName", s.pick(s.accounts)).Str("remoteIp", ip).Str("details", "invalid credentials").Int("total", int64(i+1)).Data()})
	}
	ev = append(ev, simEvent{"auth.too-many-attempts", s.data(span).Str("remoteIp", ip).Int("total", int64(n)).Data()},
		simEvent{"security.authentication-ban", s.data(span).Str("remoteIp", ip).Data()})
	s.connEnd(&ev, "smtp", span, ip, 60_000)
	return &simSession{ev}
}

func (s *Simulator) misc() *simSession {
	var e simEvent
	switch r := s.rng.IntN(100); {
	case r < 20:
		e = simEvent{"security.ip-blocked", s.data(noSpan).Str("remoteIp", fmt.Sprintf("45.%d.%d.%d", s.rng.IntN(255), s.rng.IntN(255), 1+s.rng.IntN(254))).Data()}
	case r < 35:
		e = simEvent{"network.timeout", s.data(noSpan).Str("remoteIp", s.pick(s.ips)).Data()}
	case r < 45:
		e = simEvent{"tls.handshake-error", s.data(noSpan).Str("remoteIp", s.pick(s.ips)).Str("details", "unsupported protocol version").Data()}
	case r < 55:
		e = simEvent{"incoming-report.dmarc-report", s.data(noSpan).Str("from", "noreply-dmarc@"+s.pick(s.remotes)).Str("domain", "example.org").Int("total", int64(1+s.rng.IntN(200))).Data()}
	case r < 63:
		e = simEvent{"store.data-write", s.data(noSpan).Int("elapsed", int64(s.rng.IntN(40))).Data()}
	case r < 70:
		e = simEvent{"message-ingest.search-index", s.data(noSpan).Str("accountName", s.pick(s.accounts)).Int("elapsed", int64(1+s.rng.IntN(300))).Data()}
	case r < 75:
		e = simEvent{"queue.back-pressure", s.data(noSpan).Int("total", int64(1000+s.rng.IntN(5000))).Data()}
	case r < 80:
		e = simEvent{"dkim.signer-not-found", s.data(noSpan).Str("domain", "legacy.example.org").Data()}
	case r < 84:
		e = simEvent{"store.sqlite-error", s.data(noSpan).Str("details", "database is locked").Data()}
	case r < 88:
		e = simEvent{"message-ingest.error", s.data(noSpan).Str("accountName", s.pick(s.accounts)).Str("details", "quota exceeded").Data()}
	case r < 94:
		e = simEvent{"spam.train-completed", s.data(noSpan).Int("total", int64(s.rng.IntN(5000))).Int("elapsed", int64(s.rng.IntN(10_000))).Data()}
	default:
		e = simEvent{"security.scan-ban", s.data(noSpan).Str("remoteIp", fmt.Sprintf("89.%d.%d.%d", s.rng.IntN(255), s.rng.IntN(255), 1+s.rng.IntN(254))).Data()}
	}
	return &simSession{[]simEvent{e}}
}

func domainOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == '@' {
			return addr[i+1:]
		}
	}
	return addr
}
