//! Typed access to the datapath's maps: the agent's through the loaded object, every other
//! process's (`ftpnat stats` and friends, the metrics) through their pins, each opened here once,
//! by name, with one message when it is not there.

use std::{
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::{
    Pod,
    maps::{Map, MapData, MapError, PerCpuArray},
};
use ftp_common::maps::{
    Counter, DatapathConfig, ExpectKey, Expectation, FlowEntry, FlowKey, SessionEntry, SourceKey,
    SourceSeen, Table, config, counters, expects, flows, free_ports, interfaces, ip, masquerade,
    reasons, released, sessions, sources,
};

use super::{Datapath, batch, object::missing_map, pins};

/// The datapath's state, as the agent's expiry sees it.
pub struct StateTables<'a> {
    pub flows: flows::AyaMap<&'a mut MapData>,
    pub free_ports: free_ports::AyaMap<&'a mut MapData>,
    pub expects: expects::AyaMap<&'a mut MapData>,
    /// Read only: the datapath alone writes session records.
    pub sessions: sessions::AyaMap<&'a mut MapData>,
    /// Expectations released per session, which only the agent writes.
    pub released: released::AyaMap<&'a mut MapData>,
    /// Each source's sessions at the last sweep, which only the agent writes.
    pub source_seen: sources::SeenAyaMap<&'a mut MapData>,
    /// Sessions the datapath opened per source; the agent reads them and removes idle sources.
    pub source_opened: sources::OpenedAyaMap<&'a mut MapData>,
    /// The same tables read whole, with the kernel's batch reads.
    pub whole: WholeTables<'a>,
}

/// The hash tables the sweep reads entirely, each in a few system calls (see `batch`).
#[derive(Clone, Copy)]
pub struct WholeTables<'a> {
    pub flows: WholeTable<'a, FlowKey, FlowEntry>,
    pub expects: WholeTable<'a, ExpectKey, Expectation>,
    pub sessions: WholeTable<'a, FlowKey, SessionEntry>,
    pub source_seen: WholeTable<'a, SourceKey, SourceSeen>,
    pub source_opened: WholeTable<'a, SourceKey, u32>,
}

/// A hash table of the loaded object (keys `K`, values `V`), read whole.
#[derive(Clone, Copy)]
pub struct WholeTable<'a, K, V> {
    /// The descriptor of a map the object owns, open while the borrow `'a` of it lasts.
    fd: RawFd,
    _map: PhantomData<(&'a MapData, K, V)>,
}

impl<'a, K: Pod, V: Pod> WholeTable<'a, K, V> {
    /// The hash table `map` of the loaded object.
    fn of(map: &Option<&'a mut Map>, name: &str) -> anyhow::Result<Self> {
        let data = match map.as_deref() {
            Some(Map::HashMap(data) | Map::LruHashMap(data)) => data,
            Some(_) => bail!("the map {name} is not a hash table"),
            None => return Err(missing_map(name)),
        };
        check_entry_sizes::<K, V>(data, name)?;
        Ok(Self {
            fd: data.fd().as_fd().as_raw_fd(),
            _map: PhantomData,
        })
    }

    /// Every key and its value, in bucket order.
    pub fn read(&self) -> anyhow::Result<(Vec<K>, Vec<V>)> {
        // SAFETY: the map owns the descriptor and outlives `'a`, for which `self` lives.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        // SAFETY: `of` checked the map's entry sizes.
        unsafe { batch::read_all(fd, &mut keys, &mut values) }
            .context("reading a table with BPF_MAP_LOOKUP_BATCH")?;
        Ok((keys, values))
    }

    /// Every key.
    pub fn keys(&self) -> anyhow::Result<Vec<K>> {
        Ok(self.read()?.0)
    }

    /// Every entry.
    pub fn entries(&self) -> anyhow::Result<Vec<(K, V)>> {
        let (keys, values) = self.read()?;
        Ok(keys.into_iter().zip(values).collect())
    }
}

impl Datapath {
    /// The tables expiry works on.
    pub fn state_tables(&mut self) -> anyhow::Result<StateTables<'_>> {
        let [
            flows,
            free_ports,
            expects,
            sessions,
            released,
            source_seen,
            source_opened,
        ] = self.ebpf.maps_disjoint_mut([
            flows::NAME,
            free_ports::NAME,
            expects::NAME,
            sessions::NAME,
            released::NAME,
            sources::SEEN_NAME,
            sources::OPENED_NAME,
        ]);
        let whole = WholeTables {
            flows: WholeTable::of(&flows, flows::NAME)?,
            expects: WholeTable::of(&expects, expects::NAME)?,
            sessions: WholeTable::of(&sessions, sessions::NAME)?,
            source_seen: WholeTable::of(&source_seen, sources::SEEN_NAME)?,
            source_opened: WholeTable::of(&source_opened, sources::OPENED_NAME)?,
        };
        Ok(StateTables {
            whole,
            flows: typed(flows, flows::NAME)?,
            free_ports: typed(free_ports, free_ports::NAME)?,
            expects: typed(expects, expects::NAME)?,
            sessions: typed(sessions, sessions::NAME)?,
            released: typed(released, released::NAME)?,
            source_seen: typed(source_seen, sources::SEEN_NAME)?,
            source_opened: typed(source_opened, sources::OPENED_NAME)?,
        })
    }
}

