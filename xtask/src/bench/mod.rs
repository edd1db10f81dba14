//! `cargo xtask bench [--quick]`: the router measured where it counts, three ways in one run —
//! plain routing (no NAT), netfilter's MASQUERADE with the kernel's FTP helper, ftpnat — with the
//! rounds interleaved (every round measures every router, in a rotating order), ending in one
//! table of ratios. What each figure is and how it is taken: DEVELOPERS.md, "The bench".
//! Speed is judged here, never by timing assertions in tests.

mod beds;
mod fill;
mod measure;
mod system;

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use beds::{Bed, Cpus, Router, SMALL_WINDOW};
use fill::FlowFill;
use measure::{INGRESS, Runs};

use crate::build;

/// How much the bench does.
struct Plan {
    quick: bool,
    rounds: usize,
    big_file: u64,
    /// How long P1 downloads through one router, at least (the big file again and again).
    p1_time: Duration,
    /// How long the router CPU is watched idle before each download.
    background: Duration,
    /// Sessions of each control-connection workload (P2).
    control_sessions: usize,
    /// PORT commands per session (below the default 4 outstanding announcements a session may
    /// hold, so that every one is rewritten).
    ports_per_session: usize,
    /// Pure ACKs sent on one control connection (P2).
    pure_acks: usize,
    /// Files in the directory whose STAT reply is the long control reply.
    listing_files: usize,
    /// P3: concurrent clients and how long they run.
    clients: usize,
    session_seconds: u64,
    /// P4: table sizes (FLOWS entries) and how long the agent's CPU is watched at each: at least
    /// the longest gap the agent's sweep leaves on a large table (16 ticks of 1 s), so that the
    /// figure holds at least one whole sweep.
    flow_sizes: [u32; 2],
    agent_watch: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        Self {
            quick,
            rounds: if quick { 1 } else { 5 },
            big_file: if quick { 64 << 20 } else { 1 << 30 },
            p1_time: Duration::from_secs(if quick { 2 } else { 10 }),
            background: Duration::from_millis(if quick { 300 } else { 1000 }),
            control_sessions: if quick { 10 } else { 100 },
            ports_per_session: 3,
            pure_acks: if quick { 20_000 } else { 200_000 },
            listing_files: 300,
            clients: if quick { 8 } else { 16 },
            session_seconds: if quick { 3 } else { 10 },
            flow_sizes: [1_000, 1_000_000],
            agent_watch: Duration::from_secs(if quick { 16 } else { 32 }),
        }
    }
}

/// Every sample, by what it measures: the rounds' values in order; and what failed.
#[derive(Default)]
struct Samples {
    values: BTreeMap<String, Vec<f64>>,
    failed: Vec<String>,
}

impl Samples {
    fn add(&mut self, key: String, value: f64) {
        self.values.entry(key).or_default().push(value);
    }

