//! How ftpnat names and classifies a session, in the same words in `ftpnat sessions`, the metrics
//! and the event stream.

use std::{collections::HashSet, net::SocketAddr};

use ftp_common::{
    Session,
    maps::{FlowEntry, FlowKey, FlowKind, IpBytes, SessionKind, flow_flags, ip},
};

/// An address and port as the datapath's maps hold them (network byte order), in its own family:
/// `10.0.0.2:21`, `[2001:db8::2]:21`.
pub fn endpoint(addr: IpBytes, port: [u8; 2]) -> String {
    SocketAddr::new(ip::to_ip(&addr), u16::from_be_bytes(port)).to_string()
}

/// An address and port as [`endpoint`] shows them, except that an IPv6 address under the /96
/// `nat64_prefix` (a NAT64 session's: its first 96 bits) shows the IPv4 address it embeds in dotted
/// form, as RFC 5952 section 5 recommends: `[64:ff9b::198.51.100.10]:21`, not
/// `[64:ff9b::c633:640a]:21`.
pub fn nat64_endpoint(addr: IpBytes, port: [u8; 2], nat64_prefix: &IpBytes) -> String {
    let under_prefix = !ip::is_v4(&addr) && addr.0[..3] == nat64_prefix.0[..3];
    if !under_prefix {
        return endpoint(addr, port);
    }
    // The prefix's groups as RFC 5952 writes them (zeros compressed among them only), with a
    // placeholder for the last 32 bits that no compression can touch.
    let placeholder = "ffff:ffff";
    let mut octets = addr.octets();
    octets[12..].fill(0xff);
    let text = std::net::Ipv6Addr::from(octets).to_string();
    let groups = text.strip_suffix(placeholder).unwrap_or(&text);
    let [a, b, c, d] = ip::v4_octets(&ip::embedded_v4(&addr));
    format!("[{groups}{a}.{b}.{c}.{d}]:{}", u16::from_be_bytes(port))
}

/// A session's identifier, unique while it lives: a masqueraded or NAT64 session's public address
/// and port (`public`, its control connection's translated source: the public address, or the
/// NAT64 pool address, and a window port); a published session's client address and port `@` the
/// published port (all sessions of a published server share its public endpoint); a firewalled
/// session's client address and port, which it keeps on the way out. `None` for a masqueraded or
/// NAT64 session whose public endpoint is not known (or of an unknown kind).
pub fn session_id(
    session: &FlowKey,
    kind: Option<SessionKind>,
    public: Option<(IpBytes, [u8; 2])>,
) -> Option<String> {
    match kind {
        Some(SessionKind::Publish) => Some(format!(
            "{}@{}",
            endpoint(session.saddr, session.sport),
            u16::from_be_bytes(session.dport)
        )),
        Some(SessionKind::Firewall) => Some(endpoint(session.saddr, session.sport)),
        Some(SessionKind::Masquerade | SessionKind::Nat64) | None => {
            public.map(|(addr, port)| endpoint(addr, port))
        }
    }
}

/// Where a session stands, as `ftpnat sessions` and the metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Between transfers: commands are read and PORT/EPRT/PASV/EPSV are acted on.
    Command,
    /// A transfer is running (from the server's 125/150 to the reply that ends it).
    Transfer,
    /// The control channel is under TLS: ftpnat reads nothing of it and opens no data connection.
    Encrypted,
    /// The control connection has seen a FIN or RST; the sweep removes it.
    Closing,
}

impl SessionState {
    pub const ALL: [SessionState; 4] = [
        SessionState::Command,
        SessionState::Transfer,
        SessionState::Encrypted,
        SessionState::Closing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SessionState::Command => "command",
            SessionState::Transfer => "transfer",
            SessionState::Encrypted => "encrypted",
            SessionState::Closing => "closing",
        }
    }

    /// The state of a session's control channel; `closing`: whether its control connection is
    /// among the [`closing_sessions`].
    ///
    /// Encrypted comes first: ftpnat can help none of those sessions, and an operator counting
    /// them (to see why data connections fail) wants them all, closing or not. Closing comes
    /// before transfer because a connection torn down mid-transfer never sees the reply that ends
    /// the transfer.
    pub fn of(session: &Session, closing: bool) -> Self {
        if session.is_encrypted() {
            SessionState::Encrypted
        } else if closing {
            SessionState::Closing
        } else if session.is_transferring() {
            SessionState::Transfer
        } else {
            SessionState::Command
        }
    }
}

