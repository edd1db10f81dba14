//! `ftpnat verify`: loads every program of the embedded object on the running kernel, attaching
//! nothing, and reports what the verifier made of each: processed instructions against the
//! kernel's limit, the time it took, and the size of the translated and JITed code. A program
//! that verifies with little headroom fails on the next kernel whose verifier works a little
//! harder, so the project's tests hold every program to [`INSN_BUDGET`].
//!
//! The programs are loaded with every kernel-side log statement live (aya-log's level at trace):
//! the most the verifier will ever walk for this object, whatever `RUST_LOG` the agent runs with.
//!
//! The maps the programs use must exist to load them, and some are pinned by name: they are made
//! on a bpffs of this process's own, mounted in a private mount namespace, so nothing is left
//! behind on the system and nothing of a running datapath is touched.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, bail};
use aya::EbpfLoader;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
use ftp_common::maps::programs;
use serde::Serialize;

use crate::datapath::object::{EBPF_OBJECT, classifier, explain_load_error};

mod stats;

/// aya-log's most verbose level (trace): every log statement of the programs stays reachable.
const ALL_KERNEL_LOGS: u8 = 5;

/// The kernel's limit on instructions processed while verifying one program.
pub const INSN_LIMIT: u32 = 1_000_000;
/// What ftpnat allows itself of [`INSN_LIMIT`]: a quarter, so that kernels whose verifier
/// explores more than this one's (they differ by tens of percent) still load every program.
pub const INSN_BUDGET: u32 = INSN_LIMIT / 4;

/// Where this process mounts its private bpffs.
const PRIVATE_BPFFS: &str = "/sys/fs/bpf";

/// One program's verification.
#[derive(Debug, Serialize)]
pub struct ProgramReport {
    pub program: String,
    pub loaded: bool,
    /// Instructions the verifier processed (`verified_insns`, kernel ≥ 5.16).
    pub processed_insns: Option<u32>,
    pub insn_limit: u32,
    pub insn_budget: u32,
    /// The verifier's own time, from its log.
    pub verification_us: Option<u64>,
    /// Verifier states at their peak, and in all, from its log.
    pub peak_states: Option<u32>,
    pub total_states: Option<u32>,
    /// Stack bytes of each subprogram, as the verifier prints them (`80+0+160`).
    pub stack_depth: Option<String>,
    /// Size of the program after the verifier's rewrites, and of its machine code.
    pub xlated_bytes: Option<u32>,
    pub jited_bytes: Option<u32>,
    /// The end of the verifier's log when it refused the program.
    pub error: Option<String>,
}

/// Every program of the object, the entry points first, then the ingress program's stages.
pub fn program_names() -> Vec<&'static str> {
    let mut names = vec![programs::INGRESS];
    names.extend(programs::STAGES.iter().map(|(_, name)| *name));
    names
}

pub fn print(json: bool) -> anyhow::Result<()> {
    let reports = verify_all()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&reports);
    }
    let refused: Vec<&str> = reports
        .iter()
        .filter(|r| !r.loaded)
        .map(|r| r.program.as_str())
        .collect();
    if !refused.is_empty() {
        bail!(
            "the kernel's verifier refused {}; report it with the output of `ftpnat --version` \
             and `uname -r`",
            refused.join(", ")
        );
    }
    Ok(())
}

fn print_table(reports: &[ProgramReport]) {
    let kernel = kernel_release();
    println!("kernel {kernel}; limit {INSN_LIMIT} processed instructions, budget {INSN_BUDGET}");
    println!(
        "{:<24} {:>10} {:>7} {:>8} {:>10} {:>8} {:>8}  stack bytes per subprogram",
        "program", "processed", "limit%", "peak st.", "time", "xlated", "jited"
    );
    let show = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for r in reports {
        if !r.loaded {
            println!("{:<24} refused by the verifier:", r.program);
            for line in r.error.as_deref().unwrap_or("").lines() {
                println!("    {line}");
            }
            continue;
        }
        let share = r.processed_insns.map_or_else(
            || "-".to_owned(),
            |n| format!("{:.1}%", f64::from(n) / f64::from(INSN_LIMIT) * 100.0),
        );
        let time = r.verification_us.map_or_else(
            || "-".to_owned(),
            |us| format!("{:.1} ms", us as f64 / 1000.0),
        );
        println!(
            "{:<24} {:>10} {:>7} {:>8} {:>10} {:>8} {:>8}  {}",
            r.program,
            show(r.processed_insns),
            share,
            show(r.peak_states),
            time,
            show(r.xlated_bytes),
            show(r.jited_bytes),
            r.stack_depth.as_deref().unwrap_or("-"),
        );
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    // SAFETY: `utsname` is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_owned();
    }
    // SAFETY: uname NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Loads the object over a private bpffs and each program in turn.
pub fn verify_all() -> anyhow::Result<Vec<ProgramReport>> {
    enter_private_bpffs()?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(PRIVATE_BPFFS)
        .override_global(aya_log::LEVEL, &ALL_KERNEL_LOGS, false)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (its maps)")?;
    let level = [ALL_KERNEL_LOGS];
    let verifier_stats = stats::of_every_program(EBPF_OBJECT, &[(aya_log::LEVEL, &level)])
        .context("loading the programs again for the verifier's statistics")?;
    let mut reports = Vec::new();
    for name in program_names() {
        let program = classifier(&mut ebpf, name)?;
        let loaded = program.load();
        let figures = verifier_stats.get(name).cloned().unwrap_or_default();
        let mut report = ProgramReport {
            program: name.to_owned(),
            loaded: loaded.is_ok(),
            processed_insns: None,
            insn_limit: INSN_LIMIT,
            insn_budget: INSN_BUDGET,
            verification_us: figures.verification_us,
            peak_states: figures.peak_states,
            total_states: figures.total_states,
            stack_depth: figures.stack_depth,
            xlated_bytes: None,
            jited_bytes: None,
            error: None,
        };
        match loaded {
            Ok(()) => {
                let fd = program.fd().context("the loaded program's descriptor")?;
                let info = program_info(fd.as_fd().as_raw_fd())
                    .with_context(|| format!("reading what the kernel says of {name}"))?;
                report.processed_insns = (info.verified_insns > 0).then_some(info.verified_insns);
                report.xlated_bytes = Some(info.xlated_prog_len);
                report.jited_bytes = (info.jited_prog_len > 0).then_some(info.jited_prog_len);
            }
            Err(err) => report.error = Some(format!("{:#}", explain_load_error(name, err))),
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Moves this process into a mount namespace of its own with a fresh bpffs at [`PRIVATE_BPFFS`]:
/// the pins the load makes vanish with the process.
fn enter_private_bpffs() -> anyhow::Result<()> {
    // SAFETY: plain system calls on this (single-threaded) process with valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error())
                .context("entering a private mount namespace (ftpnat verify must run as root)");
        }
        let root = CString::new("/")?;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error()).context("making the mounts private");
        }
        let bpf = CString::new("bpf")?;
        let target = CString::new(PRIVATE_BPFFS)?;
        if libc::mount(
            bpf.as_ptr(),
            target.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("mounting a private bpffs at {PRIVATE_BPFFS}"));
        }
    }
    Ok(())
}

/// What the kernel reports of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`).
fn program_info(fd: i32) -> io::Result<bpf_prog_info> {
    // SAFETY: both are plain old data; all-zero is valid and asks for no arrays.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The `info` member of the union, as this command reads it.
    attr.info.bpf_fd = fd as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&raw mut info) as u64;
    // SAFETY: the attr points at `info`, which outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
