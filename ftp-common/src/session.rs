//! The control-channel state machine and policy of one FTP session.
//!
//! The caller hands every line that starts at a line boundary (see [`line`](mod@crate::line)), in
//! stream order, to [`Session::on_client_command`] / [`Session::on_server_reply`] as its scanner
//! reads it (or, holding the line in memory, to [`Session::on_client_line`] /
//! [`Session::on_server_line`]), and acts on the verdict: open an expectation and rewrite the
//! field for `OpenActive`/`OpenPassive`, replace the whole line for the NAT64 ALG's verdicts (see
//! below), count and pass the line untouched for everything else. The session has no side effects
//! of its own; its only state is the [`Session`] value, which the datapath keeps in a BPF map.
//!
//! # What the state machine tracks
//!
//! - **Which command a reply answers.** Every whole client line is a command that gets exactly one
//!   final reply (RFC 959 section 4.2): 2xx–5xx, possibly after 1xx preliminary ones, a multi-line
//!   reply counting once, at its last line. The session counts the commands still awaiting their
//!   final reply (saturating; a reply when none is awaited — the 220 banner, an unsolicited 421 —
//!   counts nothing), so that with pipelined commands (`TYPE I` and `PASV` sent without waiting) a
//!   reply is attributed to the command it answers, not to the latest one. A line the server never
//!   answered would shift later attributions by one, failing passive replies as unsolicited (see
//!   the crate's `README.md`); lost server lines and a 421 reset the count.
//! - **Passive requests.** `PASV` makes one 227 acceptable, `EPSV` one 229. The request is answered
//!   (and forgotten) by the first final reply that arrives once every command sent before it has
//!   been answered; a 227 or 229 that is not that reply — or answers the other command — is
//!   [`ServerVerdict::Unsolicited`] and opens nothing, even when it arrives while a PASV waits
//!   behind earlier commands (whatever a server sends in answer to another command, it is never
//!   the announcement of a data port). One request is tracked at a time, the oldest: a
//!   PASV/EPSV/EPSV ALL sent while one is waiting is not.
//! - **Multi-line replies** (RFC 959 section 4.2). From `NNN-` until the line starting with the same
//!   `NNN ` every line is text, however much it looks like a 227 or 229. The closing line is an
//!   ordinary reply line.
//! - **Transfers.** A `125`/`150` starts one; the next 2xx–5xx reply ends it. PORT/EPRT in between
//!   is refused ([`RefusalReason::NotInCommandState`]), as it is while a PASV/EPSV waits for its
//!   reply: RFC 959 section 5.4 changes transfer parameters between transfers, one command at a
//!   time.
//! - **`EPSV ALL`** (RFC 2428 section 4). Once the server accepts it with a 2xx reply (attributed
//!   like a passive request's), PORT, EPRT and PASV are refused ([`RefusalReason::EpsvAllActive`]).
//! - **`421`** (service closing) may answer a command or come unsolicited; either way the server is
//!   closing the connection, so nothing stays awaited or pending.
//! - **TLS** (RFC 4217). A `234` reply — defined only as the success reply to `AUTH` (RFC 2228) —
//!   makes the session encrypted: from then on no line is parsed and every verdict is `Encrypted`.
//!   A `234` counts only once the client sent `AUTH`: one without it is `Unsolicited`, so that a
//!   forged `234` cannot switch the ALG off (issue 12). `CCC` travels inside TLS and cannot be seen; a caller that learns the channel
//!   is clear again calls [`Session::command_channel_cleared`].
//! - **Expectations.** Every `OpenActive`/`OpenPassive` verdict counts one open expectation; the
//!   caller reports each one used or expired with [`Session::expectation_closed`]. At
//!   [`Policy::max_outstanding_expectations`], further ones are refused.
//!
//! # The NAT64 ALG (RFC 6384)
//!
//! With [`Policy::nat64_alg`] (an IPv6 client's session translated to an IPv4 server; the
//! context's client is the IPv6 address, its server the IPv4 one, IPv4-mapped), the ALG replaces
//! whole lines — all of each but its LF, see [`rewrite_kind`](crate::maps::rewrite_kind) and
//! [`format_rewrite`](crate::format_rewrite):
//!
//! - **`EPSV`** (no argument, or `2`), with [`Policy::epsv_as_pasv`]: goes to the server as
//!   `PASV` ([`ClientVerdict::EpsvAsPasv`]), tracked like any passive request. The 227 answering
//!   it must name the server's address (always: a 229 cannot carry another) and pass the usual
//!   port and expectation checks; it opens [`PassiveEndpoint::PasvAs229`] and is returned as
//!   `229 … (|||port|)`. If refused, it is replaced by a 425 ([`ServerVerdict::AlgRefused`]). A
//!   229 answering it is unsolicited. `EPSV 1` passes as it is.
//! - **`EPRT |2|`** naming the client: [`ActiveKind::EprtAsPort`], the same checks as any EPRT;
//!   the line goes to the server as `PORT` with the pool address and a window port. An EPRT
//!   naming any other address (`|1|` included) is a bounce. PORT from the IPv6 client is a
//!   bounce already.
//! - **`EPSV ALL`** (with `epsv_as_pasv`) and **`ALGS STATUS64|ENABLE64|DISABLE64`** are answered
//!   by the ALG ([`ClientVerdict::AnsweredByAlg`]): the line goes to the server as `NOOP`, tracked
//!   as the pending request, and the server's final reply to it is replaced by the ALG's
//!   ([`ServerVerdict::AlgReply`]; a 421 passes as it is). After `EPSV ALL` the session
//!   refuses PORT/EPRT/PASV as if the server had accepted it. `ALGS ENABLE64`/`DISABLE64` switch
//!   the ALG on/off for the session at once ([`Session::nat64_alg_enabled`]); switched off,
//!   EPSV, EPRT and 227 are treated as with no ALG, but `ALGS` is still answered.
//!
//! Only one request is tracked at a time: an EPSV, EPSV ALL or ALGS sent while another request
//! waits is not translated (EPSV and EPSV ALL pass as they are; ALGS reaches the server, which
//! refuses the unknown command), since its reply could not be told from the other's. Under TLS
//! nothing is parsed, as ever.
//!
//! # Policy checks, in order
//!
//! For PORT/EPRT: `EPSV ALL` accepted → transfer running or passive reply pending → address is not
//! the control connection's client (bounce) → port below 1024 → too many expectations. For a 227:
//! unsolicited → address is not the control connection's server (if the policy requires it) → too
//! many expectations. For a 229: unsolicited → too many expectations; the data connection goes to the
//! control connection's server (RFC 2428 section 3), so the verdict carries only the port. For a
//! 227 answering a translated EPSV: address is not the server's → port not allowed → too many
//! expectations.

