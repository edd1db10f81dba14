use super::*;
use core::mem::{align_of, size_of};
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

fn ctx() -> PolicyContext {
    PolicyContext {
        client: ip::from_ip(IpAddr::V4(CLIENT)),
        server: ip::from_ip(IpAddr::V4(SERVER)),
        policy: Policy::new(),
    }
}

fn ctx6() -> PolicyContext {
    PolicyContext {
        client: ip::from_ip(IpAddr::V6("2001:db8::2".parse().unwrap())),
        server: ip::from_ip(IpAddr::V6("2001:db8::10".parse().unwrap())),
        policy: Policy::new(),
    }
}

const PORT_LINE: &[u8] = b"PORT 10,0,0,2,195,80\r\n";
const PASV_227: &[u8] = b"227 Entering Passive Mode (192,168,1,10,117,48).\r\n";
const EPSV_229: &[u8] = b"229 Entering Extended Passive Mode (|||30000|)\r\n";

fn open_active(verdict: ClientVerdict) -> SocketAddr {
    match verdict {
        ClientVerdict::OpenActive { addr, .. } => addr,
        other => panic!("expected OpenActive, got {other:?}"),
    }
}

fn assert_opens_passive(verdict: ServerVerdict) {
    assert!(
        matches!(verdict, ServerVerdict::OpenPassive { .. }),
        "expected OpenPassive, got {verdict:?}"
    );
}

// The stored struct

#[test]
fn session_layout_has_no_padding() {
    assert_eq!(size_of::<Session>(), 8);
    assert_eq!(align_of::<Session>(), 2);
    assert_eq!(Session::default(), Session::new());
}

#[test]
fn policy_defaults() {
    let policy = Policy::default();
    assert!(!policy.allow_privileged_data_ports);
    assert_eq!(policy.max_outstanding_expectations, 4);
    assert!(policy.passive_address_must_match_server);
}

#[test]
fn arbitrary_stored_bytes_are_a_usable_state() {
    let mut session = Session {
        multiline_code: 0xffff,
        pending: 0xaa,
        flags: 0xf8,
        open_expectations: 0,
        awaited_replies: 0xff,
        replies_before_pending: 0xff,
        _pad: 0xff,
    };
    assert_eq!(session.multiline_reply(), None);
    assert!(!session.is_encrypted());
    assert_eq!(session.on_server_line(PASV_227, &ctx()), ServerVerdict::Unsolicited { code: 227 });
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

// PORT / EPRT

#[test]
fn port_from_the_client_opens_an_active_expectation() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(PORT_LINE, &ctx()),
        ClientVerdict::OpenActive {
            addr: SocketAddr::V4(SocketAddrV4::new(CLIENT, 50000)),
            field: Span { start: 5, len: 15 },
            kind: ActiveKind::Port
        }
    );
    assert_eq!(session.open_expectations(), 1);
}

#[test]
fn eprt_ipv4_opens_an_active_expectation() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPRT |1|10.0.0.2|50000|\r\n", &ctx()),
        ClientVerdict::OpenActive {
            addr: SocketAddr::V4(SocketAddrV4::new(CLIENT, 50000)),
            field: Span { start: 5, len: 18 },
            kind: ActiveKind::Eprt { delimiter: b'|' }
        }
    );
}

#[test]
fn eprt_ipv6_opens_an_active_expectation() {
    let mut session = Session::new();
    let client: Ipv6Addr = "2001:db8::2".parse().unwrap();
    assert_eq!(
        open_active(session.on_client_line(b"EPRT !2!2001:DB8::2!50000!\r\n", &ctx6())),
        SocketAddr::V6(SocketAddrV6::new(client, 50000, 0, 0))
    );
}

#[test]
fn port_naming_another_host_is_a_bounce() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,3,195,80\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
    assert_eq!(
        session.on_client_line(b"PORT 192,168,1,10,195,80\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
    assert_eq!(session.open_expectations(), 0);
}

#[test]
fn eprt_naming_another_host_is_a_bounce() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPRT |1|127.0.0.1|50000|\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
    assert_eq!(
        session.on_client_line(b"EPRT |2|2001:db8::3|50000|\r\n", &ctx6()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
}

#[test]
fn eprt_of_the_other_family_is_a_bounce() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPRT |2|::ffff:10.0.0.2|50000|\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
    assert_eq!(
        session.on_client_line(b"EPRT |1|10.0.0.2|50000|\r\n", &ctx6()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
}

#[test]
fn port_to_a_privileged_port_is_refused() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,2,0,22\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::PrivilegedPort)
    );
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,2,3,255\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::PrivilegedPort)
    );
    open_active(session.on_client_line(b"PORT 10,0,0,2,4,0\r\n", &ctx()));
}

#[test]
fn eprt_to_a_privileged_port_is_refused() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPRT |1|10.0.0.2|20|\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::PrivilegedPort)
    );
}

#[test]
fn privileged_ports_can_be_allowed() {
    let mut session = Session::new();
    let mut ctx = ctx();
    ctx.policy.allow_privileged_data_ports = true;
    assert_eq!(
        open_active(session.on_client_line(b"PORT 10,0,0,2,0,20\r\n", &ctx)).port(),
        20
    );
}

#[test]
fn bounce_is_checked_before_the_port() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,9,0,25\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
}

#[test]
fn too_many_expectations_are_refused_until_one_closes() {
    let mut session = Session::new();
    for _ in 0..4 {
        open_active(session.on_client_line(PORT_LINE, &ctx()));
    }
    assert_eq!(
        session.on_client_line(PORT_LINE, &ctx()),
        ClientVerdict::Refused(RefusalReason::TooManyExpectations)
    );
    session.expectation_closed();
    assert_eq!(session.open_expectations(), 3);
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

#[test]
fn several_expectations_close_at_once_and_never_below_zero() {
    let mut session = Session::new();
    for _ in 0..3 {
        open_active(session.on_client_line(PORT_LINE, &ctx()));
    }
    session.expectations_closed(2);
    assert_eq!(session.open_expectations(), 1);
    session.expectations_closed(u8::MAX);
    assert_eq!(session.open_expectations(), 0);
    session.expectations_closed(0);
    assert_eq!(session.open_expectations(), 0);
}

#[test]
fn zero_allowed_expectations_refuses_everything() {
    let mut session = Session::new();
    let mut ctx = ctx();
    ctx.policy.max_outstanding_expectations = 0;
    assert_eq!(
        session.on_client_line(PORT_LINE, &ctx),
        ClientVerdict::Refused(RefusalReason::TooManyExpectations)
    );
    // The refused PORT still reached the server.
    session.on_server_line(b"200 PORT command successful.\r\n", &ctx);
    session.on_client_line(b"PASV\r\n", &ctx);
    assert_eq!(
        session.on_server_line(PASV_227, &ctx),
        ServerVerdict::Refused(RefusalReason::TooManyExpectations)
    );
}

#[test]
fn expectation_closed_never_underflows() {
    let mut session = Session::new();
    session.expectation_closed();
    assert_eq!(session.open_expectations(), 0);
}

#[test]
fn port_during_a_transfer_is_not_in_command_state() {
    let mut session = Session::new();
    session.on_server_line(b"150 Opening BINARY mode data connection\r\n", &ctx());
    assert_eq!(
        session.on_client_line(PORT_LINE, &ctx()),
        ClientVerdict::Refused(RefusalReason::NotInCommandState)
    );
    assert_eq!(
        session.on_server_line(b"226 Transfer complete\r\n", &ctx()),
        ServerVerdict::TransferCompleted
    );
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

#[test]
fn port_while_pasv_awaits_its_reply_is_not_in_command_state() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_client_line(PORT_LINE, &ctx()),
        ClientVerdict::Refused(RefusalReason::NotInCommandState)
    );
    assert_eq!(
        session.on_client_line(b"EPRT |1|10.0.0.2|50000|\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::NotInCommandState)
    );
    session.on_server_line(b"502 PASV not implemented\r\n", &ctx());
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

#[test]
fn malformed_port_is_reported_not_refused() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,2,256,80\r\n", &ctx()),
        ClientVerdict::Malformed(MalformedReason::OctetOutOfRange)
    );
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,2,0,0\r\n", &ctx()),
        ClientVerdict::Malformed(MalformedReason::PortOutOfRange)
    );
    assert_eq!(session.open_expectations(), 0);
}

