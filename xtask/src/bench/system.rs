//! What the bench reads from the kernel: CPU time per CPU and per process, interface counters,
//! RPS steering, the run time of ftpnat's programs and the memory of its maps.

use std::{collections::BTreeMap, fs, time::Duration};

use anyhow::{Context as _, bail};
use ftpnat_tests::netns::NetNs;

/// `sysconf(_SC_CLK_TCK)`: the unit of /proc/stat and /proc/PID/stat times.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100).max(1)
}

/// Nanoseconds in `ticks` of /proc's clock.
pub fn ticks_to_ns(ticks: u64) -> f64 {
    ticks as f64 * 1e9 / ticks_per_second() as f64
}

/// Ticks one CPU spent serving softirqs, from /proc/stat: where a router's forwarding runs (the
/// NET_RX softirq, in interrupt context or in ksoftirqd). Other processes on that CPU (the other
/// users of a shared machine) do not add to it as they add to its busy time.
pub fn cpu_softirq_ticks(cpu: usize) -> anyhow::Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(&label))
        .with_context(|| format!("no {label} in /proc/stat"))?;
    // user nice system idle iowait irq softirq …
    let softirq = line
        .split_whitespace()
        .nth(7)
        .with_context(|| format!("no softirq column in {line:?}"))?;
    Ok(softirq.parse()?)
}

/// Whether the kernel measures interrupt and softirq time exactly (`CONFIG_IRQ_TIME_ACCOUNTING`),
/// or samples it at each timer tick; `None` if its configuration is not readable.
pub fn irq_time_accounting() -> Option<bool> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = fs::read_to_string(format!("/boot/config-{}", release.trim()))
        .ok()
        .or_else(|| {
            let out = std::process::Command::new("zcat")
                .arg("/proc/config.gz")
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
    Some(config.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}

/// Packets the CPU took from its backlog (the first column of its /proc/net/softnet_stat row):
/// with RPS, where the received packets were processed.
pub fn softnet_processed(cpu: usize) -> anyhow::Result<u64> {
    let stat = fs::read_to_string("/proc/net/softnet_stat")?;
    // One row per online CPU; the 13th column (when present) is the CPU's number.
    for (row, line) in stat.lines().enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let index = cols
            .get(12)
            .and_then(|c| usize::from_str_radix(c, 16).ok())
            .unwrap_or(row);
        if index == cpu {
            let first = cols.first().context("empty softnet_stat row")?;
            return Ok(u64::from_str_radix(first, 16)?);
        }
    }
    bail!("no softnet_stat row for CPU {cpu}")
}

/// User + system ticks of process `pid` (/proc/PID/stat fields 14 and 15).
pub fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// A namespace's interface counter (`rx_packets`, `tx_packets`…).
pub fn iface_counter(ns: &NetNs, iface: &str, counter: &str) -> anyhow::Result<u64> {
    let out = ns.exec(
        "cat",
        &[&format!("/sys/class/net/{iface}/statistics/{counter}")],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Writes `value` to a file under the namespace's own /sys (`ip netns exec` remounts it).
pub fn write_sys(ns: &NetNs, path: &str, value: &str) -> anyhow::Result<()> {
    ns.exec("sh", &["-c", &format!("echo {value} > {path}")])?;
    Ok(())
}

/// Pins every process now in `ns` (and the children they fork later) to `cpu`.
pub fn pin_namespace(ns: &NetNs, cpu: usize) -> anyhow::Result<()> {
    let out = ftpnat_tests::netns::run("ip", &["netns", "pids", ns.name()])?;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        pin_pid(pid.parse()?, cpu)?;
    }
    Ok(())
}

/// Pins process `pid` with all its threads to `cpu`.
pub fn pin_pid(pid: u32, cpu: usize) -> anyhow::Result<()> {
    ftpnat_tests::netns::run(
        "taskset",
        &["-a", "-c", "-p", &cpu.to_string(), &pid.to_string()],
    )?;
    Ok(())
}

/// Run time and runs of one BPF program.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgramRuns {
    pub run_time_ns: u64,
    pub runs: u64,
}

impl ProgramRuns {
    pub fn since(self, before: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            runs: self.runs.saturating_sub(before.runs),
        }
    }

    pub fn add(self, other: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns + other.run_time_ns,
            runs: self.runs + other.runs,
        }
    }
}

/// The `key: value` lines of each BPF object file descriptor process `pid` holds, keyed by
/// `id_key` (`prog_id`, `map_id`).
fn bpf_fdinfo(pid: u32, id_key: &str) -> anyhow::Result<BTreeMap<u32, BTreeMap<String, String>>> {
    let mut objects = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let fields: BTreeMap<String, String> = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        if let Some(id) = fields.get(id_key).and_then(|id| id.parse().ok()) {
            objects.insert(id, fields);
        }
    }
    Ok(objects)
}

/// The programs the agent `pid` holds, by name, with their run time and runs so far (counted
/// while BPF run-time statistics are enabled).
pub fn program_runs(pid: u32) -> anyhow::Result<BTreeMap<String, ProgramRuns>> {
    let held = bpf_fdinfo(pid, "prog_id")?;
    let mut runs = BTreeMap::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        if held.contains_key(&info.id()) {
            let name = info.name_as_str().unwrap_or("?").to_owned();
            let entry: &mut ProgramRuns = runs.entry(name).or_default();
            *entry = entry.add(ProgramRuns {
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                runs: info.run_count(),
            });
        }
    }
    if runs.is_empty() {
        bail!("the agent (pid {pid}) holds no BPF program");
    }
    Ok(runs)
}

/// One of the agent's maps: its kernel memory (`memlock` of its fdinfo) and capacity.
#[derive(Debug, Clone)]
pub struct MapMemory {
    pub name: String,
    pub memlock: u64,
    pub max_entries: u64,
}

/// The maps the agent `pid` holds, with the memory the kernel charges for each.
pub fn map_memory(pid: u32) -> anyhow::Result<Vec<MapMemory>> {
    let mut maps = Vec::new();
    for (id, fields) in bpf_fdinfo(pid, "map_id")? {
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|info| info.name_as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("map {id}"));
        let number = |key: &str| {
            fields
                .get(key)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in the fdinfo of map {id}"))
        };
        maps.push(MapMemory {
            name,
            memlock: number("memlock")?,
            max_entries: number("max_entries")?,
        });
    }
    Ok(maps)
}

/// The object size of a slab cache from /proc/slabinfo (`nf_conntrack`): what the kernel spends
/// on one object of it.
pub fn slab_object_size(cache: &str) -> Option<u64> {
    let slabinfo = fs::read_to_string("/proc/slabinfo").ok()?;
    slabinfo.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.first() == Some(&cache))
            .then(|| cols.get(3)?.parse().ok())
            .flatten()
    })
}

/// The machine, as the bench's report names it.
pub fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, Linux {kernel}, load average {load}")
}

/// Sleeps `span`, returning the share of it `cpu` spent in softirqs (0..1): the background the
/// bench's own traffic adds to.
pub fn background_softirq(cpu: usize, span: Duration) -> anyhow::Result<f64> {
    let before = cpu_softirq_ticks(cpu)?;
    std::thread::sleep(span);
    let busy = ticks_to_ns(cpu_softirq_ticks(cpu)? - before);
    Ok(busy / span.as_nanos() as f64)
}
