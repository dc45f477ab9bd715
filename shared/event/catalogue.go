package event

import (
	"sort"
	"strings"
	"sync"
)

// TypeInfo describes a known event type.
type TypeInfo struct {
	Type        string
	Level       Level // the default level
	Description string
}

// catalogueText lists the known types as "type level description" lines, with Stalwart 0.16
// ids and default levels. It covers every group Stalwart has and every type the simulator,
// the metrics projection and the default alert rules use. Unknown but well-formed types are
// still accepted everywhere.
const catalogueText = `
acme.auth-start info Certificate authorization started
acme.auth-completed info Certificate authorization completed
acme.auth-error warn Certificate authorization failed
acme.order-completed info Certificate order completed
acme.renewal-scheduled info Certificate renewal scheduled
acme.error error ACME client error
ai.llm-response debug Language model answered
ai.api-error warn Language model API call failed
arc.chain-too-long debug ARC chain has too many sets
arc.invalid-instance debug ARC set has an invalid instance number
arc.broken-chain debug ARC chain is broken
arc.sealer-not-found warn No ARC sealer configured for the domain
auth.success info Authentication succeeded
auth.failed debug Authentication failed
auth.mfa-required trace Second factor required to authenticate
auth.too-many-attempts warn Too many failed authentication attempts
auth.error error Authentication could not be completed
auth.client-registration info OAuth client registered
calendar.alarm-sent info Calendar alarm sent
calendar.itip-message-sent info Calendar invitation message sent
calendar.itip-message-received info Calendar invitation message received
calendar.alarm-failed warn Calendar alarm could not be sent
cluster.publisher-error warn Cluster event publisher failed
cluster.subscriber-error warn Cluster event subscriber failed
cluster.node-joined info A node joined the cluster
cluster.node-left info A node left the cluster
dane.authentication-success info DANE TLSA authentication succeeded
dane.authentication-failure info DANE TLSA authentication failed
dane.no-certificates-found info Peer sent no certificates for DANE
dane.tlsa-record-fetch debug TLSA records fetched
delivery.attempt-start info Outbound delivery attempt started
delivery.attempt-end info Outbound delivery attempt ended
delivery.completed info All recipients of a message handled
delivery.failed info Outbound delivery failed
delivery.domain-delivery-start info Delivery to one domain started
delivery.mx-lookup debug MX records looked up
delivery.mx-lookup-failed info MX lookup failed
delivery.ip-lookup debug Host addresses looked up
delivery.ip-lookup-failed info Host address lookup failed
delivery.null-mx info Domain publishes a null MX
delivery.connect debug Connected to the remote host
delivery.connect-error info Could not connect to the remote host
delivery.greeting-failed info Remote host greeting was an error
delivery.ehlo debug EHLO sent to the remote host
delivery.ehlo-rejected info Remote host rejected EHLO
delivery.auth debug Authenticated to the remote host
delivery.auth-failed info Authentication to the remote host failed
delivery.mail-from debug MAIL FROM accepted by the remote host
delivery.mail-from-rejected info Remote host rejected MAIL FROM
delivery.rcpt-to debug RCPT TO accepted by the remote host
delivery.rcpt-to-rejected info Remote host rejected a recipient
delivery.rcpt-to-failed info Recipient failed temporarily at the remote host
delivery.delivered info Message delivered to the remote host
delivery.message-rejected info Remote host rejected the message
delivery.start-tls debug STARTTLS negotiated with the remote host
delivery.start-tls-unavailable info Remote host does not offer STARTTLS
delivery.start-tls-error info STARTTLS with the remote host failed
delivery.implicit-tls-error info Implicit TLS with the remote host failed
delivery.concurrency-limit-exceeded info Outbound concurrency limit reached
delivery.rate-limit-exceeded info Outbound rate limit reached
delivery.double-bounce info Bounce of a bounce discarded
delivery.dsn-success info Delivery status notification: delivered
delivery.dsn-temp-fail info Delivery status notification: delayed
delivery.dsn-perm-fail info Delivery status notification: failed
delivery.raw-input trace Raw bytes received from the remote host
delivery.raw-output trace Raw bytes sent to the remote host
dkim.pass debug DKIM signature verified
dkim.neutral debug DKIM result neutral
dkim.fail debug DKIM signature did not verify
dkim.perm-error debug DKIM permanent error
dkim.temp-error debug DKIM temporary error
dkim.none debug Message has no DKIM signature
dkim.signer-not-found warn No DKIM signer configured for the domain
dkim.signature-expired debug DKIM signature expired
dkim.signature-length debug DKIM signature covers only part of the body
dmarc.pass debug DMARC check passed
dmarc.fail debug DMARC check failed
dmarc.perm-error debug DMARC permanent error
dmarc.temp-error debug DMARC temporary error
dmarc.none debug Domain publishes no DMARC policy
dns.record-created info DNS record created
dns.record-creation-failed warn DNS record could not be created
dns.record-propagated info DNS record propagated
dns.record-propagation-timeout warn DNS record did not propagate in time
dns.record-lookup-failed debug DNS record lookup failed
eval.result trace Expression evaluated
eval.error debug Expression evaluation failed
eval.directory-not-found warn Expression names an unknown directory
eval.store-not-found warn Expression names an unknown store
http.connection-start debug HTTP connection opened
http.connection-end debug HTTP connection closed
http.error debug HTTP request failed
http.request-url debug HTTP request received
http.request-body trace HTTP request body
http.response-body trace HTTP response body
http.x-forwarded-missing warn Proxy header expected but missing
imap.connection-start debug IMAP connection opened
imap.connection-end debug IMAP connection closed
imap.capabilities debug IMAP capabilities listed
imap.id debug IMAP client identified itself
imap.list debug IMAP mailboxes listed
imap.status debug IMAP mailbox status read
imap.select debug IMAP mailbox selected
imap.examine debug IMAP mailbox examined
imap.create debug IMAP mailbox created
imap.delete debug IMAP mailbox deleted
imap.rename debug IMAP mailbox renamed
imap.append debug Message appended over IMAP
imap.fetch debug Messages fetched over IMAP
imap.store debug Message flags changed over IMAP
imap.copy debug Messages copied over IMAP
imap.move debug Messages moved over IMAP
imap.search debug Mailbox searched over IMAP
imap.expunge debug Messages expunged over IMAP
imap.idle-start debug IMAP IDLE started
imap.idle-stop debug IMAP IDLE stopped
imap.logout debug IMAP client logged out
imap.error debug IMAP command failed
imap.raw-input trace Raw bytes received from the IMAP client
imap.raw-output trace Raw bytes sent to the IMAP client
incoming-report.dmarc-report info DMARC aggregate report received
incoming-report.dmarc-report-with-warnings warn DMARC aggregate report with failures received
incoming-report.tls-report info TLS report received
incoming-report.tls-report-with-warnings warn TLS report with failures received
incoming-report.abuse-report info Abuse report received
incoming-report.decompress-error debug Report could not be decompressed
iprev.pass debug Reverse DNS matches
iprev.fail debug Reverse DNS does not match
iprev.perm-error debug Reverse DNS permanent error
iprev.temp-error debug Reverse DNS temporary error
iprev.none debug No reverse DNS record
jmap.method-call debug JMAP method called
jmap.invalid-arguments debug JMAP call had invalid arguments
jmap.request-too-large debug JMAP request too large
jmap.state-mismatch debug JMAP state did not match
jmap.not-found debug JMAP object not found
jmap.forbidden debug JMAP call forbidden
jmap.unknown-method debug Unknown JMAP method
jmap.websocket-start debug JMAP WebSocket opened
jmap.websocket-stop debug JMAP WebSocket closed
jmap.websocket-error debug JMAP WebSocket failed
limit.size-request debug Request larger than allowed
limit.size-upload debug Upload larger than allowed
limit.concurrent-request debug Too many concurrent requests
limit.concurrent-connection debug Too many concurrent connections
limit.quota debug Account quota exceeded
limit.too-many-requests debug Request rate limit exceeded
mail-auth.dns-error debug DNS error during mail authentication
mail-auth.dns-record-not-found debug Authentication record not found in DNS
mail-auth.parse-error debug Authentication record could not be parsed
mail-auth.policy-not-aligned debug Identifiers not aligned with policy
manage-sieve.connection-start debug ManageSieve connection opened
manage-sieve.connection-end debug ManageSieve connection closed
manage-sieve.put-script debug Sieve script uploaded
manage-sieve.error debug ManageSieve command failed
message-ingest.ham info Message delivered to the inbox
message-ingest.spam info Message delivered to the junk folder
message-ingest.imap-append info Message appended by an IMAP client
message-ingest.jmap-append info Message appended by a JMAP client
message-ingest.duplicate info Duplicate message skipped
message-ingest.error error Message could not be stored
message-ingest.search-index info Message added to the search index
milter.read debug Milter response read
milter.action-accept info Milter accepted the message
milter.action-reject info Milter rejected the message
milter.action-discard info Milter discarded the message
milter.action-temp-fail info Milter deferred the message
milter.timeout warn Milter did not answer in time
mta-hook.action-accept info MTA hook accepted the message
mta-hook.action-reject info MTA hook rejected the message
mta-hook.error warn MTA hook failed
mta-sts.authorized info Remote host authorized by MTA-STS
mta-sts.not-authorized info Remote host not authorized by MTA-STS
mta-sts.policy-fetch debug MTA-STS policy fetched
mta-sts.policy-fetch-error info MTA-STS policy could not be fetched
network.listen-start info Listener started
network.listen-stop info Listener stopped
network.listen-error error Listener failed
network.bind-error error Could not bind the listener address
network.accept-error debug Could not accept a connection
network.read-error debug Socket read failed
network.write-error debug Socket write failed
network.timeout debug Connection timed out
network.closed debug Connection closed by the peer
network.proxy-error debug Proxy protocol header invalid
outgoing-report.dmarc-report info DMARC aggregate report sent
outgoing-report.tls-report info TLS report sent
outgoing-report.dkim-report info DKIM failure report sent
outgoing-report.submission-error warn Report could not be submitted
pop3.connection-start debug POP3 connection opened
pop3.connection-end debug POP3 connection closed
pop3.stat debug POP3 mailbox status read
pop3.list debug POP3 messages listed
pop3.uidl debug POP3 message ids listed
pop3.fetch debug Message fetched over POP3
pop3.delete debug Message deleted over POP3
pop3.quit debug POP3 client quit
pop3.error debug POP3 command failed
pop3.raw-input trace Raw bytes received from the POP3 client
pop3.raw-output trace Raw bytes sent to the POP3 client
push-subscription.success debug Push notification sent
push-subscription.error debug Push notification failed
push-subscription.not-found debug Push subscription not found
queue.message-queued info Message queued for delivery
queue.authenticated-message-queued info Message from an authenticated sender queued
queue.dsn-queued info Delivery status notification queued
queue.report-queued info Report queued for delivery
queue.autogenerated-queued info Generated message queued
queue.rescheduled info Delivery rescheduled
queue.locked debug Queue entry locked by another node
queue.blob-not-found warn Queued message body missing
queue.rate-limit-exceeded info Queue rate limit reached
queue.concurrency-limit-exceeded info Queue concurrency limit reached
queue.quota-exceeded info Queue quota exceeded
queue.back-pressure warn Queue applying back pressure
registry.local-read-error error Configuration could not be read
registry.local-write-error error Configuration could not be written
registry.build-error error Configuration object is invalid
registry.build-warning warn Configuration object has a warning
resource.not-found debug Resource not found
resource.bad-parameters error Resource parameters invalid
resource.download-external info External resource downloaded
resource.error warn Resource could not be loaded
security.authentication-ban info Address banned after failed logins
security.abuse-ban info Address banned for abuse
security.scan-ban info Address banned for scanning
security.loiter-ban info Address banned for loitering
security.ip-blocked info Connection from a blocked address refused
security.unauthorized debug Action not permitted for the account
server.startup info Server started
server.shutdown info Server stopped
server.startup-error error Server could not start
server.thread-error error Worker thread failed
server.licensing info License checked
sieve.action-accept debug Sieve script accepted the message
sieve.action-discard debug Sieve script discarded the message
sieve.action-reject debug Sieve script rejected the message
sieve.send-message info Sieve script sent a message
sieve.runtime-error debug Sieve script failed
smtp.connection-start debug SMTP connection opened
smtp.connection-end debug SMTP connection closed
smtp.error debug SMTP session error
smtp.ehlo info Client said EHLO
smtp.invalid-ehlo info Client sent an invalid EHLO
smtp.did-not-say-ehlo info Client skipped EHLO
smtp.mail-from info Sender accepted
smtp.mail-from-unauthenticated info Sender requires authentication
smtp.mail-from-unauthorized info Sender not allowed for this account
smtp.rcpt-to info Recipient accepted
smtp.rcpt-to-duplicate info Duplicate recipient
smtp.rcpt-to-greylisted info Recipient greylisted
smtp.mailbox-does-not-exist info Recipient mailbox does not exist
smtp.relay-not-allowed info Relay not allowed
smtp.too-many-recipients info Too many recipients
smtp.too-many-invalid-rcpt info Too many invalid recipients
smtp.auth-not-allowed info Authentication not allowed here
smtp.auth-mechanism-not-supported info Authentication mechanism not supported
smtp.start-tls info STARTTLS negotiated
smtp.start-tls-unavailable info STARTTLS requested but unavailable
smtp.rate-limit-exceeded info Inbound rate limit reached
smtp.concurrency-limit-exceeded info Inbound concurrency limit reached
smtp.time-limit-exceeded info Session took too long
smtp.transfer-limit-exceeded info Session transferred too much data
smtp.message-too-large info Message larger than allowed
smtp.message-parse-failed info Message could not be parsed
smtp.loop-detected info Mail loop detected
smtp.spf-ehlo-pass info SPF for the EHLO name passed
smtp.spf-ehlo-fail info SPF for the EHLO name failed
smtp.spf-from-pass info SPF for the sender passed
smtp.spf-from-fail info SPF for the sender failed
smtp.dkim-pass info DKIM passed
smtp.dkim-fail info DKIM failed
smtp.arc-pass info ARC passed
smtp.arc-fail info ARC failed
smtp.dmarc-pass info DMARC passed
smtp.dmarc-fail info DMARC failed
smtp.iprev-pass info Reverse DNS passed
smtp.iprev-fail info Reverse DNS failed
smtp.rset info Client reset the session
smtp.quit info Client quit
smtp.invalid-command info Client sent an invalid command
smtp.syntax-error info Client sent a syntax error
smtp.raw-input trace Raw bytes received from the SMTP client
smtp.raw-output trace Raw bytes sent to the SMTP client
spam.classify debug Message classified
spam.dnsbl debug DNS blocklist queried
spam.dnsbl-error debug DNS blocklist query failed
spam.pyzor debug Pyzor queried
spam.train-completed info Spam classifier training completed
spam.train-sample-added debug Training sample added
spf.pass debug SPF passed
spf.fail debug SPF failed
spf.soft-fail debug SPF soft failure
spf.neutral debug SPF neutral
spf.temp-error debug SPF temporary error
spf.perm-error debug SPF permanent error
spf.none debug No SPF record
store.data-write trace Data written
store.data-iterate trace Data iterated
store.blob-read trace Blob read
store.blob-write trace Blob written
store.blob-delete trace Blob deleted
store.sql-query trace SQL query run
store.sqlite-error error SQLite error
store.postgresql-error error PostgreSQL error
store.foundationdb-error error FoundationDB error
store.rocksdb-error error RocksDB error
store.s3-error error S3 error
store.unexpected-error error Unexpected store error
task-manager.task-queued debug Background task queued
task-manager.task-acquired debug Background task started
task-manager.task-failed warn Background task failed
task-manager.task-completed debug Background task completed
telemetry.alert-event warn Alert state changed
telemetry.alert-message info Alert notification sent
telemetry.log-error warn Log file could not be written
telemetry.webhook-error warn Webhook delivery failed
telemetry.otel-exporter-error warn OpenTelemetry export failed
telemetry.otel-metrics-exporter-error warn OpenTelemetry metrics export failed
telemetry.prometheus-exporter-error warn Prometheus exposition failed
telemetry.journal-error warn Journal could not be written
telemetry.metrics-collected info Metrics collected
telemetry.metrics-stored debug Metrics stored
telemetry.metrics-pushed debug Metrics pushed
tls.handshake info TLS handshake completed
tls.handshake-error debug TLS handshake failed
tls.not-configured error TLS not configured
tls.certificate-not-found debug No certificate for the requested name
tls.no-certificates-available warn No certificates available
tls-rpt.record-fetch debug TLS reporting record fetched
tls-rpt.record-fetch-error debug TLS reporting record could not be fetched
tls-rpt.record-not-found debug No TLS reporting record
web-dav.propfind debug WebDAV PROPFIND
web-dav.get debug WebDAV GET
web-dav.put debug WebDAV PUT
web-dav.delete debug WebDAV DELETE
web-dav.report debug WebDAV REPORT
web-dav.error debug WebDAV request failed
`

