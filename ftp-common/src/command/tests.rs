use super::*;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use MalformedReason::*;

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

fn span(start: u16, len: u16) -> Span {
    Span { start, len }
}

// PORT

#[test]
fn port_with_crlf() {
    assert_eq!(
        parse_command(b"PORT 10,0,0,2,4,1\r\n"),
        Command::Port {
            addr: v4(10, 0, 0, 2, 1025),
            field: span(5, 12)
        }
    );
}

#[test]
fn port_with_bare_lf() {
    assert_eq!(
        parse_command(b"PORT 192,168,1,2,7,138\n"),
        Command::Port {
            addr: v4(192, 168, 1, 2, 1930),
            field: span(5, 17)
        }
    );
}

#[test]
fn port_verb_is_case_insensitive() {
    for line in [&b"port 10,0,0,2,4,1\r\n"[..], b"Port 10,0,0,2,4,1\r\n", b"pOrT 10,0,0,2,4,1\r\n"] {
        assert_eq!(
            parse_command(line),
            Command::Port {
                addr: v4(10, 0, 0, 2, 1025),
                field: span(5, 12)
            }
        );
    }
}

#[test]
fn port_field_span_covers_the_numbers_only() {
    let line = b"PORT 255,255,255,255,255,255\r\n";
    let Command::Port { field, .. } = parse_command(line) else {
        panic!("not a PORT");
    };
    assert_eq!(field.get(line), Some(&b"255,255,255,255,255,255"[..]));
}

#[test]
fn port_ignores_bytes_after_the_first_lf() {
    assert_eq!(
        parse_command(b"PORT 10,0,0,2,4,1\r\nPORT 1,1,1,1,1,1\r\n"),
        Command::Port {
            addr: v4(10, 0, 0, 2, 1025),
            field: span(5, 12)
        }
    );
}

#[test]
fn port_refuses_octet_above_255() {
    assert_eq!(
        parse_command(b"PORT 10,0,0,1,256,22\r\n"),
        Command::Malformed(OctetOutOfRange)
    );
    assert_eq!(
        parse_command(b"PORT 10,0,300,1,4,1\r\n"),
        Command::Malformed(OctetOutOfRange)
    );
}

#[test]
fn port_refuses_port_zero() {
    assert_eq!(parse_command(b"PORT 10,0,0,1,0,0\r\n"), Command::Malformed(PortOutOfRange));
}

#[test]
fn port_refuses_long_digit_runs() {
    assert_eq!(
        parse_command(b"PORT 10,0,0,1,000000000000000001,1\r\n"),
        Command::Malformed(TooManyDigits)
    );
    assert_eq!(
        parse_command(b"PORT 0010,0,0,1,4,1\r\n"),
        Command::Malformed(TooManyDigits)
    );
}

#[test]
fn port_refuses_wrong_separators_and_counts() {
    for line in [
        &b"PORT 10.0.0.1.4.1\r\n"[..],
        b"PORT 10,0,0,1,4\r\n",
        b"PORT 10;0;0;1;4;1\r\n",
    ] {
        assert_eq!(parse_command(line), Command::Malformed(ExpectedSeparator), "{line:?}");
    }
}

#[test]
fn port_refuses_spaces_signs_and_trailing_bytes() {
    assert_eq!(parse_command(b"PORT 10, 0,0,1,4,1\r\n"), Command::Malformed(ExpectedDigit));
    assert_eq!(parse_command(b"PORT  10,0,0,1,4,1\r\n"), Command::Malformed(ExpectedDigit));
    assert_eq!(parse_command(b"PORT +10,0,0,1,4,1\r\n"), Command::Malformed(ExpectedDigit));
    assert_eq!(parse_command(b"PORT 10,0,0,1,4,1 \r\n"), Command::Malformed(TrailingBytes));
    assert_eq!(parse_command(b"PORT 10,0,0,1,4,1,7\r\n"), Command::Malformed(TrailingBytes));
    assert_eq!(parse_command(b"PORT 10,0,0,1,4,1\r\r\n"), Command::Malformed(TrailingBytes));
}

