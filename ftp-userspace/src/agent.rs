//! `ftpnat run`: preflight checks, load and attach, then wait for SIGINT/SIGTERM and tear down.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use aya::programs::{SchedClassifier, TcAttachType};
use ftp_common::maps::{Counter, InterfaceRole, programs};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    attach::{Datapath, Interface, LoadOptions, NatSettings, hook_name},
    config::{self, RunArgs, RunOptions},
    expire::{self, ExpiryPolicy},
    pins,
    settings::{self, Ipv4Prefix, PortWindow},
    stats,
};

/// How often finished and idle connections are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let options = config::resolve(args)?;
    let (interfaces, nat) = preflight(&options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(options.pin_dir(), &interfaces, &nat))
}

/// Everything that can be checked before touching the kernel, so that a wrong flag or a busy
/// interface fails with a clear message and leaves nothing behind.
fn preflight(options: &RunOptions) -> anyhow::Result<(Vec<Interface>, NatSettings)> {
    let (wan, lans) = (options.wan()?, options.lan()?);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "ftpnat run must run as root: it loads eBPF programs and attaches them to interfaces \
             (CAP_BPF, CAP_NET_ADMIN)"
        );
    }
    let mut interfaces = vec![Interface::resolve(wan, InterfaceRole::Wan, "--wan")?];
    for lan in lans {
        if interfaces.iter().any(|known| &known.name == lan) {
            bail!("interface '{lan}' is given twice (--wan/--lan); each interface has one role");
        }
        interfaces.push(Interface::resolve(lan, InterfaceRole::Lan, "--lan")?);
    }
    let nat = nat_settings(options, wan, lans, &interfaces)?;
    let pin_dir = options.pin_dir();
    pins::require_bpffs(pin_dir)?;
    for interface in &interfaces {
        refuse_if_already_attached(interface)?;
    }
    let stale = pins::existing_pins(pin_dir);
    if !stale.is_empty() {
        // No ftpnat program is attached to our interfaces (checked above), so these pins are left
        // over from an agent that was killed; reusing them would resurrect its counters.
        log::warn!(
            "removing stale pins from a previous run under {}",
            pin_dir.display()
        );
        pins::remove_pins(pin_dir)?;
    }
    Ok((interfaces, nat))
}

fn nat_settings(
    options: &RunOptions,
    wan: &str,
    lan_names: &[String],
    interfaces: &[Interface],
) -> anyhow::Result<NatSettings> {
    let local = settings::local_port_range()?;
    let window = match options.port_window {
        Some(window) => {
            settings::validate_window(window, &local)?;
            window
        }
        None => settings::default_window(&local)?,
    };
    let ftp_ports = if options.ftp_ports.is_empty() {
        vec![21]
    } else {
        options.ftp_ports.clone()
    };
    settings::validate_ftp_ports(&ftp_ports)?;
    let mut lans = Vec::new();
    for lan in interfaces.iter().filter(|i| i.role == InterfaceRole::Lan) {
        let prefixes = settings::ipv4_addresses(&lan.name)?
            .into_iter()
            .map(Ipv4Prefix::network)
            .collect();
        lans.push((lan.name.clone(), lan.ifindex, prefixes));
    }
    let published = settings::resolve_published(&options.publish, window, &lans)?;
    Ok(NatSettings {
        published,
        public_ip: settings::public_ip(options.public_ip, wan)?,
        masquerade: settings::masquerade_prefixes(&options.masquerade, lan_names)?,
        ftp_ports,
        window,
        expect_timeout: options.expect_timeout(),
    })
}

