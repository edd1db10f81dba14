//! Drives a masqueraded control connection through the datapath's per-segment logic as the eBPF
//! client and server stages run it (ftp-ebpf's scan.rs, examine.rs, held.rs, rewrite.rs): the line
//! trackers, the scanners fed byte by byte, the session state machine, the rewrite of PORT/EPRT
//! with `format_rewrite`, the hold of an address cut at a segment end (`ftp_common::hold`), its
//! give-back, the replay on retransmissions and the sequence adjustment (`SeqAdjust`). Or, as a
//! NAT64 session (an IPv6 client, an IPv4 server, the NAT64 ALG on), the ALG's whole-line
//! replacements of the client's EPRT, EPSV, EPSV ALL and ALGS lines, held from the line's first
//! byte when a segment ends inside one (the server's lines the ALG replaces are not modelled: only
//! the client's stream is checked). The
//! decisions are ftp-common's own functions; what is mirrored here is only the order the stages
//! call them in, and the packet edit (a splice of the payload).
//!
//! The server end is modelled as a TCP receiver: each forwarded segment lands at its adjusted
//! sequence number. Checked:
//! - a byte position is never given two different values (a retransmission gets the same bytes);
//! - after the client finally sends what the receiver has not acknowledged (its ACK mapped back
//!   with `backward_ack`), the receiver holds the whole stream, and it re-parses line by line to
//!   the client's lines, except PORT/EPRT addresses rewritten to the public address and a window
//!   port (or to the refusal form when the window is empty), and in a NAT64 session the lines
//!   the ALG replaced (EPRT by a PORT of the pool address and a window port, EPSV by PASV, EPSV
//!   ALL and ALGS by NOOP);
//! - `forward_seq` is monotonic over the stream and `backward_ack` inverts it at segment starts;
//! - the session, fed the same lines whole in the same order (and told of the same rewrites that
//!   were given up), gives the same verdicts: segmentation, retransmission and holds change
//!   nothing in what the state machine sees.
//!
//! Input layout: byte 0 is the policy (bit 0 privileged ports allowed, bits 2–4 expectation limit,
//! bit 5 an empty window, bit 6 a NAT64 session, bit 7 its EPSV passed as it is rather than sent
//! as PASV; the pool address is the public one, and with an empty window an EPRT passes as it
//! is), then segments `header, length, payload[length]`: header bit 0 is the
//! direction (0 client, 1 server), bits 1–2 the kind (0 the payload's bytes, new, in order, and
//! if bit 3 is set lost after the datapath and resent after the next segment; 1 the previous segment again; 2 the previous segment
//! again with the segments after it merged in, through `length` bytes more; 3 the segments from
//! the one `header >> 3` back, through `length` bytes), bit 7 reports one expectation closed
//! first. A resent segment is made of whole segments sent before, as Linux's are (merged after a
//! timeout or not).
//!
//! Found by this target and left out of it (each places bytes wrongly, and the datapath does not
//! count it): a resent segment that starts at a rewritten one and carries new bytes is not given
//! the rewrite again (it is in sync, only its new bytes are scanned); an acknowledgement inside a
//! rewritten segment, before its field (the segment was split, or resent shorter after it was
//! lost), maps past it, as in Linux's `nf_ct_seqadj`; a resent segment spanning two rewrites
//! (other than a cut and its completion) gets only the last one repeated, and one older than the
//! last two corrections is placed with the wrong offset (harmless once acknowledged: the
//! receiver drops it).
#![no_main]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use ftp_common::maps::ip;

use ftp_common::{
    ActiveKind, ClientVerdict, Command, CommandScanner, EpsvArg, LineTracker, NOOP_LINE, PASV_LINE,
    Policy, PolicyContext, PublicAddress, ReplyScanner, SegmentVerdict, SeqAdjust, ServerVerdict,
    Session, format_rewrite, hold,
    maps::{HELD_FIELD_MAX, HeldField, RewriteRecord, hold_state, rewrite_kind},
    parse_command,
    seqadj::seq_after,
};
use libfuzzer_sys::fuzz_target;

const CLIENT: usize = 0;
const SERVER: usize = 1;
/// Initial sequence numbers close to 2^32 so that sessions cross the wrap.
const ISN: [u32; 2] = [u32::MAX - 200, 0x7fff_fff0];
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
/// A NAT64 session's client.
const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The first window port handed out; each rewrite takes the next.
const WINDOW_LOW: u16 = 40000;
/// The datapath's scratch area (ftp-ebpf's SCRATCH_LEN): a longer segment is never rewritten.
const SCRATCH_LEN: usize = ftp_common::MAX_LINE_LEN;
/// Whether header bit 3 loses segments. Off: a lost segment resent after a later rewrite meets the
/// gaps the module documentation lists within seconds of fuzzing, and would hide everything else.
const LOSSES: bool = false;
/// ftp-ebpf's MAX_LINE_PASSES: lines examined per segment.
const MAX_LINE_PASSES: usize = 26;