/// Refuses a map whose keys or values are not the sizes of `K` and `V` (a batch read of it would
/// overrun its buffers).
fn check_entry_sizes<K, V>(data: &MapData, name: &str) -> anyhow::Result<()> {
    let info = data
        .info()
        .with_context(|| format!("reading {name}'s shape"))?;
    let sizes = (info.key_size() as usize, info.value_size() as usize);
    anyhow::ensure!(
        sizes == (size_of::<K>(), size_of::<V>()),
        "the map {name} has keys of {} and values of {} bytes, not {} and {}",
        sizes.0,
        sizes.1,
        size_of::<K>(),
        size_of::<V>()
    );
    Ok(())
}

/// The loaded object's map `name`, found or not, as its table's aya type.
fn typed<'a, T: TryFrom<&'a mut Map, Error = MapError>>(
    map: Option<&'a mut Map>,
    name: &str,
) -> anyhow::Result<T> {
    Ok(T::try_from(map.ok_or_else(|| missing_map(name))?)?)
}

pub fn open_pinned(pin_dir: &Path, table: &Table) -> anyhow::Result<Map> {
    let path = pins::state_dir(pin_dir).join(table.name);
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

/// The maps pinned under a pin dir, opened as their tables' types, for a process other than the
/// agent.
pub struct PinnedMaps<'a> {
    pin_dir: &'a Path,
}

impl<'a> PinnedMaps<'a> {
    pub fn new(pin_dir: &'a Path) -> Self {
        Self { pin_dir }
    }

    fn open<T: TryFrom<Map, Error = MapError>>(&self, table: &Table) -> anyhow::Result<T> {
        Ok(T::try_from(open_pinned(self.pin_dir, table)?)?)
    }

    /// Every key and value of the pinned hash table `table` (keys `K`, values `V` of its
    /// sizes), read with the kernel's batch lookups: a few calls where an iterator makes two per
    /// entry, which matters for a flow table of a million entries read at every metrics scrape.
    pub fn whole<K: Pod, V: Pod>(&self, table: &Table) -> anyhow::Result<(Vec<K>, Vec<V>)> {
        let (Map::HashMap(data) | Map::LruHashMap(data)) = open_pinned(self.pin_dir, table)? else {
            bail!("the map {} is not a hash table", table.name);
        };
        check_entry_sizes::<K, V>(&data, table.name)?;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        // SAFETY: the map's entry sizes were just checked.
        unsafe { batch::read_all(data.fd().as_fd(), &mut keys, &mut values) }
            .with_context(|| format!("reading {}", table.name))?;
        Ok((keys, values))
    }

    pub fn interfaces(&self) -> anyhow::Result<interfaces::AyaMap<MapData>> {
        self.open(&interfaces::TABLE)
    }

    /// The datapath counters, one slot per [`Counter`], per CPU.
    pub fn counters(&self) -> anyhow::Result<counters::AyaMap<MapData>> {
        self.open(&counters::TABLE)
    }

    /// Refusals and malformed lines by reason, per CPU (slots: `refusal_slot`, `malformed_slot`).
    pub fn reasons(&self) -> anyhow::Result<reasons::AyaMap<MapData>> {
        self.open(&reasons::TABLE)
    }

    /// The settings the agent configured the datapath with.
    pub fn config(&self) -> anyhow::Result<DatapathConfig> {
        let config: config::AyaMap<_> = self.open(&config::TABLE)?;
        config.get(&0, 0).context("reading the datapath config")
    }

    /// The masqueraded prefixes, as the operator wrote them: IPv4 ones (`--masquerade`), then
    /// IPv6 ones (`--masquerade6`).
    pub fn masqueraded_prefixes(&self) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let trie: masquerade::AyaMap<_> = self.open(&masquerade::TABLE)?;
        let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
        for key in trie.keys() {
            let key = key.context("reading the masqueraded prefixes")?;
            if ip::is_v4(&key.data()) {
                ipv4.push(super::configure::prefix_text(&key));
            } else {
                ipv6.push(super::configure::prefix_text(&key));
            }
        }
        Ok((ipv4, ipv6))
    }

    /// How many entries the pinned table can hold (`--max-sessions` sized it).
    pub fn capacity(&self, table: &Table) -> anyhow::Result<u32> {
        let path = pins::state_dir(self.pin_dir).join(table.name);
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(info.max_entries())
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
