use super::*;
use crate::{Command, Reply, ReplyBody, parse_command, parse_reply};
use core::net::{SocketAddr, SocketAddrV4};
use std::vec::Vec;

fn render(format: impl FnOnce(&mut [u8]) -> Option<usize>) -> Option<Vec<u8>> {
    let mut out = [0u8; 64];
    let len = format(&mut out)?;
    Some(out[..len].to_vec())
}

fn spliced(line: &[u8], field: Span, replacement: &[u8]) -> Vec<u8> {
    let mut out = [0u8; MAX_LINE_LEN + MAX_FIELD_LEN];
    let len = splice(line, field, replacement, &mut out).expect("splice fits");
    out[..len].to_vec()
}

#[test]
fn port_field_text() {
    let text = render(|out| format_port_field(Ipv4Addr::new(192, 0, 2, 7), 50000, out)).unwrap();
    assert_eq!(text, b"192,0,2,7,195,80");
    let text = render(|out| format_port_field(Ipv4Addr::UNSPECIFIED, 1, out)).unwrap();
    assert_eq!(text, b"0,0,0,0,0,1");
}

#[test]
fn port_field_longest_value_fits_the_constant() {
    let mut out = [0u8; MAX_PORT_FIELD_LEN];
    assert_eq!(
        format_port_field(Ipv4Addr::BROADCAST, u16::MAX, &mut out),
        Some(MAX_PORT_FIELD_LEN)
    );
    assert_eq!(&out, b"255,255,255,255,255,255");
    let mut short = [0u8; MAX_PORT_FIELD_LEN - 1];
    assert_eq!(format_port_field(Ipv4Addr::BROADCAST, u16::MAX, &mut short), None);
}

#[test]
fn port_zero_is_not_rendered() {
    let mut out = [0u8; 64];
    assert_eq!(format_port_field(Ipv4Addr::LOCALHOST, 0, &mut out), None);
    assert_eq!(format_227_field(Ipv4Addr::LOCALHOST, 0, &mut out), None);
    assert_eq!(format_229_field(0, &mut out), None);
    assert_eq!(format_eprt_field(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, b'|', &mut out), None);
}

#[test]
fn field_227_is_the_six_numbers() {
    let text = render(|out| format_227_field(Ipv4Addr::new(203, 0, 113, 9), 30000, out)).unwrap();
    assert_eq!(text, b"203,0,113,9,117,48");
}

#[test]
fn field_229_is_the_port_digits() {
    assert_eq!(render(|out| format_229_field(1, out)).unwrap(), b"1");
    assert_eq!(render(|out| format_229_field(6446, out)).unwrap(), b"6446");
    assert_eq!(render(|out| format_229_field(65535, out)).unwrap(), b"65535");
    let mut short = [0u8; 4];
    assert_eq!(format_229_field(65535, &mut short), None);
}

#[test]
fn eprt_field_ipv4() {
    let text = render(|out| {
        format_eprt_field(IpAddr::V4(Ipv4Addr::new(132, 235, 1, 2)), 6275, b'|', out)
    })
    .unwrap();
    assert_eq!(text, b"|1|132.235.1.2|6275|");
}

#[test]
fn eprt_field_ipv6_is_rfc_5952() {
    for (addr, text) in [
        ("2001:db8::1", &b"|2|2001:db8::1|21|"[..]),
        ("::", b"|2|::|21|"),
        ("::1", b"|2|::1|21|"),
        ("1::", b"|2|1::|21|"),
        ("2001:db8:0:1:1:1:1:1", b"|2|2001:db8:0:1:1:1:1:1|21|"),
        ("2001:db8:0:0:1:0:0:1", b"|2|2001:db8::1:0:0:1|21|"),
        ("1:0:0:2:0:0:0:3", b"|2|1:0:0:2::3|21|"),
        ("fe80::a:b:c:d", b"|2|fe80::a:b:c:d|21|"),
    ] {
        let addr: Ipv6Addr = addr.parse().unwrap();
        let rendered = render(|out| format_eprt_field(IpAddr::V6(addr), 21, b'|', out)).unwrap();
        assert_eq!(rendered, text, "{addr}");
    }
}

