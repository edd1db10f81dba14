//! Strict decimal numbers, read one digit at a time.
//!
//! Every number has a digit limit; a longer digit run is refused, never truncated, and values never
//! wrap: `000000000000000001` is not 1, a 20-digit port is not a port, `256` is not an octet. (The
//! Linux helper read `PORT 10,0,1,2,256,22` as port 22 until 2026.) Leading zeros within the limit
//! are accepted (`010` is 10), as servers print them.

use crate::MalformedReason;

/// Digits of an address or port byte in `PORT`/`227` and of an IPv4 octet in `EPRT`.
pub const MAX_OCTET_DIGITS: u8 = 3;
/// Digits of a decimal port in `EPRT`/`229`.
pub const MAX_PORT_DIGITS: u8 = 5;

/// The value of `byte` as a decimal digit.
#[inline(always)]
pub(crate) fn decimal_digit(byte: u8) -> Option<u8> {
    let digit = byte.wrapping_sub(b'0');
    (digit < 10).then_some(digit)
}

/// The value of `byte` as a hexadecimal digit (either case).
#[inline(always)]
pub(crate) fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(byte.wrapping_sub(b'a').wrapping_add(10)),
        b'A'..=b'F' => Some(byte.wrapping_sub(b'A').wrapping_add(10)),
        _ => None,
    }
}

/// A decimal number being read one byte at a time.
///
/// Part of the scanners' stored state: `#[repr(C)]`, 8 bytes, no padding, any bit pattern valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decimal {
    value: u32,
    digits: u8,
    _pad: [u8; 3],
}

impl Decimal {
    pub const fn new() -> Self {
        Self {
            value: 0,
            digits: 0,
            _pad: [0; 3],
        }
    }

    /// Takes `byte` if it is a digit: `Ok(true)`. `Ok(false)` if it is not a digit (the number
    /// ends before it); `Err(TooManyDigits)` for digit number `MAX + 1`.
    ///
    /// The value stays below `10^MAX`, which fits a `u32` for every limit used here.
    #[inline(always)]
    pub fn push<const MAX: u8>(&mut self, byte: u8) -> Result<bool, MalformedReason> {
        let Some(digit) = decimal_digit(byte) else {
            return Ok(false);
        };
        if self.digits >= MAX {
            return Err(MalformedReason::TooManyDigits);
        }
        self.value = self
            .value
            .wrapping_mul(10)
            .wrapping_add(u32::from(digit));
        self.digits = self.digits.wrapping_add(1);
        Ok(true)
    }

    /// No digit read yet.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.digits == 0
    }

    /// The number as a byte (0–255).
    #[inline(always)]
    pub fn octet(&self) -> Result<u8, MalformedReason> {
        if self.is_empty() {
            return Err(MalformedReason::ExpectedDigit);
        }
        u8::try_from(self.value).map_err(|_| MalformedReason::OctetOutOfRange)
    }

    /// The number as a TCP port (1–65535).
    #[inline(always)]
    pub fn port(&self) -> Result<u16, MalformedReason> {
        if self.is_empty() {
            return Err(MalformedReason::ExpectedDigit);
        }
        match u16::try_from(self.value) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(MalformedReason::PortOutOfRange),
        }
    }

    /// The number as an address family code (an octet; anything invalid is an unsupported
    /// family).
    #[inline(always)]
    pub fn family(&self) -> Result<u8, MalformedReason> {
        self.octet().map_err(|reason| match reason {
            MalformedReason::ExpectedDigit => MalformedReason::ExpectedDigit,
            _ => MalformedReason::UnsupportedAddressFamily,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MalformedReason::*;

    /// Reads the digit run at the start of `text` with limit `MAX`, as the scanners do.
    fn read<const MAX: u8>(text: &[u8]) -> Result<Decimal, MalformedReason> {
        let mut number = Decimal::new();
        for &byte in text {
            if !number.push::<MAX>(byte)? {
                break;
            }
        }
        Ok(number)
    }

    fn octet(text: &[u8]) -> Result<u8, MalformedReason> {
        read::<MAX_OCTET_DIGITS>(text)?.octet()
    }

    fn port(text: &[u8]) -> Result<u16, MalformedReason> {
        read::<MAX_PORT_DIGITS>(text)?.port()
    }

    #[test]
    fn octet_accepts_0_to_255_with_up_to_three_digits() {
        assert_eq!(octet(b"0"), Ok(0));
        assert_eq!(octet(b"7,"), Ok(7));
        assert_eq!(octet(b"255)"), Ok(255));
        assert_eq!(octet(b"010"), Ok(10));
        assert_eq!(octet(b"001"), Ok(1));
    }

    #[test]
    fn octet_refuses_large_values_and_long_runs() {
        assert_eq!(octet(b"256"), Err(OctetOutOfRange));
        assert_eq!(octet(b"999"), Err(OctetOutOfRange));
        assert_eq!(octet(b"0001"), Err(TooManyDigits));
        assert_eq!(octet(b"000000000000000001"), Err(TooManyDigits));
        assert_eq!(octet(b"1234"), Err(TooManyDigits));
    }

    #[test]
    fn octet_needs_a_digit() {
        assert_eq!(octet(b""), Err(ExpectedDigit));
        assert_eq!(octet(b",1"), Err(ExpectedDigit));
        assert_eq!(octet(b"+1"), Err(ExpectedDigit));
        assert_eq!(octet(b" 1"), Err(ExpectedDigit));
    }

    #[test]
    fn port_accepts_1_to_65535() {
        assert_eq!(port(b"1|"), Ok(1));
        assert_eq!(port(b"21"), Ok(21));
        assert_eq!(port(b"65535"), Ok(65535));
        assert_eq!(port(b"00021|"), Ok(21));
    }

    #[test]
    fn port_refuses_zero_overflow_and_long_runs() {
        assert_eq!(port(b"0"), Err(PortOutOfRange));
        assert_eq!(port(b"00000"), Err(PortOutOfRange));
        assert_eq!(port(b"65536"), Err(PortOutOfRange));
        assert_eq!(port(b"99999"), Err(PortOutOfRange));
        assert_eq!(port(b"100000"), Err(TooManyDigits));
        assert_eq!(port(b"18446744073709551617"), Err(TooManyDigits));
        assert_eq!(port(b"000000000000000001"), Err(TooManyDigits));
        assert_eq!(port(b"|21"), Err(ExpectedDigit));
    }

    #[test]
    fn family_maps_every_bad_number_to_unsupported() {
        let family = |text: &[u8]| read::<MAX_OCTET_DIGITS>(text).and_then(|n| n.family());
        assert_eq!(family(b"1|"), Ok(1));
        assert_eq!(family(b"256|"), Err(UnsupportedAddressFamily));
        assert_eq!(family(b"|"), Err(ExpectedDigit));
    }

    #[test]
    fn digit_values() {
        assert_eq!(decimal_digit(b'0'), Some(0));
        assert_eq!(decimal_digit(b'9'), Some(9));
        assert_eq!(decimal_digit(b'/'), None);
        assert_eq!(decimal_digit(b':'), None);
        assert_eq!(hex_digit(b'a'), Some(10));
        assert_eq!(hex_digit(b'F'), Some(15));
        assert_eq!(hex_digit(b'g'), None);
        assert_eq!(hex_digit(b'@'), None);
    }
}
