//! Rendering a new address/port into the field a parser reported.
//!
//! Each formatter writes exactly the replacement for one `field` span — the text between the
//! span's bounds, nothing around it — to the front of a caller buffer and returns its length, or
//! `None` if the buffer is too small or the value is one the parser would refuse (port 0, an EPRT
//! delimiter that is not valid or would be ambiguous). The datapath learns the length delta of the
//! rewrite as `new_len - field.len`.
//!
//! For every value `x` a formatter accepts, parsing the line with the field replaced by
//! `format(x)` gives back `x`, with a span of the formatted length.
//!
//! | Field | Rendered as | Longest |
//! |---|---|---|
//! | `PORT` argument, 227 numbers | `h1,h2,h3,h4,p1,p2` | [`MAX_PORT_FIELD_LEN`] |
//! | `EPRT` argument | `<d>1<d>a.b.c.d<d>port<d>`, `<d>2<d>ipv6<d>port<d>` | [`MAX_EPRT_FIELD_LEN`] |
//! | 229 port | `port` | [`MAX_229_FIELD_LEN`] |
//!
//! The NAT64 ALG (RFC 6384) replaces whole lines instead: all of the line but its LF, the new
//! line ending in CR (the LF is kept, so a line ended by a bare LF gains a CR):
//!
//! | Line | Rendered as | Longest |
//! |---|---|---|
//! | a client's `EPRT \|2\|…` | `PORT h1,h2,h3,h4,p1,p2` ([`format_port_line`]) | [`MAX_PORT_LINE_LEN`] |
//! | a client's `EPSV` | [`PASV_LINE`] | |
//! | `EPSV ALL`, `ALGS …` | [`NOOP_LINE`], the server's reply to it then one of [`AlgReply`] | [`MAX_ALG_REPLY_LEN`] |
//! | the server's 227 answering a translated EPSV | `229 Entering Extended Passive Mode (\|\|\|port\|)` ([`format_229_line`]) | [`MAX_229_LINE_LEN`] |
//!
//! IPv6 is written in RFC 5952 form (lower-case hex, longest run of two or more zero groups as
//! `::`), except that hex letters are upper case when the delimiter is one of `a`–`f`, so that the
//! delimiter never occurs inside the address.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::address::is_delimiter;
use crate::maps::{RewriteRecord, rewrite_kind};
use crate::{MAX_LINE_LEN, Span};

/// `255,255,255,255,255,255`.
pub const MAX_PORT_FIELD_LEN: usize = 23;
/// `|2|ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff|65535|`.
pub const MAX_EPRT_FIELD_LEN: usize = 49;
/// `65535`.
pub const MAX_229_FIELD_LEN: usize = 5;
/// `PORT 255,255,255,255,255,255\r`.
pub const MAX_PORT_LINE_LEN: usize = 5 + MAX_PORT_FIELD_LEN + 1;
/// `229 Entering Extended Passive Mode (|||65535|)\r`.
pub const MAX_229_LINE_LEN: usize = EPSV_229_HEAD.len() + MAX_229_FIELD_LEN + EPSV_229_TAIL.len();
/// The longest replacement the datapath writes over a field or a whole line: a formatter's (an
/// EPRT field, [`MAX_EPRT_FIELD_LEN`], the longest) or held bytes put back in front of a segment
/// ([`HELD_FIELD_MAX`](crate::maps::HELD_FIELD_MAX), which holds a whole EPRT line).
pub const MAX_FIELD_LEN: usize = crate::maps::HELD_FIELD_MAX;

const _: () = assert!(
    MAX_EPRT_FIELD_LEN <= MAX_FIELD_LEN
        && MAX_PORT_LINE_LEN <= MAX_FIELD_LEN
        && MAX_229_LINE_LEN <= MAX_FIELD_LEN
        && MAX_ALG_REPLY_LEN <= MAX_FIELD_LEN
);