#[test]
fn eprt_field_longest_value_fits_the_constant() {
    let addr = IpAddr::V6(Ipv6Addr::from([0xff; 16]));
    let mut out = [0u8; MAX_EPRT_FIELD_LEN];
    assert_eq!(format_eprt_field(addr, 65535, b'|', &mut out), Some(MAX_EPRT_FIELD_LEN));
    let mut short = [0u8; MAX_EPRT_FIELD_LEN - 1];
    assert_eq!(format_eprt_field(addr, 65535, b'|', &mut short), None);
}

#[test]
fn eprt_field_refuses_invalid_and_ambiguous_delimiters() {
    let mut out = [0u8; 64];
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let v6 = IpAddr::V6("2001:db8::1".parse().unwrap());
    for delimiter in [b' ', b'0', b'9', 0x7f, 0, b'\n'] {
        assert_eq!(format_eprt_field(v4, 21, delimiter, &mut out), None, "{delimiter}");
    }
    assert_eq!(format_eprt_field(v4, 21, b'.', &mut out), None);
    assert_eq!(format_eprt_field(v6, 21, b':', &mut out), None);
    assert!(format_eprt_field(v6, 21, b'.', &mut out).is_some());
    assert!(format_eprt_field(v4, 21, b':', &mut out).is_some());
}

#[test]
fn eprt_field_hex_case_avoids_a_letter_delimiter() {
    let addr = IpAddr::V6("fe80::abcd".parse().unwrap());
    assert_eq!(render(|out| format_eprt_field(addr, 21, b'a', out)).unwrap(), b"a2aFE80::ABCDa21a");
    assert_eq!(render(|out| format_eprt_field(addr, 21, b'A', out)).unwrap(), b"A2Afe80::abcdA21A");
    assert_eq!(render(|out| format_eprt_field(addr, 21, b'z', out)).unwrap(), b"z2zfe80::abcdz21z");
}

#[test]
fn splice_replaces_only_the_field() {
    let line = b"port 10,0,0,2,4,1\n";
    let Command::Port { field, .. } = parse_command(line) else {
        panic!("not a PORT");
    };
    let mut new = [0u8; MAX_PORT_FIELD_LEN];
    let len = format_port_field(Ipv4Addr::new(198, 51, 100, 20), 40000, &mut new).unwrap();
    let rewritten = spliced(line, field, &new[..len]);
    assert_eq!(rewritten, b"port 198,51,100,20,156,64\n");
    assert_eq!(
        parse_command(&rewritten),
        Command::Port {
            addr: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 20), 40000),
            field: Span {
                start: 5,
                len: len as u16
            }
        }
    );
}

#[test]
fn splice_keeps_the_servers_227_text() {
    let line = b"227 Entering Passive Mode (192,168,1,10,117,48).\r\n";
    let Reply::Final {
        body: ReplyBody::Passive227 { field, .. },
        ..
    } = parse_reply(line)
    else {
        panic!("not a 227");
    };
    let mut new = [0u8; MAX_PORT_FIELD_LEN];
    let len = format_227_field(Ipv4Addr::new(203, 0, 113, 1), 1024, &mut new).unwrap();
    assert_eq!(
        spliced(line, field, &new[..len]),
        b"227 Entering Passive Mode (203,0,113,1,4,0).\r\n"
    );
}

#[test]
fn splice_keeps_the_229_delimiters() {
    let line = b"229 Entering Extended Passive Mode (!!!6446!)\r\n";
    let Reply::Final {
        body: ReplyBody::Passive229 { field, .. },
        ..
    } = parse_reply(line)
    else {
        panic!("not a 229");
    };
    let mut new = [0u8; MAX_229_FIELD_LEN];
    let len = format_229_field(61000, &mut new).unwrap();
    assert_eq!(
        spliced(line, field, &new[..len]),
        b"229 Entering Extended Passive Mode (!!!61000!)\r\n"
    );
}

#[test]
fn splice_rewrites_eprt_across_families_of_text_length() {
    let line = b"EPRT |2|2001:db8::2|2000|\r\n";
    let Command::Eprt { field, delimiter, .. } = parse_command(line) else {
        panic!("not an EPRT");
    };
    let new_addr: Ipv6Addr = "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
    let mut new = [0u8; MAX_EPRT_FIELD_LEN];
    let len = format_eprt_field(IpAddr::V6(new_addr), 65000, delimiter, &mut new).unwrap();
    let rewritten = spliced(line, field, &new[..len]);
    assert_eq!(
        parse_command(&rewritten),
        Command::Eprt {
            addr: SocketAddr::new(IpAddr::V6(new_addr), 65000),
            delimiter,
            field: Span {
                start: 5,
                len: len as u16
            }
        }
    );
}

