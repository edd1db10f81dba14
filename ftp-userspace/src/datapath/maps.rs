//! Typed access to the datapath's maps: the agent's through the loaded object, every other
//! process's (`ftpnat stats` and friends, the metrics) through their pins, each opened here once,
//! by name, with one message when it is not there.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, Queue};
use ftp_common::maps::{
    Counter, DatapathConfig, ExpectKey, Expectation, FlowEntry, FlowKey, InterfaceInfo,
    SessionEntry, TrafficCounters, TrafficKey, names,
};

use super::{Datapath, object::missing_map, pins};

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

impl Datapath {
    /// The tables expiry works on.
    pub fn state_tables(&mut self) -> anyhow::Result<StateTables<'_>> {
        let [flows, free, expects, sessions, released] = self.ebpf.maps_disjoint_mut([
            names::FLOWS,
            names::FREE_PORTS,
            names::EXPECTS,
            names::SESSIONS,
            names::RELEASED,
        ]);
        Ok(StateTables {
            flows: HashMap::try_from(flows.ok_or_else(|| missing_map(names::FLOWS))?)?,
            free_ports: Queue::try_from(free.ok_or_else(|| missing_map(names::FREE_PORTS))?)?,
            expects: HashMap::try_from(expects.ok_or_else(|| missing_map(names::EXPECTS))?)?,
            sessions: HashMap::try_from(sessions.ok_or_else(|| missing_map(names::SESSIONS))?)?,
            released: HashMap::try_from(released.ok_or_else(|| missing_map(names::RELEASED))?)?,
        })
    }
}

pub fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pins::state_dir(pin_dir).join(name);
    if !path.exists() {
        pins::refuse_foreign_state(pin_dir)?;
        bail!(
            "no ftpnat state at {}: is `ftpnat run` running with --pin-dir {}?",
            path.display(),
            pin_dir.display()
        );
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("reading {}", path.display()))
}

/// The maps pinned under a pin dir, opened by name as their types, for a process other than the
/// agent.
pub struct PinnedMaps<'a> {
    pin_dir: &'a Path,
}

impl<'a> PinnedMaps<'a> {
    pub fn new(pin_dir: &'a Path) -> Self {
        Self { pin_dir }
    }

    fn open<T: TryFrom<Map, Error = MapError>>(&self, name: &str) -> anyhow::Result<T> {
        Ok(T::try_from(open_pinned(self.pin_dir, name)?)?)
    }

    pub fn flows(&self) -> anyhow::Result<HashMap<MapData, FlowKey, FlowEntry>> {
        self.open(names::FLOWS)
    }

    pub fn sessions(&self) -> anyhow::Result<HashMap<MapData, FlowKey, SessionEntry>> {
        self.open(names::SESSIONS)
    }

    pub fn expects(&self) -> anyhow::Result<HashMap<MapData, ExpectKey, Expectation>> {
        self.open(names::EXPECTS)
    }

    pub fn interfaces(&self) -> anyhow::Result<HashMap<MapData, u32, InterfaceInfo>> {
        self.open(names::INTERFACES)
    }

    pub fn traffic(&self) -> anyhow::Result<PerCpuHashMap<MapData, TrafficKey, TrafficCounters>> {
        self.open(names::TRAFFIC)
    }

    /// The datapath counters, one slot per [`Counter`], per CPU.
    pub fn counters(&self) -> anyhow::Result<PerCpuArray<MapData, u64>> {
        self.open(names::COUNTERS)
    }

    /// Refusals and malformed lines by reason, per CPU (slots: `refusal_slot`, `malformed_slot`).
    pub fn reasons(&self) -> anyhow::Result<PerCpuArray<MapData, u64>> {
        self.open(names::REASONS)
    }

    /// The settings the agent configured the datapath with.
    pub fn config(&self) -> anyhow::Result<DatapathConfig> {
        let config: Array<_, DatapathConfig> = self.open(names::CONFIG)?;
        config.get(&0, 0).context("reading the datapath config")
    }

    /// One datapath counter, summed over the CPUs.
    pub fn counter(&self, counter: Counter) -> anyhow::Result<u64> {
        summed(&self.counters()?, counter as u32)
    }
}

/// Slot `slot` of a per-CPU array, summed over the CPUs.
pub fn summed(array: &PerCpuArray<MapData, u64>, slot: u32) -> anyhow::Result<u64> {
    Ok(array.get(&slot, 0)?.iter().sum())
}
