//! After an interface lost the datapath's programs: waiting for the interfaces to be back, then
//! attaching afresh, waiting longer after each attempt that fails or does not last.

use std::time::{Duration, Instant};

use tokio::signal::unix::Signal;

use super::{refuse_if_already_attached, resolve};
use crate::{
    config::run::RunOptions,
    datapath::{Datapath, Interface, LoadOptions, NatSettings},
};

/// How often the agent looks for lost interfaces to come back.
const INTERFACE_POLL: Duration = Duration::from_secs(1);

/// A datapath that served this long before it lost an interface was no flapping: the next one
/// is attached without delay.
pub(super) const STABLE_ATTACHMENT: Duration = Duration::from_secs(60);

/// The longest wait between two attempts to attach again.
const LONGEST_DELAY: Duration = Duration::from_secs(60);

/// The wait before the next attempt after one that failed or did not last: 1 s, then doubled.
pub(super) fn next_delay(delay: Duration) -> Duration {
    (delay * 2).clamp(Duration::from_secs(1), LONGEST_DELAY)
}

/// What a fresh attachment after a lost interface resolved and attached.
type Reattached = (Vec<Interface>, NatSettings, Datapath);

/// Waits `delay`, then until the interfaces exist again, the settings resolve on them (a new
/// PPPoE interface has no address until its link is up, and the public address may come from it)
/// and no other agent has attached there, and attaches a fresh datapath; tries again, waiting
/// longer each time, when that fails (the interface went away again while the programs loaded).
/// `None` on SIGTERM/SIGINT: nothing is attached then.
pub(super) async fn reattach(
    args: &RunOptions,
    options: &LoadOptions<'_>,
    mut delay: Duration,
    sigterm: &mut Signal,
    sigint: &mut Signal,
) -> anyhow::Result<Option<(Reattached, Instant)>> {
    let (wan, lans) = (args.wan()?, args.lan()?);
    let mut last_reason = String::new();
    loop {
        let pause = tokio::time::sleep(delay);
        tokio::pin!(pause);
        let mut poll = tokio::time::interval(INTERFACE_POLL);
        let resolved = loop {
            tokio::select! {
                // Signals first: one that arrives as the interface comes back must not leave a
                // datapath attached behind the agent's exit.
                biased;
                _ = sigterm.recv() => return Ok(stopped_waiting("SIGTERM")),
                _ = sigint.recv() => return Ok(stopped_waiting("SIGINT")),
                () = &mut pause, if !pause.is_elapsed() => {}
                _ = poll.tick(), if pause.is_elapsed() => {
                    let attempt = resolve(args, wan, lans).and_then(|(interfaces, nat)| {
                        interfaces.iter().try_for_each(refuse_if_already_attached)?;
                        Ok((interfaces, nat))
                    });
                    match attempt {
                        Ok(resolved) => break resolved,
                        Err(err) => {
                            // Said once per reason, not every second.
                            let reason = format!("{err:#}");
                            if reason != last_reason {
                                log::info!("not attaching yet: {reason}");
                                last_reason = reason;
                            }
                        }
                    }
                }
            }
        };
        let (interfaces, nat) = resolved;
        let loading = Instant::now();
        match Datapath::load_and_attach(options, &interfaces, &nat) {
            Ok(datapath) => return Ok(Some(((interfaces, nat, datapath), loading))),
            Err(err) => {
                delay = next_delay(delay);
                log::warn!(
                    "attaching again failed ({err:#}); trying again in {} s",
                    delay.as_secs()
                );
            }
        }
    }
}

fn stopped_waiting<T>(signal_name: &str) -> Option<T> {
    log::info!(
        "{signal_name} received while waiting for the interfaces: exiting, nothing attached"
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_to_attach_again_wait_longer_each_time_up_to_a_minute() {
        assert_eq!(next_delay(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(next_delay(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(next_delay(Duration::from_secs(40)), LONGEST_DELAY);
        assert_eq!(next_delay(LONGEST_DELAY), LONGEST_DELAY);
    }
}
