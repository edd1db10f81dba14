//! Client commands (RFC 959 section 4, RFC 2428, RFC 4217, RFC 6384 section 11), read one byte
//! at a time.
//!
//! A command line is a verb, matched without regard to case, optionally followed by one space and
//! an argument, and ended by CRLF or a bare LF. The verbs the core knows are parsed into
//! [`Command`]; any other verb is [`Command::Other`].
//!
//! [`CommandScanner`] is the grammar: it takes the client's bytes one at a time (a BPF program
//! calls [`CommandScanner::push`] from a `bpf_loop` callback) and keeps its state between
//! segments. [`parse_command`] runs it over one line held in memory.
//!
//! The `field` span of `PORT` and `EPRT` covers the whole argument (for EPRT, outer delimiters
//! included): exactly what [`format_port_field`](crate::format_port_field) and
//! [`format_eprt_field`](crate::format_eprt_field) render. The verb, its case and the line
//! terminator lie outside it and survive a rewrite.

use core::net::{IpAddr, SocketAddr, SocketAddrV4};

use crate::address::{
    DOTTED_QUAD, HOST_PORT, Ipv6Text, MAX_IPV6_TEXT_LEN, Octets, OctetsStep, is_delimiter,
};
use crate::line::{Framing, LineGrammar, scan_byte};
use crate::number::{Decimal, MAX_OCTET_DIGITS, MAX_PORT_DIGITS};
use crate::{MAX_LINE_LEN, MalformedReason, Span};

/// The longest `USER` or transfer argument reported; a longer one is cut to this length in the
/// span (it is only for reporting).
pub const MAX_ARGUMENT_LEN: u16 = 255;

/// The transfer commands whose argument is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferVerb {
    Retr,
    Stor,
    Stou,
    Appe,
    List,
    Nlst,
    Mlsd,
}

impl TransferVerb {
    /// The verb in upper case.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferVerb::Retr => "RETR",
            TransferVerb::Stor => "STOR",
            TransferVerb::Stou => "STOU",
            TransferVerb::Appe => "APPE",
            TransferVerb::List => "LIST",
            TransferVerb::Nlst => "NLST",
            TransferVerb::Mlsd => "MLSD",
        }
    }
}

/// A command's name as events report it: one code per verb the core knows.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandName {
    Other = 0,
    Port = 1,
    Eprt = 2,
    Pasv = 3,
    Epsv = 4,
    Auth = 5,
    Ccc = 6,
    User = 7,
    Pass = 8,
    Retr = 9,
    Stor = 10,
    Stou = 11,
    Appe = 12,
    List = 13,
    Nlst = 14,
    Mlsd = 15,
    Rest = 16,
    Quit = 17,
    /// A known verb with an invalid argument, or an unterminated/over-long line.
    Malformed = 18,
    Algs = 19,
}

impl CommandName {
    /// Every name, in code order.
    pub const ALL: [CommandName; 20] = [
        CommandName::Other,
        CommandName::Port,
        CommandName::Eprt,
        CommandName::Pasv,
        CommandName::Epsv,
        CommandName::Auth,
        CommandName::Ccc,
        CommandName::User,
        CommandName::Pass,
        CommandName::Retr,
        CommandName::Stor,
        CommandName::Stou,
        CommandName::Appe,
        CommandName::List,
        CommandName::Nlst,
        CommandName::Mlsd,
        CommandName::Rest,
        CommandName::Quit,
        CommandName::Malformed,
        CommandName::Algs,
    ];

    pub const fn of(command: &Command) -> Self {
        match command {
            Command::Port { .. } => CommandName::Port,
            Command::Eprt { .. } => CommandName::Eprt,
            Command::Pasv => CommandName::Pasv,
            Command::Epsv(_) => CommandName::Epsv,
            Command::Auth(_) => CommandName::Auth,
            Command::Ccc => CommandName::Ccc,
            Command::User { .. } => CommandName::User,
            Command::Pass => CommandName::Pass,
            Command::Transfer { verb, .. } => match verb {
                TransferVerb::Retr => CommandName::Retr,
                TransferVerb::Stor => CommandName::Stor,
                TransferVerb::Stou => CommandName::Stou,
                TransferVerb::Appe => CommandName::Appe,
                TransferVerb::List => CommandName::List,
                TransferVerb::Nlst => CommandName::Nlst,
                TransferVerb::Mlsd => CommandName::Mlsd,
            },
            Command::Rest => CommandName::Rest,
            Command::Quit => CommandName::Quit,
            Command::Algs(_) => CommandName::Algs,
            Command::Other => CommandName::Other,
            Command::Malformed(_) => CommandName::Malformed,
        }
    }

