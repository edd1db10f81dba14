//! `ftpnat run`: preflight checks, load and attach, then wait for SIGINT/SIGTERM and tear down.

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::TcAttachType;
use ftp_common::maps::InterfaceRole;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};

pub mod events;
mod metrics;
mod reattach;
mod release;
mod sweep;
mod watch;

use events::{EVENT_BACKLOG, EventReporter, SessionIds};
use reattach::{STABLE_ATTACHMENT, next_delay, reattach};
use sweep::ExpiryPolicy;
use watch::{InterfacesLost, WatchError, watch};

use crate::{
    config::{
        nat::{self, Ipv4Prefix},
        run::{LogFormat, RunOptions},
    },
    datapath::{
        self, Datapath, Interface, LoadOptions, Mechanism, NatSettings, Origin, hook_name, pins,
    },
};

/// What preflight checked and prepared for `serve`.
struct Prepared {
    interfaces: Vec<Interface>,
    nat: NatSettings,
    mechanism: Mechanism,
    /// The bound `--metrics` socket.
    metrics: Option<TcpListener>,
    /// Held for the agent's life: no other ftpnat process manages the pin dir meanwhile.
    _lock: pins::PinDirLock,
}

pub fn run(args: RunOptions) -> anyhow::Result<()> {
    let prepared = preflight(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(&args, prepared))
}

/// Everything that can be checked before touching the kernel, so that a wrong flag or a busy
/// interface fails with a clear message and leaves nothing behind.
fn preflight(args: &RunOptions) -> anyhow::Result<Prepared> {
    let (wan, lans) = (args.wan()?, args.lan()?);
    // A NAT64 flag without --nat64 is the flags' own mistake: said before anything else.
    args.nat64()?;
    let pin_dir = args.pin_dir();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "ftpnat run must run as root: it loads eBPF programs and attaches them to interfaces \
             (CAP_BPF, CAP_NET_ADMIN, and CAP_SYS_ADMIN or CAP_PERFMON for the verifier)"
        );
    }
    let (interfaces, nat) = resolve(args, wan, lans)?;
    pins::require_bpffs(pin_dir)?;
    let lock = pins::lock(pin_dir)?;
    pins::refuse_foreign_state(pin_dir)?;
    pins::refuse_foreign_shapes(pin_dir)?;
    // A datapath pinned here is ours to adopt (checked when loading); programs attached any other
    // way belong to another agent or another pin dir.
    if datapath::records::existing_attachments(&pins::state_dir(pin_dir)).is_empty() {
        for interface in &interfaces {
            refuse_if_already_attached(interface)?;
        }
    }
    let (mechanism, why) = Mechanism::choose(args.tc_attach(), &interfaces[0].name)?;
    log::info!("attaching through {mechanism}: {why}");
    // Bound now, not once the agent runs: a busy or foreign address must fail before anything is
    // attached.
    let metrics = args.metrics.map(metrics::bind).transpose()?;
    Ok(Prepared {
        interfaces,
        nat,
        mechanism,
        metrics,
        _lock: lock,
    })
}

/// The interfaces (by index) and the translation settings the flags ask for, as this network
/// namespace has them now.
fn resolve(
    args: &RunOptions,
    wan: &str,
    lans: &[String],
) -> anyhow::Result<(Vec<Interface>, NatSettings)> {
    let mut interfaces = vec![Interface::resolve(wan, InterfaceRole::Wan, "--wan")?];
    for lan in lans {
        if interfaces.iter().any(|known| &known.name == lan) {
            bail!("interface '{lan}' is given twice (--wan/--lan); each interface has one role");
        }
        interfaces.push(Interface::resolve(lan, InterfaceRole::Lan, "--lan")?);
    }
    let nat = nat_settings(args, &interfaces)?;
    Ok((interfaces, nat))
}

