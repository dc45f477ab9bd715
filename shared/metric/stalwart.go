package metric

// StalwartHistoryMetric is a metric Stalwart 0.15's metric history keeps
// (crates/common/src/telemetry/metrics/store.rs): its id there and in mailpulse, which
// names metrics as Stalwart 0.16 does.
type StalwartHistoryMetric struct {
	Kind string // counter, gauge or histogram
	ID   string // mailpulse's (and Stalwart 0.16's) id
	ID15 string // Stalwart 0.15's id
}

// StalwartHistory015 lists the metrics of Stalwart 0.15's history, and so of
// GET /api/telemetry/metrics: WebAdmin reads their ids into a closed enum, so no other may be
// sent. Four counters were renamed in 0.16.
var StalwartHistory015 = []StalwartHistoryMetric{
	{"counter", "smtp.connection-start", "smtp.connection-start"},
	{"counter", "imap.connection-start", "imap.connection-start"},
	{"counter", "pop3.connection-start", "pop3.connection-start"},
	{"counter", "manage-sieve.connection-start", "manage-sieve.connection-start"},
	{"counter", "http.connection-start", "http.connection-start"},
	{"counter", "delivery.attempt-start", "delivery.attempt-start"},
	{"counter", "queue.message-queued", "queue.queue-message"},
	{"counter", "queue.authenticated-message-queued", "queue.queue-message-authenticated"},
	{"counter", "queue.dsn-queued", "queue.queue-dsn"},
	{"counter", "queue.report-queued", "queue.queue-report"},
	{"counter", "message-ingest.ham", "message-ingest.ham"},
	{"counter", "message-ingest.spam", "message-ingest.spam"},
	{"counter", "auth.failed", "auth.failed"},
	{"counter", "security.authentication-ban", "security.authentication-ban"},
	{"counter", "security.scan-ban", "security.scan-ban"},
	{"counter", "security.abuse-ban", "security.abuse-ban"},
	{"counter", "security.loiter-ban", "security.loiter-ban"},
	{"counter", "security.ip-blocked", "security.ip-blocked"},
	{"counter", "incoming-report.dmarc-report", "incoming-report.dmarc-report"},
	{"counter", "incoming-report.dmarc-report-with-warnings", "incoming-report.dmarc-report-with-warnings"},
	{"counter", "incoming-report.tls-report", "incoming-report.tls-report"},
	{"counter", "incoming-report.tls-report-with-warnings", "incoming-report.tls-report-with-warnings"},
	{"gauge", "queue.count", "queue.count"},
	{"gauge", "server.memory", "server.memory"},
	{"histogram", "message-ingest.time", "message-ingest.time"},
	{"histogram", "message-ingest.index-time", "message-ingest.index-time"},
	{"histogram", "delivery.total-time", "delivery.total-time"},
	{"histogram", "delivery.attempt-time", "delivery.attempt-time"},
	{"histogram", "dns.lookup-time", "dns.lookup-time"},
}