#[test]
fn port_without_argument_is_malformed() {
    assert_eq!(parse_command(b"PORT\r\n"), Command::Malformed(MissingArgument));
    assert_eq!(parse_command(b"PORT \r\n"), Command::Malformed(MissingArgument));
}

// EPRT

#[test]
fn eprt_ipv4() {
    assert_eq!(
        parse_command(b"EPRT |1|132.235.1.2|6275|\r\n"),
        Command::Eprt {
            addr: SocketAddr::V4(v4(132, 235, 1, 2, 6275)),
            delimiter: b'|',
            field: span(5, 20)
        }
    );
}

#[test]
fn eprt_ipv6() {
    let line = b"EPRT |2|1080::8:800:200C:417A|5282|\r\n";
    assert_eq!(
        parse_command(line),
        Command::Eprt {
            addr: SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0x1080, 0, 0, 0, 8, 0x800, 0x200c, 0x417a),
                5282,
                0,
                0
            )),
            delimiter: b'|',
            field: span(5, 30)
        }
    );
    let Command::Eprt { field, .. } = parse_command(line) else {
        panic!("not an EPRT");
    };
    assert_eq!(field.get(line), Some(&b"|2|1080::8:800:200C:417A|5282|"[..]));
}

#[test]
fn eprt_accepts_any_non_digit_printable_delimiter() {
    // `.` is the one delimiter an IPv4 address contains: see
    // eprt_refuses_a_delimiter_that_occurs_in_the_address.
    for delimiter in (33u8..=126).filter(|byte| !byte.is_ascii_digit() && *byte != b'.') {
        let mut line = std::vec::Vec::new();
        line.extend_from_slice(b"EPRT ");
        for part in [&b"1"[..], b"10.0.0.2", b"2000", b""] {
            line.push(delimiter);
            line.extend_from_slice(part);
        }
        line.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_command(&line),
            Command::Eprt {
                addr: SocketAddr::V4(v4(10, 0, 0, 2, 2000)),
                delimiter,
                field: span(5, 17)
            },
            "delimiter {delimiter}"
        );
    }
}

#[test]
fn eprt_lowercase_verb_and_bare_lf() {
    assert_eq!(
        parse_command(b"eprt !1!10.0.0.2!2000!\n"),
        Command::Eprt {
            addr: SocketAddr::V4(v4(10, 0, 0, 2, 2000)),
            delimiter: b'!',
            field: span(5, 17)
        }
    );
}

#[test]
fn eprt_ipv4_mapped_ipv6() {
    assert_eq!(
        parse_command(b"EPRT |2|::ffff:10.0.0.2|2000|\r\n"),
        Command::Eprt {
            addr: SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped()), 2000),
            delimiter: b'|',
            field: span(5, 24)
        }
    );
}

#[test]
fn eprt_refuses_digit_space_and_control_delimiters() {
    for line in [
        &b"EPRT 515101.0.0.2520005\r\n"[..],
        b"EPRT  1 10.0.0.2 2000 \r\n",
        b"EPRT \x7f1\x7f10.0.0.2\x7f2000\x7f\r\n",
    ] {
        assert_eq!(parse_command(line), Command::Malformed(BadDelimiter), "{line:?}");
    }
}

#[test]
fn eprt_refuses_mixed_delimiters() {
    assert_eq!(
        parse_command(b"EPRT |1!10.0.0.2|2000|\r\n"),
        Command::Malformed(BadDelimiter)
    );
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.2|2000!\r\n"),
        Command::Malformed(BadDelimiter)
    );
}