// PASV / 227

#[test]
fn pasv_then_227_opens_a_passive_expectation() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"PASV\r\n", &ctx()),
        ClientVerdict::PassiveRequested(PassiveKind::Pasv)
    );
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Pasv(SocketAddrV4::new(SERVER, 30000)),
            field: Span { start: 27, len: 19 }
        }
    );
    assert_eq!(session.open_expectations(), 1);
}

#[test]
fn unsolicited_227_opens_nothing() {
    let mut session = Session::new();
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
    assert_eq!(session.open_expectations(), 0);
}

#[test]
fn one_pasv_accepts_one_227() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn a_227_answering_epsv_is_unsolicited_and_answers_it() {
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
    assert_eq!(
        session.on_server_line(EPSV_229, &ctx()),
        ServerVerdict::Unsolicited { code: 229 }
    );
}

#[test]
fn a_229_answering_pasv_is_unsolicited() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(EPSV_229, &ctx()),
        ServerVerdict::Unsolicited { code: 229 }
    );
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn passive_address_must_match_the_server() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"227 Entering Passive Mode (10,0,0,99,117,48)\r\n", &ctx()),
        ServerVerdict::Refused(RefusalReason::PassiveAddressMismatch)
    );
    assert_eq!(session.open_expectations(), 0);
}

#[test]
fn publish_mode_accepts_an_announced_public_address() {
    let mut session = Session::new();
    let mut ctx = ctx();
    ctx.policy.passive_address_must_match_server = false;
    session.on_client_line(b"PASV\r\n", &ctx);
    assert_eq!(
        session.on_server_line(b"227 Entering Passive Mode (203,0,113,5,117,48)\r\n", &ctx),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Pasv(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 5), 30000)),
            field: Span { start: 27, len: 18 }
        }
    );
}

/// Issue 12: a published server's 227/229 may announce only its passive ports, never its
/// control port, or another of its services would be opened to the outside client.
#[test]
fn a_passive_port_outside_the_policy_is_refused() {
    let mut ctx = ctx();
    ctx.policy.passive_address_must_match_server = false;
    ctx.policy.passive_ports = [1024, u16::MAX];
    ctx.policy.passive_port_excluded = 2121;
    for (reply, request) in [
        (&b"227 Entering Passive Mode (192,168,1,10,0,22)\r\n"[..], &b"PASV\r\n"[..]),
        (b"227 Entering Passive Mode (192,168,1,10,12,234)\r\n", b"PASV\r\n"),
        (b"229 Entering Extended Passive Mode (|||3306|)\r\n", b"EPSV\r\n"),
        (b"229 Entering Extended Passive Mode (|||2121|)\r\n", b"EPSV\r\n"),
    ] {
        let mut session = Session::new();
        if !reply.ends_with(b"0,22)\r\n") {
            // Unprivileged, but outside the published server's passive range.
            ctx.policy.passive_ports = [40000, 40100];
        }
        session.on_client_line(request, &ctx);
        assert_eq!(
            session.on_server_line(reply, &ctx),
            ServerVerdict::Refused(RefusalReason::PassivePortNotAllowed),
            "{}",
            std::string::String::from_utf8_lossy(reply)
        );
        assert_eq!(session.open_expectations(), 0);
    }
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &ctx);
    assert!(matches!(
        session.on_server_line(b"229 Entering Extended Passive Mode (|||40100|)\r\n", &ctx),
        ServerVerdict::OpenPassive { .. }
    ));
}

#[test]
fn a_227_on_an_ipv6_control_connection_never_matches_the_server() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx6());
    assert_eq!(
        session.on_server_line(PASV_227, &ctx6()),
        ServerVerdict::Refused(RefusalReason::PassiveAddressMismatch)
    );
}

