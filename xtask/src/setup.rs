//! Installs only what is missing, and says what it did. When a piece cannot be installed it stops,
//! naming the piece and how to get it by hand.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Debian packages, by what needs them.
const PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker (links the eBPF object; LLVM must match nightly rustc's)",
    ),
    (
        "libpolly-22-dev",
        "bpf-linker (LLVM 22's Polly, linked by llvm-config --libs)",
    ),
    ("iproute2", "the lab (ip netns, veth, ss)"),
    ("iputils-ping", "the lab (reachability checks)"),
    ("procps", "the lab (sysctl)"),
    ("util-linux", "the lab (nsenter, mount)"),
    ("vsftpd", "the lab's FTP server"),
    ("python3-pyftpdlib", "the lab's second FTP server"),
    ("lftp", "the lab's FTP client"),
    ("curl", "the lab's FTP client"),
    ("tcpdump", "the lab's captures"),
    ("ethtool", "the lab (offload settings)"),
    (
        "iptables",
        "the kernel-helper reference and coexistence tests",
    ),
    ("conntrack", "the kernel-helper reference tests"),
    ("bpftool", "inspecting programs and maps by hand"),
    ("socat", "plain TCP traffic in the coexistence tests"),
];

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    install_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    println!("xtask setup: everything is in place");
    Ok(())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES
        .iter()
        .filter(|(name, _)| !package_installed(name))
        .collect();
    if missing.is_empty() {
        println!("xtask setup: Debian packages present");
        return Ok(());
    }
    for (name, why) in &missing {
        println!("xtask setup: installing {name} — for {why}");
    }
    let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    let hint = format!("apt-get update && apt-get install -y {}", names.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .with_context(|| format!("running apt-get (install by hand: {hint})"))?;
    if !update.success() {
        bail!("apt-get update failed; as root, run: {hint}");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&names)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !install.success() {
        bail!(
            "could not install {}; as root, run: {hint}",
            names.join(", ")
        );
    }
    if let Some((name, _)) = missing.iter().find(|(name, _)| !package_installed(name)) {
        bail!("{name} is still not installed after apt-get; as root, run: {hint}");
    }
    Ok(())
}

fn rustup(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .context("running rustup (the eBPF build needs rustup's nightly toolchain)")?;
    if !out.status.success() {
        bail!(
            "rustup {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn install_rust_src() -> anyhow::Result<()> {
    let toolchains = rustup(&["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        println!(
            "xtask setup: installing the nightly toolchain — for the eBPF build (-Z build-std)"
        );
        rustup(&["toolchain", "install", NIGHTLY, "--profile", "minimal"]).context(
            "could not install the nightly toolchain; run `rustup toolchain install nightly`",
        )?;
    }
    let components = rustup(&["component", "list", "--toolchain", NIGHTLY, "--installed"])?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("xtask setup: nightly rust-src present");
        return Ok(());
    }
    println!(
        "xtask setup: installing nightly rust-src — for building `core` for bpfel-unknown-none"
    );
    rustup(&["component", "add", "rust-src", "--toolchain", NIGHTLY]).context(
        "could not add rust-src; run `rustup component add rust-src --toolchain nightly`",
    )?;
    Ok(())
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let present = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION));
    if present {
        println!("xtask setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    println!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 — links the eBPF object"
    );
    let hint = format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker@{BPF_LINKER_VERSION} --locked \
         --no-default-features --features llvm-22"
    );
    let status = Command::new(env!("CARGO"))
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .status()
        .with_context(|| format!("running cargo install; run by hand: {hint}"))?;
    if !status.success() {
        bail!("could not build bpf-linker; run by hand: {hint}");
    }
    Ok(())
}