#[test]
fn splice_refuses_out_of_range_fields_and_small_buffers() {
    let line = b"PORT 1,2,3,4,5,6\r\n";
    let mut out = [0u8; 64];
    assert_eq!(splice(line, Span { start: 17, len: 5 }, b"x", &mut out), None);
    assert_eq!(splice(line, Span { start: 40, len: 0 }, b"x", &mut out), None);
    assert_eq!(splice(line, Span { start: 5, len: 11 }, b"x", &mut out[..7]), None);
    assert_eq!(splice(line, Span { start: 5, len: 11 }, b"x", &mut out), Some(8));
    assert_eq!(&out[..8], b"PORT x\r\n");
    assert_eq!(splice(line, Span { start: 0, len: 0 }, &[b'x'; MAX_FIELD_LEN + 1], &mut out), None);
}

#[test]
fn refused_port_is_a_port_command_no_server_accepts() {
    let line = spliced(b"PORT 10,0,0,2,195,80\r\n", Span { start: 5, len: 15 }, REFUSED_PORT_FIELD);
    assert_eq!(line, b"PORT 0,0,0,0,0,0\r\n");
    // Port 0 is not a port: our own parser (and every server) turns it down.
    assert!(matches!(parse_command(&line), Command::Malformed(_)));
}

#[test]
fn refused_eprt_keeps_the_delimiter_and_names_port_zero() {
    assert_eq!(render(|out| format_refused_eprt_field(b'|', out)).unwrap(), b"|1|0.0.0.0|0|");
    assert_eq!(render(|out| format_refused_eprt_field(b'!', out)).unwrap(), b"!1!0.0.0.0!0!");
    let mut out = [0u8; 64];
    assert_eq!(format_refused_eprt_field(b'.', &mut out), None, "'.' occurs in the address");
    assert_eq!(format_refused_eprt_field(b'7', &mut out), None);
    let line = [b"EPRT ".as_slice(), &render(|out| format_refused_eprt_field(b'|', out)).unwrap(), b"\r\n"].concat();
    assert!(matches!(parse_command(&line), Command::Malformed(_)));
}

#[test]
fn refused_passive_line_is_a_425_reply() {
    let line = [REFUSED_PASSIVE_LINE, b"\n"].concat();
    assert!(line.ends_with(b"\r\n"));
    assert!(REFUSED_PASSIVE_LINE.len() <= MAX_FIELD_LEN);
    assert!(matches!(parse_reply(&line), Reply::Final { code: 425, .. }));
}

#[test]
fn format_rewrite_dispatches_on_the_kind() {
    let public = PublicAddress::V4(Ipv4Addr::new(203, 0, 113, 254));
    let by_kind_at = |kind, public| {
        let record = RewriteRecord {
            kind,
            public_port: 40000,
            delimiter: b'|',
            ..RewriteRecord::default()
        };
        render(|out| format_rewrite(&record, public, out))
    };
    let by_kind = |kind| by_kind_at(kind, public);
    assert_eq!(by_kind(rewrite_kind::PORT).unwrap(), b"203,0,113,254,156,64");
    assert_eq!(by_kind(rewrite_kind::PASV_227).unwrap(), b"203,0,113,254,156,64");
    assert_eq!(by_kind(rewrite_kind::EPRT).unwrap(), b"|1|203.0.113.254|40000|");
    assert_eq!(by_kind(rewrite_kind::EPSV_229).unwrap(), b"40000");
    assert_eq!(by_kind(rewrite_kind::PORT_REFUSED).unwrap(), REFUSED_PORT_FIELD);
    assert_eq!(by_kind(rewrite_kind::EPRT_REFUSED).unwrap(), b"|1|0.0.0.0|0|");
    assert_eq!(by_kind(rewrite_kind::PASSIVE_REFUSED).unwrap(), REFUSED_PASSIVE_LINE);
    assert_eq!(by_kind(rewrite_kind::NONE), None);
    assert_eq!(by_kind(200), None);
    // NAT66: EPRT and 229 carry an IPv6 public address; PORT and 227 cannot.
    let text = Ipv6AddressText::of("2001:db8:1::fe".parse().unwrap());
    let public6 = PublicAddress::V6(&text);
    assert_eq!(
        by_kind_at(rewrite_kind::EPRT, public6).unwrap(),
        b"|2|2001:db8:1::fe|40000|"
    );
    assert_eq!(by_kind_at(rewrite_kind::EPSV_229, public6).unwrap(), b"40000");
    assert_eq!(by_kind_at(rewrite_kind::PORT, public6), None);
    assert_eq!(by_kind_at(rewrite_kind::PASV_227, public6), None);
    assert!(rewrite_kind::is_reply(rewrite_kind::PASV_227));
    assert!(rewrite_kind::is_reply(rewrite_kind::PASSIVE_REFUSED));
    assert!(!rewrite_kind::is_reply(rewrite_kind::EPRT_REFUSED));
}