#[test]
fn malformed_227_after_pasv_is_malformed_and_answers_it() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"227 Entering Passive Mode (192,168,1,10,256,48)\r\n", &ctx()),
        ServerVerdict::Malformed(MalformedReason::OctetOutOfRange)
    );
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn malformed_227_without_pasv_is_unsolicited() {
    let mut session = Session::new();
    assert_eq!(
        session.on_server_line(b"227 Logout.\r\n", &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn pipelined_replies_leave_the_pasv_waiting() {
    let mut session = Session::new();
    session.on_client_line(b"TYPE I\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(session.on_server_line(b"200 Type set to I.\r\n", &ctx()), ServerVerdict::Ignored);
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn an_error_reply_answers_the_pasv() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(session.on_server_line(b"530 Please login\r\n", &ctx()), ServerVerdict::Ignored);
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

// Which command a reply answers (pipelining)

#[test]
fn an_error_answering_a_command_before_the_pasv_leaves_it_waiting() {
    let mut session = Session::new();
    session.on_client_line(b"TYPE X\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"504 Command not implemented for that parameter.\r\n", &ctx()),
        ServerVerdict::Ignored
    );
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn a_success_answering_a_command_before_epsv_all_does_not_accept_it() {
    let mut session = Session::new();
    session.on_client_line(b"TYPE I\r\n", &ctx());
    session.on_client_line(b"EPSV ALL\r\n", &ctx());
    session.on_server_line(b"200 Type set to I.\r\n", &ctx());
    assert!(!session.is_extended_passive_only());
    session.on_server_line(b"200 EPSV ALL ok.\r\n", &ctx());
    assert!(session.is_extended_passive_only());

    // And when the server refuses EPSV ALL after accepting the TYPE, nothing changes.
    let mut session = Session::new();
    session.on_client_line(b"TYPE I\r\n", &ctx());
    session.on_client_line(b"EPSV ALL\r\n", &ctx());
    session.on_server_line(b"200 Type set to I.\r\n", &ctx());
    session.on_server_line(b"500 Unknown command.\r\n", &ctx());
    assert!(!session.is_extended_passive_only());
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

#[test]
fn several_pipelined_commands_are_answered_in_order() {
    let mut session = Session::new();
    let ctx = ctx();
    session.on_server_line(b"220 ready\r\n", &ctx);
    for line in [
        &b"USER anonymous\r\n"[..],
        b"PASS x\r\n",
        b"FEAT\r\n",
        b"RETR f\r\n",
        b"PASV\r\n",
    ] {
        session.on_client_line(line, &ctx);
    }
    for line in [
        &b"331 Please specify the password.\r\n"[..],
        b"230 Login successful.\r\n",
        // A multi-line reply is one reply, counted at its last line; the 227 in its body is text.
        b"211-Features:\r\n",
        b"227 Entering Passive Mode (192,168,1,10,117,48).\r\n",
        b"211 End\r\n",
        // 1xx is preliminary: the RETR is answered by the 226.
        b"150 Opening BINARY mode data connection.\r\n",
        b"226 Transfer complete.\r\n",
    ] {
        let verdict = session.on_server_line(line, &ctx);
        assert!(!matches!(verdict, ServerVerdict::OpenPassive { .. }), "{line:?}: {verdict:?}");
    }
    assert_opens_passive(session.on_server_line(PASV_227, &ctx));
}

#[test]
fn the_reply_to_a_pipelined_pasv_is_its_own_even_when_it_is_an_error() {
    let mut session = Session::new();
    for line in [&b"TYPE I\r\n"[..], b"PASV\r\n", b"NOOP\r\n"] {
        session.on_client_line(line, &ctx());
    }
    session.on_server_line(b"200 Type set to I.\r\n", &ctx());
    session.on_server_line(b"425 Can't open passive connection.\r\n", &ctx());
    // A 227 now answers the NOOP, not the PASV.
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn a_227_answering_a_command_before_the_pasv_is_unsolicited() {
    let mut session = Session::new();
    session.on_client_line(b"NOOP\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn only_the_oldest_of_pipelined_passive_requests_is_tracked() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
    session.on_client_line(b"EPSV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(EPSV_229, &ctx()));
}

#[test]
fn replies_that_answer_nothing_never_count_below_zero() {
    let mut session = Session::new();
    for line in [
        &b"220 Service ready\r\n"[..],
        b"421 Timeout\r\n",
        b"200 stray\r\n",
    ] {
        session.on_server_line(line, &ctx());
    }
    assert_eq!(session.awaited_replies, 0);
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn a_421_ends_everything_awaited() {
    let mut session = Session::new();
    session.on_client_line(b"TYPE I\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"421 Service not available, closing control connection.\r\n", &ctx()),
        ServerVerdict::TransferFailed
    );
    assert_eq!(session.awaited_replies, 0);
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

#[test]
fn an_over_long_reply_counts_as_a_final_reply_outside_a_multi_line_one() {
    let over_long = |code: &[u8]| {
        let mut line = std::vec::Vec::from(code);
        line.extend(std::iter::repeat_n(b'x', crate::MAX_LINE_LEN));
        line.extend_from_slice(b"\r\n");
        line
    };
    let mut session = Session::new();
    session.on_client_line(b"RETR /a/very/long/name\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(&over_long(b"550 "), &ctx()),
        ServerVerdict::Malformed(MalformedReason::TooLong)
    );
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));

    // Inside a multi-line reply it is only text.
    session.on_client_line(b"STAT\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    session.on_server_line(b"211-Status\r\n", &ctx());
    session.on_server_line(&over_long(b" "), &ctx());
    session.on_server_line(b"211 End\r\n", &ctx());
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn an_unterminated_command_is_not_awaiting_a_reply() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"NOOP", &ctx()),
        ClientVerdict::Malformed(MalformedReason::Unterminated)
    );
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn commands_in_the_normal_alternation_are_answered_one_by_one() {
    let mut session = Session::new();
    let ctx = ctx();
    let conversation: [(&[u8], &[u8]); 8] = [
        (b"USER anonymous\r\n", b"331 Please specify the password.\r\n"),
        (b"PASS x\r\n", b"230 Login successful.\r\n"),
        (b"TYPE X\r\n", b"504 Command not implemented for that parameter.\r\n"),
        (b"TYPE I\r\n", b"200 Switching to Binary mode.\r\n"),
        (b"EPSV\r\n", b"500 Unknown command.\r\n"),
        (b"SIZE f\r\n", b"213 3\r\n"),
        (b"MODE S\r\n", b"200 Mode set to S.\r\n"),
        (b"CWD /pub\r\n", b"250 Directory successfully changed.\r\n"),
    ];
    session.on_server_line(b"220 (vsFTPd 3.0.5)\r\n", &ctx);
    for (command, reply) in conversation {
        session.on_client_line(command, &ctx);
        assert_eq!(session.awaited_replies, 1, "{command:?}");
        session.on_server_line(reply, &ctx);
        assert_eq!(session.awaited_replies, 0, "{reply:?}");
    }
    for _ in 0..3 {
        session.on_client_line(b"PASV\r\n", &ctx);
        assert_opens_passive(session.on_server_line(PASV_227, &ctx));
        session.on_client_line(b"RETR f\r\n", &ctx);
        session.on_server_line(b"150 Opening BINARY mode data connection.\r\n", &ctx);
        session.expectation_closed();
        session.on_server_line(b"226 Transfer complete.\r\n", &ctx);
        assert_eq!(session.awaited_replies, 0);
    }
}

// EPSV / 229

#[test]
fn epsv_then_229_opens_a_passive_expectation_with_just_the_port() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPSV\r\n", &ctx()),
        ClientVerdict::PassiveRequested(PassiveKind::Epsv)
    );
    assert_eq!(
        session.on_server_line(EPSV_229, &ctx()),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Epsv {
                port: 30000,
                delimiter: b'|'
            },
            field: Span { start: 39, len: 5 }
        }
    );
}

#[test]
fn epsv_with_a_protocol_argument_is_a_passive_request() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPSV 2\r\n", &ctx6()),
        ClientVerdict::PassiveRequested(PassiveKind::Epsv)
    );
    assert_opens_passive(session.on_server_line(EPSV_229, &ctx6()));
}

#[test]
fn unsolicited_229_opens_nothing() {
    let mut session = Session::new();
    assert_eq!(
        session.on_server_line(EPSV_229, &ctx()),
        ServerVerdict::Unsolicited { code: 229 }
    );
}

#[test]
fn malformed_229_after_epsv_is_malformed() {
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"229 Entering Extended Passive Mode (|||0|)\r\n", &ctx()),
        ServerVerdict::Malformed(MalformedReason::PortOutOfRange)
    );
}

#[test]
fn too_many_expectations_refuse_a_229() {
    let mut session = Session::new();
    let mut ctx = ctx();
    ctx.policy.max_outstanding_expectations = 1;
    open_active(session.on_client_line(PORT_LINE, &ctx));
    session.on_server_line(b"200 PORT command successful.\r\n", &ctx);
    session.on_client_line(b"EPSV\r\n", &ctx);
    assert_eq!(
        session.on_server_line(EPSV_229, &ctx),
        ServerVerdict::Refused(RefusalReason::TooManyExpectations)
    );
}

#[test]
fn malformed_epsv_requests_nothing() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPSV 7\r\n", &ctx()),
        ClientVerdict::Malformed(MalformedReason::BadEpsvArgument)
    );
    assert_eq!(
        session.on_server_line(EPSV_229, &ctx()),
        ServerVerdict::Unsolicited { code: 229 }
    );
}

// EPSV ALL

#[test]
fn epsv_all_accepted_refuses_port_eprt_and_pasv() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPSV ALL\r\n", &ctx()),
        ClientVerdict::ExtendedPassiveOnlyRequested
    );
    assert!(!session.is_extended_passive_only());
    session.on_server_line(b"200 EPSV ALL ok\r\n", &ctx());
    assert!(session.is_extended_passive_only());
    for line in [PORT_LINE, b"EPRT |1|10.0.0.2|50000|\r\n", b"PASV\r\n"] {
        assert_eq!(
            session.on_client_line(line, &ctx()),
            ClientVerdict::Refused(RefusalReason::EpsvAllActive),
            "{line:?}"
        );
        // The server refuses it too.
        session.on_server_line(b"520 EPSV ALL in effect\r\n", &ctx());
    }
    session.on_client_line(b"EPSV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(EPSV_229, &ctx()));
}

