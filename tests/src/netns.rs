//! One named network namespace, removed on drop together with every process still inside it.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

/// A short, unique prefix for this process's labs: the pid plus a counter, so parallel tests and
/// parallel test runs do not collide.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "ftpnat-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command and fails with its output if it does not succeed.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}: is it installed? (`cargo xtask setup`)"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// The TC programs attached through TCX to `iface` in the calling thread's network namespace, as
/// (name, program id), ingress first. (Debian's bpftool predates TCX and lists none of them.)
pub fn tcx_programs(iface: &str) -> anyhow::Result<Vec<(String, u32)>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut programs = Vec::new();
    for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, attached) = SchedClassifier::query_tcx(iface, attach_type)
            .with_context(|| format!("querying the TCX programs of {iface}"))?;
        programs.extend(
            attached
                .iter()
                .map(|p| (p.name_as_str().unwrap_or("?").to_owned(), p.id())),
        );
    }
    Ok(programs)
}

/// Removes the namespaces named `<prefix>-…` (with every process in them), returning their names:
/// those a killed earlier process left behind under a prefix that is now ours again (pids repeat).
pub fn remove_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .map(str::to_owned)
        .collect();
    for name in &stale {
        // Dropping it kills what runs inside and deletes it.
        drop(NetNs { name: name.clone() });
    }
    Ok(stale)
}

#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace file, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs `program args…` inside the namespace via `ip netns exec` (which also
    /// gives it this namespace's view of /sys).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Runs `program args…` inside the namespace and fails with its output if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a thread that has joined this namespace (and only this thread does).
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on a valid namespace fd; it changes only this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread inside {} panicked", self.name))?
        })
    }

    fn kill_all(&self) {
        for _ in 0..20 {
            let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &self.name])
                .output()
            else {
                return;
            };
            let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        if let Err(err) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("lab cleanup: {err:#}");
        }
    }
}
