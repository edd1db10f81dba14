//! Installs only what is missing, and says what it did. When a piece cannot be installed it stops,
//! naming the piece and how to get it by hand.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

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
    (
        "openssl",
        "the NAT64 test's self-signed certificate for vsftpd's AUTH TLS",
    ),
    (
        "tayga",
        "the NAT64 coexistence test (another NAT64 for the prefix)",
    ),
    (
        "qemu-system-x86",
        "the kernel matrix (boots Debian's kernels under TCG)",
    ),
    (
        "busybox-static",
        "the kernel matrix (the VMs' shell and tools, without libraries)",
    ),
    ("cpio", "the kernel matrix (packs the VMs' initramfs)"),
    (
        "kmod",
        "the kernel matrix (depmod and modprobe --show-depends order the VMs' modules)",
    ),
    (
        "xz-utils",
        "the kernel matrix (decompresses modules for busybox's insmod)",
    ),
];

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Any 0.13 release will do when one is already installed.
const BPF_LINKER_SERIES: &str = "0.13.";
/// The library an LLVM 22 build of bpf-linker loads.
const LIBLLVM_22: &str = "libLLVM.so.22";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    put_cargo_bin_on_path();
    install_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    crate::kernels::fetch_kernel_packages()?;
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

/// How to get rustup when it is missing or broken.
const RUSTUP_HINT: &str =
    "install rustup from https://rustup.rs, then run `cargo xtask setup` again";

fn rustup(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .with_context(|| {
            format!("running rustup (the eBPF build needs its nightly toolchain); {RUSTUP_HINT}")
        })?;
    if !out.status.success() {
        bail!(
            "rustup {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
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
            "could not install the nightly toolchain; run `rustup toolchain install nightly \
             --profile minimal`",
        )?;
    }
    let components = rustup(&["component", "list", "--toolchain", NIGHTLY, "--installed"])
        .context(
            "could not list the nightly toolchain's components; reinstall it with `rustup \
             toolchain install nightly --profile minimal --force`",
        )?;
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

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, by default `~/.cargo/bin`.
fn cargo_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    Some(home.join("bin"))
}

/// Puts cargo's bin directory on this process's PATH when it is missing there, so that rustup,
/// a bpf-linker installed by `cargo install`, and the builds xtask starts all find them.
fn put_cargo_bin_on_path() {
    let Some(bin_dir) = cargo_bin_dir().filter(|dir| dir.is_dir()) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if dirs.contains(&bin_dir) {
        return;
    }
    dirs.push(bin_dir.clone());
    let Ok(path) = std::env::join_paths(dirs) else {
        return;
    };
    println!(
        "xtask setup: {} is not on PATH; using it for this run (add it to PATH to build without \
         xtask)",
        bin_dir.display()
    );
    // SAFETY: setup runs first, before xtask starts any thread, so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("PATH", path) };
}

/// The bpf-linker the eBPF build runs: the first on PATH.
fn find_bpf_linker() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}

/// Why the bpf-linker at `linker` will not do, or None if it is 0.13 built against LLVM 22.
fn bpf_linker_problem(linker: &Path) -> Option<String> {
    let version = Command::new(linker)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    if !version
        .split_whitespace()
        .nth(1)
        .is_some_and(|v| v.starts_with(BPF_LINKER_SERIES))
    {
        return Some(format!(
            "{} reports {version:?} for --version, not bpf-linker {BPF_LINKER_SERIES}x",
            linker.display()
        ));
    }
    // Linked dynamically against libLLVM (as `--features llvm-22` builds it), or installed by
    // cargo with that feature.
    let links_llvm_22 = Command::new("ldd")
        .arg(linker)
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(LIBLLVM_22));
    // cargo's record describes the binary in its own bin directory only.
    let cargo_installed = linker.parent() == cargo_bin_dir().as_deref();
    if links_llvm_22 || (cargo_installed && installed_with_llvm_22()) {
        return None;
    }
    Some(format!(
        "{} is not built against LLVM 22 (it does not load {LIBLLVM_22}, and cargo did not \
         install it with the llvm-22 feature); the nightly rustc emits LLVM 22 bitcode",
        linker.display()
    ))
}

/// Whether cargo's record of installed crates (`$CARGO_HOME/.crates2.json`) lists bpf-linker with
/// the `llvm-22` feature.
fn installed_with_llvm_22() -> bool {
    let Some(record) = cargo_bin_dir()
        .and_then(|bin| bin.parent().map(|home| home.join(".crates2.json")))
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    else {
        return false;
    };
    let Some(installs) = record["installs"].as_object() else {
        return false;
    };
    installs
        .iter()
        .filter(|(package, _)| package.starts_with("bpf-linker "))
        .any(|(_, install)| {
            install["features"]
                .as_array()
                .is_some_and(|features| features.iter().any(|f| f == "llvm-22"))
        })
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let problem = match find_bpf_linker() {
        Some(linker) => match bpf_linker_problem(&linker) {
            None => {
                println!(
                    "xtask setup: bpf-linker {BPF_LINKER_VERSION} (LLVM 22) present at {}",
                    linker.display()
                );
                return Ok(());
            }
            Some(problem) => problem,
        },
        None => "bpf-linker is not installed".to_owned(),
    };
    println!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 — links the eBPF \
         object ({problem})"
    );
    let hint = format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker@{BPF_LINKER_VERSION} --locked --force \
         --no-default-features --features llvm-22 (needs llvm-22-dev and libpolly-22-dev)"
    );
    let status = Command::new(env!("CARGO"))
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            // Replaces a bpf-linker of the same version built against another LLVM.
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .status()
        .with_context(|| {
            format!("could not run cargo install for bpf-linker; run by hand: {hint}")
        })?;
    if !status.success() {
        bail!("could not build bpf-linker ({status}); run by hand: {hint}");
    }
    let installed = find_bpf_linker().with_context(|| {
        format!("cargo install left no bpf-linker on PATH; run by hand: {hint}")
    })?;
    if let Some(problem) = bpf_linker_problem(&installed) {
        bail!("bpf-linker still does not fit after installing it: {problem}; run by hand: {hint}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Held by each test that writes a stand-in and runs it. A script being written while another
    /// test thread forks is open for writing in that fork's child until it execs, and running the
    /// script then fails with ETXTBSY ("text file busy").
    static WRITE_THEN_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A stand-in bpf-linker (a shell script, so it loads no LLVM) that reports `version`.
    fn fake_linker(dir_name: &str, version: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-setup-{}-{dir_name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let linker = dir.join("bpf-linker");
        std::fs::write(&linker, format!("#!/bin/sh\necho 'bpf-linker {version}'\n")).unwrap();
        std::fs::set_permissions(&linker, std::fs::Permissions::from_mode(0o755)).unwrap();
        linker
    }

    #[test]
    fn another_bpf_linker_version_does_not_fit() {
        let _alone = WRITE_THEN_RUN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let linker = fake_linker("old", "0.12.4");
        let problem = bpf_linker_problem(&linker).expect("0.12 refused");
        assert!(problem.contains("\"bpf-linker 0.12.4\""), "{problem}");
        assert!(problem.contains("not bpf-linker 0.13.x"), "{problem}");
        std::fs::remove_dir_all(linker.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_bpf_linker_without_llvm_22_does_not_fit() {
        let _alone = WRITE_THEN_RUN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let linker = fake_linker("no-llvm", "0.13.0");
        let problem = bpf_linker_problem(&linker).expect("no LLVM 22 refused");
        assert!(problem.contains("not built against LLVM 22"), "{problem}");
        std::fs::remove_dir_all(linker.parent().unwrap()).unwrap();
    }
}
