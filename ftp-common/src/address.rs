//! The address grammars, read one byte at a time: RFC 959 host-port (`h1,h2,h3,h4,p1,p2`),
//! dotted-quad IPv4, RFC 4291 IPv6 text, and the RFC 2428 delimiter rule.
//!
//! The readers are parts of the scanners' stored state (`#[repr(C)]`, no padding, any bit
//! pattern valid): a corrupt value can only make a line malformed.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use crate::MalformedReason;
use crate::number::{Decimal, MAX_OCTET_DIGITS, decimal_digit, hex_digit};

/// The longest IPv6 text accepted: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
pub const MAX_IPV6_TEXT_LEN: u8 = 45;

/// Whether `byte` may delimit EPRT and 229 fields: printable ASCII 33–126 other than a digit
/// (RFC 2428 sections 2 and 3).
#[inline(always)]
pub const fn is_delimiter(byte: u8) -> bool {
    matches!(byte, 33..=126) && !byte.is_ascii_digit()
}

/// What [`Octets::push`] did with a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OctetsStep {
    /// Part of the numbers.
    Consumed,
    /// The last number ended before this byte, which was not consumed.
    Ended,
}

/// `COUNT` decimal bytes separated by `SEPARATOR`: six and `,` for RFC 959 host-port, four and
/// `.` for dotted-quad IPv4. Each is 1–3 digits and at most 255; nothing else is skipped (no
/// spaces, no sign).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Octets {
    number: Decimal,
    octets: [u8; 6],
    /// The number being read.
    index: u8,
    _pad: u8,
}

/// Host-port: six numbers separated by commas.
pub const HOST_PORT: (u8, u8) = (6, b',');
/// Dotted-quad IPv4: four numbers separated by dots.
pub const DOTTED_QUAD: (u8, u8) = (4, b'.');

impl Octets {
    pub const fn new() -> Self {
        Self {
            number: Decimal::new(),
            octets: [0; 6],
            index: 0,
            _pad: 0,
        }
    }

    /// Starts with the first number already read (the IPv4 tail of an IPv6 address, whose first
    /// digits were read as an IPv6 group) and its separator consumed.
    fn after_first(first: u8) -> Self {
        let mut octets = Self::new();
        octets.octets = [first, 0, 0, 0, 0, 0];
        octets.index = 1;
        octets
    }

    /// Takes the next byte of `(count, separator)` numbers ([`HOST_PORT`] or [`DOTTED_QUAD`]).
    #[inline(always)]
    pub fn push(&mut self, byte: u8, (count, separator): (u8, u8)) -> Result<OctetsStep, MalformedReason> {
        if self.number.push::<MAX_OCTET_DIGITS>(byte)? {
            return Ok(OctetsStep::Consumed);
        }
        self.store()?;
        if self.index.wrapping_add(1) >= count {
            return Ok(OctetsStep::Ended);
        }
        if byte != separator {
            return Err(MalformedReason::ExpectedSeparator);
        }
        self.index = self.index.wrapping_add(1);
        self.number = Decimal::new();
        Ok(OctetsStep::Consumed)
    }

    /// The text ended: the last number must be complete and the last one expected.
    #[inline(always)]
    pub fn finish(&mut self, (count, _): (u8, u8)) -> Result<(), MalformedReason> {
        self.store()?;
        if self.index.wrapping_add(1) >= count {
            Ok(())
        } else {
            Err(MalformedReason::ExpectedSeparator)
        }
    }

    #[inline(always)]
    fn store(&mut self) -> Result<(), MalformedReason> {
        let octet = self.number.octet()?;
        if let Some(slot) = self.octets.get_mut(usize::from(self.index)) {
            *slot = octet;
        }
        Ok(())
    }

    /// Six complete numbers as an address and the port `p1 * 256 + p2`, which must not be 0.
    #[inline(always)]
    pub fn host_port(&self) -> Result<SocketAddrV4, MalformedReason> {
        let announced = self.announced();
        if announced.port() == 0 {
            return Err(MalformedReason::PortOutOfRange);
        }
        Ok(announced)
    }

