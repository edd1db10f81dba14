//! `cargo xtask bench`: FTP download throughput through the router three ways in one run — plain
//! routing (no NAT), netfilter's masquerade with the kernel's FTP helper, and ftpnat — reported as
//! MB/s and as ratios to plain routing. Speed is judged here, never by timing assertions in tests.

use ftpnat_tests::{Lab, LabSpec, Routing};

use crate::build;

const FILE_SIZE: u64 = 1024 * 1024 * 1024;
const RUNS: usize = 7;

#[derive(Clone, Copy, PartialEq)]
enum Router {
    PlainRouting,
    NetfilterHelper,
    Ftpnat,
}

impl Router {
    fn label(self) -> &'static str {
        match self {
            Router::PlainRouting => "plain routing (no NAT)",
            Router::NetfilterHelper => "netfilter MASQUERADE + ftp helper",
            Router::Ftpnat => "ftpnat",
        }
    }
}

pub fn run() -> anyhow::Result<()> {
    let binary = build(false)?;
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("FTPNAT_BIN", &binary) };
    println!(
        "bench: curl downloads of a {} MiB file, median of {RUNS} runs each, 2 cores shared by \
         client, router and server",
        FILE_SIZE >> 20
    );
    let mut results = Vec::new();
    for router in [
        Router::PlainRouting,
        Router::NetfilterHelper,
        Router::Ftpnat,
    ] {
        for (mode, flags) in [("passive", &[][..]), ("active", &["-P", "-"][..])] {
            let mbps = measure(router, flags)?;
            println!("bench: {:<36} {mode:<8} {mbps:>9.1} MB/s", router.label());
            results.push((router, mode, mbps));
        }
    }
    println!();
    println!(
        "{:<36} {:<8} {:>10} {:>16}",
        "ROUTER", "MODE", "MB/s", "vs plain routing"
    );
    for (router, mode, mbps) in &results {
        let plain = results
            .iter()
            .find(|(r, m, _)| *r == Router::PlainRouting && m == mode)
            .map_or(f64::NAN, |(_, _, v)| *v);
        println!(
            "{:<36} {:<8} {:>10.1} {:>15.2}x",
            router.label(),
            mode,
            mbps,
            mbps / plain
        );
    }
    Ok(())
}

/// Median download speed in MB/s through a fresh lab set up as `router` says.
fn measure(router: Router, curl_flags: &[&str]) -> anyhow::Result<f64> {
    let lab = Lab::new(LabSpec {
        routing: if router == Router::PlainRouting {
            Routing::Routed
        } else {
            Routing::Nat
        },
        // The capture would cost more than what is measured.
        capture: false,
        ..LabSpec::default()
    })?;
    let (server, file) = lab.serve_file(FILE_SIZE, 9)?;
    let _agent = match router {
        Router::Ftpnat => Some(lab.start_ftpnat(&[])?),
        Router::NetfilterHelper => {
            lab.netfilter_masquerade(true)?;
            None
        }
        Router::PlainRouting => None,
    };
    let url = format!("ftp://{}/{}", server.addr, file.name());
    let mut speeds = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut args = vec!["-sS", "--fail", "--max-time", "120", "-o", "/dev/null"];
        args.extend_from_slice(&["-w", "%{speed_download}"]);
        args.extend_from_slice(curl_flags);
        args.push(&url);
        let out = lab.client.exec("curl", &args)?;
        let bytes_per_sec: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        speeds.push(bytes_per_sec / 1e6);
    }
    speeds.sort_by(f64::total_cmp);
    Ok(speeds[RUNS / 2])
}
