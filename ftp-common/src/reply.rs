//! Server replies (RFC 959 section 4.2, RFC 1123 section 4.1.2.6, RFC 2428 section 3), read one
//! byte at a time.
//!
//! A reply line starts with a three-digit code whose first digit is 1–5, followed by a space (or
//! the end of the line) on a single-line reply or the last line of a multi-line one, or by `-` on
//! the first line of a multi-line reply. Any other line is [`Reply::Text`]: inside a multi-line
//! reply that is its body. Which lines belong to a multi-line reply needs state across lines; the
//! [`Session`](crate::Session) keeps it, this parser looks at one line.
//!
//! Only the final-form lines of `227` and `229` get their argument parsed:
//!
//! - `227`, by the RFC 1123 rule: the six numbers `h1,h2,h3,h4,p1,p2` start at the first digit
//!   after the code, whatever text surrounds them — `227 Entering Passive Mode (h1,…,p2).`,
//!   `227 Entering Passive Mode h1,…,p2`, `227 =h1,…,p2`. The `field` span covers the six numbers.
//! - `229`: `(<d><d><d>port<d>)` at the first `(` after the code, with the same delimiter four
//!   times. The `field` span covers the port digits.
//!
//! [`ReplyScanner`] is the grammar: it takes the server's bytes one at a time (a BPF program calls
//! [`ReplyScanner::push`] from a `bpf_loop` callback) and keeps its state between segments.
//! [`parse_reply`] runs it over one line held in memory.

use core::net::SocketAddrV4;

use crate::address::{HOST_PORT, Octets, OctetsStep, is_delimiter};
use crate::line::{Framing, LineGrammar, scan_byte};
use crate::number::{Decimal, MAX_PORT_DIGITS, decimal_digit};
use crate::{MAX_LINE_LEN, MalformedReason, Span};

/// One parsed server line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `NNN text` or `NNN`: a single-line reply, or the last line of a multi-line one.
    Final { code: u16, body: ReplyBody },
    /// `NNN-text`: the first line of a multi-line reply.
    MultiLineStart { code: u16 },
    /// A line that does not start with a reply code.
    Text,
    /// The line is unterminated or too long.
    Malformed(MalformedReason),
}

/// A reply line's kind as [`ReplyScanner::shape`] tells it: a [`Reply`] without the argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyShape {
    Final { code: u16 },
    MultiLineStart { code: u16 },
    Text,
    TooLong,
    /// The line has not ended.
    Unterminated,
}

/// What a final-form reply line carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyBody {
    /// Any reply other than 227 and 229: the text is not interpreted.
    Plain,
    /// A valid 227: the announced address and where its six numbers are.
    Passive227 { addr: SocketAddrV4, field: Span },
    /// A valid 229: the announced port, the delimiter, and where the port digits are.
    Passive229 {
        port: u16,
        delimiter: u8,
        field: Span,
    },
    /// A 227 or 229 whose argument is invalid.
    Malformed(MalformedReason),
}

// What the line is, as stored.
/// Not a reply line (no code, or the code is not followed by a space, `-` or the end).
const SHAPE_TEXT: u8 = 0;
/// `NNN text` or `NNN`.
const SHAPE_FINAL: u8 = 1;
/// `NNN-text`.
const SHAPE_MULTI_LINE: u8 = 2;
/// No LF within `MAX_LINE_LEN` bytes.
const SHAPE_TOO_LONG: u8 = 3;

// Where the scanner is in the line, as stored.
const AT_CODE_1: u8 = 0;
const AT_CODE_2: u8 = 1;
const AT_CODE_3: u8 = 2;
/// After the three digits: a space, `-`, or the end decides the shape.
const AT_AFTER_CODE: u8 = 3;
/// Nothing more in the line matters.
const AT_IGNORED: u8 = 4;
/// 227: looking for the first digit, then reading the six numbers.
const AT_227_SEEK: u8 = 5;
const AT_227_NUMBERS: u8 = 6;
/// 229: looking for `(`, then the three delimiters, the port, the closing delimiter and `)`.
const AT_229_SEEK: u8 = 7;
const AT_229_FIRST: u8 = 8;
const AT_229_SECOND: u8 = 9;
const AT_229_THIRD: u8 = 10;
const AT_229_PORT: u8 = 11;
const AT_229_CLOSE: u8 = 12;
/// The 227/229 argument is malformed (`error` says why); the rest is ignored.
const AT_ERROR: u8 = 13;