/// Writes bytes to the front of a caller buffer, failing instead of overrunning it.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Writer { out, len: 0 }
    }

    #[inline(always)]
    fn byte(&mut self, byte: u8) -> Option<()> {
        *self.out.get_mut(self.len)? = byte;
        self.len = self.len.checked_add(1)?;
        Some(())
    }

    /// `value` in decimal without leading zeros.
    ///
    /// Digits are produced most significant first with constant divisors, so no digit buffer is
    /// indexed at a variable position (the BPF verifier rejects the pointer arithmetic that
    /// reversing such a buffer compiles to).
    fn decimal(&mut self, value: u16) -> Option<()> {
        let mut started = false;
        for divisor in [10_000u16, 1_000, 100, 10, 1] {
            let digit = value.checked_div(divisor)?.checked_rem(10)?;
            started |= digit != 0 || divisor == 1;
            if started {
                self.byte(b'0'.wrapping_add(u8::try_from(digit).ok()?))?;
            }
        }
        Some(())
    }

    /// `value` in hex without leading zeros.
    fn hex(&mut self, value: u16, upper: bool) -> Option<()> {
        let letter_base = if upper { b'A' } else { b'a' };
        let mut started = false;
        for shift in [12u32, 8, 4, 0] {
            let nibble = u8::try_from(value.checked_shr(shift)? & 0x0f).ok()?;
            started |= nibble != 0 || shift == 0;
            if started {
                self.byte(if nibble < 10 {
                    b'0'.wrapping_add(nibble)
                } else {
                    letter_base.wrapping_add(nibble.wrapping_sub(10))
                })?;
            }
        }
        Some(())
    }

    /// The four bytes of `addr` in decimal, separated by `separator`.
    fn ipv4(&mut self, addr: Ipv4Addr, separator: u8) -> Option<()> {
        for (index, octet) in addr.octets().into_iter().enumerate() {
            if index > 0 {
                self.byte(separator)?;
            }
            self.decimal(u16::from(octet))?;
        }
        Some(())
    }

    /// `addr` in RFC 5952 form.
    fn ipv6(&mut self, addr: Ipv6Addr, upper: bool) -> Option<()> {
        let groups = addr.segments();
        // The longest run of zero groups, the first of equals; only runs of two or more are
        // compressed (RFC 5952 section 4.2.2).
        let (mut gap_start, mut gap_len) = (0usize, 0usize);
        let (mut run_start, mut run_len) = (0usize, 0usize);
        for (index, &group) in groups.iter().enumerate() {
            if group == 0 {
                if run_len == 0 {
                    run_start = index;
                }
                run_len = run_len.saturating_add(1);
                if run_len > gap_len {
                    (gap_start, gap_len) = (run_start, run_len);
                }
            } else {
                run_len = 0;
            }
        }
        if gap_len < 2 {
            (gap_start, gap_len) = (groups.len(), 0);
        }
        let gap_end = gap_start.saturating_add(gap_len);
        for (index, &group) in groups.iter().enumerate() {
            if (gap_start..gap_end).contains(&index) {
                if index == gap_start {
                    self.byte(b':')?;
                    self.byte(b':')?;
                }
                continue;
            }
            if index > 0 && index != gap_end {
                self.byte(b':')?;
            }
            self.hex(group, upper)?;
        }
        Some(())
    }

    /// `h1,h2,h3,h4,p1,p2`.
    fn host_port(&mut self, addr: Ipv4Addr, port: u16) -> Option<()> {
        self.ipv4(addr, b',')?;
        let [high, low] = port.to_be_bytes();
        for byte in [high, low] {
            self.byte(b',')?;
            self.decimal(u16::from(byte))?;
        }
        Some(())
    }

    fn written(&self) -> &[u8] {
        self.out.get(..self.len).unwrap_or_default()
    }
}

/// The `PORT` argument for `addr:port`: `h1,h2,h3,h4,p1,p2`. `None` if `port` is 0 or `out` is
/// shorter than needed ([`MAX_PORT_FIELD_LEN`] always suffices).
pub fn format_port_field(addr: Ipv4Addr, port: u16, out: &mut [u8]) -> Option<usize> {
    if port == 0 {
        return None;
    }
    let mut writer = Writer::new(out);
    writer.host_port(addr, port)?;
    Some(writer.len)
}

