//! `ftpnat stats`: the pinned counters of a running agent, as a table or JSON.

use std::path::Path;

use crate::report::stats::{Direction, NatStats, collect};

pub fn print(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let stats = collect(pin_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<5} {:<8} {:>12} {:>16}",
        "INTERFACE", "ROLE", "WAY", "PACKETS", "BYTES"
    );
    for row in &stats.interfaces {
        for (way, counters) in [
            (Direction::Ingress, &row.ingress),
            (Direction::Egress, &row.egress),
        ] {
            println!(
                "{:<16} {:<5} {:<8} {:>12} {:>16}",
                row.name,
                row.role,
                way.as_str(),
                counters.packets,
                counters.bytes
            );
        }
    }
    println!(
        "{:<16} {:<5} {:<8} {:>12} {:>16}",
        "total", "", "", stats.total.packets, stats.total.bytes
    );
    println!();
    println!("{}", translation(&stats.nat));
    println!(
        "sessions {} of {}  connections {} of {}  expectations {} of {}  port window {} ({} ports, \
         {} in use, exhausted {} times)",
        stats.sessions,
        stats.capacity.sessions,
        stats.flows,
        stats.capacity.flows,
        stats.expectations,
        stats.capacity.expectations,
        stats.window.range,
        stats.window.size,
        stats.window.in_use,
        stats.window.exhausted
    );
    for (name, value) in &stats.datapath {
        println!("  {name:<28} {value:>12}");
    }
    Ok(())
}

/// What the datapath translates, both families and between them: `masquerading 10.0.0.0/24 behind
/// 198.51.100.7; IPv6: fd00:1::/64 behind 2001:db8::1 (NAT66); NAT64: 64:ff9b::/96 from
/// 198.51.100.7, EPSV translate`.
fn translation(nat: &NatStats) -> String {
    let ipv6 = match (&nat.public_ip6, nat.masquerade6.is_empty()) {
        (Some(public_ip6), false) => {
            format!("{} behind {public_ip6} (NAT66)", nat.masquerade6.join(", "))
        }
        (Some(public_ip6), true) => {
            format!("followed untranslated; published servers at {public_ip6}")
        }
        (None, _) => "followed untranslated".to_owned(),
    };
    let ipv4 = match (&nat.public_ip, nat.masquerade.is_empty()) {
        (Some(public_ip), false) => {
            format!(
                "masquerading {} behind {public_ip}",
                nat.masquerade.join(", ")
            )
        }
        _ => "IPv4: nothing masqueraded".to_owned(),
    };
    let nat64 = nat
        .nat64
        .as_ref()
        .map_or_else(|| "off".to_owned(), ToString::to_string);
    format!("{ipv4}; IPv6: {ipv6}; NAT64: {nat64}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stats::Nat64Stats;

    #[test]
    fn the_translation_line_shows_both_families() {
        let mut nat = NatStats {
            public_ip: Some("198.51.100.7".to_owned()),
            masquerade: vec!["10.0.0.0/24".to_owned(), "10.1.0.0/16".to_owned()],
            public_ip6: None,
            masquerade6: Vec::new(),
            nat64: None,
        };
        assert_eq!(
            translation(&nat),
            "masquerading 10.0.0.0/24, 10.1.0.0/16 behind 198.51.100.7; IPv6: followed \
             untranslated; NAT64: off"
        );
        nat.public_ip6 = Some("2001:db8:1::fe".to_owned());
        assert_eq!(
            translation(&nat),
            "masquerading 10.0.0.0/24, 10.1.0.0/16 behind 198.51.100.7; IPv6: followed \
             untranslated; published servers at 2001:db8:1::fe; NAT64: off"
        );
        nat.masquerade6 = vec!["fd00:1::/64".to_owned()];
        assert_eq!(
            translation(&nat),
            "masquerading 10.0.0.0/24, 10.1.0.0/16 behind 198.51.100.7; IPv6: fd00:1::/64 \
             behind 2001:db8:1::fe (NAT66); NAT64: off"
        );
        nat.nat64 = Some(Nat64Stats {
            prefix: "64:ff9b::/96".to_owned(),
            pool: "198.51.100.7".to_owned(),
            epsv: "translate",
        });
        assert!(
            translation(&nat)
                .ends_with("(NAT66); NAT64: 64:ff9b::/96 from 198.51.100.7, EPSV translate"),
            "{}",
            translation(&nat)
        );
        // An IPv6-only router: NAT64 from its pool, nothing masqueraded over IPv4.
        nat.public_ip = None;
        nat.masquerade.clear();
        nat.public_ip6 = None;
        nat.masquerade6.clear();
        nat.nat64 = Some(Nat64Stats {
            prefix: "2001:db8:64::/96".to_owned(),
            pool: "192.0.2.64".to_owned(),
            epsv: "pass",
        });
        assert_eq!(
            translation(&nat),
            "IPv4: nothing masqueraded; IPv6: followed untranslated; NAT64: 2001:db8:64::/96 \
             from 192.0.2.64, EPSV pass"
        );
    }
}