/// The server direction's grammar, one byte at a time.
///
/// Stored per control connection (in a BPF map by the datapath): `#[repr(C)]`, 40 bytes, no
/// padding. Every bit pattern is a valid state — a corrupt value can only make the current line
/// malformed — and the all-zero value is [`ReplyScanner::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyScanner {
    /// The 227 numbers.
    octets: Octets,
    /// The 229 port.
    number: Decimal,
    framing: Framing,
    code: u16,
    /// Where the 227 numbers or the 229 port digits are.
    field_start: u16,
    field_len: u16,
    /// One of the `AT_*` values.
    phase: u8,
    /// One of the `SHAPE_*` values.
    shape: u8,
    delimiter: u8,
    /// A [`MalformedReason`] code for the 227/229 argument, 0 while it is fine.
    error: u8,
    _pad: [u8; 2],
}

impl ReplyScanner {
    pub const fn new() -> Self {
        Self {
            octets: Octets::new(),
            number: Decimal::new(),
            framing: Framing::new(),
            code: 0,
            field_start: 0,
            field_len: 0,
            phase: AT_CODE_1,
            shape: SHAPE_TEXT,
            delimiter: 0,
            error: 0,
            _pad: [0; 2],
        }
    }

    /// Forgets the line being read: the next byte starts a line. Resets only what a line reads
    /// before it writes it; the 227 and 229 parsers start afresh when a line turns out to be one
    /// of those ([`after_code`](Self::after_code)). A whole reset was a 40-byte `memset`, which
    /// the BPF target makes a byte loop, at the start of every line the server sends.
    pub fn reset(&mut self) {
        self.framing = Framing::new();
        self.code = 0;
        self.phase = AT_CODE_1;
        self.shape = SHAPE_TEXT;
        self.error = 0;
    }

    /// The code read and a space after it (or the line's end): a final line, whose argument
    /// is parsed if it is a 227's or a 229's.
    #[inline(always)]
    fn after_code(&mut self) {
        self.shape = SHAPE_FINAL;
        self.phase = match self.code {
            227 => {
                self.octets = Octets::new();
                AT_227_SEEK
            }
            229 => {
                self.number = Decimal::new();
                AT_229_SEEK
            }
            _ => AT_IGNORED,
        };
    }

    /// Takes the next byte of the server's stream. True when it was the LF that ends a line: then
    /// [`reply`](Self::reply) is that line's reply, and the next byte starts a new line.
    pub fn push(&mut self, byte: u8) -> bool {
        scan_byte(self, byte)
    }

    /// Whether nothing in the rest of the line being read matters to the scanner but its length:
    /// a text line, a multi-line reply's text, a reply the session does not parse, or one already
    /// malformed — with no CR held back. Its bytes may then be passed over with
    /// [`skip`](Self::skip) up to the LF, instead of pushed one by one.
    pub fn skipping(&self) -> bool {
        !self.framing.ended()
            && !self.framing.cr_held()
            && matches!(self.phase, AT_IGNORED | AT_ERROR)
    }

    /// Passes over `len` bytes of the line while [`skipping`](Self::skipping); none of them may be
    /// an LF, nor the last a CR ([`crate::line::skippable_word`] tells such bytes a word at a
    /// time). The scanner is then as pushing them would have left it.
    pub fn skip(&mut self, len: u16) {
        self.framing.skip(len);
    }

    /// Whether the line being read, not ended yet, may still turn out to be a final reply of code
    /// 200 or more (the kind that answers a request, see [`Session`](crate::Session)) — inside
    /// the multi-line reply of code `open_multiline`, if one is open, only that code's last line:
    /// its code so far is such a code's start, or it is one and a space followed. The NAT64 ALG
    /// replaces such a line whole, so the datapath holds it from its first byte when a segment
    /// ends inside it. False for an empty line, a line already ended, text, or a multi-line
    /// reply's first line.
    pub fn may_be_final_reply(&self, open_multiline: Option<u16>) -> bool {
        if self.framing.ended() || self.framing.len() == 0 {
            return false;
        }
        // The code's digits read so far, and the value of as many of an open reply's.
        let (digits, open_prefix) = match self.phase {
            AT_CODE_1 => return false,
            AT_CODE_2 => (1, open_multiline.map(|code| code / 100)),
            AT_CODE_3 => (2, open_multiline.map(|code| code / 10)),
            AT_AFTER_CODE => (3, open_multiline),
            _ if self.shape == SHAPE_FINAL => (3, open_multiline),
            _ => return false,
        };
        let lowest_final = match digits {
            1 => 2,
            2 => 20,
            _ => 200,
        };
        self.code >= lowest_final && open_prefix.is_none_or(|open| open == self.code)
    }