fn nat_settings(args: &RunOptions, interfaces: &[Interface]) -> anyhow::Result<NatSettings> {
    let local = nat::local_port_range()?;
    let window = match args.port_window {
        Some(window) => {
            nat::validate_window(window, &local)?;
            window
        }
        None => nat::default_window(&local)?,
    };
    let ftp_ports = if args.ftp_ports.is_empty() {
        vec![21]
    } else {
        args.ftp_ports.clone()
    };
    nat::validate_ftp_ports(&ftp_ports)?;
    let mut lans = Vec::new();
    for lan in interfaces.iter().filter(|i| i.role == InterfaceRole::Lan) {
        let addresses = nat::interface_addresses(&lan.name)?;
        lans.push(nat::LanNetworks {
            name: lan.name.clone(),
            ifindex: lan.ifindex,
            ipv4: addresses
                .ipv4
                .iter()
                .copied()
                .map(Ipv4Prefix::network)
                .collect(),
            ipv6: addresses.ipv6_networks(),
        });
    }
    let published = nat::resolve_published(&args.publish, window, &lans)?;
    let wan = args.wan()?;
    let lan_has_ipv6 = lans.iter().any(|lan| !lan.ipv6.is_empty());
    let masquerade = nat::masquerade_prefixes(&args.masquerade, args.lan()?, lan_has_ipv6)?;
    let publishes_ipv4 = published.iter().any(|p| p.spec.server.is_ipv4());
    let masquerade6 = nat::masquerade6_prefixes(&args.masquerade6, masquerade.len())?;
    let wan_addresses = nat::interface_addresses(wan)?;
    let public_ip6 = nat::public_ip6(
        args.public_ip6,
        wan,
        &wan_addresses,
        &masquerade6,
        &args.publish,
    )?;
    let public_ip = nat::public_ip(
        args.public_ip,
        wan,
        !masquerade.is_empty() || publishes_ipv4,
    )?;
    let lan_networks: Vec<_> = lans.iter().flat_map(|lan| lan.ipv6.clone()).collect();
    let nat64 = nat::nat64(
        args.nat64()?,
        public_ip,
        (wan, &wan_addresses.ipv4),
        &lan_networks,
        &masquerade,
        &masquerade6,
    )?;
    Ok(NatSettings {
        published,
        public_ip,
        masquerade,
        public_ip6,
        masquerade6,
        ftp_ports,
        window,
        expect_timeout: args.expect_timeout(),
        max_expectations_per_session: args.max_expectations_per_session(),
        capacities: args.capacities(),
        source_limits: args.source_limits(),
        allow_privileged_data_ports: args.allow_privileged_data_ports,
        nat64,
    })
}

fn refuse_if_already_attached(interface: &Interface) -> anyhow::Result<()> {
    for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
        if let Some(ours) = datapath::ftpnat_programs_at(&interface.name, attach_type)?.first() {
            bail!(
                "interface '{}' already has ftpnat's {} program attached at {} (program id {}, \
                 through {}): another `ftpnat run` manages it, or a stopped one left its datapath \
                 under another --pin-dir; stop that agent, or remove that datapath with `ftpnat \
                 detach --pin-dir DIR`",
                interface.name,
                ours.name,
                hook_name(attach_type),
                ours.id,
                ours.through
            );
        }
    }
    Ok(())
}

