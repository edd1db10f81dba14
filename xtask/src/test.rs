//! `cargo xtask test`: unit tests, then the lab's integration tests; a closing `N passed, M failed`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::Context as _;

use crate::{HOST_PACKAGES, build, setup, workspace_root};

/// Integration tests run two at a time: each has its own namespaces, so they cannot collide, and
/// two matches the CI machine's cores.
const LAB_TEST_THREADS: &str = "2";

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failed_suites: Vec<String>,
}

impl Tally {
    /// A step that failed as a whole (setup, a build, a harness that did not start, a leftover):
    /// one failure, named at the end.
    fn fail(&mut self, what: String) {
        self.failed += 1;
        self.failed_suites.push(what);
    }
}

/// Runs setup, the unit tests and the lab's integration tests, then checks that the run left
/// nothing of ours in the kernel. Whatever fails on the way is counted, and the last line is always
/// the tally.
pub fn run() -> ExitCode {
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    let mut before = None;
    match setup::run() {
        Ok(()) => {
            // After setup: on a fresh machine the tools the snapshot uses (`ip`) come with it.
            before = KernelState::snapshot()
                .map_err(|err| tally.fail(format!("cleanup check: before the tests: {err:#}")))
                .ok();
            run_suites(&mut tally);
        }
        Err(err) => tally.fail(format!("setup: {err:#}")),
    }
    if let Some(before) = before {
        match KernelState::snapshot() {
            Ok(after) => {
                for leftover in after.new_since(&before) {
                    tally.fail(format!("cleanup: {leftover}"));
                }
            }
            Err(err) => tally.fail(format!("cleanup check: after the tests: {err:#}")),
        }
    }

    for suite in &tally.failed_suites {
        eprintln!("xtask test: FAILED: {suite}");
    }
    println!("xtask test: took {}", crate::elapsed(started));
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run_suites(tally: &mut Tally) {
    println!("xtask test: unit tests");
    if let Err(err) = cargo_test(tally, "unit tests", &HOST_PACKAGES, &[], &[]) {
        tally.fail(format!("unit tests: {err:#}"));
    }

    println!("xtask test: integration tests (netns lab)");
    let binary = match build(false) {
        Ok(binary) => binary,
        Err(err) => {
            tally.fail(format!("integration tests: building ftpnat: {err:#}"));
            return;
        }
    };
    verify_budgets(tally, &binary);
    if let Err(err) = cargo_test(
        tally,
        "integration tests",
        &["--package", "ftpnat-tests"],
        &["--test-threads", LAB_TEST_THREADS],
        &[("FTPNAT_BIN", binary.to_string_lossy().as_ref())],
    ) {
        tally.fail(format!("integration tests: {err:#}"));
    }

    // Last: the same datapath on other kernels (qemu) and this one, one test per kernel. It
    // builds the optimised agent and takes about a minute once the kernels are downloaded.
    println!("xtask test: kernel matrix (cargo xtask kernels)");
    match crate::kernels::matrix() {
        Ok(kernels) => {
            for (kernel, passed) in kernels {
                if passed {
                    tally.passed += 1;
                } else {
                    tally.fail(format!("kernel matrix: {kernel} (see the table above)"));
                }
            }
        }
        Err(err) => tally.fail(format!("kernel matrix: {err:#}")),
    }
}

/// Every program within its verifier budget on this kernel: one test per program.
fn verify_budgets(tally: &mut Tally, binary: &Path) {
    println!("xtask test: verifier budgets (ftpnat verify)");
    match crate::verify::measure(binary) {
        Ok(figures) => {
            for f in &figures {
                match f.over_budget() {
                    None => {
                        println!(
                            "verify {}: {} processed instructions, ok",
                            f.program,
                            f.processed_insns.unwrap_or(0)
                        );
                        tally.passed += 1;
                    }
                    Some(why) => tally.fail(format!("verify: {why}")),
                }
            }
        }
        Err(err) => tally.fail(format!("verify: {err:#}")),
    }
}

/// Runs `cargo test`, echoing its output and adding its `test result:` lines to the tally.
fn cargo_test(
    tally: &mut Tally,
    suite: &str,
    cargo_args: &[&str],
    harness_args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root())
        .arg("test")
        // Every suite runs and is counted, even after one fails.
        .arg("--no-fail-fast")
        .args(cargo_args)
        .arg("--")
        .args(harness_args)
        .stdout(Stdio::piped());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut failed_here = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((passed, failed)) = parse_result_line(&line) {
            tally.passed += passed;
            tally.failed += failed;
            failed_here += failed;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        // A build failure or a crashed harness reports no failed test; count it as one.
        if failed_here == 0 {
            tally.failed += 1;
        }
        tally.failed_suites.push(format!("{suite} ({status})"));
    }
    Ok(())
}

