use super::*;
use crate::{Command, CommandScanner, Reply, ReplyScanner};
use core::mem::{align_of, size_of};
use std::vec::Vec;

fn in_sync(start: u32, continues_line: bool) -> SegmentVerdict {
    SegmentVerdict::InSync(InSync {
        start,
        continues_line,
    })
}

/// One client segment through the tracker and the scanner, as the datapath handles it: the
/// commands of the lines that end in it.
fn client_segment(
    tracker: &mut LineTracker,
    scanner: &mut CommandScanner,
    seq: u32,
    payload: &[u8],
) -> Vec<Command> {
    let SegmentVerdict::InSync(in_sync) = tracker.on_segment(seq, payload) else {
        return Vec::new();
    };
    if !in_sync.continues_line {
        scanner.reset();
    }
    let mut commands = Vec::new();
    for &byte in &payload[in_sync.start as usize..] {
        if scanner.push(byte) {
            commands.push(scanner.command());
        }
    }
    commands
}

fn port(a: u8, b: u8, c: u8, d: u8, port: u16, start: u16, len: u16) -> Command {
    Command::Port {
        addr: core::net::SocketAddrV4::new(core::net::Ipv4Addr::new(a, b, c, d), port),
        field: crate::Span { start, len },
    }
}

// Framing

/// Content bytes with their index, and how the line ended if it did.
type FrameReport = (Vec<(u8, u16)>, Option<Result<u16, MalformedReason>>);

/// One line as the framing reports it.
fn frame(line: &[u8]) -> FrameReport {
    let mut framing = Framing::new();
    let mut content = Vec::new();
    for &byte in line {
        match framing.push(byte) {
            super::Framed::Content {
                held_cr,
                byte,
                index,
            } => {
                if held_cr {
                    content.push((b'\r', index - 1));
                }
                if let Some(byte) = byte {
                    content.push((byte, index));
                }
            }
            super::Framed::Beyond => {}
            super::Framed::End(end) => return (content, Some(end)),
        }
    }
    (content, None)
}

#[test]
fn framing_strips_crlf_or_lf() {
    assert_eq!(
        frame(b"AB\r\n"),
        (std::vec![(b'A', 0), (b'B', 1)], Some(Ok(2)))
    );
    assert_eq!(frame(b"AB\n"), (std::vec![(b'A', 0), (b'B', 1)], Some(Ok(2))));
    assert_eq!(frame(b"\n"), (std::vec![], Some(Ok(0))));
    assert_eq!(frame(b"\r\n"), (std::vec![], Some(Ok(0))));
}

#[test]
fn framing_passes_a_cr_not_followed_by_lf_as_content() {
    assert_eq!(
        frame(b"A\rB\r\r\n"),
        (
            std::vec![(b'A', 0), (b'\r', 1), (b'B', 2), (b'\r', 3)],
            Some(Ok(4))
        )
    );
}

#[test]
fn framing_reports_unterminated_and_too_long() {
    assert_eq!(frame(b"AB\r").1, None);
    let mut longest = std::vec![b'x'; MAX_LINE_LEN - 1];
    longest.push(b'\n');
    assert_eq!(frame(&longest).1, Some(Ok(MAX_LINE_LEN as u16 - 1)));
    let mut too_long = std::vec![b'x'; MAX_LINE_LEN];
    too_long.push(b'\n');
    let (content, end) = frame(&too_long);
    assert_eq!(end, Some(Err(MalformedReason::TooLong)));
    assert_eq!(content.len(), MAX_LINE_LEN);
}

// The stored structs

#[test]
fn stored_layouts_have_no_padding() {
    assert_eq!(size_of::<LineTracker>(), 8);
    assert_eq!(align_of::<LineTracker>(), 4);
    assert_eq!(size_of::<Framing>(), 4);
    // Every field listed: nothing left for the compiler to pad.
    assert_eq!(size_of::<crate::number::Decimal>(), 4 + 1 + 3);
    assert_eq!(size_of::<crate::address::Octets>(), 8 + 6 + 1 + 1);
    assert_eq!(size_of::<crate::address::Ipv6Text>(), 16 + 16 + 2 + 2 + 6 + 2);
    assert_eq!(size_of::<CommandScanner>(), 44 + 16 + 8 + 4 + 2 + 2 + 13 + 3);
    assert_eq!(align_of::<CommandScanner>(), 4);
    assert_eq!(size_of::<ReplyScanner>(), 16 + 8 + 4 + 2 + 2 + 2 + 4 + 2);
    assert_eq!(align_of::<ReplyScanner>(), 4);
}