use core::net::{IpAddr, SocketAddr, SocketAddrV4};

use crate::{
    maps::{IpBytes, ip},
    AlgReply, AlgsArg, AuthMechanism, Command, EpsvArg, MalformedReason, RefusalReason, Reply,
    ReplyBody, ReplyShape, Span, TransferVerb, parse_command, parse_reply,
};

/// Policy settings for a session's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allow PORT/EPRT to name a port below 1024 (RFC 2577 advises against it). Default false.
    pub allow_privileged_data_ports: bool,
    /// How many expectations one session may hold open at once. Default 4.
    pub max_outstanding_expectations: u8,
    /// A 227 must announce the control connection's server address. Default true (masquerade
    /// mode); a publishing caller sets it false because a server behind it may announce its public
    /// address.
    pub passive_address_must_match_server: bool,
    /// The lowest and highest port a 227/229 may announce. Default all; a publishing caller
    /// narrows it to the published server's passive ports (unprivileged ones unless configured).
    pub passive_ports: [u16; 2],
    /// A port a 227/229 may never announce, 0 for none: a published server's control port.
    pub passive_port_excluded: u16,
    /// The NAT64 FTP ALG of RFC 6384 (see the [module documentation](self)): an IPv6 client's
    /// control channel to an IPv4 server. Default false; the datapath sets it for NAT64 sessions.
    pub nat64_alg: bool,
    /// With `nat64_alg`: a client's `EPSV` goes to the server as `PASV` and the 227 comes back as
    /// a 229, and `EPSV ALL` is answered by the ALG (RFC 6384 section 6). Default false: EPSV
    /// passes as it is.
    pub epsv_as_pasv: bool,
}

impl Policy {
    pub const fn new() -> Self {
        Self {
            allow_privileged_data_ports: false,
            max_outstanding_expectations: 4,
            passive_address_must_match_server: true,
            passive_ports: [0, u16::MAX],
            passive_port_excluded: 0,
            nat64_alg: false,
            epsv_as_pasv: false,
        }
    }

    /// Whether a 227/229 may announce `port`.
    #[inline(always)]
    pub fn allows_passive_port(&self, port: u16) -> bool {
        let [lowest, highest] = self.passive_ports;
        port >= lowest && port <= highest && port != self.passive_port_excluded
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

/// What a session's checks compare against: the control connection's endpoints, as seen on the
/// private side of the router, and the policy. The addresses are held as the tables hold them
/// (see [`maps::ip`](crate::maps::ip); `ip::from_ip` makes them from an `IpAddr`): an address
/// of either family is then one plain value, which the kernel program stores and compares without
/// an enum's unused bytes (which its verifier can refuse to see copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyContext {
    /// The FTP client (the side that opened the control connection).
    pub client: IpBytes,
    /// The FTP server.
    pub server: IpBytes,
    pub policy: Policy,
}

/// Which command asked for an active-mode data connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveKind {
    /// Rewrite with [`format_port_field`](crate::format_port_field).
    Port,
    /// Rewrite with [`format_eprt_field`](crate::format_eprt_field) and this delimiter.
    Eprt { delimiter: u8 },
    /// An `EPRT |2|` naming the client's IPv6 address in a NAT64 ALG session: replace the whole
    /// line by a `PORT` of the pool address and a window port
    /// ([`format_port_line`](crate::format_port_line), `rewrite_kind::EPRT_AS_PORT`); `field` is
    /// still the EPRT argument.
    EprtAsPort,
}