    /// The six numbers as an address and the port `p1 * 256 + p2`, whatever they are (port 0
    /// included): [`host_port`](Self::host_port) without the check.
    #[inline(always)]
    pub fn announced(&self) -> SocketAddrV4 {
        let [h1, h2, h3, h4, p1, p2] = self.octets;
        SocketAddrV4::new(Ipv4Addr::new(h1, h2, h3, h4), u16::from_be_bytes([p1, p2]))
    }

    /// Four complete numbers as an address.
    #[inline(always)]
    pub fn ipv4(&self) -> Ipv4Addr {
        let [a, b, c, d, ..] = self.octets;
        Ipv4Addr::new(a, b, c, d)
    }
}

const V6_START: u8 = 0;
/// A `:` at the very start, which must be the first half of `::`.
const V6_LEADING_COLON: u8 = 1;
/// Inside a group of hex digits.
const V6_GROUP: u8 = 2;
/// Right after the `:` that ends a group.
const V6_AFTER_COLON: u8 = 3;
/// Right after `::`.
const V6_AFTER_GAP: u8 = 4;
/// Inside the dotted-quad IPv4 tail.
const V6_TAIL: u8 = 5;
const V6_INVALID: u8 = 6;

/// The current group's digits are all decimal (so they can start an IPv4 tail).
const DIGITS_DECIMAL: u8 = 1;

/// IPv6 text in RFC 4291 section 2.2 form: eight groups of 1–4 hex digits, at most one `::`
/// (standing for one or more zero groups), optionally ending in a dotted-quad IPv4 address; at
/// most [`MAX_IPV6_TEXT_LEN`] bytes. No zone index, no brackets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Text {
    tail: Octets,
    groups: [u16; 8],
    /// The group being read, in hex.
    group: u16,
    /// The same digits read as decimal, in case they turn out to start an IPv4 tail.
    group_decimal: u16,
    /// Groups complete.
    count: u8,
    /// One more than the number of groups before the `::`; 0 while there is none (so that the
    /// all-zero value is the initial state).
    gap: u8,
    digits: u8,
    state: u8,
    len: u8,
    flags: u8,
    _pad: [u8; 2],
}

impl Ipv6Text {
    pub const fn new() -> Self {
        Self {
            tail: Octets::new(),
            groups: [0; 8],
            group: 0,
            group_decimal: 0,
            count: 0,
            gap: 0,
            digits: 0,
            state: V6_START,
            len: 0,
            flags: 0,
            _pad: [0; 2],
        }
    }

    /// Takes the next byte of the address text.
    #[inline(always)]
    pub fn push(&mut self, byte: u8) {
        self.len = self.len.saturating_add(1);
        self.state = if self.len > MAX_IPV6_TEXT_LEN {
            V6_INVALID
        } else {
            self.next_state(byte)
        };
    }

    #[inline(always)]
    fn next_state(&mut self, byte: u8) -> u8 {
        match (self.state, byte) {
            (V6_START, b':') => V6_LEADING_COLON,
            (V6_LEADING_COLON, b':') => {
                self.gap = 1;
                V6_AFTER_GAP
            }
            (V6_START | V6_AFTER_COLON | V6_AFTER_GAP, _) => self.start_group(byte),
            (V6_GROUP, b':') => {
                if !self.end_group() {
                    return V6_INVALID;
                }
                V6_AFTER_COLON
            }
            (V6_GROUP, b'.') => self.start_tail(),
            (V6_GROUP, _) => self.group_digit(byte),
            (V6_TAIL, _) => match self.tail.push(byte, DOTTED_QUAD) {
                Ok(OctetsStep::Consumed) => V6_TAIL,
                _ => V6_INVALID,
            },
            _ => V6_INVALID,
        }
    }

