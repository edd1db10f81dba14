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
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, ProgramArray, Queue,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
    },
};
use ftp_common::maps::{
    DatapathConfig, ExpectKey, Expectation, FlowEntry, FlowKey, InterfaceInfo, InterfaceRole,
    MAX_FTP_PORTS, PublishTarget, SessionEntry, names, programs,
};

mod attached;
mod classic_tc;
mod hooks;
mod interface;
mod mechanism;
pub mod pins;
pub mod records;

use crate::config::nat::{Ipv4Prefix, PortWindow, Published};

use attached::ours_attached;
pub use attached::{await_detached, ftpnat_programs_at, lost_interfaces};
use hooks::HOOKS;
pub use hooks::hook_name;
pub use interface::Interface;
pub use mechanism::Mechanism;
use records::{FilterRecord, PinnedHook};

/// The object built from ftp-ebpf, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftp-ebpf"));

/// How many lines of the verifier's log to show when it rejects a program: the reason is at the end.
const VERIFIER_LOG_TAIL_LINES: usize = 30;

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

/// The datapath's state, as the agent's expiry sees it.
pub struct StateTables<'a> {
    pub flows: HashMap<&'a mut MapData, FlowKey, FlowEntry>,
    pub free_ports: Queue<&'a mut MapData, u16>,
    pub expects: HashMap<&'a mut MapData, ExpectKey, Expectation>,
    /// Read only: the datapath alone writes session records.
    pub sessions: HashMap<&'a mut MapData, FlowKey, SessionEntry>,
    /// Expectations released per session, which only the agent writes.
    pub released: HashMap<&'a mut MapData, FlowKey, u32>,
}

pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct LoadOptions<'a> {
    pub pin_dir: &'a Path,
    /// Highest level the kernel side should emit (aya-log's numbering: 0 = off … 5 = trace).
    pub kernel_log_level: u8,
    /// How the programs attach; a pinned datapath attached another way is not adopted.
    pub mechanism: Mechanism,
}

/// What the datapath translates, resolved from the flags.
#[derive(Debug, Clone)]
pub struct NatSettings {
    pub public_ip: std::net::Ipv4Addr,
    pub masquerade: Vec<Ipv4Prefix>,
    pub ftp_ports: Vec<u16>,
    pub window: PortWindow,
    pub expect_timeout: std::time::Duration,
    pub max_expectations_per_session: u8,
    pub allow_privileged_data_ports: bool,
    pub published: Vec<Published>,
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

