//! Issue 12, item 7: FTP follows the routing table. A masqueraded client's FTP to another network
//! of the router, or to the router itself, is not ftpnat's to translate: the kernel routes it as it
//! came (the server sees the client's own address, transfers take the kernel's path), while FTP to
//! the WAN is still translated. Before the fix every FTP connection from a masqueraded prefix was
//! SNATed and sent out of the WAN, whatever its destination, and these transfers failed.

use std::net::Ipv4Addr;

use ftpnat_tests::{
    Client, FtpServer, Lab, LabSpec, MIB, Mode, TestFile, Transfer,
    files::assert_same_content,
    lab::ROUTER_WAN_IF,
    masquerade,
    netns::NetNs,
    servers::{VsftpdOptions, commas},
};

/// The router's second LAN and the FTP server on it.
const OTHER_LAN_IF: &str = "lan1";
const OTHER_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const OTHER_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

/// vsftpd in `ns` on `addr`, serving a file of its own from a directory of its own (so that two
/// servers of one lab keep their logs apart).
fn vsftpd_in(lab: &Lab, ns: &NetNs, addr: Ipv4Addr, label: &str) -> (FtpServer, TestFile) {
    let dir = lab.subdir(label).expect("server directory");
    let file = TestFile::create(&dir.join(format!("{label}.bin")), 4 * MIB, 7).expect("file");
    let server = FtpServer::vsftpd(ns, addr, &dir, &dir, &VsftpdOptions::default())
        .unwrap_or_else(|err| panic!("vsftpd on {addr}: {err:#}"));
    (server, file)
}

/// A curl download from the client in `mode`, checked by sha256, and the server's log of it,
/// which must name the client by its own LAN address — as the peer of the control connection,
/// and in an active-mode PORT: nothing translated the session.
fn download_untranslated(lab: &Lab, server: &FtpServer, file: &TestFile, mode: Mode) {
    let mark = server.log_mark();
    let local = lab
        .subdir("client")
        .expect("client dir")
        .join(format!("{}-{mode:?}", server.addr));
    Transfer {
        client: Client::Curl,
        mode,
        server: server.addr.into(),
        port: server.port,
        remote: file.name(),
        local: &local,
        timeout_secs: 60,
    }
    .run(&lab.client)
    .unwrap_or_else(|err| panic!("{err:#}"));
    assert_same_content(&local, file);
    let log = server.log_since(mark).expect("server log");
    let client = lab.spec.client;
    assert!(
        log.contains(&format!("Client \"{client}\"")),
        "{} did not see the client as {client}:\n{log}",
        server.addr
    );
    if mode == Mode::Port {
        assert!(
            log.contains(&format!("PORT {}", commas(client))),
            "the PORT reached {} rewritten:\n{log}",
            server.addr
        );
    }
}

/// No packet of `addr` left by the WAN.
fn assert_never_on_the_wan(lab: &Lab, addr: Ipv4Addr) {
    let wan = lab.capture_segments(ROUTER_WAN_IF).expect("WAN capture");
    let leaked: Vec<_> = wan
        .iter()
        .filter(|s| *s.src.ip() == addr || *s.dst.ip() == addr)
        .collect();
    assert!(
        leaked.is_empty(),
        "FTP to {addr} left by the WAN: {leaked:?}"
    );
}

#[test]
fn ftp_to_another_lan_goes_by_the_routing_table_untranslated() {
    let setup = masquerade::setup(LabSpec::default(), 4 * MIB);
    let lab = &setup.lab;
    let other = lab
        .add_network("other", OTHER_LAN_IF, (OTHER_ROUTER, OTHER_SERVER), 24)
        .expect("a second LAN");
    let (other_server, other_file) = vsftpd_in(lab, &other, OTHER_SERVER, "other-lan");
    // Both LANs managed: by default both prefixes are masqueraded, so only the route tells the
    // second LAN apart from the Internet.
    let _agent = lab
        .start_ftpnat(&["--lan", OTHER_LAN_IF])
        .expect("ftpnat run");

    for mode in [Mode::Pasv, Mode::Port] {
        download_untranslated(lab, &other_server, &other_file, mode);
    }
    assert_eq!(lab.datapath_counter("control_sessions_opened"), 0);
    assert!(lab.datapath_counter("not_routed_to_wan") >= 2);
    assert_never_on_the_wan(lab, OTHER_SERVER);

    // FTP to the Internet is still translated.
    for mode in [Mode::Pasv, Mode::Port] {
        masquerade::download(&setup, Client::Curl, mode, &format!("wan-{mode:?}"));
    }
    assert_eq!(lab.datapath_counter("control_sessions_opened"), 2);
}

#[test]
fn ftp_to_the_router_itself_is_not_translated() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    // The router's address on the client's LAN, and its public address on the WAN.
    let servers = [
        vsftpd_in(&lab, &lab.router, lab.spec.router_lan, "router-lan"),
        vsftpd_in(&lab, &lab.router, lab.spec.router_wan, "router-wan"),
    ];
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");

    for (server, file) in &servers {
        for mode in [Mode::Pasv, Mode::Port] {
            download_untranslated(&lab, server, file, mode);
        }
    }
    assert_eq!(lab.datapath_counter("control_sessions_opened"), 0);
    assert!(lab.datapath_counter("not_routed_to_wan") >= 4);
    assert_never_on_the_wan(&lab, lab.spec.router_wan);
}

/// A policy rule sends the client's traffic for a prefix into a VPN (here a second network's host as
/// its gateway), while the main table's default route leads to the WAN: ftpnat asks the FIB with
/// the rules, as forwarding does, and leaves that FTP to the VPN.
#[test]
fn a_policy_rule_routing_a_prefix_into_a_vpn_is_followed() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let vpn = lab
        .add_network("vpn", OTHER_LAN_IF, (OTHER_ROUTER, OTHER_SERVER), 24)
        .expect("the VPN's network");
    let behind_vpn = Ipv4Addr::new(198, 51, 100, 10);
    vpn.ip(&["addr", "add", &format!("{behind_vpn}/32"), "dev", "lo"])
        .expect("an address behind the VPN");
    let client = lab.spec.client.to_string();
    let via_vpn = OTHER_SERVER.to_string();
    for args in [
        vec!["route", "add", "default", "via", "203.0.113.10"],
        vec![
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &via_vpn,
            "table",
            "100",
        ],
        vec![
            "rule",
            "add",
            "from",
            &client,
            "to",
            "198.51.100.0/24",
            "lookup",
            "100",
        ],
    ] {
        lab.router.ip(&args).expect("router routes");
    }
    let (server, file) = vsftpd_in(&lab, &vpn, behind_vpn, "behind-vpn");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");

    for mode in [Mode::Pasv, Mode::Port] {
        download_untranslated(&lab, &server, &file, mode);
    }
    assert_eq!(lab.datapath_counter("control_sessions_opened"), 0);
    assert!(lab.datapath_counter("not_routed_to_wan") >= 2);
    assert_never_on_the_wan(&lab, behind_vpn);
}