#[test]
fn eprt_refuses_unknown_families() {
    for line in [
        &b"EPRT |3|10.0.0.2|2000|\r\n"[..],
        b"EPRT |0|10.0.0.2|2000|\r\n",
        b"EPRT |12|10.0.0.2|2000|\r\n",
        b"EPRT |9999|10.0.0.2|2000|\r\n",
    ] {
        assert_eq!(parse_command(line), Command::Malformed(UnsupportedAddressFamily), "{line:?}");
    }
    assert_eq!(parse_command(b"EPRT |x|10.0.0.2|2000|\r\n"), Command::Malformed(ExpectedDigit));
}

#[test]
fn eprt_refuses_address_of_the_wrong_family() {
    assert_eq!(parse_command(b"EPRT |1|::1|2000|\r\n"), Command::Malformed(ExpectedDigit));
    assert_eq!(
        parse_command(b"EPRT |2|10.0.0.2|2000|\r\n"),
        Command::Malformed(BadIpv6Address)
    );
}

#[test]
fn eprt_refuses_bad_ipv4_addresses() {
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.256|2000|\r\n"),
        Command::Malformed(OctetOutOfRange)
    );
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0|2000|\r\n"),
        Command::Malformed(ExpectedSeparator)
    );
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.2.7|2000|\r\n"),
        Command::Malformed(TrailingBytes)
    );
}

#[test]
fn eprt_refuses_bad_ports() {
    assert_eq!(parse_command(b"EPRT |1|10.0.0.2|0|\r\n"), Command::Malformed(PortOutOfRange));
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.2|65536|\r\n"),
        Command::Malformed(PortOutOfRange)
    );
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.2|00000000000000000001|\r\n"),
        Command::Malformed(TooManyDigits)
    );
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.2|18446744073709551617|\r\n"),
        Command::Malformed(TooManyDigits)
    );
    assert_eq!(parse_command(b"EPRT |1|10.0.0.2||\r\n"), Command::Malformed(ExpectedDigit));
}

#[test]
fn eprt_refuses_missing_or_extra_closing_delimiter() {
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.2|2000\r\n"),
        Command::Malformed(BadDelimiter)
    );
    assert_eq!(
        parse_command(b"EPRT |1|10.0.0.2|2000||\r\n"),
        Command::Malformed(TrailingBytes)
    );
    assert_eq!(parse_command(b"EPRT |1|10.0.0.2\r\n"), Command::Malformed(BadDelimiter));
}

#[test]
fn eprt_refuses_a_delimiter_that_occurs_in_the_address() {
    // The first `.` or `:` would end the address: ambiguous, refused for what it is.
    for line in [
        &b"EPRT .1.10.0.0.2.2000.\r\n"[..],
        b"EPRT .1.10.2000.\r\n",
        b"EPRT :2:2001:db8::2:2000:\r\n",
        b"EPRT :2:::1:2000:\r\n",
        b"EPRT :2::2000:\r\n",
    ] {
        assert_eq!(parse_command(line), Command::Malformed(BadDelimiter), "{line:?}");
    }
    // The same delimiters with the other family cannot occur in the address (`.` ends an IPv6
    // address at its first byte of an IPv4 tail, which then fails).
    assert_eq!(
        parse_command(b"EPRT :1:10.0.0.2:2000:\r\n"),
        Command::Eprt {
            addr: SocketAddr::V4(v4(10, 0, 0, 2, 2000)),
            delimiter: b':',
            field: span(5, 17)
        }
    );
    assert_eq!(
        parse_command(b"EPRT .2.2001:db8::2.2000.\r\n"),
        Command::Eprt {
            addr: SocketAddr::new(IpAddr::V6("2001:db8::2".parse().unwrap()), 2000),
            delimiter: b'.',
            field: span(5, 20)
        }
    );
    assert_eq!(
        parse_command(b"EPRT .2.::ffff:10.1.2.3.2000.\r\n"),
        Command::Malformed(TrailingBytes)
    );
}