    /// Bytes of the line so far, its LF included once it has ended.
    pub fn line_len(&self) -> u16 {
        self.framing.len()
    }

    /// What kind of line the scanner is on, without its argument: all
    /// [`Session::acts_on_reply`](crate::Session::acts_on_reply) needs to tell a line the session
    /// ignores (cheaper than [`reply`](Self::reply), for a BPF caller that skips those lines).
    pub fn shape(&self) -> ReplyShape {
        if !self.framing.ended() {
            return ReplyShape::Unterminated;
        }
        match self.shape {
            SHAPE_FINAL => ReplyShape::Final { code: self.code },
            SHAPE_MULTI_LINE => ReplyShape::MultiLineStart { code: self.code },
            SHAPE_TOO_LONG => ReplyShape::TooLong,
            _ => ReplyShape::Text,
        }
    }

    /// The reply of the line that just ended; `Malformed(Unterminated)` while a line is being
    /// read.
    pub fn reply(&self) -> Reply {
        // Read before any branch, though only a valid 227 carries it: every other `Reply` leaves
        // those bytes undefined, and where the paths join, the compiler may pack whatever its
        // register holds on an undefined path — a pointer, which the BPF verifier refuses to do
        // arithmetic on. A value computed before the branches stands in for "undefined" instead.
        let announced = self.octets.announced();
        if !self.framing.ended() {
            return Reply::Malformed(MalformedReason::Unterminated);
        }
        match self.shape {
            SHAPE_FINAL => Reply::Final {
                code: self.code,
                body: self.body(announced),
            },
            SHAPE_MULTI_LINE => Reply::MultiLineStart { code: self.code },
            SHAPE_TOO_LONG => Reply::Malformed(MalformedReason::TooLong),
            _ => Reply::Text,
        }
    }

    /// The body of a final line; `announced` is the 227 address and port as read (see
    /// [`reply`](Self::reply)).
    #[inline(always)]
    fn body(&self, announced: SocketAddrV4) -> ReplyBody {
        if let Some(reason) = MalformedReason::from_code(u32::from(self.error)) {
            return ReplyBody::Malformed(reason);
        }
        let field = Span {
            start: self.field_start,
            len: self.field_len,
        };
        match self.code {
            227 if announced.port() == 0 => ReplyBody::Malformed(MalformedReason::PortOutOfRange),
            227 => ReplyBody::Passive227 {
                addr: announced,
                field,
            },
            229 => match self.number.port() {
                Ok(port) => ReplyBody::Passive229 {
                    port,
                    delimiter: self.delimiter,
                    field,
                },
                Err(reason) => ReplyBody::Malformed(reason),
            },
            _ => ReplyBody::Plain,
        }
    }

    /// Records the first error in the 227/229 argument; the rest of the line is ignored.
    #[inline(always)]
    fn fail(&mut self, reason: MalformedReason) {
        if self.error == 0 {
            self.error = u8::try_from(reason.code()).unwrap_or(u8::MAX);
        }
        self.phase = AT_ERROR;
    }

    #[inline(always)]
    fn not_a_reply(&mut self) {
        self.shape = SHAPE_TEXT;
        self.phase = AT_IGNORED;
    }

    /// One content byte at `index` in the line.
    fn consume(&mut self, byte: u8, index: u16) {
        match self.phase {
            AT_CODE_1 | AT_CODE_2 | AT_CODE_3 => self.code_byte(byte),
            AT_AFTER_CODE => match byte {
                b' ' => self.after_code(),
                b'-' => {
                    self.shape = SHAPE_MULTI_LINE;
                    self.phase = AT_IGNORED;
                }
                _ => self.not_a_reply(),
            },
            AT_227_SEEK if byte.is_ascii_digit() => {
                self.field_start = index;
                self.phase = AT_227_NUMBERS;
                self.passive_number_byte(byte, index);
            }
            AT_227_NUMBERS => self.passive_number_byte(byte, index),
            AT_229_SEEK if byte == b'(' => self.phase = AT_229_FIRST,
            AT_229_FIRST if is_delimiter(byte) => {
                self.delimiter = byte;
                self.phase = AT_229_SECOND;
            }
            AT_229_SECOND | AT_229_THIRD if byte == self.delimiter => {
                if self.phase == AT_229_THIRD {
                    self.field_start = index.saturating_add(1);
                }
                self.phase = self.phase.wrapping_add(1);
            }
            AT_229_FIRST | AT_229_SECOND | AT_229_THIRD => self.fail(MalformedReason::BadDelimiter),
            AT_229_PORT => self.extended_port_byte(byte, index),
            AT_229_CLOSE if byte == b')' => self.phase = AT_IGNORED,
            AT_229_CLOSE => self.fail(MalformedReason::MissingParenthesis),
            _ => {}
        }
    }

