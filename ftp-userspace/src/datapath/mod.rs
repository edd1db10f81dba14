//! Loading the object and attaching its programs, all or nothing; or adopting the datapath a
//! previous agent left pinned.
//!
//! [`Datapath`] owns the loaded object. Its programs attach through TCX links pinned in the state
//! dir (see [`pins`]), or, on kernels without TCX, through classic TC filters recorded there (see
//! [`classic_tc`]); either way they stay attached when the agent exits or dies. A new agent with
//! the same settings loads the object over the pinned maps and swaps its programs in atomically —
//! into the pinned links (`bpf_link_update`), or into the filters at their priority and handle
//! (the kernel replaces a cls_bpf filter's program in place): no packet meets an unattached
//! interface, no session is lost. A failed fresh start unwinds to "nothing attached, nothing
//! pinned"; a failed adoption leaves the running datapath as it was.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, EbpfLoader, maps::MapData, programs::SchedClassifier};
use ftp_common::maps::{Capacities, names};

mod attach;
mod attached;
mod batch;
mod classic_tc;
pub mod clock;
mod configure;
mod hooks;
mod interface;
pub mod maps;
mod mechanism;
pub mod object;
pub mod pins;
pub mod records;
mod stages;

use attached::ours_attached;
pub use attached::{await_detached, ftpnat_programs_at, lost_interfaces};
pub use configure::NatSettings;
use hooks::HOOKS;
pub use hooks::hook_name;
pub use interface::Interface;
pub use mechanism::Mechanism;
use object::{EBPF_OBJECT, explain_load_error, missing_map};
use records::PinnedHook;

/// The loaded object with its programs attached and its maps pinned.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attached: Vec<String>,
    /// Reader of the kernel programs' log map; it must outlive the programs' load, then the agent
    /// takes it to drain it.
    logger: Option<KernelLogger>,
    origin: Origin,
    mechanism: Mechanism,
}

pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct LoadOptions<'a> {
    pub pin_dir: &'a Path,
    /// Highest level the kernel side should emit (aya-log's numbering: 0 = off … 5 = trace).
    pub kernel_log_level: u8,
    /// How the programs attach; a pinned datapath attached another way is not adopted.
    pub mechanism: Mechanism,
}

/// How the agent came by its datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded, configured and attached by this agent.
    Fresh,
    /// Left pinned by a previous agent and taken over, sessions and all.
    Adopted,
}

impl Datapath {
    /// Attaches the datapath: adopts the one pinned under `options.pin_dir` if there is one (it
    /// must have been made with the same settings and mechanism) and it is still attached where
    /// its links or filters say; else loads and attaches a fresh one.
    pub fn load_and_attach(
        options: &LoadOptions<'_>,
        interfaces: &[Interface],
        nat: &NatSettings,
    ) -> anyhow::Result<Self> {
        let state_dir = pins::state_dir(options.pin_dir);
        let attachments = records::existing_attachments(&state_dir);
        if attachments.is_empty() {
            return Self::fresh(options, &state_dir, interfaces, nat);
        }
        // A pinned link or recorded filter whose program the kernel no longer lists was attached
        // to an interface that has since been deleted (and maybe created again under its name, as
        // a PPPoE reconnect does). Such a datapath carries nothing through it any more: adopting
        // it would leave that interface without programs, so it makes way for a fresh one.
        let lost: Vec<String> = attachments
            .iter()
            .filter_map(|path| PinnedHook::of_path(path))
            .filter(|hook| ours_attached(hook) == Some(false))
            .map(|hook| format!("{}/{}", hook.interface, hook.hook))
            .collect();
        if lost.is_empty() {
            return Self::adopt(options, &state_dir, interfaces, nat);
        }
        log::warn!(
            "the datapath pinned under {} is no longer attached at {} (the interface was deleted \
             or created again): removing it and attaching afresh",
            options.pin_dir.display(),
            lost.join(", ")
        );
        let removed = pins::remove_state(options.pin_dir, false)?;
        await_detached(&removed.hooks)?;
        Self::fresh(options, &state_dir, interfaces, nat)
    }

    fn load(
        options: &LoadOptions<'_>,
        state_dir: &Path,
        capacities: &Capacities,
    ) -> anyhow::Result<Ebpf> {
        // Maps already pinned there are reused, not recreated: that is what adoption relies on
        // (and why an adopted datapath's sizes are compared with the settings').
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(state_dir).override_global(
            aya_log::LEVEL,
            &options.kernel_log_level,
            false,
        );
        for table in ftp_common::maps::PINNED {
            if let Some(entries) = capacities.of_table(table.name) {
                loader.map_max_entries(table.name, entries);
            }
        }
        loader.load(EBPF_OBJECT).context("loading the eBPF object")
    }

