//! `ftpnat run`: preflight checks, load and attach, then wait for SIGINT/SIGTERM and tear down.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aya::programs::{SchedClassifier, TcAttachType};
use ftp_common::maps::{InterfaceRole, programs};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    DEFAULT_PIN_DIR,
    attach::{Datapath, Interface, LoadOptions, hook_name},
    pins,
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The router interface facing the FTP servers (the public side).
    #[arg(long, value_name = "IFACE")]
    wan: String,
    /// The router interface facing the FTP clients (repeat for several).
    #[arg(long, value_name = "IFACE", required = true)]
    lan: Vec<String>,
    /// Directory on a bpffs mount where the maps are pinned for `ftpnat stats` and friends.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let interfaces = preflight(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(&args, &interfaces))
}

/// Everything that can be checked before touching the kernel, so that a wrong flag or a busy
/// interface fails with a clear message and leaves nothing behind.
fn preflight(args: &RunArgs) -> anyhow::Result<Vec<Interface>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "ftpnat run must run as root: it loads eBPF programs and attaches them to interfaces \
             (CAP_BPF, CAP_NET_ADMIN)"
        );
    }
    let mut interfaces = vec![Interface::resolve(&args.wan, InterfaceRole::Wan, "--wan")?];
    for lan in &args.lan {
        if interfaces.iter().any(|known| &known.name == lan) {
            bail!("interface '{lan}' is given twice (--wan/--lan); each interface has one role");
        }
        interfaces.push(Interface::resolve(lan, InterfaceRole::Lan, "--lan")?);
    }
    pins::require_bpffs(&args.pin_dir)?;
    for interface in &interfaces {
        refuse_if_already_attached(interface)?;
    }
    let stale = pins::existing_pins(&args.pin_dir);
    if !stale.is_empty() {
        // No ftpnat program is attached to our interfaces (checked above), so these pins are left
        // over from an agent that was killed; reusing them would resurrect its counters.
        log::warn!(
            "removing stale pins from a previous run under {}",
            args.pin_dir.display()
        );
        pins::remove_pins(&args.pin_dir)?;
    }
    Ok(interfaces)
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

async fn serve(args: &RunArgs, interfaces: &[Interface]) -> anyhow::Result<()> {
    let options = LoadOptions {
        pin_dir: &args.pin_dir,
        kernel_log_level: kernel_log_level(log::max_level()),
    };
    let mut datapath = Datapath::load_and_attach(&options, interfaces)?;
    log::info!(
        "attached to {}; maps pinned under {}",
        datapath.attached().join(", "),
        datapath.pin_dir().display()
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
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
