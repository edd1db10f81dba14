//! Following an attached datapath: its events, its kernel log and the sweep, until a signal, an
//! error, or an interface that lost its programs.

use std::time::Duration;

use anyhow::Context as _;
use ftp_common::maps::Counter;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::Signal,
};

use super::{
    events::{EventReporter, drain_events},
    release::Closing,
    sweep::{self, ExpiryPolicy},
};
use crate::{
    config::nat::PortWindow,
    datapath::{
        self, Datapath, Interface, KernelLogger, NatSettings, clock::monotonic_now_ns,
        maps::PinnedMaps,
    },
};

/// How often finished and idle connections are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const EVENTS_POLL_INTERVAL: Duration =
    Duration::from_millis(ftp_common::maps::EVENTS_POLL_INTERVAL_MS);

/// The most events the loop reports before it looks at signals and the sweep again (and lets the
/// runtime's other tasks — event socket, metrics — run): the ring buffer may refill as fast as it
/// is read, and no event rate may hold up the rest.
const EVENTS_PER_TURN: usize = 256;

/// Interfaces the datapath is attached to that no longer carry its programs (see
/// [`datapath::lost_interfaces`]).
#[derive(Debug)]
pub(super) struct InterfacesLost(Vec<String>);

impl std::fmt::Display for InterfacesLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lost ftpnat's programs: the interface went away (deleted, created again as a \
             PPPoE reconnect or a restarted VPN does, or moved to another network namespace), or \
             its programs were detached by hand",
            self.0.join(", ")
        )
    }
}

impl std::error::Error for InterfacesLost {}

/// Why [`watch`] stopped other than by a signal.
pub(super) struct WatchError {
    /// Whether the agent had begun serving the datapath (its loop ran): from then on the
    /// datapath carries transfers.
    pub(super) served: bool,
    pub(super) error: anyhow::Error,
}

/// Follows the attached datapath (its events, its kernel log, the sweep) until SIGTERM or SIGINT,
/// whose name it returns, or until an error — among them [`InterfacesLost`].
pub(super) async fn watch(
    nat: &NatSettings,
    policy: &ExpiryPolicy,
    interfaces: &[Interface],
    datapath: &mut Datapath,
    reporter: EventReporter,
    sigterm: &mut Signal,
    sigint: &mut Signal,
) -> Result<&'static str, WatchError> {
    let not_served = |error| WatchError {
        served: false,
        error,
    };
    let kernel_log = match datapath.take_kernel_logger() {
        // SAFETY: the logger owns the ring buffer's fd and is moved into the AsyncFd, so the fd
        // stays open for as long as it is registered.
        Some(logger) => Some(
            unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
                .map_err(|err| err.into_parts().1)
                .context("watching the kernel log map")
                .map_err(not_served)?,
        ),
        None => None,
    };
    let events = datapath.take_events().map_err(not_served)?;
    // SAFETY: the ring buffer owns its map fd and is moved into the AsyncFd, so the fd stays open
    // for as long as it is registered.
    let ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("watching the event ring buffer")
        .map_err(not_served)?;
    follow(
        nat, policy, interfaces, datapath, reporter, kernel_log, ring, sigterm, sigint,
    )
    .await
    .map_err(|error| WatchError {
        served: true,
        error,
    })
}

/// The agent's loop: events, kernel log and sweep, until a signal — or until an interface loses
/// its programs.
// Each argument is a separate piece the loop drives; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn follow(
    nat: &NatSettings,
    policy: &ExpiryPolicy,
    interfaces: &[Interface],
    datapath: &mut Datapath,
    mut reporter: EventReporter,
    mut kernel_log: Option<AsyncFd<KernelLogger>>,
    mut ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    sigterm: &mut Signal,
    sigint: &mut Signal,
) -> anyhow::Result<&'static str> {
    let mut exhaustion = ExhaustionWatch::default();
    let mut closing = Closing::default();
    let mut pacing = sweep::Pacing::default();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    // A sweep held up is done once, not caught up in a burst.
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The datapath wakes the agent only when its event ring fills up (see EVENTS_WAKEUP_BYTES);
    // otherwise the events are read at this pace.
    let mut event_poll = tokio::time::interval(EVENTS_POLL_INTERVAL);
    event_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // In this order: a signal, a sweep that is due and the kernel log are never left
            // waiting behind events (each turn reports at most EVENTS_PER_TURN of them).
            biased;
            _ = sigterm.recv() => return Ok("SIGTERM"),
            _ = sigint.recv() => return Ok("SIGINT"),
            _ = sweep.tick() => {
                // The datapath's events first, so that what a connection did is reported before
                // its end.
                drain_events(ring.get_mut(), datapath, &mut reporter, (&mut closing, policy), EVENTS_PER_TURN)?;
                let swept = pacing
                    .run(SWEEP_INTERVAL, || sweep::sweep(&mut datapath.state_tables()?, monotonic_now_ns(), policy))
                    .context("sweeping finished connections and expired expectations")?;
                if swept.connections > 0 {
                    log::debug!("expired {} connections, {} ports back in the window", swept.connections, swept.ports_returned);
                }
                for event in &swept.events {
                    reporter.report(datapath, event)?;
                }
                exhaustion.check(datapath.pin_dir(), nat.window);
                let lost = datapath::lost_interfaces(interfaces);
                if !lost.is_empty() {
                    let names = lost
                        .iter()
                        .map(|i| format!("{} (ifindex {})", i.name, i.ifindex))
                        .collect();
                    return Err(InterfacesLost(names).into());
                }
            }
            _ = until(closing.next_due_ns()) => {
                let released = closing
                    .release_due(&mut datapath.state_tables()?, monotonic_now_ns(), policy)
                    .context("releasing closed connections")?;
                if released.connections > 0 {
                    log::debug!("released {} closed connections, {} ports back in the window", released.connections, released.ports_returned);
                }
                for event in &released.events {
                    reporter.report(datapath, event)?;
                }
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
            _ = event_poll.tick() => {
                drain_events(ring.get_mut(), datapath, &mut reporter, (&mut closing, policy), EVENTS_PER_TURN)?;
            }
            readable = ring.readable_mut() => {
                let mut guard = readable.context("waiting on the event ring buffer")?;
                let more = drain_events(guard.get_inner_mut(), datapath, &mut reporter, (&mut closing, policy), EVENTS_PER_TURN)?;
                if !more {
                    guard.clear_ready();
                }
                drop(guard);
                if more {
                    // The ring stays ready; the runtime's other tasks run before the next turn.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Waits until `due_ns` (CLOCK_MONOTONIC), or for ever if there is nothing to wait for.
async fn until(due_ns: Option<u64>) {
    match due_ns {
        Some(due_ns) => {
            let wait = Duration::from_nanos(due_ns.saturating_sub(monotonic_now_ns()));
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// Reports window exhaustion once per sweep in which it happened, naming the window and the fix:
/// the datapath refused data connections (promptly, see the README), and the operator should know.
#[derive(Default)]
struct ExhaustionWatch {
    seen: u64,
}

impl ExhaustionWatch {
    fn check(&mut self, pin_dir: &std::path::Path, window: PortWindow) {
        let Ok(now) = PinnedMaps::new(pin_dir).counter(Counter::WindowExhausted) else {
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
