use super::*;
use core::net::Ipv4Addr;
use MalformedReason::*;

fn span(start: u16, len: u16) -> Span {
    Span { start, len }
}

fn passive(line: &[u8]) -> ReplyBody {
    match parse_reply(line) {
        Reply::Final { body, .. } => body,
        other => panic!("not a final line: {other:?}"),
    }
}

fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

// Reply shapes

#[test]
fn single_line_reply() {
    assert_eq!(
        parse_reply(b"200 Command okay.\r\n"),
        Reply::Final {
            code: 200,
            body: ReplyBody::Plain
        }
    );
}

#[test]
fn code_alone_is_a_final_line() {
    assert_eq!(
        parse_reply(b"226\r\n"),
        Reply::Final {
            code: 226,
            body: ReplyBody::Plain
        }
    );
}

#[test]
fn multi_line_start() {
    assert_eq!(
        parse_reply(b"220-Microsoft FTP Service\r\n"),
        Reply::MultiLineStart { code: 220 }
    );
    assert_eq!(parse_reply(b"211-Features:\n"), Reply::MultiLineStart { code: 211 });
}

#[test]
fn a_227_opening_a_multi_line_reply_is_not_parsed() {
    assert_eq!(
        parse_reply(b"227-Entering Passive Mode (192,168,1,10,117,48)\r\n"),
        Reply::MultiLineStart { code: 227 }
    );
    assert_eq!(
        parse_reply(b"229-Entering Extended Passive Mode (|||30000|)\r\n"),
        Reply::MultiLineStart { code: 229 }
    );
}

#[test]
fn lines_without_a_code_are_text() {
    for line in [
        &b" MDTM\r\n"[..],
        b"Welcome\r\n",
        b"22 short\r\n",
        b"2270 Entering Passive Mode (1,2,3,4,5,6)\r\n",
        b"227Entering Passive Mode (1,2,3,4,5,6)\r\n",
        b"  227 Entering Passive Mode (1,2,3,4,5,6)\r\n",
        b"\r\n",
    ] {
        assert_eq!(parse_reply(line), Reply::Text, "{line:?}");
    }
}

#[test]
fn codes_must_start_with_1_to_5() {
    assert_eq!(parse_reply(b"000 nothing\r\n"), Reply::Text);
    assert_eq!(parse_reply(b"627 Entering Passive Mode (1,2,3,4,5,6)\r\n"), Reply::Text);
    assert_eq!(
        parse_reply(b"150 Opening\r\n"),
        Reply::Final {
            code: 150,
            body: ReplyBody::Plain
        }
    );
    assert_eq!(
        parse_reply(b"599 x\r\n"),
        Reply::Final {
            code: 599,
            body: ReplyBody::Plain
        }
    );
}

#[test]
fn unterminated_and_overlong_replies_are_malformed() {
    assert_eq!(
        parse_reply(b"227 Entering Passive Mode (1,2,3,4,5,6)"),
        Reply::Malformed(Unterminated)
    );
    let mut line = std::vec::Vec::from(&b"227 Entering Passive Mode (1,2,3,4,5,6)"[..]);
    line.extend(std::iter::repeat_n(b'.', MAX_LINE_LEN));
    line.push(b'\n');
    assert_eq!(parse_reply(&line), Reply::Malformed(TooLong));
}

// 227

#[test]
fn passive_227_with_parentheses_and_dot() {
    let line = b"227 Entering Passive Mode (192,168,1,10,117,48).\r\n";
    assert_eq!(
        passive(line),
        ReplyBody::Passive227 {
            addr: addr(192, 168, 1, 10, 30000),
            field: span(27, 19)
        }
    );
    assert_eq!(span(27, 19).get(line), Some(&b"192,168,1,10,117,48"[..]));
}

#[test]
fn passive_227_without_parentheses() {
    let line = b"227 Entering Passive Mode 10,0,0,5,195,80\r\n";
    assert_eq!(
        passive(line),
        ReplyBody::Passive227 {
            addr: addr(10, 0, 0, 5, 50000),
            field: span(26, 15)
        }
    );
}

