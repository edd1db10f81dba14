//! `ftpnat run`'s NAT settings: flags resolved against the router's interfaces into what the
//! datapath is configured with. Every invalid value is refused naming the flag and the fix.

use std::{
    ffi::CStr,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    str::FromStr,
};

use anyhow::{Context as _, bail};
use ftp_common::maps::{
    MAX_FTP_PORTS, MAX_MASQUERADE_PREFIXES, MAX_PUBLISHED, MAX_WINDOW_PORTS,
    publish::DEFAULT_PASSIVE_PORTS,
};

/// An IPv4 prefix, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Prefix {
    /// Whether `addr` lies in the prefix.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.addr) & mask
    }

    /// The prefix with the host bits cleared.
    pub fn network(self) -> Self {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        Self {
            addr: Ipv4Addr::from(u32::from(self.addr) & mask),
            len: self.len,
        }
    }
}

impl std::fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        if addr.parse::<Ipv6Addr>().is_ok() {
            return Err(format!(
                "'{s}' is an IPv6 prefix; IPv6 sources are masqueraded (NAT66) with --masquerade6 \
                 (masquerade6 in the config file)"
            ));
        }
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IPv4 prefix like 10.0.0.0/24"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|len| *len <= 32)
            .ok_or_else(|| format!("'{s}': the prefix length must be 0 to 32"))?;
        Ok(Self { addr, len }.network())
    }
}

/// The IPv4-mapped addresses, `::ffff:0:0/96`: in the datapath's tables they stand for IPv4
/// addresses, so an IPv6 prefix or address among them would mean an IPv4 one.
const V4_MAPPED: Ipv6Prefix = Ipv6Prefix {
    addr: Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
    len: 96,
};

/// An IPv6 prefix, `addr/len` (NAT66's masqueraded sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Prefix {
    pub addr: Ipv6Addr,
    pub len: u8,
}

impl Ipv6Prefix {
    fn mask(len: u8) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
    }

    /// Whether `addr` lies in the prefix.
    pub fn contains(self, addr: Ipv6Addr) -> bool {
        let mask = Self::mask(self.len);
        u128::from(addr) & mask == u128::from(self.addr) & mask
    }

    /// Whether the two prefixes share an address (one holds the other).
    pub fn overlaps(self, other: Self) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The prefix with the host bits cleared.
    pub fn network(self) -> Self {
        Self {
            addr: Ipv6Addr::from(u128::from(self.addr) & Self::mask(self.len)),
            len: self.len,
        }
    }
}

impl std::fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv6Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "128"));
        if addr.parse::<Ipv4Addr>().is_ok() {
            return Err(format!(
                "'{s}' is an IPv4 prefix; IPv4 sources are masqueraded with --masquerade \
                 (masquerade in the config file)"
            ));
        }
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IPv6 prefix like fd00:1::/64"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|len| *len <= 128)
            .ok_or_else(|| format!("'{s}': the prefix length must be 0 to 128"))?;
        let prefix = Self { addr, len }.network();
        if prefix.overlaps(V4_MAPPED) {
            return Err(format!(
                "'{s}' covers IPv4-mapped addresses ({V4_MAPPED}), which stand for IPv4 sources; \
                 masquerade IPv4 with --masquerade and name IPv6 networks here, e.g. \
                 fd00:1::/64, or 2000::/3 and fc00::/7 for every global and ULA source"
            ));
        }
        Ok(prefix)
    }
}

/// `--public-ip6`'s value: an IPv6 address that can be a connection's source.
pub fn parse_public_ip6(s: &str) -> Result<Ipv6Addr, String> {
    if s.parse::<Ipv4Addr>().is_ok() {
        return Err(format!(
            "'{s}' is an IPv4 address; the public IPv4 address is --public-ip (public_ip in the \
             config file)"
        ));
    }
    let addr: Ipv6Addr = s
        .parse()
        .map_err(|_| format!("'{s}' is not an IPv6 address like 2001:db8::1"))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!(
            "'{s}' cannot be a connection's source; give the WAN's global IPv6 address"
        ));
    }
    if addr.is_unicast_link_local() {
        return Err(format!(
            "'{s}' is link-local, which no outside host can reach; give the WAN's global IPv6 \
             address"
        ));
    }
    if V4_MAPPED.contains(addr) {
        return Err(format!(
            "'{s}' is an IPv4-mapped address; give the IPv4 address to --public-ip (public_ip in \
             the config file)"
        ));
    }
    Ok(addr)
}

/// The NAT64 prefix `--nat64` takes when given no value: the well-known prefix of RFC 6052, the
/// one the datapath limits to global IPv4 addresses.
pub const DEFAULT_NAT64_PREFIX: Nat64Prefix = Nat64Prefix(Ipv6Addr::from_bits(
    u128::from_be_bytes(ftp_common::maps::WELL_KNOWN_NAT64_PREFIX.octets()),
));

/// `--nat64`'s prefix: an IPv6 /96 whose last 32 bits carry an IPv4 address (RFC 6052 section
/// 2.2). Other lengths spread the IPv4 address around the `u` octet; the datapath takes the last
/// word only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat64Prefix(pub Ipv6Addr);

impl Nat64Prefix {
    pub fn as_ipv6_prefix(self) -> Ipv6Prefix {
        Ipv6Prefix {
            addr: self.0,
            len: 96,
        }
    }
}

impl std::fmt::Display for Nat64Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/96", self.0)
    }
}

impl FromStr for Nat64Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, len)) = s.split_once('/') else {
            return Err(format!(
                "'{s}' has no prefix length; give a /96 IPv6 prefix, e.g. 64:ff9b::/96"
            ));
        };
        if addr.parse::<Ipv4Addr>().is_ok() {
            return Err(format!(
                "'{s}' is an IPv4 prefix; --nat64 takes the IPv6 /96 its clients reach IPv4 \
                 servers under, e.g. 64:ff9b::/96; the IPv4 address they leave from is \
                 --nat64-pool"
            ));
        }
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IPv6 prefix like 64:ff9b::/96"))?;
        if len != "96" {
            return Err(format!(
                "'{s}' is not a /96: ftpnat embeds the IPv4 address in a /96 prefix's last 32 \
                 bits only (RFC 6052 section 2.2); give a /96 such as 64:ff9b::/96 or \
                 2001:db8:64::/96"
            ));
        }
        if u128::from(addr) & u128::from(u32::MAX) != 0 {
            return Err(format!(
                "'{s}' has host bits set: the last 32 bits carry the IPv4 address; write {}",
                Self(Ipv6Addr::from(u128::from(addr) & !u128::from(u32::MAX)))
            ));
        }
        let prefix = Self(addr);
        if prefix.as_ipv6_prefix().overlaps(V4_MAPPED) || addr.is_unspecified() {
            return Err(format!(
                "'{s}' is the IPv4-mapped or IPv4-compatible range, which stands for IPv4 \
                 addresses; give a prefix such as 64:ff9b::/96"
            ));
        }
        if addr.is_multicast() || addr.is_unicast_link_local() || addr.is_loopback() {
            return Err(format!(
                "'{s}' is not a unicast prefix hosts route to; give one such as 64:ff9b::/96"
            ));
        }
        Ok(prefix)
    }
}

