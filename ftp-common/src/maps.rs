//! Keys and values of the BPF maps the kernel programs and the agent share.
//!
//! All are `#[repr(C)]` with fields ordered so that there is no implicit padding: the kernel hashes
//! and compares keys byte by byte, and the agent reads values from another process.

/// Map names, as the agent looks them up in the object and pins them.
pub mod names {
    /// Per-CPU packet/byte counters by interface and direction.
    pub const TRAFFIC: &str = "TRAFFIC";
    /// Interfaces the agent attached to: ifindex to name and role, written by the agent.
    pub const INTERFACES: &str = "INTERFACES";
    /// The datapath's settings (one [`super::DatapathConfig`]), written by the agent before attach.
    pub const CONFIG: &str = "CONFIG";
    /// Masqueraded source prefixes (LPM trie of IPv4 prefixes), written by the agent.
    pub const MASQUERADE: &str = "MASQUERADE";
    /// Translated connections, one entry per direction: [`super::FlowKey`] to [`super::FlowEntry`].
    pub const FLOWS: &str = "FLOWS";
    /// Free ports of the port window (a queue the agent fills and refills, the kernel pops).
    pub const FREE_PORTS: &str = "FREE_PORTS";
    /// Datapath event counters, indexed by [`super::Counter`] (per CPU).
    pub const COUNTERS: &str = "COUNTERS";
    /// FTP control sessions: session key ([`super::FlowKey`]) to [`super::SessionEntry`].
    pub const SESSIONS: &str = "SESSIONS";
    /// Announced data connections not yet opened: [`super::ExpectKey`] to [`super::Expectation`].
    pub const EXPECTS: &str = "EXPECTS";
    /// Published servers: public port (`u16`, host byte order) to [`super::PublishTarget`].
    pub const PUBLISH: &str = "PUBLISH";
    /// Expectations the agent let expire, per session: [`super::FlowKey`] to a `u32` count that
    /// only the agent writes and only grows; the datapath applies the growth to the session (see
    /// [`super::SessionEntry::released_seen`]), so the agent never writes a session record.
    pub const RELEASED: &str = "RELEASED";
    /// Refusals and unparseable lines by reason: a per-CPU array of `u64` indexed by
    /// [`super::refusal_slot`] and [`super::malformed_slot`].
    pub const REASONS: &str = "REASONS";
    /// What the datapath saw, for the agent: a ring buffer of [`super::Event`]. Not pinned: each
    /// agent reads its own programs' events.
    pub const EVENTS: &str = "EVENTS";
    /// The program array of the ingress program's stages (see [`super::stage`]). Each load has its
    /// own, pinned by the agent once filled: a program array is emptied when no process or pin
    /// holds it, which would leave the attached programs without their stages.
    pub const STAGES: &str = "STAGES";
}

/// Program names in the eBPF object.
pub mod programs {
    /// TC classifier attached at the ingress of every router interface ftpnat manages.
    pub const INGRESS: &str = "ftpnat_ingress";
    /// TC classifier attached at the egress of every router interface ftpnat manages.
    pub const EGRESS: &str = "ftpnat_egress";
    /// The stages the ingress program continues in (tail calls through the [`super::names::STAGES`]
    /// program array), by their slot in it. Each is verified as a program of its own, so the
    /// verifier's work on one does not add to another's.
    pub const STAGES: [(u32, &str); super::stage::COUNT as usize] = [
        (super::stage::OPEN, "ftpnat_open"),
        (super::stage::CLIENT, "ftpnat_client"),
        (super::stage::SERVER, "ftpnat_server"),
        (super::stage::REWRITE, "ftpnat_rewrite"),
        (super::stage::REPLAY, "ftpnat_replay"),
        (super::stage::CONTROL_FORWARD, "ftpnat_control_forward"),
    ];
}