/// What the session saw, in order, to replay on whole lines.
#[derive(Debug)]
enum Seen {
    Line(usize, Vec<u8>),
    /// `expectation_closed` after a rewrite that was given up (or the header's report).
    Closed,
    /// `alg_line_passed` after a whole-line replacement that was given up.
    AlgLinePassed,
}

/// The datapath's state for one control connection (the parts of `SessionEntry` the stages use).
struct Datapath {
    ctx: PolicyContext,
    /// A NAT64 session: whole lines may be replaced.
    nat64: bool,
    window_empty: bool,
    next_port: u16,
    session: Session,
    trackers: [LineTracker; 2],
    commands: CommandScanner,
    replies: ReplyScanner,
    client_seq: SeqAdjust,
    client_rewrite: RewriteRecord,
    held: HeldField,
    /// Lines the session saw (line bytes collected alongside the scanner).
    seen: Vec<Seen>,
    lines: [Vec<u8>; 2],
    verdicts: Vec<String>,
    /// A segment had more lines than the stage's passes: lines were lost on purpose.
    partly_examined: bool,
    /// Where the client's stream was corrected (sender's space), in order.
    corrections: Vec<u32>,
    /// Retransmissions that could not be given the bytes sent before (the datapath counts them
    /// in `RewritesSkipped`; a receiver keeps its first copy).
    replays_skipped: u32,
}

/// A rewrite the client scan asked for (the datapath's `Scan.rewrite_*`).
#[derive(Clone, Copy)]
struct Request {
    kind: u8,
    delimiter: u8,
    field_off: u16,
    field_len: u16,
    /// The verdict opened an expectation (closed again if the rewrite is given up).
    opens: bool,
}

impl Datapath {
    fn new(policy_byte: u8) -> Self {
        let mut trackers = [LineTracker::new(), LineTracker::new()];
        trackers[CLIENT].on_syn(ISN[CLIENT]);
        trackers[SERVER].on_syn(ISN[SERVER]);
        let nat64 = policy_byte & 0x40 != 0;
        Self {
            ctx: PolicyContext {
                client: ip::from_ip(if nat64 {
                    IpAddr::V6(CLIENT_ADDR6)
                } else {
                    IpAddr::V4(CLIENT_ADDR)
                }),
                server: ip::from_ip(IpAddr::V4(SERVER_ADDR)),
                policy: Policy {
                    allow_privileged_data_ports: policy_byte & 1 != 0,
                    passive_address_must_match_server: true,
                    max_outstanding_expectations: (policy_byte >> 2) & 7,
                    nat64_alg: nat64,
                    epsv_as_pasv: nat64 && policy_byte & 0x80 == 0,
                    ..Policy::new()
                },
            },
            nat64,
            window_empty: policy_byte & 0x20 != 0,
            next_port: WINDOW_LOW,
            session: Session::new(),
            trackers,
            commands: CommandScanner::new(),
            replies: ReplyScanner::new(),
            client_seq: SeqAdjust::new(),
            client_rewrite: RewriteRecord::default(),
            held: HeldField::new(),
            seen: Vec::new(),
            lines: [Vec::new(), Vec::new()],
            verdicts: Vec::new(),
            partly_examined: false,
            replays_skipped: 0,
            corrections: Vec::new(),
        }
    }

    fn expectation_closed(&mut self) {
        self.session.expectation_closed();
        self.seen.push(Seen::Closed);
    }

    /// A rewrite asked for was given up: what its verdict opened or requested is undone.
    fn rewrite_given_up(&mut self, request: Request) {
        if request.opens {
            self.expectation_closed();
        } else {
            self.session.alg_line_passed();
            self.seen.push(Seen::AlgLinePassed);
        }
    }