#[test]
fn zeroed_state_is_the_initial_state() {
    assert_eq!(LineTracker::default(), LineTracker::new());
    assert!(!LineTracker::new().is_synced());
    assert_eq!(CommandScanner::default(), CommandScanner::new());
    assert_eq!(ReplyScanner::default(), ReplyScanner::new());
}

#[test]
fn unknown_state_byte_counts_as_unsynced() {
    let mut tracker = LineTracker {
        next_seq: 100,
        state: 0xee,
        _pad: [0xff; 3],
    };
    assert!(!tracker.is_synced());
    assert_eq!(tracker.on_segment(100, b"PASV\r\n"), SegmentVerdict::OutOfSync);
    // ...but the LF at its end resynchronises it.
    assert!(tracker.is_synced());
    assert_eq!(tracker.next_seq(), 106);
}

// In sync

#[test]
fn first_segment_after_syn_is_in_sync_at_a_line_start() {
    let mut tracker = LineTracker::new();
    tracker.on_syn(999);
    assert_eq!(tracker.on_segment(1000, b"USER anonymous\r\n"), in_sync(0, false));
    assert_eq!(tracker.next_seq(), 1016);
}

#[test]
fn consecutive_segments_stay_in_sync() {
    let mut tracker = LineTracker::starting_at(1);
    assert_eq!(tracker.on_segment(1, b"TYPE I\r\n"), in_sync(0, false));
    assert_eq!(tracker.on_segment(9, b"PASV\r\n"), in_sync(0, false));
}

#[test]
fn every_line_of_a_segment_is_scanned() {
    let mut tracker = LineTracker::starting_at(500);
    let mut scanner = CommandScanner::new();
    assert_eq!(
        client_segment(
            &mut tracker,
            &mut scanner,
            500,
            b"NOOP\r\nPORT 1,2,3,4,5,6\nPASV\r\n"
        ),
        [Command::Other, port(1, 2, 3, 4, 1286, 5, 11), Command::Pasv]
    );
}

#[test]
fn pure_ack_is_empty_and_changes_nothing() {
    let mut tracker = LineTracker::starting_at(10);
    assert_eq!(tracker.on_segment(10, b""), SegmentVerdict::Empty);
    assert_eq!(tracker.on_segment_len(99, 0, true), SegmentVerdict::Empty);
    assert_eq!(tracker, LineTracker::starting_at(10));
}

// Lines split over segments

#[test]
fn unterminated_last_line_makes_the_next_segment_a_continuation() {
    let mut tracker = LineTracker::starting_at(0);
    assert_eq!(tracker.on_segment(0, b"NOOP\r\nPORT 10,0,0"), in_sync(0, false));
    assert_eq!(tracker.on_segment(17, b",2,4,1\r\n"), in_sync(0, true));
    assert_eq!(tracker.on_segment(25, b"PASV\r\n"), in_sync(0, false));
}

#[test]
fn command_split_over_two_segments_is_parsed_once_whole() {
    let mut tracker = LineTracker::starting_at(1000);
    let mut scanner = CommandScanner::new();
    assert_eq!(
        client_segment(&mut tracker, &mut scanner, 1000, b"NOOP\r\nPORT 10,0,"),
        [Command::Other]
    );
    assert_eq!(
        client_segment(&mut tracker, &mut scanner, 1016, b"0,2,4,1\r\nPASV\r\n"),
        [port(10, 0, 0, 2, 1025, 5, 12), Command::Pasv]
    );
}

#[test]
fn line_over_three_segments() {
    let mut tracker = LineTracker::starting_at(0);
    let mut scanner = ReplyScanner::new();
    let parts: [&[u8]; 3] = [b"227 Entering ", b"Passive Mode ", b"(1,2,3,4,5,6)\r\n"];
    let mut seq = 0u32;
    let mut replies = Vec::new();
    for part in parts {
        let SegmentVerdict::InSync(in_sync) = tracker.on_segment(seq, part) else {
            panic!("not in sync");
        };
        assert_eq!(in_sync.continues_line, seq != 0);
        for &byte in part {
            if scanner.push(byte) {
                replies.push(scanner.reply());
            }
        }
        seq += part.len() as u32;
    }
    assert_eq!(replies.len(), 1);
    assert!(matches!(replies[0], Reply::Final { code: 227, .. }));
    assert_eq!(scanner.line_len(), 41);
}

#[test]
fn text_continuing_a_line_is_never_a_line_start() {
    // A file name that carries a PORT command in its middle arrives in its own segment.
    let mut tracker = LineTracker::starting_at(0);
    let mut scanner = CommandScanner::new();
    assert!(client_segment(&mut tracker, &mut scanner, 0, b"RETR x").is_empty());
    let commands = client_segment(&mut tracker, &mut scanner, 6, b"PORT 10,0,0,9,0,22\r\n");
    assert!(matches!(commands[..], [Command::Transfer { .. }]), "{commands:?}");
}