    fn load(options: &LoadOptions<'_>, state_dir: &Path) -> anyhow::Result<Ebpf> {
        // Maps already pinned there are reused, not recreated: that is what adoption relies on.
        EbpfLoader::new()
            .default_map_pin_directory(state_dir)
            .override_global(aya_log::LEVEL, &options.kernel_log_level, false)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")
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
        let started = Self::load(options, state_dir).and_then(|ebpf| {
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
            ebpf: Self::load(options, state_dir)?,
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
            .ok_or_else(|| anyhow!("map {} is missing from the embedded object", names::EVENTS))?;
        Ok(aya::maps::RingBuf::try_from(map)?)
    }

    /// Hands over the reader of the kernel programs' log (once the programs are loaded).
    pub fn take_kernel_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    fn classifier(&mut self, program: &str) -> anyhow::Result<&mut SchedClassifier> {
        let prog = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} is missing from the embedded object"))?;
        prog.try_into()
            .with_context(|| format!("program {program} is not a TC classifier"))
    }

    fn load_program(&mut self, program: &str) -> anyhow::Result<()> {
        self.classifier(program)?
            .load()
            .map_err(|err| explain_load_error(program, err))
    }

    /// Attaches `program` with a new TCX link and pins the link, so that it outlives the agent.
    fn attach_and_pin(
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
    fn attach_filter_and_record(
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
    fn replace_filter_program(
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
    fn replace_program(
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

    fn configure(&mut self, interfaces: &[Interface], nat: &NatSettings) -> anyhow::Result<()> {
        let config = datapath_config(interfaces, nat)?;
        let mut array: Array<_, DatapathConfig> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        array
            .set(0, config, 0)
            .context("writing the datapath config")?;

        let mut trie: LpmTrie<_, [u8; 4], u8> =
            LpmTrie::try_from(self.map_mut(names::MASQUERADE)?)?;
        for prefix in &nat.masquerade {
            trie.insert(&Key::new(u32::from(prefix.len), prefix.addr.octets()), 1, 0)
                .with_context(|| format!("adding masqueraded prefix {prefix}"))?;
        }

        let mut publish: HashMap<_, u16, PublishTarget> =
            HashMap::try_from(self.map_mut(names::PUBLISH)?)?;
        for published in &nat.published {
            publish
                .insert(published.spec.public_port, publish_target(published), 0)
                .with_context(|| format!("adding published server {}", published.spec))?;
        }

        let mut free: Queue<_, u16> = Queue::try_from(self.map_mut(names::FREE_PORTS)?)?;
        for port in nat.window.ports() {
            free.push(port, 0)
                .with_context(|| format!("filling the port window with {port}"))?;
        }
        Ok(())
    }

    /// How the settings the pinned maps hold differ from `nat` and `interfaces`, for the operator.
    fn settings_differences(
        &mut self,
        interfaces: &[Interface],
        nat: &NatSettings,
    ) -> anyhow::Result<Vec<String>> {
        let mut differences = Vec::new();
        let wanted = datapath_config(interfaces, nat)?;
        let config: Array<_, DatapathConfig> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        let pinned = config.get(&0, 0).context("reading the pinned config")?;
        let mut differ = |what: &str, pinned: String, wanted: String| {
            if pinned != wanted {
                differences.push(format!("{what} {pinned}, not {wanted}"));
            }
        };
        differ(
            "public address",
            Ipv4Addr::from(pinned.public_ip).to_string(),
            nat.public_ip.to_string(),
        );
        differ(
            "port window",
            format!("{}-{}", pinned.window_lo, pinned.window_hi),
            nat.window.to_string(),
        );
        differ(
            "FTP ports",
            format!("{:?}", ports_of(&pinned.ftp_ports)),
            format!("{:?}", ports_of(&wanted.ftp_ports)),
        );
        differ(
            "expect timeout",
            format!("{} s", pinned.expect_timeout_ns / 1_000_000_000),
            format!("{} s", wanted.expect_timeout_ns / 1_000_000_000),
        );
        differ(
            "expectations per session",
            pinned.policy().max_outstanding_expectations.to_string(),
            wanted.policy().max_outstanding_expectations.to_string(),
        );
        differ(
            "privileged data ports",
            allowed(pinned.allow_privileged_data_ports),
            allowed(wanted.allow_privileged_data_ports),
        );
        differ(
            "WAN ifindex",
            pinned.wan_ifindex.to_string(),
            wanted.wan_ifindex.to_string(),
        );

        let trie: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(self.map_mut(names::MASQUERADE)?)?;
        let mut pinned_prefixes: Vec<String> = trie
            .keys()
            .filter_map(Result::ok)
            .map(|key| format!("{}/{}", Ipv4Addr::from(key.data()), key.prefix_len()))
            .collect();
        pinned_prefixes.sort();
        let mut wanted_prefixes: Vec<String> =
            nat.masquerade.iter().map(ToString::to_string).collect();
        wanted_prefixes.sort();
        wanted_prefixes.dedup();
        differences.extend((pinned_prefixes != wanted_prefixes).then(|| {
            format!(
                "masqueraded prefixes [{}], not [{}]",
                pinned_prefixes.join(", "),
                wanted_prefixes.join(", ")
            )
        }));

        let publish: HashMap<_, u16, PublishTarget> =
            HashMap::try_from(self.map_mut(names::PUBLISH)?)?;
        let mut pinned_published: Vec<(u16, PublishTarget)> =
            publish.iter().filter_map(Result::ok).collect();
        pinned_published.sort_by_key(|(port, _)| *port);
        let mut wanted_published: Vec<(u16, PublishTarget)> = nat
            .published
            .iter()
            .map(|p| (p.spec.public_port, publish_target(p)))
            .collect();
        wanted_published.sort_by_key(|(port, _)| *port);
        let show = |list: &[(u16, PublishTarget)]| {
            list.iter()
                .map(|(port, t)| {
                    format!(
                        "{port}={}:{}",
                        Ipv4Addr::from(t.server_addr),
                        u16::from_be_bytes(t.server_port)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if pinned_published != wanted_published {
            differences.push(format!(
                "published servers [{}], not [{}]",
                show(&pinned_published),
                show(&wanted_published)
            ));
        }
        Ok(differences)
    }

    /// Loads the ingress program's stages and fills this load's stage table with them.
    fn load_stages(&mut self) -> anyhow::Result<()> {
        let mut loaded = Vec::new();
        for (slot, program) in programs::STAGES {
            self.load_program(program)?;
            let fd = self
                .classifier(program)?
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
                .with_context(|| format!("taking a descriptor of program {program}"))?;
            loaded.push((slot, program, fd));
        }
        let mut stages: ProgramArray<_> = ProgramArray::try_from(self.map_mut(names::STAGES)?)?;
        for (slot, program, fd) in &loaded {
            stages
                .set(*slot, fd, 0)
                .with_context(|| format!("putting {program} in the stage table"))?;
        }
        Ok(())
    }

    /// Pins this load's stage table in the state dir, in place of a previous agent's: a program
    /// array is emptied when nothing holds it any more, and the attached programs outlive the
    /// agent.
    fn pin_stages(&mut self, state_dir: &Path) -> anyhow::Result<()> {
        let pin = state_dir.join(names::STAGES);
        match fs::remove_file(&pin) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("unpinning {}", pin.display())),
        }
        ProgramArray::try_from(self.map_mut(names::STAGES)?)?
            .pin(&pin)
            .with_context(|| format!("pinning the stage table at {}", pin.display()))
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} is missing from the embedded object"))
    }

    /// The tables expiry works on.
    pub fn state_tables(&mut self) -> anyhow::Result<StateTables<'_>> {
        let [flows, free, expects, sessions, released] = self.ebpf.maps_disjoint_mut([
            names::FLOWS,
            names::FREE_PORTS,
            names::EXPECTS,
            names::SESSIONS,
            names::RELEASED,
        ]);
        let missing = |name: &str| anyhow!("map {name} is missing from the embedded object");
        Ok(StateTables {
            flows: HashMap::try_from(flows.ok_or_else(|| missing(names::FLOWS))?)?,
            free_ports: Queue::try_from(free.ok_or_else(|| missing(names::FREE_PORTS))?)?,
            expects: HashMap::try_from(expects.ok_or_else(|| missing(names::EXPECTS))?)?,
            sessions: HashMap::try_from(sessions.ok_or_else(|| missing(names::SESSIONS))?)?,
            released: HashMap::try_from(released.ok_or_else(|| missing(names::RELEASED))?)?,
        })
    }

    fn record_interfaces(&mut self, interfaces: &[Interface]) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut(names::INTERFACES)
            .ok_or_else(|| anyhow!("map {} is missing from the object", names::INTERFACES))?;
        let mut table: HashMap<_, u32, InterfaceInfo> = HashMap::try_from(map)?;
        for interface in interfaces {
            let info = InterfaceInfo::new(&interface.name, interface.role)
                .ok_or_else(|| anyhow!("interface name {:?} is too long", interface.name))?;
            table
                .insert(interface.ifindex, info, 0)
                .with_context(|| format!("recording interface {}", interface.name))?;
        }
        Ok(())
    }
}

/// The datapath's settings as the CONFIG map holds them.
fn datapath_config(interfaces: &[Interface], nat: &NatSettings) -> anyhow::Result<DatapathConfig> {
    let wan = interfaces
        .iter()
        .find(|i| i.role == InterfaceRole::Wan)
        .ok_or_else(|| anyhow!("no WAN interface"))?;
    let mut ftp_ports = [0u16; MAX_FTP_PORTS];
    for (slot, port) in ftp_ports.iter_mut().zip(&nat.ftp_ports) {
        *slot = *port;
    }
    Ok(DatapathConfig {
        expect_timeout_ns: u64::try_from(nat.expect_timeout.as_nanos()).unwrap_or(u64::MAX),
        allow_privileged_data_ports: u8::from(nat.allow_privileged_data_ports),
        max_expectations_per_session: nat.max_expectations_per_session,
        _pad: [0; 2],
        public_ip: nat.public_ip.octets(),
        wan_ifindex: wan.ifindex,
        ftp_ports,
        window_lo: nat.window.lo,
        window_hi: nat.window.hi,
    })
}

fn allowed(flag: u8) -> String {
    if flag != 0 { "allowed" } else { "refused" }.to_owned()
}

fn ports_of(slots: &[u16; MAX_FTP_PORTS]) -> Vec<u16> {
    let mut ports: Vec<u16> = slots.iter().copied().filter(|p| *p != 0).collect();
    ports.sort_unstable();
    ports
}

fn publish_target(published: &Published) -> PublishTarget {
    PublishTarget {
        server_addr: published.spec.server.octets(),
        server_port: published.spec.server_port.to_be_bytes(),
        _pad: [0; 2],
        lan_ifindex: published.lan_ifindex,
    }
}

pub fn explain_load_error(program: &str, err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!(verifier_rejection(
            program,
            &io_error,
            &verifier_log.to_string()
        )),
        other => anyhow::Error::new(other).context(format!("loading program {program}")),
    }
}

/// The operator's message for a program the verifier refused: the reason is at the end of its log,
/// so only the last [`VERIFIER_LOG_TAIL_LINES`] lines are shown, and said to be the verifier's.
fn verifier_rejection(program: &str, io_error: &std::io::Error, log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(VERIFIER_LOG_TAIL_LINES)..];
    format!(
        "the kernel's verifier rejected program {program} ({io_error}); last {} lines of its \
         log:\n{}",
        tail.len(),
        tail.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EACCES)
    }

    #[test]
    fn verifier_rejection_shows_only_the_end_of_a_long_log() {
        let log: String = (1..=100).map(|n| format!("insn {n}\n")).collect();
        let message = verifier_rejection("ftpnat_ingress", &denied(), &log);
        let (headline, tail) = message.split_once('\n').expect("a headline, then the log");
        assert!(
            headline.starts_with("the kernel's verifier rejected program ftpnat_ingress ("),
            "{headline}"
        );
        assert!(headline.contains("Permission denied"), "{headline}");
        assert!(
            headline.ends_with(&format!("last {VERIFIER_LOG_TAIL_LINES} lines of its log:")),
            "{headline}"
        );
        let shown: Vec<&str> = tail.lines().collect();
        let expected: Vec<String> = (100 - VERIFIER_LOG_TAIL_LINES + 1..=100)
            .map(|n| format!("insn {n}"))
            .collect();
        assert_eq!(shown, expected);
    }

    #[test]
    fn verifier_rejection_shows_a_short_log_whole() {
        let message = verifier_rejection(
            "ftpnat_egress",
            &denied(),
            "0: R1=ctx() R10=fp0\nR2 pointer arithmetic prohibited\n",
        );
        assert!(
            message.ends_with(
                "last 2 lines of its log:\n0: R1=ctx() R10=fp0\nR2 pointer arithmetic prohibited"
            ),
            "{message}"
        );
    }
}
