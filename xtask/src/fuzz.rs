//! `cargo xtask fuzz [--target T] [--seconds N | --runs N]`: runs one of ftp-common's cargo-fuzz
//! targets from its seed corpus, for a time or a number of executions.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{run_checked, workspace_root};

/// The targets in ftp-common/fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["control_channel", "datapath_segments"];

/// When the run stops: libFuzzer's `-max_total_time` or `-runs`.
pub enum Limit {
    Seconds(u64),
    Runs(u64),
}

/// `jobs` above 1 runs libFuzzer's fork mode with that many processes; `-runs` then counts the
/// executions of all of them.
pub fn run(target: &str, limit: Limit, jobs: u32) -> anyhow::Result<()> {
    if !TARGETS.contains(&target) {
        bail!(
            "no fuzz target `{target}`; choose one of {} with --target",
            TARGETS.join(", ")
        );
    }
    let has_cargo_fuzz = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_cargo_fuzz {
        println!("xtask fuzz: installing cargo-fuzz");
        run_checked(Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--locked"]))
            .context("could not install cargo-fuzz; run `cargo install cargo-fuzz --locked`")?;
    }
    let root = workspace_root();
    let fuzz_dir = root.join("ftp-common/fuzz");
    // The working corpus grows while fuzzing and is not committed; the seeds are.
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let seeds = fuzz_dir.join("seeds").join(target);
    let limit = match limit {
        Limit::Seconds(seconds) => format!("-max_total_time={seconds}"),
        Limit::Runs(runs) => format!("-runs={runs}"),
    };
    let mut command = Command::new("rustup");
    command
        .current_dir(root)
        .args(["run", "nightly", "cargo", "fuzz", "run", target])
        // ftp-common and the targets are safe Rust (unsafe code is a compile error in the
        // protocol core): AddressSanitizer would find nothing the bounds checks do not, and it
        // costs most of the executions.
        .args(["--sanitizer", "none", "--fuzz-dir"])
        .arg(&fuzz_dir)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(limit)
        .arg("-print_final_stats=1");
    if jobs > 1 {
        command.arg(format!("-fork={jobs}"));
    }
    run_checked(&mut command)
}
