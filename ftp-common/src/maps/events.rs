//! The event ring: what the datapath saw, for the agent.

use super::{FlowKey, IpBytes};

/// What the datapath saw, for the agent: a ring buffer of [`Event`]. Not pinned: each agent reads
/// its own programs' events.
pub const NAME: &str = "EVENTS";

/// Room for a few thousand events between two reads of the agent.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// How full the ring must be before the datapath wakes the agent for its events. Below that it
/// submits them silently and the agent reads the ring on its own every
/// [`EVENTS_POLL_INTERVAL_MS`]: a wakeup is an inter-processor interrupt (an `irq_work`), which
/// cost ~6 µs per control packet on the machine of issue 13, far more than the ALG's own work.
pub const EVENTS_WAKEUP_BYTES: u64 = EVENTS_BYTES as u64 / 4;

/// How often the agent reads the event ring without being woken (milliseconds): the events'
/// latency, and at the rate that fills [`EVENTS_WAKEUP_BYTES`] in that time, the datapath wakes
/// it sooner.
pub const EVENTS_POLL_INTERVAL_MS: u64 = 50;

/// How many bytes of a command's argument an [`Event`] carries.
pub const EVENT_TEXT_LEN: usize = 48;

/// Events one session may report per second, on average, once its burst is spent. A client or
/// server that sends lines faster (a flood of junk commands, of unsolicited replies) has the rest
/// dropped and counted ([`EventBudget::dropped`], `Counter::EventsSuppressed`): one connection
/// cannot fill the ring buffer or keep the agent busy.
pub const SESSION_EVENTS_PER_SEC: u64 = 50;

/// Events one session may report at once (and again after a quiet spell of this many
/// [`SESSION_EVENTS_PER_SEC`] fractions of a second): a login and a directory of transfers.
pub const SESSION_EVENT_BURST: u32 = 200;

/// Time that earns a session one more event.
const NS_PER_EVENT: u64 = 1_000_000_000 / SESSION_EVENTS_PER_SEC;

/// A session's event budget, a token bucket: [`SESSION_EVENT_BURST`] tokens, refilled at
/// [`SESSION_EVENTS_PER_SEC`]. Part of the session record; the all-zero value is full at the first
/// event (the clock is far past zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// `bpf_ktime_get_ns` up to which the tokens were earned.
    pub earned_ns: u64,
    /// Events the session may still report now.
    pub tokens: u32,
    /// Events over the budget, dropped, since the session opened.
    pub dropped: u32,
}

impl EventBudget {
    pub const fn new() -> Self {
        Self {
            earned_ns: 0,
            tokens: 0,
            dropped: 0,
        }
    }

    /// Whether one more event may be reported at `now_ns` (taking its token); if not, it is
    /// counted as dropped.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64) -> bool {
        let earned = now_ns.saturating_sub(self.earned_ns) / NS_PER_EVENT;
        if earned > 0 {
            let tokens = u64::from(self.tokens).saturating_add(earned);
            if tokens >= u64::from(SESSION_EVENT_BURST) {
                self.tokens = SESSION_EVENT_BURST;
                self.earned_ns = now_ns;
            } else {
                self.tokens = tokens as u32;
                // Only the time the tokens took: the rest of it counts towards the next one.
                self.earned_ns = self.earned_ns.wrapping_add(earned * NS_PER_EVENT);
            }
        }
        if self.tokens == 0 {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl EventKind {
    /// Whether an event of this kind is held to its session's [`EventBudget`]. Those the lines of
    /// the control channel produce are; a session's opening and its data connections are not:
    /// each needs a TCP connection of its own (and a data connection an expectation and a window
    /// port), which the tables bound, and the transfer log pairs them with their transfers. Nor
    /// is a connection's end, which the agent needs to release it (one per connection, too).
    pub const fn budgeted(self) -> bool {
        !matches!(
            self,
            EventKind::SessionOpened | EventKind::DataFlowOpened | EventKind::ConnectionClosed
        )
    }
}

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
    /// A translated connection is over: an RST went one way, or a FIN each way. For the agent
    /// alone, which releases the connection's entries and window port once it has lingered
    /// for its last packets (instead of at a later sweep); never reported. `session`: the key of
    /// the flow entry whose packet closed it (not the session).
    ConnectionClosed = 13,
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
            13 => EventKind::ConnectionClosed,
            _ => return None,
        })
    }

    /// The reported kind [`EventKind::as_str`] names.
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
            EventKind::ConnectionClosed => "connection_closed",
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
    pub addr: IpBytes,
    pub port: [u8; 2],
    pub _pad2: [u8; 6],
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
        (addr, port): (IpBytes, u16),
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
            _pad2: [0; 6],
            value: 0,
            text: [0; EVENT_TEXT_LEN],
        }
    }
}

pod!(Event);

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    /// A plausible clock: the machine has been up a while.
    const BOOT: u64 = 3_600 * SEC;

    fn taken(budget: &mut EventBudget, now_ns: u64, events: u32) -> u32 {
        (0..events).filter(|_| budget.take(now_ns)).count() as u32
    }

    #[test]
    fn a_new_session_has_its_whole_burst() {
        let mut budget = EventBudget::new();
        assert_eq!(taken(&mut budget, BOOT, 1000), SESSION_EVENT_BURST);
        assert_eq!(budget.dropped, 1000 - SESSION_EVENT_BURST);
    }

    #[test]
    fn a_flood_gets_the_rate_and_no_more() {
        let mut budget = EventBudget::new();
        taken(&mut budget, BOOT, SESSION_EVENT_BURST);
        // Ten seconds of 1000 events every millisecond.
        let mut reported = 0;
        for ms in 1..=10_000 {
            reported += taken(&mut budget, BOOT + ms * 1_000_000, 1000);
        }
        assert_eq!(u64::from(reported), 10 * SESSION_EVENTS_PER_SEC);
        assert_eq!(
            u64::from(budget.dropped),
            10_000 * 1000 - 10 * SESSION_EVENTS_PER_SEC
        );
    }

    #[test]
    fn a_quiet_session_earns_back_its_burst_and_no_more() {
        let mut budget = EventBudget::new();
        taken(&mut budget, BOOT, SESSION_EVENT_BURST);
        assert!(!budget.take(BOOT));
        assert_eq!(
            taken(&mut budget, BOOT + SEC, 1000) as u64,
            SESSION_EVENTS_PER_SEC
        );
        assert_eq!(
            taken(&mut budget, BOOT + 3600 * SEC, 1000),
            SESSION_EVENT_BURST
        );
    }

    #[test]
    fn a_clock_behind_the_budget_earns_nothing() {
        let mut budget = EventBudget {
            earned_ns: BOOT,
            tokens: 1,
            dropped: 0,
        };
        assert!(budget.take(BOOT - SEC));
        assert!(!budget.take(BOOT - SEC));
    }

    #[test]
    fn only_line_events_are_budgeted() {
        assert!(!EventKind::SessionOpened.budgeted());
        assert!(!EventKind::DataFlowOpened.budgeted());
        for kind in [
            EventKind::Command,
            EventKind::PassiveReply,
            EventKind::ExpectationCreated,
            EventKind::Refused,
            EventKind::Malformed,
            EventKind::TlsStarted,
            EventKind::WindowExhausted,
        ] {
            assert!(kind.budgeted(), "{kind:?}");
        }
    }

    #[test]
    fn an_event_has_no_padding() {
        assert_eq!(
            core::mem::size_of::<Event>(),
            8 + 36 + 4 + 16 + 2 + 6 + 8 + EVENT_TEXT_LEN
        );
    }
}