/// Which command asked for a passive-mode data connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassiveKind {
    Pasv,
    Epsv,
}

/// Where a server announced it listens for a passive-mode data connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassiveEndpoint {
    /// From a 227; rewrite with [`format_227_field`](crate::format_227_field).
    Pasv(SocketAddrV4),
    /// From a 229: the address is the control connection's server. Rewrite with
    /// [`format_229_field`](crate::format_229_field).
    Epsv { port: u16, delimiter: u8 },
    /// From a 227 answering an EPSV that the NAT64 ALG sent as PASV: the address is the control
    /// connection's server (checked). Replace the whole line by a 229 of this port
    /// ([`format_229_line`](crate::format_229_line), `rewrite_kind::PASV_AS_229`); `field` is
    /// still the 227 numbers.
    PasvAs229(SocketAddrV4),
}

/// What to do about one client line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientVerdict {
    /// A PORT/EPRT that passed every check: open an expectation for `addr` and rewrite `field`.
    OpenActive {
        addr: SocketAddr,
        field: Span,
        kind: ActiveKind,
    },
    /// A valid PORT/EPRT/PASV that the policy turns down: open nothing, pass the line.
    Refused(RefusalReason),
    /// PASV or EPSV: the matching reply is now expected.
    PassiveRequested(PassiveKind),
    /// `EPSV ALL`; takes effect when the server accepts it.
    ExtendedPassiveOnlyRequested,
    /// NAT64 ALG: an `EPSV` (no argument, or `2`) to send as `PASV`: replace the whole line by
    /// [`PASV_LINE`](crate::PASV_LINE) (`rewrite_kind::EPSV_AS_PASV`). The 227 answering it
    /// becomes a 229.
    EpsvAsPasv,
    /// NAT64 ALG: a command the ALG answers itself (`EPSV ALL`, `ALGS …`): replace the whole line
    /// by [`NOOP_LINE`](crate::NOOP_LINE) (`rewrite_kind::LOCAL_COMMAND`). The server's final
    /// reply to the NOOP is [`ServerVerdict::AlgReply`] with this reply.
    AnsweredByAlg(AlgReply),
    /// `AUTH`; the session becomes encrypted on the `234` reply.
    TlsRequested(AuthMechanism),
    /// A transfer command, with its argument for reporting.
    Transfer { verb: TransferVerb, arg: Span },
    /// `REST`: the next transfer resumes at a marker.
    Restart,
    /// `USER`, with the name for reporting.
    User { name: Span },
    /// `PASS`: the line holds a password; never log it.
    Password,
    Quit,
    /// Any other line.
    Ignored,
    /// A known command with an invalid argument, or an unterminated/over-long line.
    Malformed(MalformedReason),
    /// The control channel is under TLS: nothing is parsed.
    Encrypted,
}

/// What to do about one server line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerVerdict {
    /// A solicited 227/229 that passed every check: open an expectation and rewrite `field`.
    OpenPassive {
        endpoint: PassiveEndpoint,
        field: Span,
    },
    /// A solicited, valid 227/229 that the policy turns down: open nothing, pass the line.
    Refused(RefusalReason),
    /// NAT64 ALG: a valid 227 answering an EPSV sent as PASV that the policy turns down: open
    /// nothing, and replace the whole line by [`AlgReply::for_refusal`] of the reason
    /// (`rewrite_kind::ALG_REPLY`), since the client asked for a 229.
    AlgRefused(RefusalReason),
    /// NAT64 ALG: the final reply to a command the ALG answered itself
    /// ([`ClientVerdict::AnsweredByAlg`]): replace the whole line by this reply
    /// (`rewrite_kind::ALG_REPLY`).
    AlgReply(AlgReply),
    /// A 227 or 229 that no PASV/EPSV asked for: open nothing, pass the line.
    Unsolicited { code: u16 },
    /// `234`: the session is now encrypted.
    TlsStarted,
    /// `125`/`150`.
    TransferStarted,
    /// `226`, or `250` ending a running transfer.
    TransferCompleted,
    /// `421`, `425`, `426`.
    TransferFailed,
    /// Any other line, including every line inside a multi-line reply.
    Ignored,
    /// A solicited 227/229 with an invalid argument, or an unterminated/over-long line.
    Malformed(MalformedReason),
    /// The control channel is under TLS: nothing is parsed.
    Encrypted,
}