    /// Runs one measurement. A failure is printed and remembered, and the bench goes on: one
    /// failed download must not cost a long run every other figure.
    fn attempt<T>(
        &mut self,
        what: &str,
        measurement: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> Option<T> {
        match measurement(self) {
            Ok(value) => Some(value),
            Err(err) => {
                println!("  {what}: FAILED: {err:#}");
                self.failed.push(format!("{what}: {err:#}"));
                None
            }
        }
    }

    fn median(&self, key: &str) -> Option<f64> {
        let mut values = self.values.get(key)?.clone();
        values.sort_by(f64::total_cmp);
        let upper = *values.get(values.len() / 2)?;
        if values.len() % 2 == 0 {
            Some((values[values.len() / 2 - 1] + upper) / 2.0)
        } else {
            Some(upper)
        }
    }

    /// (max − min) / median of the rounds: how far one figure moved between rounds.
    fn spread(&self, key: &str) -> Option<f64> {
        let values = self.values.get(key)?;
        if values.len() < 2 {
            return None;
        }
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        Some((max - min) / self.median(key)?)
    }
}

pub fn run(quick: bool, rounds: Option<u16>) -> anyhow::Result<()> {
    let mut plan = Plan::new(quick);
    if let Some(rounds) = rounds {
        plan.rounds = usize::from(rounds);
    }
    // The quick run is for development: the debug agent builds in seconds; the eBPF object is
    // optimised either way (aya-build builds it in release).
    let binary = build(!quick)?;
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("FTPNAT_BIN", &binary) };
    let cpu_count = std::thread::available_parallelism().map_or(1, usize::from);
    anyhow::ensure!(
        cpu_count >= 2,
        "the bench steers the endpoints and the router to different CPUs and needs at least 2; \
         this machine has {cpu_count}"
    );
    let cpus = Cpus {
        endpoints: 0,
        router: cpu_count - 1,
    };
    println!("bench: {}", system::machine());
    println!(
        "bench: {} ({} round{}, P1: {} MiB downloads for at least {} s per router), agent {}",
        if quick { "quick" } else { "full" },
        plan.rounds,
        if plan.rounds == 1 { "" } else { "s" },
        plan.big_file >> 20,
        plan.p1_time.as_secs(),
        binary.display()
    );
    println!(
        "bench: client and server processes and their packets on CPU {}; the router's packets \
         on CPU {} (RPS: rps_cpus of the router's veths; veth has no NAPI without GRO or XDP, \
         so its receive path goes through the per-CPU backlog that RPS steers), the agent \
         pinned there too",
        cpus.endpoints, cpus.router
    );
    println!(
        "bench: router cost per packet = softirq time of CPU {} (/proc/stat, {}) over the packets \
         the router's interfaces received (rx_packets of lan0 + wan0)",
        cpus.router,
        match system::irq_time_accounting() {
            Some(true) => "measured exactly: CONFIG_IRQ_TIME_ACCOUNTING",
            Some(false) => "sampled at each timer tick: no CONFIG_IRQ_TIME_ACCOUNTING",
            None => "exact or sampled: the kernel's configuration is not readable",
        }
    );

    let routers = [Router::PlainRouting, Router::Netfilter, Router::Ftpnat];
    let mut beds = Vec::new();
    for router in routers.into_iter().chain([Router::FtpnatSmallWindow]) {
        // The small-window lab only serves P3's sessions.
        let big_file = if router == Router::FtpnatSmallWindow {
            1 << 20
        } else {
            plan.big_file
        };
        beds.push(
            Bed::new(router, big_file, plan.listing_files, cpus)
                .with_context(|| format!("setting up the {} lab", router.label()))?,
        );
    }
    let bed = |router: Router| beds.iter().find(|b| b.router == router).expect("every bed");

    let mut samples = Samples::default();
    for round in 0..plan.rounds {
        // A rotating order: no router is always measured first (or right after another).
        let mut order = routers.to_vec();
        order.rotate_left(round % routers.len());
        println!("bench: round {} of {}", round + 1, plan.rounds);
        for offloads in [false, true] {
            let mode = offloads_label(offloads);
            for &router in &order {
                let bed = bed(router);
                bed.set_offloads(offloads)?;
                let Some(p1) = samples
                    .attempt(&format!("P1 {mode} through {}", router.label()), |_| {
                        measure::throughput(bed, cpus, plan.background, plan.p1_time)
                    })
                else {
                    continue;
                };
                println!(
                    "  P1 {mode:<13} {:<14} {:>8.1} MB/s {:>7.0} ns/packet of router CPU \
                     ({} packets, {:.0} ms of softirq, {:.0}% of the packets processed on CPU {}; \
                     CPU {} {:.1}% in softirqs before)",
                    router.label(),
                    p1.mb_per_s,
                    p1.ns_per_packet,
                    p1.packets,
                    p1.softirq_ms,
                    p1.steered * 100.0,
                    cpus.router,
                    cpus.router,
                    p1.background * 100.0
                );
                samples.add(format!("p1 {mode} MB/s {}", router.label()), p1.mb_per_s);
                samples.add(format!("p1 {mode} ns {}", router.label()), p1.ns_per_packet);
            }
        }
        datapath_round(bed(Router::Ftpnat), cpus, &plan, &mut samples)?;
        let mut session_order = order.clone();
        session_order.push(Router::FtpnatSmallWindow);
        for router in session_order {
            // Sessions with the veths as created (P2 left ftpnat's without offloads).
            bed(router).set_offloads(true)?;
            let Some(p3) = samples.attempt(&format!("P3 through {}", router.label()), |_| {
                measure::sessions(bed(router), cpus, plan.clients, plan.session_seconds)
            }) else {
                continue;
            };
            println!(
                "  P3 {:<28} {:>7.1} sessions/s ({} ok, {} failed){}",
                router.label(),
                p3.per_second,
                p3.ok,
                p3.failed,
                p3.failures
                    .iter()
                    .map(|f| format!("\n       {f}"))
                    .collect::<String>()
            );
            samples.add(format!("p3 {}", router.label()), p3.per_second);
            samples.add(format!("p3 failed {}", router.label()), p3.failed as f64);
        }
    }
    let scale = samples.attempt("P4", |samples| {
        scale(bed(Router::Ftpnat), cpus, &plan, samples)
    });
    report(&plan, &samples, scale.as_ref());
    if !samples.failed.is_empty() {
        anyhow::bail!(
            "{} measurement(s) failed; the table above lacks them:\n{}",
            samples.failed.len(),
            samples.failed.join("\n")
        );
    }
    Ok(())
}

