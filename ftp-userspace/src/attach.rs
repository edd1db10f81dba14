//! Loading the object and attaching its programs, all or nothing.
//!
//! [`Datapath`] owns the loaded object. Its TC links are TCX file-descriptor links, so they detach
//! when it is dropped; its `Drop` also removes the pins. Every failure after loading therefore
//! unwinds to "nothing attached, nothing pinned", and so does a clean shutdown.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, Queue,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, SchedClassifier, TcAttachType},
};
use ftp_common::maps::{
    DatapathConfig, ExpectKey, Expectation, FlowEntry, FlowKey, InterfaceInfo, InterfaceRole,
    MAX_FTP_PORTS, PublishTarget, SessionEntry, names, programs,
};

use crate::{
    pins,
    settings::{Ipv4Prefix, PortWindow, Published},
};

/// The object built from ftp-ebpf, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftp-ebpf"));

/// How many lines of the verifier's log to show when it rejects a program: the reason is at the end.
const VERIFIER_LOG_TAIL_LINES: usize = 30;

/// An interface to attach to and what it faces.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub role: InterfaceRole,
}

impl Interface {
    /// Resolves `name` in the current network namespace; `flag` names the option it came from.
    pub fn resolve(name: &str, role: InterfaceRole, flag: &str) -> anyhow::Result<Self> {
        let c_name = CString::new(name).map_err(|_| anyhow!("{flag} {name:?} contains a NUL"))?;
        // SAFETY: `c_name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            bail!(
                "interface '{name}' ({flag}) does not exist in this network namespace; \
                 list the interfaces with `ip link` and pass an existing one"
            );
        }
        Ok(Self {
            name: name.to_owned(),
            ifindex,
            role,
        })
    }
}

/// The loaded object with its programs attached and its maps pinned.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attached: Vec<String>,
    /// Reader of the kernel programs' log map; it must outlive the programs' load, then the agent
    /// takes it to drain it.
    logger: Option<KernelLogger>,
}

/// The datapath's state, as the agent's expiry sees it.
pub struct StateTables<'a> {
    pub flows: HashMap<&'a mut MapData, FlowKey, FlowEntry>,
    pub free_ports: Queue<&'a mut MapData, u16>,
    pub expects: HashMap<&'a mut MapData, ExpectKey, Expectation>,
    pub sessions: HashMap<&'a mut MapData, FlowKey, SessionEntry>,
}

pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct LoadOptions<'a> {
    pub pin_dir: &'a Path,
    /// Highest level the kernel side should emit (aya-log's numbering: 0 = off … 5 = trace).
    pub kernel_log_level: u8,
}

/// What the datapath translates, resolved from the flags.
#[derive(Debug, Clone)]
pub struct NatSettings {
    pub public_ip: std::net::Ipv4Addr,
    pub masquerade: Vec<Ipv4Prefix>,
    pub ftp_ports: Vec<u16>,
    pub window: PortWindow,
    pub expect_timeout: std::time::Duration,
    pub published: Vec<Published>,
}

