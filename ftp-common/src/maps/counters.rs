//! The counters table: what the datapath did, one per-CPU `u64` per [`Counter`].

use super::Table;

/// Datapath event counters, indexed by [`Counter`] (per CPU).
pub const NAME: &str = "COUNTERS";

/// Per CPU, the value size is one CPU's.
pub const TABLE: Table = Table::new::<u32, u64>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::PerCpuArray<T, u64>;

/// Indexes of the [`NAME`] per-CPU array: what the datapath did, for `ftpnat stats`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Control connections ftpnat took over (masqueraded clients and published servers).
    ControlSessionsOpened = 0,
    /// Requests for a window port that found none free: the opening SYN was answered with a
    /// reset, or the PORT/EPRT/227/229 rewritten into one that fails at once.
    WindowExhausted = 1,
    /// Packets translated by a flow entry.
    PacketsTranslated = 2,
    /// Translated packets the kernel could not redirect (no route or neighbour): dropped.
    RedirectFailed = 3,
    /// Data connections opened through an expectation.
    ExpectationsUsed = 4,
    /// Opening SYNs that matched an expectation after it had expired.
    ExpectationsExpired = 5,
    /// Expectations created from the control channel.
    ExpectationsCreated = 6,
    /// Control lines that could not be parsed; passed through untouched.
    MalformedLines = 7,
    /// PORT/EPRT/227/229 refused by policy (bounce, privileged port, too many, unsolicited).
    Refusals = 8,
    /// Expectations that could not be recorded (table full). An announcement from behind the
    /// router (a client's PORT/EPRT, a published server's 227/229) is refused in the text as for
    /// [`Counter::WindowExhausted`]; one from outside passes untouched, opening nothing.
    ExpectationTableFull = 9,
    /// Accepted PORT/EPRT lines that could not be rewritten (field split across segments, window
    /// exhausted, segment too long); passed untouched, nothing opened.
    RewritesSkipped = 10,
    /// Opening SYNs from the WAN to a window port that no expectation announced: dropped.
    PinholeNoExpectation = 11,
    /// Opening SYNs to a window port announced for another peer: dropped (the expectation stays
    /// for its peer).
    PinholeWrongPeer = 12,
    /// Control packets whose sequence or acknowledgement numbers were shifted because an earlier
    /// rewrite changed a line's length.
    SequenceAdjusted = 13,
    /// Packets whose stage program was missing from the stage table (never, once the agent has
    /// filled it): a control packet is dropped, an opening SYN passes untouched.
    StageMissing = 14,
    /// Control segments with more lines to examine, or more bytes, than the client or server stage
    /// has passes for (`MAX_LINE_PASSES`): the rest of the segment passed on unexamined.
    SegmentsPartlyExamined = 15,
    /// Events the datapath did not report: over their session's budget (a flood of lines; the
    /// session counts its own), or the ring buffer to the agent was full.
    EventsSuppressed = 16,
    /// Opening SYNs of a masqueraded client to an FTP port whose route (the kernel's FIB, policy
    /// rules included) does not leave by the WAN interface — another LAN, a VPN, the router
    /// itself, or no route: passed to the stack untranslated.
    NotRoutedToWan = 17,
    /// SYN and SYN-ACK segments of translated connections whose MSS option was lowered to fit the
    /// smaller MTU of the two interfaces they cross.
    MssClamped = 18,
    /// Translated packets too big for the egress interface's MTU, with DF set and a destination
    /// the translation keeps: handed to the stack untranslated, which drops them and answers the
    /// sender with ICMP fragmentation-needed.
    TooBigPassed = 19,
    /// Translated packets too big for the egress interface's MTU that the stack could not answer
    /// for (DF clear, or a destination the translation changes): dropped.
    TooBigDropped = 20,
    /// Opening SYNs whose connection found the flow table full: refused (a reset to a masqueraded
    /// client, dropped from the WAN), never passed untranslated.
    FlowTableFull = 21,
    /// Opening SYNs of control connections that found the session table full: refused as for
    /// [`Counter::FlowTableFull`] rather than translated without the ALG.
    SessionTableFull = 22,
    /// Opening SYNs of control connections from a source (a host, or its /24) that held its
    /// share of the sessions already (`--max-sessions-per-source`, `--max-sessions-per-subnet`):
    /// refused as for [`Counter::FlowTableFull`].
    SourceLimit = 23,
    /// Control segments outside their connection's TCP window (off-path or stale): dropped, their
    /// bytes and flags ignored.
    SegmentsOutOfWindow = 24,
    /// Resets of a control connection inside its window but not at the exact next sequence
    /// number: passed on (the endpoint answers with a challenge ACK) without ending anything.
    ResetsNotExact = 25,
    /// Packets of a translated connection that arrived on an interface other than the one its
    /// flow entry expects (a LAN address forged on the WAN, say): dropped, untranslated.
    WrongInterface = 26,
    /// Closed connections (a FIN each way, or a reset) still lingering for their last packets that
    /// gave way to a new connection needing one of their keys (a client listening again on its
    /// last data connection's port): removed, their window port returned, at once.
    ClosedReplaced = 27,
    /// Packets of NAT64 sessions translated from one IP family to the other.
    Nat64Translated = 28,
    /// Packets of NAT64 flows that cannot be translated (an IPv4 header with options): dropped.
    Nat64Untranslatable = 29,
    /// Replies of the NAT64 ALG's own written over the server's (to `EPSV ALL`, `ALGS`, or over a
    /// refused 227 answering a translated EPSV).
    Nat64AlgAnswers = 30,
    /// IPv6 clients' FTP connections to the well-known NAT64 prefix naming a non-global IPv4
    /// address (RFC 6052 section 3.1): not translated, left to the stack.
    Nat64NotGlobal = 31,
}

