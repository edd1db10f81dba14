//! Builds the eBPF object (nightly, `-Z build-std=core`, bpf-linker, BTF) into OUT_DIR so that
//! `main.rs` can embed it: the agent is one self-contained binary. Also records what built it, for
//! `ftpnat --version`: a verifier refusal is only reproducible with the exact object.
use std::{path::Path, process::Command};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ftp-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ftp-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF object failed: run `cargo xtask setup` to install the nightly rust-src component and bpf-linker")?;

    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR is not set")?;
    let object = std::fs::read(Path::new(&out_dir).join("ftp-ebpf"))
        .context("reading the eBPF object just built")?;
    let sha256: String = Sha256::digest(&object)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Each on its own line of `ftpnat --version` (see main.rs): an environment variable cannot
    // hold a newline.
    let facts = [
        ("FTPNAT_COMMIT", git_commit()),
        (
            "FTPNAT_EBPF_OBJECT",
            format!("sha256 {sha256}, {} bytes", object.len()),
        ),
        (
            "FTPNAT_EBPF_BUILT_BY",
            format!(
                "{} (LLVM {}); {} (LLVM {})",
                first_line("rustup", &["run", "nightly", "rustc", "--version"]),
                rustc_llvm(),
                first_line("bpf-linker", &["--version"]),
                first_line("/usr/lib/llvm-22/bin/llvm-config", &["--version"]),
            ),
        ),
    ];
    for (name, value) in facts {
        println!("cargo:rustc-env={name}={value}");
    }
    // The commit changes without a source change: follow the checkout's HEAD and index.
    let git = concat!(env!("CARGO_MANIFEST_DIR"), "/../.git");
    for file in ["HEAD", "index"] {
        let path = Path::new(git).join(file);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Ok(())
}

/// The checkout's commit, `-dirty` if files differ from it; `unknown` outside a git checkout.
fn git_commit() -> String {
    let commit = first_line("git", &["rev-parse", "--short=12", "HEAD"]);
    if commit == "unknown" {
        return commit;
    }
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

fn rustc_llvm() -> String {
    let Ok(output) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output()
    else {
        return "unknown".to_owned();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .unwrap_or("unknown")
        .to_owned()
}

/// The first line a command prints, or `unknown` if it cannot be run.
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