    /// A server segment: followed, never changed (masquerading rewrites only the client's).
    fn server_segment(&mut self, seq: u32, payload: &[u8]) {
        let verdict = self.trackers[SERVER].on_segment(seq, payload);
        let in_sync = match verdict {
            SegmentVerdict::InSync(in_sync) => in_sync,
            SegmentVerdict::OutOfSync => {
                self.replies.reset();
                self.lines[SERVER].clear();
                self.session.server_lines_lost();
                return;
            }
            _ => return,
        };
        if !in_sync.continues_line {
            self.replies.reset();
            self.lines[SERVER].clear();
        }
        let mut examined = 0;
        let bytes = &payload[in_sync.start as usize..];
        let mut i = 0;
        while i < bytes.len() {
            // The server stage passes over aligned 8-byte words of lines the scanner ignores.
            if self.replies.skipping()
                && i % 8 == 0
                && let Some(word) = bytes.get(i..i + 8)
                && ftp_common::skippable_word(word.try_into().unwrap())
            {
                self.replies.skip(8);
                self.lines[SERVER].extend_from_slice(word);
                i += 8;
                continue;
            }
            let byte = bytes[i];
            i += 1;
            self.lines[SERVER].push(byte);
            if !self.replies.push(byte) {
                continue;
            }
            let line = core::mem::take(&mut self.lines[SERVER]);
            if !self.session.acts_on_reply(self.replies.shape()) {
                continue;
            }
            let verdict = self
                .session
                .on_server_reply(self.replies.reply(), &self.ctx);
            self.verdicts.push(format!("{verdict:?}"));
            self.seen.push(Seen::Line(SERVER, line));
            examined += 1;
            if examined >= MAX_LINE_PASSES && i < bytes.len() {
                self.partly_examined = true;
                return;
            }
        }
    }

    /// A client segment: what the client and rewrite stages do with it. Returns the payload as
    /// forwarded and its sequence number on the wire, or `None` if it is dropped.
    fn client_segment(&mut self, seq: u32, payload: &[u8]) -> Option<(u32, Vec<u8>)> {
        if self.held.state == hold_state::HOLDING && seq_after(seq, self.held.next_seq()) {
            return None;
        }
        let verdict = self.trackers[CLIENT].on_segment(seq, payload);
        let in_sync = match verdict {
            SegmentVerdict::Retransmission => return Some(self.replay(seq, payload)),
            SegmentVerdict::InSync(in_sync) => in_sync,
            SegmentVerdict::OutOfSync => {
                self.commands.reset();
                self.lines[CLIENT].clear();
                return Some(self.forward(seq, payload.to_vec()));
            }
            SegmentVerdict::Empty => return Some(self.forward(seq, payload.to_vec())),
        };
        if !in_sync.continues_line {
            self.commands.reset();
            self.lines[CLIENT].clear();
        }
        let held_len = self.stage_held(in_sync.start, seq);
        // The scan buffer: held bytes, then the payload.
        let mut buf = self.held.bytes[..held_len].to_vec();
        buf.extend_from_slice(payload);
        let start = in_sync.start as usize + held_len;
        let field_floor = in_sync.start as usize;
        let end = buf.len();
        let mut request: Option<Request> = None;
        let mut examined = 0;
        for (i, &byte) in buf.iter().enumerate().take(end).skip(start) {
            self.lines[CLIENT].push(byte);
            if !self.commands.push(byte) {
                continue;
            }
            let line = core::mem::take(&mut self.lines[CLIENT]);
            let command = self.commands.command();
            assert_eq!(command, parse_command(&line));
            let verdict = self.session.on_client_command(command, &self.ctx);
            self.verdicts.push(format!("{verdict:?}"));
            self.seen.push(Seen::Line(CLIENT, line));
            let line_len = self.commands.line_len();
            let line_off = (i + 1) as i64 - i64::from(line_len);
            // The whole line but its LF, for the ALG's replacements.
            let whole_line = ftp_common::Span {
                start: 0,
                len: line_len - 1,
            };
            let wanted = match verdict {
                ClientVerdict::OpenActive {
                    addr: SocketAddr::V4(_),
                    field,
                    kind: ActiveKind::Port,
                } => Some((rewrite_kind::PORT, 0, field, true)),
                ClientVerdict::OpenActive {
                    addr: SocketAddr::V4(_),
                    field,
                    kind: ActiveKind::Eprt { delimiter },
                } => Some((rewrite_kind::EPRT, delimiter, field, true)),
                ClientVerdict::OpenActive {
                    kind: ActiveKind::EprtAsPort,
                    ..
                } => Some((rewrite_kind::EPRT_AS_PORT, 0, whole_line, true)),
                // An IPv6 EPRT without the ALG: this datapath translates no IPv6 address.
                ClientVerdict::OpenActive { .. } => {
                    self.expectation_closed();
                    None
                }
                ClientVerdict::EpsvAsPasv => {
                    Some((rewrite_kind::EPSV_AS_PASV, 0, whole_line, false))
                }
                ClientVerdict::AnsweredByAlg(_) => {
                    Some((rewrite_kind::LOCAL_COMMAND, 0, whole_line, false))
                }
                _ => None,
            };
            if let Some((kind, delimiter, field, opens)) = wanted {
                // examine.rs's request_rewrite (offsets as u32 there: a line begun in an
                // earlier segment has a "negative" start, which wraps above the end).
                let field_off = line_off + i64::from(field.start);
                let wanted = Request {
                    kind,
                    delimiter,
                    field_off: field_off as u16,
                    field_len: field.len,
                    opens,
                };
                if request.is_none() && field_off >= field_floor as i64 && field_off < end as i64 {
                    request = Some(wanted);
                } else {
                    self.rewrite_given_up(wanted);
                }
            }
            examined += 1;
            if examined >= MAX_LINE_PASSES && i + 1 < end {
                self.partly_examined = true;
                break;
            }
        }
        // held.rs's after_client_scan.
        if held_len != 0 {
            let completes = request.is_some_and(|r| {
                hold::completes_hold(r.kind, r.field_off, r.field_len, held_len as u16)
            });
            if completes {
                let mut r = request.unwrap();
                r.field_len -= held_len as u16;
                return Some(self.rewrite(seq, payload, r, true));
            }
            if let Some(r) = request {
                self.rewrite_given_up(r);
            }
            return Some(self.restore(seq, payload));
        }
        if let Some(r) = request {
            return Some(self.rewrite(seq, payload, r, false));
        }
        if !self.session.is_encrypted()
            && let Some((off, len)) =
                hold::cut_at_segment_end(&self.commands, self.nat64, start as u32, end as u32)
        {
            return Some(self.cut(seq, payload, off, len));
        }
        Some(self.forward(seq, payload.to_vec()))
    }

