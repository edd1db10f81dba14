//! `ftpnat run`'s settings from the command line and from a TOML file (`--config`).
//!
//! Every setting is declared once, as a field of [`RunOptions`]: the field is the flag (clap), the
//! file's key (serde, same name) and its place in the merge (generated from the declaration). A
//! value from the file goes through the flag's parser, so it is refused for the same reason.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use ftp_common::maps::{Capacities, SourceLimits};
use serde::{Deserialize, Deserializer, de::Error as _};

use super::{
    DEFAULT_PIN_DIR,
    nat::{
        self, Ipv4Prefix, Ipv6Prefix, Nat64Epsv, Nat64Prefix, Nat64Request, PortWindow, PublishSpec,
    },
};

/// `--nat64`'s value when it is given none (see [`nat::DEFAULT_NAT64_PREFIX`]).
const DEFAULT_NAT64_PREFIX_TEXT: &str = "64:ff9b::/96";

/// The --expect-timeout values accepted, in seconds.
const EXPECT_TIMEOUT_SECS: RangeInclusive<u64> = 1..=3600;
const DEFAULT_EXPECT_TIMEOUT_SECS: u64 = 120;
/// The --control-idle and --data-idle values accepted, in seconds (up to a day).
const IDLE_SECS: RangeInclusive<u64> = 1..=86_400;
const DEFAULT_CONTROL_IDLE_SECS: u64 = 900;
const DEFAULT_DATA_IDLE_SECS: u64 = 300;
/// `--max-expectations-per-session`'s range (clap ranges small integers as i64).
const MAX_EXPECTATIONS_PER_SESSION: RangeInclusive<i64> = 1..=64;
/// `--max-sessions`'s range.
const MAX_SESSIONS: RangeInclusive<i64> = 1..=Capacities::MAX_SESSIONS as i64;
/// `--max-sessions-per-source`'s and `--max-sessions-per-subnet`'s range (0: no limit).
const MAX_SESSIONS_PER_SOURCE: RangeInclusive<i64> = 0..=Capacities::MAX_SESSIONS as i64;
/// A host: parallel transfers open a session each (lftp's mirror, FileZilla: up to 10), and a
/// few hosts behind one address (a CGNAT, an office outside) share it; 64 is far beyond one
/// user's and a sixty-fourth of the default table.
const DEFAULT_MAX_SESSIONS_PER_SOURCE: u32 = 64;
/// A /24: a home or office LAN, or one outside network; a sixteenth of the default table, so
/// that no one network outside can fill it, and room for a LAN's users.
const DEFAULT_MAX_SESSIONS_PER_SUBNET: u32 = 256;

/// `ftpnat run`'s command line: its settings and the file holding more of them.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// TOML file with the settings below, each key named like its flag with '_' for '-'
    /// (`ftp_ports` for --ftp-port); flags given here override the file, a repeated flag
    /// replacing the file's list.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: RunOptions,
}