fn refuse_if_already_attached(interface: &Interface) -> anyhow::Result<()> {
    for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_revision, attached) = SchedClassifier::query_tcx(&interface.name, attach_type)
            .with_context(|| {
                format!(
                    "querying the TC programs on {} {}",
                    interface.name,
                    hook_name(attach_type)
                )
            })?;
        if let Some(ours) = attached.iter().find(|info| {
            matches!(
                info.name_as_str(),
                Some(programs::INGRESS | programs::EGRESS)
            )
        }) {
            bail!(
                "interface '{}' already has ftpnat's {} program attached at {} (program id {}): \
                 another `ftpnat run` manages it; stop that agent first",
                interface.name,
                ours.name_as_str().unwrap_or("?"),
                hook_name(attach_type),
                ours.id()
            );
        }
    }
    Ok(())
}

async fn serve(pin_dir: &Path, interfaces: &[Interface], nat: &NatSettings) -> anyhow::Result<()> {
    let options = LoadOptions {
        pin_dir,
        kernel_log_level: kernel_log_level(log::max_level()),
    };
    // Handlers first: a SIGTERM that arrives while (or right after) the programs attach must still
    // take the orderly detach path below, not kill the process with the pins left behind.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut datapath = Datapath::load_and_attach(&options, interfaces, nat)?;
    log::info!(
        "attached to {}; maps pinned under {}",
        datapath.attached().join(", "),
        datapath.pin_dir().display()
    );
    log::info!(
        "masquerading FTP (ports {:?}) from {} behind {}, port window {} ({} ports)",
        nat.ftp_ports,
        nat.masquerade
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        nat.public_ip,
        nat.window,
        nat.window.len()
    );
    for published in &nat.published {
        log::info!(
            "publishing {}:{} -> {}:{} (via {})",
            nat.public_ip,
            published.spec.public_port,
            published.spec.server,
            published.spec.server_port,
            published.lan
        );
    }
    let policy = ExpiryPolicy::default();
    let mut exhaustion = ExhaustionWatch::default();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);

    let mut kernel_log = match datapath.take_kernel_logger() {
        // SAFETY: the logger owns the ring buffer's fd and is moved into the AsyncFd, so the fd
        // stays open for as long as it is registered.
        Some(logger) => Some(
            unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
                .map_err(|err| err.into_parts().1)
                .context("watching the kernel log map")?,
        ),
        None => None,
    };
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sweep.tick() => {
                let swept = expire::sweep(&mut datapath.state_tables()?, expire::monotonic_now_ns(), &policy)?;
                if swept.connections > 0 {
                    log::debug!("expired {} connections, {} ports back in the window", swept.connections, swept.ports_returned);
                }
                exhaustion.check(datapath.pin_dir(), nat.window);
            }
            readable = async {
                match kernel_log.as_mut() {
                    Some(fd) => fd.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = readable.context("waiting on the kernel log map")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    };
    log::info!("{signal_name} received: detaching");
    drop(kernel_log);
    let pin_dir = datapath.pin_dir().to_owned();
    drop(datapath);
    log::info!(
        "detached from all interfaces; pins under {} removed",
        pin_dir.display()
    );
    Ok(())
}

/// Reports window exhaustion once per sweep in which it happened, naming the window and the fix:
/// the datapath refused data connections (promptly, see the README), and the operator should know.
#[derive(Default)]
struct ExhaustionWatch {
    seen: u64,
}

impl ExhaustionWatch {
    fn check(&mut self, pin_dir: &Path, window: PortWindow) {
        let Ok(now) = stats::datapath_counter(pin_dir, Counter::WindowExhausted) else {
            return;
        };
        if now > self.seen {
            log::warn!(
                "port window {window} ({} ports) exhausted: {} requests for a data port refused \
                 since the last check ({now} in all); widen it with --port-window",
                window.len(),
                now - self.seen
            );
        }
        self.seen = now;
    }
}

/// aya-log's level numbering (error = 1 … trace = 5, 0 = nothing), so the kernel side does not
/// format records the agent would discard.
fn kernel_log_level(filter: log::LevelFilter) -> u8 {
    match filter {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => 1,
        log::LevelFilter::Warn => 2,
        log::LevelFilter::Info => 3,
        log::LevelFilter::Debug => 4,
        log::LevelFilter::Trace => 5,
    }
}
