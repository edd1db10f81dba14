//! The event ring: what the datapath saw, for the agent.

use super::FlowKey;

/// What the datapath saw, for the agent: a ring buffer of [`Event`]. Not pinned: each agent reads
/// its own programs' events.
pub const NAME: &str = "EVENTS";

/// Room for a few thousand events between two reads of the agent.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// How many bytes of a command's argument an [`Event`] carries.
pub const EVENT_TEXT_LEN: usize = 48;

/// What an [`Event`] reports. The datapath emits the first kinds; the agent adds those it learns
/// when it sweeps (closed connections and sessions, expired expectations).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A control connection was taken over. `addr:port`: the server.
    SessionOpened = 1,
    /// A client command. `detail`: its [`crate::CommandName`]; `text`: its reported argument
    /// (never a password).
    Command = 2,
    /// A solicited 227/229. `detail`: 227 or 229 less 200; `addr:port`: what the server announced.
    PassiveReply = 3,
    /// An expectation was recorded. `detail`: its [`ExpectationKind`](super::ExpectationKind); `addr:port`: where the data
    /// connection is expected (the public window port, or the announced address).
    ExpectationCreated = 4,
    /// A data connection opened through an expectation. `detail`: its [`ExpectationKind`](super::ExpectationKind);
    /// `addr:port`: its destination as the opener sent it.
    DataFlowOpened = 5,
    /// A PORT/EPRT/227/229 the policy turned down. `detail`: a [`crate::RefusalReason`] code.
    Refused = 6,
    /// A line that could not be parsed, passed through. `detail`: a [`crate::MalformedReason`]
    /// code.
    Malformed = 7,
    /// AUTH accepted (234): the control channel is encrypted from here on, and not parsed.
    TlsStarted = 8,
    /// A request for a window port found none free.
    WindowExhausted = 9,
    /// A data connection ended (agent). `value`: its bytes, both ways.
    DataFlowClosed = 10,
    /// A control session ended (agent). `value`: its data connections.
    SessionClosed = 11,
    /// An expectation expired unused (agent).
    ExpectationExpired = 12,
}

impl EventKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            1 => EventKind::SessionOpened,
            2 => EventKind::Command,
            3 => EventKind::PassiveReply,
            4 => EventKind::ExpectationCreated,
            5 => EventKind::DataFlowOpened,
            6 => EventKind::Refused,
            7 => EventKind::Malformed,
            8 => EventKind::TlsStarted,
            9 => EventKind::WindowExhausted,
            10 => EventKind::DataFlowClosed,
            11 => EventKind::SessionClosed,
            12 => EventKind::ExpectationExpired,
            _ => return None,
        })
    }

    /// The kind [`EventKind::as_str`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        (1..=12)
            .filter_map(Self::from_raw)
            .find(|kind| kind.as_str() == name)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::SessionOpened => "session_opened",
            EventKind::Command => "command",
            EventKind::PassiveReply => "passive_reply",
            EventKind::ExpectationCreated => "expectation_created",
            EventKind::DataFlowOpened => "data_flow_opened",
            EventKind::Refused => "refused",
            EventKind::Malformed => "malformed",
            EventKind::TlsStarted => "tls_started",
            EventKind::WindowExhausted => "window_exhausted",
            EventKind::DataFlowClosed => "data_flow_closed",
            EventKind::SessionClosed => "session_closed",
            EventKind::ExpectationExpired => "expectation_expired",
        }
    }
}

/// One record of the [`NAME`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The session (its control connection's original-direction key).
    pub session: FlowKey,
    /// An [`EventKind`] as `u8`.
    pub kind: u8,
    /// What the kind says it is.
    pub detail: u8,
    /// Bytes of `text` in use.
    pub text_len: u8,
    pub _pad: u8,
    /// An address and port (network byte order), as the kind says.
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad2: [u8; 2],
    /// A count, as the kind says.
    pub value: u64,
    pub text: [u8; EVENT_TEXT_LEN],
}

impl Event {
    /// An event of `session` at `ts_ns` with an address and port (host byte order) as `kind`
    /// defines them, no count and no text.
    pub const fn new(
        ts_ns: u64,
        session: FlowKey,
        kind: EventKind,
        detail: u8,
        (addr, port): ([u8; 4], u16),
    ) -> Self {
        Self {
            ts_ns,
            session,
            kind: kind as u8,
            detail,
            text_len: 0,
            _pad: 0,
            addr,
            port: port.to_be_bytes(),
            _pad2: [0; 2],
            value: 0,
            text: [0; EVENT_TEXT_LEN],
        }
    }
}

pod!(Event);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_has_no_padding() {
        assert_eq!(
            core::mem::size_of::<Event>(),
            8 + 12 + 4 + 4 + 2 + 2 + 8 + EVENT_TEXT_LEN
        );
    }
}