const PENDING_NONE: u8 = 0;
const PENDING_PASV: u8 = 1;
const PENDING_EPSV: u8 = 2;
const PENDING_EPSV_ALL: u8 = 3;
/// An EPSV the NAT64 ALG sent as PASV: a 227 answers it.
const PENDING_EPSV_AS_PASV: u8 = 4;
// Commands the NAT64 ALG answers itself, by the reply it gives to the server's reply to the NOOP.
const PENDING_ALG_EPSV_ALL: u8 = 5;
const PENDING_ALG_ENABLED: u8 = 6;
const PENDING_ALG_DISABLED: u8 = 7;
const PENDING_ALG_UNKNOWN: u8 = 8;

const FLAG_ENCRYPTED: u8 = 1 << 0;
const FLAG_EPSV_ALL: u8 = 1 << 1;
const FLAG_TRANSFER: u8 = 1 << 2;
/// The client sent `AUTH`: a `234` may answer it.
const FLAG_AUTH_SENT: u8 = 1 << 3;
/// The client switched the NAT64 ALG off (`ALGS DISABLE64`); clear, it is on (if the policy
/// has it).
const FLAG_ALG_DISABLED: u8 = 1 << 4;

/// The state of one control connection, both directions.
///
/// Stored in a BPF map: `#[repr(C)]`, 8 bytes, no padding, and every bit pattern is a valid state
/// (unknown values count as "nothing pending", a multi-line code outside 100–599 as "not in a
/// multi-line reply", counts that do not add up only delay or hasten an attribution). The all-zero
/// value is [`Session::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Code of the multi-line reply in progress; 0 when none.
    multiline_code: u16,
    /// The request waiting for its reply, `PENDING_*`.
    pending: u8,
    /// `FLAG_*` bits.
    flags: u8,
    /// Expectations opened and not yet reported closed.
    open_expectations: u8,
    /// Commands seen whose final reply has not been (saturating).
    awaited_replies: u8,
    /// Of those, the ones sent before the pending request: the final replies due before its own.
    replies_before_pending: u8,
    _pad: u8,
}

impl Session {
    pub const fn new() -> Self {
        Self {
            multiline_code: 0,
            pending: PENDING_NONE,
            flags: 0,
            open_expectations: 0,
            awaited_replies: 0,
            replies_before_pending: 0,
            _pad: 0,
        }
    }

    /// The control channel is under TLS and nothing is parsed.
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    /// A transfer is running: the server answered `125`/`150` and has not sent the reply that
    /// ends it yet.
    pub fn is_transferring(&self) -> bool {
        self.flags & FLAG_TRANSFER != 0
    }

    /// The server accepted `EPSV ALL` (or the NAT64 ALG did, answering it itself).
    pub fn is_extended_passive_only(&self) -> bool {
        self.flags & FLAG_EPSV_ALL != 0
    }

    /// Whether the NAT64 ALG acts on this session's EPSV, EPRT and 227: `policy` has it, and the
    /// client has not switched it off with `ALGS DISABLE64`. (`ALGS` is answered either way.)
    pub fn nat64_alg_enabled(&self, policy: &Policy) -> bool {
        policy.nat64_alg && self.flags & FLAG_ALG_DISABLED == 0
    }

    /// Whether the NAT64 ALG will replace the server's next final reply whole: it answers an EPSV
    /// the ALG sent as PASV (a 227 becomes a 229, or a 425 if refused) or a command the ALG
    /// answers itself, and every command sent before that one has been answered. The datapath
    /// then holds a reply line cut at a segment's end that
    /// [`ReplyScanner::may_be_final_reply`](crate::ReplyScanner::may_be_final_reply) says may be
    /// that reply (see [`crate::hold`]).
    pub fn next_final_reply_replaced(&self) -> bool {
        !self.is_encrypted()
            && self.replies_before_pending == 0
            && matches!(
                self.pending,
                PENDING_EPSV_AS_PASV
                    | PENDING_ALG_EPSV_ALL
                    | PENDING_ALG_ENABLED
                    | PENDING_ALG_DISABLED
                    | PENDING_ALG_UNKNOWN
            )
    }

    /// Expectations opened and not yet reported closed.
    pub fn open_expectations(&self) -> u8 {
        self.open_expectations
    }

    /// The code of the multi-line reply in progress.
    pub fn multiline_reply(&self) -> Option<u16> {
        Some(self.multiline_code).filter(|code| (100..=599).contains(code))
    }

