//! `cargo xtask fuzz --seconds N`: runs ftp-common's cargo-fuzz target from its seed corpus.

use std::process::Command;

use anyhow::Context as _;

use crate::{run_checked, workspace_root};

const TARGET: &str = "control_channel";

pub fn run(seconds: u64) -> anyhow::Result<()> {
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
    let corpus = fuzz_dir.join("corpus").join(TARGET);
    std::fs::create_dir_all(&corpus)?;
    let seeds = fuzz_dir.join("seeds").join(TARGET);
    run_checked(
        Command::new("rustup")
            .current_dir(root)
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                TARGET,
                "--fuzz-dir",
            ])
            .arg(&fuzz_dir)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1"),
    )
}
