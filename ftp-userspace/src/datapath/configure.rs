//! The datapath's settings: written into a fresh datapath's maps before anything is attached, and
//! compared with a pinned one's before it is adopted.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow};
use aya::maps::lpm_trie::Key;
use ftp_common::Ipv6AddressText;
use ftp_common::maps::{
    Capacities, DatapathConfig, InterfaceInfo, InterfaceRole, IpBytes, MAX_FTP_PORTS, PINNED,
    PublishTarget, SourceLimits, config, config::nat64_flags, free_ports, interfaces, ip,
    masquerade, publish,
};

use super::{Datapath, Interface};
use crate::{
    config::nat::{Ipv4Prefix, Ipv6Prefix, Nat64, Nat64Epsv, PortWindow, Published},
    report::{sessions::endpoint, stats::Nat64Stats},
};

/// What the datapath translates, resolved from the flags.
#[derive(Debug, Clone)]
pub struct NatSettings {
    /// The address masqueraded IPv4 connections leave with; `None` on a router whose LANs have
    /// IPv6 only (no IPv4 FTP is then masqueraded or published).
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub masquerade: Vec<Ipv4Prefix>,
    /// The address NAT66 and IPv6 published servers use; `None`: IPv6 is followed untranslated.
    pub public_ip6: Option<std::net::Ipv6Addr>,
    /// IPv6 sources masqueraded behind `public_ip6` (NAT66).
    pub masquerade6: Vec<Ipv6Prefix>,
    pub ftp_ports: Vec<u16>,
    pub window: PortWindow,
    pub expect_timeout: std::time::Duration,
    pub max_expectations_per_session: u8,
    /// The tables' sizes (`--max-sessions`), set when the object is loaded.
    pub capacities: Capacities,
    /// Sessions per source and per network (/24, IPv6 /64) (`--max-sessions-per-source`,
    /// `--max-sessions-per-subnet`).
    pub source_limits: SourceLimits,
    pub allow_privileged_data_ports: bool,
    pub published: Vec<Published>,
    /// NAT64 (`--nat64`), `None` when off.
    pub nat64: Option<Nat64>,
}

impl NatSettings {
    /// The public address clients of `server`'s family reach published servers at; `None` for an
    /// IPv6 server without a public IPv6 address (which the flags' checks refuse).
    pub fn public_ip_for(&self, server: IpAddr) -> Option<IpAddr> {
        match server {
            IpAddr::V4(_) => self.public_ip.map(Into::into),
            IpAddr::V6(_) => self.public_ip6.map(Into::into),
        }
    }
}

impl Datapath {
    pub(super) fn configure(
        &mut self,
        interfaces: &[Interface],
        nat: &NatSettings,
    ) -> anyhow::Result<()> {
        let config = datapath_config(interfaces, nat)?;
        let mut array = config::AyaMap::try_from(self.map_mut(config::NAME)?)?;
        array
            .set(0, config, 0)
            .context("writing the datapath config")?;

        let mut trie = masquerade::AyaMap::try_from(self.map_mut(masquerade::NAME)?)?;
        for prefix in &nat.masquerade {
            trie.insert(&masquerade_key(prefix), 1, 0)
                .with_context(|| format!("adding masqueraded prefix {prefix}"))?;
        }
        for prefix in &nat.masquerade6 {
            trie.insert(&masquerade6_key(prefix), 1, 0)
                .with_context(|| format!("adding masqueraded prefix {prefix}"))?;
        }

        let mut publish = publish::AyaMap::try_from(self.map_mut(publish::NAME)?)?;
        for published in &nat.published {
            publish
                .insert(published.spec.public_port, publish_target(published), 0)
                .with_context(|| format!("adding published server {}", published.spec))?;
        }

        let mut free = free_ports::AyaMap::try_from(self.map_mut(free_ports::NAME)?)?;
        // In random order; ports that come back go to the back of the queue.
        for port in nat.window.shuffled(random_seed()?) {
            free.push(port, 0)
                .with_context(|| format!("filling the port window with {port}"))?;
        }
        Ok(())
    }

