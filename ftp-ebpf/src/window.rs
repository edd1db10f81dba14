//! The port window: the public ports ftpnat hands out (masqueraded control connections' source
//! ports, active-mode ports announced to servers, passive ports of published servers, data
//! connections' source ports). The agent fills the `FREE_PORTS` queue with the window; the
//! datapath takes a port for each use and gives it back when the use fails on the spot; the agent
//! gives back the ports of connections and expectations its sweep ends.

use crate::maps::FREE_PORTS;

/// A free window port, or None if the window is exhausted (the caller refuses and counts).
#[inline(always)]
pub fn take_port() -> Option<u16> {
    FREE_PORTS.pop().ok().flatten()
}

/// Gives back a port taken with [`take_port`] whose use did not come about.
#[inline(always)]
pub fn return_port(port: u16) {
    // The queue holds the whole window: a port taken from it always fits back.
    let _ = FREE_PORTS.push(port, 0);
}