fn offloads_label(on: bool) -> &'static str {
    if on { "offloads on" } else { "offloads off" }
}

/// BPF run-time statistics (what `sysctl kernel.bpf_stats_enabled=1` turns on), on while the
/// returned descriptor is open: only around P2's and P4's workloads, since they cost every run
/// two clock reads.
fn bpf_stats() -> anyhow::Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS (run time)")
}

/// P2: ftpnat's programs' run time per run under a bulk download and under control-connection
/// workloads.
fn datapath_round(bed: &Bed, cpus: Cpus, plan: &Plan, samples: &mut Samples) -> anyhow::Result<()> {
    let pid = bed.agent_pid()?;
    bed.set_offloads(false)?;
    let _stats = bpf_stats()?;
    let bulk = samples.attempt("P2 bulk", |_| {
        Runs::during(pid, || {
            measure::throughput(bed, cpus, Duration::ZERO, Duration::ZERO).map(drop)
        })
    });
    if let Some(bulk) = bulk {
        bulk_report(&bulk, samples);
    }
    if let Some(acks) = samples.attempt("P2 pure ACKs", |_| {
        Runs::during(pid, || measure::pure_acks(bed, cpus, plan.pure_acks))
    }) {
        println!(
            "  P2 pure ACKs      {:.0} ns per forwarded packet ({} duplicate ACKs on one control \
             connection, {} packets through ftpnat_ingress)",
            acks.ns_per_forwarded_packet(),
            plan.pure_acks,
            acks.of(INGRESS).runs
        );
        samples.add("p2 ack".to_owned(), acks.ns_per_forwarded_packet());
    }
    samples.attempt("P2 control workloads", |samples| {
        control_round(bed, pid, cpus, plan, samples)
    });
    Ok(())
}

fn bulk_report(bulk: &Runs, samples: &mut Samples) {
    let ingress = bulk.of(INGRESS);
    println!(
        "  P2 bulk data      {INGRESS} {:.0} ns per forwarded packet ({} runs)",
        bulk.ns_per_forwarded_packet(),
        ingress.runs,
    );
    let tail_called: Vec<&str> = bulk
        .0
        .iter()
        .filter(|(name, r)| *name != INGRESS && r.runs == 0)
        .map(|(name, _)| name.as_str())
        .collect();
    if !tail_called.is_empty() {
        println!(
            "     (the stages {} run by tail call: the kernel counts their time in {INGRESS}'s)",
            tail_called.join(", ")
        );
    }
    samples.add("p2 bulk".to_owned(), bulk.ns_per_forwarded_packet());
}

