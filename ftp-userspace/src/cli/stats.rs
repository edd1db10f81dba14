//! `ftpnat stats`: the pinned counters of a running agent, as a table or JSON.

use std::path::Path;

use crate::report::stats::Direction;

use crate::report::stats::collect;

pub fn print(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let stats = collect(pin_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<5} {:<8} {:>12} {:>16}",
        "INTERFACE", "ROLE", "WAY", "PACKETS", "BYTES"
    );
    for row in &stats.interfaces {
        for (way, counters) in [
            (Direction::Ingress, &row.ingress),
            (Direction::Egress, &row.egress),
        ] {
            println!(
                "{:<16} {:<5} {:<8} {:>12} {:>16}",
                row.name,
                row.role,
                way.as_str(),
                counters.packets,
                counters.bytes
            );
        }
    }
    println!(
        "{:<16} {:<5} {:<8} {:>12} {:>16}",
        "total", "", "", stats.total.packets, stats.total.bytes
    );
    println!();
    println!(
        "sessions {} of {}  connections {} of {}  expectations {} of {}  port window {} ({} ports, \
         {} in use, exhausted {} times)",
        stats.sessions,
        stats.capacity.sessions,
        stats.flows,
        stats.capacity.flows,
        stats.expectations,
        stats.capacity.expectations,
        stats.window.range,
        stats.window.size,
        stats.window.in_use,
        stats.window.exhausted
    );
    for (name, value) in &stats.datapath {
        println!("  {name:<28} {value:>12}");
    }
    Ok(())
}