#[test]
fn epsv_all_rejected_by_the_server_changes_nothing() {
    let mut session = Session::new();
    session.on_client_line(b"EPSV ALL\r\n", &ctx());
    session.on_server_line(b"500 Unknown command\r\n", &ctx());
    assert!(!session.is_extended_passive_only());
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

// Multi-line replies

#[test]
fn lines_inside_a_multi_line_reply_are_never_a_227() {
    let mut session = Session::new();
    session.on_client_line(b"STAT\r\n", &ctx());
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"211-Status\r\n", &ctx()),
        ServerVerdict::Ignored
    );
    assert_eq!(session.multiline_reply(), Some(211));
    assert_eq!(session.on_server_line(PASV_227, &ctx()), ServerVerdict::Ignored);
    assert_eq!(session.on_server_line(EPSV_229, &ctx()), ServerVerdict::Ignored);
    assert_eq!(
        session.on_server_line(b"227-Entering Passive Mode (192,168,1,10,117,48)\r\n", &ctx()),
        ServerVerdict::Ignored
    );
    assert_eq!(session.on_server_line(b"211 End\r\n", &ctx()), ServerVerdict::Ignored);
    assert_eq!(session.multiline_reply(), None);
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn multi_line_227_opens_on_its_closing_line_only() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"227-Entering Passive Mode (10,9,9,9,1,1)\r\n", &ctx()),
        ServerVerdict::Ignored
    );
    assert_eq!(
        session.on_server_line(b"  (10,9,9,9,1,1)\r\n", &ctx()),
        ServerVerdict::Ignored
    );
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn iis_multi_line_banner() {
    let mut session = Session::new();
    for line in [
        &b"220-Microsoft FTP Service\r\n"[..],
        b"220-Welcome to the server.\r\n",
        b"220 Ready.\r\n",
    ] {
        assert_eq!(session.on_server_line(line, &ctx()), ServerVerdict::Ignored);
    }
    assert_eq!(session.multiline_reply(), None);
}

#[test]
fn server_lines_lost_ends_a_multi_line_reply() {
    let mut session = Session::new();
    session.on_server_line(b"220-Welcome\r\n", &ctx());
    session.server_lines_lost();
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));
}

#[test]
fn server_lines_lost_forgets_what_the_lost_replies_would_have_settled() {
    // The 227 to a PASV was lost: PORT is back in command state, and a later 227 answers nothing.
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    session.server_lines_lost();
    open_active(session.on_client_line(PORT_LINE, &ctx()));
    session.on_server_line(b"200 PORT command successful.\r\n", &ctx());
    assert_eq!(
        session.on_server_line(PASV_227, &ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );

    // The 226 ending a transfer was lost.
    let mut session = Session::new();
    session.on_server_line(b"150 Opening BINARY mode data connection.\r\n", &ctx());
    session.server_lines_lost();
    assert!(!session.is_transferring());
    open_active(session.on_client_line(PORT_LINE, &ctx()));

    // Replies to pipelined commands were lost: nothing is awaited any more.
    let mut session = Session::new();
    for line in [&b"TYPE I\r\n"[..], b"MODE S\r\n", b"STRU F\r\n"] {
        session.on_client_line(line, &ctx());
    }
    session.server_lines_lost();
    assert_eq!(session.awaited_replies, 0);
    session.on_client_line(b"PASV\r\n", &ctx());
    assert_opens_passive(session.on_server_line(PASV_227, &ctx()));

    // The policy still applies.
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx());
    session.server_lines_lost();
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,3,195,80\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
    assert_eq!(
        session.on_client_line(b"PORT 10,0,0,2,0,22\r\n", &ctx()),
        ClientVerdict::Refused(RefusalReason::PrivilegedPort)
    );
}

// TLS

#[test]
fn auth_tls_then_234_encrypts_the_session() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"AUTH TLS\r\n", &ctx()),
        ClientVerdict::TlsRequested(AuthMechanism::Tls)
    );
    assert_eq!(
        session.on_server_line(b"234 Proceed with negotiation.\r\n", &ctx()),
        ServerVerdict::TlsStarted
    );
    assert!(session.is_encrypted());
    assert_eq!(session.on_client_line(PORT_LINE, &ctx()), ClientVerdict::Encrypted);
    assert_eq!(session.on_client_line(b"PASV\r\n", &ctx()), ClientVerdict::Encrypted);
    assert_eq!(session.on_server_line(PASV_227, &ctx()), ServerVerdict::Encrypted);
    assert_eq!(session.open_expectations(), 0);
}