    /// Whether [`on_server_reply`](Self::on_server_reply) acts on a line of this shape (changes
    /// the session or reports it) rather than ignoring it: under TLS it ignores every line; it
    /// ignores text lines, and inside a multi-line reply every line but the one that ends it (an
    /// overlong line it reports). A BPF caller stops only at the lines that matter: it can
    /// examine one line per program pass, and a long multi-line reply must not use them up.
    pub fn acts_on_reply(&self, shape: ReplyShape) -> bool {
        if self.is_encrypted() {
            return false;
        }
        match shape {
            ReplyShape::Text => false,
            ReplyShape::TooLong | ReplyShape::Unterminated => true,
            ReplyShape::MultiLineStart { .. } => self.multiline_reply().is_none(),
            ReplyShape::Final { code } => self.multiline_reply().is_none_or(|open| open == code),
        }
    }

    /// One expectation this session opened was used or expired.
    pub fn expectation_closed(&mut self) {
        self.expectations_closed(1);
    }

    /// `count` expectations were used or went away at once.
    pub fn expectations_closed(&mut self, count: u8) {
        self.open_expectations = self.open_expectations.saturating_sub(count);
    }

    /// Server lines were skipped (the server direction's tracker reported
    /// [`OutOfSync`](crate::SegmentVerdict::OutOfSync)). Whatever they held is unknown: the end of
    /// a multi-line reply, the reply to a pending PASV/EPSV or the one ending a transfer, replies
    /// to awaited commands. Forget all of that rather than wait forever for lines already gone
    /// (which would refuse every later PORT as out of command state, and ignore every reply inside
    /// a multi-line reply that never ends). Only the bookkeeping goes: the policy checks of later
    /// commands and replies still apply, and a lost 227/229 cannot be accepted later.
    pub fn server_lines_lost(&mut self) {
        self.multiline_code = 0;
        self.flags &= !FLAG_TRANSFER;
        self.forget_awaited_replies();
    }

    /// The control channel is in the clear again after `CCC` (RFC 4217), as learnt by the
    /// caller. Parsing resumes; the caller also [`desync`](crate::LineTracker::desync)s both line
    /// trackers (and resets both scanners), since line boundaries inside the TLS records meant
    /// nothing.
    pub fn command_channel_cleared(&mut self) {
        self.flags &= !(FLAG_ENCRYPTED | FLAG_TRANSFER);
        self.multiline_code = 0;
        // Commands and replies inside TLS went unseen.
        self.forget_awaited_replies();
    }

    /// The caller could not replace the line its last client verdict asked it to replace whole
    /// ([`ClientVerdict::EpsvAsPasv`], [`ClientVerdict::AnsweredByAlg`]; a datapath rewrites one
    /// line per segment, and none that began in a segment already forwarded): it reached the
    /// server as the client sent it. Call it before the next client line. The request it made is
    /// then tracked as the line's own: an EPSV's, whose 229 opens as without the ALG; an `EPSV
    /// ALL`'s, which the server's acceptance puts into effect; an `ALGS`'s is dropped, and the
    /// server's reply to it (an unknown command) passes (an `ENABLE64`/`DISABLE64` has still
    /// switched the ALG). For an [`ActiveKind::EprtAsPort`] not replaced, the caller reports the
    /// expectation closed instead, as for any rewrite given up.
    pub fn alg_line_passed(&mut self) {
        self.pending = match self.pending {
            PENDING_EPSV_AS_PASV => PENDING_EPSV,
            PENDING_ALG_EPSV_ALL => PENDING_EPSV_ALL,
            PENDING_ALG_ENABLED | PENDING_ALG_DISABLED | PENDING_ALG_UNKNOWN => PENDING_NONE,
            pending => pending,
        };
    }

    /// One whole client line held in memory: [`parse_command`] then
    /// [`on_client_command`](Self::on_client_command).
    pub fn on_client_line(&mut self, line: &[u8], ctx: &PolicyContext) -> ClientVerdict {
        if self.is_encrypted() {
            return ClientVerdict::Encrypted;
        }
        self.on_client_command(parse_command(line), ctx)
    }

    /// One client command, from a [`CommandScanner`](crate::CommandScanner) at the end of a line
    /// (see the [module documentation](self)).
    pub fn on_client_command(&mut self, command: Command, ctx: &PolicyContext) -> ClientVerdict {
        if self.is_encrypted() {
            return ClientVerdict::Encrypted;
        }
        if matches!(command, Command::Malformed(MalformedReason::Unterminated)) {
            // Not a whole line yet: the server has nothing to answer.
            return ClientVerdict::Malformed(MalformedReason::Unterminated);
        }
        let verdict = self.client_verdict(command, ctx);
        // Whatever the verdict, the line reaches the server, which answers it.
        self.awaited_replies = self.awaited_replies.saturating_add(1);
        verdict
    }

