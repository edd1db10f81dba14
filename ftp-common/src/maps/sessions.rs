//! The session table: one record per FTP control session, with what it carries across segments
//! (line tracking, scanners, sequence adjustment, the last rewrites, a held address).

use super::{FlowKey, IpBytes, Table};

/// FTP control sessions: session key ([`FlowKey`]) to [`SessionEntry`].
pub const NAME: &str = "SESSIONS";

/// Capacity of the session table as the object declares it: the default sizing's (the agent sets
/// every load's from `--max-sessions`, see [`Capacities`](super::Capacities)).
pub const MAX_SESSIONS: u32 = super::Capacities::DEFAULT.sessions;

pub const TABLE: Table = Table::new::<FlowKey, SessionEntry>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::HashMap<T, FlowKey, SessionEntry>;

/// What a control session translates.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// A client behind the router, masqueraded behind the public address.
    Masquerade = 0,
    /// An outside client of a server behind the router, published on a public port.
    Publish = 1,
    /// An IPv6 client behind the router, followed untranslated: the router is a firewall, not a
    /// NAT, and only the data connections the session announces get through it.
    Firewall = 2,
    /// An IPv6 client behind the router talking to an IPv4 server through the NAT64 prefix: its
    /// connections are translated to IPv4 from the NAT64 pool address (RFC 6146), its control
    /// channel by the FTP ALG of RFC 6384.
    Nat64 = 3,
}

impl SessionKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(SessionKind::Masquerade),
            1 => Some(SessionKind::Publish),
            2 => Some(SessionKind::Firewall),
            3 => Some(SessionKind::Nat64),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            SessionKind::Masquerade => "masquerade",
            SessionKind::Publish => "publish",
            SessionKind::Firewall => "firewall",
            SessionKind::Nat64 => "nat64",
        }
    }
}

/// One FTP control session: the value of the [`NAME`] map, keyed by the control
/// connection's original-direction [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    /// `bpf_ktime_get_ns` when the control connection opened.
    pub opened_ns: u64,
    /// The control channel's protocol state.
    pub state: crate::Session,
    /// Line boundaries of the client's commands.
    pub client_lines: crate::LineTracker,
    /// Line boundaries of the server's replies.
    pub server_lines: crate::LineTracker,
    /// Interface of the client side.
    pub lan_ifindex: u32,
    /// Data connections opened so far.
    pub data_flows: u32,
    /// Lines that could not be parsed (passed through untouched).
    pub malformed_lines: u32,
    /// PORT/EPRT/227/229 the policy refused (passed through untouched, nothing opened).
    pub refusals: u32,
    /// The client's command being read (carries across segments).
    pub commands: crate::CommandScanner,
    /// The server's reply being read (carries across segments).
    pub replies: crate::ReplyScanner,
    /// How the client's byte stream moved when its PORT/EPRT lines were rewritten.
    pub client_seq: crate::SeqAdjust,
    /// How the server's byte stream moved when its 227/229 lines were rewritten (publish mode).
    pub server_seq: crate::SeqAdjust,
    /// The last rewrite of a client segment, repeated identically if the segment is retransmitted.
    pub client_rewrite: RewriteRecord,
    /// The same for the server's segments.
    pub server_rewrite: RewriteRecord,
    /// The server's own address and control port (network byte order): the control connection's
    /// destination when masquerading, the published server when publishing.
    pub server_addr: IpBytes,
    pub server_port: [u8; 2],
    /// A [`SessionKind`] as `u8`.
    pub kind: u8,
    /// Bytes of `user` in use.
    pub user_len: u8,
    /// The [`RELEASED`](super::released::NAME) count of this session the datapath has applied (a `u32`, as bytes
    /// to keep the record free of padding).
    pub released_seen: [u8; 4],
    pub _pad: [u8; 4],
    /// The name of the client's last USER command (at most [`SESSION_USER_LEN`] bytes of it).
    pub user: [u8; SESSION_USER_LEN],
    /// The last address (or line) of the client held back because a segment ended inside it.
    pub held: HeldField,
    /// The same for the server: the last reply line the NAT64 ALG replaces whole that a segment
    /// ended inside of.
    pub server_held: HeldField,
    /// What the session may still report (events of its lines are bounded per second), and how
    /// many it could not.
    pub events: super::EventBudget,
    /// The control connection's TCP window, each side in its own sequence space: segments outside
    /// it change nothing (issue 12).
    pub client_window: crate::TcpWindow,
    pub server_window: crate::TcpWindow,
}

