//! Packet and byte counters per interface and direction, in a per-CPU map so that counting never
//! contends between CPUs. The agent sums the CPUs when it reports.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use aya_log_ebpf::debug;
use ftp_common::maps::{Direction, TrafficCounters, TrafficKey};

use crate::maps::{INTERFACES, TRAFFIC};

#[inline(always)]
pub fn count(ctx: &TcContext, direction: Direction) {
    // SAFETY: `skb` is the context pointer the kernel handed to this program; reading its fields is
    // what the verifier allows for TC programs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = u64::from(ctx.len());
    let key = TrafficKey::new(ifindex, direction);
    if let Some(counters) = TRAFFIC.get_ptr_mut(key) {
        // SAFETY: the pointer is this CPU's slot of a live map value; nothing else writes it while
        // this program runs on this CPU.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
        return;
    }
    let first = TrafficCounters { packets: 1, bytes };
    // BPF_NOEXIST: if another CPU created the entry in the meantime, its slot for this CPU is zero
    // and the next packet here counts into it; losing this one packet's count is not worth a retry.
    if TRAFFIC.insert(key, first, u64::from(BPF_NOEXIST)).is_ok() {
        let attached = INTERFACES.get_ptr(ifindex).is_some();
        debug!(
            ctx,
            "first packet on ifindex {} {} (attached by agent: {})",
            ifindex,
            direction.as_str(),
            attached as u8
        );
    }
}