/// Declares the settings struct and generates, from the same field list, its config keys and the
/// merge of the command line over the file, so that a new setting is a new field and nothing else.
macro_rules! run_options {
    (
        $(#[$struct_attr:meta])*
        pub struct $name:ident {
            $( $(#[$field_attr:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$struct_attr])*
        pub struct $name {
            $( $(#[$field_attr])* pub $field: $ty, )*
        }

        impl $name {
            /// The config file's keys, in declaration order.
            pub const KEYS: &[&str] = &[$(stringify!($field)),*];

            /// These settings over `below`'s: each one given here wins, a list replacing the
            /// other's whole.
            fn over(self, below: Self) -> Self {
                Self { $( $field: Layer::over(self.$field, below.$field), )* }
            }
        }
    };
}

run_options! {
    /// `ftpnat run`'s settings. Every field is an `Option` or a `Vec`, so that "not given" stays
    /// visible until the command line and the file are merged; the defaults come after that (the
    /// methods below, and nat.rs for those that depend on the router).
    #[derive(clap::Args, Deserialize, Debug, Default, PartialEq)]
    #[serde(default)]
    pub struct RunOptions {
        /// The router interface facing the FTP servers (the public side) [required here or in
        /// --config].
        #[arg(long, value_name = "IFACE")]
        pub wan: Option<String>,
        /// The router interface facing the FTP clients (repeat for several) [required here or in
        /// --config].
        #[arg(long, value_name = "IFACE")]
        pub lan: Vec<String>,
        /// Directory on a bpffs mount where the datapath (maps and links) is pinned, for the next
        /// agent and for `ftpnat stats` and friends [default: /sys/fs/bpf/ftpnat].
        #[arg(long, value_name = "DIR")]
        pub pin_dir: Option<PathBuf>,
        /// IPv4 source prefix whose FTP clients are masqueraded (repeatable) [default: the IPv4
        /// prefixes of the --lan interfaces].
        #[arg(long, value_name = "CIDR")]
        pub masquerade: Vec<Ipv4Prefix>,
        /// Address the masqueraded IPv4 connections leave with [default: the first IPv4 address
        /// of --wan].
        #[arg(long, value_name = "IPV4", value_parser = nat::parse_public_ip)]
        #[serde(deserialize_with = "public_ip")]
        pub public_ip: Option<Ipv4Addr>,
        /// IPv6 source prefix whose FTP clients are masqueraded behind --public-ip6 (NAT66;
        /// repeatable), e.g. fd00:1::/64 [default: none, IPv6 FTP is followed untranslated].
        #[arg(long, value_name = "CIDR")]
        pub masquerade6: Vec<Ipv6Prefix>,
        /// Address the --masquerade6 connections leave with, and IPv6 clients reach IPv6
        /// --publish servers at [default: the first global IPv6 address of --wan, neither
        /// link-local nor ULA; used only with --masquerade6 or an IPv6 --publish].
        #[arg(long, value_name = "IPV6", value_parser = nat::parse_public_ip6)]
        #[serde(deserialize_with = "public_ip6")]
        pub public_ip6: Option<Ipv6Addr>,
        /// Translate IPv6 LAN clients' FTP to IPv4 servers (NAT64 with the FTP ALG of RFC 6384):
        /// a connection to PREFIX::a.b.c.d goes to a.b.c.d from --nat64-pool. PREFIX is an IPv6
        /// /96 [default when given without a value: 64:ff9b::/96; without the flag: off].
        #[arg(long, value_name = "PREFIX", num_args = 0..=1,
              default_missing_value = DEFAULT_NAT64_PREFIX_TEXT)]
        #[serde(deserialize_with = "nat64")]
        pub nat64: Option<Nat64Prefix>,
        /// The IPv4 address NAT64 sessions and their data connections leave from (with --nat64)
        /// [default: the public IPv4 address, --public-ip or the first IPv4 address of --wan].
        #[arg(long, value_name = "IPV4", value_parser = nat::parse_nat64_pool)]
        #[serde(deserialize_with = "nat64_pool")]
        pub nat64_pool: Option<Ipv4Addr>,
        /// What a NAT64 client's EPSV becomes (with --nat64): translate: sent to the server as
        /// PASV, its 227 returned as a 229, for IPv4 servers without EPSV; pass: passed as it is
        /// [default: translate].
        #[arg(long, value_enum, value_name = "POLICY")]
        pub nat64_epsv: Option<Nat64Epsv>,
        /// FTP control port to watch (repeatable, at most 8) [default: 21].
        #[arg(long = "ftp-port", value_name = "PORT")]
        pub ftp_ports: Vec<u16>,
        /// Public ports ftpnat hands out, LO-HI [default: 4096 ports next to the kernel's
        /// ip_local_port_range, outside it].
        #[arg(long, value_name = "LO-HI")]
        pub port_window: Option<PortWindow>,
        /// Publish an FTP server behind the router: outside clients reach SERVER_IP:PORT [default
        /// 21] at the public address's PUBLIC_PORT [default PORT]; its 227/229 replies name the
        /// public address and a window port, and may announce only its passive ports LO-HI
        /// [default 1024-65535], never PORT (repeatable). An IPv6 server, in brackets when a PORT
        /// follows (2121=[2001:db8::5]:21), is reached by IPv6 clients at --public-ip6.
        #[arg(long, value_name = "[PUBLIC_PORT=]SERVER_IP[:PORT][,passive=LO-HI]")]
        pub publish: Vec<PublishSpec>,
        /// Seconds an announced data connection may take to open before its pinhole closes
        /// [default: 120].
        #[arg(long, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(EXPECT_TIMEOUT_SECS))]
        #[serde(deserialize_with = "expect_timeout_secs")]
        pub expect_timeout: Option<u64>,
        /// How many announced data connections (PORT/EPRT/227/229 not yet used) one control
        /// session may hold open at once; a further announcement is refused and counted, so one
        /// client cannot take the whole port window [default: 4].
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u8).range(MAX_EXPECTATIONS_PER_SESSION))]
        #[serde(deserialize_with = "max_expectations_per_session")]
        pub max_expectations_per_session: Option<u8>,
        /// Seconds a control connection may stay silent before it is removed (its session ends);
        /// never while its session has a live data connection, so a long transfer keeps its
        /// control connection and gets its 226 [default: 900].
        #[arg(long, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(IDLE_SECS))]
        #[serde(deserialize_with = "idle_secs")]
        pub control_idle: Option<u64>,
        /// Seconds a data connection may stay silent before it is removed [default: 300].
        #[arg(long, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(IDLE_SECS))]
        #[serde(deserialize_with = "idle_secs")]
        pub data_idle: Option<u64>,
        /// How many control sessions the datapath holds at once (1-131072); a further control
        /// connection is refused and counted. Sizes the tables: flows and expectations follow
        /// (8 flow entries and 4 expectations per session) [default: 4096].
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(MAX_SESSIONS))]
        #[serde(deserialize_with = "max_sessions")]
        pub max_sessions: Option<u32>,
        /// How many sessions one source address (a LAN client, or an outside client of a
        /// published server) may hold at once; a further control connection is refused and
        /// counted (0: no limit) [default: 64].
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(MAX_SESSIONS_PER_SOURCE))]
        #[serde(deserialize_with = "max_sessions_per_source")]
        pub max_sessions_per_source: Option<u32>,
        /// How many sessions the sources of one /24 (IPv6: one /64) may hold together, as
        /// --max-sessions-per-source (0: no limit) [default: 256].
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(MAX_SESSIONS_PER_SOURCE))]
        #[serde(deserialize_with = "max_sessions_per_source")]
        pub max_sessions_per_subnet: Option<u32>,
        /// Let a PORT/EPRT announce a data port below 1024. Refused by default (RFC 2577: a
        /// client could make the server connect to a privileged service).
        #[arg(long)]
        pub allow_privileged_data_ports: bool,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464 [default:
        /// off].
        #[arg(long, value_name = "ADDR:PORT")]
        pub metrics: Option<SocketAddr>,
        /// How the agent writes its log and the events in it: text or json [default: text].
        #[arg(long, value_enum, value_name = "FORMAT")]
        pub log_format: Option<LogFormat>,
        /// How the programs attach to the interfaces: tcx (TCX links, Linux ≥ 6.6), netlink
        /// (classic TC: a clsact qdisc and cls_bpf filters, for older kernels), or auto: TCX if
        /// the kernel has it, else netlink [default: auto].
        #[arg(long, value_enum, value_name = "MECHANISM")]
        pub tc_attach: Option<TcAttach>,
        /// Detach the programs and remove the pins when stopped by SIGINT/SIGTERM. Without it
        /// the datapath keeps forwarding after the agent exits, for the next `ftpnat run` to
        /// adopt (or `ftpnat detach` to remove).
        #[arg(long)]
        pub detach_on_exit: bool,
    }
}