/// Bytes a [`HeldField`] can keep: a PORT argument is at most 23 (see
/// [`MAX_PORT_FIELD_LEN`](crate::MAX_PORT_FIELD_LEN)), an EPRT one 49 (an IPv6 address, NAT66).
/// A line the NAT64 ALG replaces whole is held from its first byte: the longest that matters,
/// `EPRT |2|` + 39 bytes of IPv6 text + `|65535|` and its CR, is 55. Rounded up so that the
/// record stays a multiple of 8 bytes.
pub const HELD_FIELD_MAX: usize = 60;

const _: () = assert!(
    HELD_FIELD_MAX >= "EPRT ".len() + crate::MAX_EPRT_FIELD_LEN + "\r".len()
        && core::mem::size_of::<HeldField>().is_multiple_of(8)
);

/// The [`HeldField::state`] values.
pub mod hold_state {
    /// Nothing was ever held.
    pub const NONE: u8 = 0;
    /// The bytes are held: the next segment completes the line (or gets them back).
    pub const HOLDING: u8 = 1;
    /// The line was completed; the record stays to repeat the cut on a retransmission.
    pub const RELEASED: u8 = 2;
}

/// The tail of a segment that ended inside an address ftpnat rewrites (a masqueraded client's
/// PORT/EPRT), or inside a line the NAT64 ALG replaces whole (from the line's first byte: a
/// client's command, a server's reply). The
/// part already in that segment cannot be rewritten once forwarded, so it is cut from the segment
/// and kept here; the next segment then carries the whole rewritten address (or line) or, if the
/// completed line is not rewritten, these bytes put back in front of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldField {
    /// The cut segment's sequence number (sender's space) and original payload length.
    pub seq: u32,
    pub payload_len: u16,
    /// Where in that payload the held bytes began; they ran to its end.
    pub off: u16,
    /// How many bytes are held.
    pub len: u8,
    /// A [`hold_state`] value.
    pub state: u8,
    pub _pad: [u8; 2],
    pub bytes: [u8; HELD_FIELD_MAX],
}

impl Default for HeldField {
    fn default() -> Self {
        Self::new()
    }
}

impl HeldField {
    pub const fn new() -> Self {
        Self {
            seq: 0,
            payload_len: 0,
            off: 0,
            len: 0,
            state: hold_state::NONE,
            _pad: [0; 2],
            bytes: [0; HELD_FIELD_MAX],
        }
    }

    /// Sequence number of the byte after the cut segment: where the line continues.
    #[inline(always)]
    pub fn next_seq(&self) -> u32 {
        self.seq.wrapping_add(u32::from(self.payload_len))
    }

    /// Copies the held bytes to the start of `out`; their count, or `None` if `out` is shorter.
    #[inline(always)]
    pub fn copy_into(&self, out: &mut [u8]) -> Option<usize> {
        let len = usize::from(self.len).min(HELD_FIELD_MAX);
        let mut i = 0;
        while i < len {
            *out.get_mut(i)? = *self.bytes.get(i)?;
            i += 1;
        }
        Some(len)
    }
}

/// How many bytes of a USER name a session keeps.
pub const SESSION_USER_LEN: usize = 32;