    /// held.rs's stage_held: how many held bytes go in front of this segment's scan.
    fn stage_held(&mut self, new_bytes_start: u32, seq: u32) -> usize {
        if self.held.state != hold_state::HOLDING {
            return 0;
        }
        if new_bytes_start != 0 {
            // given_back_in_place: the cut segment was resent merged with this one.
            self.held.state = hold_state::RELEASED;
            if self
                .client_seq
                .record(self.held.next_seq(), i32::from(self.held.len))
            {
                self.corrections.push(self.held.next_seq());
            }
            return 0;
        }
        if seq != self.held.next_seq() {
            self.held.state = hold_state::RELEASED;
            return 0;
        }
        usize::from(self.held.len).min(HELD_FIELD_MAX)
    }

    fn forward(&self, seq: u32, payload: Vec<u8>) -> (u32, Vec<u8>) {
        (self.client_seq.forward_seq(seq), payload)
    }

    /// rewrite.rs's rewrite; on failure, a hold it was to complete is given back.
    fn rewrite(
        &mut self,
        seq: u32,
        payload: &[u8],
        r: Request,
        completes_hold: bool,
    ) -> (u32, Vec<u8>) {
        let wire_seq = self.client_seq.forward_seq(seq);
        let done = (|| {
            if payload.len() > SCRATCH_LEN || !self.client_seq.can_record(seq) {
                return None;
            }
            // Only PORT and EPRT take a window port; with none free, an EPRT the ALG would send
            // as PORT passes as it is (the IPv4 server refuses it).
            let takes_port = matches!(
                r.kind,
                rewrite_kind::PORT | rewrite_kind::EPRT | rewrite_kind::EPRT_AS_PORT
            );
            if self.window_empty && r.kind == rewrite_kind::EPRT_AS_PORT {
                return None;
            }
            let mut record = RewriteRecord {
                seq,
                payload_len: payload.len() as u16,
                field_off: r.field_off,
                field_len: r.field_len,
                public_port: 0,
                kind: r.kind,
                delimiter: r.delimiter,
                _pad: [0; 2],
            };
            if takes_port && self.window_empty {
                record.kind = if r.kind == rewrite_kind::PORT {
                    rewrite_kind::PORT_REFUSED
                } else {
                    rewrite_kind::EPRT_REFUSED
                };
            } else if takes_port {
                record.public_port = self.next_port;
            }
            let (out, delta) = splice(payload, &record, &self.held)?;
            if takes_port && self.window_empty {
                self.session.expectation_closed();
                self.seen.push(Seen::Closed);
            } else if takes_port {
                self.next_port += 1;
            }
            assert!(self.client_seq.record(seq, delta));
            self.corrections.push(seq);
            self.client_rewrite = record;
            Some(out)
        })();
        match done {
            Some(out) => {
                if completes_hold {
                    self.held.state = hold_state::RELEASED;
                }
                (wire_seq, out)
            }
            None => {
                self.rewrite_given_up(r);
                if completes_hold {
                    self.restore(seq, payload)
                } else {
                    (wire_seq, payload.to_vec())
                }
            }
        }
    }

