//! `cargo xtask demo`: the whole path on an embedded default. A dual-stack lab (client | router |
//! server) where the server has no IPv4 route back to the client's network, the router has no
//! netfilter rule but the operator's IPv6 firewall (unsolicited inbound IPv6 dropped), vsftpd on
//! the server for both families, `ftpnat run` on the router, active and passive downloads from the
//! client through ftpnat's eBPF masquerade (IPv4), its firewall mode (IPv6) and its NAT64 (the
//! client's IPv6 to the server's IPv4 through a NAT64 prefix, with the RFC 6384 ALG), sessions of
//! each side by side in the live session table, the counters, and a full teardown.

use std::{net::IpAddr, process::Stdio, thread, time::Duration};

use anyhow::{Context as _, bail};
use ftpnat_tests::{
    Client, FtpServer, Lab, LabSpec, Mode, Routing, TestFile, Transfer, files::sha256_of,
    lab::Nat64Spec, servers::VsftpdOptions,
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
        ..LabSpec::dual_stack()
    })?;
    let spec = &lab.spec;
    let v6 = lab.ipv6().clone();
    println!(
        "demo: lab {}: client {} {} | router {} {} / {} {} | server {} {}",
        lab.name,
        spec.client,
        v6.client,
        spec.router_lan,
        v6.router_lan,
        spec.router_wan,
        v6.router_wan,
        spec.server,
        v6.server
    );
    println!(
        "demo: the server has no IPv4 route to {}/24, the router no netfilter rule for IPv4 and \
         drops unsolicited inbound IPv6",
        spec.client
    );
    lab.drop_unsolicited_inbound_ipv6()?;
    let root = lab.subdir("srv")?;
    let file = TestFile::create(&root.join("demo.bin"), FILE_SIZE, 7)?;
    let server = FtpServer::vsftpd(
        &lab.server,
        spec.server,
        &root,
        lab.dir(),
        &VsftpdOptions {
            ipv6: Some(v6.server),
            ..VsftpdOptions::default()
        },
    )?;
    println!(
        "demo: vsftpd serving {} ({} MiB)",
        file.name(),
        FILE_SIZE >> 20
    );

    // The NAT64 labs' prefix, a network-specific one (RFC 6052 section 2.2): the lab's IPv4
    // server has a documentation address, which the well-known `64:ff9b::/96` never names.
    let nat64 = Nat64Spec::default();
    let mut agent = lab.start_ftpnat(&["--nat64", &nat64.prefix_arg()])?;
    println!("demo: ftpnat run on the router:");
    for line in agent.log_text().lines() {
        println!("  | {line}");
    }

    let downloads = lab.subdir("client")?;
    let (v4, v6_server) = (IpAddr::V4(server.addr), IpAddr::V6(v6.server));
    let via_nat64 = IpAddr::V6(nat64.address_of(server.addr));
    for (mode, address, label) in [
        (Mode::Port, v4, "IPv4 active (PORT)"),
        (Mode::Eprt, v4, "IPv4 active (EPRT)"),
        (Mode::Pasv, v4, "IPv4 passive (PASV)"),
        (Mode::Epsv, v4, "IPv4 passive (EPSV)"),
        (Mode::Eprt, v6_server, "IPv6 active (EPRT)"),
        (Mode::Epsv, v6_server, "IPv6 passive (EPSV)"),
        (Mode::Eprt, via_nat64, "NAT64 active (EPRT, sent as PORT)"),
        (Mode::Epsv, via_nat64, "NAT64 passive (EPSV, sent as PASV)"),
    ] {
        let family = if address == via_nat64 {
            "nat64"
        } else {
            address_family(address)
        };
        let local = downloads.join(format!("{mode:?}-{family}.bin"));
        Transfer {
            client: Client::Curl,
            mode,
            server: address,
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

    // Slow downloads keep an IPv4, an IPv6 and a NAT64 session open while we look at the tables.
    let slow = [
        server.addr.to_string(),
        format!("[{}]", v6.server),
        format!("[{via_nat64}]"),
    ]
    .iter()
    .enumerate()
    .map(|(n, host)| {
        lab.client
            .command(
                "curl",
                &[
                    "-sS",
                    "--limit-rate",
                    "4M",
                    "-P",
                    "-",
                    "-o",
                    &downloads.join(format!("slow-{n}.bin")).to_string_lossy(),
                    &format!("ftp://{host}/{}", file.name()),
                ],
            )
            .stdout(Stdio::null())
            .spawn()
            .context("starting curl")
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    thread::sleep(Duration::from_secs(2));
    for command in ["sessions", "flows"] {
        println!(
            "demo: ftpnat {command} (during rate-limited active downloads: IPv4, IPv6, NAT64):"
        );
        print_ftpnat(&lab, command)?;
    }
    for download in slow {
        wait(download)?;
    }
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

fn address_family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "ipv4" } else { "ipv6" }
}
