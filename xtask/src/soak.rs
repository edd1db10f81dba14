//! `cargo xtask soak --sessions N --seconds S`: a lab (client | router | server, the server with
//! no route back) with ftpnat masquerading, N concurrent FTP sessions from the client to vsftpd
//! for S seconds, then every table and the port window must drain back to zero. Not part of
//! `cargo xtask test`: it is long and its figures are load, not pass/fail timing.
//!
//! Each session is a Python ftplib thread (Debian's /usr/bin/python3) that keeps its control
//! connection and downloads files over and over, active (PORT) or passive (PASV) at random,
//! checking each file's sha256. At random, a transfer is aborted (ABOR, or the control
//! connection reset mid-transfer: SO_LINGER 0), and a session ends with QUIT or with a reset;
//! the thread then starts a new session. A file that arrives whole with the wrong digest is
//! corrupted: the run fails.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ftpnat_tests::{FtpServer, Lab, LabSpec, Routing, TestFile, servers::VsftpdOptions};
use serde_json::Value;

use crate::build;

/// How long the tables may take to drain once the clients have stopped: a reset or closed
/// control connection is removed within seconds, and an expectation nobody used at its expiry.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// File sizes served (bytes): small enough that 1,000 sessions on two shared cores still finish
/// transfers, varied so that data connections overlap control traffic differently.
const FILE_SIZES: [u64; 3] = [16 * 1024, 256 * 1024, 2 * 1024 * 1024];

const CLIENTS: &str = r#"
import ftplib, hashlib, json, random, socket, struct, sys, threading, time

server, sessions, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
files = [(name, digest) for name, digest in (a.split("=") for a in sys.argv[4:])]
deadline = time.monotonic() + seconds
lock = threading.Lock()
counts = {k: 0 for k in (
    "sessions_started", "sessions_quit", "sessions_reset", "sessions_failed",
    "transfers_active", "transfers_passive", "files_verified", "files_corrupted",
    "transfers_aborted", "transfers_reset")}
errors = {}

def count(key, n=1):
    with lock:
        counts[key] += n

def failed(key, err, mode):
    with lock:
        counts[key] += 1
        text = mode + ": " + type(err).__name__ + ": " + str(err)[:80]
        errors[text] = errors.get(text, 0) + 1

def reset(ftp):
    # SO_LINGER 0: close() sends a RST instead of a FIN.
    ftp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ftp.sock.close()

def one_session(rng, mode):
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=60)
    ftp.login()
    count("sessions_started")
    while time.monotonic() < deadline:
        name, digest = rng.choice(files)
        passive = rng.random() < 0.5
        mode[0] = "passive" if passive else "active"
        ftp.set_pasv(passive)
        count("transfers_passive" if passive else "transfers_active")
        ending = rng.random()
        if ending < 0.05:
            # Abort mid-transfer with ABOR.
            conn = ftp.transfercmd("RETR " + name)
            conn.recv(4096)
            conn.close()
            try:
                ftp.abort()
                ftp.voidresp()
            except ftplib.all_errors:
                pass
            count("transfers_aborted")
        elif ending < 0.08:
            # The client dies mid-transfer: its control connection is reset.
            conn = ftp.transfercmd("RETR " + name)
            conn.recv(4096)
            reset(ftp)
            conn.close()
            count("transfers_reset")
            count("sessions_reset")
            return
        else:
            h = hashlib.sha256()
            ftp.retrbinary("RETR " + name, h.update, blocksize=65536)
            if h.hexdigest() == digest:
                count("files_verified")
            else:
                count("files_corrupted")
        time.sleep(rng.uniform(0.0, 2.0))
        if rng.random() < 0.1:
            break
    if rng.random() < 0.5:
        ftp.quit()
        count("sessions_quit")
    else:
        reset(ftp)
        count("sessions_reset")

def worker(n):
    rng = random.Random(n)
    # Stagger the start so 1,000 handshakes do not arrive in the same millisecond.
    time.sleep(rng.uniform(0.0, min(10.0, seconds / 4)))
    while time.monotonic() < deadline:
        mode = ["login"]
        try:
            one_session(rng, mode)
        except ftplib.all_errors as err:
            failed("sessions_failed", err, mode[0])
            time.sleep(1.0)

threading.stack_size(256 * 1024)
threads = [threading.Thread(target=worker, args=(n,)) for n in range(sessions)]
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    time.sleep(1.0)
for t in threads:
    t.join()
counts["errors"] = errors
print(json.dumps(counts))
"#;