    pub fn from_raw(raw: u8) -> Option<Self> {
        Self::ALL.get(usize::from(raw)).copied()
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            CommandName::Other => "other",
            CommandName::Port => "PORT",
            CommandName::Eprt => "EPRT",
            CommandName::Pasv => "PASV",
            CommandName::Epsv => "EPSV",
            CommandName::Auth => "AUTH",
            CommandName::Ccc => "CCC",
            CommandName::User => "USER",
            CommandName::Pass => "PASS",
            CommandName::Retr => "RETR",
            CommandName::Stor => "STOR",
            CommandName::Stou => "STOU",
            CommandName::Appe => "APPE",
            CommandName::List => "LIST",
            CommandName::Nlst => "NLST",
            CommandName::Mlsd => "MLSD",
            CommandName::Rest => "REST",
            CommandName::Quit => "QUIT",
            CommandName::Malformed => "malformed",
            CommandName::Algs => "ALGS",
        }
    }
}

impl Command {
    /// The part of the line an event may report: a USER's name or a transfer's argument. Never
    /// anything of `PASS`, whose argument is a password.
    pub const fn reported_argument(&self) -> Option<Span> {
        match self {
            Command::User { name } => Some(*name),
            Command::Transfer { arg, .. } => Some(*arg),
            _ => None,
        }
    }
}

/// The argument of `EPSV` (RFC 2428 section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EpsvArg {
    /// No argument: the server picks the protocol of the control connection.
    Any,
    /// `EPSV 1`: IPv4.
    Ipv4,
    /// `EPSV 2`: IPv6.
    Ipv6,
    /// `EPSV ALL`: from now on only EPSV sets up data connections (RFC 2428 section 4).
    All,
}

/// The argument of `ALGS` (RFC 6384 section 11), matched without regard to case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlgsArg {
    /// `STATUS64`: is the NAT64 FTP ALG on for this session?
    Status64,
    /// `ENABLE64`: switch it on.
    Enable64,
    /// `DISABLE64`: switch it off (the client handles the IPv4 server itself).
    Disable64,
    /// No argument or any other.
    Other,
}

/// The mechanism named by `AUTH` (RFC 2228, RFC 4217).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    Tls,
    /// The historical name some clients still send for TLS.
    Ssl,
    /// Anything else; a `234` reply to it still means the channel is about to be protected.
    Other,
}

/// One parsed client command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `PORT h1,h2,h3,h4,p1,p2` (RFC 959): `field` covers the six numbers.
    Port { addr: SocketAddrV4, field: Span },
    /// `EPRT <d>1<d>a.b.c.d<d>port<d>` or `EPRT <d>2<d>ipv6<d>port<d>` (RFC 2428): `field` covers the
    /// whole argument, from the first delimiter to the last.
    Eprt {
        addr: SocketAddr,
        delimiter: u8,
        field: Span,
    },
    /// `PASV`. Any argument is ignored, as servers do.
    Pasv,
    /// `EPSV` with its argument.
    Epsv(EpsvArg),
    /// `AUTH <mechanism>`.
    Auth(AuthMechanism),
    /// `CCC`, clear command channel (RFC 4217). Any argument is ignored.
    Ccc,
    /// `USER <name>`: `name` covers the name (at most [`MAX_ARGUMENT_LEN`] bytes of it).
    User { name: Span },
    /// `PASS`: recognised so it can be redacted; the password is never reported.
    Pass,
    /// A transfer command; `arg` covers its argument (empty if none, at most
    /// [`MAX_ARGUMENT_LEN`] bytes).
    Transfer { verb: TransferVerb, arg: Span },
    /// `REST <marker>`.
    Rest,
    /// `QUIT`. Any argument is ignored.
    Quit,
    /// `ALGS` with its argument: addressed to a NAT64 FTP ALG (RFC 6384 section 11), not to the
    /// server.
    Algs(AlgsArg),
    /// Any other verb.
    Other,
    /// A known verb with an invalid argument, or a line that is unterminated or too long.
    Malformed(MalformedReason),
}