    /// held.rs's splice_held for a CUT request.
    fn cut(&mut self, seq: u32, payload: &[u8], off: u16, len: u16) -> (u32, Vec<u8>) {
        let wire_seq = self.client_seq.forward_seq(seq);
        if !self.client_seq.can_record(seq) || len == 0 || usize::from(len) > HELD_FIELD_MAX {
            return (wire_seq, payload.to_vec());
        }
        let record = RewriteRecord {
            seq,
            payload_len: payload.len() as u16,
            field_off: off,
            field_len: len,
            kind: rewrite_kind::CUT,
            ..RewriteRecord::default()
        };
        let Some((out, delta)) = splice(payload, &record, &self.held) else {
            return (wire_seq, payload.to_vec());
        };
        let off = usize::from(off);
        self.held.bytes = [0; HELD_FIELD_MAX];
        self.held.bytes[..usize::from(len)].copy_from_slice(&payload[off..off + usize::from(len)]);
        self.held.len = len as u8;
        assert!(self.client_seq.record(seq, delta));
        self.corrections.push(seq);
        self.held.seq = seq;
        self.held.payload_len = payload.len() as u16;
        self.held.off = off as u16;
        self.held.state = hold_state::HOLDING;
        (wire_seq, out)
    }

    /// held.rs's splice_held for a RESTORE request: the held bytes go back in front.
    fn restore(&mut self, seq: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let wire_seq = self.client_seq.forward_seq(seq);
        if self.held.state != hold_state::HOLDING {
            return (wire_seq, payload.to_vec());
        }
        self.held.state = hold_state::RELEASED;
        if !self.client_seq.can_record(seq) || seq != self.held.next_seq() {
            panic!("held bytes lost: the segment after a cut starts where it ended");
        }
        let record = RewriteRecord {
            seq,
            payload_len: payload.len() as u16,
            public_port: self.client_rewrite.public_port,
            kind: rewrite_kind::RESTORE,
            ..RewriteRecord::default()
        };
        let (out, delta) = splice(payload, &record, &self.held).expect("held bytes fit");
        assert!(self.client_seq.record(seq, delta));
        self.corrections.push(seq);
        self.client_rewrite = record;
        (wire_seq, out)
    }

    /// scan.rs's on_retransmission and rewrite.rs's replay.
    fn replay(&mut self, seq: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let wire_seq = self.client_seq.forward_seq(seq);
        let unchanged = (wire_seq, payload.to_vec());
        // Where the stream was corrected inside this segment that the datapath cannot repeat:
        // it repeats the direction's last rewrite and the hold (cut and completion or
        // give-back); an older rewrite in a segment resent after a newer one is a known gap (see
        // the module documentation), left out of the checks.
        let end = seq.wrapping_add(payload.len() as u32);
        let lead = self.held.seq.wrapping_sub(seq) as usize;
        let reaches_cut_segment = self.held.state != hold_state::NONE
            && (seq == self.held.seq || (seq_after(self.held.seq, seq) && lead < payload.len()));
        let repeatable = if reaches_cut_segment {
            [self.held.seq, self.held.next_seq()]
        } else {
            [self.client_rewrite.seq; 2]
        };
        let unrepeatable = self
            .corrections
            .iter()
            .any(|&at| !seq_after(seq, at) && seq_after(end, at) && !repeatable.contains(&at));
        if unrepeatable {
            self.replays_skipped += 1;
            return unchanged;
        }
        let record =
            hold::retransmission_record(&self.held, &self.client_rewrite, seq, payload.len());
        let Some(record) = record else {
            self.replays_skipped += 1;
            return unchanged;
        };
        let record = match hold::replay_record(&record, seq, payload.len()) {
            hold::Replay::Unchanged => return unchanged,
            hold::Replay::CannotRepeat => {
                self.replays_skipped += 1;
                return unchanged;
            }
            hold::Replay::Rewrite(record) => record,
        };
        match splice(payload, &record, &self.held) {
            Some((out, _)) => (wire_seq, out),
            None => {
                self.replays_skipped += 1;
                unchanged
            }
        }
    }
}

/// rewrite.rs's splice on a payload: the field replaced by the record's text (nothing for a cut,
/// the held bytes for a restore). The new payload and its length change.
fn splice(payload: &[u8], record: &RewriteRecord, held: &HeldField) -> Option<(Vec<u8>, i32)> {
    let off = usize::from(record.field_off);
    let end = off + usize::from(record.field_len);
    if end > payload.len() || payload.len() > SCRATCH_LEN {
        return None;
    }
    let mut text = [0u8; ftp_common::MAX_FIELD_LEN];
    let len = match record.kind {
        rewrite_kind::CUT => 0,
        rewrite_kind::RESTORE => held.copy_into(&mut text)?,
        _ => format_rewrite(record, PublicAddress::V4(PUBLIC), &mut text)?,
    };
    let mut out = payload[..off].to_vec();
    out.extend_from_slice(&text[..len]);
    out.extend_from_slice(&payload[end..]);
    let delta = out.len() as i32 - payload.len() as i32;
    Some((out, delta))
}

