//! `ftpnat run` on the lab's router, as a child process whose log is kept in the lab directory.

use std::{
    fs::{self, File},
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::lab::Lab;

/// The agent binary under test: `FTPNAT_BIN` (set by `cargo xtask test`), else the workspace's
/// debug build.
pub fn ftpnat_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("FTPNAT_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/debug/ftpnat"
        )),
    };
    if !path.exists() {
        bail!(
            "the ftpnat binary is not at {}: run the tests with `cargo xtask test` (or set FTPNAT_BIN)",
            path.display()
        );
    }
    Ok(path)
}

pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// The agent's process id (`nsenter` execs it, so it is the agent itself), for what watches its
    /// CPU time and its file descriptors; `None` once it was stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the agent in the router's network namespace and waits until it has attached.
    pub fn start(lab: &Lab, args: &[String]) -> anyhow::Result<Self> {
        // One log per agent: a second agent in the same lab must not truncate the first one's.
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = lab.dir().join(format!("ftpnat-run-{n}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = lab
            .in_router(&ftpnat_bin()?.to_string_lossy(), &args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting ftpnat run")?;
        let mut agent = Self {
            child: Some(child),
            log,
        };
        let start = Instant::now();
        loop {
            if agent.log_text().contains("attached to") {
                return Ok(agent);
            }
            if let Some(status) = agent.try_status()? {
                bail!(
                    "ftpnat run exited ({status}) before attaching:\n{}",
                    agent.log_text()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "ftpnat run did not attach within 30 s:\n{}",
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("the agent was already stopped"),
        }
    }

    /// Sends `signal` and waits (up to 10 s) for the agent to exit; returns its status and log.
    pub fn stop_with(&mut self, signal: i32) -> anyhow::Result<(ExitStatus, String)> {
        let child = self
            .child
            .as_ref()
            .context("the agent was already stopped")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, signal) };
        self.wait_for_exit(Duration::from_secs(10))
            .with_context(|| format!("after signal {signal}"))
    }

    /// Waits up to `limit` for the agent to exit on its own (killing it after that); returns its
    /// status and log.
    pub fn wait_for_exit(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let mut child = self.child.take().context("the agent was already stopped")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, self.log_text()));
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "ftpnat run was still running after {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) -> anyhow::Result<(ExitStatus, String)> {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(err) = self.stop()
        {
            eprintln!("lab cleanup: {err:#}");
        }
    }
}