/// The six numbers of a 227 reply for `addr:port`; the same text as [`format_port_field`]. The
/// server's text around the numbers is outside the field and stays as it was.
#[inline(always)]
pub fn format_227_field(addr: Ipv4Addr, port: u16, out: &mut [u8]) -> Option<usize> {
    format_port_field(addr, port, out)
}

/// The whole `EPRT` argument for `addr:port` with `delimiter`: `<d>1<d>a.b.c.d<d>port<d>` or
/// `<d>2<d>ipv6<d>port<d>`. `None` if `port` is 0, `delimiter` is not a valid RFC 2428 delimiter,
/// the delimiter would occur inside the address text (`.` for IPv4, `:` for IPv6), or `out` is too
/// small ([`MAX_EPRT_FIELD_LEN`] always suffices).
pub fn format_eprt_field(addr: IpAddr, port: u16, delimiter: u8, out: &mut [u8]) -> Option<usize> {
    if port == 0 || !is_delimiter(delimiter) {
        return None;
    }
    let mut writer = Writer::new(out);
    writer.byte(delimiter)?;
    let address_start = match addr {
        IpAddr::V4(addr) => {
            writer.byte(b'1')?;
            writer.byte(delimiter)?;
            let start = writer.len;
            writer.ipv4(addr, b'.')?;
            start
        }
        IpAddr::V6(addr) => {
            writer.byte(b'2')?;
            writer.byte(delimiter)?;
            let start = writer.len;
            writer.ipv6(addr, matches!(delimiter, b'a'..=b'f'))?;
            start
        }
    };
    let address = writer.written().get(address_start..).unwrap_or_default();
    if address
        .iter()
        .take(MAX_EPRT_FIELD_LEN)
        .any(|&byte| byte == delimiter)
    {
        return None;
    }
    writer.byte(delimiter)?;
    writer.decimal(port)?;
    writer.byte(delimiter)?;
    Some(writer.len)
}

/// An IPv6 address as text (RFC 5952), formatted once ahead of use: the datapath announces the
/// public IPv6 address (NAT66) by copying this, as formatting an IPv6 address in the kernel costs
/// its verifier far more than a copy. The agent writes it into the config table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6AddressText {
    /// Bytes of `text` in use.
    pub len: u8,
    pub text: [u8; MAX_IPV6_ADDRESS_TEXT_LEN],
}

/// `ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff`.
pub const MAX_IPV6_ADDRESS_TEXT_LEN: usize = 39;

impl Ipv6AddressText {
    /// No address: formats nothing.
    pub const NONE: Self = Self {
        len: 0,
        text: [0; MAX_IPV6_ADDRESS_TEXT_LEN],
    };

    pub fn of(addr: Ipv6Addr) -> Self {
        let mut text = [0; MAX_IPV6_ADDRESS_TEXT_LEN];
        let mut writer = Writer::new(&mut text);
        let len = match writer.ipv6(addr, false) {
            Some(()) => writer.len,
            None => 0,
        };
        Self {
            len: u8::try_from(len).unwrap_or(0),
            text,
        }
    }
}

/// The public address a rewrite announces: IPv4, or IPv6 as its text made ahead.
#[derive(Clone, Copy, Debug)]
pub enum PublicAddress<'a> {
    V4(Ipv4Addr),
    V6(&'a Ipv6AddressText),
}

/// [`format_eprt_field`] for an IPv6 address given as its text: `<d>2<d>text<d>port<d>`, the same
/// bytes for the same address. `None` as there, or if the text is empty.
pub fn format_eprt6_field(
    address: &Ipv6AddressText,
    port: u16,
    delimiter: u8,
    out: &mut [u8],
) -> Option<usize> {
    // With a delimiter from `a` to `f` the hex digits are written in upper case, as
    // `format_eprt_field` does, so that the delimiter cannot occur in the address.
    let upper = matches!(delimiter, b'a'..=b'f');
    let text_len = usize::from(address.len);
    if port == 0
        || !is_delimiter(delimiter)
        || delimiter == b':'
        || text_len == 0
        || text_len > MAX_IPV6_ADDRESS_TEXT_LEN
    {
        return None;
    }
    const HEAD_LEN: usize = 3;
    let head = out.get_mut(..HEAD_LEN + MAX_IPV6_ADDRESS_TEXT_LEN)?;
    let (family, text) = head.split_at_mut(HEAD_LEN);
    family.copy_from_slice(&[delimiter, b'2', delimiter]);
    // The whole text area, whatever its length, without a branch per byte: the kernel's verifier
    // walks this copy once rather than once per length and case. What lies past the text is
    // written over next.
    for (slot, &byte) in text.iter_mut().zip(address.text.iter()) {
        let case_shift = u8::from(upper && byte.wrapping_sub(b'a') < 6) << 5;
        *slot = byte.wrapping_sub(case_shift);
    }
    let mut writer = Writer {
        out,
        len: HEAD_LEN + text_len,
    };
    writer.byte(delimiter)?;
    writer.decimal(port)?;
    writer.byte(delimiter)?;
    Some(writer.len)
}