/// `--nat64-pool`'s value: the IPv4 address NAT64 sessions leave from.
pub fn parse_nat64_pool(s: &str) -> Result<Ipv4Addr, String> {
    if s.parse::<Ipv6Addr>().is_ok() || s.contains('/') {
        return Err(format!(
            "'{s}' is not one IPv4 address; --nat64-pool takes the IPv4 address NAT64 sessions \
             leave from, e.g. 198.51.100.7 (the IPv6 prefix is --nat64's value)"
        ));
    }
    let addr: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("'{s}' is not an IPv4 address like 198.51.100.7"))?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!(
            "'{s}' cannot be a connection's source; give an IPv4 address of the router that \
             servers can answer, e.g. the --wan interface's"
        ));
    }
    Ok(addr)
}

/// What a NAT64 client's `EPSV` becomes (`--nat64-epsv`).
#[derive(clap::ValueEnum, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Nat64Epsv {
    /// Sent to the server as `PASV`, its `227` returned to the client as a `229` (RFC 6384
    /// section 6): works with IPv4 servers that lack EPSV.
    #[default]
    Translate,
    /// Passed as it is: the server must know EPSV.
    Pass,
}

impl Nat64Epsv {
    pub const fn as_str(self) -> &'static str {
        match self {
            Nat64Epsv::Translate => "translate",
            Nat64Epsv::Pass => "pass",
        }
    }
}

/// NAT64 as the flags ask for it, the pool address not yet resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat64Request {
    pub prefix: Nat64Prefix,
    /// `--nat64-pool`; `None`: the public IPv4 address.
    pub pool: Option<Ipv4Addr>,
    pub epsv: Nat64Epsv,
}

/// What NAT64 translates: IPv6 clients' FTP to `prefix::a.b.c.d` goes to `a.b.c.d` from `pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat64 {
    pub prefix: Nat64Prefix,
    pub pool: Ipv4Addr,
    pub epsv: Nat64Epsv,
}

/// NAT64's settings: the pool is `--nat64-pool`, else the public IPv4 address (`public_ip`: the
/// `--public-ip` or the WAN's; an IPv6-only router has none). The prefix may not hold an address
/// of the LANs' networks or the masqueraded IPv6 prefixes (their hosts would be taken for IPv4
/// servers), nor the pool an address of the masqueraded IPv4 prefixes. A pool that is not one of
/// the WAN's addresses (`wan_ipv4`) is warned about: servers' answers reach it only if the
/// upstream routes it to the router.
pub fn nat64(
    request: Option<Nat64Request>,
    public_ip: Option<Ipv4Addr>,
    (wan, wan_ipv4): (&str, &[Ipv4Prefix]),
    lan_networks: &[Ipv6Prefix],
    masquerade: &[Ipv4Prefix],
    masquerade6: &[Ipv6Prefix],
) -> anyhow::Result<Option<Nat64>> {
    let Some(request) = request else {
        return Ok(None);
    };
    let prefix = request.prefix.as_ipv6_prefix();
    if let Some(network) = lan_networks
        .iter()
        .chain(masquerade6)
        .find(|network| network.overlaps(prefix))
    {
        bail!(
            "--nat64 {prefix} overlaps {network}, a LAN network or --masquerade6 prefix: its \
             hosts' addresses would be taken for IPv4 servers; give a prefix of its own, e.g. \
             64:ff9b::/96"
        );
    }
    let Some(pool) = request.pool.or(public_ip) else {
        bail!(
            "--nat64 needs an IPv4 address for its sessions to leave from, and --wan {wan} has \
             none (nor is --public-ip given); pass --nat64-pool IPV4 (nat64_pool in the config \
             file) with an IPv4 address the router owns"
        );
    };
    if let Some(inside) = masquerade.iter().find(|p| p.contains(pool)) {
        bail!(
            "the NAT64 pool address {pool} lies in --masquerade {inside}: connections to it \
             would be taken for the LAN's; pass --nat64-pool with an address outside it"
        );
    }
    if !wan_ipv4.iter().any(|prefix| prefix.addr == pool) {
        log::warn!(
            "the NAT64 pool address {pool} is not an address of --wan {wan}: the servers' answers \
             reach ftpnat only if the upstream router routes {pool} to this one (or add it to \
             {wan})"
        );
    }
    Ok(Some(Nat64 {
        prefix: request.prefix,
        pool,
        epsv: request.epsv,
    }))
}

/// The port window, `LO-HI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortWindow {
    pub lo: u16,
    pub hi: u16,
}

impl PortWindow {
    pub fn ports(self) -> RangeInclusive<u16> {
        self.lo..=self.hi
    }

    /// The window's ports in an order drawn from `seed`: handed out from the low end, they would
    /// let an off-path host guess which port a new session took (issue 12).
    pub fn shuffled(self, seed: u64) -> Vec<u16> {
        let mut ports: Vec<u16> = self.ports().collect();
        fastrand::Rng::with_seed(seed).shuffle(&mut ports);
        ports
    }

    pub fn len(self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }

    fn overlaps(self, other: RangeInclusive<u16>) -> bool {
        self.lo <= *other.end() && *other.start() <= self.hi
    }
}

impl std::fmt::Display for PortWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl FromStr for PortWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a port range like 61000-61999");
        let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo < 1024 {
            return Err(format!(
                "'{s}' starts below 1024: privileged ports are for services, use 1024-65535"
            ));
        }
        if lo > hi {
            return Err(format!("'{s}' is empty: write the lower port first"));
        }
        Ok(Self { lo, hi })
    }
}

/// A `--publish [PUBLIC_PORT=]SERVER_IP[:PORT][,passive=LO-HI]` value: outside clients reach the
/// FTP server at `SERVER_IP:PORT` (default 21) through the public address's `PUBLIC_PORT` (default
/// `PORT`); its 227/229 replies may announce only ports `LO`–`HI` (default 1024–65535), never
/// `PORT`. An IPv6 `SERVER_IP` is written in brackets when a port follows (`[2001:db8::5]:21`)
/// and is reached at the public IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSpec {
    pub public_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub passive_ports: [u16; 2],
}

impl PublishSpec {
    /// The server's address and port, `a.b.c.d:port` or `[v6]:port`.
    pub fn server_endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.server, self.server_port)
    }
}

impl std::fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.public_port, self.server_endpoint())?;
        if self.passive_ports != DEFAULT_PASSIVE_PORTS {
            write!(
                f,
                ",passive={}-{}",
                self.passive_ports[0], self.passive_ports[1]
            )?;
        }
        Ok(())
    }
}