#[test]
fn passive_227_equals_form() {
    let line = b"227 =192,168,1,10,117,48\r\n";
    assert_eq!(
        passive(line),
        ReplyBody::Passive227 {
            addr: addr(192, 168, 1, 10, 30000),
            field: span(5, 19)
        }
    );
}

#[test]
fn passive_227_numbers_right_after_the_code() {
    assert_eq!(
        passive(b"227 1,2,3,4,5,6\n"),
        ReplyBody::Passive227 {
            addr: addr(1, 2, 3, 4, 1286),
            field: span(4, 11)
        }
    );
}

#[test]
fn passive_227_bare_lf() {
    assert_eq!(
        passive(b"227 Entering Passive Mode (10,1,2,3,4,5)\n"),
        ReplyBody::Passive227 {
            addr: addr(10, 1, 2, 3, 1029),
            field: span(27, 12)
        }
    );
}

#[test]
fn passive_227_text_after_the_numbers_is_kept_out_of_the_field() {
    let line = b"227 Entering Passive Mode (10,1,2,3,4,5). Have a nice day 42\r\n";
    assert_eq!(
        passive(line),
        ReplyBody::Passive227 {
            addr: addr(10, 1, 2, 3, 1029),
            field: span(27, 12)
        }
    );
}

#[test]
fn passive_227_without_digits_is_malformed() {
    assert_eq!(passive(b"227 Logout.\r\n"), ReplyBody::Malformed(ExpectedDigit));
    assert_eq!(passive(b"227\r\n"), ReplyBody::Malformed(ExpectedDigit));
    assert_eq!(passive(b"227 \r\n"), ReplyBody::Malformed(ExpectedDigit));
}

#[test]
fn passive_227_refuses_bad_numbers() {
    assert_eq!(
        passive(b"227 Entering Passive Mode (10,0,0,1,256,22)\r\n"),
        ReplyBody::Malformed(OctetOutOfRange)
    );
    assert_eq!(
        passive(b"227 Entering Passive Mode (10,0,0,1,0,0)\r\n"),
        ReplyBody::Malformed(PortOutOfRange)
    );
    assert_eq!(
        passive(b"227 Entering Passive Mode (10,0,0,1,000000000000000001,0)\r\n"),
        ReplyBody::Malformed(TooManyDigits)
    );
    assert_eq!(
        passive(b"227 Entering Passive Mode (10,0,0,1,4)\r\n"),
        ReplyBody::Malformed(ExpectedSeparator)
    );
}

#[test]
fn passive_227_refuses_a_seventh_number() {
    assert_eq!(
        passive(b"227 Entering Passive Mode (10,0,0,1,4,1,9)\r\n"),
        ReplyBody::Malformed(TrailingBytes)
    );
}

#[test]
fn passive_227_rfc_1123_rule_takes_the_first_digit() {
    // The first digit after the code belongs to "v2", so the numbers do not parse: refused rather
    // than guessed at.
    assert_eq!(
        passive(b"227 Passive v2 (10,0,0,1,4,1)\r\n"),
        ReplyBody::Malformed(ExpectedSeparator)
    );
}

// 229

#[test]
fn extended_passive_229() {
    let line = b"229 Entering Extended Passive Mode (|||6446|)\r\n";
    assert_eq!(
        passive(line),
        ReplyBody::Passive229 {
            port: 6446,
            delimiter: b'|',
            field: span(39, 4)
        }
    );
    assert_eq!(span(39, 4).get(line), Some(&b"6446"[..]));
}

#[test]
fn extended_passive_229_other_delimiters() {
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode (!!!65535!)\n"),
        ReplyBody::Passive229 {
            port: 65535,
            delimiter: b'!',
            field: span(39, 5)
        }
    );
    assert_eq!(
        passive(b"229 (~~~1~)\r\n"),
        ReplyBody::Passive229 {
            port: 1,
            delimiter: b'~',
            field: span(8, 1)
        }
    );
}