/// The sessions whose control connection has seen a FIN or RST in either direction, from the flow
/// table's entries (a set, so that classifying every session stays linear in the tables' sizes).
pub fn closing_sessions<'a>(flows: impl IntoIterator<Item = &'a FlowEntry>) -> HashSet<FlowKey> {
    flows
        .into_iter()
        .filter(|e| {
            e.kind == FlowKind::Control as u8 && e.flags & (flow_flags::FIN | flow_flags::RST) != 0
        })
        .map(|e| e.session)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ftp_common::{Policy, PolicyContext, maps::FlowDirection};

    use super::*;

    fn ctx() -> PolicyContext {
        PolicyContext {
            client: ip::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            server: ip::from_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
            policy: Policy::new(),
        }
    }

    fn flow(session: FlowKey, kind: FlowKind, flags: u8) -> FlowEntry {
        FlowEntry {
            packets: 0,
            bytes: 0,
            last_seen_ns: 0,
            session,
            new_saddr: ip::UNSPECIFIED,
            new_daddr: ip::UNSPECIFIED,
            out_ifindex: 0,
            new_sport: [0; 2],
            new_dport: [0; 2],
            public_port: 0,
            kind: kind as u8,
            direction: FlowDirection::Original as u8,
            flags,
            _pad: [0; 3],
            in_ifindex: 0,
        }
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            saddr: ip::v4_mapped([10, 0, 0, 2]),
            daddr: ip::v4_mapped([192, 0, 2, 10]),
            sport: port.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        }
    }

    #[test]
    fn session_ids_by_kind_in_either_family() {
        let public = (ip::v4_mapped([203, 0, 113, 254]), 61000u16.to_be_bytes());
        let masquerade = Some(SessionKind::Masquerade);
        assert_eq!(
            session_id(&key(40000), masquerade, Some(public)).as_deref(),
            Some("203.0.113.254:61000")
        );
        assert_eq!(session_id(&key(40000), masquerade, None), None);
        assert_eq!(
            session_id(&key(40000), Some(SessionKind::Publish), None).as_deref(),
            Some("10.0.0.2:40000@21")
        );
        let v6 = FlowKey {
            saddr: ip::from_ip("2001:db8:10::2".parse().unwrap()),
            daddr: ip::from_ip("2001:db8:ffff::10".parse().unwrap()),
            ..key(40000)
        };
        assert_eq!(
            session_id(&v6, Some(SessionKind::Firewall), None).as_deref(),
            Some("[2001:db8:10::2]:40000")
        );
        assert_eq!(
            session_id(&v6, Some(SessionKind::Publish), None).as_deref(),
            Some("[2001:db8:10::2]:40000@21")
        );
        // A NAT64 session: an IPv6 client, named by the IPv4 pool address and window port its
        // control connection leaves from.
        let nat64 = FlowKey {
            saddr: ip::from_ip("2001:db8:10::2".parse().unwrap()),
            daddr: ip::from_ip("64:ff9b::203.0.113.10".parse().unwrap()),
            ..key(40000)
        };
        let pool = (ip::v4_mapped([198, 51, 100, 7]), 61001u16.to_be_bytes());
        assert_eq!(
            session_id(&nat64, Some(SessionKind::Nat64), Some(pool)).as_deref(),
            Some("198.51.100.7:61001")
        );
        assert_eq!(session_id(&nat64, Some(SessionKind::Nat64), None), None);
    }

    #[test]
    fn addresses_under_a_nat64_prefix_show_their_ipv4_address_dotted() {
        let v6 = |text: &str| ip::from_ip(text.parse().unwrap());
        let port = 21u16.to_be_bytes();
        let well_known = v6("64:ff9b::");
        assert_eq!(
            nat64_endpoint(v6("64:ff9b::198.51.100.10"), port, &well_known),
            "[64:ff9b::198.51.100.10]:21"
        );
        // Zeros compressed in the prefix only, wherever they are.
        let network_specific = v6("2001:db8:0:0:1:2::");
        assert_eq!(
            nat64_endpoint(v6("2001:db8:0:0:1:2:c633:640a"), port, &network_specific),
            "[2001:db8::1:2:198.51.100.10]:21"
        );
        assert_eq!(
            nat64_endpoint(v6("2001:db8:1:2:3:4:0:1"), port, &v6("2001:db8:1:2:3:4::")),
            "[2001:db8:1:2:3:4:0.0.0.1]:21"
        );
        // Anything else as `endpoint` has it.
        assert_eq!(
            nat64_endpoint(v6("2001:db8:10::2"), port, &well_known),
            "[2001:db8:10::2]:21"
        );
        assert_eq!(
            nat64_endpoint(ip::v4_mapped([198, 51, 100, 10]), port, &well_known),
            "198.51.100.10:21"
        );
    }

    #[test]
    fn session_state_follows_the_control_channel() {
        let mut session = Session::new();
        assert_eq!(SessionState::of(&session, false), SessionState::Command);
        session.on_server_line(b"150 Opening data connection\r\n", &ctx());
        assert_eq!(SessionState::of(&session, false), SessionState::Transfer);
        assert_eq!(SessionState::of(&session, true), SessionState::Closing);
        session.on_server_line(b"226 Transfer complete\r\n", &ctx());
        assert_eq!(SessionState::of(&session, false), SessionState::Command);
        session.on_client_line(b"AUTH TLS\r\n", &ctx());
        session.on_server_line(b"234 Proceed with negotiation\r\n", &ctx());
        assert_eq!(SessionState::of(&session, false), SessionState::Encrypted);
        assert_eq!(SessionState::of(&session, true), SessionState::Encrypted);
    }

    #[test]
    fn only_a_control_connection_s_fin_or_rst_closes_a_session() {
        let flows = [
            flow(key(1), FlowKind::Control, flow_flags::FIN),
            flow(
                key(2),
                FlowKind::Control,
                flow_flags::RST | flow_flags::ESTABLISHED,
            ),
            flow(key(3), FlowKind::Data, flow_flags::FIN),
            flow(
                key(4),
                FlowKind::Control,
                flow_flags::ESTABLISHED | flow_flags::OWNS_PORT,
            ),
        ];
        let closing = closing_sessions(&flows);
        assert_eq!(closing, HashSet::from([key(1), key(2)]));
    }
}
