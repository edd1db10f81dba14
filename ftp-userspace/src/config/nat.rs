//! `ftpnat run`'s NAT settings: flags resolved against the router's interfaces into what the
//! datapath is configured with. Every invalid value is refused naming the flag and the fix.

use std::{ffi::CStr, fs, net::Ipv4Addr, ops::RangeInclusive, str::FromStr};

use anyhow::{Context as _, anyhow, bail};
use ftp_common::maps::{
    MAX_FTP_PORTS, MAX_PUBLISHED, MAX_WINDOW_PORTS, publish::DEFAULT_PASSIVE_PORTS,
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
/// `PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSpec {
    pub public_port: u16,
    pub server: Ipv4Addr,
    pub server_port: u16,
    pub passive_ports: [u16; 2],
}

impl std::fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={}:{}",
            self.public_port, self.server, self.server_port
        )?;
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
                 21=192.168.1.10 or 2121=192.168.1.11:21,passive=40000-40100"
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
        let (server, server_port) = match target.split_once(':') {
            Some((addr, server_port)) => (addr, port(server_port).ok_or_else(bad)?),
            None => (target, 21),
        };
        let server: Ipv4Addr = server.parse().map_err(|_| bad())?;
        Ok(Self {
            public_port: public.unwrap_or(server_port),
            server,
            server_port,
            passive_ports,
        })
    }
}

/// A published server with the LAN interface it is reached by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub spec: PublishSpec,
    pub lan: String,
    pub lan_ifindex: u32,
}

/// Checks the `--publish` values against each other, the window and the LAN interfaces (given as
/// name, ifindex and their IPv4 prefixes), and finds each server's interface.
pub fn resolve_published(
    specs: &[PublishSpec],
    window: PortWindow,
    lans: &[(String, u32, Vec<Ipv4Prefix>)],
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
            bail!(
                "--publish {spec} and --publish {} both use public port {}; give each server its \
                 own public port",
                other.spec,
                spec.public_port
            );
        }
        if let Some(other) = published
            .iter()
            .find(|p| (p.spec.server, p.spec.server_port) == (spec.server, spec.server_port))
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
        let Some((lan, lan_ifindex, _)) = lans
            .iter()
            .find(|(_, _, prefixes)| prefixes.iter().any(|prefix| prefix.contains(spec.server)))
        else {
            let known: Vec<String> = lans
                .iter()
                .flat_map(|(name, _, prefixes)| prefixes.iter().map(move |p| format!("{name} {p}")))
                .collect();
            bail!(
                "--publish {spec}: {} is on none of the --lan interfaces' networks ({}); a \
                 published server must be directly attached to a --lan interface",
                spec.server,
                if known.is_empty() {
                    "none has an IPv4 address".to_owned()
                } else {
                    known.join(", ")
                }
            );
        };
        published.push(Published {
            spec: *spec,
            lan: lan.clone(),
            lan_ifindex: *lan_ifindex,
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

/// IPv4 addresses with their prefix lengths, per interface, from getifaddrs.
pub fn ipv4_addresses(iface: &str) -> anyhow::Result<Vec<Ipv4Prefix>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = Vec::new();
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
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least sa_family.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if name.to_bytes() != iface.as_bytes() || family != libc::AF_INET {
            continue;
        }
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
        found.push(Ipv4Prefix {
            addr: Ipv4Addr::from(u32::from_be(addr)),
            len: u32::from_be(mask).count_ones() as u8,
        });
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The public address: `--public-ip`, else the first IPv4 address of the WAN interface.
pub fn public_ip(flag: Option<Ipv4Addr>, wan: &str) -> anyhow::Result<Ipv4Addr> {
    if let Some(ip) = flag {
        return Ok(ip);
    }
    ipv4_addresses(wan)?
        .first()
        .map(|prefix| prefix.addr)
        .ok_or_else(|| {
            anyhow!(
                "--wan {wan} has no IPv4 address to masquerade behind; add one or pass --public-ip"
            )
        })
}

/// The masqueraded prefixes: `--masquerade`, else the IPv4 prefixes of the LAN interfaces.
pub fn masquerade_prefixes(
    flags: &[Ipv4Prefix],
    lans: &[String],
) -> anyhow::Result<Vec<Ipv4Prefix>> {
    if !flags.is_empty() {
        return Ok(flags.to_vec());
    }
    let mut prefixes = Vec::new();
    for lan in lans {
        prefixes.extend(ipv4_addresses(lan)?.into_iter().map(Ipv4Prefix::network));
    }
    if prefixes.is_empty() {
        bail!(
            "the --lan interfaces ({}) have no IPv4 prefixes to masquerade; pass --masquerade CIDR",
            lans.join(", ")
        );
    }
    prefixes.dedup();
    Ok(prefixes)
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
            (21, Ipv4Addr::new(192, 168, 1, 10), 21)
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

    #[test]
    fn published_servers_are_checked_and_find_their_interface() {
        let window = PortWindow {
            lo: 40000,
            hi: 40099,
        };
        let lans = vec![
            ("lan0".to_owned(), 3, vec!["10.0.0.1/24".parse().unwrap()]),
            (
                "lan1".to_owned(),
                4,
                vec!["192.168.7.1/24".parse().unwrap()],
            ),
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
}