#[test]
fn auth_refused_keeps_the_session_in_the_clear() {
    let mut session = Session::new();
    session.on_client_line(b"AUTH SSL\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"504 Unknown AUTH type\r\n", &ctx()),
        ServerVerdict::Ignored
    );
    assert!(!session.is_encrypted());
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

#[test]
fn a_234_without_auth_is_unsolicited_and_changes_nothing() {
    // Issue 12: a forged 234 must not switch the ALG off.
    let mut session = Session::new();
    assert_eq!(
        session.on_server_line(b"234 AUTH TLS successful\r\n", &ctx()),
        ServerVerdict::Unsolicited { code: 234 }
    );
    assert!(!session.is_encrypted());
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

#[test]
fn a_234_inside_a_multi_line_reply_is_text() {
    let mut session = Session::new();
    session.on_server_line(b"214-Help\r\n", &ctx());
    assert_eq!(
        session.on_server_line(b"234 looks like a reply\r\n", &ctx()),
        ServerVerdict::Ignored
    );
    assert!(!session.is_encrypted());
}

#[test]
fn ccc_in_the_clear_is_ignored_and_a_cleared_channel_parses_again() {
    let mut session = Session::new();
    assert_eq!(session.on_client_line(b"CCC\r\n", &ctx()), ClientVerdict::Ignored);
    session.on_client_line(b"AUTH TLS\r\n", &ctx());
    session.on_server_line(b"234 Proceed\r\n", &ctx());
    assert_eq!(session.on_client_line(b"CCC\r\n", &ctx()), ClientVerdict::Encrypted);
    session.command_channel_cleared();
    assert!(!session.is_encrypted());
    open_active(session.on_client_line(PORT_LINE, &ctx()));
}

// Transfers and reporting

#[test]
fn transfer_replies_are_reported() {
    let mut session = Session::new();
    for (line, verdict) in [
        (&b"125 Data connection already open\r\n"[..], ServerVerdict::TransferStarted),
        (b"226 Transfer complete\r\n", ServerVerdict::TransferCompleted),
        (b"150 Opening data connection\r\n", ServerVerdict::TransferStarted),
        (b"250 Requested file action okay\r\n", ServerVerdict::TransferCompleted),
        (b"250 CWD command successful\r\n", ServerVerdict::Ignored),
        (b"425 Can't open data connection\r\n", ServerVerdict::TransferFailed),
        (b"426 Connection closed; transfer aborted\r\n", ServerVerdict::TransferFailed),
        (b"421 Timeout\r\n", ServerVerdict::TransferFailed),
    ] {
        assert_eq!(session.on_server_line(line, &ctx()), verdict, "{line:?}");
    }
}

#[test]
fn a_transfer_runs_from_its_preliminary_reply_to_the_next_final_one() {
    let mut session = Session::new();
    assert!(!session.is_transferring());
    for (start, end) in [
        (&b"150 Opening data connection\r\n"[..], &b"226 Transfer complete\r\n"[..]),
        (b"125 Data connection already open\r\n", b"250 Requested file action okay\r\n"),
        (b"150 Opening data connection\r\n", b"426 Connection closed; transfer aborted\r\n"),
    ] {
        session.on_server_line(start, &ctx());
        assert!(session.is_transferring(), "{start:?}");
        // The lines of a multi-line reply are text, not the reply that ends the transfer.
        session.on_server_line(b"226-Statistics follow\r\n", &ctx());
        session.on_server_line(b"150 bytes were sent\r\n", &ctx());
        assert!(session.is_transferring(), "{start:?}");
        session.on_server_line(b"226 Done\r\n", &ctx());
        assert!(!session.is_transferring(), "{start:?}");
        session.on_server_line(start, &ctx());
        session.on_server_line(end, &ctx());
        assert!(!session.is_transferring(), "{end:?}");
    }
}

#[test]
fn client_commands_are_reported() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"USER ftp\r\n", &ctx()),
        ClientVerdict::User {
            name: Span { start: 5, len: 3 }
        }
    );
    assert_eq!(session.on_client_line(b"PASS hunter2\r\n", &ctx()), ClientVerdict::Password);
    assert_eq!(
        session.on_client_line(b"RETR /pub/file\r\n", &ctx()),
        ClientVerdict::Transfer {
            verb: TransferVerb::Retr,
            arg: Span { start: 5, len: 9 }
        }
    );
    assert_eq!(session.on_client_line(b"REST 4096\r\n", &ctx()), ClientVerdict::Restart);
    assert_eq!(session.on_client_line(b"QUIT\r\n", &ctx()), ClientVerdict::Quit);
    assert_eq!(session.on_client_line(b"NOOP\r\n", &ctx()), ClientVerdict::Ignored);
    assert_eq!(
        session.on_client_line(b"PORT 1,2", &ctx()),
        ClientVerdict::Malformed(MalformedReason::Unterminated)
    );
}

#[test]
fn server_text_and_malformed_lines() {
    let mut session = Session::new();
    assert_eq!(session.on_server_line(b"garbage\r\n", &ctx()), ServerVerdict::Ignored);
    assert_eq!(
        session.on_server_line(b"227 Entering", &ctx()),
        ServerVerdict::Malformed(MalformedReason::Unterminated)
    );
}

#[test]
fn full_active_session() {
    let mut session = Session::new();
    let ctx = ctx();
    assert_eq!(session.on_server_line(b"220 vsFTPd 3.0.5\r\n", &ctx), ServerVerdict::Ignored);
    session.on_client_line(b"USER anonymous\r\n", &ctx);
    session.on_server_line(b"331 Please specify the password.\r\n", &ctx);
    session.on_client_line(b"PASS x\r\n", &ctx);
    session.on_server_line(b"230 Login successful.\r\n", &ctx);
    open_active(session.on_client_line(PORT_LINE, &ctx));
    session.on_server_line(b"200 PORT command successful. Consider using PASV.\r\n", &ctx);
    session.on_client_line(b"RETR f\r\n", &ctx);
    assert_eq!(
        session.on_server_line(b"150 Opening BINARY mode data connection for f (3 bytes).\r\n", &ctx),
        ServerVerdict::TransferStarted
    );
    session.expectation_closed();
    assert_eq!(
        session.on_server_line(b"226 Transfer complete.\r\n", &ctx),
        ServerVerdict::TransferCompleted
    );
    assert_eq!(session.open_expectations(), 0);
    open_active(session.on_client_line(PORT_LINE, &ctx));
}

// The NAT64 ALG (RFC 6384)

const NAT64_SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const NAT64_227: &[u8] = b"227 Entering Passive Mode (192,0,2,7,117,48).\r\n";
const NAT64_EPRT: &[u8] = b"EPRT |2|2001:db8::2|50000|\r\n";

/// An IPv6 client's session to an IPv4 server through NAT64, with the ALG and EPSV translation.
fn alg_ctx() -> PolicyContext {
    PolicyContext {
        client: ip::from_ip(IpAddr::V6("2001:db8::2".parse().unwrap())),
        server: ip::from_ip(IpAddr::V4(NAT64_SERVER)),
        policy: Policy {
            nat64_alg: true,
            epsv_as_pasv: true,
            ..Policy::new()
        },
    }
}

/// The same without EPSV translation (`--nat64-epsv pass`).
fn alg_ctx_epsv_passed() -> PolicyContext {
    let mut ctx = alg_ctx();
    ctx.policy.epsv_as_pasv = false;
    ctx
}

fn pasv_as_229(verdict: ServerVerdict) -> SocketAddrV4 {
    match verdict {
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::PasvAs229(addr),
            ..
        } => addr,
        other => panic!("expected OpenPassive(PasvAs229), got {other:?}"),
    }
}

#[test]
fn policy_has_no_nat64_alg_by_default() {
    let policy = Policy::new();
    assert!(!policy.nat64_alg);
    assert!(!policy.epsv_as_pasv);
    assert!(!Session::new().nat64_alg_enabled(&policy));
    assert!(Session::new().nat64_alg_enabled(&alg_ctx().policy));
}

#[test]
fn epsv_goes_to_the_server_as_pasv_and_its_227_comes_back_as_a_229() {
    for line in [&b"EPSV\r\n"[..], b"epsv 2\r\n", b"EPSV\n"] {
        let mut session = Session::new();
        assert_eq!(session.on_client_line(line, &alg_ctx()), ClientVerdict::EpsvAsPasv);
        let verdict = session.on_server_line(NAT64_227, &alg_ctx());
        assert_eq!(
            verdict,
            ServerVerdict::OpenPassive {
                endpoint: PassiveEndpoint::PasvAs229(SocketAddrV4::new(NAT64_SERVER, 30000)),
                field: Span { start: 27, len: 16 },
            },
            "{line:?}"
        );
        assert_eq!(session.open_expectations(), 1);
        // Answered: the next 227 is not.
        assert_eq!(
            session.on_server_line(NAT64_227, &alg_ctx()),
            ServerVerdict::Unsolicited { code: 227 }
        );
    }
}