// The verbs the scanner knows, as stored.
const VERB_OTHER: u8 = 0;
const VERB_PORT: u8 = 1;
const VERB_EPRT: u8 = 2;
const VERB_PASV: u8 = 3;
const VERB_EPSV: u8 = 4;
const VERB_AUTH: u8 = 5;
const VERB_CCC: u8 = 6;
const VERB_USER: u8 = 7;
const VERB_PASS: u8 = 8;
const VERB_REST: u8 = 9;
const VERB_QUIT: u8 = 10;
const VERB_RETR: u8 = 11;
const VERB_STOR: u8 = 12;
const VERB_STOU: u8 = 13;
const VERB_APPE: u8 = 14;
const VERB_LIST: u8 = 15;
const VERB_NLST: u8 = 16;
const VERB_MLSD: u8 = 17;
const VERB_ALGS: u8 = 18;

/// The verb in `word` (upper-cased, `len` bytes long).
#[inline(always)]
fn verb_code(word: [u8; 4], len: u8) -> u8 {
    match (len, &word) {
        (3, b"CCC\0") => VERB_CCC,
        (4, b"PORT") => VERB_PORT,
        (4, b"EPRT") => VERB_EPRT,
        (4, b"PASV") => VERB_PASV,
        (4, b"EPSV") => VERB_EPSV,
        (4, b"AUTH") => VERB_AUTH,
        (4, b"USER") => VERB_USER,
        (4, b"PASS") => VERB_PASS,
        (4, b"REST") => VERB_REST,
        (4, b"QUIT") => VERB_QUIT,
        (4, b"RETR") => VERB_RETR,
        (4, b"STOR") => VERB_STOR,
        (4, b"STOU") => VERB_STOU,
        (4, b"APPE") => VERB_APPE,
        (4, b"LIST") => VERB_LIST,
        (4, b"NLST") => VERB_NLST,
        (4, b"MLSD") => VERB_MLSD,
        (4, b"ALGS") => VERB_ALGS,
        _ => VERB_OTHER,
    }
}

#[inline(always)]
fn transfer_verb(verb: u8) -> Option<TransferVerb> {
    Some(match verb {
        VERB_RETR => TransferVerb::Retr,
        VERB_STOR => TransferVerb::Stor,
        VERB_STOU => TransferVerb::Stou,
        VERB_APPE => TransferVerb::Appe,
        VERB_LIST => TransferVerb::List,
        VERB_NLST => TransferVerb::Nlst,
        VERB_MLSD => TransferVerb::Mlsd,
        _ => return None,
    })
}

// Where the scanner is in the line, as stored.
/// Reading the verb.
const AT_VERB: u8 = 0;
/// Nothing more in the line matters.
const AT_IGNORED: u8 = 1;
/// An argument that is only measured, and its first four bytes kept (AUTH, EPSV, USER, REST,
/// transfers).
const AT_ARGUMENT: u8 = 2;
/// The PORT numbers.
const AT_PORT: u8 = 3;
/// EPRT: the first delimiter, the family, the address, the port, after the last delimiter.
const AT_EPRT_DELIMITER: u8 = 4;
const AT_EPRT_FAMILY: u8 = 5;
const AT_EPRT_ADDRESS: u8 = 6;
const AT_EPRT_PORT: u8 = 7;
const AT_EPRT_CLOSED: u8 = 8;
/// The line is malformed (`error` says why); the rest is ignored.
const AT_ERROR: u8 = 9;
/// The ALGS argument, matched against [`ALGS_ARGUMENTS`] as it comes.
const AT_ALGS: u8 = 10;

/// The ALGS arguments (upper case, NUL-padded to one length) and their lengths, in the order of
/// the [`CommandScanner`]'s `algs_candidates` bits. A fixed-size table with no pointers in it: the
/// BPF target reads it from read-only data at a bounded offset.
const ALGS_ARGUMENTS: [[u8; 9]; 3] = [*b"STATUS64\0", *b"ENABLE64\0", *b"DISABLE64"];
const ALGS_ARGUMENT_LENS: [u8; 3] = [8, 8, 9];
const ALGS_ALL_CANDIDATES: u8 = 0b111;