/// The format of the agent's log lines.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[time LEVEL target] message`.
    #[default]
    Text,
    /// One JSON object per line: time, level, target, and the message or the event.
    Json,
}

/// How the programs attach to the interfaces' TC hooks (see `datapath::Mechanism`).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// TCX if the kernel has it (Linux ≥ 6.6), else classic TC.
    #[default]
    Auto,
    /// TCX links; refused on a kernel without TCX.
    Tcx,
    /// Classic TC: a clsact qdisc and a direct-action cls_bpf filter per hook, over netlink.
    Netlink,
}

/// How a setting from an upper source (the command line) combines with the one below (the file).
trait Layer {
    fn over(self, below: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, below: Self) -> Self {
        self.or(below)
    }
}

impl Layer for bool {
    /// A switch given on either side is on.
    fn over(self, below: Self) -> Self {
        self || below
    }
}

impl<T> Layer for Vec<T> {
    /// A repeated flag states the whole list: it replaces the file's instead of adding to it.
    fn over(self, below: Self) -> Self {
        if self.is_empty() { below } else { self }
    }
}

impl RunOptions {
    /// The WAN interface, which the command line or the file must name.
    pub fn wan(&self) -> anyhow::Result<&str> {
        self.wan.as_deref().ok_or_else(|| {
            anyhow!(
                "no WAN interface: pass --wan IFACE, or set wan = \"IFACE\" in the --config file"
            )
        })
    }

    /// The LAN interfaces, of which the command line or the file must name at least one.
    pub fn lan(&self) -> anyhow::Result<&[String]> {
        if self.lan.is_empty() {
            bail!(
                "no LAN interface: pass --lan IFACE (repeatable), or set lan = [\"IFACE\"] in the \
                 --config file"
            );
        }
        Ok(&self.lan)
    }

    /// The pin directory, by default [`DEFAULT_PIN_DIR`].
    pub fn pin_dir(&self) -> &Path {
        self.pin_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_PIN_DIR))
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_default()
    }

    pub fn tc_attach(&self) -> TcAttach {
        self.tc_attach.unwrap_or_default()
    }

    /// How long an announced data connection may take to open, by default 120 s.
    pub fn expect_timeout(&self) -> Duration {
        Duration::from_secs(self.expect_timeout.unwrap_or(DEFAULT_EXPECT_TIMEOUT_SECS))
    }

    /// How long a control connection may stay silent, by default 900 s (Linux's conntrack keeps
    /// an established TCP connection for 5 days; FTP servers end idle sessions after minutes).
    pub fn control_idle(&self) -> Duration {
        Duration::from_secs(self.control_idle.unwrap_or(DEFAULT_CONTROL_IDLE_SECS))
    }

    /// How long a data connection may stay silent, by default 300 s.
    pub fn data_idle(&self) -> Duration {
        Duration::from_secs(self.data_idle.unwrap_or(DEFAULT_DATA_IDLE_SECS))
    }

    /// How many data connections one session may have announced and not yet opened, by default
    /// the protocol core's limit.
    pub fn max_expectations_per_session(&self) -> u8 {
        self.max_expectations_per_session
            .unwrap_or(ftp_common::Policy::new().max_outstanding_expectations)
    }
}

