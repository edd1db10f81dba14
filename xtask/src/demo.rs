//! `cargo xtask demo`: the whole path on an embedded default. A lab (client | router | server) with
//! vsftpd on the server, `ftpnat run` on the router, one active and one passive download from the
//! client, the agent's counters, and a full teardown.

use anyhow::{Context as _, bail};
use ftpnat_tests::{
    Client, FtpServer, Lab, LabSpec, Mode, Routing, TestFile, Transfer, files::sha256_of,
    servers::VsftpdOptions,
};

use crate::build;

const FILE_SIZE: u64 = 20 * 1024 * 1024;

pub fn run() -> anyhow::Result<()> {
    let binary = build(false)?;
    // The lab finds the agent through this variable (as the integration tests do).
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("FTPNAT_BIN", &binary) };

    let lab = Lab::new(LabSpec {
        routing: Routing::Routed,
        ..LabSpec::default()
    })?;
    let spec = &lab.spec;
    println!(
        "demo: lab {}: client {} | router {} / {} | server {} (routed, no NAT yet)",
        lab.name, spec.client, spec.router_lan, spec.router_wan, spec.server
    );
    let root = lab.subdir("srv")?;
    let file = TestFile::create(&root.join("demo.bin"), FILE_SIZE, 7)?;
    let server = FtpServer::vsftpd(
        &lab.server,
        spec.server,
        &root,
        lab.dir(),
        &VsftpdOptions::default(),
    )?;
    println!(
        "demo: vsftpd serving {} ({} MiB)",
        file.name(),
        FILE_SIZE >> 20
    );

    let mut agent = lab.start_ftpnat(&[])?;
    println!("demo: ftpnat run attached on the router:");
    for line in agent.log_text().lines() {
        println!("  | {line}");
    }

    let downloads = lab.subdir("client")?;
    for (mode, label) in [
        (Mode::Port, "active (PORT)"),
        (Mode::Pasv, "passive (PASV)"),
    ] {
        let local = downloads.join(format!("{mode:?}.bin"));
        Transfer {
            client: Client::Curl,
            mode,
            server: server.addr,
            port: server.port,
            remote: file.name(),
            local: &local,
            timeout_secs: 60,
        }
        .run(&lab.client)?;
        let digest = sha256_of(&local)?;
        if digest != file.sha256 {
            bail!(
                "{label} download is corrupt: sha256 {digest}, expected {}",
                file.sha256
            );
        }
        println!("demo: {label} download with curl: sha256 matches ({digest})");
    }

    println!("demo: ftpnat stats on the router:");
    let stats = lab.ftpnat(&["stats"])?;
    print!("{}", String::from_utf8_lossy(&stats.stdout));
    if !stats.status.success() {
        bail!(
            "ftpnat stats failed: {}",
            String::from_utf8_lossy(&stats.stderr)
        );
    }

    let (status, _) = agent.stop().context("stopping the agent")?;
    println!("demo: ftpnat run stopped on SIGTERM ({status}); programs detached, pins removed");
    drop(server);
    drop(lab);
    println!("demo: lab removed");
    Ok(())
}