/// `window`: ftpnat's `--port-window`, if not its default.
pub fn run(sessions: u32, seconds: u64, window: Option<&str>) -> anyhow::Result<()> {
    if sessions == 0 || seconds == 0 {
        bail!("--sessions and --seconds must be at least 1");
    }
    let binary = build(false)?;
    // The lab finds the agent through this variable (as the integration tests do).
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("FTPNAT_BIN", &binary) };

    let lab = Lab::new(LabSpec {
        routing: Routing::Nat,
        capture: false,
        ..LabSpec::default()
    })?;
    let root = lab.subdir("srv")?;
    let files: Vec<TestFile> = FILE_SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| TestFile::create(&root.join(format!("soak-{size}.bin")), size, i as u64))
        .collect::<anyhow::Result<_>>()?;
    let server = FtpServer::vsftpd(
        &lab.server,
        lab.spec.server,
        &root,
        lab.dir(),
        &VsftpdOptions {
            // Room for every session, and for those a reset left on the server until it notices.
            max_sessions: Some(sessions.saturating_mul(2)),
            // Hundreds of active transfers at once each binding port 20 collide on the server.
            data_from_ephemeral_port: true,
            ..VsftpdOptions::default()
        },
    )?;
    // The lab's one client host stands for a LAN of users: the per-host and per-/24 session
    // limits would refuse all but their share of its sessions.
    let mut agent_args = vec![
        "--max-sessions-per-source",
        "0",
        "--max-sessions-per-subnet",
        "0",
    ];
    if let Some(window) = window {
        agent_args.extend(["--port-window", window]);
    }
    let mut agent = lab.start_ftpnat(&agent_args)?;
    println!(
        "soak: {sessions} ftplib sessions for {seconds} s through ftpnat (lab {}), vsftpd on {}",
        lab.name, server.addr
    );

    let started = Instant::now();
    let mut args = vec![
        server.addr.to_string(),
        sessions.to_string(),
        seconds.to_string(),
    ];
    args.extend(files.iter().map(|f| format!("{}={}", f.name(), f.sha256)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The clients stop starting transfers at the deadline; one may still be finishing.
    let limit = u32::try_from(seconds + 300).unwrap_or(u32::MAX);
    // The tables' high-water marks, sampled while the clients run.
    let running = std::sync::atomic::AtomicBool::new(true);
    let (clients, peak) = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = [0u64; 4];
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(stats) = lab.try_ftpnat_json(&["stats"]) {
                    for (slot, value) in peak.iter_mut().zip(table_figures(&stats)) {
                        *slot = (*slot).max(value);
                    }
                }
                thread::sleep(Duration::from_secs(5));
            }
            peak
        });
        let clients = lab.python(&lab.client, CLIENTS, &args, limit);
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        (clients, sampler.join().unwrap_or_default())
    });
    let clients = clients.context("the soak's clients")?;
    let ran = started.elapsed();
    let counts: Value = serde_json::from_slice(&clients.stdout).with_context(|| {
        format!(
            "the clients' summary: {}",
            String::from_utf8_lossy(&clients.stdout)
        )
    })?;

    let drain_started = Instant::now();
    let drained = loop {
        let stats = lab.ftpnat_json(&["stats"]);
        if stats["sessions"] == 0
            && stats["flows"] == 0
            && stats["expectations"] == 0
            && stats["window"]["in_use"] == 0
        {
            break Some(drain_started.elapsed());
        }
        if drain_started.elapsed() > DRAIN_LIMIT {
            break None;
        }
        thread::sleep(Duration::from_secs(1));
    };
    let stats = lab.ftpnat_json(&["stats"]);
    let (status, _) = agent.stop().context("stopping the agent")?;

    println!("soak: clients ran {:.0} s", ran.as_secs_f64());
    for key in [
        "sessions_started",
        "sessions_quit",
        "sessions_reset",
        "sessions_failed",
        "transfers_active",
        "transfers_passive",
        "transfers_aborted",
        "transfers_reset",
        "files_verified",
        "files_corrupted",
    ] {
        println!("soak: {key:<18} {}", counts[key]);
    }
    if let Some(errors) = counts["errors"].as_object() {
        for (error, n) in errors {
            println!("soak: client error x{n}: {error}");
        }
    }
    println!(
        "soak: most in use while running (sampled every 5 s): sessions {} flows {} \
         expectations {} window ports {}",
        peak[0], peak[1], peak[2], peak[3]
    );
    println!("soak: ftpnat stats after the drain:");
    let out = lab.ftpnat(&["stats"])?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    println!("soak: agent stopped ({status})");
    drop(server);
    drop(lab);

    if counts["files_corrupted"] != 0 {
        bail!(
            "{} downloaded files were corrupted",
            counts["files_corrupted"]
        );
    }
    if counts["files_verified"] == 0 {
        bail!("no file was downloaded whole");
    }
    match drained {
        Some(took) => println!(
            "soak: every table and the window drained to zero {:.1} s after the clients stopped",
            took.as_secs_f64()
        ),
        None => bail!(
            "the tables did not drain within {} s: {}",
            DRAIN_LIMIT.as_secs(),
            tables(&stats)
        ),
    }
    Ok(())
}

/// Sessions, flows, expectations and window ports in use, from `ftpnat stats --json`.
fn table_figures(stats: &Value) -> [u64; 4] {
    [
        stats["sessions"].as_u64().unwrap_or(0),
        stats["flows"].as_u64().unwrap_or(0),
        stats["expectations"].as_u64().unwrap_or(0),
        stats["window"]["in_use"].as_u64().unwrap_or(0),
    ]
}

fn tables(stats: &Value) -> String {
    format!(
        "sessions {} flows {} expectations {} window ports in use {}",
        stats["sessions"], stats["flows"], stats["expectations"], stats["window"]["in_use"]
    )
}
