use super::*;
use proptest::prelude::*;

/// Client ISN 1000 (window 64240, scale 7 offered), server ISN 5000 (65160, scale 7).
fn handshake() -> (TcpWindow, TcpWindow) {
    let mut client = TcpWindow::new();
    let mut server = TcpWindow::new();
    client.on_opening_syn(1000, 64240, Some(7));
    let syn_ack = Segment {
        seq: 5000,
        payload_len: 0,
        syn: true,
        fin: false,
        rst: false,
        ack: Some(1001),
        window: 65160,
        offered_scale: Some(7),
    };
    assert_eq!(
        on_segment(&mut server, &mut client, &syn_ack),
        WindowVerdict::Inside
    );
    let ack = data(1001, 0, 5001);
    assert_eq!(
        on_segment(&mut client, &mut server, &ack),
        WindowVerdict::Inside
    );
    (client, server)
}

/// A segment of `len` bytes at `seq` acknowledging `ack`, window 502 (×128).
fn data(seq: u32, len: u32, ack: u32) -> Segment {
    Segment {
        seq,
        payload_len: len,
        syn: false,
        fin: false,
        rst: false,
        ack: Some(ack),
        window: 502,
        offered_scale: None,
    }
}

fn reset(seq: u32, ack: Option<u32>) -> Segment {
    Segment {
        rst: true,
        ack,
        ..data(seq, 0, 0)
    }
}

#[test]
fn a_conversation_stays_inside() {
    let (mut client, mut server) = handshake();
    let banner = data(5001, 20, 1001);
    assert_eq!(
        on_segment(&mut server, &mut client, &banner),
        WindowVerdict::Inside
    );
    let user = data(1001, 16, 5021);
    assert_eq!(
        on_segment(&mut client, &mut server, &user),
        WindowVerdict::Inside
    );
    // A retransmission of the banner, and the client's FIN.
    assert_eq!(
        on_segment(&mut server, &mut client, &banner),
        WindowVerdict::Inside
    );
    let fin = Segment {
        fin: true,
        ..data(1017, 0, 5021)
    };
    assert_eq!(
        on_segment(&mut client, &mut server, &fin),
        WindowVerdict::Inside
    );
    assert_eq!(client.end, 1018);
}

#[test]
fn only_an_exact_reset_counts() {
    let (mut client, mut server) = handshake();
    assert_eq!(
        on_segment(&mut server, &mut client, &reset(5001, None)),
        WindowVerdict::Inside
    );
    assert_eq!(
        on_segment(&mut server, &mut client, &reset(5100, None)),
        WindowVerdict::InexactReset
    );
    assert_eq!(
        on_segment(&mut server, &mut client, &reset(5001 + 10_000_000, None)),
        WindowVerdict::Outside
    );
    // Exact, but acknowledging what the client never sent.
    assert_eq!(
        on_segment(&mut server, &mut client, &reset(5001, Some(900_000))),
        WindowVerdict::Outside
    );
}

#[test]
fn a_reset_at_what_the_peer_acknowledged_counts() {
    let (mut client, mut server) = handshake();
    // The server sent 100 bytes the client has not acknowledged yet (lost on the way).
    let reply = data(5001, 100, 1001);
    on_segment(&mut server, &mut client, &reply);
    assert_eq!(server.end, 5101);
    // The client's ACK of the first handshake byte only.
    assert_eq!(
        on_segment(&mut server, &mut client, &reset(5001, None)),
        WindowVerdict::Inside
    );
    assert_eq!(
        on_segment(&mut server, &mut client, &reset(5101, None)),
        WindowVerdict::Inside
    );
}

#[test]
fn the_responder_counts_only_from_a_syn_ack_to_the_opening_syn() {
    let mut client = TcpWindow::new();
    let mut server = TcpWindow::new();
    client.on_opening_syn(1000, 64240, None);
    // Data "from the server" before any SYN-ACK: a spoofed 234, say.
    assert_eq!(
        on_segment(&mut server, &mut client, &data(7, 20, 1001)),
        WindowVerdict::Outside
    );
    let wrong = Segment {
        syn: true,
        ..data(5000, 0, 1002)
    };
    assert_eq!(
        on_segment(&mut server, &mut client, &wrong),
        WindowVerdict::Outside
    );
    assert!(!server.syn_seen());
    // A reset refusing the SYN counts, whatever its sequence number.
    assert_eq!(
        on_segment(&mut server, &mut client, &reset(0, Some(1001))),
        WindowVerdict::Inside
    );
    let syn_ack = Segment {
        syn: true,
        ..data(5000, 0, 1001)
    };
    assert_eq!(
        on_segment(&mut server, &mut client, &syn_ack),
        WindowVerdict::Inside
    );
    // Neither side scales: only one offered.
    assert_eq!((client.scale, server.scale), (0, 0));
}

