//! Why a line was not usable ([`MalformedReason`]) and why a valid request was turned down
//! ([`RefusalReason`]).
//!
//! Both are `#[repr(u32)]` with stable, non-zero codes so the kernel program can index counters
//! with them, and both have [`as_str`](MalformedReason::as_str) names for logs and metrics.

/// Why a line, or the argument of a command or reply the core cares about, is invalid.
///
/// A malformed line is never acted on: the caller passes it through untouched.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MalformedReason {
    /// No LF within [`MAX_LINE_LEN`](crate::MAX_LINE_LEN) bytes.
    TooLong = 1,
    /// The bytes end before an LF: the rest of the line is still to come.
    Unterminated = 2,
    /// The command or reply needs an argument and has none.
    MissingArgument = 3,
    /// A digit was expected (including a 227 reply with no digit after its code).
    ExpectedDigit = 4,
    /// A number has more digits than its field allows (3 for an octet, 5 for a port, 4 for an IPv6
    /// group); refused rather than truncated.
    TooManyDigits = 5,
    /// An address or port byte above 255.
    OctetOutOfRange = 6,
    /// A port of 0 or above 65535.
    PortOutOfRange = 7,
    /// The separator between the numbers of an address is missing or wrong.
    ExpectedSeparator = 8,
    /// Bytes after a complete argument where the grammar ends.
    TrailingBytes = 9,
    /// An EPRT/EPSV delimiter outside 33–126, a digit, not repeated where it must be, or an EPRT
    /// delimiter that can occur in the address (`.` with family 1, `:` with family 2).
    BadDelimiter = 10,
    /// An EPRT address family other than 1 (IPv4) or 2 (IPv6).
    UnsupportedAddressFamily = 11,
    /// An EPRT IPv6 address that is not valid RFC 4291 text.
    BadIpv6Address = 12,
    /// A 229 reply without the parenthesised `(<d><d><d>port<d>)` field.
    MissingParenthesis = 13,
    /// An EPSV argument other than `1`, `2` or `ALL`.
    BadEpsvArgument = 14,
}

impl MalformedReason {
    /// Every reason, in code order.
    pub const ALL: [MalformedReason; 14] = [
        MalformedReason::TooLong,
        MalformedReason::Unterminated,
        MalformedReason::MissingArgument,
        MalformedReason::ExpectedDigit,
        MalformedReason::TooManyDigits,
        MalformedReason::OctetOutOfRange,
        MalformedReason::PortOutOfRange,
        MalformedReason::ExpectedSeparator,
        MalformedReason::TrailingBytes,
        MalformedReason::BadDelimiter,
        MalformedReason::UnsupportedAddressFamily,
        MalformedReason::BadIpv6Address,
        MalformedReason::MissingParenthesis,
        MalformedReason::BadEpsvArgument,
    ];

    /// The numeric code (stable).
    #[inline(always)]
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The reason with this code, if any.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => MalformedReason::TooLong,
            2 => MalformedReason::Unterminated,
            3 => MalformedReason::MissingArgument,
            4 => MalformedReason::ExpectedDigit,
            5 => MalformedReason::TooManyDigits,
            6 => MalformedReason::OctetOutOfRange,
            7 => MalformedReason::PortOutOfRange,
            8 => MalformedReason::ExpectedSeparator,
            9 => MalformedReason::TrailingBytes,
            10 => MalformedReason::BadDelimiter,
            11 => MalformedReason::UnsupportedAddressFamily,
            12 => MalformedReason::BadIpv6Address,
            13 => MalformedReason::MissingParenthesis,
            14 => MalformedReason::BadEpsvArgument,
            _ => return None,
        })
    }

    /// A short snake_case name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            MalformedReason::TooLong => "too_long",
            MalformedReason::Unterminated => "unterminated",
            MalformedReason::MissingArgument => "missing_argument",
            MalformedReason::ExpectedDigit => "expected_digit",
            MalformedReason::TooManyDigits => "too_many_digits",
            MalformedReason::OctetOutOfRange => "octet_out_of_range",
            MalformedReason::PortOutOfRange => "port_out_of_range",
            MalformedReason::ExpectedSeparator => "expected_separator",
            MalformedReason::TrailingBytes => "trailing_bytes",
            MalformedReason::BadDelimiter => "bad_delimiter",
            MalformedReason::UnsupportedAddressFamily => "unsupported_address_family",
            MalformedReason::BadIpv6Address => "bad_ipv6_address",
            MalformedReason::MissingParenthesis => "missing_parenthesis",
            MalformedReason::BadEpsvArgument => "bad_epsv_argument",
        }
    }
}