/// The port digits of a 229 reply. The delimiters and parentheses are outside the field and stay
/// as they were. `None` if `port` is 0 or `out` is too small ([`MAX_229_FIELD_LEN`] suffices).
pub fn format_229_field(port: u16, out: &mut [u8]) -> Option<usize> {
    if port == 0 {
        return None;
    }
    let mut writer = Writer::new(out);
    writer.decimal(port)?;
    Some(writer.len)
}

/// Written over a PORT argument when the port window has no free port: port 0 at 0.0.0.0, which
/// servers refuse at once (a privileged port, and not the client's address), so the client's
/// PORT fails with an error reply instead of the server connecting to a private address that
/// cannot answer.
pub const REFUSED_PORT_FIELD: &[u8] = b"0,0,0,0,0,0";

/// Written over a whole 227/229 line (all of it but the LF) when the port window has no free
/// port: a `425` the client fails on at once, instead of an address it would wait on.
pub const REFUSED_PASSIVE_LINE: &[u8] = b"425 ftpnat: data port window exhausted.\r";

/// Written over a client's `EPSV` (no argument, or `2`) in a NAT64 session: the IPv4 server
/// gets a `PASV`, whose 227 the ALG turns into a 229 ([`format_229_line`]; RFC 6384 section 6).
pub const PASV_LINE: &[u8] = b"PASV\r";

/// Written over a command the NAT64 ALG answers itself (`EPSV ALL`, `ALGS …`): the server answers
/// the `NOOP`, and that reply is replaced by the ALG's ([`AlgReply`]). The server sees one command
/// for the client's one, so later replies keep their order.
pub const NOOP_LINE: &[u8] = b"NOOP\r";

/// The whole lines the NAT64 ALG answers with, written over the server's reply to what it sent
/// instead of the client's command (see [`NOOP_LINE`]), or over a 227 it cannot return as a 229.
/// Stored as a `u8` in [`RewriteRecord::delimiter`] with [`rewrite_kind::ALG_REPLY`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlgReply {
    /// To `EPSV ALL` (RFC 2428 section 4): the ALG enforces it, the server never sees it.
    EpsvAllAccepted = 1,
    /// To `ALGS STATUS64` or `ALGS ENABLE64` (RFC 6384 section 11): the ALG is on.
    Enabled = 2,
    /// To `ALGS STATUS64` or `ALGS DISABLE64`: the ALG is off for the session.
    Disabled = 3,
    /// To `ALGS` with another argument, or none.
    UnknownArgument = 4,
    /// Over a 227 answering a translated EPSV that names another address than the server's: a
    /// 229 cannot carry it, and an IPv6 client could not reach it.
    PassiveAddressMismatch = 5,
    /// Over a 227 answering a translated EPSV that the policy turns down otherwise (its port,
    /// too many expectations): the client asked for a 229 and gets a failure instead.
    PassiveRefused = 6,
}

/// The longest [`AlgReply::line`].
pub const MAX_ALG_REPLY_LEN: usize = 40;