/// Slots of the [`names::STAGES`] program array.
pub mod stage {
    /// An opening SYN no flow knows: expectations, new control sessions, pinholes, resets.
    pub const OPEN: u32 = 0;
    /// A packet from a control connection's client: line tracking, the command scanner, the
    /// state machine.
    pub const CLIENT: u32 = 1;
    /// A packet from a control connection's server: line tracking, the reply scanner, the state
    /// machine.
    pub const SERVER: u32 = 2;
    /// A PORT/EPRT/227/229 the client or server stage accepted: the text is rewritten, or held
    /// bytes cut or given back.
    pub const REWRITE: u32 = 3;
    /// A retransmission of a rewritten segment: the same rewrite again.
    pub const REPLAY: u32 = 4;
    /// Every control packet last: sequence adjustment, translation, redirect.
    pub const CONTROL_FORWARD: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// Capacity of the flow table (entries; each connection takes two).
pub const MAX_FLOWS: u32 = 65_536;
/// Capacity of the free-port queue: a window can be at most this many ports.
pub const MAX_WINDOW_PORTS: u32 = 65_536;
/// Capacity of the session table.
pub const MAX_SESSIONS: u32 = 16_384;
/// Capacity of the expectation table.
pub const MAX_EXPECTATIONS: u32 = 8_192;
/// How many FTP control ports the datapath can watch.
pub const MAX_FTP_PORTS: usize = 8;
/// How many servers one agent can publish.
pub const MAX_PUBLISHED: u32 = 64;

/// Maximum number of (interface, direction) pairs the counter map holds.
pub const MAX_COUNTED_INTERFACES: u32 = 64;

/// The way a packet crossed an interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Key of the [`names::TRAFFIC`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrafficKey {
    pub ifindex: u32,
    /// A [`Direction`] as `u32`; kept raw so every bit pattern read from a map is a valid value.
    pub direction: u32,
}

impl TrafficKey {
    pub const fn new(ifindex: u32, direction: Direction) -> Self {
        Self {
            ifindex,
            direction: direction as u32,
        }
    }
}

/// Value of the [`names::TRAFFIC`] map (one per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    /// Bytes on the wire as TC sees them (`skb->len`, from the link-layer header on).
    pub bytes: u64,
}

impl TrafficCounters {
    pub fn add(&mut self, other: &TrafficCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// What an attached interface is for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceRole {
    /// Faces the FTP servers and the public address.
    Wan = 0,
    /// Faces the FTP clients (masqueraded prefixes).
    Lan = 1,
}

impl InterfaceRole {
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(InterfaceRole::Wan),
            1 => Some(InterfaceRole::Lan),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            InterfaceRole::Wan => "wan",
            InterfaceRole::Lan => "lan",
        }
    }
}

/// Linux's `IFNAMSIZ`, including the terminating NUL.
pub const IFNAME_LEN: usize = 16;

/// Value of the [`names::INTERFACES`] map, keyed by ifindex (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// NUL-padded interface name as the agent saw it when it attached.
    pub name: [u8; IFNAME_LEN],
    /// An [`InterfaceRole`] as `u32`.
    pub role: u32,
}

impl InterfaceInfo {
    /// Builds the record; `None` if the name does not fit `IFNAMSIZ`.
    pub fn new(name: &str, role: InterfaceRole) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAME_LEN {
            return None;
        }
        let mut buf = [0u8; IFNAME_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            name: buf,
            role: role as u32,
        })
    }

    /// The name up to its first NUL; `None` if it is not UTF-8.
    pub fn name(&self) -> Option<&str> {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAME_LEN);
        core::str::from_utf8(&self.name[..end]).ok()
    }
}

/// The datapath's settings, the single value of the [`names::CONFIG`] array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// How long an announced data connection may take to open (`--expect-timeout`).
    pub expect_timeout_ns: u64,
    /// The address masqueraded connections leave with (network byte order).
    pub public_ip: [u8; 4],
    /// Where translated LAN-to-WAN packets are redirected.
    pub wan_ifindex: u32,
    /// FTP control ports (host byte order); 0 marks an unused slot.
    pub ftp_ports: [u16; MAX_FTP_PORTS],
    /// The port window (host byte order), for reports; the kernel takes ports from
    /// [`names::FREE_PORTS`].
    pub window_lo: u16,
    pub window_hi: u16,
    /// 1 if a PORT/EPRT may name a port below 1024 (`--allow-privileged-data-ports`).
    pub allow_privileged_data_ports: u8,
    /// How many announced data connections one session may hold open at once
    /// (`--max-expectations-per-session`); 0, the value of a record written before this field
    /// existed, means the default.
    pub max_expectations_per_session: u8,
    pub _pad: [u8; 2],
}

impl DatapathConfig {
    /// The policy a session's announcements are checked against.
    #[inline(always)]
    pub fn policy(&self) -> crate::Policy {
        let mut policy = crate::Policy::new();
        policy.allow_privileged_data_ports = self.allow_privileged_data_ports != 0;
        if self.max_expectations_per_session != 0 {
            policy.max_outstanding_expectations = self.max_expectations_per_session;
        }
        policy
    }

