//! `cargo xtask lint`: formatting and clippy, warnings as errors, for every crate — the eBPF crate
//! with nightly clippy for its own target, as it is built, and the fuzz targets (a workspace of
//! their own, built with nightly) so that a change to ftp-common cannot leave them behind.

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
    let fuzz_manifest = root.join("ftp-common/fuzz/Cargo.toml");
    let fuzz_manifest = fuzz_manifest.to_string_lossy();
    run_checked(Command::new("rustup").current_dir(root).args([
        "run",
        "nightly",
        "cargo",
        "fmt",
        "--manifest-path",
        &fuzz_manifest,
        "--check",
    ]))?;
    run_checked(Command::new("rustup").current_dir(root).args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--manifest-path",
        &fuzz_manifest,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("xtask lint: clean");
    Ok(())
}