#[test]
fn extended_passive_229_text_after_the_parenthesis_is_allowed() {
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode (|||6446|). Ready.\r\n"),
        ReplyBody::Passive229 {
            port: 6446,
            delimiter: b'|',
            field: span(39, 4)
        }
    );
}

#[test]
fn extended_passive_229_needs_parentheses() {
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode |||6446|\r\n"),
        ReplyBody::Malformed(MissingParenthesis)
    );
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode (|||6446|\r\n"),
        ReplyBody::Malformed(MissingParenthesis)
    );
    assert_eq!(passive(b"229\r\n"), ReplyBody::Malformed(MissingParenthesis));
}

#[test]
fn extended_passive_229_refuses_bad_delimiters() {
    for line in [
        &b"229 Entering Extended Passive Mode (||!6446|)\r\n"[..],
        b"229 Entering Extended Passive Mode (|||6446!)\r\n",
        b"229 Entering Extended Passive Mode (   6446 )\r\n",
        b"229 Entering Extended Passive Mode (111644461)\r\n",
        b"229 Entering Extended Passive Mode (|1|10.0.0.1|6446|)\r\n",
        b"229 Entering Extended Passive Mode (||)\r\n",
        b"229 Entering Extended Passive Mode (|||6446\r\n",
    ] {
        assert_eq!(passive(line), ReplyBody::Malformed(BadDelimiter), "{line:?}");
    }
}

#[test]
fn extended_passive_229_refuses_bad_ports() {
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode (|||0|)\r\n"),
        ReplyBody::Malformed(PortOutOfRange)
    );
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode (|||65536|)\r\n"),
        ReplyBody::Malformed(PortOutOfRange)
    );
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode (|||18446744073709551617|)\r\n"),
        ReplyBody::Malformed(TooManyDigits)
    );
    assert_eq!(
        passive(b"229 Entering Extended Passive Mode (||||)\r\n"),
        ReplyBody::Malformed(ExpectedDigit)
    );
}

#[test]
fn other_codes_are_not_interpreted() {
    assert_eq!(
        passive(b"228 Entering Long Passive Mode (6,16,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,2,4,1)\r\n"),
        ReplyBody::Plain
    );
    assert_eq!(passive(b"200 PORT command successful (1,2,3,4,5,6)\r\n"), ReplyBody::Plain);
}

/// The scanner after `partial`, a line not ended.
fn scanner_after(partial: &[u8]) -> ReplyScanner {
    let mut scanner = ReplyScanner::new();
    for &byte in partial {
        assert!(!scanner.push(byte));
    }
    scanner
}

#[test]
fn a_line_may_be_a_final_reply_until_its_code_or_shape_says_otherwise() {
    for partial in [&b"2"[..], b"22", b"227", b"227 ", b"227 Entering (192,0", b"200 NOOP ok.\r"] {
        assert!(scanner_after(partial).may_be_final_reply(None), "{partial:?}");
    }
    // Preliminary replies, a multi-line reply's first line, text, nothing yet.
    for partial in [&b"1"[..], b"15", b"150 ", b"227-", b"227-text", b"x", b"22x", b""] {
        assert!(!scanner_after(partial).may_be_final_reply(None), "{partial:?}");
    }
    // Inside a multi-line reply, only its own code ends it.
    assert!(scanner_after(b"21").may_be_final_reply(Some(211)));
    assert!(scanner_after(b"211 End").may_be_final_reply(Some(211)));
    assert!(!scanner_after(b"22").may_be_final_reply(Some(211)));
    assert!(!scanner_after(b"227 ").may_be_final_reply(Some(211)));
    // An ended line is no longer pending.
    let mut scanner = scanner_after(b"200 ok\r");
    assert!(scanner.push(b'\n'));
    assert!(!scanner.may_be_final_reply(None));
}