/// An EPRT delimiter that can occur inside the address of `family` (`.` in a dotted quad, `:` in
/// IPv6 text) would end the address early: such a line is ambiguous and refused as
/// [`MalformedReason::BadDelimiter`], as the formatter refuses to write one. (`.` with IPv6 is
/// not ambiguous: the address ends at the first `.`, so an IPv4 tail can only fail.)
#[inline(always)]
fn delimiter_fits_family(delimiter: u8, family: u8) -> bool {
    !matches!((family, delimiter), (1, b'.') | (2, b':'))
}

/// Where the argument of `verb` is read.
#[inline(always)]
fn argument_phase(verb: u8) -> u8 {
    match verb {
        VERB_PORT => AT_PORT,
        VERB_EPRT => AT_EPRT_DELIMITER,
        VERB_EPSV | VERB_AUTH | VERB_USER | VERB_REST => AT_ARGUMENT,
        VERB_ALGS => AT_ALGS,
        _ if transfer_verb(verb).is_some() => AT_ARGUMENT,
        _ => AT_IGNORED,
    }
}

/// The client direction's grammar, one byte at a time.
///
/// Stored per control connection (in a BPF map by the datapath): `#[repr(C)]`, 92 bytes, no
/// padding. Every bit pattern is a valid state — a corrupt value can only make the current line
/// malformed — and the all-zero value is [`CommandScanner::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandScanner {
    /// The EPRT IPv6 address.
    ipv6: Ipv6Text,
    /// The PORT numbers, or the EPRT IPv4 address.
    octets: Octets,
    /// The EPRT family, then the EPRT port.
    number: Decimal,
    framing: Framing,
    /// Where the argument starts (after the verb and its space).
    arg_start: u16,
    /// Bytes of the line without its terminator, once it has ended.
    content_len: u16,
    /// One of the `AT_*` values.
    phase: u8,
    /// One of the `VERB_*` values, once the verb is read.
    verb: u8,
    /// The verb's bytes upper-cased, then the argument's first four.
    word: [u8; 4],
    /// Bytes of the verb (saturating), then of `word`'s argument.
    word_len: u8,
    delimiter: u8,
    family: u8,
    /// Bytes of the EPRT address text.
    address_len: u8,
    /// The first error in the EPRT address, reported only once the address is delimited.
    address_error: u8,
    /// A [`MalformedReason`] code, 0 while the line is fine.
    error: u8,
    /// The [`ALGS_ARGUMENTS`] the ALGS argument read so far is still a prefix of, one bit each.
    algs_candidates: u8,
    _pad: [u8; 2],
}

impl CommandScanner {
    pub const fn new() -> Self {
        Self {
            ipv6: Ipv6Text::new(),
            octets: Octets::new(),
            number: Decimal::new(),
            framing: Framing::new(),
            arg_start: 0,
            content_len: 0,
            phase: AT_VERB,
            verb: VERB_OTHER,
            word: [0; 4],
            word_len: 0,
            delimiter: 0,
            family: 0,
            address_len: 0,
            address_error: 0,
            error: 0,
            algs_candidates: 0,
            _pad: [0; 2],
        }
    }

    /// Forgets the line being read: the next byte starts a line. Resets only what a line reads
    /// before it writes it; the PORT and EPRT parsers start afresh when the verb says the line is
    /// one of those ([`start_argument`](Self::start_argument)). A whole reset was a 91-byte
    /// `memset`, which the BPF target makes a byte loop, at the start of every command.
    pub fn reset(&mut self) {
        self.framing = Framing::new();
        self.phase = AT_VERB;
        self.verb = VERB_OTHER;
        self.word = [0; 4];
        self.word_len = 0;
        self.error = 0;
    }

    /// Takes the next byte of the client's stream. True when it was the LF that ends a line: then
    /// [`command`](Self::command) is that line's command, and the next byte starts a new line.
    pub fn push(&mut self, byte: u8) -> bool {
        scan_byte(self, byte)
    }