impl AlgReply {
    /// Every reply, in code order.
    pub const ALL: [AlgReply; 6] = [
        AlgReply::EpsvAllAccepted,
        AlgReply::Enabled,
        AlgReply::Disabled,
        AlgReply::UnknownArgument,
        AlgReply::PassiveAddressMismatch,
        AlgReply::PassiveRefused,
    ];

    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            1 => AlgReply::EpsvAllAccepted,
            2 => AlgReply::Enabled,
            3 => AlgReply::Disabled,
            4 => AlgReply::UnknownArgument,
            5 => AlgReply::PassiveAddressMismatch,
            6 => AlgReply::PassiveRefused,
            _ => return None,
        })
    }

    /// The reply written over a 227 answering a translated EPSV that was refused for `reason`.
    pub const fn for_refusal(reason: crate::RefusalReason) -> Self {
        match reason {
            crate::RefusalReason::PassiveAddressMismatch => AlgReply::PassiveAddressMismatch,
            _ => AlgReply::PassiveRefused,
        }
    }

    /// The whole line, all but its LF.
    pub const fn line(self) -> &'static [u8] {
        match self {
            AlgReply::EpsvAllAccepted => b"200 EPSV ALL ok.\r",
            AlgReply::Enabled => b"216 NAT64 FTP ALG (ftpnat): enabled\r",
            AlgReply::Disabled => b"216 NAT64 FTP ALG (ftpnat): disabled\r",
            AlgReply::UnknownArgument => b"501 ALGS: unknown argument.\r",
            AlgReply::PassiveAddressMismatch => b"425 ftpnat: not the server's address.\r",
            AlgReply::PassiveRefused => b"425 ftpnat: passive reply refused.\r",
        }
    }
}

const _: () = {
    let mut raw = 0;
    while raw < u8::MAX {
        if let Some(reply) = AlgReply::from_raw(raw) {
            assert!(reply.line().len() <= MAX_ALG_REPLY_LEN);
        }
        raw += 1;
    }
};

/// A whole `PORT` line for `addr:port`, all but its LF: `PORT h1,h2,h3,h4,p1,p2\r` (the NAT64
/// ALG's replacement of an `EPRT |2|…` line, RFC 6384 section 7). `None` as
/// [`format_port_field`].
pub fn format_port_line(addr: Ipv4Addr, port: u16, out: &mut [u8]) -> Option<usize> {
    if port == 0 {
        return None;
    }
    let mut writer = Writer::new(out);
    for &byte in b"PORT " {
        writer.byte(byte)?;
    }
    writer.host_port(addr, port)?;
    writer.byte(b'\r')?;
    Some(writer.len)
}

const EPSV_229_HEAD: &[u8] = b"229 Entering Extended Passive Mode (|||";
const EPSV_229_TAIL: &[u8] = b"|)\r";

/// A whole 229 line announcing `port`, all but its LF: `229 Entering Extended Passive Mode
/// (|||port|)\r` (the NAT64 ALG's replacement of a 227 answering a translated EPSV, RFC 6384
/// section 6). `None` if `port` is 0 or `out` is shorter than needed ([`MAX_229_LINE_LEN`]).
pub fn format_229_line(port: u16, out: &mut [u8]) -> Option<usize> {
    if port == 0 {
        return None;
    }
    let mut writer = Writer::new(out);
    for &byte in EPSV_229_HEAD {
        writer.byte(byte)?;
    }
    writer.decimal(port)?;
    for &byte in EPSV_229_TAIL {
        writer.byte(byte)?;
    }
    Some(writer.len)
}

/// The EPRT argument counterpart of [`REFUSED_PORT_FIELD`]: `<d>1<d>0.0.0.0<d>0<d>`.
pub fn format_refused_eprt_field(delimiter: u8, out: &mut [u8]) -> Option<usize> {
    if !is_delimiter(delimiter) || delimiter == b'.' {
        return None;
    }
    let mut writer = Writer::new(out);
    for byte in [delimiter, b'1', delimiter] {
        writer.byte(byte)?;
    }
    writer.ipv4(Ipv4Addr::UNSPECIFIED, b'.')?;
    for byte in [delimiter, b'0', delimiter] {
        writer.byte(byte)?;
    }
    Some(writer.len)
}

