package livegateway

// Stalwart's event keys. Its trc crate has a closed Key enum of 66 keys, the same in 0.15
// (crates/trc/src/lib.rs, tag v0.15.5) and 0.16 (crates/trc/src/event/enums.rs, where each
// has the numeric id used here), written in camelCase (Key::name, Key::as_str). WebAdmin
// decodes an event's data into the same enum and fails the whole batch on any other key
// (webadmin src/pages/enterprise/tracing/event.rs), and the WebUI labels keys from it. So
// Stalwart's routes send these keys only: a key of ours is sent as the Stalwart key it
// plainly means (an alias below), or left out. testdata/stalwart-keys.txt pins the list.

// stalwartKeyCount is the number of keys in Stalwart's Key enum (Key::COUNT in 0.16).
const stalwartKeyCount = 66

// keyKind says how Stalwart types a key's value, where the JSON value alone cannot tell
// (Stalwart's Value enum: String, UInt, Int, Float, Timestamp, Duration, Bytes, Bool, Ipv4,
// Ipv6, Event, Array).
type keyKind uint8

const (
	kindPlain    keyKind = iota // typed by its JSON value
	kindUint                    // an id or a count (Value::UInt): a decimal string is sent as a number
	kindIP                      // remoteIp, localIp (Value::Ipv4/Ipv6): IpAddr in 0.16
	kindDuration                // elapsed (Value::Duration, milliseconds): Duration in 0.16
	kindTime                    // due, expires, nextRetry, nextDsn (Value::Timestamp): whole seconds, UTC
)

// stalwartKey is a key as Stalwart's routes send it.
type stalwartKey struct {
	id   uint8 // Stalwart's numeric id (0.16 enums.rs), which also indexes keySet
	name string
	kind keyKind
}

