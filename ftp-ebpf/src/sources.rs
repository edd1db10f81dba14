//! Per-source session limits: a new control connection from a source (its host, and its /24) that
//! already holds its share of the sessions is refused. A source's sessions are the agent's count
//! at its last sweep plus those the datapath opened since (ftp-common's `maps::sources`).

use aya_ebpf::bindings::BPF_NOEXIST;
use ftp_common::maps::{SourceKey, SourceLimits, sources::PREFIXES};

use crate::maps::{SOURCE_OPENED, SOURCE_SEEN};

/// Whether `addr` may open another session under `limits`.
#[inline(always)]
pub fn admits(addr: [u8; 4], limits: &SourceLimits) -> bool {
    let mut i = 0;
    while i < PREFIXES.len() {
        let Some(&prefix_len) = PREFIXES.get(i) else {
            break;
        };
        let key = SourceKey::new(addr, prefix_len);
        // SAFETY: the values are copied out at once.
        let seen = unsafe { SOURCE_SEEN.get(key) }.copied().unwrap_or_default();
        // SAFETY: as above.
        let opened = unsafe { SOURCE_OPENED.get(key) }.copied().unwrap_or(0);
        if !limits.admits(prefix_len, seen.in_use(opened)) {
            return false;
        }
        i += 1;
    }
    true
}

/// Counts a session `addr` opened. Not atomic: an increment lost to another CPU's is made good by
/// the agent's next count of the sessions.
#[inline(always)]
pub fn opened(addr: [u8; 4]) {
    let mut i = 0;
    while i < PREFIXES.len() {
        let Some(&prefix_len) = PREFIXES.get(i) else {
            break;
        };
        let key = SourceKey::new(addr, prefix_len);
        match SOURCE_OPENED.get_ptr_mut(key) {
            // SAFETY: a live map value.
            Some(count) => unsafe { *count = (*count).saturating_add(1) },
            None => {
                let _ = SOURCE_OPENED.insert(key, 1u32, u64::from(BPF_NOEXIST));
            }
        }
        i += 1;
    }
}