#[test]
fn eprt_overlong_address_text_is_a_bad_address() {
    // The longest IPv6 text, 45 bytes, is accepted.
    let longest = b"0000:0000:0000:0000:0000:ffff:255.255.255.255";
    assert_eq!(longest.len(), 45);
    let line = [&b"EPRT |2|"[..], longest, b"|2000|\r\n"].concat();
    assert_eq!(
        parse_command(&line),
        Command::Eprt {
            addr: SocketAddr::new(IpAddr::V6(Ipv4Addr::BROADCAST.to_ipv6_mapped()), 2000),
            delimiter: b'|',
            field: span(5, 54)
        }
    );
    // One byte more, or far more, and the address is what is wrong, whatever follows.
    let one_more = [&b"EPRT |2|0"[..], longest, b"|2000|\r\n"].concat();
    assert_eq!(parse_command(&one_more), Command::Malformed(BadIpv6Address));
    let zeros = |family: &[u8], count: usize| {
        let mut line = [&b"EPRT |"[..], family, b"|"].concat();
        line.extend(std::iter::repeat_n(b'0', count));
        line.extend_from_slice(b"|2000|\r\n");
        parse_command(&line)
    };
    assert_eq!(zeros(b"2", 60), Command::Malformed(BadIpv6Address));
    assert_eq!(zeros(b"2", 400), Command::Malformed(BadIpv6Address));
    assert_eq!(zeros(b"1", 60), Command::Malformed(TooManyDigits));
    assert_eq!(zeros(b"3", 60), Command::Malformed(UnsupportedAddressFamily));
}

#[test]
fn eprt_without_argument_is_malformed() {
    assert_eq!(parse_command(b"EPRT\r\n"), Command::Malformed(MissingArgument));
}

// PASV / EPSV

#[test]
fn pasv_in_any_case() {
    assert_eq!(parse_command(b"PASV\r\n"), Command::Pasv);
    assert_eq!(parse_command(b"pasv\n"), Command::Pasv);
}

#[test]
fn pasv_argument_is_ignored_as_servers_do() {
    assert_eq!(parse_command(b"PASV \r\n"), Command::Pasv);
    assert_eq!(parse_command(b"PASV please\r\n"), Command::Pasv);
}

#[test]
fn epsv_forms() {
    assert_eq!(parse_command(b"EPSV\r\n"), Command::Epsv(EpsvArg::Any));
    assert_eq!(parse_command(b"EPSV 1\r\n"), Command::Epsv(EpsvArg::Ipv4));
    assert_eq!(parse_command(b"EPSV 2\r\n"), Command::Epsv(EpsvArg::Ipv6));
    assert_eq!(parse_command(b"EPSV ALL\r\n"), Command::Epsv(EpsvArg::All));
    assert_eq!(parse_command(b"epsv all\n"), Command::Epsv(EpsvArg::All));
}

#[test]
fn epsv_refuses_other_arguments() {
    for line in [&b"EPSV 3\r\n"[..], b"EPSV 12\r\n", b"EPSV ALLL\r\n", b"EPSV  1\r\n"] {
        assert_eq!(parse_command(line), Command::Malformed(BadEpsvArgument), "{line:?}");
    }
}

// AUTH / CCC

#[test]
fn auth_mechanisms() {
    assert_eq!(parse_command(b"AUTH TLS\r\n"), Command::Auth(AuthMechanism::Tls));
    assert_eq!(parse_command(b"auth tls\r\n"), Command::Auth(AuthMechanism::Tls));
    assert_eq!(parse_command(b"AUTH SSL\r\n"), Command::Auth(AuthMechanism::Ssl));
    assert_eq!(parse_command(b"AUTH GSSAPI\r\n"), Command::Auth(AuthMechanism::Other));
    assert_eq!(parse_command(b"AUTH TLS-C\r\n"), Command::Auth(AuthMechanism::Other));
    assert_eq!(parse_command(b"AUTH\r\n"), Command::Malformed(MissingArgument));
}

#[test]
fn ccc() {
    assert_eq!(parse_command(b"CCC\r\n"), Command::Ccc);
    assert_eq!(parse_command(b"ccc\n"), Command::Ccc);
}

