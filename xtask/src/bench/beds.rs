//! The routers under test, one lab each, all alive for the whole run so that rounds interleave:
//! plain routing, netfilter's masquerade with the kernel's FTP helper, ftpnat (and ftpnat with a
//! small port window, for the sessions-per-second figure).

use anyhow::Context as _;
use ftpnat_tests::{
    Agent, FtpServer, Lab, LabSpec, Routing, TestFile,
    lab::{HOST_IF, ROUTER_LAN_IF, ROUTER_WAN_IF},
    netns::NetNs,
};

use super::system;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Router {
    PlainRouting,
    Netfilter,
    Ftpnat,
    /// ftpnat with `--port-window` of [`SMALL_WINDOW`].
    FtpnatSmallWindow,
}

/// The lab's one client host stands for many clients: P3 opens hundreds of sessions a second
/// from it, which the per-host and per-/24 session limits would refuse.
const NO_SOURCE_LIMITS: [&str; 4] = [
    "--max-sessions-per-source",
    "0",
    "--max-sessions-per-subnet",
    "0",
];

/// ftpnat's P4 sizing: the largest `--max-sessions`, whose flow table holds a million
/// connection directions (8 per session); its tables preallocate about 316 MiB.
const SCALE_SIZING: [&str; 2] = ["--max-sessions", "131072"];

/// The small port window of P3: 64 ports.
pub const SMALL_WINDOW: &str = "61000-61063";

impl Router {
    pub fn label(self) -> &'static str {
        match self {
            Router::PlainRouting => "plain routing",
            Router::Netfilter => "netfilter",
            Router::Ftpnat => "ftpnat",
            Router::FtpnatSmallWindow => "ftpnat, 64-port window",
        }
    }
}

/// Which CPU runs what: the endpoints (client and server processes and their packets) on one, the
/// router's packet processing (steered there by RPS) and its agent on the other.
#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    pub endpoints: usize,
    pub router: usize,
}

/// A lab set up as one router, serving the files the bench transfers.
pub struct Bed {
    pub router: Router,
    /// Dropped first: the agent stops before its namespaces go.
    pub agent: Option<Agent>,
    pub server: FtpServer,
    pub big: TestFile,
    pub tiny: TestFile,
    /// The directory whose `STAT` is a long reply on the control connection.
    pub listing: String,
    /// The veth offloads as created (`tso gso gro` on/off per interface), restored for "offloads
    /// on".
    default_offloads: Vec<Offloads>,
    pub lab: Lab,
}

/// One interface's offload settings as `ethtool -k` showed them: (`-K` name, `on`/`off`).
struct Offloads {
    side: Side,
    iface: String,
    settings: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Client,
    Router,
    Server,
}

/// The veth offloads the bench switches (ethtool's long names and its `-K` names).
const OFFLOADS: [(&str, &str); 3] = [
    ("tcp-segmentation-offload", "tso"),
    ("generic-segmentation-offload", "gso"),
    ("generic-receive-offload", "gro"),
];

impl Bed {
    pub fn new(
        router: Router,
        big_size: u64,
        listing_files: usize,
        cpus: Cpus,
    ) -> anyhow::Result<Self> {
        let lab = Lab::new(LabSpec {
            routing: if router == Router::PlainRouting {
                Routing::Routed
            } else {
                Routing::Nat
            },
            // A capture would cost more than what is measured.
            capture: false,
            ..LabSpec::default()
        })?;
        let (server, big) = lab.serve_file(big_size, 9)?;
        let root = lab.subdir("srv")?;
        let tiny = TestFile::create(&root.join("tiny.bin"), 4096, 1)?;
        let listing_dir = lab.subdir("srv/listing")?;
        for n in 0..listing_files {
            std::fs::write(
                listing_dir.join(format!(
                    "a-file-with-a-name-long-enough-to-fill-a-line-{n:05}.txt"
                )),
                b"",
            )?;
        }
        let agent = match router {
            Router::Ftpnat => {
                let mut args = NO_SOURCE_LIMITS.to_vec();
                args.extend(SCALE_SIZING);
                Some(lab.start_ftpnat(&args)?)
            }
            Router::FtpnatSmallWindow => {
                let mut args = NO_SOURCE_LIMITS.to_vec();
                args.extend(["--port-window", SMALL_WINDOW]);
                Some(lab.start_ftpnat(&args)?)
            }
            Router::Netfilter => {
                lab.netfilter_masquerade(true)?;
                None
            }
            Router::PlainRouting => None,
        };
        let mut bed = Self {
            router,
            agent,
            server,
            big,
            tiny,
            listing: "listing".to_owned(),
            default_offloads: Vec::new(),
            lab,
        };
        bed.default_offloads = bed.read_offloads()?;
        bed.steer(cpus)?;
        Ok(bed)
    }

