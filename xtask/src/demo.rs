//! `cargo xtask demo`: the whole path on an embedded default. A lab (client | router | server)
//! where the server has no route back to the client's network and the router has no netfilter
//! rule, vsftpd on the server, `ftpnat run` on the router, active and passive downloads from the
//! client through ftpnat's eBPF masquerade, the live session table, the counters, and a full
//! teardown.

use std::{process::Stdio, thread, time::Duration};

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
        routing: Routing::Nat,
        ..LabSpec::default()
    })?;
    let spec = &lab.spec;
    println!(
        "demo: lab {}: client {} | router {} / {} | server {}",
        lab.name, spec.client, spec.router_lan, spec.router_wan, spec.server
    );
    println!(
        "demo: the server has no route to {}/24 and the router no netfilter rule",
        spec.client
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
    println!("demo: ftpnat run on the router:");
    for line in agent.log_text().lines() {
        println!("  | {line}");
    }

    let downloads = lab.subdir("client")?;
    for (mode, label) in [
        (Mode::Port, "active (PORT)"),
        (Mode::Eprt, "active (EPRT)"),
        (Mode::Pasv, "passive (PASV)"),
        (Mode::Epsv, "passive (EPSV)"),
    ] {
        let local = downloads.join(format!("{mode:?}.bin"));
        Transfer {
            client: Client::Curl,
            mode,
            server: server.addr.into(),
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
        println!("demo: {label} download with curl through ftpnat: sha256 matches");
    }

    // A slow download keeps a session open while we look at the tables.
    let slow = lab
        .client
        .command(
            "curl",
            &[
                "-sS",
                "--limit-rate",
                "4M",
                "-P",
                "-",
                "-o",
                &downloads.join("slow.bin").to_string_lossy(),
                &format!("ftp://{}/{}", server.addr, file.name()),
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .context("starting curl")?;
    thread::sleep(Duration::from_secs(2));
    for command in ["sessions", "flows"] {
        println!("demo: ftpnat {command} (during a rate-limited active download):");
        print_ftpnat(&lab, command)?;
    }
    wait(slow)?;
    println!("demo: ftpnat stats:");
    print_ftpnat(&lab, "stats")?;

    let (status, _) = agent.stop().context("stopping the agent")?;
    println!(
        "demo: ftpnat run stopped on SIGTERM ({status}); its datapath stays attached for the next \
         agent to adopt"
    );
    println!("demo: ftpnat detach:");
    print_ftpnat(&lab, "detach")?;
    drop(server);
    drop(lab);
    println!("demo: lab removed");
    Ok(())
}

fn print_ftpnat(lab: &Lab, command: &str) -> anyhow::Result<()> {
    let out = lab.ftpnat(&[command])?;
    if !out.status.success() {
        bail!(
            "ftpnat {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    Ok(())
}

fn wait(mut child: std::process::Child) -> anyhow::Result<()> {
    let status = child.wait()?;
    if !status.success() {
        bail!("the slow download failed ({status})");
    }
    Ok(())
}
