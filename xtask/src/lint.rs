//! `cargo xtask lint`: formatting and clippy, warnings as errors, for every crate — the eBPF crate
//! with nightly clippy for its own target, as it is built.

use std::process::Command;

use crate::{HOST_PACKAGES, run_checked, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    run_checked(
        Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["fmt", "--all", "--check"]),
    )?;
    run_checked(
        Command::new(env!("CARGO"))
            .current_dir(root)
            .arg("clippy")
            .args(HOST_PACKAGES)
            .args([
                "--package",
                "ftpnat-tests",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    run_checked(Command::new(env!("CARGO")).current_dir(root).args([
        "clippy",
        "--package",
        "ftp-common",
        "--features",
        "user",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_checked(Command::new("rustup").current_dir(root).args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "ftp-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-C",
        "panic=abort",
        "-D",
        "warnings",
    ]))?;
    println!("xtask lint: clean");
    Ok(())
}