    fn ns(&self, side: Side) -> &NetNs {
        match side {
            Side::Client => &self.lab.client,
            Side::Router => &self.lab.router,
            Side::Server => &self.lab.server,
        }
    }

    fn interfaces() -> [(Side, &'static str); 4] {
        [
            (Side::Client, HOST_IF),
            (Side::Router, ROUTER_LAN_IF),
            (Side::Router, ROUTER_WAN_IF),
            (Side::Server, HOST_IF),
        ]
    }

    fn read_offloads(&self) -> anyhow::Result<Vec<Offloads>> {
        let mut all = Vec::new();
        for (side, iface) in Self::interfaces() {
            let out = self.ns(side).exec("ethtool", &["-k", iface])?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut settings = Vec::new();
            for (long, short) in OFFLOADS {
                let state = text
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{long}: ")))
                    .and_then(|rest| rest.split_whitespace().next())
                    .with_context(|| format!("ethtool -k {iface} shows no {long}"))?;
                settings.push((short.to_owned(), state.to_owned()));
            }
            all.push(Offloads {
                side,
                iface: iface.to_owned(),
                settings,
            });
        }
        Ok(all)
    }

    /// TSO, GSO and GRO off on every veth of the lab (each packet the router sees is at most one
    /// MTU, 1500 bytes), or back to the veth's defaults.
    pub fn set_offloads(&self, on: bool) -> anyhow::Result<()> {
        for defaults in &self.default_offloads {
            let mut args = vec!["-K", defaults.iface.as_str()];
            for (short, default) in &defaults.settings {
                args.push(short);
                args.push(if on { default } else { "off" });
            }
            self.ns(defaults.side).exec("ethtool", &args)?;
        }
        Ok(())
    }

    /// RPS on the router's interfaces to the router's CPU, on the endpoints' interfaces to
    /// theirs; the server (and what it forks) and the agent pinned likewise. Clients are started
    /// pinned (see [`Bed::client_command`]).
    fn steer(&self, cpus: Cpus) -> anyhow::Result<()> {
        for (side, iface) in Self::interfaces() {
            let cpu = match side {
                Side::Router => cpus.router,
                Side::Client | Side::Server => cpus.endpoints,
            };
            system::write_sys(
                self.ns(side),
                &format!("/sys/class/net/{iface}/queues/rx-0/rps_cpus"),
                &format!("{:x}", 1u64 << cpu),
            )?;
        }
        system::pin_namespace(&self.lab.server, cpus.endpoints)?;
        if let Some(pid) = self.agent.as_ref().and_then(Agent::pid) {
            system::pin_pid(pid, cpus.router)?;
        }
        Ok(())
    }

    /// A command in the client namespace, pinned to the endpoints' CPU.
    pub fn client_command(
        &self,
        cpus: Cpus,
        program: &str,
        args: &[&str],
    ) -> std::process::Command {
        let cpu = cpus.endpoints.to_string();
        let mut full = vec!["-c", cpu.as_str(), program];
        full.extend_from_slice(args);
        self.lab.client.command("taskset", &full)
    }

    /// Runs the Python `script` (written into the lab's directory as `name`) with Debian's
    /// `/usr/bin/python3` in the client namespace, pinned as [`Bed::client_command`], stopped after
    /// `limit_secs`; `args` follow the script's path.
    pub fn client_python(
        &self,
        cpus: Cpus,
        (name, script): (&str, &str),
        limit_secs: u64,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let path = self.lab.dir().join(name);
        std::fs::write(&path, script)?;
        let limit = limit_secs.to_string();
        let path = path.to_string_lossy();
        let mut full = vec![limit.as_str(), "/usr/bin/python3", &path];
        full.extend_from_slice(args);
        Ok(self.client_command(cpus, "timeout", &full).output()?)
    }

    /// Packets the router received on both its interfaces: what it forwarded, both ways.
    pub fn router_packets(&self) -> anyhow::Result<u64> {
        Ok(
            system::iface_counter(&self.lab.router, ROUTER_LAN_IF, "rx_packets")?
                + system::iface_counter(&self.lab.router, ROUTER_WAN_IF, "rx_packets")?,
        )
    }

    pub fn agent_pid(&self) -> anyhow::Result<u32> {
        self.agent
            .as_ref()
            .and_then(Agent::pid)
            .context("this router runs no agent")
    }
}