/// Why the session turned down a well-formed request to open a data connection.
///
/// The rule behind each one, and its RFC, is in the crate's `README.md`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// A 227/229 that answers no PASV/EPSV (or answers the other one): nothing asked for it.
    UnsolicitedReply = 0,
    /// PORT/EPRT names an address other than the control connection's client (the FTP bounce
    /// attack, RFC 2577 section 3).
    Bounce = 1,
    /// A 227 names an address other than the control connection's server while the policy requires
    /// them to match (RFC 2577 section 3; RFC 2428 section 3 for why EPSV carries no address).
    PassiveAddressMismatch = 2,
    /// PORT/EPRT names a port below 1024 and the policy does not allow it (RFC 2577 section 3).
    PrivilegedPort = 3,
    /// The session already has as many open expectations as the policy allows.
    TooManyExpectations = 4,
    /// PORT/EPRT while a data transfer is running or a PASV/EPSV still waits for its reply
    /// (RFC 959 section 5.4: a transfer parameter changes between transfers, one command at a time).
    NotInCommandState = 5,
    /// PORT, EPRT or PASV after the server accepted `EPSV ALL` (RFC 2428 section 4).
    EpsvAllActive = 6,
    /// A 227/229 announces a port the policy does not allow: a published server's passive port
    /// outside its configured range (by default, a privileged one) or its control port.
    PassivePortNotAllowed = 7,
}

impl RefusalReason {
    /// Every reason, in code order.
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::UnsolicitedReply,
        RefusalReason::Bounce,
        RefusalReason::PassiveAddressMismatch,
        RefusalReason::PrivilegedPort,
        RefusalReason::TooManyExpectations,
        RefusalReason::NotInCommandState,
        RefusalReason::EpsvAllActive,
        RefusalReason::PassivePortNotAllowed,
    ];

    /// The numeric code (1-based, stable).
    #[inline(always)]
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The reason with this code, if any.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => RefusalReason::UnsolicitedReply,
            1 => RefusalReason::Bounce,
            2 => RefusalReason::PassiveAddressMismatch,
            3 => RefusalReason::PrivilegedPort,
            4 => RefusalReason::TooManyExpectations,
            5 => RefusalReason::NotInCommandState,
            6 => RefusalReason::EpsvAllActive,
            7 => RefusalReason::PassivePortNotAllowed,
            _ => return None,
        })
    }

    /// A short snake_case name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnsolicitedReply => "unsolicited_reply",
            RefusalReason::Bounce => "bounce",
            RefusalReason::PassiveAddressMismatch => "passive_address_mismatch",
            RefusalReason::PrivilegedPort => "privileged_port",
            RefusalReason::TooManyExpectations => "too_many_expectations",
            RefusalReason::NotInCommandState => "not_in_command_state",
            RefusalReason::EpsvAllActive => "epsv_all_active",
            RefusalReason::PassivePortNotAllowed => "passive_port_not_allowed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_codes_round_trip_and_names_are_distinct() {
        for (index, reason) in MalformedReason::ALL.iter().enumerate() {
            assert_eq!(reason.code() as usize, index + 1);
            assert_eq!(MalformedReason::from_code(reason.code()), Some(*reason));
            for other in &MalformedReason::ALL[index + 1..] {
                assert_ne!(reason.as_str(), other.as_str());
            }
        }
        assert_eq!(MalformedReason::from_code(0), None);
        assert_eq!(MalformedReason::from_code(15), None);
    }

    #[test]
    fn refusal_codes_round_trip_and_names_are_distinct() {
        for (index, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(reason.code() as usize, index);
            assert_eq!(RefusalReason::from_code(reason.code()), Some(*reason));
            for other in &RefusalReason::ALL[index + 1..] {
                assert_ne!(reason.as_str(), other.as_str());
            }
        }
        assert_eq!(RefusalReason::from_code(8), None);
    }
}