/// Reads `test result: ok. 12 passed; 0 failed; …` into (12, 0).
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut passed = None;
    let mut failed = None;
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let label = words.next()?;
        let count = words.next().and_then(|n| n.parse().ok());
        match label {
            "passed" => passed = count,
            "failed" => failed = count,
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// What of ours the kernel holds: the lab's namespaces, ftpnat programs attached to this
/// (the host's) namespace's interfaces, bpffs mounts under the lab's directory. Other test runs
/// may hold some too, so only what appears during this run counts as left behind by it.
#[derive(Debug, Default, PartialEq, Eq)]
struct KernelState {
    namespaces: Vec<String>,
    host_programs: Vec<String>,
    bpffs_mounts: Vec<String>,
}

impl KernelState {
    fn snapshot() -> anyhow::Result<Self> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        Ok(Self {
            namespaces: lab_namespaces()?,
            host_programs: host_ftpnat_programs()?,
            bpffs_mounts: bpffs_mounts_under(&mountinfo, &lab_root()),
        })
    }

    /// What `self` holds that `before` did not, described.
    fn new_since(&self, before: &Self) -> Vec<String> {
        // New since `before`, and not a live process's: at the end of this run its own test
        // processes are gone, while another run's (started in the meantime) may still be at work.
        let added = |now: &[String], then: &[String]| -> Vec<String> {
            now.iter()
                .filter(|x| !then.contains(x) && !of_a_live_process(x))
                .cloned()
                .collect()
        };
        let mut leftovers = Vec::new();
        for (what, found) in [
            (
                "namespaces left behind",
                added(&self.namespaces, &before.namespaces),
            ),
            (
                "ftpnat programs left attached to host interfaces",
                added(&self.host_programs, &before.host_programs),
            ),
            (
                "bpffs left mounted",
                added(&self.bpffs_mounts, &before.bpffs_mounts),
            ),
        ] {
            if !found.is_empty() {
                leftovers.push(format!("{what}: {}", found.join(", ")));
            }
        }
        leftovers
    }
}

/// Whether a lab's namespace or mount (named after its test process, `…ftpnat-<pid>-<n>…`)
/// belongs to a process that is still running.
fn of_a_live_process(name: &str) -> bool {
    let Some((_, rest)) = name.rsplit_once("ftpnat-") else {
        return false;
    };
    let Some(pid) = rest
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Namespaces the lab creates (`ftpnat-<pid>-<n>-<role>`).
fn lab_namespaces() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running `ip netns list` (iproute2; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        anyhow::bail!(
            "`ip netns list` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("ftpnat-"))
        .map(str::to_owned)
        .collect())
}

/// ftpnat's programs attached to this namespace's interfaces, as `iface: name (program id N)`:
/// the lab attaches only inside its namespaces, so any here escaped it.
fn host_ftpnat_programs() -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        let iface = entry?.file_name().to_string_lossy().into_owned();
        // Not every entry is an interface one can query (`bonding_masters`), and an interface
        // may go away meanwhile: those hold no program of ours.
        let Ok(programs) = ftpnat_tests::netns::tcx_programs(&iface) else {
            continue;
        };
        for (name, id) in programs {
            if name.starts_with("ftpnat_") {
                found.push(format!("{iface}: {name} (program id {id})"));
            }
        }
    }
    Ok(found)
}

/// Where the lab keeps each lab's directory (and mounts its bpffs).
fn lab_root() -> PathBuf {
    std::env::temp_dir().join("ftpnat-lab")
}

/// Mount points of the bpffs mounts below `root`, from the text of /proc/self/mountinfo
/// (`ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS`).
fn bpffs_mounts_under(mountinfo: &str, root: &Path) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mount_point = mount.split_whitespace().nth(4)?;
            let fs_type = fs.split_whitespace().next()?;
            // The kernel escapes spaces and the like as octal (`\040`); the lab's paths have none.
            (fs_type == "bpf" && Path::new(mount_point).starts_with(root))
                .then(|| mount_point.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passing_and_failing_result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured"),
            Some((3, 2))
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_result_line("test foo ... ok"), None);
        assert_eq!(parse_result_line("running 3 tests"), None);
    }

    #[test]
    fn finds_bpffs_mounts_below_the_lab_directory_only() {
        let mountinfo = "\
25 1 0:22 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:8 - bpf bpf rw,mode=700
30 1 0:26 / /tmp rw,nosuid,nodev shared:12 - tmpfs tmpfs rw
301 30 0:61 / /tmp/ftpnat-lab/ftpnat-7-0/bpffs rw,relatime shared:150 - bpf bpf rw
302 30 0:62 / /tmp/ftpnat-lab/ftpnat-7-1/srv rw,relatime - tmpfs tmpfs rw
303 30 0:63 / /tmp/ftpnat-lab-other/bpffs rw,relatime - bpf bpf rw
";
        assert_eq!(
            bpffs_mounts_under(mountinfo, Path::new("/tmp/ftpnat-lab")),
            ["/tmp/ftpnat-lab/ftpnat-7-0/bpffs"]
        );
    }

    #[test]
    fn only_what_appeared_during_the_run_and_outlived_its_process_is_left_behind() {
        let state = |namespaces: &[&str], programs: &[&str], mounts: &[&str]| KernelState {
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            host_programs: programs.iter().map(|s| (*s).to_owned()).collect(),
            bpffs_mounts: mounts.iter().map(|s| (*s).to_owned()).collect(),
        };
        // Above the kernel's highest pid: a process that cannot be running.
        const GONE: u32 = 4_194_999;
        let live = std::process::id();
        let before = state(
            &["ftpnat-1-0-router"],
            &["eth0: ftpnat_ingress (program id 5)"],
            &[],
        );
        assert!(before.new_since(&before).is_empty());
        let after = state(
            &[
                "ftpnat-1-0-router",
                &format!("ftpnat-{GONE}-0-router"),
                // Another run's, still at work.
                &format!("ftpnat-{live}-3-router"),
            ],
            &[
                "eth0: ftpnat_ingress (program id 5)",
                "eth0: ftpnat_egress (program id 9)",
            ],
            &[
                &format!("/tmp/ftpnat-lab/ftpnat-{GONE}-0/bpffs"),
                &format!("/tmp/ftpnat-lab/ftpnat-{live}-3/bpffs"),
            ],
        );
        assert_eq!(
            after.new_since(&before),
            [
                format!("namespaces left behind: ftpnat-{GONE}-0-router"),
                "ftpnat programs left attached to host interfaces: eth0: ftpnat_egress (program id 9)"
                    .to_owned(),
                format!("bpffs left mounted: /tmp/ftpnat-lab/ftpnat-{GONE}-0/bpffs"),
            ]
        );
    }
}