#[test]
fn too_long_line_is_malformed_and_the_next_line_parses() {
    let mut tracker = LineTracker::starting_at(0);
    let mut scanner = CommandScanner::new();
    let mut payload = Vec::from(&b"NOOP\r\n"[..]);
    payload.extend(std::iter::repeat_n(b'x', MAX_LINE_LEN + 10));
    payload.extend_from_slice(b"\r\nPASV\r\n");
    assert_eq!(
        client_segment(&mut tracker, &mut scanner, 0, &payload),
        [
            Command::Other,
            Command::Malformed(MalformedReason::TooLong),
            Command::Pasv
        ]
    );
}

// Retransmissions and overlaps

#[test]
fn exact_retransmission_is_reported_and_changes_nothing() {
    let mut tracker = LineTracker::starting_at(100);
    tracker.on_segment(100, b"PORT 10,0,0,2,4,1\r\n");
    let after = tracker;
    assert_eq!(
        tracker.on_segment(100, b"PORT 10,0,0,2,4,1\r\n"),
        SegmentVerdict::Retransmission
    );
    assert_eq!(tracker, after);
}

#[test]
fn partial_retransmission_inside_seen_bytes() {
    let mut tracker = LineTracker::starting_at(100);
    tracker.on_segment(100, b"NOOP\r\nPASV\r\n");
    assert_eq!(tracker.on_segment(106, b"PASV\r\n"), SegmentVerdict::Retransmission);
    assert_eq!(tracker.on_segment(50, b"old"), SegmentVerdict::Retransmission);
}

#[test]
fn retransmission_coalesced_with_new_data_starts_after_the_seen_bytes() {
    let mut tracker = LineTracker::starting_at(100);
    let mut scanner = CommandScanner::new();
    client_segment(&mut tracker, &mut scanner, 100, b"NOOP\r\n");
    assert_eq!(
        client_segment(&mut tracker, &mut scanner, 100, b"NOOP\r\nPASV\r\n"),
        [Command::Pasv]
    );
    assert_eq!(tracker.next_seq(), 112);
}

#[test]
fn overlap_that_continues_a_line_is_flagged() {
    let mut tracker = LineTracker::starting_at(0);
    tracker.on_segment(0, b"RETR ab");
    assert_eq!(tracker.on_segment(0, b"RETR abc\r\n"), in_sync(7, true));
}

// Gaps, out of order, resynchronisation

#[test]
fn segment_after_a_gap_is_out_of_sync() {
    let mut tracker = LineTracker::starting_at(100);
    assert_eq!(tracker.on_segment(110, b"PORT 1,2,3,4,5,6"), SegmentVerdict::OutOfSync);
    assert_eq!(tracker.next_seq(), 100);
    // The missing bytes arrive: in sync again.
    assert_eq!(tracker.on_segment(100, b"NOOP\r\n"), in_sync(0, false));
}

#[test]
fn gap_segment_ending_with_lf_resyncs_forward() {
    let mut tracker = LineTracker::starting_at(100);
    assert_eq!(tracker.on_segment(150, b"xx\r\n"), SegmentVerdict::OutOfSync);
    assert_eq!(tracker.next_seq(), 154);
    // The late segment that filled the gap is now behind the position: never parsed.
    assert_eq!(
        tracker.on_segment(100, b"PORT 10,0,0,2,4,1\r\n"),
        SegmentVerdict::Retransmission
    );
    assert_eq!(tracker.on_segment(154, b"PASV\r\n"), in_sync(0, false));
}

#[test]
fn resync_drops_a_half_read_line() {
    let mut tracker = LineTracker::starting_at(0);
    let mut scanner = CommandScanner::new();
    assert!(client_segment(&mut tracker, &mut scanner, 0, b"PORT 10,0,").is_empty());
    // Bytes 10..20 are lost; a later segment ends with LF and resynchronises.
    assert!(client_segment(&mut tracker, &mut scanner, 20, b"xx\r\n").is_empty());
    assert_eq!(
        client_segment(&mut tracker, &mut scanner, 24, b"PASV\r\n"),
        [Command::Pasv]
    );
}

#[test]
fn unsynced_tracker_never_parses_and_syncs_on_lf() {
    let mut tracker = LineTracker::new();
    assert_eq!(tracker.on_segment(7, b"PORT 10,0,0,2,4,1\r\n"), SegmentVerdict::OutOfSync);
    assert!(tracker.is_synced());
    assert_eq!(tracker.on_segment(26, b"PASV\r\n"), in_sync(0, false));
}