impl RunOptions {
    /// NAT64 as asked for: `--nat64` with its pool (if given) and EPSV policy [default:
    /// translate]. `--nat64-pool` or `--nat64-epsv` without `--nat64` is refused: they would
    /// silently do nothing.
    pub fn nat64(&self) -> anyhow::Result<Option<Nat64Request>> {
        let Some(prefix) = self.nat64 else {
            if let Some(pool) = self.nat64_pool {
                bail!(
                    "--nat64-pool {pool} (nat64_pool in the config file) is given without \
                     --nat64, which it belongs to; add --nat64 [PREFIX] (nat64 in the config \
                     file) or drop it"
                );
            }
            if let Some(epsv) = self.nat64_epsv {
                bail!(
                    "--nat64-epsv {} (nat64_epsv in the config file) is given without --nat64, \
                     which it belongs to; add --nat64 [PREFIX] (nat64 in the config file) or \
                     drop it",
                    epsv.as_str()
                );
            }
            return Ok(None);
        };
        Ok(Some(Nat64Request {
            prefix,
            pool: self.nat64_pool,
            epsv: self.nat64_epsv.unwrap_or_default(),
        }))
    }

    /// The table sizes `--max-sessions` asks for, by default a home or office router's.
    pub fn capacities(&self) -> Capacities {
        Capacities::for_sessions(self.max_sessions.unwrap_or(Capacities::DEFAULT_SESSIONS))
    }

    /// How many sessions one source and one /24 may hold, by default 64 and 256.
    pub fn source_limits(&self) -> SourceLimits {
        SourceLimits {
            per_host: self
                .max_sessions_per_source
                .unwrap_or(DEFAULT_MAX_SESSIONS_PER_SOURCE),
            per_subnet: self
                .max_sessions_per_subnet
                .unwrap_or(DEFAULT_MAX_SESSIONS_PER_SUBNET),
        }
    }
}

/// The settings `ftpnat run` runs with: its flags over the `--config` file's keys.
pub fn resolve(args: RunArgs) -> anyhow::Result<RunOptions> {
    let file = match &args.config {
        Some(path) => load(path)?,
        None => RunOptions::default(),
    };
    Ok(args.options.over(file))
}

fn load(path: &Path) -> anyhow::Result<RunOptions> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    parse(path, &text)
}

/// Parses a config file's text; `path` is only for the messages.
fn parse(path: &Path, text: &str) -> anyhow::Result<RunOptions> {
    let path = path.display();
    // toml's message says where and what ("TOML parse error at line 3, column 7 ...").
    let table: toml::Table = text.parse().with_context(|| path.to_string())?;
    let mut options = RunOptions::default();
    for (key, value) in table {
        if !RunOptions::KEYS.contains(&key.as_str()) {
            bail!(
                "{path}: unknown key '{key}' (known keys: {})",
                RunOptions::KEYS.join(", ")
            );
        }
        // One key at a time, so that a bad value's message names its key.
        let one = RunOptions::deserialize(toml::Value::Table(toml::Table::from_iter([(
            key.clone(),
            value,
        )])))
        .map_err(|err| anyhow!("{path}: key '{key}': {}", err.message()))?;
        options = one.over(options);
    }
    Ok(options)
}

/// The file's strings for these types go through the flags' parsers.
macro_rules! deserialize_with_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?
                    .parse()
                    .map_err(D::Error::custom)
            }
        }
    )*};
}

deserialize_with_from_str!(Ipv4Prefix, Ipv6Prefix, PortWindow, PublishSpec);

/// `public_ip`, through the flag's parser.
fn public_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Ipv4Addr>, D::Error> {
    nat::parse_public_ip(&String::deserialize(deserializer)?)
        .map(Some)
        .map_err(D::Error::custom)
}

/// `public_ip6`, through the flag's parser.
fn public_ip6<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Ipv6Addr>, D::Error> {
    nat::parse_public_ip6(&String::deserialize(deserializer)?)
        .map(Some)
        .map_err(D::Error::custom)
}

/// `nat64`: a prefix, through the flag's parser, or `true` for the flag without a value
/// (`false`: off).
fn nat64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Nat64Prefix>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum PrefixOrSwitch {
        Switch(bool),
        Prefix(String),
    }
    match PrefixOrSwitch::deserialize(deserializer).map_err(|_| {
        D::Error::custom(
            "expected a /96 IPv6 prefix as a string, e.g. \"64:ff9b::/96\", or true for that one",
        )
    })? {
        PrefixOrSwitch::Switch(false) => Ok(None),
        PrefixOrSwitch::Switch(true) => Ok(Some(nat::DEFAULT_NAT64_PREFIX)),
        PrefixOrSwitch::Prefix(text) => text.parse().map(Some).map_err(D::Error::custom),
    }
}

/// `nat64_pool`, through the flag's parser.
fn nat64_pool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Ipv4Addr>, D::Error> {
    nat::parse_nat64_pool(&String::deserialize(deserializer)?)
        .map(Some)
        .map_err(D::Error::custom)
}

/// `expect_timeout`, held to the flag's range with the flag's wording.
fn expect_timeout_secs<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let secs = u64::deserialize(deserializer)?;
    if !EXPECT_TIMEOUT_SECS.contains(&secs) {
        return Err(D::Error::custom(format!(
            "{secs} is not in {}..={}",
            EXPECT_TIMEOUT_SECS.start(),
            EXPECT_TIMEOUT_SECS.end()
        )));
    }
    Ok(Some(secs))
}

