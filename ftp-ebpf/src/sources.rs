//! Per-source session limits: a new control connection from a source (its host, and its network:
//! an IPv4 /24, an IPv6 /64) that already holds its share of the sessions is refused. A source's sessions are the agent's count
//! at its last sweep plus those the datapath opened since (ftp-common's `maps::sources`).

use aya_ebpf::bindings::BPF_NOEXIST;
use ftp_common::maps::{FlowKey, SourceLimits, sources::SCOPES};

use crate::maps::{SOURCE_OPENED, SOURCE_SEEN};

/// Whether the source of the connection `key` may open another session under `limits`. (Given
/// the whole key: its alignment lets the address move as words, not sixteen bytes.)
// A subprogram of its own, as is `opened`, each key made in the scratch area: they stay off the
// opening's stack.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "looked up by reference: by value, the key would be copied onto the stack"
)]
pub fn admits(key: &FlowKey, limits: &SourceLimits) -> bool {
    let Some(opening) = crate::flows::opening() else {
        return false;
    };
    let source = &mut opening.source_key;
    let mut i = 0;
    while i < SCOPES.len() {
        let Some(&scope) = SCOPES.get(i) else {
            break;
        };
        source.set(&key.saddr, scope);
        // SAFETY: the values are copied out at once.
        let seen = unsafe { SOURCE_SEEN.get(&*source) }
            .copied()
            .unwrap_or_default();
        // SAFETY: as above.
        let opened = unsafe { SOURCE_OPENED.get(&*source) }.copied().unwrap_or(0);
        if !limits.admits(scope, seen.in_use(opened)) {
            return false;
        }
        i += 1;
    }
    true
}

/// Counts a session the source of the connection `key` opened. Not atomic: an increment lost to another CPU's is made good by
/// the agent's next count of the sessions.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "looked up by reference: by value, the key would be copied onto the stack"
)]
pub fn opened(key: &FlowKey) {
    let Some(opening) = crate::flows::opening() else {
        return;
    };
    let source = &mut opening.source_key;
    let mut i = 0;
    while i < SCOPES.len() {
        let Some(&scope) = SCOPES.get(i) else {
            break;
        };
        source.set(&key.saddr, scope);
        match SOURCE_OPENED.get_ptr_mut(&*source) {
            // SAFETY: a live map value.
            Some(count) => unsafe { *count = (*count).saturating_add(1) },
            None => {
                let _ = SOURCE_OPENED.insert(&*source, 1u32, u64::from(BPF_NOEXIST));
            }
        }
        i += 1;
    }
}