/// The replacement text of one datapath rewrite, by its [`rewrite_kind`]: `addr` and the
/// record's `public_port` are the public address and window port announced instead of the
/// original ones (unused by the refusals). `None` for an unknown kind, a value the formatter
/// refuses, or an IPv6 `addr` for a PORT or 227 (which carry IPv4 only).
///
/// The NAT64 ALG's kinds replace whole lines (all but the LF): `EPRT_AS_PORT` with
/// [`format_port_line`] of the pool address (`PublicAddress::V4`) and `public_port` (a window
/// port), `PASV_AS_229` with [`format_229_line`] of `public_port` (the server's port),
/// `EPSV_AS_PASV` with [`PASV_LINE`], `LOCAL_COMMAND` with [`NOOP_LINE`], `ALG_REPLY` with the
/// [`AlgReply`] whose code `delimiter` holds.
///
/// An IPv6 `addr` (NAT66) is given as its text, formatted once ahead: see [`Ipv6AddressText`].
// Not inlined: the datapath calls it from two places, and each kind's formatter is verified once
// per call instead of once per path into the caller.
#[inline(never)]
pub fn format_rewrite(
    record: &RewriteRecord,
    addr: PublicAddress<'_>,
    out: &mut [u8],
) -> Option<usize> {
    let (port, delimiter) = (record.public_port, record.delimiter);
    match (record.kind, addr) {
        (rewrite_kind::PORT, PublicAddress::V4(addr)) => format_port_field(addr, port, out),
        (rewrite_kind::EPRT, PublicAddress::V4(addr)) => {
            format_eprt_field(IpAddr::V4(addr), port, delimiter, out)
        }
        (rewrite_kind::EPRT, PublicAddress::V6(text)) => {
            format_eprt6_field(text, port, delimiter, out)
        }
        (rewrite_kind::PASV_227, PublicAddress::V4(addr)) => format_227_field(addr, port, out),
        (rewrite_kind::EPSV_229, _) => format_229_field(port, out),
        (rewrite_kind::PORT_REFUSED, _) => copy_text(REFUSED_PORT_FIELD, out),
        (rewrite_kind::EPRT_REFUSED, _) => format_refused_eprt_field(delimiter, out),
        (rewrite_kind::PASSIVE_REFUSED, _) => copy_text(REFUSED_PASSIVE_LINE, out),
        (rewrite_kind::EPRT_AS_PORT, PublicAddress::V4(addr)) => format_port_line(addr, port, out),
        (rewrite_kind::PASV_AS_229, _) => format_229_line(port, out),
        (rewrite_kind::EPSV_AS_PASV, _) => copy_text(PASV_LINE, out),
        (rewrite_kind::LOCAL_COMMAND, _) => copy_text(NOOP_LINE, out),
        (rewrite_kind::ALG_REPLY, _) => copy_text(AlgReply::from_raw(delimiter)?.line(), out),
        _ => None,
    }
}

fn copy_text(text: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut writer = Writer::new(out);
    for &byte in text.iter().take(MAX_FIELD_LEN) {
        writer.byte(byte)?;
    }
    Some(writer.len)
}

/// Copies `line` into `out` with the bytes under `field` replaced by `replacement`, and returns
/// the new length. `None` if `field` does not lie within `line`, `line` is longer than
/// [`MAX_LINE_LEN`], `replacement` longer than [`MAX_FIELD_LEN`], or `out` is too small.
///
/// For tests and the agent; the datapath rewrites the packet in place instead.
pub fn splice(line: &[u8], field: Span, replacement: &[u8], out: &mut [u8]) -> Option<usize> {
    if line.len() > MAX_LINE_LEN || replacement.len() > MAX_FIELD_LEN {
        return None;
    }
    let (head, rest) = line.split_at_checked(usize::from(field.start))?;
    let tail = rest.get(usize::from(field.len)..)?;
    let len = head
        .len()
        .checked_add(replacement.len())?
        .checked_add(tail.len())?;
    let out = out.get_mut(..len)?;
    let (out_head, out_rest) = out.split_at_mut_checked(head.len())?;
    let (out_middle, out_tail) = out_rest.split_at_mut_checked(replacement.len())?;
    for (destination, source) in [(out_head, head), (out_middle, replacement), (out_tail, tail)] {
        for (slot, byte) in destination.iter_mut().zip(source).take(MAX_LINE_LEN) {
            *slot = *byte;
        }
    }
    Some(len)
}

#[cfg(test)]
mod tests;