    /// How the settings the pinned maps hold differ from `nat` and `interfaces`, for the operator.
    pub(super) fn settings_differences(
        &mut self,
        interfaces: &[Interface],
        nat: &NatSettings,
    ) -> anyhow::Result<Vec<String>> {
        let mut differences = Vec::new();
        let wanted = datapath_config(interfaces, nat)?;
        let config = config::AyaMap::try_from(self.map_mut(config::NAME)?)?;
        let pinned = config.get(&0, 0).context("reading the pinned config")?;
        let mut differ = |what: &str, pinned: String, wanted: String| {
            if pinned != wanted {
                differences.push(format!("{what} {pinned}, not {wanted}"));
            }
        };
        differ(
            "public address",
            public_address_text(&pinned.public_ip),
            public_address_text(&wanted.public_ip),
        );
        differ(
            "public IPv6 address",
            public_address_text(&pinned.public_ip6),
            public_address_text(&wanted.public_ip6),
        );
        differ(
            "NAT64",
            Nat64Stats::of(&pinned).map_or_else(|| "off".to_owned(), |n| n.to_string()),
            Nat64Stats::of(&wanted).map_or_else(|| "off".to_owned(), |n| n.to_string()),
        );
        differ(
            "port window",
            format!("{}-{}", pinned.window_lo, pinned.window_hi),
            nat.window.to_string(),
        );
        differ(
            "FTP ports",
            format!("{:?}", ports_of(&pinned.ftp_ports)),
            format!("{:?}", ports_of(&wanted.ftp_ports)),
        );
        differ(
            "expect timeout",
            format!("{} s", pinned.expect_timeout_ns / 1_000_000_000),
            format!("{} s", wanted.expect_timeout_ns / 1_000_000_000),
        );
        differ(
            "expectations per session",
            pinned.policy().max_outstanding_expectations.to_string(),
            wanted.policy().max_outstanding_expectations.to_string(),
        );
        differ(
            "sessions per source",
            pinned.max_sessions_per_source.to_string(),
            wanted.max_sessions_per_source.to_string(),
        );
        differ(
            "sessions per /24 (IPv6 /64)",
            pinned.max_sessions_per_subnet.to_string(),
            wanted.max_sessions_per_subnet.to_string(),
        );
        differ(
            "privileged data ports",
            allowed(pinned.allow_privileged_data_ports),
            allowed(wanted.allow_privileged_data_ports),
        );
        differ(
            "WAN ifindex",
            pinned.wan_ifindex.to_string(),
            wanted.wan_ifindex.to_string(),
        );
        // The pinned tables keep the size they were created with: a load over them cannot
        // resize them.
        let state_dir = super::pins::state_dir(&self.pin_dir);
        let mut resized = Vec::new();
        for table in PINNED {
            let Some(wanted) = nat.capacities.of_table(table.name) else {
                continue;
            };
            let path = state_dir.join(table.name);
            let pinned = aya::maps::MapInfo::from_pin(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .max_entries();
            if pinned != wanted {
                resized.push(format!("{} {pinned} entries, not {wanted}", table.name));
            }
        }
        if !resized.is_empty() {
            differences.push(format!(
                "tables sized for another --max-sessions than {} ({})",
                nat.capacities.sessions,
                resized.join(", ")
            ));
        }

        let trie = masquerade::AyaMap::try_from(self.map_mut(masquerade::NAME)?)?;
        let pinned_keys: Vec<Key<IpBytes>> = trie.keys().filter_map(Result::ok).collect();
        differences.extend(masquerade_difference(&pinned_keys, nat));

        let publish = publish::AyaMap::try_from(self.map_mut(publish::NAME)?)?;
        let mut pinned_published: Vec<(u16, PublishTarget)> =
            publish.iter().filter_map(Result::ok).collect();
        pinned_published.sort_by_key(|(port, _)| *port);
        let mut wanted_published: Vec<(u16, PublishTarget)> = nat
            .published
            .iter()
            .map(|p| (p.spec.public_port, publish_target(p)))
            .collect();
        wanted_published.sort_by_key(|(port, _)| *port);
        let show = |list: &[(u16, PublishTarget)]| {
            list.iter()
                .map(|(port, t)| {
                    format!(
                        "{port}={},passive={}-{}",
                        endpoint(t.server_addr, t.server_port),
                        t.passive_ports[0],
                        t.passive_ports[1]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if pinned_published != wanted_published {
            differences.push(format!(
                "published servers [{}], not [{}]",
                show(&pinned_published),
                show(&wanted_published)
            ));
        }
        Ok(differences)
    }

    pub(super) fn record_interfaces(&mut self, interfaces: &[Interface]) -> anyhow::Result<()> {
        let mut table = interfaces::AyaMap::try_from(self.map_mut(interfaces::NAME)?)?;
        for interface in interfaces {
            let info = InterfaceInfo::new(&interface.name, interface.role)
                .ok_or_else(|| anyhow!("interface name {:?} is too long", interface.name))?;
            table
                .insert(interface.ifindex, info, 0)
                .with_context(|| format!("recording interface {}", interface.name))?;
        }
        Ok(())
    }
}

/// The datapath's settings as the CONFIG map holds them.
fn datapath_config(interfaces: &[Interface], nat: &NatSettings) -> anyhow::Result<DatapathConfig> {
    let wan = interfaces
        .iter()
        .find(|i| i.role == InterfaceRole::Wan)
        .ok_or_else(|| anyhow!("no WAN interface"))?;
    let mut ftp_ports = [0u16; MAX_FTP_PORTS];
    for (slot, port) in ftp_ports.iter_mut().zip(&nat.ftp_ports) {
        *slot = *port;
    }
    Ok(DatapathConfig {
        expect_timeout_ns: u64::try_from(nat.expect_timeout.as_nanos()).unwrap_or(u64::MAX),
        allow_privileged_data_ports: u8::from(nat.allow_privileged_data_ports),
        max_expectations_per_session: nat.max_expectations_per_session,
        nat64_flags: nat.nat64.map_or(0, |nat64| {
            nat64_flags::ENABLED
                | match nat64.epsv {
                    Nat64Epsv::Translate => nat64_flags::EPSV_AS_PASV,
                    Nat64Epsv::Pass => 0,
                }
        }),
        _pad: [0; 5],
        nat64_prefix: nat
            .nat64
            .map_or(ip::UNSPECIFIED, |nat64| ip::from_ip(nat64.prefix.0.into())),
        nat64_pool: nat
            .nat64
            .map_or(ip::UNSPECIFIED, |nat64| ip::v4_mapped(nat64.pool.octets())),
        max_sessions_per_source: nat.source_limits.per_host,
        max_sessions_per_subnet: nat.source_limits.per_subnet,
        public_ip: nat
            .public_ip
            .map_or(ip::UNSPECIFIED, |public| ip::v4_mapped(public.octets())),
        public_ip6: nat
            .public_ip6
            .map_or(ip::UNSPECIFIED, |addr| ip::from_ip(addr.into())),
        public_ip6_text: nat
            .public_ip6
            .map_or(Ipv6AddressText::NONE, Ipv6AddressText::of),
        wan_ifindex: wan.ifindex,
        ftp_ports,
        window_lo: nat.window.lo,
        window_hi: nat.window.hi,
    })
}

/// How the masqueraded prefixes of the pinned trie (`pinned`) differ from `nat`'s, both families
/// together, as the operator wrote them.
fn masquerade_difference(pinned: &[Key<IpBytes>], nat: &NatSettings) -> Option<String> {
    let mut pinned: Vec<String> = pinned.iter().map(prefix_text).collect();
    pinned.sort();
    let mut wanted: Vec<String> = nat
        .masquerade
        .iter()
        .map(ToString::to_string)
        .chain(nat.masquerade6.iter().map(ToString::to_string))
        .collect();
    wanted.sort();
    wanted.dedup();
    (pinned != wanted).then(|| {
        format!(
            "masqueraded prefixes [{}], not [{}]",
            pinned.join(", "),
            wanted.join(", ")
        )
    })
}

/// A masqueraded IPv4 prefix as the trie holds it: mapped, its length counted from the mapped
/// address's first bit.
fn masquerade_key(prefix: &Ipv4Prefix) -> Key<IpBytes> {
    Key::new(
        u32::from(ip::V4_MAPPED_BITS + prefix.len),
        ip::v4_mapped(prefix.addr.octets()),
    )
}

/// A masqueraded IPv6 prefix as the trie holds it: itself, all 128 bits of it.
fn masquerade6_key(prefix: &Ipv6Prefix) -> Key<IpBytes> {
    Key::new(
        u32::from(prefix.len),
        IpBytes::from_octets(prefix.addr.octets()),
    )
}

/// A public address a config record holds, `none` for none.
fn public_address_text(addr: &IpBytes) -> String {
    if *addr == ip::UNSPECIFIED {
        "none".to_owned()
    } else {
        ip::to_ip(addr).to_string()
    }
}

/// A prefix of the trie as the operator wrote it: `10.0.0.0/24` for a mapped IPv4 prefix (as
/// [`Ipv4Prefix`] shows it), `2001:db8::/32` otherwise.
pub(super) fn prefix_text(key: &Key<IpBytes>) -> String {
    let addr = key.data();
    let len = key.prefix_len();
    match len.checked_sub(u32::from(ip::V4_MAPPED_BITS)) {
        Some(v4_len) if ip::is_v4(&addr) => format!("{}/{v4_len}", ip::to_ip(&addr)),
        _ => format!("{}/{len}", std::net::Ipv6Addr::from(addr.octets())),
    }
}

fn allowed(flag: u8) -> String {
    if flag != 0 { "allowed" } else { "refused" }.to_owned()
}

fn ports_of(slots: &[u16; MAX_FTP_PORTS]) -> Vec<u16> {
    let mut ports: Vec<u16> = slots.iter().copied().filter(|p| *p != 0).collect();
    ports.sort_unstable();
    ports
}

fn publish_target(published: &Published) -> PublishTarget {
    PublishTarget {
        server_addr: ip::from_ip(published.spec.server),
        server_port: published.spec.server_port.to_be_bytes(),
        _pad: [0; 2],
        lan_ifindex: published.lan_ifindex,
        passive_ports: published.spec.passive_ports,
    }
}

/// A seed from the kernel's random pool.
fn random_seed() -> anyhow::Result<u64> {
    let mut seed = [0u8; 8];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut seed,
    )
    .context("reading /dev/urandom")?;
    Ok(u64::from_ne_bytes(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masqueraded_prefixes_are_mapped_and_read_back_as_written() {
        for text in ["10.0.0.0/8", "192.168.1.0/24", "192.0.2.7/32", "0.0.0.0/0"] {
            let prefix: Ipv4Prefix = text.parse().unwrap();
            let key = masquerade_key(&prefix);
            assert_eq!(key.prefix_len(), 96 + u32::from(prefix.len), "{text}");
            assert!(ip::is_v4(&key.data()), "{text}");
            assert_eq!(prefix_text(&key), prefix.to_string());
        }
        // An IPv6 prefix shows in its own form, never as a mapped one.
        let v6 = Key::new(32, ip::from_ip("2001:db8::".parse().unwrap()));
        assert_eq!(prefix_text(&v6), "2001:db8::/32");
        let mapped_short = Key::new(80, ip::v4_mapped([10, 0, 0, 0]));
        assert_eq!(prefix_text(&mapped_short), "::ffff:10.0.0.0/80");
    }

    fn settings(
        masquerade: &[&str],
        masquerade6: &[&str],
        public_ip6: Option<&str>,
    ) -> NatSettings {
        NatSettings {
            public_ip: Some("198.51.100.7".parse().unwrap()),
            masquerade: masquerade.iter().map(|p| p.parse().unwrap()).collect(),
            public_ip6: public_ip6.map(|addr| addr.parse().unwrap()),
            masquerade6: masquerade6.iter().map(|p| p.parse().unwrap()).collect(),
            ftp_ports: vec![21],
            window: PortWindow {
                lo: 61000,
                hi: 61999,
            },
            expect_timeout: std::time::Duration::from_secs(120),
            max_expectations_per_session: 4,
            capacities: Capacities::for_sessions(4096),
            source_limits: SourceLimits {
                per_host: 64,
                per_subnet: 256,
            },
            allow_privileged_data_ports: false,
            published: Vec::new(),
            nat64: None,
        }
    }

    fn wan() -> Vec<Interface> {
        vec![Interface {
            name: "wan0".to_owned(),
            ifindex: 7,
            role: InterfaceRole::Wan,
        }]
    }

    #[test]
    fn ipv6_prefixes_are_written_whole_and_read_back_as_written() {
        for text in [
            "fd00:1::/64",
            "2000::/3",
            "fd00:1::5/128",
            "2001:db8:0:1::/56",
        ] {
            let prefix: Ipv6Prefix = text.parse().unwrap();
            let key = masquerade6_key(&prefix);
            assert_eq!(key.prefix_len(), u32::from(prefix.len), "{text}");
            assert_eq!(
                key.data(),
                IpBytes::from_octets(prefix.addr.octets()),
                "{text}"
            );
            assert!(!ip::is_v4(&key.data()), "{text}");
            assert_eq!(prefix_text(&key), prefix.to_string());
        }
    }

    #[test]
    fn the_public_ipv6_address_and_its_text_are_written_only_for_nat66() {
        let config = datapath_config(
            &wan(),
            &settings(&["10.0.0.0/24"], &["fd00:1::/64"], Some("2001:db8:1::fe")),
        )
        .unwrap();
        assert_eq!(
            config.public_ip6,
            ip::from_ip("2001:db8:1::fe".parse().unwrap())
        );
        assert_eq!(
            config.public_ip6_text,
            Ipv6AddressText::of("2001:db8:1::fe".parse().unwrap())
        );
        assert_ne!(config.public_ip6_text, Ipv6AddressText::NONE);
        assert_eq!(public_address_text(&config.public_ip6), "2001:db8:1::fe");
        assert_eq!(config.public_ip, ip::v4_mapped([198, 51, 100, 7]));

        let firewall_only =
            datapath_config(&wan(), &settings(&["10.0.0.0/24"], &[], None)).unwrap();
        assert_eq!(firewall_only.public_ip6, ip::UNSPECIFIED);
        assert_eq!(firewall_only.public_ip6_text, Ipv6AddressText::NONE);
        assert_eq!(public_address_text(&firewall_only.public_ip6), "none");
    }

    #[test]
    fn nat64_is_written_with_its_prefix_pool_and_epsv_policy_and_read_back() {
        let off = datapath_config(&wan(), &settings(&["10.0.0.0/24"], &[], None)).unwrap();
        assert_eq!(off.nat64_flags, 0);
        assert_eq!(off.nat64_prefix, ip::UNSPECIFIED);
        assert_eq!(off.nat64_pool, ip::UNSPECIFIED);
        assert_eq!(Nat64Stats::of(&off), None);

        let mut nat = settings(&["10.0.0.0/24"], &[], None);
        nat.nat64 = Some(Nat64 {
            prefix: crate::config::nat::DEFAULT_NAT64_PREFIX,
            pool: "198.51.100.7".parse().unwrap(),
            epsv: Nat64Epsv::Translate,
        });
        let config = datapath_config(&wan(), &nat).unwrap();
        assert_eq!(
            config.nat64_flags,
            nat64_flags::ENABLED | nat64_flags::EPSV_AS_PASV
        );
        assert_eq!(
            config.nat64_prefix,
            ip::from_ip("64:ff9b::".parse().unwrap())
        );
        assert_eq!(config.nat64_pool, ip::v4_mapped([198, 51, 100, 7]));
        // The datapath's own reading of them.
        let server = ip::v4_mapped([192, 0, 2, 10]);
        assert_eq!(
            config.nat64_address_of(&server),
            ip::from_ip("64:ff9b::192.0.2.10".parse().unwrap())
        );
        assert!(config.is_nat64_destination(&config.nat64_address_of(&server)));
        assert!(!config.is_nat64_destination(&ip::from_ip("2001:db8::5".parse().unwrap())));
        assert_eq!(
            Nat64Stats::of(&config).unwrap().to_string(),
            "64:ff9b::/96 from 198.51.100.7, EPSV translate"
        );

        nat.nat64 = Some(Nat64 {
            prefix: "2001:db8:64::/96".parse().unwrap(),
            pool: "192.0.2.64".parse().unwrap(),
            epsv: Nat64Epsv::Pass,
        });
        let pass = datapath_config(&wan(), &nat).unwrap();
        assert_eq!(pass.nat64_flags, nat64_flags::ENABLED);
        assert_eq!(
            Nat64Stats::of(&pass).unwrap().to_string(),
            "2001:db8:64::/96 from 192.0.2.64, EPSV pass"
        );
    }

    #[test]
    fn an_agent_with_other_masqueraded_prefixes_of_either_family_is_told() {
        let pinned = [
            masquerade6_key(&"fd00:1::/64".parse().unwrap()),
            masquerade_key(&"10.0.0.0/24".parse().unwrap()),
        ];
        // The same prefixes, in any order: no difference.
        let same = settings(&["10.0.0.0/24"], &["fd00:1::/64"], Some("2001:db8::1"));
        assert_eq!(masquerade_difference(&pinned, &same), None);
        // Without --masquerade6 now.
        let without = settings(&["10.0.0.0/24"], &[], None);
        assert_eq!(
            masquerade_difference(&pinned, &without).as_deref(),
            Some("masqueraded prefixes [10.0.0.0/24, fd00:1::/64], not [10.0.0.0/24]")
        );
        // Another IPv6 prefix.
        let other = settings(&["10.0.0.0/24"], &["fd00:2::/64"], Some("2001:db8::1"));
        assert_eq!(
            masquerade_difference(&pinned, &other).as_deref(),
            Some(
                "masqueraded prefixes [10.0.0.0/24, fd00:1::/64], not [10.0.0.0/24, \
                 fd00:2::/64]"
            )
        );
        // NAT66 asked of a datapath pinned without it.
        let pinned_v4 = [masquerade_key(&"10.0.0.0/24".parse().unwrap())];
        assert!(
            masquerade_difference(&pinned_v4, &same)
                .is_some_and(|d| d.ends_with("not [10.0.0.0/24, fd00:1::/64]"))
        );
    }

    #[test]
    fn an_ipv6_server_is_published_with_its_own_address() {
        let published = Published {
            spec: "2121=[fd00:1::10]:21,passive=50000-50100".parse().unwrap(),
            lan: "lan0".to_owned(),
            lan_ifindex: 3,
        };
        let target = publish_target(&published);
        assert_eq!(
            target.server_addr.octets(),
            "fd00:1::10".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(target.server_port, 21u16.to_be_bytes());
        assert_eq!(target.passive_ports, [50000, 50100]);
        assert_eq!(
            endpoint(target.server_addr, target.server_port),
            "[fd00:1::10]:21"
        );
        let mut nat = settings(&["10.0.0.0/24"], &[], Some("2001:db8::1"));
        nat.published.push(published);
        assert_eq!(
            nat.public_ip_for("fd00:1::10".parse().unwrap()),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            nat.public_ip_for("10.0.0.5".parse().unwrap()),
            Some("198.51.100.7".parse().unwrap())
        );
    }
}