impl FromStr for PublishSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "'{s}' is not [PUBLIC_PORT=]SERVER_IP[:PORT][,passive=LO-HI], e.g. \
                 21=192.168.1.10, 2121=192.168.1.11:21,passive=40000-40100 or \
                 2121=[2001:db8:10::5]:21 (an IPv6 SERVER_IP in brackets when a PORT follows)"
            )
        };
        let port = |text: &str| text.parse::<u16>().ok().filter(|port| *port != 0);
        let (s, passive_ports) = match s.split_once(',') {
            Some((server, option)) => {
                let range = option.strip_prefix("passive=").ok_or_else(bad)?;
                let window: PortWindow = range.parse().map_err(|err| {
                    format!(
                        "'{s}': the passive range {err} (write passive=LO-HI, e.g. 40000-40100)"
                    )
                })?;
                (server, [window.lo, window.hi])
            }
            None => (s, DEFAULT_PASSIVE_PORTS),
        };
        let (public, target) = match s.split_once('=') {
            Some((public, target)) => (Some(port(public).ok_or_else(bad)?), target),
            None => (None, s),
        };
        let (server, server_port): (IpAddr, u16) = if let Some(bracketed) = target.strip_prefix('[')
        {
            // [IPV6] or [IPV6]:PORT.
            let (addr, rest) = bracketed.split_once(']').ok_or_else(bad)?;
            let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
            let server_port = match rest {
                "" => 21,
                _ => rest.strip_prefix(':').and_then(port).ok_or_else(bad)?,
            };
            (IpAddr::V6(addr), server_port)
        } else if let Ok(addr) = target.parse::<Ipv6Addr>() {
            // A bare IPv6 address: a port after it would read as its last group.
            (IpAddr::V6(addr), 21)
        } else {
            let (addr, server_port) = match target.split_once(':') {
                Some((addr, server_port)) => (addr, port(server_port).ok_or_else(bad)?),
                None => (target, 21),
            };
            let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
            (IpAddr::V4(addr), server_port)
        };
        if let IpAddr::V6(addr) = server {
            if V4_MAPPED.contains(addr) {
                return Err(format!(
                    "'{s}': {addr} is an IPv4-mapped address; publish the IPv4 server as \
                     PUBLIC_PORT=IPV4:PORT"
                ));
            }
            if addr.is_unicast_link_local() || !is_host_ipv6(addr) {
                return Err(format!(
                    "'{s}': {addr} is not a server's address on a LAN; publish the server's \
                     global or ULA IPv6 address"
                ));
            }
        }
        Ok(Self {
            public_port: public.unwrap_or(server_port),
            server,
            server_port,
            passive_ports,
        })
    }
}

/// Whether `addr` can be a host's own IPv6 address (not unspecified, loopback or multicast).
fn is_host_ipv6(addr: Ipv6Addr) -> bool {
    !(addr.is_unspecified() || addr.is_loopback() || addr.is_multicast())
}

/// A published server with the LAN interface it is reached by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub spec: PublishSpec,
    pub lan: String,
    pub lan_ifindex: u32,
}

/// A LAN interface and the networks on it, where published servers are looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanNetworks {
    pub name: String,
    pub ifindex: u32,
    pub ipv4: Vec<Ipv4Prefix>,
    /// Link-local networks left out (see [`InterfaceAddresses::ipv6_networks`]).
    pub ipv6: Vec<Ipv6Prefix>,
}

impl LanNetworks {
    fn holds(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => self.ipv4.iter().any(|prefix| prefix.contains(v4)),
            IpAddr::V6(v6) => self.ipv6.iter().any(|prefix| prefix.contains(v6)),
        }
    }

    /// Its networks of `addr`'s family, `lan0 10.0.0.0/24`.
    fn networks_of_family(&self, addr: IpAddr) -> Vec<String> {
        match addr {
            IpAddr::V4(_) => self
                .ipv4
                .iter()
                .map(|p| format!("{} {p}", self.name))
                .collect(),
            IpAddr::V6(_) => self
                .ipv6
                .iter()
                .map(|p| format!("{} {p}", self.name))
                .collect(),
        }
    }
}

/// Checks the `--publish` values against each other, the window and the LAN interfaces' networks,
/// and finds each server's interface.
pub fn resolve_published(
    specs: &[PublishSpec],
    window: PortWindow,
    lans: &[LanNetworks],
) -> anyhow::Result<Vec<Published>> {
    if specs.len() > MAX_PUBLISHED as usize {
        bail!("at most {MAX_PUBLISHED} --publish servers are supported");
    }
    let mut published: Vec<Published> = Vec::new();
    for spec in specs {
        if let Some(other) = published
            .iter()
            .find(|p| p.spec.public_port == spec.public_port)
        {
            let families = if other.spec.server.is_ipv4() == spec.server.is_ipv4() {
                ""
            } else {
                " (a public port leads to one server: it cannot publish an IPv4 server to \
                 IPv4 clients and an IPv6 one to IPv6 clients)"
            };
            bail!(
                "--publish {spec} and --publish {} both use public port {}{families}; give each \
                 server its own public port",
                other.spec,
                spec.public_port
            );
        }
        if let Some(other) = published
            .iter()
            .find(|p| p.spec.server_endpoint() == spec.server_endpoint())
        {
            bail!(
                "--publish {spec} and --publish {} name the same server; publish it once",
                other.spec
            );
        }
        if window.ports().contains(&spec.public_port) {
            bail!(
                "--publish {spec}: public port {} lies in --port-window {window}, whose ports are \
                 handed out for data connections; choose a public port outside the window",
                spec.public_port
            );
        }
        let Some(lan) = lans.iter().find(|lan| lan.holds(spec.server)) else {
            let known: Vec<String> = lans
                .iter()
                .flat_map(|lan| lan.networks_of_family(spec.server))
                .collect();
            let family = if spec.server.is_ipv4() {
                "an IPv4 address"
            } else {
                "a global or ULA IPv6 address"
            };
            bail!(
                "--publish {spec}: {} is on none of the --lan interfaces' networks ({}); a \
                 published server must be directly attached to a --lan interface",
                spec.server,
                if known.is_empty() {
                    format!("none has {family}")
                } else {
                    known.join(", ")
                }
            );
        };
        published.push(Published {
            spec: *spec,
            lan: lan.name.clone(),
            lan_ifindex: lan.ifindex,
        });
    }
    Ok(published)
}

/// The kernel's ephemeral range, which the window must stay out of so that the router's own
/// connections never take a port ftpnat hands out.
pub fn local_port_range() -> anyhow::Result<RangeInclusive<u16>> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) => Ok(lo..=hi),
        _ => bail!("cannot read {path}: {text:?}"),
    }
}