#[test]
fn epsv_for_ipv4_passes_as_it_is() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPSV 1\r\n", &alg_ctx()),
        ClientVerdict::PassiveRequested(PassiveKind::Epsv)
    );
    assert!(matches!(
        session.on_server_line(EPSV_229, &alg_ctx()),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Epsv { port: 30000, .. },
            ..
        }
    ));
}

#[test]
fn a_227_answering_a_translated_epsv_must_name_the_server() {
    // Whatever the policy says of 227s: a 229 cannot carry another address.
    for must_match in [true, false] {
        let mut ctx = alg_ctx();
        ctx.policy.passive_address_must_match_server = must_match;
        let mut session = Session::new();
        session.on_client_line(b"EPSV\r\n", &ctx);
        assert_eq!(
            session.on_server_line(b"227 Entering Passive Mode (192,0,2,8,117,48).\r\n", &ctx),
            ServerVerdict::AlgRefused(RefusalReason::PassiveAddressMismatch)
        );
        assert_eq!(session.open_expectations(), 0);
    }
}

#[test]
fn a_227_answering_a_translated_epsv_is_checked_like_any_passive_reply() {
    let mut ctx = alg_ctx();
    ctx.policy.passive_ports = [1024, 65535];
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &ctx);
    assert_eq!(
        session.on_server_line(b"227 Entering Passive Mode (192,0,2,7,0,21).\r\n", &ctx),
        ServerVerdict::AlgRefused(RefusalReason::PassivePortNotAllowed)
    );
    ctx.policy.max_outstanding_expectations = 0;
    session.on_client_line(b"EPSV\r\n", &ctx);
    assert_eq!(
        session.on_server_line(NAT64_227, &ctx),
        ServerVerdict::AlgRefused(RefusalReason::TooManyExpectations)
    );
}

#[test]
fn a_229_answering_a_translated_epsv_is_unsolicited() {
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &alg_ctx());
    assert_eq!(
        session.on_server_line(EPSV_229, &alg_ctx()),
        ServerVerdict::Unsolicited { code: 229 }
    );
    // It answered the request: a 227 after it answers nothing.
    assert_eq!(
        session.on_server_line(NAT64_227, &alg_ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn a_malformed_227_answering_a_translated_epsv_is_malformed_and_an_error_answers_it() {
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &alg_ctx());
    assert_eq!(
        session.on_server_line(b"227 Entering Passive Mode (192,0,2,7,300,1).\r\n", &alg_ctx()),
        ServerVerdict::Malformed(MalformedReason::OctetOutOfRange)
    );
    session.on_client_line(b"EPSV\r\n", &alg_ctx());
    assert_eq!(
        session.on_server_line(b"500 PASV not allowed\r\n", &alg_ctx()),
        ServerVerdict::Ignored
    );
    assert_eq!(
        session.on_server_line(NAT64_227, &alg_ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn a_translated_epsv_waits_behind_pipelined_commands() {
    let mut session = Session::new();
    assert_eq!(session.on_client_line(b"TYPE I\r\n", &alg_ctx()), ClientVerdict::Ignored);
    assert_eq!(session.on_client_line(b"EPSV\r\n", &alg_ctx()), ClientVerdict::EpsvAsPasv);
    // PORT/EPRT wait until the passive request is answered, as with PASV.
    assert_eq!(
        session.on_client_line(NAT64_EPRT, &alg_ctx()),
        ClientVerdict::Refused(RefusalReason::NotInCommandState)
    );
    assert_eq!(
        session.on_server_line(b"227 Passive Mode (192,0,2,7,117,48) TYPE?\r\n", &alg_ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
    assert_eq!(pasv_as_229(session.on_server_line(NAT64_227, &alg_ctx())).port(), 30000);
}

#[test]
fn an_epsv_while_another_request_waits_is_not_translated() {
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &alg_ctx());
    assert_eq!(
        session.on_client_line(b"EPSV\r\n", &alg_ctx()),
        ClientVerdict::PassiveRequested(PassiveKind::Epsv)
    );
    // The 227 answers the PASV and is passed as it is.
    assert!(matches!(
        session.on_server_line(NAT64_227, &alg_ctx()),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Pasv(_),
            ..
        }
    ));
    assert_eq!(
        session.on_server_line(EPSV_229, &alg_ctx()),
        ServerVerdict::Unsolicited { code: 229 }
    );
}

#[test]
fn pasv_passes_as_it_is() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"PASV\r\n", &alg_ctx()),
        ClientVerdict::PassiveRequested(PassiveKind::Pasv)
    );
    assert!(matches!(
        session.on_server_line(NAT64_227, &alg_ctx()),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Pasv(_),
            ..
        }
    ));
}

#[test]
fn with_epsv_passed_epsv_and_epsv_all_are_as_without_the_alg() {
    let ctx = alg_ctx_epsv_passed();
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPSV\r\n", &ctx),
        ClientVerdict::PassiveRequested(PassiveKind::Epsv)
    );
    assert!(matches!(
        session.on_server_line(EPSV_229, &ctx),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Epsv { port: 30000, .. },
            ..
        }
    ));
    assert_eq!(
        session.on_client_line(b"EPSV ALL\r\n", &ctx),
        ClientVerdict::ExtendedPassiveOnlyRequested
    );
    assert_eq!(session.on_server_line(b"200 EPSV ALL ok\r\n", &ctx), ServerVerdict::Ignored);
    assert!(session.is_extended_passive_only());
    // EPRT is still the ALG's.
    assert_eq!(
        session.on_client_line(NAT64_EPRT, &ctx),
        ClientVerdict::Refused(RefusalReason::EpsvAllActive)
    );
}

#[test]
fn eprt_naming_the_client_goes_to_the_server_as_port() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(NAT64_EPRT, &alg_ctx()),
        ClientVerdict::OpenActive {
            addr: "[2001:db8::2]:50000".parse().unwrap(),
            field: Span { start: 5, len: 21 },
            kind: ActiveKind::EprtAsPort,
        }
    );
    assert_eq!(session.open_expectations(), 1);
}

#[test]
fn eprt_naming_anything_else_is_a_bounce_and_so_is_port() {
    for line in [
        &b"EPRT |2|2001:db8::3|50000|\r\n"[..],
        b"EPRT |1|192.0.2.7|50000|\r\n",
        b"EPRT |1|10.0.0.2|50000|\r\n",
        b"PORT 192,0,2,7,195,80\r\n",
    ] {
        let mut session = Session::new();
        assert_eq!(
            session.on_client_line(line, &alg_ctx()),
            ClientVerdict::Refused(RefusalReason::Bounce),
            "{line:?}"
        );
    }
}

#[test]
fn eprt_as_port_is_checked_like_any_eprt() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPRT |2|2001:db8::2|21|\r\n", &alg_ctx()),
        ClientVerdict::Refused(RefusalReason::PrivilegedPort)
    );
    session.on_server_line(b"200 ok\r\n", &alg_ctx());
    session.on_client_line(b"RETR f\r\n", &alg_ctx());
    session.on_server_line(b"150 here it comes\r\n", &alg_ctx());
    assert_eq!(
        session.on_client_line(NAT64_EPRT, &alg_ctx()),
        ClientVerdict::Refused(RefusalReason::NotInCommandState)
    );
}