impl Datapath {
    /// Loads the object with its maps pinned under `options.pin_dir`, then attaches the ingress and
    /// egress programs to every interface. On error nothing stays attached or pinned.
    pub fn load_and_attach(
        options: &LoadOptions<'_>,
        interfaces: &[Interface],
        nat: &NatSettings,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(options.pin_dir)
            .with_context(|| format!("creating pin directory {}", options.pin_dir.display()))?;
        let ebpf = match EbpfLoader::new()
            .default_map_pin_directory(options.pin_dir)
            .override_global(aya_log::LEVEL, &options.kernel_log_level, false)
            .load(EBPF_OBJECT)
        {
            Ok(ebpf) => ebpf,
            Err(err) => {
                // Maps pinned before the failure must not outlive it.
                let _ = pins::remove_pins(options.pin_dir);
                return Err(err).context("loading the eBPF object");
            }
        };
        let mut datapath = Datapath {
            ebpf,
            pin_dir: options.pin_dir.to_owned(),
            attached: Vec::new(),
            logger: None,
        };
        datapath.start_kernel_log();
        // Configured before anything is attached, so the first packet already meets the settings.
        datapath.record_interfaces(interfaces)?;
        datapath.configure(interfaces, nat)?;
        for (program, attach_type) in [
            (programs::INGRESS, TcAttachType::Ingress),
            (programs::EGRESS, TcAttachType::Egress),
        ] {
            datapath.load_program(program)?;
            for interface in interfaces {
                datapath.attach_program(program, interface, attach_type)?;
            }
        }
        Ok(datapath)
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

    fn attach_program(
        &mut self,
        program: &str,
        interface: &Interface,
        attach_type: TcAttachType,
    ) -> anyhow::Result<()> {
        let hook = hook_name(attach_type);
        self.classifier(program)?
            .attach(&interface.name, attach_type)
            .with_context(|| format!("attaching {program} to {} {hook}", interface.name))?;
        self.attached.push(format!("{}/{hook}", interface.name));
        Ok(())
    }

    fn configure(&mut self, interfaces: &[Interface], nat: &NatSettings) -> anyhow::Result<()> {
        let wan = interfaces
            .iter()
            .find(|i| i.role == InterfaceRole::Wan)
            .ok_or_else(|| anyhow!("no WAN interface"))?;
        let mut ftp_ports = [0u16; MAX_FTP_PORTS];
        for (slot, port) in ftp_ports.iter_mut().zip(&nat.ftp_ports) {
            *slot = *port;
        }
        let config = DatapathConfig {
            expect_timeout_ns: u64::try_from(nat.expect_timeout.as_nanos()).unwrap_or(u64::MAX),
            _pad: 0,
            public_ip: nat.public_ip.octets(),
            wan_ifindex: wan.ifindex,
            ftp_ports,
            window_lo: nat.window.lo,
            window_hi: nat.window.hi,
        };
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
            let target = PublishTarget {
                server_addr: published.spec.server.octets(),
                server_port: published.spec.server_port.to_be_bytes(),
                _pad: [0; 2],
                lan_ifindex: published.lan_ifindex,
            };
            publish
                .insert(published.spec.public_port, target, 0)
                .with_context(|| format!("adding published server {}", published.spec))?;
        }

        let mut free: Queue<_, u16> = Queue::try_from(self.map_mut(names::FREE_PORTS)?)?;
        for port in nat.window.ports() {
            free.push(port, 0)
                .with_context(|| format!("filling the port window with {port}"))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} is missing from the embedded object"))
    }

    /// The tables expiry works on.
    pub fn state_tables(&mut self) -> anyhow::Result<StateTables<'_>> {
        let [flows, free, expects, sessions] = self.ebpf.maps_disjoint_mut([
            names::FLOWS,
            names::FREE_PORTS,
            names::EXPECTS,
            names::SESSIONS,
        ]);
        let missing = |name: &str| anyhow!("map {name} is missing from the embedded object");
        Ok(StateTables {
            flows: HashMap::try_from(flows.ok_or_else(|| missing(names::FLOWS))?)?,
            free_ports: Queue::try_from(free.ok_or_else(|| missing(names::FREE_PORTS))?)?,
            expects: HashMap::try_from(expects.ok_or_else(|| missing(names::EXPECTS))?)?,
            sessions: HashMap::try_from(sessions.ok_or_else(|| missing(names::SESSIONS))?)?,
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

impl Drop for Datapath {
    fn drop(&mut self) {
        // The links detach when `ebpf` drops right after this; the pins would otherwise outlive us.
        if let Err(err) = pins::remove_pins(&self.pin_dir) {
            log::error!("{err:#}");
        }
    }
}

pub fn hook_name(attach_type: TcAttachType) -> &'static str {
    match attach_type {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    }
}

fn explain_load_error(program: &str, err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(VERIFIER_LOG_TAIL_LINES)..];
            anyhow!(
                "the kernel's verifier rejected program {program} ({io_error}); last {} lines of \
                 its log:\n{}",
                tail.len(),
                tail.join("\n")
            )
        }
        other => anyhow::Error::new(other).context(format!("loading program {program}")),
    }
}