/// The server's TCP receiver: bytes by offset from its first expected sequence number.
struct Receiver {
    first: u32,
    bytes: Vec<Option<u8>>,
}

impl Receiver {
    /// A segment arrives; `exact` unless it is a retransmission the datapath could not give the
    /// same bytes, which it counts (`RewritesSkipped`): such a segment is taken as lost here, so
    /// that the checks hold the datapath to everything else.
    fn take(&mut self, wire_seq: u32, payload: &[u8], exact: bool) {
        if !exact {
            return;
        }
        // Bytes before the first missing one were taken already and acknowledged: a receiver
        // drops them unread (the sequence adjustment keeps the last two corrections only, so a
        // segment older than them may be placed wrongly; it is never read).
        let acked = self.bytes.iter().take_while(|b| b.is_some()).count();
        let offset = i64::from(wire_seq.wrapping_sub(self.first) as i32);
        for (i, &byte) in payload.iter().enumerate() {
            let position = offset + i as i64;
            if position < acked as i64 {
                continue;
            }
            let position = position as usize;
            if self.bytes.len() <= position {
                self.bytes.resize(position + 1, None);
            }
            let slot = &mut self.bytes[position];
            if let Some(old) = *slot {
                assert_eq!(old, byte, "byte {position} given two values");
            }
            *slot = Some(byte);
        }
    }

    /// The acknowledgement: the first missing byte.
    fn ack(&self) -> u32 {
        let have = self.bytes.iter().take_while(|b| b.is_some()).count();
        self.first.wrapping_add(have as u32)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&policy_byte, mut rest)) = data.split_first() else {
        return;
    };
    let mut datapath = Datapath::new(policy_byte);
    // Each direction's whole stream, as its sender wrote it.
    let mut streams: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut previous: [(usize, usize); 2] = [(0, 0); 2];
    // Where the segments of new bytes of each direction began and ended, in order: a sender
    // resends whole segments, merged or not (as Linux does), so resent ones run between these.
    let mut boundaries: [Vec<usize>; 2] = [vec![0], vec![0]];
    let mut receiver = Receiver {
        first: ISN[CLIENT].wrapping_add(1),
        bytes: Vec::new(),
    };
    let mut starts = Vec::new();
    let mut lost_segment: [Option<(u32, Vec<u8>)>; 2] = [None, None];

    while let [header, length, tail @ ..] = rest {
        let (new_bytes, remaining) = tail.split_at(usize::from(*length).min(tail.len()));
        rest = remaining;
        let direction = usize::from(header & 1);
        if header & 0x80 != 0 {
            datapath.expectation_closed();
        }
        let stream = &mut streams[direction];
        let sent = stream.len();
        // Offsets in the direction's stream of the segment to send.
        // Resent segments hold only bytes sent before, as Linux's retransmissions (collapsed or
        // not) do; see the module documentation.
        let boundary_from = |at: usize| -> usize {
            boundaries[direction]
                .iter()
                .copied()
                .find(|&b| b >= at)
                .unwrap_or(sent)
        };
        let (from, to) = match (header >> 1) & 3 {
            0 => {
                stream.extend_from_slice(new_bytes);
                boundaries[direction].push(sent + new_bytes.len());
                (sent, sent + new_bytes.len())
            }
            1 => previous[direction],
            2 => {
                let (from, to) = previous[direction];
                (from, boundary_from(to + new_bytes.len()))
            }
            _ => {
                let starts = &boundaries[direction];
                let back = usize::from(header >> 3) % starts.len();
                let from = starts[starts.len() - 1 - back];
                (from, boundary_from(from + new_bytes.len().max(1)))
            }
        };
        previous[direction] = (from, to);
        if from == to {
            continue;
        }
        let seq = ISN[direction].wrapping_add(1).wrapping_add(from as u32);
        let payload = streams[direction][from..to].to_vec();
        if direction == SERVER {
            datapath.server_segment(seq, &payload);
        } else {
            // New bytes with header bit 3 set are lost on the way to the server: the client
            // resends them after its next segment (a fast retransmit), which keeps the
            // corrections in flight within the two `SeqAdjust` remembers.
            let lost = LOSSES && (header >> 1) & 3 == 0 && header & 8 != 0;
            let resend = lost_segment[direction].take();
            send_client(
                &mut datapath,
                &mut receiver,
                &mut starts,
                seq,
                &payload,
                !lost,
            );
            if let Some((seq, payload)) = resend {
                send_client(
                    &mut datapath,
                    &mut receiver,
                    &mut starts,
                    seq,
                    &payload,
                    true,
                );
            }
            if lost {
                lost_segment[direction] = Some((seq, payload));
            }
        }
    }
    if let Some((seq, payload)) = lost_segment[CLIENT].take() {
        send_client(
            &mut datapath,
            &mut receiver,
            &mut starts,
            seq,
            &payload,
            true,
        );
    }

    // The client resends from what the receiver acknowledged until all of it is there.
    let stream_end = ISN[CLIENT]
        .wrapping_add(1)
        .wrapping_add(streams[CLIENT].len() as u32);
    for _ in 0..streams[CLIENT].len() + 2 {
        let seq = datapath.client_seq.backward_ack(receiver.ack());
        let from = seq.wrapping_sub(ISN[CLIENT].wrapping_add(1)) as usize;
        if !seq_after(stream_end, seq) {
            assert_eq!(
                seq, stream_end,
                "the receiver acknowledged bytes never sent"
            );
            break;
        }
        // One segment as first sent (the acknowledgement falls on a boundary; if not, up to
        // the next one).
        let to = boundaries[CLIENT]
            .iter()
            .copied()
            .find(|&b| b > from)
            .unwrap_or(streams[CLIENT].len());
        let payload = streams[CLIENT][from..to].to_vec();
        let skipped = datapath.replays_skipped;
        let (wire_seq, out) = datapath
            .client_segment(seq, &payload)
            .expect("a segment at the acknowledged position is forwarded");
        if skipped != datapath.replays_skipped {
            // Counted by the datapath (`RewritesSkipped`): a give-back whose held bytes a later
            // cut replaced cannot be repeated, and the stream cannot be completed.
            return;
        }
        starts.push(seq);
        receiver.take(wire_seq, &out, true);
    }
    let received: Vec<u8> = receiver
        .bytes
        .iter()
        .map(|b| b.expect("every byte received"))
        .collect();

    check_seqadj(&datapath.client_seq, &starts);
    if datapath.partly_examined {
        return;
    }
    check_rewritten_stream(&streams[CLIENT], &received, datapath.nat64);
    check_same_verdicts(&datapath);
});