/// `control_idle` and `data_idle`, held to the flags' range with the flags' wording.
fn idle_secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let secs = u64::deserialize(deserializer)?;
    if !IDLE_SECS.contains(&secs) {
        return Err(D::Error::custom(format!(
            "{secs} is not in {}..={}",
            IDLE_SECS.start(),
            IDLE_SECS.end()
        )));
    }
    Ok(Some(secs))
}

/// `max_expectations_per_session`, held to the flag's range with the flag's wording.
fn max_expectations_per_session<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u8>, D::Error> {
    let count = u64::deserialize(deserializer)?;
    if !i64::try_from(count).is_ok_and(|count| MAX_EXPECTATIONS_PER_SESSION.contains(&count)) {
        return Err(D::Error::custom(format!(
            "{count} is not in {}..={}",
            MAX_EXPECTATIONS_PER_SESSION.start(),
            MAX_EXPECTATIONS_PER_SESSION.end()
        )));
    }
    Ok(u8::try_from(count).ok())
}

/// `max_sessions`, held to the flag's range with the flag's wording.
fn max_sessions<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let count = u64::deserialize(deserializer)?;
    if !i64::try_from(count).is_ok_and(|count| MAX_SESSIONS.contains(&count)) {
        return Err(D::Error::custom(format!(
            "{count} is not in {}..={}",
            MAX_SESSIONS.start(),
            MAX_SESSIONS.end()
        )));
    }
    Ok(u32::try_from(count).ok())
}

