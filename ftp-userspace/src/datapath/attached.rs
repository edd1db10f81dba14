//! What the kernel lists at the hooks: whether ftpnat's programs are attached there (through
//! either mechanism), waiting until they are gone, and interfaces that lost them.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{SchedClassifier, TcAttachType};

use super::{
    classic_tc,
    hooks::{HOOKS, attach_type_of, hook_name, is_ftpnat_program},
    interface::{Interface, ifindex_exists, ifindex_of},
    mechanism::{Mechanism, lacks_tcx},
    records::PinnedHook,
};

/// How long the kernel may take to release links whose last pin is gone.
const DETACH_WAIT: Duration = Duration::from_secs(5);

/// Waits until the kernel lists none of ftpnat's programs at `hooks`, whose links' pins were just
/// removed (or whose filters were deleted, which detaches at once). The kernel releases a link a
/// moment later (after an RCU grace period, from a work queue): without waiting, "detached" would
/// be said too early and an `ftpnat run` started right after would find the old programs still
/// attached and refuse. An interface that is gone (or cannot be queried here) holds nothing of
/// ours.
pub fn await_detached(hooks: &[PinnedHook]) -> anyhow::Result<()> {
    let deadline = Instant::now() + DETACH_WAIT;
    loop {
        let remaining: Vec<String> = hooks
            .iter()
            .filter(|hook| still_attached(hook))
            .map(|hook| format!("{}/{}", hook.interface, hook.hook))
            .collect();
        if remaining.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the links' pins are removed (and the filters deleted), but {} s later the \
                 kernel still lists ftpnat's programs at {}: another process holds those links \
                 open (`grep link_id /proc/*/fdinfo/*` finds it), or another ftpnat with another \
                 --pin-dir attached there",
                DETACH_WAIT.as_secs(),
                remaining.join(", ")
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn still_attached(hook: &PinnedHook) -> bool {
    ours_attached(hook) == Some(true)
}

/// Whether the kernel lists one of ftpnat's programs at a hook: `None` if it cannot tell (a
/// lookup failed); an interface that does not exist has none.
pub fn ours_attached(hook: &PinnedHook) -> Option<bool> {
    let attach_type = attach_type_of(&hook.hook)?;
    if ifindex_of(&hook.interface).ok()?.is_none() {
        return Some(false);
    }
    let programs = ftpnat_programs_at(&hook.interface, attach_type).ok()?;
    Some(!programs.is_empty())
}

/// One of ftpnat's programs attached at an interface's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub name: String,
    pub id: u32,
    pub through: Mechanism,
}

/// ftpnat's programs the kernel lists at `interface`'s hook (by name: those of any ftpnat),
/// through either mechanism: another agent may have attached the other way.
pub fn ftpnat_programs_at(
    interface: &str,
    attach_type: TcAttachType,
) -> anyhow::Result<Vec<AttachedProgram>> {
    let context = || {
        format!(
            "querying the TC programs on {interface} {}",
            hook_name(attach_type)
        )
    };
    let mut found = Vec::new();
    match SchedClassifier::query_tcx(interface, attach_type) {
        Ok((_revision, attached)) => found.extend(attached.into_iter().filter_map(|info| {
            let name = info.name_as_str()?;
            is_ftpnat_program(name).then(|| AttachedProgram {
                name: name.to_owned(),
                id: info.id(),
                through: Mechanism::Tcx,
            })
        })),
        // A kernel without TCX has no TCX programs.
        Err(err) if lacks_tcx(&err) => {}
        Err(err) => return Err(anyhow::Error::new(err).context(context())),
    }
    if let Some(ifindex) = ifindex_of(interface).with_context(context)? {
        let filters = classic_tc::bpf_filters(ifindex, attach_type).with_context(context)?;
        found.extend(
            filters
                .into_iter()
                .filter(|filter| is_ftpnat_program(&filter.name))
                .map(|filter| AttachedProgram {
                    name: filter.name,
                    id: filter.program_id,
                    through: Mechanism::Netlink,
                }),
        );
    }
    Ok(found)
}

/// The interfaces that no longer carry ftpnat's programs: their device is gone — deleted,
/// possibly created again under the same name (a PPPoE reconnect, a restarted VPN), or moved to
/// another network namespace — or the kernel lists none of ftpnat's programs on them any more (an
/// interface created again with the same index, a link detached by hand). A renamed interface
/// keeps its index and programs and is not lost (its name is asked about only while it still
/// names that index); neither is one that cannot be looked up or queried right now.
pub fn lost_interfaces(interfaces: &[Interface]) -> Vec<&Interface> {
    interfaces
        .iter()
        .filter(|interface| match ifindex_exists(interface.ifindex) {
            Ok(false) => true,
            Ok(true) => {
                matches!(ifindex_of(&interface.name), Ok(Some(now)) if now == interface.ifindex)
                    && HOOKS.iter().any(|(_, attach_type)| {
                        ftpnat_programs_at(&interface.name, *attach_type)
                            .is_ok_and(|programs| programs.is_empty())
                    })
            }
            Err(_) => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ftp_common::maps::InterfaceRole;

    use super::*;

    #[test]
    fn an_interface_is_lost_when_its_index_is_gone() {
        let lo = |ifindex| Interface {
            name: "lo".to_owned(),
            ifindex,
            role: InterfaceRole::Lan,
        };
        // The name now names another index, as after a delete and re-create: the old one is gone.
        let stale = [lo(u32::MAX - 7)];
        assert_eq!(lost_interfaces(&stale).len(), 1);
        assert!(!ifindex_exists(u32::MAX - 7).unwrap());
        let present = ifindex_of("lo").unwrap().expect("lo exists");
        assert!(ifindex_exists(present).unwrap());
        assert_eq!(ifindex_of("no-such-if0").unwrap(), None);
    }
}
