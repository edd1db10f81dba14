//! TCP window tracking of a control connection, after Linux conntrack's `tcp_in_window`
//! (`nf_conntrack_proto_tcp.c`, with `nf_conntrack_tcp_be_liberal` off): a segment counts (its
//! bytes are scanned, its FIN or RST ends the connection) only if its sequence numbers lie in
//! the window the receiver advertised and its acknowledgement in what the receiver sent. A blind
//! off-path sender must then guess both, as it must to get past the endpoints themselves.
//!
//! Each side has a [`TcpWindow`], in its own sequence space: the numbers its segments carry before
//! the datapath's sequence adjustment. An acknowledgement of the other side's bytes is compared
//! after translating it back into that side's space ([`crate::SeqAdjust::backward_ack`]), which
//! the caller does before building the [`Segment`].
//!
//! Resets are stricter than conntrack's window check, as RFC 5961 asks of the endpoints: a reset
//! ends the connection only if its sequence number is exactly the next one expected (the
//! sender's highest, or what the receiver last acknowledged). One merely inside the window is
//! [`WindowVerdict::InexactReset`]: it is passed on (the endpoint answers it with a challenge ACK,
//! and a genuine peer's reset to that then carries the exact number) but ends nothing here.

use crate::seqadj::seq_after;

/// conntrack's lower bound of an acknowledgement window (`MAXACKWINCONST`).
pub const MIN_ACK_WINDOW: u32 = 66_000;

/// RFC 7323's largest window scale.
pub const MAX_WINDOW_SCALE: u8 = 14;

/// [`TcpWindow::flags`] bits.
pub mod window_flags {
    /// The side's SYN was seen: the window is known.
    pub const SYN_SEEN: u8 = 1;
    /// Its SYN offered window scaling.
    pub const SCALE_OFFERED: u8 = 2;
    /// [`super::TcpWindow::acked`] holds an acknowledgement from the peer.
    pub const ACKED: u8 = 4;
}

/// One side of a TCP connection as seen by the router (conntrack's `ip_ct_tcp_state`). Stored in
/// a BPF map: `#[repr(C)]`, 20 bytes, no padding, every bit pattern valid; all-zero is "nothing
/// seen yet".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpWindow {
    /// The sequence number after the last byte this side sent (`td_end`).
    pub end: u32,
    /// The farthest its peer let it send: the peer's acknowledgement plus window (`td_maxend`).
    pub max_end: u32,
    /// The largest window it advertised, scaled (`td_maxwin`).
    pub max_win: u32,
    /// The highest acknowledgement of its bytes the peer sent (`td_maxack`).
    pub acked: u32,
    /// The window scale of its advertisements (0 unless both SYNs offered scaling).
    pub scale: u8,
    /// [`window_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// What the window check needs of a segment. `ack` is in the receiver's own sequence space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub payload_len: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// The acknowledgement, if the ACK flag is set.
    pub ack: Option<u32>,
    /// The raw window field.
    pub window: u16,
    /// The window scale a SYN offers (`None`: no option, or not a SYN).
    pub offered_scale: Option<u8>,
}

/// Whether a segment counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowVerdict {
    /// Inside the window: its bytes and flags count (a reset carries the exact sequence number).
    Inside,
    /// A reset inside the window but not at the exact next sequence number: passed on, ending
    /// nothing.
    InexactReset,
    /// Outside the window, or flags no TCP sends together: it changes nothing.
    Outside,
}

impl TcpWindow {
    pub const fn new() -> Self {
        Self {
            end: 0,
            max_end: 0,
            max_win: 0,
            acked: 0,
            scale: 0,
            flags: 0,
            _pad: [0; 2],
        }
    }

    /// Whether this side's SYN was seen.
    pub fn syn_seen(&self) -> bool {
        self.flags & window_flags::SYN_SEEN != 0
    }

    /// The opening SYN of the side that opens the connection.
    pub fn on_opening_syn(&mut self, seq: u32, window: u16, offered_scale: Option<u8>) {
        self.init(seq, window, offered_scale);
    }

    fn init(&mut self, seq: u32, window: u16, offered_scale: Option<u8>) {
        let end = seq.wrapping_add(1);
        self.end = end;
        self.max_end = end;
        // A SYN's window is never scaled (RFC 7323 section 2.2).
        self.max_win = u32::from(window).max(1);
        self.acked = 0;
        self.scale = 0;
        self.flags = window_flags::SYN_SEEN;
        if let Some(scale) = offered_scale {
            self.scale = scale.min(MAX_WINDOW_SCALE);
            self.flags |= window_flags::SCALE_OFFERED;
        }
    }

    fn scale_offered(&self) -> bool {
        self.flags & window_flags::SCALE_OFFERED != 0
    }
}

