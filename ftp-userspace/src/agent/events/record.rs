//! Decoding: a raw event of the datapath (or of the sweep) into the record the agent logs and
//! sends, with its wall-clock time.

use std::time::{Duration, SystemTime};

use ftp_common::{
    CommandName, MalformedReason, RefusalReason,
    maps::{EVENT_TEXT_LEN, Event, EventKind, ExpectationKind, IpBytes, SessionKind},
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::clock::monotonic_now_ns,
    report::sessions::{endpoint, nat64_endpoint},
};

/// One event as `ftpnat events --json` prints it and the agent logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Wall-clock time, RFC 3339 with milliseconds (UTC).
    pub time: String,
    pub event: String,
    /// The session's id, as `ftpnat sessions` shows it.
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The command's name (`command` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A USER's name or a transfer's file, bounded; a password never appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argument: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An address and port, as the event says (`ip:port`, `[ipv6]:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_flows: Option<u64>,
}

impl EventRecord {
    /// The event as one human-readable line (without its time: logs and `ftpnat events` put it
    /// in front).
    pub fn text(&self) -> String {
        let mut line = format!("{} session {}", self.event, self.session);
        for (label, value) in [
            ("kind", self.kind.clone()),
            ("command", self.command.clone()),
            ("argument", self.argument.as_ref().map(|a| format!("{a:?}"))),
            ("reason", self.reason.clone()),
            ("endpoint", self.endpoint.clone()),
            ("bytes", self.bytes.map(|b| b.to_string())),
            ("data_flows", self.data_flows.map(|n| n.to_string())),
        ] {
            if let Some(value) = value {
                line.push_str(&format!(" {label}={value}"));
            }
        }
        line
    }
}

fn wall_clock(ts_ns: u64) -> String {
    let age = Duration::from_nanos(monotonic_now_ns().saturating_sub(ts_ns));
    let at = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// The Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn expectation_kind(raw: u8) -> Option<String> {
    ExpectationKind::from_raw(raw).map(|k| k.as_str().to_owned())
}