    #[inline(always)]
    fn start_group(&mut self, byte: u8) -> u8 {
        if self.state == V6_AFTER_COLON && byte == b':' {
            if self.gap != 0 {
                return V6_INVALID;
            }
            self.gap = self.count.wrapping_add(1);
            return V6_AFTER_GAP;
        }
        self.group = 0;
        self.group_decimal = 0;
        self.digits = 0;
        self.flags = DIGITS_DECIMAL;
        self.group_digit(byte)
    }

    #[inline(always)]
    fn group_digit(&mut self, byte: u8) -> u8 {
        let Some(digit) = hex_digit(byte) else {
            return V6_INVALID;
        };
        if self.digits >= 4 {
            return V6_INVALID;
        }
        self.group = self.group.wrapping_mul(16).wrapping_add(u16::from(digit));
        match decimal_digit(byte) {
            Some(digit) => {
                self.group_decimal = self
                    .group_decimal
                    .wrapping_mul(10)
                    .wrapping_add(u16::from(digit));
            }
            None => self.flags &= !DIGITS_DECIMAL,
        }
        self.digits = self.digits.wrapping_add(1);
        V6_GROUP
    }

    /// Stores the group just read; false if there are already eight.
    #[inline(always)]
    fn end_group(&mut self) -> bool {
        let Some(slot) = self.groups.get_mut(usize::from(self.count)) else {
            return false;
        };
        *slot = self.group;
        self.count = self.count.wrapping_add(1);
        true
    }

    /// A `.` after a group: its digits were the first byte of an IPv4 tail, which takes the last
    /// two groups.
    #[inline(always)]
    fn start_tail(&mut self) -> u8 {
        let first = u8::try_from(self.group_decimal).ok();
        match first {
            Some(first)
                if self.flags & DIGITS_DECIMAL != 0
                    && self.digits <= MAX_OCTET_DIGITS
                    && self.count <= 6 =>
            {
                self.tail = Octets::after_first(first);
                V6_TAIL
            }
            _ => V6_INVALID,
        }
    }

    /// The text ended: the address, if the text was a valid one (then also [`addr`](Self::addr)).
    pub fn finish(&mut self) -> Option<Ipv6Addr> {
        match self.state {
            V6_GROUP => {
                if !self.end_group() {
                    return None;
                }
            }
            V6_AFTER_GAP => {}
            V6_TAIL => {
                self.tail.finish(DOTTED_QUAD).ok()?;
                let [a, b, c, d] = self.tail.ipv4().octets();
                for group in [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])] {
                    self.group = group;
                    if !self.end_group() {
                        return None;
                    }
                }
            }
            _ => return None,
        }
        let count = usize::from(self.count);
        let groups = match usize::from(self.gap).checked_sub(1) {
            None if count == 8 => self.groups,
            Some(before) if count < 8 && before <= count => {
                self.expand(before, 8usize.saturating_sub(count))
            }
            _ => return None,
        };
        self.groups = groups;
        Some(self.addr())
    }

    /// The address of a text [`finish`](Self::finish) accepted.
    #[inline(always)]
    pub fn addr(&self) -> Ipv6Addr {
        let [a, b, c, d, e, f, g, h] = self.groups;
        Ipv6Addr::new(a, b, c, d, e, f, g, h)
    }

    /// The groups with `zeros` zero groups inserted after the first `before`.
    #[inline(always)]
    fn expand(&self, before: usize, zeros: usize) -> [u16; 8] {
        let mut expanded = [0u16; 8];
        for (index, slot) in expanded.iter_mut().enumerate() {
            if index >= before && index < before.saturating_add(zeros) {
                continue;
            }
            // Groups after the gap move `zeros` places right. The mask keeps the index provably
            // inside the array for a BPF verifier, which cannot follow the subtraction.
            let source = if index < before {
                index
            } else {
                index.wrapping_sub(zeros)
            };
            if let Some(group) = self.groups.get(source & 7) {
                *slot = *group;
            }
        }
        expanded
    }
}

#[cfg(test)]
mod tests;