    fn client_verdict(&mut self, command: Command, ctx: &PolicyContext) -> ClientVerdict {
        match command {
            Command::Port { addr, field } => {
                self.open_active(SocketAddr::V4(addr), field, ActiveKind::Port, ctx)
            }
            Command::Eprt {
                addr,
                delimiter,
                field,
            } => {
                // The IPv4 server cannot reach an IPv6 address: the ALG announces its pool
                // address instead, in a PORT. (Any other EPRT is a bounce in such a session.)
                let kind = if addr.is_ipv6() && self.nat64_alg_enabled(&ctx.policy) {
                    ActiveKind::EprtAsPort
                } else {
                    ActiveKind::Eprt { delimiter }
                };
                self.open_active(addr, field, kind, ctx)
            }
            Command::Pasv if self.is_extended_passive_only() => {
                ClientVerdict::Refused(RefusalReason::EpsvAllActive)
            }
            Command::Pasv => {
                self.request(PENDING_PASV);
                ClientVerdict::PassiveRequested(PassiveKind::Pasv)
            }
            Command::Epsv(EpsvArg::All) if self.alg_answers_epsv(ctx) => {
                self.answer_by_alg(PENDING_ALG_EPSV_ALL, AlgReply::EpsvAllAccepted)
            }
            Command::Epsv(EpsvArg::Any | EpsvArg::Ipv6) if self.alg_answers_epsv(ctx) => {
                self.request(PENDING_EPSV_AS_PASV);
                ClientVerdict::EpsvAsPasv
            }
            Command::Epsv(EpsvArg::All) => {
                self.request(PENDING_EPSV_ALL);
                ClientVerdict::ExtendedPassiveOnlyRequested
            }
            Command::Epsv(_) => {
                self.request(PENDING_EPSV);
                ClientVerdict::PassiveRequested(PassiveKind::Epsv)
            }
            Command::Auth(mechanism) => {
                self.flags |= FLAG_AUTH_SENT;
                ClientVerdict::TlsRequested(mechanism)
            }
            Command::User { name } => ClientVerdict::User { name },
            Command::Pass => ClientVerdict::Password,
            Command::Transfer { verb, arg } => ClientVerdict::Transfer { verb, arg },
            Command::Rest => ClientVerdict::Restart,
            Command::Quit => ClientVerdict::Quit,
            Command::Algs(arg) if ctx.policy.nat64_alg && !self.request_pending() => {
                let (pending, reply) = match arg {
                    AlgsArg::Status64 if self.flags & FLAG_ALG_DISABLED != 0 => {
                        (PENDING_ALG_DISABLED, AlgReply::Disabled)
                    }
                    AlgsArg::Status64 => (PENDING_ALG_ENABLED, AlgReply::Enabled),
                    AlgsArg::Enable64 => {
                        self.flags &= !FLAG_ALG_DISABLED;
                        (PENDING_ALG_ENABLED, AlgReply::Enabled)
                    }
                    AlgsArg::Disable64 => {
                        self.flags |= FLAG_ALG_DISABLED;
                        (PENDING_ALG_DISABLED, AlgReply::Disabled)
                    }
                    AlgsArg::Other => (PENDING_ALG_UNKNOWN, AlgReply::UnknownArgument),
                };
                self.answer_by_alg(pending, reply)
            }
            // With no ALG, or its answer could not be attributed (another request waits): the
            // server gets it, and refuses it as the unknown command it is.
            Command::Algs(_) => ClientVerdict::Ignored,
            // CCC in the clear changes nothing (RFC 4217: it only applies under TLS).
            Command::Ccc | Command::Other => ClientVerdict::Ignored,
            Command::Malformed(reason) => ClientVerdict::Malformed(reason),
        }
    }

    /// One whole server line held in memory: [`parse_reply`] then
    /// [`on_server_reply`](Self::on_server_reply).
    pub fn on_server_line(&mut self, line: &[u8], ctx: &PolicyContext) -> ServerVerdict {
        if self.is_encrypted() {
            return ServerVerdict::Encrypted;
        }
        self.on_server_reply(parse_reply(line), ctx)
    }

    /// One server reply line, from a [`ReplyScanner`](crate::ReplyScanner) at the end of a line
    /// (see the [module documentation](self)).
    pub fn on_server_reply(&mut self, reply: Reply, ctx: &PolicyContext) -> ServerVerdict {
        if self.is_encrypted() {
            return ServerVerdict::Encrypted;
        }
        match reply {
            Reply::Malformed(MalformedReason::TooLong) => {
                // Outside a multi-line reply, most likely a final reply (a long file name in a
                // 550, say) whose code is unknown. Counting it when it was not one attributes a
                // later reply early, until the next time nothing is awaited; not counting a final
                // reply would hold every later attribution back for good.
                if self.multiline_reply().is_none() {
                    self.count_final_reply();
                }
                ServerVerdict::Malformed(MalformedReason::TooLong)
            }
            Reply::Malformed(reason) => ServerVerdict::Malformed(reason),
            Reply::Text => ServerVerdict::Ignored,
            Reply::MultiLineStart { code } => {
                if self.multiline_reply().is_none() {
                    self.multiline_code = code;
                }
                ServerVerdict::Ignored
            }
            Reply::Final { code, body } => match self.multiline_reply() {
                // Inside a multi-line reply only its own code followed by a space ends it.
                Some(open) if open != code => ServerVerdict::Ignored,
                _ => {
                    self.multiline_code = 0;
                    self.on_final_reply(code, body, ctx)
                }
            },
        }
    }