// USER / PASS

#[test]
fn user_reports_the_name_span() {
    let line = b"USER anonymous\r\n";
    assert_eq!(parse_command(line), Command::User { name: span(5, 9) });
    assert_eq!(span(5, 9).get(line), Some(&b"anonymous"[..]));
    assert_eq!(parse_command(b"USER\r\n"), Command::Malformed(MissingArgument));
}

#[test]
fn user_name_span_is_bounded() {
    let mut line = std::vec::Vec::from(&b"USER "[..]);
    line.extend(std::iter::repeat_n(b'u', 400));
    line.extend_from_slice(b"\r\n");
    assert_eq!(
        parse_command(&line),
        Command::User {
            name: span(5, MAX_ARGUMENT_LEN)
        }
    );
}

#[test]
fn pass_never_carries_the_password() {
    assert_eq!(parse_command(b"PASS s3cret\r\n"), Command::Pass);
    assert_eq!(parse_command(b"pass \r\n"), Command::Pass);
    assert_eq!(parse_command(b"PASS\r\n"), Command::Pass);
}

// Transfers, REST, QUIT

#[test]
fn transfer_verbs_report_their_argument() {
    for (line, verb) in [
        (&b"RETR file.txt\r\n"[..], TransferVerb::Retr),
        (b"STOR file.txt\r\n", TransferVerb::Stor),
        (b"STOU file.txt\r\n", TransferVerb::Stou),
        (b"APPE file.txt\r\n", TransferVerb::Appe),
        (b"LIST file.txt\r\n", TransferVerb::List),
        (b"NLST file.txt\r\n", TransferVerb::Nlst),
        (b"MLSD file.txt\r\n", TransferVerb::Mlsd),
        (b"retr file.txt\n", TransferVerb::Retr),
    ] {
        assert_eq!(parse_command(line), Command::Transfer { verb, arg: span(5, 8) }, "{line:?}");
        assert_eq!(span(5, 8).get(line), Some(&b"file.txt"[..]));
    }
}

#[test]
fn transfer_argument_keeps_spaces_and_may_be_empty() {
    assert_eq!(
        parse_command(b"RETR my file.txt\r\n"),
        Command::Transfer {
            verb: TransferVerb::Retr,
            arg: span(5, 11)
        }
    );
    assert_eq!(
        parse_command(b"LIST\r\n"),
        Command::Transfer {
            verb: TransferVerb::List,
            arg: span(5, 0)
        }
    );
}

#[test]
fn transfer_argument_span_is_bounded() {
    let mut line = std::vec::Vec::from(&b"STOR "[..]);
    line.extend(std::iter::repeat_n(b'f', 500));
    line.extend_from_slice(b"\r\n");
    assert_eq!(
        parse_command(&line),
        Command::Transfer {
            verb: TransferVerb::Stor,
            arg: span(5, MAX_ARGUMENT_LEN)
        }
    );
}

#[test]
fn transfer_verb_names() {
    assert_eq!(TransferVerb::Mlsd.as_str(), "MLSD");
    assert_eq!(TransferVerb::Appe.as_str(), "APPE");
}

#[test]
fn rest_and_quit() {
    assert_eq!(parse_command(b"REST 100\r\n"), Command::Rest);
    assert_eq!(parse_command(b"REST\r\n"), Command::Malformed(MissingArgument));
    assert_eq!(parse_command(b"QUIT\r\n"), Command::Quit);
    assert_eq!(parse_command(b"quit\n"), Command::Quit);
}

// Other and line-level failures

#[test]
fn unknown_verbs_are_other() {
    for line in [
        &b"NOOP\r\n"[..],
        b"TYPE I\r\n",
        b"LPRT 4,4,10,0,0,2,2,4,1\r\n",
        b"PORTS 10,0,0,2,4,1\r\n",
        b"POR 10,0,0,2,4,1\r\n",
        b" PORT 10,0,0,2,4,1\r\n",
        b"\tPORT 10,0,0,2,4,1\r\n",
        b"\r\n",
        b"\n",
        b"\xffPORT 10,0,0,2,4,1\r\n",
    ] {
        assert_eq!(parse_command(line), Command::Other, "{line:?}");
    }
}