#[test]
fn flags_no_tcp_sends_together_are_outside() {
    let (mut client, mut server) = handshake();
    let fin_without_ack = Segment {
        fin: true,
        ack: None,
        ..data(5001, 0, 0)
    };
    assert_eq!(
        on_segment(&mut server, &mut client, &fin_without_ack),
        WindowVerdict::Outside
    );
    let syn_rst = Segment {
        syn: true,
        ..reset(5001, None)
    };
    assert_eq!(
        on_segment(&mut server, &mut client, &syn_rst),
        WindowVerdict::Outside
    );
}

#[test]
fn the_window_scale_option_is_found() {
    // Linux's SYN: MSS, SACK permitted, timestamps, NOP, window scale 7.
    let mut options = [0u8; crate::MAX_TCP_OPTIONS];
    let linux = [
        2, 4, 5, 180, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    options[..linux.len()].copy_from_slice(&linux);
    assert_eq!(window_scale(&options, linux.len()), Some(7));
    assert_eq!(window_scale(&options, 16), None);
    options[19] = 30;
    assert_eq!(window_scale(&options, linux.len()), Some(MAX_WINDOW_SCALE));
    // A malformed length ends the walk.
    let mut broken = [0u8; crate::MAX_TCP_OPTIONS];
    broken[..4].copy_from_slice(&[8, 0, 3, 3]);
    assert_eq!(window_scale(&broken, 4), None);
}

proptest! {
    /// Any exchange of in-order segments each side's window allows, with retransmissions, stays
    /// inside, across the 2^32 wrap, and an exact reset at the end counts.
    #[test]
    fn legitimate_segments_stay_inside(
        client_isn in any::<u32>(),
        server_isn in any::<u32>(),
        scale in 0u8..=14,
        steps in proptest::collection::vec((any::<bool>(), 0u32..1460, any::<bool>()), 1..60),
    ) {
        let mut client = TcpWindow::new();
        let mut server = TcpWindow::new();
        client.on_opening_syn(client_isn, 65535, Some(scale));
        let syn_ack = Segment {
            seq: server_isn,
            payload_len: 0,
            syn: true,
            fin: false,
            rst: false,
            ack: Some(client_isn.wrapping_add(1)),
            window: 65535,
            offered_scale: Some(scale),
        };
        prop_assert_eq!(on_segment(&mut server, &mut client, &syn_ack), WindowVerdict::Inside);
        let mut next = [client_isn.wrapping_add(1), server_isn.wrapping_add(1)];
        let handshake_ack = Segment { window: 65535, ..data(next[0], 0, next[1]) };
        prop_assert_eq!(on_segment(&mut client, &mut server, &handshake_ack), WindowVerdict::Inside);
        for (from_client, len, retransmit) in steps {
            let (me, peer) = if from_client { (0, 1) } else { (1, 0) };
            // Each side acknowledges everything it was sent; a window of 65535 << scale is never
            // smaller than the 1460 bytes sent at a time.
            let seq = if retransmit { next[me].wrapping_sub(len) } else { next[me] };
            let segment = Segment { window: 65535, ..data(seq, len, next[peer]) };
            let verdict = if from_client {
                on_segment(&mut client, &mut server, &segment)
            } else {
                on_segment(&mut server, &mut client, &segment)
            };
            prop_assert_eq!(verdict, WindowVerdict::Inside);
            if !retransmit {
                next[me] = next[me].wrapping_add(len);
            }
        }
        prop_assert_eq!(
            on_segment(&mut server, &mut client, &reset(next[1], None)),
            WindowVerdict::Inside
        );
    }

    /// A blind reset or segment with a guessed sequence number far from the stream changes
    /// nothing; a reset not at the exact number never counts.
    #[test]
    fn blind_segments_change_nothing(seq in any::<u32>(), ack in any::<u32>(), len in 0u32..1460) {
        let (mut client, mut server) = handshake();
        let before = (client, server);
        let verdict = on_segment(&mut server, &mut client, &reset(seq, None));
        if seq != 5001 {
            prop_assert_ne!(verdict, WindowVerdict::Inside);
        }
        let far = seq.wrapping_sub(5001) > 1 << 24 && seq.wrapping_sub(5001) < u32::MAX - (1 << 24);
        if far {
            let verdict = on_segment(&mut server, &mut client, &data(seq, len, ack));
            prop_assert_eq!(verdict, WindowVerdict::Outside);
            prop_assert_eq!((client, server), before);
        }
    }
}