/// P2's control-connection workloads: sessions alone, with PORTs, with a long STAT reply.
fn control_round(
    bed: &Bed,
    pid: u32,
    cpus: Cpus,
    plan: &Plan,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let (sessions, ports) = (plan.control_sessions, plan.ports_per_session);
    let listing = bed.listing.clone();
    let plain = Runs::during(pid, || {
        measure::control_workload(bed, cpus, sessions, 0, None)
    })?;
    let with_ports = Runs::during(pid, || {
        measure::control_workload(bed, cpus, sessions, ports, None)
    })?;
    let with_stat = Runs::during(pid, || {
        measure::control_workload(bed, cpus, sessions, 0, Some(&listing))
    })?;
    // What the PORTs (or the STAT) added to otherwise identical sessions.
    let added = |with: &Runs| {
        let (w, p) = (with.total(), plain.total());
        let ns = w.run_time_ns as f64 - p.run_time_ns as f64;
        let packets = with.of(INGRESS).runs as f64 - plain.of(INGRESS).runs as f64;
        (ns, packets)
    };
    let (port_ns, port_packets) = added(&with_ports);
    let port_count = (sessions * ports) as f64;
    println!(
        "  P2 PORT           {:.0} ns per PORT exchange ({port_count} PORTs rewritten: the PORT \
         segment, its 200 reply and ACKs, {:.1} packets each), {:.0} ns per packet of it",
        port_ns / port_count,
        port_packets / port_count,
        port_ns / port_packets.max(1.0)
    );
    // The goal is per control segment: the exchange's PORT (rewritten) and its 200 (scanned).
    samples.add("p2 port".to_owned(), port_ns / port_packets.max(1.0));
    let (stat_ns, stat_packets) = added(&with_stat);
    println!(
        "  P2 STAT reply     {:.0} ns per packet of {sessions} long STAT replies ({:.0} packets \
         each, the reply's segments scanned and the client's ACKs)",
        stat_ns / stat_packets.max(1.0),
        stat_packets / sessions as f64
    );
    samples.add("p2 stat".to_owned(), stat_ns / stat_packets.max(1.0));
    let session_packets = plain.of(INGRESS);
    println!(
        "  P2 control only   {:.0} ns per packet over whole sessions without PORT or STAT \
         (handshake, login, QUIT: {:.0} packets each)",
        plain.ns_per_forwarded_packet(),
        session_packets.runs as f64 / sessions as f64
    );
    samples.add("p2 session".to_owned(), plain.ns_per_forwarded_packet());
    Ok(())
}

/// P4's outcome besides its samples.
struct Scale {
    /// The table sizes measured (FLOWS entries), the second possibly cut to what fits.
    sizes: [u32; 2],
    capacity: u32,
    /// Kernel memory of the agent's maps (total) and per masqueraded session with one data
    /// connection (four flow entries and a session entry).
    total_memlock: u64,
    per_session: f64,
    netfilter_per_session: Option<u64>,
}