    #[inline(always)]
    pub fn is_ftp_port(&self, port: u16) -> bool {
        // A plain loop over a fixed array: bounded, so the verifier accepts it unrolled.
        let mut i = 0;
        while i < MAX_FTP_PORTS {
            if self.ftp_ports[i] != 0 && self.ftp_ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether `port` (host byte order) belongs to the port window.
    #[inline(always)]
    pub fn in_window(&self, port: u16) -> bool {
        self.window_lo <= port && port <= self.window_hi
    }
}

/// Where a published server is reached: the value of the [`names::PUBLISH`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishTarget {
    /// The server's own address and control port (network byte order).
    pub server_addr: [u8; 4],
    pub server_port: [u8; 2],
    pub _pad: [u8; 2],
    /// The interface the server is reached by.
    pub lan_ifindex: u32,
}

/// What a control session translates.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// A client behind the router, masqueraded behind the public address.
    Masquerade = 0,
    /// An outside client of a server behind the router, published on a public port.
    Publish = 1,
}

impl SessionKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(SessionKind::Masquerade),
            1 => Some(SessionKind::Publish),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            SessionKind::Masquerade => "masquerade",
            SessionKind::Publish => "publish",
        }
    }
}

/// A TCP connection as seen in one direction, with addresses and ports as they appear in the
/// headers (network byte order). Byte arrays keep the key free of padding and alignment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl FlowKey {
    /// The same connection seen from the other side.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// What kind of connection a flow entry belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// An FTP control connection from a masqueraded client.
    Control = 0,
    /// A data connection opened through an expectation.
    Data = 1,
}

impl FlowKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(FlowKind::Control),
            1 => Some(FlowKind::Data),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            FlowKind::Control => "control",
            FlowKind::Data => "data",
        }
    }
}

/// Which side of its connection a flow entry translates.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowDirection {
    /// From the side that opened the connection.
    Original = 0,
    /// The answers.
    Reply = 1,
}

/// [`FlowEntry::flags`] bits, set by the kernel as it sees them, read by the agent's expiry.
pub mod flow_flags {
    /// A FIN went this way.
    pub const FIN: u8 = 1;
    /// An RST went this way.
    pub const RST: u8 = 2;
    /// A packet other than the opening SYN went this way (the connection got an answer).
    pub const ESTABLISHED: u8 = 4;
    /// This entry owns [`super::FlowEntry::public_port`]: the port returns to the window with it.
    pub const OWNS_PORT: u8 = 8;
}

/// The translation of one direction of a connection: the value of the [`names::FLOWS`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub packets: u64,
    /// IP bytes (header included) that went this way.
    pub bytes: u64,
    /// `bpf_ktime_get_ns` of the last packet (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
    /// The control connection (original direction key) this flow belongs to.
    pub session: FlowKey,
    /// Header values after translation (network byte order).
    pub new_saddr: [u8; 4],
    pub new_daddr: [u8; 4],
    /// Interface the translated packet leaves by.
    pub out_ifindex: u32,
    pub new_sport: [u8; 2],
    pub new_dport: [u8; 2],
    /// The window port this connection uses on the public side (host byte order).
    pub public_port: u16,
    /// A [`FlowKind`] as `u8`.
    pub kind: u8,
    /// A [`FlowDirection`] as `u8`.
    pub direction: u8,
    /// [`flow_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 7],
}

impl FlowEntry {
    /// The key under which the other direction of this translated connection arrives: the
    /// translated tuple, reversed. The only place a reply key is derived.
    pub const fn reply_key(&self) -> FlowKey {
        FlowKey {
            saddr: self.new_daddr,
            daddr: self.new_saddr,
            sport: self.new_dport,
            dport: self.new_sport,
        }
    }

    /// The entry of the other direction of this translation, which `key` (this entry's own key)
    /// opened: its packets get `key`'s tuple back, reversed, and leave by `out_ifindex`. It owns no
    /// port (this direction returns the window port, if any, when the connection ends).
    pub const fn reply_of(&self, key: &FlowKey, out_ifindex: u32) -> Self {
        Self {
            new_saddr: key.daddr,
            new_daddr: key.saddr,
            new_sport: key.dport,
            new_dport: key.sport,
            out_ifindex,
            direction: FlowDirection::Reply as u8,
            flags: 0,
            ..*self
        }
    }
}