    #[inline(always)]
    fn code_byte(&mut self, byte: u8) {
        let first_digit_ok = self.phase != AT_CODE_1 || matches!(byte, b'1'..=b'5');
        match decimal_digit(byte) {
            Some(digit) if first_digit_ok => {
                self.code = self
                    .code
                    .wrapping_mul(10)
                    .wrapping_add(u16::from(digit));
                self.phase = self.phase.wrapping_add(1);
            }
            _ => self.not_a_reply(),
        }
    }

    #[inline(always)]
    fn passive_number_byte(&mut self, byte: u8, index: u16) {
        match self.octets.push(byte, HOST_PORT) {
            Ok(OctetsStep::Consumed) => {}
            Ok(OctetsStep::Ended) => {
                if let Err(reason) = self.octets.host_port() {
                    self.fail(reason);
                } else if byte == b',' {
                    // A seventh number would make this something other than a 227 address.
                    self.fail(MalformedReason::TrailingBytes);
                } else {
                    self.field_len = index.saturating_sub(self.field_start);
                    self.phase = AT_IGNORED;
                }
            }
            Err(reason) => self.fail(reason),
        }
    }

    #[inline(always)]
    fn extended_port_byte(&mut self, byte: u8, index: u16) {
        match self.number.push::<MAX_PORT_DIGITS>(byte) {
            Ok(true) => {}
            Ok(false) => match self.number.port() {
                Ok(_) if byte == self.delimiter => {
                    self.field_len = index.saturating_sub(self.field_start);
                    self.phase = AT_229_CLOSE;
                }
                Ok(_) => self.fail(MalformedReason::BadDelimiter),
                Err(reason) => self.fail(reason),
            },
            Err(reason) => self.fail(reason),
        }
    }

    /// The LF: settles what the end of the line means.
    fn finish(&mut self, content_len: Result<u16, MalformedReason>) {
        let content_len = match content_len {
            Ok(len) => len,
            Err(_) => {
                self.shape = SHAPE_TOO_LONG;
                return;
            }
        };
        if self.phase == AT_AFTER_CODE {
            // The code alone: a final line with no text.
            self.after_code();
        }
        match self.phase {
            AT_CODE_1 | AT_CODE_2 | AT_CODE_3 => self.not_a_reply(),
            AT_227_SEEK => self.fail(MalformedReason::ExpectedDigit),
            AT_227_NUMBERS => match self
                .octets
                .finish(HOST_PORT)
                .and_then(|()| self.octets.host_port())
            {
                Ok(_) => self.field_len = content_len.saturating_sub(self.field_start),
                Err(reason) => self.fail(reason),
            },
            AT_229_SEEK | AT_229_CLOSE => self.fail(MalformedReason::MissingParenthesis),
            AT_229_FIRST | AT_229_SECOND | AT_229_THIRD => self.fail(MalformedReason::BadDelimiter),
            AT_229_PORT => {
                let reason = self
                    .number
                    .port()
                    .err()
                    .unwrap_or(MalformedReason::BadDelimiter);
                self.fail(reason);
            }
            _ => {}
        }
    }
}

/// Parses one server line held in memory (see the [module documentation](self)).
///
/// `line` starts at a line boundary; the reply ends at its first LF, which must come within
/// [`MAX_LINE_LEN`] bytes. Never panics.
pub fn parse_reply(line: &[u8]) -> Reply {
    let mut scanner = ReplyScanner::new();
    for &byte in line.iter().take(MAX_LINE_LEN) {
        if scanner.push(byte) {
            return scanner.reply();
        }
    }
    Reply::Malformed(if line.len() < MAX_LINE_LEN {
        MalformedReason::Unterminated
    } else {
        MalformedReason::TooLong
    })
}

#[cfg(test)]
mod tests;

impl LineGrammar for ReplyScanner {
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
        ReplyScanner::consume(self, byte, index);
    }

    #[inline(always)]
    fn finish(&mut self, content_len: Result<u16, MalformedReason>) {
        ReplyScanner::finish(self, content_len);
    }
}