    /// Bytes of the line so far, its LF included once it has ended. When a line ends, its first
    /// byte was this many bytes before the byte after the LF, whichever segment it was in.
    pub fn line_len(&self) -> u16 {
        self.framing.len()
    }

    /// Whether the line that just ended was empty: a bare LF or CRLF, no command at all (clients
    /// send none; a flood of them must cost the datapath no examination and no event).
    pub fn ended_empty(&self) -> bool {
        self.framing.ended() && self.error == 0 && self.content_len == 0
    }

    /// Where the argument of the line being read starts (in bytes from the line's first byte),
    /// while that line is a PORT or EPRT whose argument has begun, nothing in it is wrong so far
    /// and its last byte read is part of the argument (not a CR that may end it): the datapath
    /// holds such a line's address back when a segment ends inside it, and rewrites it whole in
    /// the next. `None` otherwise, also once the line has ended.
    pub fn pending_address_start(&self) -> Option<u16> {
        let argument_begun = self.framing.len() > self.arg_start;
        let reading_address = matches!(self.verb, VERB_PORT | VERB_EPRT)
            && !matches!(self.phase, AT_VERB | AT_ERROR | AT_IGNORED);
        (reading_address && argument_begun && !self.framing.ended() && !self.framing.cr_held())
            .then_some(self.arg_start)
    }

    /// [`pending_address_start`](Self::pending_address_start) for a session where whole lines
    /// may be rewritten too: with `whole_lines` (the session's policy has the NAT64 ALG on,
    /// [`Policy::nat64_alg`](crate::Policy::nat64_alg)), `Some(0)` — hold from the line's first
    /// byte — while the line read so far may still be one the ALG replaces whole (see
    /// [`rewrite_kind`](crate::maps::rewrite_kind)): its verb so far a prefix of `EPRT`, `EPSV` or
    /// `ALGS`, or one of those with an argument not yet wrong (an EPRT not of family 1, which
    /// is a bounce in such a session). Unlike an address, such a line is still pending after its
    /// CR: the rewrite replaces the CR too. Holding a line that turns out not to be rewritten
    /// (an `EPSV 1`, the ALG switched off) only gives the bytes back. `None` once the line has
    /// ended or before its first byte; otherwise as `pending_address_start`.
    pub fn pending_rewrite_start(&self, whole_lines: bool) -> Option<u16> {
        if !whole_lines {
            return self.pending_address_start();
        }
        if self.framing.ended() || self.framing.len() == 0 {
            return None;
        }
        let whole_line = match self.phase {
            AT_VERB => {
                let len = usize::from(self.word_len);
                len <= self.word.len()
                    && [*b"EPRT", *b"EPSV", *b"ALGS"].iter().any(|verb| {
                        self.word
                            .iter()
                            .zip(verb)
                            .take(len)
                            .all(|(have, want)| have == want)
                    })
            }
            AT_ERROR | AT_IGNORED => false,
            _ => match self.verb {
                VERB_EPSV | VERB_ALGS => true,
                VERB_EPRT => self.family != 1,
                _ => false,
            },
        };
        if whole_line {
            Some(0)
        } else {
            self.pending_address_start()
        }
    }

    /// The command of the line that just ended; `Malformed(Unterminated)` while a line is being
    /// read.
    pub fn command(&self) -> Command {
        if !self.framing.ended() {
            return Command::Malformed(MalformedReason::Unterminated);
        }
        if let Some(reason) = MalformedReason::from_code(u32::from(self.error)) {
            return Command::Malformed(reason);
        }
        let arg_len = self.content_len.saturating_sub(self.arg_start);
        let field = Span {
            start: self.arg_start,
            len: arg_len,
        };
        let reported = Span {
            start: self.arg_start,
            len: arg_len.min(MAX_ARGUMENT_LEN),
        };
        match self.verb {
            VERB_PORT => match self.octets.host_port() {
                Ok(addr) => Command::Port { addr, field },
                Err(reason) => Command::Malformed(reason),
            },
            VERB_EPRT => match self.number.port() {
                Ok(port) => Command::Eprt {
                    addr: SocketAddr::new(self.eprt_address(), port),
                    delimiter: self.delimiter,
                    field,
                },
                Err(reason) => Command::Malformed(reason),
            },
            VERB_PASV => Command::Pasv,
            VERB_EPSV => Command::Epsv(self.epsv_argument()),
            VERB_AUTH => Command::Auth(self.auth_mechanism()),
            VERB_CCC => Command::Ccc,
            VERB_USER => Command::User { name: reported },
            VERB_PASS => Command::Pass,
            VERB_REST => Command::Rest,
            VERB_QUIT => Command::Quit,
            VERB_ALGS => Command::Algs(self.algs_argument()),
            verb => match transfer_verb(verb) {
                Some(verb) => Command::Transfer {
                    verb,
                    arg: reported,
                },
                None => Command::Other,
            },
        }
    }