async fn serve(args: &RunOptions, prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        mut interfaces,
        mut nat,
        mechanism,
        metrics,
        _lock,
    } = prepared;
    let options = LoadOptions {
        pin_dir: args.pin_dir(),
        kernel_log_level: kernel_log_level(log::max_level()),
        mechanism,
    };
    // Handlers first: a SIGTERM that arrives while (or right after) the programs attach must still
    // take the orderly detach path below, not kill the process with the pins left behind.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // The event socket next: failing to serve it must not leave a datapath behind.
    let (events, _) = broadcast::channel(EVENT_BACKLOG);
    let transfer_log = events::SharedTransferLog::default();
    let _subscribers = events::serve_subscribers(args.pin_dir(), &events, &transfer_log)?;
    let loading = Instant::now();
    let mut datapath = Datapath::load_and_attach(&options, &interfaces, &nat)?;
    log_attached(&datapath, &nat, loading);
    // Served from its own task: a slow scraper never delays the sweep or the kernel log.
    let metrics = match metrics
        .map(|listener| metrics::spawn(listener, datapath.pin_dir().to_owned()))
        .transpose()
    {
        Ok(metrics) => metrics,
        Err(error) => return Err(stop_on_error(datapath, args.detach_on_exit, false, error)),
    };
    let policy = ExpiryPolicy {
        control_idle: args.control_idle(),
        data_idle: args.data_idle(),
        ..ExpiryPolicy::default()
    };
    let mut attached_at = Instant::now();
    let mut delay = Duration::ZERO;
    let watched = loop {
        let reporter = EventReporter {
            sender: events.clone(),
            ids: SessionIds::default(),
            transfers: transfer_log.clone(),
            json: args.log_format() == LogFormat::Json,
        };
        let watched = watch(
            &nat,
            &policy,
            &interfaces,
            &mut datapath,
            reporter,
            &mut sigterm,
            &mut sigint,
        )
        .await;
        let lost = match watched {
            Err(WatchError { error, .. }) if error.is::<InterfacesLost>() => error,
            other => break other,
        };
        // Nothing passes an interface without the programs, and one created again is not the
        // index the datapath's flows name: the sessions cannot go on. The datapath is removed
        // (FTP takes the router's ordinary path meanwhile) and a fresh one attached as soon as
        // the interfaces exist and the settings resolve on them.
        log::warn!("{lost:#}: detaching, to attach afresh");
        match datapath.detach() {
            Ok(_) => log::warn!("detached; attaching again once the interfaces are all there"),
            // Whatever it left is replaced by the next attach (links without programs are).
            Err(err) => log::warn!(
                "detaching after the loss failed ({err:#}); attaching again once the interfaces \
                 are all there"
            ),
        }
        // A datapath lost soon after it was attached (a flapping link, a tool that detaches
        // links) waits longer each time before the next one, instead of reloading every second.
        delay = if attached_at.elapsed() >= STABLE_ATTACHMENT {
            Duration::ZERO
        } else {
            next_delay(delay)
        };
        let Some((reattached, loading)) =
            reattach(args, &options, delay, &mut sigterm, &mut sigint).await?
        else {
            return Ok(());
        };
        (interfaces, nat, datapath) = reattached;
        attached_at = Instant::now();
        log_attached(&datapath, &nat, loading);
    };
    // Stop answering scrapes first: they would find the agent gone half-way.
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    let signal_name = match watched {
        Ok(signal_name) => signal_name,
        Err(WatchError { served, error }) => {
            return Err(stop_on_error(datapath, args.detach_on_exit, served, error));
        }
    };
    let pin_dir = datapath.pin_dir().to_owned();
    if args.detach_on_exit {
        log::info!("{signal_name} received: detaching");
        datapath.detach()?;
        log::info!(
            "detached from all interfaces; pins under {} removed",
            pin_dir.display()
        );
    } else {
        log::info!(
            "{signal_name} received: exiting and leaving the datapath attached (pinned under {}): \
             transfers go on; `ftpnat run` with the same settings adopts it, `ftpnat detach \
             --pin-dir {}` removes it",
            pin_dir.display(),
            pin_dir.display()
        );
    }
    Ok(())
}

