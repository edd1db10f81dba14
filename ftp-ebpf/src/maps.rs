//! Every map of the datapath, declared here in one block, and the small accessors every stage
//! uses. The state maps are pinned by name, so that the agent and the inspection commands reach
//! them from other processes and a restarted agent adopts them; the others (the event ring, the
//! stage table, the scratch area) belong to one load.

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, Queue, RingBuf},
};
use ftp_common::maps::{
    Capacities, Counter, DatapathConfig, EVENTS_BYTES, FlowEntry, FlowKey, InterfaceInfo, IpBytes,
    MAX_COUNTED_INTERFACES, MAX_FLOWS, MAX_MASQUERADE_PREFIXES, MAX_WINDOW_PORTS, SourceKey,
    SourceSeen, stage,
};

use crate::scratch::Scratch;

#[map(name = "CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

#[map(name = "MASQUERADE")]
pub static MASQUERADE: LpmTrie<IpBytes, u8> = LpmTrie::pinned(
    MAX_MASQUERADE_PREFIXES,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

#[map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowEntry> = HashMap::pinned(MAX_FLOWS, 0);

#[map(name = "PUBLISH")]
pub static PUBLISH: HashMap<u16, ftp_common::maps::PublishTarget> =
    HashMap::pinned(ftp_common::maps::MAX_PUBLISHED, 0);

#[map(name = "FREE_PORTS")]
pub static FREE_PORTS: Queue<u16> = Queue::pinned(MAX_WINDOW_PORTS, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[map(name = "RELEASED")]
pub static RELEASED: HashMap<FlowKey, u32> = HashMap::pinned(ftp_common::maps::MAX_SESSIONS, 0);

#[map(name = "REASONS")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(ftp_common::maps::REASON_SLOTS, 0);

#[map(name = "EXPECTS")]
pub static EXPECTS: HashMap<ftp_common::maps::ExpectKey, ftp_common::maps::Expectation> =
    HashMap::pinned(ftp_common::maps::MAX_EXPECTATIONS, 0);

#[map(name = "SESSIONS")]
pub static SESSIONS: HashMap<FlowKey, ftp_common::maps::SessionEntry> =
    HashMap::pinned(ftp_common::maps::MAX_SESSIONS, 0);

/// Sessions per source at the agent's last sweep (see `sources`); the agent writes it.
#[map(name = "SOURCE_SEEN")]
pub static SOURCE_SEEN: HashMap<SourceKey, SourceSeen> =
    HashMap::pinned(Capacities::DEFAULT.sources, 0);

/// Sessions opened per source (see `sources`).
#[map(name = "SOURCE_OPENED")]
pub static SOURCE_OPENED: LruHashMap<SourceKey, u32> =
    LruHashMap::pinned(Capacities::DEFAULT.sources, 0);

/// Interfaces the agent attached to (ifindex to name and role), written by the agent and read by the
/// inspection CLI. Declared with the object's maps so that it is created and pinned with the
/// others; the programs do not read it.
#[map(name = "INTERFACES")]
pub static INTERFACES: HashMap<u32, InterfaceInfo> = HashMap::pinned(MAX_COUNTED_INTERFACES, 0);

/// The events the agent reads (see `events`).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Filled by the agent with the stage programs of the same load (`ftp_common::maps::stage::
/// PROGRAMS`), then pinned by it: not pinned by name, so that an agent adopting a running datapath
/// never mixes its stages with another build's.
#[map(name = "STAGES")]
pub static STAGES: ProgramArray = ProgramArray::with_max_entries(stage::COUNT, 0);

/// This CPU's working memory and what one packet's stages hand each other (see `scratch`).
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Counts a refusal or an unparseable line under its reason (a `REASONS` slot).
#[inline(always)]
pub fn bump_reason(slot: u32) {
    if let Some(value) = REASONS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array; no other writer while we run here.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot of a per-CPU array; no other writer while we run here.
        unsafe { *value += 1 };
    }
}

/// `len` (which the caller has checked is within `1..=mask + 1`) as a helper's length argument
/// must reach the verifier: provably non-zero and bounded. Written `((len - 1) & mask) + 1`; where
/// the compiler can prove the mask changes nothing it would drop it, leaving only the caller's
/// `len != 0` test, from which Linux 6.1's verifier learns nothing (it refused `size=0`).
/// `black_box` hides the value from the compiler, so the mask stays in the code.
#[inline(always)]
pub fn helper_len(len: usize, mask: usize) -> usize {
    (core::hint::black_box(len).wrapping_sub(1) & mask) + 1
}

/// `offset & mask` for an offset into a map value, with the mask kept in the code (see
/// [`helper_len`]). Where the compiler proves the offset in range it drops the mask, and the
/// verifier must then know the bound from the offset's history, which Linux 6.1 loses when the
/// value was spilled to the stack ("math between map_value pointer and register with unbounded
/// min value").
#[inline(always)]
pub fn masked(offset: usize, mask: usize) -> usize {
    core::hint::black_box(offset) & mask
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// [`now_ns`] as of the last timer tick: a memory read, not a clock read, for the per-packet
/// `last_seen` stamps, which only the idle timeouts (seconds) compare.
#[inline(always)]
pub fn now_coarse_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    CONFIG.get(0)
}