/// P4: the flow table filled to each size, the datapath's cost per packet and the agent's CPU at
/// each.
fn scale(bed: &Bed, cpus: Cpus, plan: &Plan, samples: &mut Samples) -> anyhow::Result<Scale> {
    let pid = bed.agent_pid()?;
    bed.set_offloads(false)?;
    let mut fill = FlowFill::open(&bed.lab.state_dir()?)?;
    // Room for the lab's own connections (four entries per download).
    let fits = fill.capacity.saturating_sub(1024);
    let sizes = plan.flow_sizes.map(|size| size.min(fits));
    for (n, &size) in sizes.iter().enumerate() {
        let what = format!("P4 at {size} flow entries");
        samples.attempt(&what, |samples| {
            scale_step(bed, &mut fill, (n, size), cpus, plan, samples)
        });
    }
    let maps = system::map_memory(pid)?;
    let per_entry = |name: &str| {
        maps.iter()
            .find(|m| m.name == name)
            .map_or(0.0, |m| m.memlock as f64 / m.max_entries.max(1) as f64)
    };
    let total_memlock = maps.iter().map(|m| m.memlock).sum();
    let per_session = 4.0 * per_entry("FLOWS") + per_entry("SESSIONS");
    println!(
        "  P4 kernel memory  {:.1} MiB in {} maps (memlock of the agent's map fds); per entry: {}",
        total_memlock as f64 / f64::from(1 << 20),
        maps.len(),
        maps.iter()
            .filter(|m| m.memlock > 64 << 10)
            .map(|m| format!(
                "{} {:.0} B × {}",
                m.name,
                m.memlock as f64 / m.max_entries.max(1) as f64,
                m.max_entries
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Scale {
        sizes,
        capacity: fill.capacity,
        total_memlock,
        per_session,
        netfilter_per_session: system::slab_object_size("nf_conntrack").map(|size| 2 * size),
    })
}

/// One P4 size: the table filled to `size` entries (the `n`th size), then the agent's CPU
/// watched and a bulk download's run time read.
fn scale_step(
    bed: &Bed,
    fill: &mut FlowFill,
    (n, size): (usize, u32),
    cpus: Cpus,
    plan: &Plan,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let pid = bed.agent_pid()?;
    let started = std::time::Instant::now();
    fill.fill_to(size)?;
    let fill_time = started.elapsed();
    let cut = if size < plan.flow_sizes[n] {
        format!(
            " (asked {}, the table holds {}: the largest that fits)",
            plan.flow_sizes[n], fill.capacity
        )
    } else {
        String::new()
    };
    // A sweep over the full table before watching.
    std::thread::sleep(Duration::from_secs(2));
    let before = system::process_ticks(pid)?;
    std::thread::sleep(plan.agent_watch);
    let agent_cpu = system::ticks_to_ns(system::process_ticks(pid)? - before)
        / plan.agent_watch.as_nanos() as f64;
    println!(
        "  P4 {:>9} flow entries{cut} (filled in {:.1} s): agent {:.2}% of a CPU",
        fill.entries(),
        fill_time.as_secs_f64(),
        agent_cpu * 100.0
    );
    samples.add(format!("p4 agent {n}"), agent_cpu * 100.0);
    let _stats = bpf_stats()?;
    let bulk = Runs::during(pid, || {
        measure::throughput(bed, cpus, Duration::ZERO, Duration::ZERO).map(drop)
    })?;
    println!(
        "  P4 {:>9} flow entries: {:.0} ns per forwarded packet",
        fill.entries(),
        bulk.ns_per_forwarded_packet()
    );
    samples.add(format!("p4 ns {n}"), bulk.ns_per_forwarded_packet());
    Ok(())
}

/// The closing table: medians over the rounds, ratios, goals, spread.
fn report(plan: &Plan, samples: &Samples, scale: Option<&Scale>) {
    let [ftpnat, netfilter, plain] =
        [Router::Ftpnat, Router::Netfilter, Router::PlainRouting].map(Router::label);
    let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    };
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0));
    println!();
    println!("bench: {}", system::machine());
    println!(
        "bench: medians of {} round{}; spread = (max − min) / median of a figure's rounds, the \
         largest of the row: a ratio closer to 1 than that is not a difference",
        plan.rounds,
        if plan.rounds == 1 {
            " (no spread from one round)"
        } else {
            "s"
        }
    );
    println!(
        "{:<3} {:<42} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}  GOAL",
        "", "FIGURE", "FTPNAT", "NETFILTER", "PLAIN", "FTP/NF", "FTP/PLAIN", "SPREAD"
    );
    let row = |p: &str, what: &str, key: &str, goal: &str| {
        let [f, n, r] = [ftpnat, netfilter, plain].map(|l| samples.median(&format!("{key} {l}")));
        let spread = [ftpnat, netfilter, plain]
            .iter()
            .filter_map(|l| samples.spread(&format!("{key} {l}")))
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
        println!(
            "{p:<3} {what:<42} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}  {goal}",
            fmt(f),
            fmt(n),
            fmt(r),
            ratio(f, n),
            ratio(f, r),
            pct(spread)
        );
    };
    for offloads in [false, true] {
        let mode = offloads_label(offloads);
        row(
            "P1",
            &format!("router softirq ns/packet, {mode}"),
            &format!("p1 {mode} ns"),
            if offloads {
                ""
            } else {
                "≤ 0.7x NF, ≤ 1.0x plain"
            },
        );
        row(
            "P1",
            &format!("MB/s, {mode}"),
            &format!("p1 {mode} MB/s"),
            if offloads { "" } else { "≥ 1.3x NF" },
        );
    }
    row("P3", "sessions/s, default window", "p3", "≥ 1.0x NF");
    row("P3", "failed sessions, default window", "p3 failed", "");
    let small = Router::FtpnatSmallWindow.label();
    let small_rate = samples.median(&format!("p3 {small}"));
    let nf_rate = samples.median(&format!("p3 {netfilter}"));
    println!(
        "{:<3} {:<42} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}  window {SMALL_WINDOW}; failed: {}",
        "P3",
        "sessions/s, 64-port window",
        fmt(small_rate),
        fmt(nf_rate),
        fmt(samples.median(&format!("p3 {plain}"))),
        ratio(small_rate, nf_rate),
        ratio(small_rate, samples.median(&format!("p3 {plain}"))),
        pct(samples.spread(&format!("p3 {small}"))),
        fmt(samples.median(&format!("p3 failed {small}")))
    );
    let ftpnat_only = |p: &str, what: &str, value: Option<f64>, key: &str, goal: &str| {
        println!(
            "{p:<3} {what:<42} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}  {goal}",
            fmt(value),
            "-",
            "-",
            "-",
            "-",
            pct(samples.spread(key))
        );
    };
    ftpnat_only(
        "P2",
        "ns per bulk data packet",
        samples.median("p2 bulk"),
        "p2 bulk",
        "≤ 100 ns (aim 60)",
    );
    ftpnat_only(
        "P2",
        "ns per pure ACK on a control connection",
        samples.median("p2 ack"),
        "p2 ack",
        "",
    );
    ftpnat_only(
        "P2",
        "ns per segment of a PORT exchange",
        samples.median("p2 port"),
        "p2 port",
        "≤ 1000 ns (the PORT rewritten, its 200 scanned)",
    );
    ftpnat_only(
        "P2",
        "ns per packet of a long STAT reply",
        samples.median("p2 stat"),
        "p2 stat",
        "",
    );
    if let Some(scale) = scale {
        let [small_size, large_size] = scale.sizes;
        let (ns_small, ns_large) = (samples.median("p4 ns 0"), samples.median("p4 ns 1"));
        println!(
            "{:<3} {:<42} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}  {} of the {small_size}-entry \
             figure ({}); goal ≤ 1.2x at 1M; table capacity {}",
            "P4",
            format!("ns per bulk packet, {large_size} flow entries"),
            fmt(ns_large),
            "-",
            "-",
            "-",
            "-",
            pct(samples.spread("p4 ns 1")),
            ratio(ns_large, ns_small),
            fmt(ns_small),
            scale.capacity
        );
        for (n, size) in scale.sizes.iter().enumerate() {
            ftpnat_only(
                "P4",
                &format!("agent % of a CPU, {size} flow entries"),
                samples.median(&format!("p4 agent {n}")),
                &format!("p4 agent {n}"),
                if n == 1 { "< 5% at 1M flows" } else { "" },
            );
        }
        println!(
            "{:<3} {:<42} {:>10.0} {:>10} {:>10} {:>9} {:>9} {:>7}  ≤ 512 B; NF: 2 nf_conntrack \
             objects; ftpnat total {:.1} MiB",
            "P4",
            "kernel bytes per session + 1 data conn",
            scale.per_session,
            scale
                .netfilter_per_session
                .map_or("-".to_owned(), |b| b.to_string()),
            "-",
            ratio(
                Some(scale.per_session),
                scale.netfilter_per_session.map(|b| b as f64)
            ),
            "-",
            "-",
            scale.total_memlock as f64 / f64::from(1 << 20)
        );
    }
    let mut spreads: Vec<(f64, &str)> = samples
        .values
        .keys()
        .filter_map(|key| Some((samples.spread(key)?, key.as_str())))
        .collect();
    spreads.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some(middle), Some(widest)) = (spreads.get(spreads.len() / 2), spreads.last()) {
        println!(
            "bench: trust: between rounds a figure moved by {:.0}% (median over all figures), \
             by {:.0}% at most ({}); ratios nearer 1 than the spread of their row say nothing",
            middle.0 * 100.0,
            widest.0 * 100.0,
            widest.1
        );
    }
    if plan.quick {
        println!(
            "bench: a quick run (small downloads, debug agent): for development, not for figures"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Samples {
        let mut samples = Samples::default();
        for &value in values {
            samples.add("figure".to_owned(), value);
        }
        samples
    }

    #[test]
    fn the_median_of_an_even_count_averages_the_middle_two() {
        assert_eq!(samples(&[3.0, 1.0, 2.0]).median("figure"), Some(2.0));
        assert_eq!(samples(&[4.0, 1.0, 3.0, 2.0]).median("figure"), Some(2.5));
        assert_eq!(samples(&[]).median("figure"), None);
    }

    #[test]
    fn one_round_has_no_spread() {
        assert_eq!(samples(&[5.0]).spread("figure"), None);
        assert_eq!(samples(&[90.0, 110.0, 100.0]).spread("figure"), Some(0.2));
    }

    #[test]
    fn a_failed_measurement_is_remembered_and_the_bench_goes_on() {
        let mut samples = Samples::default();
        let failed: Option<()> = samples.attempt("P1", |_| anyhow::bail!("curl timed out"));
        assert!(failed.is_none());
        assert_eq!(samples.attempt("P3", |_| Ok(7)), Some(7));
        assert_eq!(samples.failed, ["P1: curl timed out"]);
    }
}
