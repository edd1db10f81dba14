//! One control-channel scenario over either family: IPv4 masqueraded (ftpnat's default for the
//! LAN), IPv6 through NAT66 (a ULA LAN, `--masquerade6`), or IPv6 in firewall mode (followed
//! untranslated through the operator's firewall). What differs between the runs — the lab,
//! ftpnat's flags, the line that announces an active transfer, the address the server gets in it,
//! the capture's segments — is asked of [`Family`].

use std::net::IpAddr;

use crate::{Agent, FtpServer, Lab, LabSpec, servers::commas};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The default lab, ftpnat masquerading the LAN behind the router's WAN address; active
    /// transfers announced by `PORT`.
    Ipv4,
    /// [`LabSpec::nat66`], ftpnat run with `--masquerade6` for the LAN's ULA prefix; active
    /// transfers announced by `EPRT |2|`.
    Ipv6Nat66,
    /// [`LabSpec::dual_stack`] behind the router's drop of unsolicited inbound IPv6
    /// ([`Lab::drop_unsolicited_inbound_ipv6`]), ftpnat's defaults: nothing is translated, and an
    /// active data connection gets through only if ftpnat followed its `EPRT |2|`.
    Ipv6Firewall,
}

impl Family {
    /// The lab the scenario runs in (its firewall set up).
    pub fn lab(self) -> Lab {
        let spec = match self {
            Self::Ipv4 => LabSpec::default(),
            Self::Ipv6Nat66 => LabSpec::nat66(),
            Self::Ipv6Firewall => LabSpec::dual_stack(),
        };
        let lab = Lab::new(spec).expect("lab");
        if self == Self::Ipv6Firewall {
            lab.drop_unsolicited_inbound_ipv6()
                .expect("the router's IPv6 firewall");
        }
        lab
    }

    /// Starts `ftpnat run` in `lab` with the flags that translate its LAN in this family.
    pub fn start_ftpnat(self, lab: &Lab) -> Agent {
        let prefix;
        let args: &[&str] = match self {
            Self::Ipv4 | Self::Ipv6Firewall => &[],
            Self::Ipv6Nat66 => {
                prefix = lab.ipv6().lan_prefix();
                &["--masquerade6", &prefix]
            }
        };
        lab.start_ftpnat(args).expect("ftpnat run")
    }

    /// The server's address in this family.
    pub fn server_addr(self, server: &FtpServer) -> IpAddr {
        match self {
            Self::Ipv4 => server.addr.into(),
            Self::Ipv6Nat66 | Self::Ipv6Firewall => {
                server.addr6.expect("vsftpd listening on IPv6").into()
            }
        }
    }

    /// The client's address in this family.
    pub fn client_addr(self, lab: &Lab) -> IpAddr {
        match self {
            Self::Ipv4 => lab.spec.client.into(),
            Self::Ipv6Nat66 | Self::Ipv6Firewall => lab.ipv6().client.into(),
        }
    }

    /// The client's active-transfer command and the space after it: `PORT ` or `EPRT `.
    pub fn active_verb(self) -> &'static str {
        match self {
            Self::Ipv4 => "PORT ",
            Self::Ipv6Nat66 | Self::Ipv6Firewall => "EPRT ",
        }
    }

    /// Where to cut the client's active-transfer line to cut its address after 4 characters:
    /// `PORT 10,0` | `,0,2,…`, `EPRT |2|fd00` | `:1::2|…`.
    pub fn cut_inside_address(self) -> usize {
        match self {
            Self::Ipv4 => "PORT 10,0".len(),
            Self::Ipv6Nat66 | Self::Ipv6Firewall => "EPRT |2|fd00".len(),
        }
    }

    /// The address the server must get in the client's active-transfer line, as the line's
    /// argument starts with it: the router's public one (`203,0,113,254,`, `|2|2001:db8:1::fe|`),
    /// or in firewall mode the client's own (`|2|2001:db8:10::2|`).
    pub fn announced_address_text(self, lab: &Lab) -> String {
        match self {
            Self::Ipv4 => Self::address_text(lab.spec.router_wan.into()),
            Self::Ipv6Nat66 => Self::address_text(lab.ipv6().router_wan.into()),
            Self::Ipv6Firewall => Self::address_text(lab.ipv6().client.into()),
        }
    }

    /// `addr` as an active-transfer line's argument starts with it: `10,0,0,2,` in a PORT,
    /// `|2|fd00:1::2|` in an EPRT.
    pub fn address_text(addr: IpAddr) -> String {
        match addr {
            IpAddr::V4(addr) => format!("{},", commas(addr)),
            IpAddr::V6(addr) => format!("|2|{addr}|"),
        }
    }

    /// The payloads of the segments the client sent to the server's FTP port in the router's
    /// capture of `iface`, in capture order, with their sequence numbers.
    pub fn control_segments(self, lab: &Lab, iface: &str) -> Vec<(u32, String)> {
        let segments: Vec<(u16, u32, String)> = match self {
            Self::Ipv4 => lab
                .capture_segments(iface)
                .expect("capture")
                .iter()
                .map(|s| (s.dst.port(), s.seq, s.text()))
                .collect(),
            Self::Ipv6Nat66 | Self::Ipv6Firewall => lab
                .capture_segments6(iface)
                .expect("capture")
                .iter()
                .map(|s| (s.dst.port(), s.seq, s.text()))
                .collect(),
        };
        segments
            .into_iter()
            .filter(|(port, _, text)| *port == 21 && !text.is_empty())
            .map(|(_, seq, text)| (seq, text))
            .collect()
    }

    /// In firewall mode, checks that the operator's firewall dropped nothing: ftpnat forwards
    /// every packet of an announced data connection past it, the opening SYN first. (The other
    /// families' labs have no such firewall.)
    pub fn assert_firewall_dropped_nothing(self, lab: &Lab) {
        if self == Self::Ipv6Firewall {
            let dropped = lab
                .unsolicited_inbound_ipv6_dropped()
                .expect("the firewall's drop counter");
            assert_eq!(
                dropped, 0,
                "the firewall dropped packets ftpnat should have forwarded"
            );
        }
    }

    /// The server's firewall drops the first segment to its FTP port in this family that contains
    /// `text`.
    pub fn server_drops_first(self, lab: &Lab, text: &str) {
        // Larger than any test's count of segments: only the first.
        const ONCE: u32 = 1_000_000;
        match self {
            Self::Ipv4 => lab.server_drops_first_of_every(text, ONCE),
            Self::Ipv6Nat66 | Self::Ipv6Firewall => lab.server_drops_first_of_every6(text, ONCE),
        }
    }
}
