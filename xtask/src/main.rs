//! `cargo xtask`: the project's tasks. `setup` installs what is missing; `build`, `test`, `demo` and
//! `fuzz` run it first, so each works on a fresh machine and is idempotent.

mod bench;
mod demo;
mod fuzz;
mod kernels;
mod lint;
mod setup;
mod soak;
mod test;
mod verify;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ftpnat project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Build the eBPF object and the `ftpnat` agent with the object embedded.
    Build {
        /// Optimised build, left at target/release/ftpnat.
        #[arg(long)]
        release: bool,
    },
    /// Run the unit tests, then the integration tests in the netns lab; ends with "N passed, M failed".
    Test,
    /// Build, create a lab, run ftpnat on its router, transfer files through it and show the counters.
    Demo,
    /// Measure plain routing, netfilter's FTP helper and ftpnat side by side: throughput and router
    /// CPU per packet, datapath ns per packet, sessions per second, cost at many flows.
    Bench {
        /// Small sizes and one round, with the debug agent: for development and a smoke check.
        #[arg(long)]
        quick: bool,
        /// Rounds instead of the default (5; 1 with --quick).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: Option<u16>,
    },
    /// Boot Debian's 6.1 and 6.12 kernels under qemu and run load, attach and an active and a
    /// passive masquerade download in each, and natively; print the matrix.
    Kernels,
    /// Load every eBPF program on the running kernel and hold each to its budget (25% of the
    /// verifier's instruction limit).
    Verify {
        /// Check the optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Check formatting and run clippy (stable for the host crates, nightly for the eBPF crate).
    Lint,
    /// Run N concurrent FTP sessions through ftpnat in a lab for S seconds (active and passive,
    /// some aborted, some reset), check every file, and wait for the tables to drain to zero.
    Soak {
        #[arg(long, default_value_t = 100)]
        sessions: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// ftpnat's `--port-window LO-HI` (default: ftpnat's). Each active transfer takes a
        /// window port, and the server's connection from port 20 leaves that port in TIME_WAIT
        /// on the server for 60 s: more than (window size / 60) active transfers a second to one
        /// server fail with 425.
        #[arg(long)]
        window: Option<String>,
    },
    /// Fuzz the FTP protocol core (ftp-common) with cargo-fuzz.
    Fuzz {
        /// Which target: `control_channel` (scanners, parsers, session state machine) or
        /// `datapath_segments` (the datapath's per-segment logic: hold, splice, seqadj).
        #[arg(long, default_value = "control_channel")]
        target: String,
        /// How long to fuzz (ignored with --runs).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Stop after this many executions instead of after --seconds.
        #[arg(long)]
        runs: Option<u64>,
        /// Fuzzing processes (libFuzzer's fork mode above 1).
        #[arg(long, default_value_t = 1)]
        jobs: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => setup::run().and_then(|()| build(release).map(drop)),
        // Runs setup itself, so that every failure ends up in its closing tally.
        Task::Test => return test::run(),
        Task::Demo => {
            let started = std::time::Instant::now();
            let result = setup::run().and_then(|()| demo::run());
            println!("xtask demo: took {}", elapsed(started));
            result
        }
        Task::Bench { quick, rounds } => setup::run().and_then(|()| bench::run(quick, rounds)),
        // Runs setup itself, so that its closing time includes the downloads.
        Task::Kernels => {
            // Setup's downloads count: a fresh machine's run includes them.
            let started = std::time::Instant::now();
            let result = setup::run().and_then(|()| kernels::run());
            println!("kernels: took {}", elapsed(started));
            result
        }
        Task::Lint => setup::run().and_then(|()| lint::run()),
        Task::Verify { release } => setup::run().and_then(|()| verify::run(release)),
        Task::Soak {
            sessions,
            seconds,
            window,
        } => setup::run().and_then(|()| soak::run(sessions, seconds, window.as_deref())),
        Task::Fuzz {
            target,
            seconds,
            runs,
            jobs,
        } => {
            let limit = runs.map_or(fuzz::Limit::Seconds(seconds), fuzz::Limit::Runs);
            setup::run().and_then(|()| fuzz::run(&target, limit, jobs))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo` arguments selecting the crates whose tests need no root and no kernel (the eBPF crate
/// only builds for its own target; the lab tests run separately).
pub const HOST_PACKAGES: [&str; 6] = [
    "--package",
    "ftp-common",
    "--package",
    "ftp-userspace",
    "--package",
    "xtask",
];

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
}

/// Builds the agent (and, through its build script, the eBPF object); returns the binary's path.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root()).args([
        "build",
        "--package",
        "ftp-userspace",
        "--bin",
        "ftpnat",
    ]);
    if release {
        cmd.arg("--release");
    }
    run_checked(&mut cmd)?;
    let binary = workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("ftpnat");
    if !binary.exists() {
        bail!("the build succeeded but {} is missing", binary.display());
    }
    println!("xtask: built {}", binary.display());
    Ok(binary)
}

/// Time since `started`, as a person reads it ("4 min 07 s").
pub fn elapsed(started: std::time::Instant) -> String {
    let secs = started.elapsed().as_secs();
    format!("{} min {:02} s", secs / 60, secs % 60)
}

/// Runs a command with inherited output and fails if it fails.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