// Catalogue is the set of known event types. It is immutable once built.
type Catalogue struct {
	byType map[string]TypeInfo
	byProm map[string]string // Stalwart's Prometheus name (smtp_connection_start) -> type
	groups []string
}

var builtin = sync.OnceValue(func() *Catalogue {
	c := &Catalogue{byType: map[string]TypeInfo{}, byProm: map[string]string{}}
	seen := map[string]bool{}
	for _, line := range strings.Split(catalogueText, "\n") {
		if line == "" {
			continue
		}
		typ, rest, _ := strings.Cut(line, " ")
		lvl, desc, _ := strings.Cut(rest, " ")
		l, err := ParseLevel(lvl)
		if err != nil || ValidateType(typ) != nil {
			panic("event: bad catalogue line: " + line) // a build error, caught by tests
		}
		c.byType[typ] = TypeInfo{Type: typ, Level: l, Description: desc}
		c.byProm[PromName(typ)] = typ
		g, _, _ := strings.Cut(typ, ".")
		if !seen[g] {
			seen[g] = true
			c.groups = append(c.groups, g)
		}
	}
	sort.Strings(c.groups)
	return c
})

// Known returns the built-in catalogue.
func Known() *Catalogue { return builtin() }

// Lookup returns the information on a known type.
func (c *Catalogue) Lookup(typ string) (TypeInfo, bool) {
	i, ok := c.byType[typ]
	return i, ok
}

// All returns every known type, sorted.
func (c *Catalogue) All() []TypeInfo {
	out := make([]TypeInfo, 0, len(c.byType))
	for _, i := range c.byType {
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Type < out[b].Type })
	return out
}

// Groups returns the known groups, sorted.
func (c *Catalogue) Groups() []string { return c.groups }

// FromPromName maps a Stalwart Prometheus metric name (smtp_connection_start) back to the
// event type it counts.
func (c *Catalogue) FromPromName(name string) (string, bool) {
	t, ok := c.byProm[name]
	return t, ok
}

// DefaultLevel returns a known type's default level, and Info for an unknown one.
func DefaultLevel(typ string) Level {
	if i, ok := builtin().byType[typ]; ok {
		return i.Level
	}
	return Info
}

// PromName is Stalwart's Prometheus name of a metric: every character other than a letter
// or digit becomes an underscore.
func PromName(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}