/// Default window: 4096 ports just above the ephemeral range, or just below it if that is full.
pub fn default_window(local: &RangeInclusive<u16>) -> anyhow::Result<PortWindow> {
    const SIZE: u16 = 4096;
    if *local.end() <= u16::MAX - SIZE {
        Ok(PortWindow {
            lo: local.end() + 1,
            hi: local.end() + SIZE,
        })
    } else if *local.start() >= 1024 + SIZE {
        Ok(PortWindow {
            lo: local.start() - SIZE,
            hi: local.start() - 1,
        })
    } else {
        bail!(
            "the kernel's ip_local_port_range ({}-{}) leaves no room for a default port window; \
             pass --port-window LO-HI",
            local.start(),
            local.end()
        )
    }
}

/// Checks a window chosen by the operator.
pub fn validate_window(window: PortWindow, local: &RangeInclusive<u16>) -> anyhow::Result<()> {
    if window.len() > MAX_WINDOW_PORTS {
        bail!("--port-window {window} has more than {MAX_WINDOW_PORTS} ports");
    }
    if window.overlaps(local.clone()) {
        bail!(
            "--port-window {window} overlaps the kernel's ip_local_port_range ({}-{}), so the \
             router's own connections could take its ports; choose a window outside it (for \
             example {}) or shrink net.ipv4.ip_local_port_range",
            local.start(),
            local.end(),
            default_window(local).map_or_else(|_| "another range".to_owned(), |w| w.to_string())
        );
    }
    Ok(())
}

/// Validates the FTP control ports.
pub fn validate_ftp_ports(ports: &[u16]) -> anyhow::Result<()> {
    if ports.len() > MAX_FTP_PORTS {
        bail!(
            "--ftp-port is given {} times; at most {MAX_FTP_PORTS} ports",
            ports.len()
        );
    }
    if ports.contains(&0) {
        bail!("--ftp-port 0 is not a port; use 1-65535");
    }
    Ok(())
}

/// An interface's addresses with their prefix lengths, from getifaddrs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InterfaceAddresses {
    pub ipv4: Vec<Ipv4Prefix>,
    pub ipv6: Vec<Ipv6Prefix>,
}

impl InterfaceAddresses {
    /// The interface's first global IPv6 address: neither link-local nor ULA (nor loopback or
    /// mapped), the kind outside hosts can reach.
    pub fn global_ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
            .iter()
            .map(|prefix| prefix.addr)
            .find(|addr| is_global_ipv6(*addr))
    }

    /// The networks its IPv6 addresses are on, link-local ones left out: every interface has
    /// fe80::/64, which names no host by itself.
    pub fn ipv6_networks(&self) -> Vec<Ipv6Prefix> {
        self.ipv6
            .iter()
            .filter(|prefix| !prefix.addr.is_unicast_link_local())
            .map(|prefix| prefix.network())
            .collect()
    }
}

/// Whether `addr` is an IPv6 address outside hosts can reach the router at.
fn is_global_ipv6(addr: Ipv6Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_unicast_link_local()
        || addr.is_unique_local()
        || V4_MAPPED.contains(addr))
}

/// The addresses of interface `iface`.
pub fn interface_addresses(iface: &str) -> anyhow::Result<InterfaceAddresses> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = InterfaceAddresses::default();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_netmask.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null, NUL-terminated name owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least sa_family.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: AF_INET entries carry sockaddr_in address and netmask.
            let (addr, mask) = unsafe {
                (
                    (*entry.ifa_addr.cast::<libc::sockaddr_in>())
                        .sin_addr
                        .s_addr,
                    (*entry.ifa_netmask.cast::<libc::sockaddr_in>())
                        .sin_addr
                        .s_addr,
                )
            };
            found.ipv4.push(Ipv4Prefix {
                addr: Ipv4Addr::from(u32::from_be(addr)),
                len: u32::from_be(mask).count_ones() as u8,
            });
        } else if family == libc::AF_INET6 {
            // SAFETY: AF_INET6 entries carry sockaddr_in6 address and netmask.
            let (addr, mask) = unsafe {
                (
                    (*entry.ifa_addr.cast::<libc::sockaddr_in6>())
                        .sin6_addr
                        .s6_addr,
                    (*entry.ifa_netmask.cast::<libc::sockaddr_in6>())
                        .sin6_addr
                        .s6_addr,
                )
            };
            found.ipv6.push(Ipv6Prefix {
                addr: Ipv6Addr::from(addr),
                len: u128::from_be_bytes(mask).count_ones() as u8,
            });
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// IPv4 addresses with their prefix lengths, per interface.
pub fn ipv4_addresses(iface: &str) -> anyhow::Result<Vec<Ipv4Prefix>> {
    Ok(interface_addresses(iface)?.ipv4)
}

/// The public address: `--public-ip`, else the first IPv4 address of the WAN interface.
/// The public IPv4 address: `--public-ip`, else the WAN's first IPv4 address; `None` if there is
/// neither and nothing over IPv4 needs one (`needed`: a masqueraded prefix or an IPv4 published
/// server), an error if something does.
pub fn public_ip(
    flag: Option<Ipv4Addr>,
    wan: &str,
    needed: bool,
) -> anyhow::Result<Option<Ipv4Addr>> {
    if flag.is_some() {
        return Ok(flag);
    }
    let found = ipv4_addresses(wan)?.first().map(|prefix| prefix.addr);
    if found.is_none() && needed {
        bail!("--wan {wan} has no IPv4 address to masquerade behind; add one or pass --public-ip");
    }
    Ok(found)
}

/// The masqueraded prefixes: `--masquerade`, else the IPv4 prefixes of the LAN interfaces — none
/// on a LAN with IPv6 only (`lan_has_ipv6`: its IPv6 FTP is followed untranslated, or NAT66'd);
/// an error if the LANs have neither.
pub fn masquerade_prefixes(
    flags: &[Ipv4Prefix],
    lans: &[String],
    lan_has_ipv6: bool,
) -> anyhow::Result<Vec<Ipv4Prefix>> {
    if !flags.is_empty() {
        return Ok(flags.to_vec());
    }
    let mut prefixes = Vec::new();
    for lan in lans {
        prefixes.extend(ipv4_addresses(lan)?.into_iter().map(Ipv4Prefix::network));
    }
    if prefixes.is_empty() && !lan_has_ipv6 {
        bail!(
            "the --lan interfaces ({}) have no IPv4 prefixes to masquerade nor IPv6 networks to \
             follow; pass --masquerade CIDR, or give them their addresses first",
            lans.join(", ")
        );
    }
    prefixes.dedup();
    Ok(prefixes)
}

/// `--public-ip`'s value: an IPv4 address (an IPv6 one belongs to `--public-ip6`).
pub fn parse_public_ip(s: &str) -> Result<Ipv4Addr, String> {
    if s.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "'{s}' is an IPv6 address; the public IPv6 address (NAT66, IPv6 --publish) is \
             --public-ip6 (public_ip6 in the config file)"
        ));
    }
    s.parse()
        .map_err(|_| format!("'{s}' is not an IPv4 address like 198.51.100.7"))
}