#[test]
fn an_ipv6_eprt_from_its_text_is_the_eprt_of_the_address() {
    let addr: core::net::Ipv6Addr = "2001:db8:0:1::a:fe".parse().unwrap();
    let text = Ipv6AddressText::of(addr);
    assert_eq!(&text.text[..usize::from(text.len)], b"2001:db8:0:1::a:fe");
    for delimiter in [b'|', b'!', b'#'] {
        assert_eq!(
            render(|out| format_eprt6_field(&text, 40000, delimiter, out)),
            render(|out| format_eprt_field(IpAddr::V6(addr), 40000, delimiter, out))
        );
    }
    // A delimiter among the hex letters makes them upper case; `:` cannot be one.
    assert_eq!(
        render(|out| format_eprt6_field(&text, 40000, b'a', out)).unwrap(),
        b"a2a2001:DB8:0:1::A:FEa40000a"
    );
    assert_eq!(render(|out| format_eprt6_field(&text, 40000, b':', out)), None);
    assert_eq!(
        render(|out| format_eprt6_field(&Ipv6AddressText::NONE, 40000, b'|', out)),
        None
    );
}

// The NAT64 ALG's whole lines

/// `text` with its LF: the line as it reaches the other side.
fn with_lf(text: &[u8]) -> Vec<u8> {
    let line = [text, b"\n"].concat();
    assert!(line.ends_with(b"\r\n"), "{line:?}");
    line
}

#[test]
fn port_line_is_a_port_command_of_the_address() {
    let text = render(|out| format_port_line(Ipv4Addr::new(203, 0, 113, 254), 40000, out)).unwrap();
    assert_eq!(text, b"PORT 203,0,113,254,156,64\r");
    assert_eq!(
        parse_command(&with_lf(&text)),
        Command::Port {
            addr: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 254), 40000),
            field: Span { start: 5, len: 20 }
        }
    );
    let longest = render(|out| format_port_line(Ipv4Addr::BROADCAST, 65535, out)).unwrap();
    assert_eq!(longest.len(), MAX_PORT_LINE_LEN);
    assert_eq!(render(|out| format_port_line(Ipv4Addr::BROADCAST, 0, out)), None);
    let mut short = [0u8; MAX_PORT_LINE_LEN - 1];
    assert_eq!(format_port_line(Ipv4Addr::BROADCAST, 65535, &mut short), None);
}

#[test]
fn line_229_announces_the_port_with_the_default_delimiter() {
    let text = render(|out| format_229_line(30000, out)).unwrap();
    assert_eq!(text, b"229 Entering Extended Passive Mode (|||30000|)\r");
    assert_eq!(
        parse_reply(&with_lf(&text)),
        Reply::Final {
            code: 229,
            body: ReplyBody::Passive229 {
                port: 30000,
                delimiter: b'|',
                field: Span { start: 39, len: 5 }
            }
        }
    );
    assert_eq!(render(|out| format_229_line(65535, out)).unwrap().len(), MAX_229_LINE_LEN);
    assert_eq!(render(|out| format_229_line(0, out)), None);
    let mut short = [0u8; MAX_229_LINE_LEN - 1];
    assert_eq!(format_229_line(65535, &mut short), None);
}

#[test]
fn pasv_and_noop_lines_are_those_commands() {
    assert_eq!(parse_command(&with_lf(PASV_LINE)), Command::Pasv);
    assert_eq!(parse_command(&with_lf(NOOP_LINE)), Command::Other);
    assert_eq!(&NOOP_LINE[..4], b"NOOP");
}