/// One client segment through the datapath and, unless `delivered` is false, to the receiver.
fn send_client(
    datapath: &mut Datapath,
    receiver: &mut Receiver,
    starts: &mut Vec<u32>,
    seq: u32,
    payload: &[u8],
    delivered: bool,
) {
    let skipped = datapath.replays_skipped;
    if let Some((wire_seq, out)) = datapath.client_segment(seq, payload) {
        starts.push(seq);
        if delivered {
            receiver.take(wire_seq, &out, datapath.replays_skipped == skipped);
        }
    }
}

/// `forward_seq` keeps the order of the segment starts it may be asked about, and `backward_ack`
/// takes each back (to the first of those a whole cut gave the same image).
fn check_seqadj(adjust: &SeqAdjust, starts: &[u32]) {
    let base = ISN[CLIENT].wrapping_add(1);
    let mut sorted: Vec<u32> = starts.to_vec();
    sorted.sort_by_key(|s| s.wrapping_sub(base));
    sorted.dedup();
    // Only the positions after the earliest correction kept are mapped exactly.
    sorted.retain(|&s| {
        adjust.is_identity() || seq_after(s, adjust.earlier_pos) || s == adjust.earlier_pos
    });
    for pair in sorted.windows(2) {
        let (a, b) = (adjust.forward_seq(pair[0]), adjust.forward_seq(pair[1]));
        assert!(!seq_after(a, b), "forward_seq reorders {pair:?}");
    }
    for &s in &sorted {
        let image = adjust.forward_seq(s);
        // A segment whose whole payload was held forwards none of it: its start and the next
        // segment's have one image, which goes back to the first (the held bytes are not
        // acknowledged until they are sent).
        let first = sorted
            .iter()
            .copied()
            .find(|&t| adjust.forward_seq(t) == image)
            .unwrap_or(s);
        assert_eq!(adjust.backward_ack(image), first);
    }
}