/// `--masquerade6`'s prefixes, each once, checked to fit the datapath's table beside the
/// `ipv4_count` IPv4 ones.
pub fn masquerade6_prefixes(
    flags: &[Ipv6Prefix],
    ipv4_count: usize,
) -> anyhow::Result<Vec<Ipv6Prefix>> {
    let mut prefixes: Vec<Ipv6Prefix> = Vec::new();
    for prefix in flags {
        if !prefixes.contains(prefix) {
            prefixes.push(*prefix);
        }
    }
    if prefixes.len() + ipv4_count > MAX_MASQUERADE_PREFIXES as usize {
        bail!(
            "{} --masquerade and {} --masquerade6 prefixes are more than the {} the datapath \
             holds; merge neighbouring prefixes into shorter ones",
            ipv4_count,
            prefixes.len(),
            MAX_MASQUERADE_PREFIXES
        );
    }
    Ok(prefixes)
}

/// The public IPv6 address (NAT66 and IPv6 `--publish`): `None` when nothing needs one, so IPv6
/// stays untranslated; else `--public-ip6` (`flag`), or the WAN's first global IPv6 address
/// (`wan_addresses`, neither link-local nor ULA). It may not lie in a masqueraded prefix: the
/// datapath would take connections to it for LAN sources.
pub fn public_ip6(
    flag: Option<Ipv6Addr>,
    wan: &str,
    wan_addresses: &InterfaceAddresses,
    masquerade6: &[Ipv6Prefix],
    published: &[PublishSpec],
) -> anyhow::Result<Option<Ipv6Addr>> {
    let first_v6_publish = published.iter().find(|spec| spec.server.is_ipv6());
    if masquerade6.is_empty() && first_v6_publish.is_none() {
        if let Some(addr) = flag {
            log::warn!(
                "--public-ip6 {addr} is not used: without --masquerade6 or an IPv6 --publish, \
                 IPv6 FTP is followed untranslated"
            );
        }
        return Ok(None);
    }
    let addr = match flag.or_else(|| wan_addresses.global_ipv6()) {
        Some(addr) => addr,
        None => {
            let why = match first_v6_publish {
                Some(spec) if masquerade6.is_empty() => format!(
                    "--publish {spec} publishes an IPv6 server, which outside clients reach at \
                     the public IPv6 address"
                ),
                _ => "--masquerade6 needs a public IPv6 address to masquerade behind".to_owned(),
            };
            bail!(
                "{why}, and --wan {wan} has no global IPv6 address (link-local and ULA ones do \
                 not count); add one to {wan} or pass --public-ip6 IPV6"
            );
        }
    };
    if let Some(prefix) = masquerade6.iter().find(|prefix| prefix.contains(addr)) {
        bail!(
            "the public IPv6 address {addr} lies in --masquerade6 {prefix}: connections to it \
             would be taken for the LAN's; masquerade only the LAN's prefixes, or pass \
             --public-ip6 with an address outside them"
        );
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shuffled_window_holds_every_port_once_in_a_seeded_order() {
        let window = PortWindow {
            lo: 61000,
            hi: 61999,
        };
        let first = window.shuffled(1);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, window.ports().collect::<Vec<_>>());
        assert_ne!(first, sorted, "not in order");
        assert_ne!(first, window.shuffled(2));
        assert_eq!(first, window.shuffled(1));
    }

    #[test]
    fn prefixes_parse_and_normalise() {
        let p: Ipv4Prefix = "10.1.2.3/24".parse().unwrap();
        assert_eq!(p.to_string(), "10.1.2.0/24");
        assert_eq!(
            "192.0.2.7".parse::<Ipv4Prefix>().unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!("0.0.0.0/0".parse::<Ipv4Prefix>().unwrap().len, 0);
        assert!(
            "10.0.0.0/33"
                .parse::<Ipv4Prefix>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!("ten/8".parse::<Ipv4Prefix>().is_err());
    }

    #[test]
    fn windows_parse_and_refuse_nonsense() {
        assert_eq!(
            "61000-61999".parse::<PortWindow>().unwrap(),
            PortWindow {
                lo: 61000,
                hi: 61999
            }
        );
        assert!(
            "900-2000"
                .parse::<PortWindow>()
                .unwrap_err()
                .contains("below 1024")
        );
        assert!(
            "5000-4000"
                .parse::<PortWindow>()
                .unwrap_err()
                .contains("lower port first")
        );
        assert!("5000".parse::<PortWindow>().is_err());
        assert!("5000-70000".parse::<PortWindow>().is_err());
    }

    #[test]
    fn default_window_avoids_the_ephemeral_range() {
        let local = 32768..=60999;
        let window = default_window(&local).unwrap();
        assert_eq!(
            window,
            PortWindow {
                lo: 61000,
                hi: 65095
            }
        );
        assert!(validate_window(window, &local).is_ok());
        let full_top = 20000..=65535;
        let below = default_window(&full_top).unwrap();
        assert_eq!(
            below,
            PortWindow {
                lo: 15904,
                hi: 19999
            }
        );
        assert!(default_window(&(1024..=65535)).is_err());
    }

    #[test]
    fn overlapping_window_is_refused_with_a_suggestion() {
        let err = validate_window(
            PortWindow {
                lo: 50000,
                hi: 62000,
            },
            &(32768..=60999),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("overlaps") && err.contains("61000-"), "{err}");
    }

    #[test]
    fn ftp_ports_are_checked() {
        assert!(validate_ftp_ports(&[21, 2121]).is_ok());
        assert!(validate_ftp_ports(&[0]).is_err());
        assert!(validate_ftp_ports(&[1; 9]).is_err());
    }

    #[test]
    fn publish_values_parse_with_their_defaults() {
        let spec: PublishSpec = "21=192.168.1.10".parse().unwrap();
        assert_eq!(
            (spec.public_port, spec.server, spec.server_port),
            (21, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)), 21)
        );
        let spec: PublishSpec = "2121=192.168.1.11:21".parse().unwrap();
        assert_eq!((spec.public_port, spec.server_port), (2121, 21));
        let spec: PublishSpec = "192.168.1.12:2100".parse().unwrap();
        assert_eq!((spec.public_port, spec.server_port), (2100, 2100));
        let spec: PublishSpec = "192.168.1.12".parse().unwrap();
        assert_eq!((spec.public_port, spec.server_port), (21, 21));
        assert_eq!(spec.passive_ports, [1024, 65535]);
        assert_eq!(spec.to_string(), "21=192.168.1.12:21");
        let spec: PublishSpec = "2121=192.168.1.11:21,passive=40000-40100".parse().unwrap();
        assert_eq!(
            (spec.public_port, spec.server_port, spec.passive_ports),
            (2121, 21, [40000, 40100])
        );
        assert_eq!(spec.to_string(), "2121=192.168.1.11:21,passive=40000-40100");
        let err = "21=10.0.0.1,passive=22-22"
            .parse::<PublishSpec>()
            .unwrap_err();
        assert!(err.contains("starts below 1024"), "{err}");
        let err = "21=10.0.0.1,passive=5000-4000"
            .parse::<PublishSpec>()
            .unwrap_err();
        assert!(err.contains("write the lower port first"), "{err}");
        for bad in [
            "",
            "21=",
            "=10.0.0.1",
            "0=10.0.0.1",
            "21=10.0.0.1:0",
            "21=host",
            "70000=10.0.0.1",
            "21=10.0.0.1:x",
            "21=10.0.0.1,pasv=4000-5000",
        ] {
            let err = bad.parse::<PublishSpec>().unwrap_err();
            assert!(
                err.contains("[PUBLIC_PORT=]SERVER_IP[:PORT][,passive=LO-HI]"),
                "{bad}: {err}"
            );
        }
    }

    fn lan(name: &str, ifindex: u32, ipv4: &[&str], ipv6: &[&str]) -> LanNetworks {
        LanNetworks {
            name: name.to_owned(),
            ifindex,
            ipv4: ipv4
                .iter()
                .map(|p| p.parse::<Ipv4Prefix>().unwrap().network())
                .collect(),
            ipv6: ipv6.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn published_servers_are_checked_and_find_their_interface() {
        let window = PortWindow {
            lo: 40000,
            hi: 40099,
        };
        let lans = vec![
            lan("lan0", 3, &["10.0.0.1/24"], &[]),
            lan("lan1", 4, &["192.168.7.1/24"], &[]),
        ];
        let spec = |s: &str| s.parse::<PublishSpec>().unwrap();
        let published = resolve_published(
            &[spec("21=10.0.0.2"), spec("2121=192.168.7.9:21")],
            window,
            &lans,
        )
        .unwrap();
        assert_eq!(
            (published[0].lan.as_str(), published[0].lan_ifindex),
            ("lan0", 3)
        );
        assert_eq!(
            (published[1].lan.as_str(), published[1].lan_ifindex),
            ("lan1", 4)
        );

        let err = resolve_published(&[spec("21=10.0.0.2"), spec("21=10.0.0.3")], window, &lans)
            .unwrap_err();
        assert!(err.to_string().contains("both use public port 21"), "{err}");
        let err = resolve_published(
            &[spec("21=10.0.0.2"), spec("2121=10.0.0.2:21")],
            window,
            &lans,
        )
        .unwrap_err();
        assert!(err.to_string().contains("name the same server"), "{err}");
        let err = resolve_published(&[spec("40050=10.0.0.2")], window, &lans).unwrap_err();
        assert!(
            err.to_string()
                .contains("lies in --port-window 40000-40099"),
            "{err}"
        );
        let err = resolve_published(&[spec("21=172.16.0.5")], window, &lans).unwrap_err();
        assert!(
            err.to_string().contains(
                "none of the --lan interfaces' networks (lan0 10.0.0.0/24, lan1 192.168.7.0/24)"
            ),
            "{err}"
        );
    }

    #[test]
    fn ipv6_prefixes_parse_normalise_and_refuse_the_other_family() {
        let p: Ipv6Prefix = "fd00:1::7/64".parse().unwrap();
        assert_eq!(p.to_string(), "fd00:1::/64");
        assert!(p.contains("fd00:1::99".parse().unwrap()));
        assert!(!p.contains("fd00:2::1".parse().unwrap()));
        assert_eq!(
            "2001:db8::5".parse::<Ipv6Prefix>().unwrap().to_string(),
            "2001:db8::5/128"
        );
        let err = "fd00::/129".parse::<Ipv6Prefix>().unwrap_err();
        assert!(err.contains("0 to 128"), "{err}");
        let err = "fd00:zz::/64".parse::<Ipv6Prefix>().unwrap_err();
        assert!(err.contains("not an IPv6 prefix like fd00:1::/64"), "{err}");
        let err = "10.0.0.0/8".parse::<Ipv6Prefix>().unwrap_err();
        assert!(
            err.contains("is an IPv4 prefix") && err.contains("--masquerade "),
            "{err}"
        );
        // Prefixes reaching into ::ffff:0:0/96 would masquerade IPv4 sources in the trie.
        for mapped in ["::/0", "::/1", "::ffff:0:0/96", "::ffff:10.0.0.0/104"] {
            let err = mapped.parse::<Ipv6Prefix>().unwrap_err();
            assert!(
                err.contains("IPv4-mapped") && err.contains("2000::/3 and fc00::/7"),
                "{mapped}: {err}"
            );
        }
        let err = "fd00:1::/64".parse::<Ipv4Prefix>().unwrap_err();
        assert!(
            err.contains("is an IPv6 prefix") && err.contains("--masquerade6"),
            "{err}"
        );
    }

    #[test]
    fn public_addresses_are_of_their_flags_family() {
        assert_eq!(
            parse_public_ip6("2001:db8::1"),
            Ok("2001:db8::1".parse().unwrap())
        );
        let err = parse_public_ip6("198.51.100.7").unwrap_err();
        assert!(
            err.contains("is an IPv4 address") && err.contains("--public-ip "),
            "{err}"
        );
        let err = parse_public_ip6("::ffff:198.51.100.7").unwrap_err();
        assert!(
            err.contains("IPv4-mapped") && err.contains("--public-ip "),
            "{err}"
        );
        for unusable in ["::", "::1", "ff02::1"] {
            let err = parse_public_ip6(unusable).unwrap_err();
            assert!(err.contains("cannot be a connection's source"), "{err}");
        }
        let err = parse_public_ip6("fe80::1").unwrap_err();
        assert!(
            err.contains("link-local") && err.contains("WAN's global IPv6 address"),
            "{err}"
        );
        assert!(
            parse_public_ip6("2001:db8::g")
                .unwrap_err()
                .contains("not an IPv6 address")
        );
        assert_eq!(
            parse_public_ip("198.51.100.7"),
            Ok(Ipv4Addr::new(198, 51, 100, 7))
        );
        let err = parse_public_ip("2001:db8::1").unwrap_err();
        assert!(
            err.contains("is an IPv6 address") && err.contains("--public-ip6"),
            "{err}"
        );
    }

    #[test]
    fn ipv6_publish_values_parse_bracketed_or_bare() {
        let v6 = |text: &str| IpAddr::V6(text.parse().unwrap());
        let spec: PublishSpec = "2121=[2001:db8:10::5]:21,passive=50000-50100"
            .parse()
            .unwrap();
        assert_eq!(
            (
                spec.public_port,
                spec.server,
                spec.server_port,
                spec.passive_ports
            ),
            (2121, v6("2001:db8:10::5"), 21, [50000, 50100])
        );
        assert_eq!(
            spec.to_string(),
            "2121=[2001:db8:10::5]:21,passive=50000-50100"
        );
        let spec: PublishSpec = "[fd00:10::5]:2100".parse().unwrap();
        assert_eq!(
            (spec.public_port, spec.server, spec.server_port),
            (2100, v6("fd00:10::5"), 2100)
        );
        let spec: PublishSpec = "2121=[fd00:10::5]".parse().unwrap();
        assert_eq!((spec.public_port, spec.server_port), (2121, 21));
        // Bare, the whole value is the address: "::5:21" is a group, not a port.
        let spec: PublishSpec = "2001:db8::5:21".parse().unwrap();
        assert_eq!(
            (spec.public_port, spec.server, spec.server_port),
            (21, v6("2001:db8::5:21"), 21)
        );
        assert_eq!(spec.to_string(), "21=[2001:db8::5:21]:21");
        for bad in [
            "21=[2001:db8::5",
            "21=[2001:db8::5]21",
            "21=[2001:db8::5]:",
            "21=[2001:db8::5]:0",
            "21=[10.0.0.1]:21",
            "21=[]:21",
        ] {
            let err = bad.parse::<PublishSpec>().unwrap_err();
            assert!(
                err.contains("[PUBLIC_PORT=]SERVER_IP[:PORT][,passive=LO-HI]")
                    && err.contains("in brackets when a PORT follows"),
                "{bad}: {err}"
            );
        }
        let err = "21=[fe80::5]:21".parse::<PublishSpec>().unwrap_err();
        assert!(err.contains("global or ULA IPv6 address"), "{err}");
        let err = "21=[ff02::1]:21".parse::<PublishSpec>().unwrap_err();
        assert!(err.contains("global or ULA IPv6 address"), "{err}");
        let err = "21=[::ffff:10.0.0.5]:21"
            .parse::<PublishSpec>()
            .unwrap_err();
        assert!(
            err.contains("IPv4-mapped") && err.contains("PUBLIC_PORT=IPV4:PORT"),
            "{err}"
        );
    }

    #[test]
    fn ipv6_published_servers_find_their_interface_and_keep_their_own_port() {
        let window = PortWindow {
            lo: 40000,
            hi: 40099,
        };
        let lans = vec![
            lan("lan0", 3, &["10.0.0.1/24"], &["fd00:10::1/64"]),
            lan("lan1", 4, &["192.168.7.1/24"], &["2001:db8:7::1/64"]),
        ];
        let spec = |s: &str| s.parse::<PublishSpec>().unwrap();
        let published = resolve_published(
            &[
                spec("21=10.0.0.2"),
                spec("2121=[2001:db8:7::9]:21"),
                spec("2122=[fd00:10::2]:21"),
            ],
            window,
            &lans,
        )
        .unwrap();
        let found: Vec<(&str, u32)> = published
            .iter()
            .map(|p| (p.lan.as_str(), p.lan_ifindex))
            .collect();
        assert_eq!(found, [("lan0", 3), ("lan1", 4), ("lan0", 3)]);

        // One PUBLISH entry per public port: not an IPv4 server and an IPv6 one on it.
        let err = resolve_published(
            &[spec("21=10.0.0.2"), spec("21=[fd00:10::2]:21")],
            window,
            &lans,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("both use public port 21")
                && err.contains("cannot publish an IPv4 server to IPv4 clients and an IPv6 one")
                && err.contains("give each server its own public port"),
            "{err}"
        );
        let err = resolve_published(&[spec("21=[2001:db8:99::5]:21")], window, &lans)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "none of the --lan interfaces' networks (lan0 fd00:10::/64, lan1 \
                 2001:db8:7::/64)"
            ),
            "{err}"
        );
        let v4_only = vec![lan("lan0", 3, &["10.0.0.1/24"], &[])];
        let err = resolve_published(&[spec("21=[fd00:10::2]:21")], window, &v4_only)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(none has a global or ULA IPv6 address)"),
            "{err}"
        );
    }

    #[test]
    fn link_local_networks_do_not_place_a_server() {
        let addresses = InterfaceAddresses {
            ipv4: vec![],
            ipv6: vec![
                "fe80::1/64".parse::<Ipv6Prefix>().unwrap(),
                Ipv6Prefix {
                    addr: "fd00:10::1".parse().unwrap(),
                    len: 64,
                },
            ],
        };
        assert_eq!(
            addresses.ipv6_networks(),
            ["fd00:10::/64".parse::<Ipv6Prefix>().unwrap()]
        );
    }

    #[test]
    fn the_public_ipv6_address_is_wanted_only_for_nat66_or_an_ipv6_server() {
        let prefix = |text: &str| text.parse::<Ipv6Prefix>().unwrap();
        let addr = |text: &str| text.parse::<Ipv6Addr>().unwrap();
        let with_host = |text: &str| Ipv6Prefix {
            addr: addr(text),
            len: 64,
        };
        let wan = InterfaceAddresses {
            ipv4: vec!["198.51.100.7/24".parse().unwrap()],
            ipv6: vec![
                with_host("fe80::1"),
                with_host("fd00:99::1"),
                with_host("2001:db8:1::fe"),
                with_host("2001:db8:2::fe"),
            ],
        };
        let lan6 = [prefix("fd00:1::/64")];
        let v4_publish = ["21=10.0.0.2".parse::<PublishSpec>().unwrap()];
        let v6_publish = ["2121=[fd00:1::5]:21".parse::<PublishSpec>().unwrap()];

        // Nothing IPv6 is translated: no public IPv6 address, even with the flag.
        assert_eq!(
            public_ip6(None, "wan0", &wan, &[], &v4_publish).unwrap(),
            None
        );
        assert_eq!(
            public_ip6(Some(addr("2001:db8::1")), "wan0", &wan, &[], &[]).unwrap(),
            None
        );
        // The WAN's first global address, past the link-local and ULA ones; or the flag's.
        assert_eq!(
            public_ip6(None, "wan0", &wan, &lan6, &[]).unwrap(),
            Some(addr("2001:db8:1::fe"))
        );
        assert_eq!(
            public_ip6(None, "wan0", &wan, &[], &v6_publish).unwrap(),
            Some(addr("2001:db8:1::fe"))
        );
        assert_eq!(
            public_ip6(Some(addr("2001:db8::1")), "wan0", &wan, &lan6, &[]).unwrap(),
            Some(addr("2001:db8::1"))
        );

        let no_global = InterfaceAddresses {
            ipv4: vec![],
            ipv6: vec![with_host("fe80::1"), with_host("fd00:99::1")],
        };
        let err = public_ip6(None, "wan0", &no_global, &lan6, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--masquerade6 needs a public IPv6 address")
                && err.contains("--wan wan0 has no global IPv6 address")
                && err.contains("pass --public-ip6 IPV6"),
            "{err}"
        );
        let err = public_ip6(None, "wan0", &no_global, &[], &v6_publish)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--publish 2121=[fd00:1::5]:21 publishes an IPv6 server")
                && err.contains("pass --public-ip6 IPV6"),
            "{err}"
        );

        let err = public_ip6(
            Some(addr("2001:db8:1::fe")),
            "wan0",
            &wan,
            &[prefix("2000::/3")],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("2001:db8:1::fe lies in --masquerade6 2000::/3")
                && err.contains("masquerade only the LAN's prefixes"),
            "{err}"
        );
    }

    #[test]
    fn masquerade6_prefixes_are_kept_once_and_must_fit_the_table() {
        let prefix = |text: &str| text.parse::<Ipv6Prefix>().unwrap();
        assert_eq!(
            masquerade6_prefixes(
                &[
                    prefix("fd00:1::/64"),
                    prefix("fd00:2::/64"),
                    prefix("fd00:1::/64")
                ],
                1
            )
            .unwrap(),
            [prefix("fd00:1::/64"), prefix("fd00:2::/64")]
        );
        let many: Vec<Ipv6Prefix> = (0..200u16)
            .map(|n| Ipv6Prefix {
                addr: Ipv6Addr::new(0xfd00, n, 0, 0, 0, 0, 0, 0),
                len: 32,
            })
            .collect();
        let err = masquerade6_prefixes(&many, 57).unwrap_err().to_string();
        assert!(
            err.contains("57 --masquerade and 200 --masquerade6 prefixes are more than the 256"),
            "{err}"
        );
    }

    #[test]
    fn nat64_prefixes_are_96s_with_no_host_bits() {
        let prefix: Nat64Prefix = "64:ff9b::/96".parse().unwrap();
        assert_eq!(prefix, DEFAULT_NAT64_PREFIX);
        assert_eq!(prefix.to_string(), "64:ff9b::/96");
        let prefix: Nat64Prefix = "2001:db8:64::/96".parse().unwrap();
        assert_eq!(prefix.to_string(), "2001:db8:64::/96");
        for (bad, reason) in [
            ("64:ff9b::", "has no prefix length; give a /96"),
            (
                "64:ff9b::/64",
                "is not a /96: ftpnat embeds the IPv4 address",
            ),
            ("64:ff9b::/32", "give a /96 such as 64:ff9b::/96"),
            ("64:ff9b::/x", "is not a /96"),
            (
                "64:ff9b::c000:20a/96",
                "has host bits set: the last 32 bits carry the IPv4 address; write \
                 64:ff9b::/96",
            ),
            (
                "10.0.0.0/8",
                "is an IPv4 prefix; --nat64 takes the IPv6 /96",
            ),
            ("64:zz::/96", "is not an IPv6 prefix like 64:ff9b::/96"),
            ("::ffff:0:0/96", "IPv4-mapped or IPv4-compatible range"),
            ("::/96", "IPv4-mapped or IPv4-compatible range"),
            ("ff02::/96", "is not a unicast prefix"),
            ("fe80::/96", "is not a unicast prefix"),
        ] {
            let err = bad.parse::<Nat64Prefix>().unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
            assert!(err.starts_with(&format!("'{bad}'")), "{bad}: {err}");
        }
    }

    #[test]
    fn nat64_pool_addresses_are_ipv4_sources() {
        assert_eq!(
            parse_nat64_pool("198.51.100.64"),
            Ok(Ipv4Addr::new(198, 51, 100, 64))
        );
        for (bad, reason) in [
            ("2001:db8::1", "is not one IPv4 address; --nat64-pool takes"),
            ("198.51.100.0/24", "is not one IPv4 address"),
            ("198.51.100", "is not an IPv4 address like 198.51.100.7"),
            ("0.0.0.0", "cannot be a connection's source"),
            ("255.255.255.255", "cannot be a connection's source"),
            ("224.0.0.1", "cannot be a connection's source"),
            ("127.0.0.1", "cannot be a connection's source"),
        ] {
            let err = parse_nat64_pool(bad).unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn nat64_leaves_from_its_pool_or_the_public_address() {
        let request = |pool: Option<&str>| {
            Some(Nat64Request {
                prefix: DEFAULT_NAT64_PREFIX,
                pool: pool.map(|p| p.parse().unwrap()),
                epsv: Nat64Epsv::Translate,
            })
        };
        let public = Some(Ipv4Addr::new(198, 51, 100, 7));
        let lan6 = ["fd00:1::/64".parse::<Ipv6Prefix>().unwrap()];
        let masquerade = ["10.0.0.0/24".parse::<Ipv4Prefix>().unwrap()];
        let wan_v4 = [Ipv4Prefix {
            addr: Ipv4Addr::new(198, 51, 100, 7),
            len: 24,
        }];
        assert_eq!(
            nat64(None, public, ("wan0", &wan_v4), &lan6, &[], &[]).unwrap(),
            None
        );
        assert_eq!(
            nat64(
                request(None),
                public,
                ("wan0", &wan_v4),
                &lan6,
                &masquerade,
                &[]
            )
            .unwrap(),
            Some(Nat64 {
                prefix: DEFAULT_NAT64_PREFIX,
                pool: Ipv4Addr::new(198, 51, 100, 7),
                epsv: Nat64Epsv::Translate,
            })
        );
        assert_eq!(
            nat64(
                request(Some("192.0.2.64")),
                public,
                ("wan0", &wan_v4),
                &lan6,
                &[],
                &[]
            )
            .unwrap()
            .map(|n| n.pool),
            Some(Ipv4Addr::new(192, 0, 2, 64))
        );
        // An IPv6-only router: no public IPv4 address to default to.
        let err = nat64(request(None), None, ("wan0", &wan_v4), &lan6, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--nat64 needs an IPv4 address")
                && err.contains("--wan wan0 has none")
                && err.contains("pass --nat64-pool IPV4"),
            "{err}"
        );
        assert_eq!(
            nat64(
                request(Some("192.0.2.64")),
                None,
                ("wan0", &wan_v4),
                &lan6,
                &[],
                &[]
            )
            .unwrap()
            .map(|n| n.pool),
            Some(Ipv4Addr::new(192, 0, 2, 64))
        );
        // The prefix may not cover LAN hosts, nor the pool lie among the masqueraded sources.
        let inside = Some(Nat64Request {
            prefix: "fd00:1::/96".parse().unwrap(),
            pool: None,
            epsv: Nat64Epsv::Pass,
        });
        let err = nat64(inside, public, ("wan0", &wan_v4), &lan6, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--nat64 fd00:1::/96 overlaps fd00:1::/64")
                && err.contains("give a prefix of its own"),
            "{err}"
        );
        let err = nat64(
            request(Some("10.0.0.254")),
            public,
            ("wan0", &wan_v4),
            &lan6,
            &masquerade,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pool address 10.0.0.254 lies in --masquerade 10.0.0.0/24"),
            "{err}"
        );
    }
}