/// `max_sessions_per_source` and `max_sessions_per_subnet`, held to the flags' range with their
/// wording.
fn max_sessions_per_source<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let count = u64::deserialize(deserializer)?;
    if !i64::try_from(count).is_ok_and(|count| MAX_SESSIONS_PER_SOURCE.contains(&count)) {
        return Err(D::Error::custom(format!(
            "{count} is not in {}..={}",
            MAX_SESSIONS_PER_SOURCE.start(),
            MAX_SESSIONS_PER_SOURCE.end()
        )));
    }
    Ok(u32::try_from(count).ok())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// `ftpnat run`'s argument parsing alone.
    #[derive(clap::Parser, Debug)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    fn flags(args: &[&str]) -> RunArgs {
        Run::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap_or_else(|err| panic!("{err}"))
            .args
    }

    fn parse_text(text: &str) -> anyhow::Result<RunOptions> {
        parse(Path::new("/etc/ftpnat/ftpnat.toml"), text)
    }

    fn parse_err(text: &str) -> String {
        format!("{:#}", parse_text(text).unwrap_err())
    }

    const EVERY_KEY: &str = r#"
        wan = "eth0"
        lan = ["eth1", "eth2"]
        pin_dir = "/sys/fs/bpf/other"
        masquerade = ["192.168.1.0/24", "10.1.0.0/16"]
        public_ip = "198.51.100.7"
        masquerade6 = ["fd00:1::/64", "fd00:2::/64"]
        public_ip6 = "2001:db8:1::fe"
        nat64 = "2001:db8:64::/96"
        nat64_pool = "198.51.100.64"
        nat64_epsv = "pass"
        ftp_ports = [21, 2121]
        port_window = "61000-61999"
        publish = ["21=192.168.1.10", "2121=192.168.1.11:21", "2122=[fd00:1::10]:21"]
        expect_timeout = 30
        max_expectations_per_session = 8
        control_idle = 60
        data_idle = 20
        max_sessions = 300
        max_sessions_per_source = 3
        max_sessions_per_subnet = 0
        allow_privileged_data_ports = true
        tc_attach = "netlink"
    "#;

    #[test]
    fn every_key_parses_into_its_setting() {
        let options = parse_text(EVERY_KEY).unwrap();
        assert_eq!(options.wan().unwrap(), "eth0");
        assert_eq!(options.lan().unwrap(), ["eth1", "eth2"]);
        assert_eq!(options.pin_dir(), Path::new("/sys/fs/bpf/other"));
        assert_eq!(
            options.masquerade,
            [
                "192.168.1.0/24".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap()
            ]
        );
        assert_eq!(options.public_ip, Some(Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!(
            options.masquerade6,
            [
                "fd00:1::/64".parse().unwrap(),
                "fd00:2::/64".parse().unwrap()
            ]
        );
        assert_eq!(options.public_ip6, Some("2001:db8:1::fe".parse().unwrap()));
        assert_eq!(
            options.nat64().unwrap(),
            Some(Nat64Request {
                prefix: "2001:db8:64::/96".parse().unwrap(),
                pool: Some(Ipv4Addr::new(198, 51, 100, 64)),
                epsv: Nat64Epsv::Pass,
            })
        );
        assert_eq!(options.ftp_ports, [21, 2121]);
        assert_eq!(options.port_window, Some("61000-61999".parse().unwrap()));
        assert_eq!(
            options.publish,
            [
                "21=192.168.1.10".parse().unwrap(),
                "2121=192.168.1.11:21".parse().unwrap(),
                "2122=[fd00:1::10]:21".parse().unwrap()
            ]
        );
        assert_eq!(options.expect_timeout(), Duration::from_secs(30));
        assert_eq!(options.max_expectations_per_session(), 8);
        assert_eq!(options.control_idle(), Duration::from_secs(60));
        assert_eq!(options.data_idle(), Duration::from_secs(20));
        assert_eq!(options.capacities(), Capacities::for_sessions(300));
        assert_eq!(
            options.source_limits(),
            SourceLimits {
                per_host: 3,
                per_subnet: 0
            }
        );
        assert!(options.allow_privileged_data_ports);
        assert_eq!(options.tc_attach(), TcAttach::Netlink);
    }

    #[test]
    fn file_and_flags_give_the_same_settings() {
        let from_flags = resolve(flags(&[
            "--wan",
            "eth0",
            "--lan",
            "eth1",
            "--lan",
            "eth2",
            "--pin-dir",
            "/sys/fs/bpf/other",
            "--masquerade",
            "192.168.1.0/24",
            "--masquerade",
            "10.1.0.0/16",
            "--public-ip",
            "198.51.100.7",
            "--masquerade6",
            "fd00:1::/64",
            "--masquerade6",
            "fd00:2::/64",
            "--public-ip6",
            "2001:db8:1::fe",
            "--nat64",
            "2001:db8:64::/96",
            "--nat64-pool",
            "198.51.100.64",
            "--nat64-epsv",
            "pass",
            "--ftp-port",
            "21",
            "--ftp-port",
            "2121",
            "--port-window",
            "61000-61999",
            "--publish",
            "21=192.168.1.10",
            "--publish",
            "2121=192.168.1.11:21",
            "--publish",
            "2122=[fd00:1::10]:21",
            "--expect-timeout",
            "30",
            "--max-expectations-per-session",
            "8",
            "--control-idle",
            "60",
            "--data-idle",
            "20",
            "--max-sessions",
            "300",
            "--max-sessions-per-source",
            "3",
            "--max-sessions-per-subnet",
            "0",
            "--allow-privileged-data-ports",
            "--tc-attach",
            "netlink",
        ]))
        .unwrap();
        assert_eq!(from_flags, parse_text(EVERY_KEY).unwrap());
    }

    #[test]
    fn an_empty_file_leaves_the_defaults() {
        let options = parse_text("# nothing set\n").unwrap();
        assert_eq!(options, RunOptions::default());
        assert_eq!(options.pin_dir(), Path::new(DEFAULT_PIN_DIR));
        assert_eq!(options.expect_timeout(), Duration::from_secs(120));
        assert_eq!(options.max_expectations_per_session(), 4);
        assert_eq!(options.control_idle(), Duration::from_secs(900));
        assert_eq!(options.data_idle(), Duration::from_secs(300));
        assert_eq!(options.capacities(), Capacities::for_sessions(4096));
        assert_eq!(
            options.source_limits(),
            SourceLimits {
                per_host: 64,
                per_subnet: 256
            }
        );
        assert!(!options.allow_privileged_data_ports);
        assert_eq!(options.tc_attach(), TcAttach::Auto);
        assert_eq!(options.nat64().unwrap(), None);
    }

    #[test]
    fn nat64_without_a_value_takes_the_well_known_prefix_and_translates_epsv() {
        let options = resolve(flags(&["--nat64", "--wan", "eth0"])).unwrap();
        assert_eq!(options.wan().unwrap(), "eth0");
        assert_eq!(
            options.nat64().unwrap(),
            Some(Nat64Request {
                prefix: nat::DEFAULT_NAT64_PREFIX,
                pool: None,
                epsv: Nat64Epsv::Translate,
            })
        );
        assert_eq!(
            nat::DEFAULT_NAT64_PREFIX.to_string(),
            DEFAULT_NAT64_PREFIX_TEXT
        );
        // The flag last, with no value.
        let options = resolve(flags(&["--nat64-epsv", "pass", "--nat64"])).unwrap();
        assert_eq!(
            options.nat64().unwrap().map(|n| (n.prefix, n.epsv)),
            Some((nat::DEFAULT_NAT64_PREFIX, Nat64Epsv::Pass))
        );
        // In the file: true for the well-known prefix, false for off.
        let on = parse_text("nat64 = true").unwrap();
        assert_eq!(
            on.nat64().unwrap().map(|n| n.prefix),
            Some(nat::DEFAULT_NAT64_PREFIX)
        );
        assert_eq!(parse_text("nat64 = false").unwrap().nat64().unwrap(), None);
        // A flag's prefix wins over the file's.
        let options = flags(&["--nat64", "2001:db8:64::/96"])
            .options
            .over(parse_text("nat64 = true\nnat64_pool = \"192.0.2.1\"").unwrap());
        assert_eq!(
            options.nat64().unwrap(),
            Some(Nat64Request {
                prefix: "2001:db8:64::/96".parse().unwrap(),
                pool: Some(Ipv4Addr::new(192, 0, 2, 1)),
                epsv: Nat64Epsv::Translate,
            })
        );
    }

    #[test]
    fn nat64_pool_or_epsv_without_nat64_is_refused_naming_both() {
        let err = resolve(flags(&["--nat64-pool", "192.0.2.1"]))
            .unwrap()
            .nat64()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "--nat64-pool 192.0.2.1 (nat64_pool in the config file) is given \
                          without --nat64"
            ) && err.contains("add --nat64 [PREFIX]"),
            "{err}"
        );
        let err = resolve(flags(&["--nat64-epsv", "pass"]))
            .unwrap()
            .nat64()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "--nat64-epsv pass (nat64_epsv in the config file) is given without \
                          --nat64"
            ),
            "{err}"
        );
        let err = parse_text("nat64 = false\nnat64_epsv = \"translate\"")
            .unwrap()
            .nat64()
            .unwrap_err()
            .to_string();
        assert!(err.contains("without --nat64"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_naming_file_key_and_the_known_ones() {
        let err = parse_err("wan = \"eth0\"\nport_windw = \"61000-61999\"\n");
        assert!(
            err.starts_with(
                "/etc/ftpnat/ftpnat.toml: unknown key 'port_windw' (known keys: wan, lan, pin_dir"
            ),
            "{err}"
        );
        assert!(err.contains("port_window"), "{err}");
        // Only the flag is spelled with a dash.
        assert!(parse_err("ftp-ports = [21]").contains("unknown key 'ftp-ports'"));
    }

    #[test]
    fn bad_values_are_refused_naming_file_key_and_the_flags_reason() {
        for (text, key, reason) in [
            ("wan = 3", "wan", "expected a string"),
            ("lan = \"eth1\"", "lan", "expected a sequence"),
            ("pin_dir = []", "pin_dir", "invalid type"),
            (
                "masquerade = [\"10.0.0.0/33\"]",
                "masquerade",
                "'10.0.0.0/33': the prefix length must be 0 to 32",
            ),
            (
                "public_ip = \"1.2.3\"",
                "public_ip",
                "'1.2.3' is not an IPv4 address like 198.51.100.7",
            ),
            (
                "public_ip = \"2001:db8::1\"",
                "public_ip",
                "is an IPv6 address; the public IPv6 address (NAT66, IPv6 --publish) is \
                 --public-ip6 (public_ip6 in the config file)",
            ),
            (
                "masquerade = [\"fd00:1::/64\"]",
                "masquerade",
                "'fd00:1::/64' is an IPv6 prefix; IPv6 sources are masqueraded (NAT66) with \
                 --masquerade6 (masquerade6 in the config file)",
            ),
            (
                "masquerade6 = [\"10.0.0.0/8\"]",
                "masquerade6",
                "'10.0.0.0/8' is an IPv4 prefix; IPv4 sources are masqueraded with --masquerade \
                 (masquerade in the config file)",
            ),
            (
                "masquerade6 = [\"::/0\"]",
                "masquerade6",
                "'::/0' covers IPv4-mapped addresses (::ffff:0.0.0.0/96)",
            ),
            (
                "public_ip6 = \"198.51.100.7\"",
                "public_ip6",
                "'198.51.100.7' is an IPv4 address; the public IPv4 address is --public-ip",
            ),
            ("public_ip6 = 7", "public_ip6", "expected a string"),
            (
                "nat64 = \"64:ff9b::/64\"",
                "nat64",
                "'64:ff9b::/64' is not a /96",
            ),
            (
                "nat64 = 96",
                "nat64",
                "expected a /96 IPv6 prefix as a string, e.g. \"64:ff9b::/96\", or true",
            ),
            (
                "nat64_pool = \"64:ff9b::1\"",
                "nat64_pool",
                "'64:ff9b::1' is not one IPv4 address",
            ),
            (
                "nat64_epsv = \"pasv\"",
                "nat64_epsv",
                "unknown variant `pasv`, expected `translate` or `pass`",
            ),
            ("ftp_ports = [70000]", "ftp_ports", "70000"),
            ("ftp_ports = 21", "ftp_ports", "expected a sequence"),
            (
                "port_window = \"5000-4000\"",
                "port_window",
                "'5000-4000' is empty: write the lower port first",
            ),
            (
                "publish = [\"21=host\"]",
                "publish",
                "'21=host' is not [PUBLIC_PORT=]SERVER_IP[:PORT]",
            ),
            (
                "expect_timeout = 0",
                "expect_timeout",
                "0 is not in 1..=3600",
            ),
            ("expect_timeout = \"7\"", "expect_timeout", "expected u64"),
            (
                "max_expectations_per_session = 0",
                "max_expectations_per_session",
                "0 is not in 1..=64",
            ),
            ("control_idle = 0", "control_idle", "0 is not in 1..=86400"),
            (
                "data_idle = 86401",
                "data_idle",
                "86401 is not in 1..=86400",
            ),
            (
                "max_sessions = 131073",
                "max_sessions",
                "131073 is not in 1..=131072",
            ),
            (
                "max_sessions_per_subnet = 140000",
                "max_sessions_per_subnet",
                "140000 is not in 0..=131072",
            ),
            (
                "allow_privileged_data_ports = 1",
                "allow_privileged_data_ports",
                "expected a boolean",
            ),
            (
                "tc_attach = \"classic\"",
                "tc_attach",
                "unknown variant `classic`, expected one of `auto`, `tcx`, `netlink`",
            ),
        ] {
            let err = parse_err(text);
            let start = format!("/etc/ftpnat/ftpnat.toml: key '{key}': ");
            assert!(
                err.starts_with(&start) && err.contains(reason),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn the_flags_refuse_the_same_values_for_the_same_reasons() {
        for (flag, value, reason) in [
            (
                "--masquerade",
                "10.0.0.0/33",
                "the prefix length must be 0 to 32",
            ),
            ("--masquerade", "fd00:1::/64", "with --masquerade6"),
            ("--masquerade6", "10.0.0.0/8", "with --masquerade "),
            (
                "--masquerade6",
                "fd00::/129",
                "the prefix length must be 0 to 128",
            ),
            ("--public-ip", "2001:db8::1", "is --public-ip6"),
            ("--public-ip6", "198.51.100.7", "is --public-ip "),
            (
                "--public-ip6",
                "fe80::1%eth0",
                "is not an IPv6 address like 2001:db8::1",
            ),
            ("--nat64", "64:ff9b::/64", "is not a /96"),
            ("--nat64", "64:ff9b::1/96", "has host bits set"),
            ("--nat64", "10.0.0.0/8", "is an IPv4 prefix"),
            ("--nat64-pool", "2001:db8::1", "is not one IPv4 address"),
            ("--nat64-pool", "0.0.0.0", "cannot be a connection's source"),
            ("--nat64-epsv", "pasv", "[possible values: translate, pass]"),
            ("--port-window", "5000-4000", "write the lower port first"),
            (
                "--publish",
                "21=host",
                "is not [PUBLIC_PORT=]SERVER_IP[:PORT]",
            ),
            ("--expect-timeout", "0", "0 is not in 1..=3600"),
            (
                "--max-expectations-per-session",
                "65",
                "65 is not in 1..=64",
            ),
            ("--control-idle", "0", "0 is not in 1..=86400"),
            ("--data-idle", "86401", "86401 is not in 1..=86400"),
            ("--max-sessions", "131073", "131073 is not in 1..=131072"),
            (
                "--max-sessions-per-source",
                "131073",
                "131073 is not in 0..=131072",
            ),
            (
                "--tc-attach",
                "classic",
                "[possible values: auto, tcx, netlink]",
            ),
        ] {
            let err = Run::try_parse_from(["run", flag, value]).unwrap_err();
            assert!(err.to_string().contains(reason), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn broken_toml_is_refused_naming_the_file() {
        let err = parse_err("wan = \"eth0\nlan = [\"eth1\"]\n");
        assert!(
            err.starts_with("/etc/ftpnat/ftpnat.toml: TOML parse error at line 1"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file_and_lists_replace_it() {
        let file = parse_text(EVERY_KEY).unwrap();
        let options = flags(&[
            "--wan",
            "wan9",
            "--lan",
            "lan9",
            "--publish",
            "2100=192.168.1.12",
            "--expect-timeout",
            "7",
        ])
        .options
        .over(file);
        assert_eq!(options.wan().unwrap(), "wan9");
        assert_eq!(options.lan().unwrap(), ["lan9"]);
        assert_eq!(options.publish, ["2100=192.168.1.12".parse().unwrap()]);
        assert_eq!(options.expect_timeout(), Duration::from_secs(7));
        // What the command line left out comes from the file.
        assert_eq!(options.pin_dir(), Path::new("/sys/fs/bpf/other"));
        assert_eq!(options.ftp_ports, [21, 2121]);
        assert_eq!(options.port_window, Some("61000-61999".parse().unwrap()));
    }

    #[test]
    fn wan_and_lan_are_required_from_one_source_or_the_other() {
        let nothing = resolve(flags(&[])).unwrap();
        let err = nothing.wan().unwrap_err().to_string();
        assert!(err.contains("--wan") && err.contains("wan = "), "{err}");
        let err = nothing.lan().unwrap_err().to_string();
        assert!(err.contains("--lan") && err.contains("lan = "), "{err}");

        let file_only = flags(&[]).options.over(parse_text(EVERY_KEY).unwrap());
        assert!(file_only.wan().is_ok() && file_only.lan().is_ok());
        let flags_only = resolve(flags(&["--wan", "eth0", "--lan", "eth1"])).unwrap();
        assert!(flags_only.wan().is_ok() && flags_only.lan().is_ok());
    }

    #[test]
    fn the_sample_config_parses_and_sets_every_key() {
        let sample = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../contrib/ftpnat.toml"
        ));
        let options = load(sample).unwrap_or_else(|err| panic!("{err:#}"));
        assert!(options.wan().is_ok() && options.lan().is_ok());
        // A new setting belongs in the sample too: it is the file's documentation.
        let text = fs::read_to_string(sample).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for key in RunOptions::KEYS {
            assert!(
                table.contains_key(*key),
                "contrib/ftpnat.toml does not set '{key}'"
            );
        }
    }
}