impl Counter {
    pub const ALL: [Counter; 32] = [
        Counter::ControlSessionsOpened,
        Counter::WindowExhausted,
        Counter::PacketsTranslated,
        Counter::RedirectFailed,
        Counter::ExpectationsUsed,
        Counter::ExpectationsExpired,
        Counter::ExpectationsCreated,
        Counter::MalformedLines,
        Counter::Refusals,
        Counter::ExpectationTableFull,
        Counter::RewritesSkipped,
        Counter::PinholeNoExpectation,
        Counter::PinholeWrongPeer,
        Counter::SequenceAdjusted,
        Counter::StageMissing,
        Counter::SegmentsPartlyExamined,
        Counter::EventsSuppressed,
        Counter::NotRoutedToWan,
        Counter::MssClamped,
        Counter::TooBigPassed,
        Counter::TooBigDropped,
        Counter::FlowTableFull,
        Counter::SessionTableFull,
        Counter::SourceLimit,
        Counter::SegmentsOutOfWindow,
        Counter::ResetsNotExact,
        Counter::WrongInterface,
        Counter::ClosedReplaced,
        Counter::Nat64Translated,
        Counter::Nat64Untranslatable,
        Counter::Nat64AlgAnswers,
        Counter::Nat64NotGlobal,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn as_str(self) -> &'static str {
        match self {
            Counter::ControlSessionsOpened => "control_sessions_opened",
            Counter::WindowExhausted => "window_exhausted",
            Counter::PacketsTranslated => "packets_translated",
            Counter::RedirectFailed => "redirect_failed",
            Counter::ExpectationsUsed => "expectations_used",
            Counter::ExpectationsExpired => "expectations_expired",
            Counter::ExpectationsCreated => "expectations_created",
            Counter::MalformedLines => "malformed_lines",
            Counter::Refusals => "refusals",
            Counter::ExpectationTableFull => "expectation_table_full",
            Counter::RewritesSkipped => "rewrites_skipped",
            Counter::PinholeNoExpectation => "pinhole_no_expectation",
            Counter::PinholeWrongPeer => "pinhole_wrong_peer",
            Counter::SequenceAdjusted => "sequence_adjusted",
            Counter::StageMissing => "stage_missing",
            Counter::SegmentsPartlyExamined => "segments_partly_examined",
            Counter::EventsSuppressed => "events_suppressed",
            Counter::NotRoutedToWan => "not_routed_to_wan",
            Counter::MssClamped => "mss_clamped",
            Counter::TooBigPassed => "too_big_passed",
            Counter::TooBigDropped => "too_big_dropped",
            Counter::FlowTableFull => "flow_table_full",
            Counter::SessionTableFull => "session_table_full",
            Counter::SourceLimit => "source_limit",
            Counter::SegmentsOutOfWindow => "segments_out_of_window",
            Counter::ResetsNotExact => "resets_not_exact",
            Counter::WrongInterface => "wrong_interface",
            Counter::ClosedReplaced => "closed_replaced",
            Counter::Nat64Translated => "nat64_translated",
            Counter::Nat64Untranslatable => "nat64_untranslatable",
            Counter::Nat64AlgAnswers => "nat64_alg_answers",
            Counter::Nat64NotGlobal => "nat64_not_global",
        }
    }
}