/// Checks a segment `sender` sent to `receiver` and, if it counts, records it on both.
pub fn on_segment(
    sender: &mut TcpWindow,
    receiver: &mut TcpWindow,
    segment: &Segment,
) -> WindowVerdict {
    let invalid_flags = (segment.syn && (segment.rst || segment.fin))
        || (segment.fin && segment.ack.is_none());
    if invalid_flags {
        return WindowVerdict::Outside;
    }
    if !sender.syn_seen() {
        return first_of_responder(sender, receiver, segment);
    }
    let mut seq = segment.seq;
    let mut end = seq
        .wrapping_add(segment.payload_len)
        .wrapping_add(u32::from(segment.syn))
        .wrapping_add(u32::from(segment.fin));
    // As conntrack: a bare acknowledgement is judged by its acknowledgement alone.
    if seq == end && !segment.rst {
        seq = sender.end;
        end = sender.end;
    }
    let ack = segment.ack.unwrap_or(receiver.end);
    let window = if segment.syn {
        u32::from(segment.window)
    } else {
        u32::from(segment.window) << (sender.scale & 15)
    };
    let ack_window = sender.max_win.max(MIN_ACK_WINDOW);
    let inside = !seq_after(seq, sender.max_end)
        && !seq_after(sender.end.wrapping_sub(receiver.max_win), end)
        && !seq_after(ack, receiver.end)
        && !seq_after(receiver.end.wrapping_sub(ack_window), ack);
    if !inside {
        return WindowVerdict::Outside;
    }
    if segment.rst {
        let expected = seq == sender.end
            || (sender.flags & window_flags::ACKED != 0 && seq == sender.acked);
        return if expected {
            WindowVerdict::Inside
        } else {
            WindowVerdict::InexactReset
        };
    }
    record(sender, receiver, segment, (end, ack, window));
    WindowVerdict::Inside
}

/// The first segment of the side that did not open the connection. Only its SYN-ACK, or a reset
/// refusing the SYN, acknowledging exactly the opener's SYN, counts.
fn first_of_responder(
    sender: &mut TcpWindow,
    receiver: &mut TcpWindow,
    segment: &Segment,
) -> WindowVerdict {
    let answers_syn = receiver.syn_seen() && segment.ack == Some(receiver.end);
    if !answers_syn {
        return WindowVerdict::Outside;
    }
    if segment.rst {
        return WindowVerdict::Inside;
    }
    if !segment.syn {
        return WindowVerdict::Outside;
    }
    sender.init(segment.seq, segment.window, segment.offered_scale);
    // RFC 7323: scaling applies only if both SYNs offered it.
    if !(sender.scale_offered() && receiver.scale_offered()) {
        sender.scale = 0;
        receiver.scale = 0;
    }
    let end = sender.end;
    let window = u32::from(segment.window);
    record(sender, receiver, segment, (end, receiver.end, window));
    WindowVerdict::Inside
}

/// Records a segment inside the window: `end` after its last byte, its acknowledgement `ack`
/// (the receiver's end if it has none) and its scaled `window`.
fn record(
    sender: &mut TcpWindow,
    receiver: &mut TcpWindow,
    segment: &Segment,
    (end, ack, window): (u32, u32, u32),
) {
    if sender.max_win < window {
        sender.max_win = window;
    }
    if seq_after(end, sender.end) {
        sender.end = end;
    }
    if segment.ack.is_some()
        && (receiver.flags & window_flags::ACKED == 0 || seq_after(ack, receiver.acked))
    {
        receiver.acked = ack;
        receiver.flags |= window_flags::ACKED;
    }
    if receiver.max_win != 0 && seq_after(end, sender.max_end) {
        receiver.max_win = receiver
            .max_win
            .wrapping_add(end.wrapping_sub(sender.max_end));
    }
    let right_edge = ack.wrapping_add(window);
    if seq_after(right_edge, receiver.max_end.wrapping_sub(1)) {
        receiver.max_end = if window == 0 {
            right_edge.wrapping_add(1)
        } else {
            right_edge
        };
    }
}

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WINDOW: u8 = 3;

/// One option of a walk over a TCP options area (the first `len` bytes of `options`), the one at
/// `at`: `Ok(next)` the next option's offset, `Err(Some(scale))` the window scale option found,
/// `Err(None)` the end of the walk. For a BPF caller that drives the walk from `bpf_loop`.
pub fn window_scale_step(
    options: &[u8; crate::MAX_TCP_OPTIONS],
    len: usize,
    at: usize,
) -> Result<usize, Option<u8>> {
    let len = len.min(crate::MAX_TCP_OPTIONS);
    if at >= len {
        return Err(None);
    }
    let kind = *options.get(at).ok_or(None)?;
    match kind {
        TCPOPT_EOL => Err(None),
        TCPOPT_NOP => Ok(at.saturating_add(1)),
        _ => {
            let option_len = usize::from(*options.get(at.saturating_add(1)).ok_or(None)?);
            if option_len < 2 || at.saturating_add(option_len) > len {
                return Err(None);
            }
            if kind == TCPOPT_WINDOW && option_len == 3 {
                let shift = *options.get(at.saturating_add(2)).ok_or(None)?;
                return Err(Some(shift.min(MAX_WINDOW_SCALE)));
            }
            Ok(at.saturating_add(option_len))
        }
    }
}

/// The window scale a SYN's options area offers, if any.
pub fn window_scale(options: &[u8; crate::MAX_TCP_OPTIONS], len: usize) -> Option<u8> {
    let mut at = 0;
    // Each step consumes at least one byte.
    for _ in 0..crate::MAX_TCP_OPTIONS {
        match window_scale_step(options, len, at) {
            Ok(next) => at = next,
            Err(found) => return found,
        }
    }
    None
}

#[cfg(test)]
mod tests;