/// Turns a raw event into its record; `session` is the session's id, `nat64_prefix` a NAT64
/// session's prefix (see `SessionName`).
pub fn record(
    event: &Event,
    session: String,
    nat64_prefix: Option<&IpBytes>,
) -> Option<EventRecord> {
    let kind = EventKind::from_raw(event.kind)?;
    let mut record = EventRecord {
        time: wall_clock(event.ts_ns),
        event: kind.as_str().to_owned(),
        session,
        kind: None,
        command: None,
        argument: None,
        reason: None,
        endpoint: None,
        bytes: None,
        data_flows: None,
    };
    let at = Some(match nat64_prefix {
        Some(prefix) => nat64_endpoint(event.addr, event.port, prefix),
        None => endpoint(event.addr, event.port),
    });
    match kind {
        EventKind::SessionOpened => {
            record.kind = SessionKind::from_raw(event.detail).map(|k| k.as_str().to_owned());
            record.endpoint = at;
        }
        EventKind::Command => {
            let name = CommandName::from_raw(event.detail).unwrap_or(CommandName::Other);
            record.command = Some(name.as_str().to_owned());
            let len = usize::from(event.text_len).min(EVENT_TEXT_LEN);
            if name != CommandName::Pass && len > 0 {
                record.argument = Some(String::from_utf8_lossy(&event.text[..len]).into_owned());
            }
        }
        EventKind::PassiveReply => {
            record.kind = Some(format!("2{}", event.detail));
            record.endpoint = at;
        }
        EventKind::ExpectationCreated
        | EventKind::DataFlowOpened
        | EventKind::ExpectationExpired => {
            record.kind = expectation_kind(event.detail);
            record.endpoint = at;
        }
        EventKind::Refused => {
            record.reason =
                RefusalReason::from_code(u32::from(event.detail)).map(|r| r.as_str().to_owned());
        }
        EventKind::Malformed => {
            record.reason =
                MalformedReason::from_code(u32::from(event.detail)).map(|r| r.as_str().to_owned());
        }
        EventKind::TlsStarted | EventKind::WindowExhausted => {}
        EventKind::DataFlowClosed => {
            record.endpoint = at;
            record.bytes = Some(event.value);
        }
        EventKind::SessionClosed => record.data_flows = Some(event.value),
        // The agent's own: it releases the connection, whose end the release reports.
        EventKind::ConnectionClosed => return None,
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use ftp_common::maps::{FlowKey, ip};

    use super::*;

    fn raw(kind: EventKind, detail: u8, text: &[u8]) -> Event {
        let session = FlowKey {
            saddr: ip::v4_mapped([10, 0, 0, 2]),
            daddr: ip::v4_mapped([203, 0, 113, 10]),
            sport: 40000u16.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        };
        let mut event = Event {
            text_len: text.len() as u8,
            value: 1234,
            ..Event::new(
                monotonic_now_ns(),
                session,
                kind,
                detail,
                (ip::v4_mapped([203, 0, 113, 254]), 62000),
            )
        };
        event.text[..text.len()].copy_from_slice(text);
        event
    }

    #[test]
    fn commands_carry_their_argument_but_never_a_password() {
        let user = record(
            &raw(EventKind::Command, CommandName::User as u8, b"alice"),
            "s".into(),
            None,
        )
        .unwrap();
        assert_eq!(user.command.as_deref(), Some("USER"));
        assert_eq!(user.argument.as_deref(), Some("alice"));
        // Even if a datapath bug sent the text, a PASS event never shows it.
        let pass = record(
            &raw(EventKind::Command, CommandName::Pass as u8, b"secret"),
            "s".into(),
            None,
        )
        .unwrap();
        assert_eq!(pass.command.as_deref(), Some("PASS"));
        assert_eq!(pass.argument, None);
        assert!(!serde_json::to_string(&pass).unwrap().contains("secret"));
        assert!(!pass.text().contains("secret"));
    }

    #[test]
    fn records_name_reasons_endpoints_and_counts() {
        let refused = record(
            &raw(EventKind::Refused, RefusalReason::Bounce as u8, b""),
            "s".into(),
            None,
        )
        .unwrap();
        assert_eq!(
            refused.reason.as_deref(),
            Some(RefusalReason::Bounce.as_str())
        );
        let unsolicited = record(&raw(EventKind::Refused, 0, b""), "s".into(), None).unwrap();
        assert_eq!(unsolicited.reason.as_deref(), Some("unsolicited_reply"));
        let reply = record(&raw(EventKind::PassiveReply, 27, b""), "s".into(), None).unwrap();
        assert_eq!(reply.kind.as_deref(), Some("227"));
        assert_eq!(reply.endpoint.as_deref(), Some("203.0.113.254:62000"));
        let closed = record(&raw(EventKind::DataFlowClosed, 0, b""), "s".into(), None).unwrap();
        assert_eq!(closed.bytes, Some(1234));
        let ended = record(&raw(EventKind::SessionClosed, 0, b""), "s".into(), None).unwrap();
        assert_eq!(ended.data_flows, Some(1234));
        assert_eq!(
            record(&raw(EventKind::Command, 0, b""), "s".into(), None)
                .unwrap()
                .command
                .as_deref(),
            Some("other")
        );
        let mut unknown = raw(EventKind::Command, 0, b"");
        unknown.kind = 200;
        assert_eq!(record(&unknown, "s".into(), None), None);
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let client = ip::from_ip("2001:db8:10::2".parse().unwrap());
        let event = Event::new(
            monotonic_now_ns(),
            FlowKey {
                saddr: client,
                daddr: ip::from_ip("2001:db8:ffff::10".parse().unwrap()),
                sport: 40000u16.to_be_bytes(),
                dport: 21u16.to_be_bytes(),
            },
            EventKind::ExpectationCreated,
            ExpectationKind::Active as u8,
            (client, 50000),
        );
        let created = record(&event, "[2001:db8:10::2]:40000".into(), None).unwrap();
        assert_eq!(created.endpoint.as_deref(), Some("[2001:db8:10::2]:50000"));
        assert_eq!(created.kind.as_deref(), Some("active"));
    }

    #[test]
    fn a_nat64_session_opens_with_its_kind_and_ipv4_server() {
        let client = ip::from_ip("2001:db8:10::2".parse().unwrap());
        let event = Event::new(
            monotonic_now_ns(),
            FlowKey {
                saddr: client,
                daddr: ip::from_ip("64:ff9b::203.0.113.10".parse().unwrap()),
                sport: 40000u16.to_be_bytes(),
                dport: 21u16.to_be_bytes(),
            },
            EventKind::SessionOpened,
            SessionKind::Nat64 as u8,
            (ip::v4_mapped([203, 0, 113, 10]), 21),
        );
        let server_v6 = ip::from_ip("64:ff9b::203.0.113.10".parse().unwrap());
        let opened = record(&event, "198.51.100.7:61001".into(), Some(&server_v6)).unwrap();
        assert_eq!(opened.kind.as_deref(), Some("nat64"));
        assert_eq!(opened.endpoint.as_deref(), Some("203.0.113.10:21"));
        assert_eq!(
            opened.text(),
            "session_opened session 198.51.100.7:61001 kind=nat64 endpoint=203.0.113.10:21"
        );
        // Its passive data connection, to the server's port under the prefix.
        let data = Event::new(
            monotonic_now_ns(),
            event.session,
            EventKind::DataFlowOpened,
            ExpectationKind::Passive as u8,
            (server_v6, 40100),
        );
        let opened = record(&data, "198.51.100.7:61001".into(), Some(&server_v6)).unwrap();
        assert_eq!(
            opened.endpoint.as_deref(),
            Some("[64:ff9b::203.0.113.10]:40100")
        );
    }

    #[test]
    fn records_round_trip_through_json() {
        let user = record(
            &raw(EventKind::Command, CommandName::Retr as u8, b"data.bin"),
            "10.0.0.2:1".into(),
            None,
        )
        .unwrap();
        let line = serde_json::to_string(&user).unwrap();
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), user);
        assert!(
            user.text().contains("command=RETR argument=\"data.bin\""),
            "{}",
            user.text()
        );
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
