//! The TC hooks ftpnat attaches to, their names (as link pins, filter records and messages say
//! them), and how ftpnat's programs are told from others' at a hook.

use aya::programs::TcAttachType;
use ftp_common::maps::programs;

/// The programs and where they attach, in attach order.
pub const HOOKS: [(&str, TcAttachType); 1] = [(programs::INGRESS, TcAttachType::Ingress)];

/// Whether `name` is one of ftpnat's attached programs (of any ftpnat, older ones included: their
/// egress program is still found, and detached, wherever it was left).
pub fn is_ftpnat_program(name: &str) -> bool {
    matches!(name, programs::INGRESS | programs::LEGACY_EGRESS)
}

pub fn hook_name(attach_type: TcAttachType) -> &'static str {
    match attach_type {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    }
}

/// The hook [`hook_name`] names, if it is one ftpnat attaches to or did (an older ftpnat's link
/// pins and filter records name the egress hook too).
pub fn attach_type_of(hook: &str) -> Option<TcAttachType> {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .find(|attach_type| hook_name(*attach_type) == hook)
}