/// Says what the agent attached (or adopted), how long loading it took since `loading` (the
/// verifier's work, mostly), and what it translates.
fn log_attached(datapath: &Datapath, nat: &NatSettings, loading: Instant) {
    let took = format!("{:.2} s", loading.elapsed().as_secs_f64());
    let records = match datapath.mechanism() {
        Mechanism::Tcx => "links",
        Mechanism::Netlink => "filter records",
    };
    match datapath.origin() {
        Origin::Fresh => log::info!(
            "attached to {} through {} in {took}; maps and {records} pinned under {}",
            datapath.attached().join(", "),
            datapath.mechanism(),
            datapath.pin_dir().display()
        ),
        Origin::Adopted => log::info!(
            "adopted the datapath pinned under {} (its sessions, expectations and port window \
             carry on); attached to {} through {} in {took}",
            datapath.pin_dir().display(),
            datapath.attached().join(", "),
            datapath.mechanism()
        ),
    }
    match nat.public_ip {
        Some(public_ip) if !nat.masquerade.is_empty() => log::info!(
            "masquerading FTP (ports {:?}) from {} behind {public_ip}, port window {} ({} ports)",
            nat.ftp_ports,
            nat.masquerade
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            nat.window,
            nat.window.len()
        ),
        _ => log::info!(
            "following FTP (ports {:?}), port window {} ({} ports); no IPv4 FTP masqueraded: the \
             --lan interfaces have no IPv4 prefix (--masquerade CIDR names one)",
            nat.ftp_ports,
            nat.window,
            nat.window.len()
        ),
    }
    match nat.public_ip6 {
        Some(public_ip6) if !nat.masquerade6.is_empty() => log::info!(
            "masquerading IPv6 FTP (NAT66) from {} behind {public_ip6}; other IPv6 FTP is \
             followed untranslated",
            nat.masquerade6
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => log::info!("following IPv6 FTP untranslated (no --masquerade6)"),
    }
    match nat.nat64 {
        Some(nat64) => log::info!(
            "NAT64: IPv6 clients' FTP to an address of {} goes over IPv4 to the server its last \
             32 bits name, from {} (ports from the window); EPSV {}",
            nat64.prefix,
            nat64.pool,
            match nat64.epsv {
                nat::Nat64Epsv::Translate =>
                    "sent to the server as PASV, its 227 returned as a 229 (--nat64-epsv translate)",
                nat::Nat64Epsv::Pass => "passed as it is (--nat64-epsv pass)",
            }
        ),
        None => log::info!("no NAT64 (--nat64 turns it on)"),
    }
    for published in &nat.published {
        let public = match nat.public_ip_for(published.spec.server) {
            Some(public) => SocketAddr::new(public, published.spec.public_port).to_string(),
            None => format!("port {}", published.spec.public_port),
        };
        log::info!(
            "publishing {public} -> {} (via {})",
            published.spec.server_endpoint(),
            published.lan
        );
    }
}

/// Whether an agent that fails after attaching removes the datapath: one it attached itself and
/// never served would otherwise be left behind for nothing (and `--detach-on-exit` asks for the
/// removal anyway). One that carries transfers — adopted from a previous run, or served by this
/// one — stays, as on SIGTERM, for the next agent to adopt.
fn detach_after_error(origin: Origin, detach_on_exit: bool, served: bool) -> bool {
    detach_on_exit || (origin == Origin::Fresh && !served)
}

/// Ends a run that failed with the datapath attached: detaches it if [`detach_after_error`] says
/// so, and returns the error (with the detach's own failure, if any).
fn stop_on_error(
    datapath: Datapath,
    detach_on_exit: bool,
    served: bool,
    err: anyhow::Error,
) -> anyhow::Error {
    let pin_dir = datapath.pin_dir().to_owned();
    if !detach_after_error(datapath.origin(), detach_on_exit, served) {
        log::warn!(
            "stopping on an error; the datapath under {} stays attached (its transfers go on): \
             `ftpnat run` adopts it, `ftpnat detach --pin-dir {}` removes it",
            pin_dir.display(),
            pin_dir.display()
        );
        return err;
    }
    match datapath.detach() {
        Ok(_) => {
            log::warn!(
                "stopping on an error: detached from all interfaces; pins under {} removed",
                pin_dir.display()
            );
            err
        }
        Err(detach_err) => anyhow!(
            "{err:#}; detaching after it failed too ({detach_err:#}): remove the datapath with \
             `ftpnat detach --pin-dir {}`",
            pin_dir.display()
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_after_attaching_detaches_only_what_this_run_attached_unless_told_to() {
        // Before serving: only a datapath of this run's own goes.
        assert!(detach_after_error(Origin::Fresh, false, false));
        assert!(!detach_after_error(Origin::Adopted, false, false));
        // Serving, it carries transfers: it stays, as on SIGTERM.
        assert!(!detach_after_error(Origin::Fresh, false, true));
        assert!(!detach_after_error(Origin::Adopted, false, true));
        // Unless told otherwise.
        for origin in [Origin::Fresh, Origin::Adopted] {
            for served in [false, true] {
                assert!(detach_after_error(origin, true, served));
            }
        }
    }
}
