//! Applying a session's sequence adjustment to the control connection's packets: the client's
//! sequence numbers move forward by what its rewritten lines added, and the server's
//! acknowledgements move back by the same, so both ends keep their own view of the stream.

use aya_ebpf::programs::TcContext;
use ftp_common::SeqAdjust;

use crate::headers::{TCP_CHECK_OFF, Tcp4};

const TCP_SEQ_OFF: usize = 4;
const TCP_ACK_OFF: usize = 8;

#[inline(always)]
pub fn adjust(ctx: &TcContext, packet: &Tcp4, client: &SeqAdjust, from_client: bool) {
    if client.is_identity() {
        return;
    }
    if from_client {
        let seq = u32::from_be_bytes(packet.tcp.seq);
        let _ = rewrite_u32(ctx, packet, TCP_SEQ_OFF, seq, client.forward_seq(seq));
    } else if packet.tcp.ack() != 0 {
        let ack = u32::from_be_bytes(packet.tcp.ack_seq);
        let _ = rewrite_u32(ctx, packet, TCP_ACK_OFF, ack, client.backward_ack(ack));
    }
}

#[inline(always)]
fn rewrite_u32(
    ctx: &TcContext,
    packet: &Tcp4,
    field: usize,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let (old, new) = (old.to_be_bytes(), new.to_be_bytes());
    ctx.store(packet.tcp_off + field, &new, 0)?;
    ctx.l4_csum_replace(
        packet.tcp_off + TCP_CHECK_OFF,
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
        4,
    )
}