#[test]
fn verbs_only_match_as_whole_words() {
    assert_eq!(parse_command(b"PASV2\r\n"), Command::Other);
    assert_eq!(parse_command(b"PAS\r\n"), Command::Other);
    assert_eq!(parse_command(b"CC\r\n"), Command::Other);
    assert_eq!(parse_command(b"CCC\0\r\n"), Command::Other);
}

#[test]
fn unterminated_lines_are_malformed() {
    assert_eq!(parse_command(b"PORT 10,0,0,2,4,1"), Command::Malformed(Unterminated));
    assert_eq!(parse_command(b"PORT 10,0,0,2,4,1\r"), Command::Malformed(Unterminated));
    assert_eq!(parse_command(b""), Command::Malformed(Unterminated));
}

#[test]
fn overlong_lines_are_malformed() {
    let mut line = std::vec::Vec::from(&b"PORT 10,0,0,2,4,1"[..]);
    line.extend(std::iter::repeat_n(b' ', MAX_LINE_LEN));
    line.extend_from_slice(b"\r\n");
    assert_eq!(parse_command(&line), Command::Malformed(TooLong));
}

#[test]
fn longest_accepted_line_is_max_line_len() {
    let mut line = std::vec::Vec::from(&b"NOOP "[..]);
    line.extend(std::iter::repeat_n(b'x', MAX_LINE_LEN - 5 - 2));
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), MAX_LINE_LEN);
    assert_eq!(parse_command(&line), Command::Other);
    line.insert(5, b'x');
    assert_eq!(parse_command(&line), Command::Malformed(TooLong));
}

#[test]
fn command_names_round_trip_and_never_report_a_password() {
    for (code, name) in CommandName::ALL.iter().enumerate() {
        assert_eq!(*name as usize, code);
        assert_eq!(CommandName::from_raw(code as u8), Some(*name));
    }
    assert_eq!(CommandName::from_raw(CommandName::ALL.len() as u8), None);
    let pass = parse_command(b"PASS secret\r\n");
    assert_eq!(CommandName::of(&pass), CommandName::Pass);
    assert_eq!(pass.reported_argument(), None);
    let user = parse_command(b"USER alice\r\n");
    assert_eq!(CommandName::of(&user), CommandName::User);
    assert_eq!(user.reported_argument(), Some(Span { start: 5, len: 5 }));
    let retr = parse_command(b"retr some file.bin\r\n");
    assert_eq!(CommandName::of(&retr).as_str(), "RETR");
    assert_eq!(retr.reported_argument(), Some(Span { start: 5, len: 13 }));
    assert_eq!(CommandName::of(&parse_command(b"PASV\r\n")), CommandName::Pasv);
    assert_eq!(parse_command(b"PASV\r\n").reported_argument(), None);
    assert_eq!(CommandName::of(&parse_command(b"NOOP\r\n")), CommandName::Other);
    assert_eq!(CommandName::of(&parse_command(b"PORT 1,2\r\n")), CommandName::Malformed);
}

// The address a segment may end inside of.

fn scanner_after(bytes: &[u8]) -> CommandScanner {
    let mut scanner = CommandScanner::new();
    for &byte in bytes {
        scanner.push(byte);
    }
    scanner
}

#[test]
fn a_port_or_eprt_address_in_progress_is_pending_from_its_first_byte() {
    for partial in [
        &b"PORT 1"[..],
        b"PORT 10,0,0,2,4",
        b"port 10,0,",
        b"EPRT |",
        b"EPRT |1|10.0.0.2|10",
    ] {
        assert_eq!(
            scanner_after(partial).pending_address_start(),
            Some(5),
            "{:?}",
            core::str::from_utf8(partial)
        );
    }
}