// lookupKey returns the Stalwart key a data key is sent as: the key itself, or for an alias
// the Stalwart key it stands for (alias true). ok is false for a key Stalwart has no
// equivalent of; such keys are left out.
//
// The kinds come from how Stalwart's code fills each key: Elapsed is always a Duration
// (`Elapsed = ….elapsed()` or `trc::Value::Duration(…)` at every site), RemoteIp and LocalIp
// an IpAddr, NextRetry,
// NextDsn, Due and Expires a `trc::Value::Timestamp` (queue/spool.rs, outbound/delivery.rs,
// task_manager/scheduler.rs), and the ids and counts u64 or smaller. ValidFrom and ValidTo
// are RFC 3339 strings in Stalwart (enterprise/mod.rs), so they are plain.
func lookupKey(k string) (key stalwartKey, alias, ok bool) {
	switch k {
	case "accountName":
		return stalwartKey{0, k, kindPlain}, false, true
	case "accountId":
		return stalwartKey{1, k, kindUint}, false, true
	case "blobId":
		return stalwartKey{2, k, kindPlain}, false, true
	case "causedBy":
		return stalwartKey{3, k, kindPlain}, false, true
	case "changeId":
		return stalwartKey{4, k, kindUint}, false, true
	case "code":
		return stalwartKey{5, k, kindPlain}, false, true
	case "collection":
		return stalwartKey{6, k, kindPlain}, false, true
	case "contents":
		return stalwartKey{7, k, kindPlain}, false, true
	case "details":
		return stalwartKey{8, k, kindPlain}, false, true
	case "dkimFail":
		return stalwartKey{9, k, kindPlain}, false, true
	case "dkimNone":
		return stalwartKey{10, k, kindPlain}, false, true
	case "dkimPass":
		return stalwartKey{11, k, kindPlain}, false, true
	case "dmarcNone":
		return stalwartKey{12, k, kindPlain}, false, true
	case "dmarcPass":
		return stalwartKey{13, k, kindPlain}, false, true
	case "dmarcQuarantine":
		return stalwartKey{14, k, kindPlain}, false, true
	case "dmarcReject":
		return stalwartKey{15, k, kindPlain}, false, true
	case "documentId":
		return stalwartKey{16, k, kindUint}, false, true
	case "domain":
		return stalwartKey{17, k, kindPlain}, false, true
	case "due":
		return stalwartKey{18, k, kindTime}, false, true
	case "elapsed":
		return stalwartKey{19, k, kindDuration}, false, true
	case "expires":
		return stalwartKey{20, k, kindTime}, false, true
	case "from":
		return stalwartKey{21, k, kindPlain}, false, true
	case "hostname":
		return stalwartKey{22, k, kindPlain}, false, true
	case "id":
		return stalwartKey{23, k, kindPlain}, false, true
	case "key":
		return stalwartKey{24, k, kindPlain}, false, true
	case "limit":
		return stalwartKey{25, k, kindPlain}, false, true
	case "listenerId":
		return stalwartKey{26, k, kindPlain}, false, true
	case "localIp":
		return stalwartKey{27, k, kindIP}, false, true
	case "localPort":
		return stalwartKey{28, k, kindUint}, false, true
	case "mailboxName":
		return stalwartKey{29, k, kindPlain}, false, true
	case "mailboxId":
		return stalwartKey{30, k, kindUint}, false, true
	case "messageId":
		return stalwartKey{31, k, kindPlain}, false, true
	case "nextDsn":
		return stalwartKey{32, k, kindTime}, false, true
	case "nextRetry":
		return stalwartKey{33, k, kindTime}, false, true
	case "path":
		return stalwartKey{34, k, kindPlain}, false, true
	case "policy":
		return stalwartKey{35, k, kindPlain}, false, true
	case "queueId":
		return stalwartKey{36, k, kindUint}, false, true
	case "rangeFrom":
		return stalwartKey{37, k, kindPlain}, false, true
	case "rangeTo":
		return stalwartKey{38, k, kindPlain}, false, true
	case "reason":
		return stalwartKey{39, k, kindPlain}, false, true
	case "remoteIp":
		return stalwartKey{40, k, kindIP}, false, true
	case "remotePort":
		return stalwartKey{41, k, kindUint}, false, true
	case "reportId":
		return stalwartKey{42, k, kindPlain}, false, true
	case "result":
		return stalwartKey{43, k, kindPlain}, false, true
	case "size":
		return stalwartKey{44, k, kindUint}, false, true
	case "source":
		return stalwartKey{45, k, kindPlain}, false, true
	case "spanId":
		return stalwartKey{46, k, kindUint}, false, true
	case "spfFail":
		return stalwartKey{47, k, kindPlain}, false, true
	case "spfNone":
		return stalwartKey{48, k, kindPlain}, false, true
	case "spfPass":
		return stalwartKey{49, k, kindPlain}, false, true
	case "strict":
		return stalwartKey{50, k, kindPlain}, false, true
	case "tls":
		return stalwartKey{51, k, kindPlain}, false, true
	case "to":
		return stalwartKey{52, k, kindPlain}, false, true
	case "total":
		return stalwartKey{53, k, kindUint}, false, true
	case "totalFailures":
		return stalwartKey{54, k, kindUint}, false, true
	case "totalSuccesses":
		return stalwartKey{55, k, kindUint}, false, true
	case "type":
		return stalwartKey{56, k, kindPlain}, false, true
	case "uid":
		return stalwartKey{57, k, kindUint}, false, true
	case "uidNext":
		return stalwartKey{58, k, kindUint}, false, true
	case "uidValidity":
		return stalwartKey{59, k, kindUint}, false, true
	case "url":
		return stalwartKey{60, k, kindPlain}, false, true
	case "validFrom":
		return stalwartKey{61, k, kindPlain}, false, true
	case "validTo":
		return stalwartKey{62, k, kindPlain}, false, true
	case "value":
		return stalwartKey{63, k, kindPlain}, false, true
	case "version":
		return stalwartKey{64, k, kindPlain}, false, true
	case "queueName":
		return stalwartKey{65, k, kindPlain}, false, true

	// Aliases: keys of other senders (the native API takes any camelCase key) with a plain
	// Stalwart equivalent. A Stalwart key in the same event wins over an alias of it.
	case "user", "username", "login", "account":
		return stalwartKey{0, "accountName", kindPlain}, true, true
	case "error", "errorMessage":
		return stalwartKey{8, "details", kindPlain}, true, true
	case "durationMs":
		return stalwartKey{19, "elapsed", kindDuration}, true, true
	case "sender", "mailFrom", "envelopeFrom":
		return stalwartKey{21, "from", kindPlain}, true, true
	case "host":
		return stalwartKey{22, "hostname", kindPlain}, true, true
	case "serverIp":
		return stalwartKey{27, "localIp", kindIP}, true, true
	case "serverPort":
		return stalwartKey{28, "localPort", kindUint}, true, true
	case "mailbox":
		return stalwartKey{29, "mailboxName", kindPlain}, true, true
	case "ip", "clientIp", "peerIp", "sourceIp":
		return stalwartKey{40, "remoteIp", kindIP}, true, true
	case "clientPort", "peerPort", "sourcePort":
		return stalwartKey{41, "remotePort", kindUint}, true, true
	case "messageSize":
		return stalwartKey{44, "size", kindUint}, true, true
	case "sessionId":
		return stalwartKey{46, "spanId", kindUint}, true, true
	case "recipient", "recipients", "rcpt", "rcptTo", "envelopeTo":
		return stalwartKey{52, "to", kindPlain}, true, true
	case "queue":
		return stalwartKey{65, "queueName", kindPlain}, true, true
	}
	return stalwartKey{}, false, false
}

// keySet is a set of Stalwart keys, by id.
type keySet [2]uint64

func (s *keySet) has(id uint8) bool { return s[id>>6]&(1<<(id&63)) != 0 }
func (s *keySet) add(id uint8)      { s[id>>6] |= 1 << (id & 63) }