#[test]
fn epsv_all_is_answered_by_the_alg_and_enforced_by_it() {
    let mut session = Session::new();
    assert_eq!(
        session.on_client_line(b"EPSV ALL\r\n", &alg_ctx()),
        ClientVerdict::AnsweredByAlg(AlgReply::EpsvAllAccepted)
    );
    assert!(!session.is_extended_passive_only());
    // The server answers the NOOP it got instead.
    assert_eq!(
        session.on_server_line(b"200 NOOP ok.\r\n", &alg_ctx()),
        ServerVerdict::AlgReply(AlgReply::EpsvAllAccepted)
    );
    assert!(session.is_extended_passive_only());
    for line in [NAT64_EPRT, b"PORT 192,0,2,7,195,80\r\n", b"PASV\r\n"] {
        assert_eq!(
            session.on_client_line(line, &alg_ctx()),
            ClientVerdict::Refused(RefusalReason::EpsvAllActive),
            "{line:?}"
        );
        session.on_server_line(b"500 whatever\r\n", &alg_ctx());
    }
    // EPSV still works: the server never saw EPSV ALL, so it accepts the PASV.
    assert_eq!(session.on_client_line(b"EPSV\r\n", &alg_ctx()), ClientVerdict::EpsvAsPasv);
    pasv_as_229(session.on_server_line(NAT64_227, &alg_ctx()));
}

#[test]
fn whatever_the_server_answers_to_the_noop_is_replaced_but_a_421() {
    let mut session = Session::new();
    session.on_client_line(b"EPSV ALL\r\n", &alg_ctx());
    assert_eq!(
        session.on_server_line(b"530 Please login with USER and PASS.\r\n", &alg_ctx()),
        ServerVerdict::AlgReply(AlgReply::EpsvAllAccepted)
    );
    let mut session = Session::new();
    session.on_client_line(b"ALGS STATUS64\r\n", &alg_ctx());
    // A preliminary reply is not the answer; a multi-line one answers at its last line.
    assert_eq!(session.on_server_line(b"150 odd\r\n", &alg_ctx()), ServerVerdict::TransferStarted);
    assert_eq!(session.on_server_line(b"200-NOOP\r\n", &alg_ctx()), ServerVerdict::Ignored);
    assert_eq!(
        session.on_server_line(b"200 NOOP\r\n", &alg_ctx()),
        ServerVerdict::AlgReply(AlgReply::Enabled)
    );
    let mut session = Session::new();
    session.on_client_line(b"ALGS STATUS64\r\n", &alg_ctx());
    assert_eq!(
        session.on_server_line(b"421 Timeout.\r\n", &alg_ctx()),
        ServerVerdict::TransferFailed
    );
    assert_eq!(session.on_server_line(b"200 NOOP\r\n", &alg_ctx()), ServerVerdict::Ignored);
}

#[test]
fn algs_reports_and_switches_the_alg() {
    let ctx = alg_ctx();
    let mut session = Session::new();
    let exchange = |session: &mut Session, line: &[u8], reply: AlgReply| {
        assert_eq!(
            session.on_client_line(line, &ctx),
            ClientVerdict::AnsweredByAlg(reply),
            "{line:?}"
        );
        assert_eq!(
            session.on_server_line(b"200 NOOP ok.\r\n", &ctx),
            ServerVerdict::AlgReply(reply),
            "{line:?}"
        );
    };
    exchange(&mut session, b"ALGS STATUS64\r\n", AlgReply::Enabled);
    exchange(&mut session, b"algs disable64\r\n", AlgReply::Disabled);
    assert!(!session.nat64_alg_enabled(&ctx.policy));
    exchange(&mut session, b"ALGS Status64\r\n", AlgReply::Disabled);
    exchange(&mut session, b"ALGS DISABLE64\r\n", AlgReply::Disabled);
    exchange(&mut session, b"ALGS ENABLE64\r\n", AlgReply::Enabled);
    assert!(session.nat64_alg_enabled(&ctx.policy));
    exchange(&mut session, b"ALGS ENABLE64\r\n", AlgReply::Enabled);
    for line in [
        &b"ALGS\r\n"[..],
        b"ALGS \r\n",
        b"ALGS STATUS6\r\n",
        b"ALGS STATUS644\r\n",
        b"ALGS ENABLE46\r\n",
        b"ALGS  STATUS64\r\n",
        b"ALGS STATUS64 \r\n",
    ] {
        exchange(&mut session, line, AlgReply::UnknownArgument);
    }
    assert!(session.nat64_alg_enabled(&ctx.policy));
}

#[test]
fn switched_off_the_alg_leaves_epsv_eprt_and_227_as_without_it() {
    let ctx = alg_ctx();
    let mut session = Session::new();
    session.on_client_line(b"ALGS DISABLE64\r\n", &ctx);
    // Switched at the command: the reply to it need not have come.
    assert!(!session.nat64_alg_enabled(&ctx.policy));
    assert_eq!(
        session.on_server_line(b"200 NOOP ok.\r\n", &ctx),
        ServerVerdict::AlgReply(AlgReply::Disabled)
    );
    assert_eq!(
        session.on_client_line(b"EPSV\r\n", &ctx),
        ClientVerdict::PassiveRequested(PassiveKind::Epsv)
    );
    assert!(matches!(
        session.on_server_line(EPSV_229, &ctx),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Epsv { .. },
            ..
        }
    ));
    assert_eq!(
        session.on_client_line(b"EPSV ALL\r\n", &ctx),
        ClientVerdict::ExtendedPassiveOnlyRequested
    );
    session.on_server_line(b"500 no\r\n", &ctx);
    assert_eq!(
        session.on_client_line(NAT64_EPRT, &ctx),
        ClientVerdict::OpenActive {
            addr: "[2001:db8::2]:50000".parse().unwrap(),
            field: Span { start: 5, len: 21 },
            kind: ActiveKind::Eprt { delimiter: b'|' },
        }
    );
    session.on_server_line(b"200 ok\r\n", &ctx);
    assert_eq!(
        session.on_client_line(b"EPRT |1|192.0.2.9|50000|\r\n", &ctx),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
    session.on_server_line(b"200 ok\r\n", &ctx);
    // ALGS is still answered.
    assert_eq!(
        session.on_client_line(b"ALGS STATUS64\r\n", &ctx),
        ClientVerdict::AnsweredByAlg(AlgReply::Disabled)
    );
}

#[test]
fn an_algs_reply_waits_behind_pipelined_commands() {
    let mut session = Session::new();
    session.on_client_line(b"TYPE I\r\n", &alg_ctx());
    session.on_client_line(b"ALGS STATUS64\r\n", &alg_ctx());
    session.on_client_line(b"NOOP\r\n", &alg_ctx());
    assert_eq!(
        session.on_server_line(b"200 Switching to Binary mode.\r\n", &alg_ctx()),
        ServerVerdict::Ignored
    );
    assert_eq!(
        session.on_server_line(b"200 NOOP ok.\r\n", &alg_ctx()),
        ServerVerdict::AlgReply(AlgReply::Enabled)
    );
    assert_eq!(session.on_server_line(b"200 NOOP ok.\r\n", &alg_ctx()), ServerVerdict::Ignored);
}