/// What kind of line a [`RewriteRecord`] rewrote.
pub mod rewrite_kind {
    pub const NONE: u8 = 0;
    /// A client's PORT argument, now the public address and a window port.
    pub const PORT: u8 = 1;
    /// A client's EPRT argument, likewise.
    pub const EPRT: u8 = 2;
    /// A server's 227 numbers (publish mode), now the public address and a window port.
    pub const PASV_227: u8 = 3;
    /// A server's 229 port (publish mode), now a window port.
    pub const EPSV_229: u8 = 4;
    /// A PORT argument replaced because the window had no free port: see
    /// [`crate::REFUSED_PORT_FIELD`].
    pub const PORT_REFUSED: u8 = 5;
    /// An EPRT argument replaced because the window had no free port.
    pub const EPRT_REFUSED: u8 = 6;
    /// A whole 227/229 line replaced by a 425 because the window had no free port: see
    /// [`crate::REFUSED_PASSIVE_LINE`].
    pub const PASSIVE_REFUSED: u8 = 7;
    /// The tail of a segment that ended inside an address, removed and held
    /// ([`super::HeldField`]); nothing replaces it.
    pub const CUT: u8 = 8;
    /// Held bytes put back in front of the next segment, the line being passed as it was.
    pub const RESTORE: u8 = 9;
    // The NAT64 ALG's (RFC 6384): each replaces a whole line, all of it but its LF (the field is
    // the line without its LF), the new line ending in CR; see [`crate::format_rewrite`].
    /// A client's `EPSV`, now [`crate::PASV_LINE`].
    pub const EPSV_AS_PASV: u8 = 10;
    /// A client's `EPRT |2|…`, now `PORT` with the pool address and a window port
    /// ([`crate::format_port_line`]; `public_port` is the window port).
    pub const EPRT_AS_PORT: u8 = 11;
    /// A command the ALG answers itself (`EPSV ALL`, `ALGS …`), now [`crate::NOOP_LINE`].
    pub const LOCAL_COMMAND: u8 = 12;
    /// A server's 227 answering a translated EPSV, now a 229 ([`crate::format_229_line`];
    /// `public_port` is the server's port).
    pub const PASV_AS_229: u8 = 13;
    /// A server's reply to a [`LOCAL_COMMAND`] (or a 227 answering a translated EPSV that was
    /// refused), now the ALG's own: the [`crate::AlgReply`] whose code `delimiter` holds.
    pub const ALG_REPLY: u8 = 14;

    /// Whether `kind` rewrites a server reply (else a client command).
    pub const fn is_reply(kind: u8) -> bool {
        matches!(
            kind,
            PASV_227 | EPSV_229 | PASSIVE_REFUSED | PASV_AS_229 | ALG_REPLY
        )
    }

    /// Whether `kind` replaces a whole line (all of it but its LF) rather than a field in it.
    pub const fn is_whole_line(kind: u8) -> bool {
        matches!(
            kind,
            PASSIVE_REFUSED | EPSV_AS_PASV | EPRT_AS_PORT | LOCAL_COMMAND | PASV_AS_229 | ALG_REPLY
        )
    }
}

/// One rewritten control line: where its field sat in the segment and what replaced it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewriteRecord {
    /// Sequence number of the segment (client space).
    pub seq: u32,
    /// The segment's original payload length.
    pub payload_len: u16,
    /// The field's offset in the payload and its original length.
    pub field_off: u16,
    pub field_len: u16,
    /// The window port announced instead of the original one (host byte order); 0 for the
    /// refusals.
    pub public_port: u16,
    /// A [`rewrite_kind`] value.
    pub kind: u8,
    /// The EPRT delimiter; for [`rewrite_kind::ALG_REPLY`], the [`crate::AlgReply`] code.
    pub delimiter: u8,
    pub _pad: [u8; 2],
}

impl RewriteRecord {
    /// No rewrite: what a new session's records hold.
    pub const NONE: Self = Self {
        seq: 0,
        payload_len: 0,
        field_off: 0,
        field_len: 0,
        public_port: 0,
        kind: rewrite_kind::NONE,
        delimiter: 0,
        _pad: [0; 2],
    };
}

// The protocol state types in `SessionEntry` are documented as valid for every bit pattern.
pod!(SessionEntry);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn session_types_have_no_padding() {
        assert_eq!(size_of::<RewriteRecord>(), 16);
        assert_eq!(
            size_of::<SessionEntry>(),
            8 + 3 * 8
                + 4 * 4
                + 92
                + 40
                + 2 * 20
                + 2 * 16
                + 16
                + 2
                + 1
                + 1
                + 4
                + 4
                + SESSION_USER_LEN
                + 2 * size_of::<HeldField>()
                + 16
                + 2 * 20
        );
        assert_eq!(size_of::<crate::maps::EventBudget>(), 16);
        assert_eq!(size_of::<crate::TcpWindow>(), 20);
        assert_eq!(size_of::<SessionEntry>() % 8, 0);
        assert_eq!(size_of::<HeldField>(), 12 + HELD_FIELD_MAX);
    }
}