    /// A PASV/EPSV/EPSV ALL waits for its reply (sent as it is or translated by the NAT64 ALG).
    fn passive_pending(&self) -> bool {
        matches!(
            self.pending,
            PENDING_PASV
                | PENDING_EPSV
                | PENDING_EPSV_ALL
                | PENDING_EPSV_AS_PASV
                | PENDING_ALG_EPSV_ALL
        )
    }

    /// Some request waits for its reply: a passive one, or a command the NAT64 ALG answers.
    fn request_pending(&self) -> bool {
        self.passive_pending()
            || matches!(
                self.pending,
                PENDING_ALG_ENABLED | PENDING_ALG_DISABLED | PENDING_ALG_UNKNOWN
            )
    }

    /// A request (`PENDING_*`) is being sent: its reply is due after those of the commands still
    /// awaited. Only one request is tracked: the oldest.
    fn request(&mut self, kind: u8) {
        if !self.request_pending() {
            self.pending = kind;
            self.replies_before_pending = self.awaited_replies;
        }
    }

    /// The NAT64 ALG turns a client's EPSV into PASV and answers EPSV ALL itself: the policy
    /// says so, the client left the ALG on, and no other request waits (the 227 or the reply to
    /// replace could not be told apart from another's: the EPSV then passes as it is).
    fn alg_answers_epsv(&self, ctx: &PolicyContext) -> bool {
        ctx.policy.epsv_as_pasv && self.nat64_alg_enabled(&ctx.policy) && !self.request_pending()
    }

    /// The client's line goes to the server as NOOP, whose final reply is replaced by `reply`
    /// (`pending` says which); the caller has checked that no request waits.
    fn answer_by_alg(&mut self, pending: u8, reply: AlgReply) -> ClientVerdict {
        self.request(pending);
        ClientVerdict::AnsweredByAlg(reply)
    }

    fn forget_awaited_replies(&mut self) {
        self.pending = PENDING_NONE;
        self.awaited_replies = 0;
        self.replies_before_pending = 0;
    }

    /// One final reply arrived. Returns what it answers: the pending request (`PENDING_*`) if every
    /// command sent before that one has been answered, else `PENDING_NONE`.
    fn count_final_reply(&mut self) -> u8 {
        self.awaited_replies = self.awaited_replies.saturating_sub(1);
        if !self.request_pending() {
            return PENDING_NONE;
        }
        match self.replies_before_pending.checked_sub(1) {
            Some(still_due) => {
                self.replies_before_pending = still_due;
                PENDING_NONE
            }
            None => {
                let answered = self.pending;
                self.pending = PENDING_NONE;
                answered
            }
        }
    }

    /// Counts one more open expectation if the policy allows it.
    fn reserve_expectation(&mut self, policy: &Policy) -> bool {
        if self.open_expectations >= policy.max_outstanding_expectations {
            return false;
        }
        self.open_expectations = self.open_expectations.saturating_add(1);
        true
    }

    // Always inlined: a BPF function takes at most five arguments, and this one's are more once
    // its aggregates are split.
    #[inline(always)]
    fn open_active(
        &mut self,
        addr: SocketAddr,
        field: Span,
        kind: ActiveKind,
        ctx: &PolicyContext,
    ) -> ClientVerdict {
        let refusal = if self.is_extended_passive_only() {
            RefusalReason::EpsvAllActive
        } else if self.is_transferring() || self.passive_pending() {
            RefusalReason::NotInCommandState
        } else if !ip::holds(&ctx.client, addr.ip()) {
            RefusalReason::Bounce
        } else if addr.port() < 1024 && !ctx.policy.allow_privileged_data_ports {
            RefusalReason::PrivilegedPort
        } else if !self.reserve_expectation(&ctx.policy) {
            RefusalReason::TooManyExpectations
        } else {
            return ClientVerdict::OpenActive { addr, field, kind };
        };
        ClientVerdict::Refused(refusal)
    }