/// One FTP control session: the value of the [`names::SESSIONS`] map, keyed by the control
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
    pub server_addr: [u8; 4],
    pub server_port: [u8; 2],
    /// A [`SessionKind`] as `u8`.
    pub kind: u8,
    /// Bytes of `user` in use.
    pub user_len: u8,
    /// The [`names::RELEASED`] count of this session the datapath has applied (a `u32`, as bytes
    /// to keep the record free of padding).
    pub released_seen: [u8; 4],
    /// The name of the client's last USER command (at most [`SESSION_USER_LEN`] bytes of it).
    pub user: [u8; SESSION_USER_LEN],
    /// The last address held back because a segment ended inside it.
    pub held: HeldField,
}

/// Bytes of an announced address a [`HeldField`] can keep: an IPv4 PORT argument is at most 23,
/// an EPRT one 25.
pub const HELD_FIELD_MAX: usize = 36;

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
/// PORT/EPRT). The part already in that segment cannot be rewritten once forwarded, so it is cut
/// from the segment and kept here; the next segment then carries the whole rewritten address or,
/// if the completed line is not rewritten, these bytes put back in front of its own.
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

    /// Whether `kind` rewrites a server reply (else a client command).
    pub const fn is_reply(kind: u8) -> bool {
        matches!(kind, PASV_227 | EPSV_229 | PASSIVE_REFUSED)
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
    /// The EPRT delimiter.
    pub delimiter: u8,
    pub _pad: [u8; 2],
}

/// The data connection an expectation admits, as its opening SYN arrives at the router: from
/// `saddr` (any source port) to `daddr:dport`. Network byte order.
///
/// An [`ExpectationPath::Inbound`] expectation is keyed with `saddr` all zero: the window port in
/// `dport` is unique, and a SYN from the wrong peer must still find the expectation so that it is
/// told apart from a SYN nobody announced (see [`Expectation::peer`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpectKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub dport: [u8; 2],
    pub _pad: [u8; 2],
}

impl ExpectKey {
    /// An [`ExpectationPath::Outbound`] expectation: `from` (behind the router) may connect to
    /// `to:port` (host byte order).
    pub const fn outbound(from: [u8; 4], to: [u8; 4], port: u16) -> Self {
        Self {
            saddr: from,
            daddr: to,
            dport: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    /// An [`ExpectationPath::Inbound`] expectation for window port `port` of the public address.
    pub const fn inbound(public_ip: [u8; 4], port: u16) -> Self {
        Self::outbound([0; 4], public_ip, port)
    }
}

/// Which way the announced data connection goes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectationKind {
    /// PORT/EPRT: the server connects to the client through a window port of the public address.
    Active = 0,
    /// 227/229: the client connects to the port the server announced.
    Passive = 1,
}

impl ExpectationKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(ExpectationKind::Active),
            1 => Some(ExpectationKind::Passive),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ExpectationKind::Active => "active",
            ExpectationKind::Passive => "passive",
        }
    }
}

/// How the router carries an expected data connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectationPath {
    /// It arrives from the WAN at a window port of the public address, reserved when the address
    /// was announced, and is DNATed to the target (masquerade PORT/EPRT, publish 227/229).
    Inbound = 0,
    /// It leaves from behind the router for the announced address and is SNATed behind a window
    /// port taken when it opens (masquerade 227/229, publish PORT/EPRT).
    Outbound = 1,
}

impl ExpectationPath {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(ExpectationPath::Inbound),
            1 => Some(ExpectationPath::Outbound),
            _ => None,
        }
    }
}

/// An announced data connection, admitted once: the value of the [`names::EXPECTS`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// `bpf_ktime_get_ns` after which it no longer admits anything.
    pub expires_ns: u64,
    /// The control connection (original direction key) that announced it.
    pub session: FlowKey,
    /// Where the data connection is delivered: the client's announced address (active) or the
    /// server (passive). Network byte order.
    pub target_addr: [u8; 4],
    /// The client side's interface (where active data connections are delivered).
    pub lan_ifindex: u32,
    pub target_port: [u8; 2],
    /// The window port reserved for it (inbound), 0 while none is (outbound). Host byte order.
    pub public_port: u16,
    /// The only address the data connection may come from (network byte order).
    pub peer: [u8; 4],
    /// An [`ExpectationKind`] as `u8` (the FTP mode, for reports).
    pub kind: u8,
    /// An [`ExpectationPath`] as `u8`.
    pub path: u8,
    pub _pad: [u8; 2],
}