/// The received stream's lines are the client's, PORT/EPRT addresses (or in a NAT64 session, the
/// lines the ALG replaced) aside.
fn check_rewritten_stream(sent: &[u8], received: &[u8], nat64: bool) {
    let mut sent_lines: Vec<&[u8]> = sent.split_inclusive(|&b| b == b'\n').collect();
    let received_lines: Vec<&[u8]> = received.split_inclusive(|&b| b == b'\n').collect();
    if nat64
        && sent_lines.len() == received_lines.len() + 1
        && sent_lines.last().is_some_and(|line| !line.ends_with(b"\n"))
    {
        // The last line, unfinished, may still be replaced whole: it is held from its first byte.
        sent_lines.pop();
    }
    assert_eq!(
        sent_lines.len(),
        received_lines.len(),
        "lines lost or merged"
    );
    let mut port = WINDOW_LOW;
    for (original, forwarded) in sent_lines.iter().zip(&received_lines) {
        if original == forwarded {
            continue;
        }
        if !original.ends_with(b"\n") {
            // The last line, unfinished: the address it ends in is held for the next segment.
            assert!(original.starts_with(forwarded), "unfinished line changed");
            continue;
        }
        if nat64 {
            let Some(new_port) = alg_replacement(original, forwarded) else {
                panic!("line changed other than by the ALG: {original:?} as {forwarded:?}");
            };
            if let Some(p) = new_port {
                assert!(p >= port, "window ports out of order");
                port = p + 1;
            }
            continue;
        }
        let (before, after) = (parse_command(original), parse_command(forwarded));
        let (field_before, field_after, public) = match (before, after) {
            (
                Command::Port { addr, field },
                Command::Port {
                    addr: new,
                    field: new_field,
                },
            ) => {
                assert_eq!(*addr.ip(), CLIENT_ADDR);
                let refused = new == SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
                (
                    field,
                    new_field,
                    (!refused).then_some((IpAddr::V4(*new.ip()), new.port())),
                )
            }
            (
                Command::Eprt {
                    addr,
                    field,
                    delimiter,
                },
                Command::Eprt {
                    addr: new,
                    field: new_field,
                    delimiter: new_delimiter,
                },
            ) => {
                assert_eq!(addr.ip(), IpAddr::V4(CLIENT_ADDR));
                assert_eq!(delimiter, new_delimiter);
                (field, new_field, Some((new.ip(), new.port())))
            }
            (Command::Port { field, .. } | Command::Eprt { field, .. }, Command::Malformed(_)) => {
                // The refused forms (`0,0,0,0,0,0`, `|1|0.0.0.0|0|`) name port 0, which parses as
                // malformed.
                let new_field = ftp_common::Span {
                    start: field.start,
                    len: 0,
                };
                (field, new_field, None)
            }
            other => panic!("line changed other than by a rewrite: {other:?}"),
        };
        if let Some((ip, p)) = public {
            assert_eq!(ip, IpAddr::V4(PUBLIC));
            assert!(p >= port, "window ports out of order");
            port = p + 1;
        }
        let start = usize::from(field_before.start);
        assert_eq!(field_before.start, field_after.start);
        assert_eq!(&original[..start], &forwarded[..start]);
        let tail_before = &original[field_before.end()..];
        if field_after.len > 0 {
            assert_eq!(tail_before, &forwarded[field_after.end()..]);
        } else {
            assert!(forwarded.ends_with(tail_before));
        }
    }
}

/// A line the NAT64 ALG replaced whole (`forwarded`, an LF ending both) is what `original`
/// asks for: `Some` with the window port of a PORT replacing an EPRT, `None` if it is not.
fn alg_replacement(original: &[u8], forwarded: &[u8]) -> Option<Option<u16>> {
    let (replacement, port): (Vec<u8>, _) = match parse_command(original) {
        Command::Epsv(EpsvArg::Any | EpsvArg::Ipv6) => (PASV_LINE.to_vec(), None),
        Command::Epsv(EpsvArg::All) | Command::Algs(_) => (NOOP_LINE.to_vec(), None),
        Command::Eprt { addr, .. } if addr.ip() == IpAddr::V6(CLIENT_ADDR6) => {
            let Command::Port { addr: new, .. } = parse_command(forwarded) else {
                return None;
            };
            assert_eq!(*new.ip(), PUBLIC);
            let mut text = [0u8; ftp_common::MAX_FIELD_LEN];
            let len = ftp_common::format_port_line(PUBLIC, new.port(), &mut text)?;
            (text[..len].to_vec(), Some(new.port()))
        }
        _ => return None,
    };
    (forwarded == [&replacement[..], b"\n"].concat()).then_some(port)
}

/// The session fed whole lines, in the order the datapath completed them, gives the same verdicts.
fn check_same_verdicts(datapath: &Datapath) {
    let mut session = Session::new();
    let mut verdicts = Vec::new();
    for seen in &datapath.seen {
        match seen {
            Seen::Closed => session.expectation_closed(),
            Seen::AlgLinePassed => session.alg_line_passed(),
            Seen::Line(CLIENT, line) => {
                verdicts.push(format!("{:?}", session.on_client_line(line, &datapath.ctx)));
            }
            Seen::Line(_, line) => {
                let verdict: ServerVerdict = session.on_server_line(line, &datapath.ctx);
                verdicts.push(format!("{verdict:?}"));
            }
        }
    }
    assert_eq!(verdicts, datapath.verdicts);
    assert_eq!(session, datapath.session);
}