#[test]
fn nothing_is_pending_before_the_address_after_it_or_in_other_lines() {
    for partial in [
        &b"PO"[..],
        b"PORT",
        b"PORT ",
        // The CR may end the line: the address is complete.
        b"PORT 10,0,0,2,4,1\r",
        // Already wrong: it passes as it is.
        b"PORT x",
        b"PORT 10,,",
        b"EPRT 5",
        b"RETR 10,0,0,2",
        b"STOR PORT 1,2",
        b"PASV",
        b"PORT 10,0,0,2,4,1\r\n",
        b"",
    ] {
        assert_eq!(
            scanner_after(partial).pending_address_start(),
            None,
            "{:?}",
            core::str::from_utf8(partial)
        );
    }
}

#[test]
fn the_pending_address_is_the_field_the_completed_line_reports() {
    let line = b"EPRT |1|10.0.0.2|1025|\r\n";
    for cut in 6..line.len() - 2 {
        let start = scanner_after(&line[..cut])
            .pending_address_start()
            .unwrap_or_else(|| panic!("cut at {cut}"));
        let done = scanner_after(line);
        let Command::Eprt { field, .. } = done.command() else {
            panic!("{:?}", done.command());
        };
        assert_eq!(start, field.start, "cut at {cut}");
    }
}

// Empty lines

/// Feeds `bytes` and says whether, at each LF, the line that ended was empty as `expected` says.
fn empty_at_each_end(bytes: &[u8], expected: &[bool]) -> bool {
    let mut scanner = CommandScanner::new();
    let mut expected = expected.iter();
    for &byte in bytes {
        if scanner.push(byte) && expected.next() != Some(&scanner.ended_empty()) {
            return false;
        }
    }
    expected.next().is_none()
}

#[test]
fn bare_lf_and_crlf_lines_are_empty_and_commands_are_not() {
    assert!(empty_at_each_end(
        b"\n\r\nNOOP\r\n \r\nx\n\r\n",
        &[true, true, false, false, false, true]
    ));
    let mut scanner = CommandScanner::new();
    assert!(!scanner.ended_empty(), "no line has ended yet");
    scanner.push(b'\r');
    assert!(!scanner.ended_empty(), "a line being read is not empty yet");
}

// ALGS (RFC 6384 section 11)

#[test]
fn algs_arguments_in_any_case() {
    for (line, arg) in [
        (&b"ALGS STATUS64\r\n"[..], AlgsArg::Status64),
        (b"algs status64\n", AlgsArg::Status64),
        (b"ALGS ENABLE64\r\n", AlgsArg::Enable64),
        (b"Algs Enable64\r\n", AlgsArg::Enable64),
        (b"ALGS DISABLE64\r\n", AlgsArg::Disable64),
        (b"ALGS disable64\r\n", AlgsArg::Disable64),
    ] {
        assert_eq!(parse_command(line), Command::Algs(arg), "{line:?}");
    }
}

#[test]
fn algs_with_any_other_argument_or_none_is_other() {
    for line in [
        &b"ALGS\r\n"[..],
        b"ALGS \r\n",
        b"ALGS S\r\n",
        b"ALGS STATUS6\r\n",
        b"ALGS STATUS644\r\n",
        b"ALGS STATUS64 \r\n",
        b"ALGS  STATUS64\r\n",
        b"ALGS ENABLE46\r\n",
        b"ALGS DISABLE6\r\n",
        b"ALGS DISABLE64X\r\n",
        b"ALGS STATUS64\0\r\n",
        b"ALGS DISABLE64\0\0\0\r\n",
        b"ALGS ENABLE\r\n",
    ] {
        assert_eq!(parse_command(line), Command::Algs(AlgsArg::Other), "{line:?}");
    }
    let mut long = std::vec::Vec::from(&b"ALGS STATUS64"[..]);
    long.extend(std::iter::repeat_n(b'4', 400));
    long.extend_from_slice(b"\r\n");
    assert_eq!(parse_command(&long), Command::Algs(AlgsArg::Other));
    assert_eq!(parse_command(b"ALG STATUS64\r\n"), Command::Other);
    assert_eq!(parse_command(b"ALGSX STATUS64\r\n"), Command::Other);
}