    /// Records the first error; the rest of the line is ignored.
    #[inline(always)]
    fn fail(&mut self, reason: MalformedReason) {
        if self.error == 0 {
            self.error = u8::try_from(reason.code()).unwrap_or(u8::MAX);
        }
        self.phase = AT_ERROR;
    }

    /// One content byte at `index` in the line.
    fn consume(&mut self, byte: u8, index: u16) {
        match self.phase {
            AT_VERB => self.verb_byte(byte, index),
            AT_ARGUMENT => self.keep_word(byte),
            AT_PORT => match self.octets.push(byte, HOST_PORT) {
                Ok(OctetsStep::Consumed) => {}
                // The six numbers are complete and more follows.
                Ok(OctetsStep::Ended) => self.fail(
                    self.octets
                        .host_port()
                        .err()
                        .unwrap_or(MalformedReason::TrailingBytes),
                ),
                Err(reason) => self.fail(reason),
            },
            AT_EPRT_DELIMITER => {
                if is_delimiter(byte) {
                    self.delimiter = byte;
                    self.phase = AT_EPRT_FAMILY;
                } else {
                    self.fail(MalformedReason::BadDelimiter);
                }
            }
            AT_EPRT_FAMILY => self.eprt_family_byte(byte),
            AT_EPRT_ADDRESS => self.eprt_address_byte(byte),
            AT_EPRT_PORT => self.eprt_port_byte(byte),
            AT_EPRT_CLOSED => self.fail(MalformedReason::TrailingBytes),
            AT_ALGS => self.algs_byte(byte),
            _ => {}
        }
    }

    /// One byte of the ALGS argument: drops the arguments it does not continue. Three
    /// comparisons, whatever the byte (the BPF program runs this per byte).
    #[inline(always)]
    fn algs_byte(&mut self, byte: u8) {
        let upper = byte.to_ascii_uppercase();
        let index = usize::from(self.word_len);
        let mut candidates = self.algs_candidates;
        for (bit, argument) in ALGS_ARGUMENTS.iter().enumerate() {
            if argument.get(index) != Some(&upper) {
                candidates &= !(1u8 << bit);
            }
        }
        self.algs_candidates = candidates;
        self.word_len = self.word_len.saturating_add(1);
    }

    /// The argument of a complete ALGS line: the one whose every byte it matched, at its length.
    #[inline(always)]
    fn algs_argument(&self) -> AlgsArg {
        let matched = |bit: usize| {
            self.algs_candidates & (1u8 << bit) != 0
                && ALGS_ARGUMENT_LENS.get(bit) == Some(&self.word_len)
        };
        if matched(0) {
            AlgsArg::Status64
        } else if matched(1) {
            AlgsArg::Enable64
        } else if matched(2) {
            AlgsArg::Disable64
        } else {
            AlgsArg::Other
        }
    }

    #[inline(always)]
    fn verb_byte(&mut self, byte: u8, index: u16) {
        if byte == b' ' {
            self.start_argument(index.saturating_add(1));
        } else {
            self.keep_word(byte.to_ascii_uppercase());
        }
    }