/// Slots of the [`names::REASONS`] array: 16 for refusals, then 16 for unparseable lines.
pub const REASON_SLOTS: u32 = 32;

/// The [`names::REASONS`] slot of a refusal: its [`crate::RefusalReason`] code.
pub const fn refusal_slot(code: u8) -> u32 {
    code as u32 & 15
}

/// The [`names::REASONS`] slot of an unparseable line, by its [`crate::MalformedReason`] code.
pub const fn malformed_slot(code: u8) -> u32 {
    16 + (code as u32 & 15)
}

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
    /// An expectation was recorded. `detail`: its [`ExpectationKind`]; `addr:port`: where the data
    /// connection is expected (the public window port, or the announced address).
    ExpectationCreated = 4,
    /// A data connection opened through an expectation. `detail`: its [`ExpectationKind`];
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

/// One record of the [`names::EVENTS`] ring buffer.
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

/// Indexes of the [`names::COUNTERS`] per-CPU array: what the datapath did, for `ftpnat stats`.
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
    /// Expectations that could not be recorded (table full); the line passed untouched.
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
}

impl Counter {
    pub const ALL: [Counter; 16] = [
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
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays with no
    // implicit padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::TrafficKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InterfaceInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExpectKey {}
    // SAFETY: as above (the protocol state types are documented as valid for every bit pattern).
    unsafe impl aya::Pod for super::SessionEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Expectation {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PublishTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The tuple a packet with `key` carries after `entry`'s translation.
    fn translated(entry: &FlowEntry) -> FlowKey {
        FlowKey {
            saddr: entry.new_saddr,
            daddr: entry.new_daddr,
            sport: entry.new_sport,
            dport: entry.new_dport,
        }
    }

    #[test]
    fn a_reply_comes_back_to_the_connections_own_tuple() {
        // A masqueraded client 10.0.0.2:40000 -> 203.0.113.10:21 behind 198.51.100.1:61000.
        let key = FlowKey {
            saddr: [10, 0, 0, 2],
            daddr: [203, 0, 113, 10],
            sport: 40000u16.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        };
        let original = FlowEntry {
            packets: 0,
            bytes: 0,
            last_seen_ns: 7,
            session: key,
            new_saddr: [198, 51, 100, 1],
            new_daddr: key.daddr,
            out_ifindex: 2,
            new_sport: 61000u16.to_be_bytes(),
            new_dport: key.dport,
            public_port: 61000,
            kind: FlowKind::Control as u8,
            direction: FlowDirection::Original as u8,
            flags: flow_flags::OWNS_PORT,
            _pad: [0; 7],
        };
        let reply_key = original.reply_key();
        assert_eq!(reply_key, translated(&original).reversed());
        assert_eq!(
            reply_key,
            FlowKey {
                saddr: [203, 0, 113, 10],
                daddr: [198, 51, 100, 1],
                sport: 21u16.to_be_bytes(),
                dport: 61000u16.to_be_bytes(),
            }
        );
        let reply = original.reply_of(&key, 3);
        // The server's answer, translated, is the client's own connection seen from the server.
        assert_eq!(translated(&reply), key.reversed());
        assert_eq!(reply.reply_key(), key);
        assert_eq!(reply.out_ifindex, 3);
        assert_eq!(reply.direction, FlowDirection::Reply as u8);
        assert_eq!(
            reply.flags, 0,
            "only the original direction gives its port back"
        );
        assert_eq!(
            (reply.session, reply.public_port, reply.kind),
            (key, 61000, original.kind)
        );
    }

    #[test]
    fn inbound_expectations_are_keyed_without_a_source() {
        let key = ExpectKey::inbound([198, 51, 100, 1], 61001);
        assert_eq!(key.saddr, [0; 4]);
        assert_eq!(key.dport, 61001u16.to_be_bytes());
        assert_eq!(
            ExpectKey::outbound([10, 0, 0, 2], [203, 0, 113, 10], 20),
            ExpectKey {
                saddr: [10, 0, 0, 2],
                daddr: [203, 0, 113, 10],
                dport: [0, 20],
                _pad: [0; 2],
            }
        );
    }

    #[test]
    fn map_types_have_no_padding() {
        assert_eq!(size_of::<TrafficKey>(), 8);
        assert_eq!(size_of::<TrafficCounters>(), 16);
        assert_eq!(size_of::<InterfaceInfo>(), IFNAME_LEN + 4);
        assert_eq!(
            size_of::<DatapathConfig>(),
            8 + 4 + 4 + 2 * MAX_FTP_PORTS + 4 + 4
        );
        assert_eq!(size_of::<RewriteRecord>(), 16);
        assert_eq!(
            size_of::<SessionEntry>(),
            8 + 3 * 8
                + 4 * 4
                + 92
                + 40
                + 2 * 20
                + 2 * 16
                + 4
                + 2
                + 1
                + 1
                + 4
                + SESSION_USER_LEN
                + size_of::<HeldField>()
        );
        assert_eq!(size_of::<HeldField>(), 12 + HELD_FIELD_MAX);
        assert_eq!(size_of::<PublishTarget>(), 12);
        assert_eq!(
            size_of::<Event>(),
            8 + 12 + 4 + 4 + 2 + 2 + 8 + EVENT_TEXT_LEN
        );
        assert_eq!(size_of::<FlowKey>(), 12);
        assert_eq!(size_of::<ExpectKey>(), 12);
        assert_eq!(size_of::<Expectation>(), 8 + 12 + 4 + 4 + 2 + 2 + 4 + 2 + 2);
        assert_eq!(size_of::<FlowEntry>(), 24 + 12 + 8 + 4 + 4 + 2 + 3 + 7);
    }

    #[test]
    fn flow_key_reversal_swaps_ends_and_is_an_involution() {
        let key = FlowKey {
            saddr: [10, 0, 0, 2],
            daddr: [203, 0, 113, 10],
            sport: 40000u16.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        };
        let back = key.reversed();
        assert_eq!(back.saddr, key.daddr);
        assert_eq!(back.daddr, key.saddr);
        assert_eq!(back.sport, key.dport);
        assert_eq!(back.dport, key.sport);
        assert_eq!(back.reversed(), key);
    }

    fn test_config() -> DatapathConfig {
        DatapathConfig {
            expect_timeout_ns: 0,
            public_ip: [192, 0, 2, 1],
            wan_ifindex: 2,
            ftp_ports: [0; MAX_FTP_PORTS],
            window_lo: 61000,
            window_hi: 61999,
            allow_privileged_data_ports: 0,
            max_expectations_per_session: 0,
            _pad: [0; 2],
        }
    }

    #[test]
    fn the_policy_follows_the_config_and_zero_means_the_default() {
        let mut config = test_config();
        assert_eq!(config.policy(), crate::Policy::new());
        config.allow_privileged_data_ports = 1;
        config.max_expectations_per_session = 9;
        let policy = config.policy();
        assert!(policy.allow_privileged_data_ports);
        assert_eq!(policy.max_outstanding_expectations, 9);
        assert_eq!(
            policy.passive_address_must_match_server,
            crate::Policy::new().passive_address_must_match_server
        );
    }

    #[test]
    fn ftp_port_slots_match_only_configured_ports() {
        let mut config = test_config();
        assert!(!config.is_ftp_port(0), "an empty slot is not port 0");
        assert!(!config.is_ftp_port(21));
        config.ftp_ports[0] = 21;
        config.ftp_ports[MAX_FTP_PORTS - 1] = 2121;
        assert!(config.is_ftp_port(21));
        assert!(config.is_ftp_port(2121));
        assert!(!config.is_ftp_port(22));
    }

    #[test]
    fn interface_info_round_trips_names() {
        let info = InterfaceInfo::new("wan0", InterfaceRole::Wan).unwrap();
        assert_eq!(info.name(), Some("wan0"));
        assert_eq!(InterfaceRole::from_raw(info.role), Some(InterfaceRole::Wan));
        assert!(InterfaceInfo::new("", InterfaceRole::Lan).is_none());
        assert!(InterfaceInfo::new("sixteen-chars-xx", InterfaceRole::Lan).is_none());
        assert_eq!(
            InterfaceInfo::new("fifteen-chars-x", InterfaceRole::Lan)
                .unwrap()
                .name(),
            Some("fifteen-chars-x")
        );
    }

    #[test]
    fn counters_add_wraps_instead_of_panicking() {
        let mut total = TrafficCounters {
            packets: u64::MAX,
            bytes: 1,
        };
        total.add(&TrafficCounters {
            packets: 2,
            bytes: 2,
        });
        assert_eq!(
            total,
            TrafficCounters {
                packets: 1,
                bytes: 3
            }
        );
    }
}