#[test]
fn algs_while_another_request_waits_goes_to_the_server_and_switches_nothing() {
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &alg_ctx());
    assert_eq!(session.on_client_line(b"ALGS DISABLE64\r\n", &alg_ctx()), ClientVerdict::Ignored);
    assert!(session.nat64_alg_enabled(&alg_ctx().policy));
    assert_eq!(
        session.on_client_line(b"EPSV ALL\r\n", &alg_ctx()),
        ClientVerdict::ExtendedPassiveOnlyRequested
    );
    pasv_as_229(session.on_server_line(NAT64_227, &alg_ctx()));
    assert_eq!(
        session.on_server_line(b"500 Unknown command.\r\n", &alg_ctx()),
        ServerVerdict::Ignored
    );
    assert_eq!(
        session.on_server_line(b"500 Unknown command.\r\n", &alg_ctx()),
        ServerVerdict::Ignored
    );
    assert!(!session.is_extended_passive_only());
}

#[test]
fn without_the_alg_algs_is_any_other_command() {
    for ctx in [ctx(), ctx6()] {
        let mut session = Session::new();
        assert_eq!(session.on_client_line(b"ALGS STATUS64\r\n", &ctx), ClientVerdict::Ignored);
        let verdict = session.on_server_line(b"500 Unknown command.\r\n", &ctx);
        assert_eq!(verdict, ServerVerdict::Ignored);
        assert_eq!(
            session.on_client_line(b"EPRT |2|2001:db8::2|50000|\r\n", &ctx6()),
            ClientVerdict::OpenActive {
                addr: "[2001:db8::2]:50000".parse().unwrap(),
                field: Span { start: 5, len: 21 },
                kind: ActiveKind::Eprt { delimiter: b'|' },
            }
        );
    }
}

#[test]
fn after_auth_nothing_is_translated() {
    let mut session = Session::new();
    session.on_client_line(b"AUTH TLS\r\n", &alg_ctx());
    assert_eq!(session.on_server_line(b"234 Proceed.\r\n", &alg_ctx()), ServerVerdict::TlsStarted);
    for line in [&b"EPSV\r\n"[..], b"EPSV ALL\r\n", b"ALGS STATUS64\r\n", NAT64_EPRT] {
        assert_eq!(session.on_client_line(line, &alg_ctx()), ClientVerdict::Encrypted);
    }
    assert_eq!(session.on_server_line(NAT64_227, &alg_ctx()), ServerVerdict::Encrypted);
}

#[test]
fn server_lines_lost_forgets_a_pending_alg_answer() {
    let mut session = Session::new();
    session.on_client_line(b"ALGS STATUS64\r\n", &alg_ctx());
    session.server_lines_lost();
    assert_eq!(session.on_server_line(b"200 NOOP ok.\r\n", &alg_ctx()), ServerVerdict::Ignored);
    session.on_client_line(b"EPSV\r\n", &alg_ctx());
    session.server_lines_lost();
    assert_eq!(
        session.on_server_line(NAT64_227, &alg_ctx()),
        ServerVerdict::Unsolicited { code: 227 }
    );
}

#[test]
fn every_stored_pending_value_and_flag_is_usable_with_the_alg() {
    for pending in 0..=u8::MAX {
        for flags in [0, FLAG_ALG_DISABLED, !FLAG_ENCRYPTED] {
            let mut session = Session {
                pending,
                flags,
                ..Session::new()
            };
            session.on_server_line(NAT64_227, &alg_ctx());
            session.on_server_line(b"200 NOOP ok.\r\n", &alg_ctx());
            session.on_client_line(b"EPSV\r\n", &alg_ctx());
            session.on_client_line(b"ALGS STATUS64\r\n", &alg_ctx());
            session.on_client_line(NAT64_EPRT, &alg_ctx());
        }
    }
}

#[test]
fn a_line_the_caller_could_not_replace_is_tracked_as_the_client_sent_it() {
    let ctx = alg_ctx();
    let mut session = Session::new();
    assert_eq!(session.on_client_line(b"EPSV\r\n", &ctx), ClientVerdict::EpsvAsPasv);
    session.alg_line_passed();
    // The server got the EPSV: its 229 opens, a 227 would not.
    assert!(matches!(
        session.on_server_line(EPSV_229, &ctx),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Epsv { port: 30000, .. },
            ..
        }
    ));
    session.on_client_line(b"ALGS STATUS64\r\n", &ctx);
    session.alg_line_passed();
    assert_eq!(session.on_server_line(b"500 Unknown command.\r\n", &ctx), ServerVerdict::Ignored);
    session.on_client_line(b"EPSV ALL\r\n", &ctx);
    session.alg_line_passed();
    assert_eq!(session.on_server_line(b"200 EPSV ALL ok.\r\n", &ctx), ServerVerdict::Ignored);
    assert!(session.is_extended_passive_only());
    // Nothing else is touched.
    let mut session = Session::new();
    session.on_client_line(b"PASV\r\n", &ctx);
    session.alg_line_passed();
    assert!(matches!(
        session.on_server_line(NAT64_227, &ctx),
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Pasv(_),
            ..
        }
    ));
}

#[test]
fn the_next_final_reply_is_replaced_whole_only_when_it_answers_the_alg() {
    let ctx = alg_ctx();
    let mut session = Session::new();
    assert!(!session.next_final_reply_replaced());
    // A command before the EPSV: its reply comes first, and is not replaced.
    session.on_client_line(b"TYPE I\r\n", &ctx);
    session.on_client_line(b"EPSV\r\n", &ctx);
    assert!(!session.next_final_reply_replaced());
    session.on_server_line(b"200 type set\r\n", &ctx);
    assert!(session.next_final_reply_replaced());
    // A preliminary reply answers nothing: the 227 is still due.
    session.on_server_line(b"150 not yet\r\n", &ctx);
    assert!(session.next_final_reply_replaced());
    pasv_as_229(session.on_server_line(NAT64_227, &ctx));
    assert!(!session.next_final_reply_replaced());
    // Commands the ALG answers itself.
    for line in [&b"EPSV ALL\r\n"[..], b"ALGS STATUS64\r\n", b"ALGS DISABLE64\r\n"] {
        let mut session = Session::new();
        session.on_client_line(line, &ctx);
        assert!(session.next_final_reply_replaced(), "{line:?}");
        session.on_server_line(b"200 NOOP ok.\r\n", &ctx);
        assert!(!session.next_final_reply_replaced(), "{line:?}");
    }
    // An EPSV the ALG could not replace is the client's own: its 229 passes.
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &ctx);
    session.alg_line_passed();
    assert!(!session.next_final_reply_replaced());
    // Without EPSV translation, nothing is replaced.
    let mut session = Session::new();
    session.on_client_line(b"EPSV\r\n", &alg_ctx_epsv_passed());
    assert!(!session.next_final_reply_replaced());
}
