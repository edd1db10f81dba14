//! P4's bench-only path into the flow table: established, just-seen connections written straight
//! into the agent's pinned FLOWS map, so that the datapath's lookups and the agent's sweep face a
//! table of the size measured. Each stays live for the sweep (the idle timeout of a data
//! connection) and is never matched by a packet (addresses of 100.64.0.0/10 and 198.18.0.0/15,
//! outside the lab).

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData, MapInfo};
use ftp_common::maps::{FlowEntry, FlowKey, FlowKind, flows, ip};

pub struct FlowFill {
    map: HashMap<MapData, FlowKey, FlowEntry>,
    /// Connections written so far (two entries each).
    connections: u32,
    pub capacity: u32,
}

/// CLOCK_MONOTONIC, the clock of the datapath's `last_seen_ns` (`bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl FlowFill {
    /// The FLOWS map pinned in the agent's state directory.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let pin = state_dir.join(flows::NAME);
        let capacity = MapInfo::from_pin(&pin)
            .with_context(|| format!("opening {}", pin.display()))?
            .max_entries();
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let map = HashMap::try_from(Map::HashMap(data))?;
        Ok(Self {
            map,
            connections: 0,
            capacity,
        })
    }

    /// Entries the bench wrote.
    pub fn entries(&self) -> u32 {
        self.connections * 2
    }

    /// Adds connections until the bench's entries number at least `entries`.
    pub fn fill_to(&mut self, entries: u32) -> anyhow::Result<()> {
        let now = monotonic_ns();
        while self.entries() < entries {
            let n = self.connections;
            let key = FlowKey {
                saddr: ip::v4_mapped([100, 64 | ((n >> 16) & 0x3f) as u8, (n >> 8) as u8, n as u8]),
                daddr: ip::v4_mapped([198, 18, 0, 1]),
                sport: 40000u16.to_be_bytes(),
                dport: 20u16.to_be_bytes(),
            };
            let entries = FlowEntry::established_untranslated(key, FlowKind::Data, (now, now));
            for (key, entry) in entries {
                self.map
                    .insert(key, entry, 0)
                    .with_context(|| format!("writing bench flow {n}"))?;
            }
            self.connections += 1;
        }
        Ok(())
    }
}