    /// The verb is complete; its argument starts at `arg_start`.
    #[inline(always)]
    fn start_argument(&mut self, arg_start: u16) {
        self.verb = verb_code(self.word, self.word_len);
        self.arg_start = arg_start;
        self.phase = argument_phase(self.verb);
        self.word = [0; 4];
        self.word_len = 0;
        match self.phase {
            AT_PORT => self.octets = Octets::new(),
            AT_ALGS => self.algs_candidates = ALGS_ALL_CANDIDATES,
            AT_EPRT_DELIMITER => {
                self.ipv6 = Ipv6Text::new();
                self.octets = Octets::new();
                self.number = Decimal::new();
                self.delimiter = 0;
                self.family = 0;
                self.address_len = 0;
                self.address_error = 0;
            }
            _ => {}
        }
    }

    /// Keeps the first four bytes in `word` and counts them all.
    #[inline(always)]
    fn keep_word(&mut self, byte: u8) {
        if let Some(slot) = self.word.get_mut(usize::from(self.word_len)) {
            *slot = byte;
        }
        self.word_len = self.word_len.saturating_add(1);
    }

    #[inline(always)]
    fn eprt_family_byte(&mut self, byte: u8) {
        match self.number.push::<MAX_OCTET_DIGITS>(byte) {
            Ok(true) => {}
            Ok(false) => match self.number.family() {
                Ok(family) if byte == self.delimiter && delimiter_fits_family(byte, family) => {
                    self.family = family;
                    self.number = Decimal::new();
                    self.phase = AT_EPRT_ADDRESS;
                }
                Ok(_) => self.fail(MalformedReason::BadDelimiter),
                Err(reason) => self.fail(reason),
            },
            Err(_) => self.fail(MalformedReason::UnsupportedAddressFamily),
        }
    }

    #[inline(always)]
    fn eprt_address_byte(&mut self, byte: u8) {
        if byte == self.delimiter {
            self.end_eprt_address();
            return;
        }
        self.address_len = self.address_len.saturating_add(1);
        if self.address_len > MAX_IPV6_TEXT_LEN {
            // Longer than any address text: what is wrong is the address (or its family), not
            // the delimiter that has not come.
            let reason = match self.family {
                1 => MalformedReason::from_code(u32::from(self.address_error))
                    .unwrap_or(MalformedReason::TrailingBytes),
                2 => MalformedReason::BadIpv6Address,
                _ => MalformedReason::UnsupportedAddressFamily,
            };
            self.fail(reason);
            return;
        }
        match self.family {
            1 if self.address_error == 0 => {
                let error = match self.octets.push(byte, DOTTED_QUAD) {
                    Ok(OctetsStep::Consumed) => None,
                    Ok(OctetsStep::Ended) => Some(MalformedReason::TrailingBytes),
                    Err(reason) => Some(reason),
                };
                if let Some(reason) = error {
                    self.address_error = u8::try_from(reason.code()).unwrap_or(u8::MAX);
                }
            }
            2 => self.ipv6.push(byte),
            _ => {}
        }
    }

    /// The delimiter after the address: the family, then the address, must be valid.
    #[inline(always)]
    fn end_eprt_address(&mut self) {
        let result = match self.family {
            1 => match MalformedReason::from_code(u32::from(self.address_error)) {
                Some(reason) => Err(reason),
                None => self.octets.finish(DOTTED_QUAD),
            },
            2 => self
                .ipv6
                .finish()
                .map(|_| ())
                .ok_or(MalformedReason::BadIpv6Address),
            _ => Err(MalformedReason::UnsupportedAddressFamily),
        };
        match result {
            Ok(()) => self.phase = AT_EPRT_PORT,
            Err(reason) => self.fail(reason),
        }
    }

    #[inline(always)]
    fn eprt_port_byte(&mut self, byte: u8) {
        match self.number.push::<MAX_PORT_DIGITS>(byte) {
            Ok(true) => {}
            Ok(false) => match self.number.port() {
                Ok(_) if byte == self.delimiter => self.phase = AT_EPRT_CLOSED,
                Ok(_) => self.fail(MalformedReason::BadDelimiter),
                Err(reason) => self.fail(reason),
            },
            Err(reason) => self.fail(reason),
        }
    }