    fn fresh(
        options: &LoadOptions<'_>,
        state_dir: &Path,
        interfaces: &[Interface],
        nat: &NatSettings,
    ) -> anyhow::Result<Self> {
        if !pins::existing_maps(state_dir).is_empty() {
            // Maps without links or filters: a datapath that was detached half-way or failed to
            // start.
            // Reusing them would resurrect its sessions and ports without programs behind them.
            log::warn!("removing stale pins under {}", state_dir.display());
            pins::remove_state(options.pin_dir, false)?;
        }
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let started = Self::load(options, state_dir, &nat.capacities).and_then(|ebpf| {
            let mut datapath = Datapath {
                ebpf,
                pin_dir: options.pin_dir.to_owned(),
                attached: Vec::new(),
                logger: None,
                origin: Origin::Fresh,
                mechanism: options.mechanism,
            };
            datapath.start_kernel_log();
            // Configured before anything is attached, so the first packet already meets the
            // settings.
            datapath.record_interfaces(interfaces)?;
            datapath.configure(interfaces, nat)?;
            // The stages first: an attached ingress program continues in them at once.
            datapath.load_stages()?;
            datapath.pin_stages(state_dir)?;
            for (program, attach_type) in HOOKS {
                datapath.load_program(program)?;
                for interface in interfaces {
                    match options.mechanism {
                        Mechanism::Tcx => {
                            datapath.attach_and_pin(program, interface, attach_type, state_dir)?;
                        }
                        Mechanism::Netlink => datapath.attach_filter_and_record(
                            program,
                            interface,
                            attach_type,
                            state_dir,
                        )?,
                    }
                }
            }
            Ok(datapath)
        });
        if started.is_err() {
            // Links, filters and maps made before the failure must not outlive it, nor its
            // programs the error message (which says nothing is attached).
            if let Ok(removed) = pins::remove_state(options.pin_dir, false) {
                let _ = await_detached(&removed.hooks);
            }
        }
        started
    }

    fn adopt(
        options: &LoadOptions<'_>,
        state_dir: &Path,
        interfaces: &[Interface],
        nat: &NatSettings,
    ) -> anyhow::Result<Self> {
        let detach_hint = format!(
            "run with the same settings to adopt it, or remove it with `ftpnat detach --pin-dir {}` \
             (this ends the transfers it carries)",
            options.pin_dir.display()
        );
        let pinned_mechanism = if records::existing_links(state_dir).is_empty() {
            Mechanism::Netlink
        } else {
            Mechanism::Tcx
        };
        if pinned_mechanism != options.mechanism {
            bail!(
                "the datapath under {} is attached through {pinned_mechanism}, not {} as this run \
                 would attach it; run with --tc-attach {} to adopt it, or remove it with `ftpnat \
                 detach --pin-dir {}` (this ends the transfers it carries)",
                state_dir.display(),
                options.mechanism,
                pinned_mechanism.flag_value(),
                options.pin_dir.display()
            );
        }
        let record = match options.mechanism {
            Mechanism::Tcx => records::link_pin,
            Mechanism::Netlink => records::filter_record,
        };
        let expected: Vec<PathBuf> = HOOKS
            .iter()
            .flat_map(|(_, attach_type)| {
                interfaces
                    .iter()
                    .map(move |i| record(state_dir, &i.name, hook_name(*attach_type)))
            })
            .collect();
        let mut sorted = expected.clone();
        sorted.sort();
        let present = records::existing_attachments(state_dir);
        if present != sorted {
            let names = |paths: &[PathBuf]| {
                paths
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "the datapath under {} is attached by {} but this run would attach {}: the \
                 interfaces differ; {detach_hint}",
                state_dir.display(),
                names(&present),
                names(&sorted)
            );
        }
        let mut datapath = Datapath {
            ebpf: Self::load(options, state_dir, &nat.capacities)?,
            pin_dir: options.pin_dir.to_owned(),
            attached: Vec::new(),
            logger: None,
            origin: Origin::Adopted,
            mechanism: options.mechanism,
        };
        let differences = datapath.settings_differences(interfaces, nat)?;
        if !differences.is_empty() {
            bail!(
                "the datapath under {} runs with other settings ({}); {detach_hint}",
                state_dir.display(),
                differences.join("; ")
            );
        }
        datapath.start_kernel_log();
        // This load's own stages, filled before its ingress program replaces the running one:
        // the running programs keep the previous agent's stages until the swap.
        datapath.load_stages()?;
        let mut attachments = expected.iter();
        for (program, attach_type) in HOOKS {
            datapath.load_program(program)?;
            for interface in interfaces {
                let Some(pin) = attachments.next() else {
                    bail!("internal error: fewer link pins or filter records than hooks");
                };
                match options.mechanism {
                    Mechanism::Tcx => {
                        datapath.replace_program(program, interface, attach_type, pin)?;
                    }
                    Mechanism::Netlink => {
                        datapath.replace_filter_program(program, interface, attach_type, pin)?;
                    }
                }
            }
        }
        datapath.pin_stages(state_dir)?;
        Ok(datapath)
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Removes the links or filters (detaching the programs, and waiting until the kernel has
    /// released them) and the maps; the pin dir goes when its lock is released, if empty by then.
    pub fn detach(self) -> anyhow::Result<pins::Removed> {
        let pin_dir = self.pin_dir.clone();
        // Our own descriptors to the links and maps go first, so that removing the pins destroys
        // them.
        drop(self);
        let removed = pins::remove_state(&pin_dir, false)?;
        await_detached(&removed.hooks)?;
        Ok(removed)
    }

    /// Interfaces and hooks attached, e.g. `wan0/ingress`, for the agent's log.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn start_kernel_log(&mut self) {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => self.logger = Some(logger),
            // The object may carry no log statements at a given build; the datapath works without.
            Err(err) => log::warn!("kernel-side logging unavailable: {err}"),
        }
    }

    /// Hands over the datapath's event ring buffer (once).
    pub fn take_events(&mut self) -> anyhow::Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| missing_map(names::EVENTS))?;
        Ok(aya::maps::RingBuf::try_from(map)?)
    }

    /// Hands over the reader of the kernel programs' log (once the programs are loaded).
    pub fn take_kernel_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    fn classifier(&mut self, program: &str) -> anyhow::Result<&mut SchedClassifier> {
        object::classifier(&mut self.ebpf, program)
    }

    fn load_program(&mut self, program: &str) -> anyhow::Result<()> {
        self.classifier(program)?
            .load()
            .map_err(|err| explain_load_error(program, err))
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| missing_map(name))
    }
}