    fn on_final_reply(&mut self, code: u16, body: ReplyBody, ctx: &PolicyContext) -> ServerVerdict {
        let transferring = self.is_transferring();
        let answered = if code >= 200 {
            self.flags &= !FLAG_TRANSFER;
            self.count_final_reply()
        } else {
            // 1xx is preliminary: the final reply is still to come.
            PENDING_NONE
        };
        if code == 421 {
            // The server is closing the connection: nothing more will be answered. Its 421
            // reaches the client as it is, whatever it answers.
            self.forget_awaited_replies();
        } else if let Some(reply) = self.alg_reply(answered) {
            return ServerVerdict::AlgReply(reply);
        }
        match body {
            ReplyBody::Passive227 { addr, field } if answered == PENDING_EPSV_AS_PASV => {
                self.passive_as_229(addr, field, ctx)
            }
            ReplyBody::Passive227 { addr, field } => {
                if answered != PENDING_PASV {
                    ServerVerdict::Unsolicited { code }
                } else if ctx.policy.passive_address_must_match_server
                    && !ip::holds(&ctx.server, IpAddr::V4(*addr.ip()))
                {
                    ServerVerdict::Refused(RefusalReason::PassiveAddressMismatch)
                } else if !ctx.policy.allows_passive_port(addr.port()) {
                    ServerVerdict::Refused(RefusalReason::PassivePortNotAllowed)
                } else if !self.reserve_expectation(&ctx.policy) {
                    ServerVerdict::Refused(RefusalReason::TooManyExpectations)
                } else {
                    ServerVerdict::OpenPassive {
                        endpoint: PassiveEndpoint::Pasv(addr),
                        field,
                    }
                }
            }
            ReplyBody::Passive229 {
                port,
                delimiter,
                field,
            } => {
                if answered != PENDING_EPSV {
                    ServerVerdict::Unsolicited { code }
                } else if !ctx.policy.allows_passive_port(port) {
                    ServerVerdict::Refused(RefusalReason::PassivePortNotAllowed)
                } else if !self.reserve_expectation(&ctx.policy) {
                    ServerVerdict::Refused(RefusalReason::TooManyExpectations)
                } else {
                    ServerVerdict::OpenPassive {
                        endpoint: PassiveEndpoint::Epsv { port, delimiter },
                        field,
                    }
                }
            }
            ReplyBody::Malformed(reason) => {
                let request = if code == 227 {
                    PENDING_PASV
                } else {
                    PENDING_EPSV
                };
                if answered == request || (code == 227 && answered == PENDING_EPSV_AS_PASV) {
                    ServerVerdict::Malformed(reason)
                } else {
                    ServerVerdict::Unsolicited { code }
                }
            }
            ReplyBody::Plain => self.on_plain_reply(code, answered, transferring),
        }
    }

    /// The reply the NAT64 ALG gives instead of the server's final reply to its NOOP, if that is
    /// what `answered` (`PENDING_*`) says the reply answers. Answering `EPSV ALL`, the ALG
    /// enforces it from now on, as when a server accepts it.
    fn alg_reply(&mut self, answered: u8) -> Option<AlgReply> {
        Some(match answered {
            PENDING_ALG_EPSV_ALL => {
                self.flags |= FLAG_EPSV_ALL;
                AlgReply::EpsvAllAccepted
            }
            PENDING_ALG_ENABLED => AlgReply::Enabled,
            PENDING_ALG_DISABLED => AlgReply::Disabled,
            PENDING_ALG_UNKNOWN => AlgReply::UnknownArgument,
            _ => return None,
        })
    }

    /// A 227 answering an EPSV the NAT64 ALG sent as PASV: returned as a 229, which names no
    /// address, so the address must be the server's whatever the policy says of 227s.
    #[inline(always)]
    fn passive_as_229(
        &mut self,
        addr: SocketAddrV4,
        field: Span,
        ctx: &PolicyContext,
    ) -> ServerVerdict {
        let refusal = if !ip::holds(&ctx.server, IpAddr::V4(*addr.ip())) {
            RefusalReason::PassiveAddressMismatch
        } else if !ctx.policy.allows_passive_port(addr.port()) {
            RefusalReason::PassivePortNotAllowed
        } else if !self.reserve_expectation(&ctx.policy) {
            RefusalReason::TooManyExpectations
        } else {
            return ServerVerdict::OpenPassive {
                endpoint: PassiveEndpoint::PasvAs229(addr),
                field,
            };
        };
        ServerVerdict::AlgRefused(refusal)
    }

    fn on_plain_reply(&mut self, code: u16, answered: u8, transferring: bool) -> ServerVerdict {
        if answered == PENDING_EPSV_ALL && (200..300).contains(&code) {
            self.flags |= FLAG_EPSV_ALL;
        }
        match code {
            234 if self.flags & FLAG_AUTH_SENT != 0 => {
                self.flags |= FLAG_ENCRYPTED;
                ServerVerdict::TlsStarted
            }
            234 => ServerVerdict::Unsolicited { code },
            125 | 150 => {
                self.flags |= FLAG_TRANSFER;
                ServerVerdict::TransferStarted
            }
            226 => ServerVerdict::TransferCompleted,
            250 if transferring => ServerVerdict::TransferCompleted,
            421 | 425 | 426 => ServerVerdict::TransferFailed,
            _ => ServerVerdict::Ignored,
        }
    }
}

#[cfg(test)]
mod tests;