    /// The LF: settles what the end of the line means for the argument.
    fn finish(&mut self, content_len: Result<u16, MalformedReason>) {
        let content_len = match content_len {
            Ok(len) => len,
            Err(reason) => {
                self.error = 0;
                self.fail(reason);
                return;
            }
        };
        self.content_len = content_len;
        if self.phase == AT_VERB {
            // No argument: an empty one right after where the verb's space would be.
            self.start_argument(content_len.saturating_add(1));
        }
        if self.phase == AT_ERROR {
            return;
        }
        let empty = content_len <= self.arg_start;
        let needs_argument = matches!(
            self.verb,
            VERB_PORT | VERB_EPRT | VERB_AUTH | VERB_USER | VERB_REST
        );
        if empty && needs_argument {
            self.fail(MalformedReason::MissingArgument);
            return;
        }
        let result = match self.phase {
            AT_PORT => self
                .octets
                .finish(HOST_PORT)
                .and_then(|()| self.octets.host_port().map(|_| ())),
            AT_EPRT_FAMILY => self
                .number
                .family()
                .and(Err(MalformedReason::BadDelimiter)),
            AT_EPRT_DELIMITER | AT_EPRT_ADDRESS => Err(MalformedReason::BadDelimiter),
            AT_EPRT_PORT => self.number.port().and(Err(MalformedReason::BadDelimiter)),
            AT_ARGUMENT if self.verb == VERB_EPSV && self.epsv_value().is_none() => {
                Err(MalformedReason::BadEpsvArgument)
            }
            _ => Ok(()),
        };
        if let Err(reason) = result {
            self.fail(reason);
        }
    }

    /// The address of a complete EPRT.
    #[inline(always)]
    fn eprt_address(&self) -> IpAddr {
        // Both read before the choice: the BPF target may write the command's address bytes
        // whichever the family is, and a value read only for IPv6 would then be written unread
        // for IPv4, which the kernel's verifier refuses.
        let (v4, v6) = (self.octets.ipv4(), self.ipv6.addr());
        if self.family == 1 {
            IpAddr::V4(v4)
        } else {
            IpAddr::V6(v6)
        }
    }

    /// The EPSV argument, if it is one of the defined ones.
    #[inline(always)]
    fn epsv_value(&self) -> Option<EpsvArg> {
        let [first, second, third, _] = self.word;
        match (self.word_len, first, second, third) {
            (0, ..) => Some(EpsvArg::Any),
            (1, b'1', ..) => Some(EpsvArg::Ipv4),
            (1, b'2', ..) => Some(EpsvArg::Ipv6),
            (3, ..) if [first, second, third].eq_ignore_ascii_case(b"ALL") => Some(EpsvArg::All),
            _ => None,
        }
    }

    #[inline(always)]
    fn epsv_argument(&self) -> EpsvArg {
        self.epsv_value().unwrap_or(EpsvArg::Any)
    }

    #[inline(always)]
    fn auth_mechanism(&self) -> AuthMechanism {
        let [first, second, third, _] = self.word;
        let word = [first, second, third];
        match self.word_len {
            3 if word.eq_ignore_ascii_case(b"TLS") => AuthMechanism::Tls,
            3 if word.eq_ignore_ascii_case(b"SSL") => AuthMechanism::Ssl,
            _ => AuthMechanism::Other,
        }
    }
}

/// Parses one client line held in memory (see the [module documentation](self)).
///
/// `line` starts at a line boundary; the command ends at its first LF, which must come within
/// [`MAX_LINE_LEN`] bytes. Never panics; any byte sequence gives some [`Command`].
pub fn parse_command(line: &[u8]) -> Command {
    let mut scanner = CommandScanner::new();
    for &byte in line.iter().take(MAX_LINE_LEN) {
        if scanner.push(byte) {
            return scanner.command();
        }
    }
    Command::Malformed(if line.len() < MAX_LINE_LEN {
        MalformedReason::Unterminated
    } else {
        MalformedReason::TooLong
    })
}

#[cfg(test)]
mod tests;

impl LineGrammar for CommandScanner {
    #[inline(always)]
    fn framing(&mut self) -> &mut Framing {
        &mut self.framing
    }

    #[inline(always)]
    fn restart(&mut self) {
        self.reset();
    }

    #[inline(always)]
    fn consume(&mut self, byte: u8, index: u16) {
        CommandScanner::consume(self, byte, index);
    }

    #[inline(always)]
    fn finish(&mut self, content_len: Result<u16, MalformedReason>) {
        CommandScanner::finish(self, content_len);
    }
}