#[test]
fn algs_is_named_and_reports_nothing() {
    let algs = parse_command(b"ALGS STATUS64\r\n");
    assert_eq!(CommandName::of(&algs), CommandName::Algs);
    assert_eq!(CommandName::Algs.as_str(), "ALGS");
    assert_eq!(algs.reported_argument(), None);
}

#[test]
fn an_algs_line_resets_its_matching_for_the_next_line() {
    let mut scanner = CommandScanner::new();
    for &byte in b"ALGS STAT\r\nALGS ENABLE64\r\n".iter() {
        if scanner.push(byte) && scanner.line_len() == 11 {
            assert_eq!(scanner.command(), Command::Algs(AlgsArg::Other));
        }
    }
    assert_eq!(scanner.command(), Command::Algs(AlgsArg::Enable64));
}

// The whole line a segment may end inside of (the NAT64 ALG).

#[test]
fn a_line_that_may_be_replaced_whole_is_pending_from_its_first_byte() {
    let longest_eprt = b"EPRT |2|ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff|65535|\r";
    for partial in [
        &b"E"[..],
        b"e",
        b"EP",
        b"EPR",
        b"EPRT",
        b"EPRT ",
        b"EPRT |",
        b"EPRT |2|2001:db8::2|500",
        b"EPRT |2|2001:db8::2|50000|",
        // The CR may end the line, and the whole line is replaced, CR included.
        b"EPRT |2|2001:db8::2|50000|\r",
        longest_eprt,
        b"EPS",
        b"epsv",
        b"EPSV\r",
        b"EPSV ",
        b"EPSV ALL",
        b"EPSV 2\r",
        b"A",
        b"ALG",
        b"ALGS",
        b"ALGS STATUS6",
        b"ALGS DISABLE64\r",
        b"ALGS whatever",
    ] {
        assert_eq!(
            scanner_after(partial).pending_rewrite_start(true),
            Some(0),
            "{:?}",
            core::str::from_utf8(partial)
        );
    }
    assert!(longest_eprt.len() <= crate::maps::HELD_FIELD_MAX);
}

#[test]
fn a_line_that_cannot_be_replaced_whole_is_pending_as_its_address() {
    for (partial, expected) in [
        (&b""[..], None),
        (b"P", None),
        (b"EPRTX", None),
        (b"EPSVX", None),
        (b"ALGSX", None),
        (b"AUTH", None),
        (b"PASV", None),
        (b"EPRT 5", None),
        // Family 1 is a bounce in a NAT64 session: only its address would be rewritten.
        (b"EPRT |1|", Some(5)),
        (b"EPRT |1|10.0.0.2|20", Some(5)),
        (b"PORT 10,0,0,2,4", Some(5)),
        (b"PORT 10,0,0,2,4,1\r", None),
        (b"EPSV\r\n", None),
        (b"ALGS STATUS64\r\n", None),
    ] {
        assert_eq!(
            scanner_after(partial).pending_rewrite_start(true),
            expected,
            "{:?}",
            core::str::from_utf8(partial)
        );
    }
}

#[test]
fn without_whole_line_rewrites_only_addresses_are_pending() {
    for partial in [
        &b""[..],
        b"EP",
        b"EPSV",
        b"ALGS STATUS64",
        b"EPRT |2|2001:db8::2|50000|\r",
        b"EPRT |1|10.0.0.2|20",
        b"PORT 10,0,0,2,4",
    ] {
        let scanner = scanner_after(partial);
        assert_eq!(
            scanner.pending_rewrite_start(false),
            scanner.pending_address_start(),
            "{:?}",
            core::str::from_utf8(partial)
        );
    }
}
