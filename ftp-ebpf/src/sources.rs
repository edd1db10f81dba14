//! Per-source session limits: a new control connection from a source (its host, and its network: /24, or /64 for IPv6) that
//! already holds its share of the sessions is refused. A source's sessions are the agent's count
//! at its last sweep plus those the datapath opened since (ftp-common's `maps::sources`).

use aya_ebpf::bindings::BPF_NOEXIST;
use ftp_common::maps::{IpBytes, SourceKey, SourceLimits, sources::SCOPES};

use crate::maps::{SOURCE_OPENED, SOURCE_SEEN};

/// Whether `addr` may open another session under `limits`.
// A subprogram of its own, as is `opened`: two keys of 20 bytes and their lookups stay off the
// opening's stack.
#[inline(never)]
pub fn admits(addr: &IpBytes, limits: &SourceLimits) -> bool {
    let mut i = 0;
    while i < SCOPES.len() {
        let Some(&scope) = SCOPES.get(i) else {
            break;
        };
        let key = SourceKey::new(addr, scope);
        // SAFETY: the values are copied out at once.
        let seen = unsafe { SOURCE_SEEN.get(key) }.copied().unwrap_or_default();
        // SAFETY: as above.
        let opened = unsafe { SOURCE_OPENED.get(key) }.copied().unwrap_or(0);
        if !limits.admits(scope, seen.in_use(opened)) {
            return false;
        }
        i += 1;
    }
    true
}

/// Counts a session `addr` opened. Not atomic: an increment lost to another CPU's is made good by
/// the agent's next count of the sessions.
#[inline(never)]
pub fn opened(addr: &IpBytes) {
    let mut i = 0;
    while i < SCOPES.len() {
        let Some(&scope) = SCOPES.get(i) else {
            break;
        };
        let key = SourceKey::new(addr, scope);
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