#[test]
fn alg_replies_are_short_final_replies_with_distinct_codes() {
    for (index, reply) in AlgReply::ALL.into_iter().enumerate() {
        assert_eq!(reply as usize, index + 1);
        assert_eq!(AlgReply::from_raw(reply as u8), Some(reply));
        let line = with_lf(reply.line());
        assert!(reply.line().len() <= MAX_ALG_REPLY_LEN, "{line:?}");
        let expected_code = match reply {
            AlgReply::EpsvAllAccepted => 200,
            AlgReply::Enabled | AlgReply::Disabled => 216,
            AlgReply::UnknownArgument => 501,
            AlgReply::PassiveAddressMismatch | AlgReply::PassiveRefused => 425,
        };
        assert_eq!(
            parse_reply(&line),
            Reply::Final {
                code: expected_code,
                body: ReplyBody::Plain
            },
            "{line:?}"
        );
    }
    assert_eq!(AlgReply::from_raw(0), None);
    assert_eq!(AlgReply::from_raw(AlgReply::ALL.len() as u8 + 1), None);
    assert!(AlgReply::Enabled.line().ends_with(b": enabled\r"));
    assert!(AlgReply::Disabled.line().ends_with(b": disabled\r"));
    assert_eq!(
        AlgReply::for_refusal(crate::RefusalReason::PassiveAddressMismatch),
        AlgReply::PassiveAddressMismatch
    );
    assert_eq!(
        AlgReply::for_refusal(crate::RefusalReason::TooManyExpectations),
        AlgReply::PassiveRefused
    );
}

#[test]
fn format_rewrite_writes_the_alg_s_whole_lines() {
    let pool = PublicAddress::V4(Ipv4Addr::new(203, 0, 113, 254));
    let text = Ipv6AddressText::of("2001:db8:1::fe".parse().unwrap());
    let by_kind = |kind, delimiter, public| {
        let record = RewriteRecord {
            kind,
            public_port: 40000,
            delimiter,
            ..RewriteRecord::default()
        };
        render(|out| format_rewrite(&record, public, out))
    };
    assert_eq!(
        by_kind(rewrite_kind::EPRT_AS_PORT, b'|', pool).unwrap(),
        b"PORT 203,0,113,254,156,64\r"
    );
    assert_eq!(by_kind(rewrite_kind::EPRT_AS_PORT, b'|', PublicAddress::V6(&text)), None);
    assert_eq!(
        by_kind(rewrite_kind::PASV_AS_229, 0, pool).unwrap(),
        b"229 Entering Extended Passive Mode (|||40000|)\r"
    );
    assert_eq!(by_kind(rewrite_kind::EPSV_AS_PASV, 0, pool).unwrap(), PASV_LINE);
    assert_eq!(by_kind(rewrite_kind::LOCAL_COMMAND, 0, pool).unwrap(), NOOP_LINE);
    for reply in AlgReply::ALL {
        assert_eq!(by_kind(rewrite_kind::ALG_REPLY, reply as u8, pool).unwrap(), reply.line());
    }
    assert_eq!(by_kind(rewrite_kind::ALG_REPLY, 0, pool), None);
    assert_eq!(by_kind(rewrite_kind::ALG_REPLY, 200, pool), None);
    // Every whole-line replacement fits the buffer a field's does.
    let mut out = [0u8; MAX_FIELD_LEN];
    let record = RewriteRecord {
        kind: rewrite_kind::PASV_AS_229,
        public_port: 65535,
        ..RewriteRecord::default()
    };
    assert_eq!(format_rewrite(&record, pool, &mut out), Some(MAX_229_LINE_LEN));
}

#[test]
fn rewrite_kinds_say_their_direction_and_whether_they_replace_the_line() {
    use rewrite_kind::*;
    for (kind, reply, whole_line) in [
        (PORT, false, false),
        (EPRT, false, false),
        (PASV_227, true, false),
        (EPSV_229, true, false),
        (PORT_REFUSED, false, false),
        (EPRT_REFUSED, false, false),
        (PASSIVE_REFUSED, true, true),
        (CUT, false, false),
        (RESTORE, false, false),
        (EPSV_AS_PASV, false, true),
        (EPRT_AS_PORT, false, true),
        (LOCAL_COMMAND, false, true),
        (PASV_AS_229, true, true),
        (ALG_REPLY, true, true),
    ] {
        assert_eq!(is_reply(kind), reply, "{kind}");
        assert_eq!(is_whole_line(kind), whole_line, "{kind}");
    }
}
