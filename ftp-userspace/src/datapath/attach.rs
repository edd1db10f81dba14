//! Attaching a fresh datapath's programs, and swapping an adopting agent's programs into the
//! attachments a previous agent left: TCX links (pinned) or classic TC filters (recorded).

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::programs::{
    TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
};

use super::{
    Datapath, Interface, classic_tc,
    hooks::hook_name,
    records::{self, FilterRecord},
};

impl Datapath {
    /// Attaches `program` with a new TCX link and pins the link, so that it outlives the agent.
    pub(super) fn attach_and_pin(
        &mut self,
        program: &str,
        interface: &Interface,
        attach_type: TcAttachType,
        state_dir: &Path,
    ) -> anyhow::Result<()> {
        let hook = hook_name(attach_type);
        let context = || format!("attaching {program} to {} {hook}", interface.name);
        let classifier = self.classifier(program)?;
        let id = classifier
            .attach(&interface.name, attach_type)
            .with_context(context)?;
        let link = FdLink::try_from(classifier.take_link(id).with_context(context)?)
            .with_context(context)?;
        let pin = records::link_pin(state_dir, &interface.name, hook);
        link.pin(&pin)
            .with_context(|| format!("pinning the link at {}", pin.display()))?;
        self.attached.push(format!("{}/{hook}", interface.name));
        Ok(())
    }

    /// Attaches `program` with a new classic TC filter (adding a clsact qdisc if the interface has
    /// none) and records the filter, so that the next agent finds it. The kernel holds the
    /// program for as long as the filter exists, agent or not.
    pub(super) fn attach_filter_and_record(
        &mut self,
        program: &str,
        interface: &Interface,
        attach_type: TcAttachType,
        state_dir: &Path,
    ) -> anyhow::Result<()> {
        let hook = hook_name(attach_type);
        let context = || format!("attaching {program} to {} {hook}", interface.name);
        classic_tc::ensure_clsact(&interface.name, interface.ifindex)?;
        let classifier = self.classifier(program)?;
        // Priority and handle 0: the kernel picks them (the priority ahead of the filters already
        // there, as with `tc filter add` without `pref`); the record keeps what it picked.
        let id = classifier
            .attach_with_options(
                &interface.name,
                attach_type,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .with_context(context)?;
        let filter = classifier.take_link(id).with_context(context)?;
        let record = FilterRecord {
            ifindex: interface.ifindex,
            priority: filter.priority().with_context(context)?,
            handle: filter.handle().with_context(context)?.into(),
        };
        // On an error `filter` is dropped, which deletes the filter: none stays unrecorded.
        record.write(&records::filter_record(state_dir, &interface.name, hook))?;
        // Recorded, the filter must outlive this agent: dropping aya's handle would delete it.
        std::mem::forget(filter);
        self.attached.push(format!("{}/{hook}", interface.name));
        Ok(())
    }

    /// Swaps `program` into the filter a previous agent recorded at `record`: the kernel replaces
    /// the program of an existing cls_bpf filter in place (same priority and handle, one RCU
    /// pointer swap), as `bpf_link_update` does a link's.
    pub(super) fn replace_filter_program(
        &mut self,
        program: &str,
        interface: &Interface,
        attach_type: TcAttachType,
        record: &Path,
    ) -> anyhow::Result<()> {
        let hook = hook_name(attach_type);
        let filter = FilterRecord::read(record)?;
        let context = || {
            format!(
                "taking over the filter {filter} at {}/{hook}",
                interface.name
            )
        };
        if filter.ifindex != interface.ifindex {
            bail!(
                "{}: the filter was made on ifindex {}, but {} is ifindex {} now; remove that \
                 datapath with `ftpnat detach --pin-dir {}`",
                context(),
                filter.ifindex,
                interface.name,
                interface.ifindex,
                self.pin_dir.display()
            );
        }
        let link = SchedClassifierLink::attached(
            &interface.name,
            attach_type,
            filter.priority,
            filter.handle.into(),
            None,
        )
        .with_context(context)?;
        let classifier = self.classifier(program)?;
        let id = classifier.attach_to_link(link).with_context(context)?;
        // As after attaching: the filter outlives this agent, whose handle would delete it.
        std::mem::forget(classifier.take_link(id).with_context(context)?);
        self.attached.push(format!("{}/{hook}", interface.name));
        Ok(())
    }

    /// Swaps `program` into the pinned link of a previous agent, atomically.
    pub(super) fn replace_program(
        &mut self,
        program: &str,
        interface: &Interface,
        attach_type: TcAttachType,
        pin: &Path,
    ) -> anyhow::Result<()> {
        let hook = hook_name(attach_type);
        let context = || format!("taking over the link {}", pin.display());
        let link = PinnedLink::from_pin(pin).with_context(context)?;
        let link = SchedClassifierLink::try_from(FdLink::from(link)).with_context(context)?;
        self.classifier(program)?
            .attach_to_link(link)
            .with_context(context)?;
        self.attached.push(format!("{}/{hook}", interface.name));
        Ok(())
    }
}