#[test]
fn unsynced_tracker_stays_unsynced_without_lf() {
    let mut tracker = LineTracker::new();
    assert_eq!(tracker.on_segment(7, b"PORT 10,0"), SegmentVerdict::OutOfSync);
    assert!(!tracker.is_synced());
    assert_eq!(tracker.on_segment(16, b",0,2,4,1\r\n"), SegmentVerdict::OutOfSync);
    assert!(tracker.is_synced());
}

#[test]
fn desync_forgets_the_position() {
    let mut tracker = LineTracker::starting_at(0);
    tracker.desync();
    assert_eq!(tracker.on_segment(0, b"PASV\r\n"), SegmentVerdict::OutOfSync);
}

// Sequence wrap-around

#[test]
fn lines_are_tracked_across_sequence_wrap() {
    let mut tracker = LineTracker::new();
    tracker.on_syn(u32::MAX - 4);
    assert_eq!(tracker.next_seq(), u32::MAX - 3);
    assert_eq!(tracker.on_segment(u32::MAX - 3, b"NOOP\r\n"), in_sync(0, false));
    assert_eq!(tracker.next_seq(), 2);
    assert_eq!(tracker.on_segment(2, b"PASV\r\n"), in_sync(0, false));
}

#[test]
fn retransmission_across_wrap_is_recognised() {
    let mut tracker = LineTracker::starting_at(u32::MAX - 1);
    tracker.on_segment(u32::MAX - 1, b"NOOP\r\n");
    assert_eq!(tracker.next_seq(), 4);
    assert_eq!(
        tracker.on_segment(u32::MAX - 1, b"NOOP\r\n"),
        SegmentVerdict::Retransmission
    );
    assert_eq!(tracker.on_segment(10, b"x\r\n"), SegmentVerdict::OutOfSync);
    assert_eq!(tracker.next_seq(), 13);
}

#[test]
fn resync_never_moves_backwards_across_wrap() {
    let mut tracker = LineTracker::starting_at(5);
    // Ends at 3, which is before 5 even though the segment starts "above" it numerically.
    assert_eq!(
        tracker.on_segment(u32::MAX - 10, b"0123456789abcd\n"),
        SegmentVerdict::Retransmission
    );
    assert_eq!(tracker.next_seq(), 5);
}

#[test]
fn on_segment_len_tracks_a_segment_by_its_length_and_last_byte() {
    let mut tracker = LineTracker::starting_at(0);
    assert_eq!(tracker.on_segment_len(0, 2000, true), in_sync(0, false));
    assert_eq!(tracker.next_seq(), 2000);
    assert_eq!(tracker.on_segment_len(2000, 10, false), in_sync(0, false));
    assert_eq!(tracker.on_segment_len(2010, 10, true), in_sync(0, true));
}

// Scanners across lines

#[test]
fn scanner_reports_each_line_once_and_restarts() {
    let mut scanner = CommandScanner::new();
    let mut commands = Vec::new();
    for &byte in b"PASV\r\nQUIT\n" {
        if scanner.push(byte) {
            commands.push((scanner.command(), scanner.line_len()));
        }
    }
    assert_eq!(commands, [(Command::Pasv, 6), (Command::Quit, 5)]);
}

#[test]
fn scanner_mid_line_has_no_command_yet() {
    let mut scanner = CommandScanner::new();
    for &byte in b"PORT 1,2" {
        assert!(!scanner.push(byte));
    }
    assert_eq!(
        scanner.command(),
        Command::Malformed(MalformedReason::Unterminated)
    );
    let mut replies = ReplyScanner::new();
    replies.push(b'2');
    assert_eq!(
        replies.reply(),
        Reply::Malformed(MalformedReason::Unterminated)
    );
}

#[test]
fn a_word_without_line_end_is_skippable_and_one_with_an_lf_anywhere_is_not() {
    assert!(skippable_word(*b"drwxr-xr"));
    assert!(skippable_word(*b"a\rb c\r d"), "a CR followed by more text is content");
    for at in 0..8 {
        let mut word = *b"xxxxxxxx";
        word[at] = b'\n';
        assert!(!skippable_word(word), "LF at {at}");
    }
    assert!(!skippable_word(*b"xxxxxxx\r"), "a CR last may start the terminator");
    // Bytes next to LF in value, which a sloppy test on the whole word could take for one.
    assert!(skippable_word([0x0b, 0x09, 0x8a, 0x0a ^ 0x80, 0x1a, 0x00, 0xff, 0x0b]));
}
