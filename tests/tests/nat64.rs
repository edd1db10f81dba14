//! Issue 15, NAT64 with the FTP ALG of RFC 6384: an IPv6-only client (`LabSpec::nat64()`: no
//! IPv4 address, its default route the router's LAN address) reaches IPv4-only FTP servers
//! (vsftpd, pyftpdlib; the server namespace has IPv6 turned off) at their RFC 6052 addresses in
//! the lab's network-specific prefix, through `ftpnat run --nat64`, which translates the control and data
//! connections to IPv4 from the pool address (the router's WAN address by default) and the FTP
//! dialogue between the two: EPSV sent as PASV and the 227 returned as a 229, EPRT `|2|` sent as
//! PORT naming the pool address. Nothing else in the lab translates: without ftpnat the client
//! gets nowhere.
//!
//! Every download is checked by sha256 and, in the server's log, for the mode it ran in and for
//! the address the server saw (the pool address, never an IPv6 one).

use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

use ftpnat_tests::{
    Agent, Client, FtpServer, Lab, LabSpec, MIB, Mode, TestFile, Transfer,
    clients::SPLIT_ANNOUNCEMENT,
    files::assert_same_content,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
    masquerade::{Setup, setup},
    servers::{TlsFiles, VsftpdOptions, commas, data_commands_in_mode, vsftpd_dialogue},
};
use serde_json::Value;

/// A NAT64 lab whose IPv4-only vsftpd serves a file of `file_size` bytes.
fn nat64_lab(file_size: u64) -> Setup {
    setup(LabSpec::nat64(), file_size)
}

/// `ftpnat run --nat64` with the lab's prefix and the other defaults (the WAN's address as the
/// pool, EPSV translated), then `extra`.
fn start_nat64(lab: &Lab, extra: &[&str]) -> Agent {
    let prefix = lab.nat64().prefix_arg();
    let mut args = vec!["--nat64", &prefix];
    args.extend(extra);
    lab.start_ftpnat(&args).expect("ftpnat run --nat64")
}

/// The pool address: the router's WAN address, `--nat64-pool`'s default.
fn pool(lab: &Lab) -> Ipv4Addr {
    lab.spec.router_wan
}

/// Downloads `file` from the server at its NAT64 address (`2001:db8:ff64::cb00:710a`) with `client` in
/// `mode` (over IPv6: EPSV or EPRT) into `name`, checked by sha256; the downloaded copy is removed
/// afterwards (200 MB each would fill the disk).
fn download(lab: &Lab, port: u16, file: &TestFile, client: Client, mode: Mode, name: &str) {
    let local = lab.subdir("client").expect("client dir").join(name);
    Transfer {
        client,
        mode,
        server: lab.server_via_nat64().into(),
        port,
        remote: file.name(),
        local: &local,
        timeout_secs: 180,
    }
    .run(&lab.client)
    .unwrap_or_else(|err| panic!("{err:#}"));
    assert_same_content(&local, file);
    std::fs::remove_file(&local).expect("removing the download");
}

/// curl from the client with `options` (before the URL) for `file` at the server's NAT64
/// address, into `name`: curl's output, whatever it was. The download is checked by the caller.
fn curl_via_nat64(
    lab: &Lab,
    file: &TestFile,
    options: &[&str],
    name: &str,
) -> std::process::Output {
    let local = lab.subdir("client").expect("client dir").join(name);
    let url = format!("ftp://[{}]/{}", lab.server_via_nat64(), file.name());
    let local = local.to_string_lossy();
    let mut args = vec!["-sS", "--fail", "--max-time", "180", "-o", &local];
    args.extend(options);
    args.push(&url);
    lab.client.command("curl", &args).output().expect("curl")
}

/// Checks a curl download into `name` by sha256 and removes it.
fn assert_downloaded(lab: &Lab, output: &std::process::Output, file: &TestFile, name: &str) {
    assert!(
        output.status.success(),
        "curl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let local = lab.dir().join("client").join(name);
    assert_same_content(&local, file);
    std::fs::remove_file(&local).expect("removing the download");
}

/// The vsftpd dialogue since `mark`, after checking that every connection it logged came from
/// the pool address and that no IPv6 address (the client's, or the NAT64 prefix) appears in
/// it.
fn vsftpd_dialogue_from_pool(lab: &Lab, server: &FtpServer, mark: u64) -> Vec<String> {
    vsftpd_dialogue_from(lab, server, mark, pool(lab))
}

/// [`vsftpd_dialogue_from_pool`] for the pool address `pool`.
fn vsftpd_dialogue_from(lab: &Lab, server: &FtpServer, mark: u64, pool: Ipv4Addr) -> Vec<String> {
    let log = server.log_since(mark).expect("server log");
    assert_no_ipv6_text(lab, &log, "vsftpd's log");
    let pool = pool.to_string();
    let peers: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split_once("Client \"")?.1.split('"').next())
        .collect();
    assert!(!peers.is_empty(), "vsftpd logged no client:\n{log}");
    assert!(
        peers.iter().all(|peer| *peer == pool),
        "vsftpd saw another client than the pool address {pool}: {peers:?}"
    );
    vsftpd_dialogue(&log)
}

/// `text` (a log, a capture's payloads) holds no IPv6 address of the lab: neither the client's
/// nor one of the NAT64 prefix.
fn assert_no_ipv6_text(lab: &Lab, text: &str, what: &str) {
    let nat64 = lab.nat64();
    let lan = nat64.lan_prefix();
    let lan_start = lan.split("::").next().unwrap_or(&lan);
    let prefix = nat64.prefix.to_string();
    let prefix_start = prefix.trim_end_matches(':');
    for needle in [lan_start, prefix_start] {
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        assert!(
            hits.is_empty(),
            "{what} names an IPv6 address ({needle}):\n{}",
            hits.join("\n")
        );
    }
}

/// The router's WAN side carried IPv4 only, every TCP segment between the pool address and the
/// server, and no FTP control segment naming an IPv6 address; the server's own address appears
/// in no payload the client got on the LAN side, which carried IPv6 only.
fn assert_families_kept_apart(lab: &Lab) {
    assert_families_kept_apart_behind(lab, pool(lab));
}

/// [`assert_families_kept_apart`] for the pool address `pool`.
fn assert_families_kept_apart_behind(lab: &Lab, pool: Ipv4Addr) {
    let wan_ipv6 = lab
        .capture_dump(ROUTER_WAN_IF, &[], "ip6")
        .expect("capture");
    assert!(wan_ipv6.is_empty(), "IPv6 on the WAN side:\n{wan_ipv6}");
    let server = lab.spec.server;
    let wan = lab.capture_segments(ROUTER_WAN_IF).expect("capture");
    assert!(!wan.is_empty(), "no TCP on the WAN side");
    let strays: Vec<(SocketAddrV4, SocketAddrV4)> = wan
        .iter()
        .map(|s| (s.src, s.dst))
        .filter(|(src, dst)| {
            let ends = [*src.ip(), *dst.ip()];
            !(ends.contains(&pool) && ends.contains(&server))
        })
        .collect();
    assert!(
        strays.is_empty(),
        "WAN segments not between the pool address {pool} and the server {server}: {strays:?}"
    );
    let wan_control: String = wan
        .iter()
        .filter(|s| s.src.port() == 21 || s.dst.port() == 21)
        .map(|s| s.text())
        .collect();
    assert_no_ipv6_text(lab, &wan_control, "the WAN's FTP control segments");

    let lan_ipv4 = lab.capture_dump(ROUTER_LAN_IF, &[], "ip").expect("capture");
    assert!(lan_ipv4.is_empty(), "IPv4 on the LAN side:\n{lan_ipv4}");
    let replies = control_replies_on_the_lan(lab);
    for v4 in [server, pool] {
        for text in [v4.to_string(), commas(v4)] {
            assert!(
                !replies.iter().any(|r| r.contains(&text)),
                "a reply on the LAN names the IPv4 address {text}: {replies:?}"
            );
        }
    }
}

/// The payloads of the FTP server's segments (from port 21) on the router's LAN side, in
/// capture order.
fn control_replies_on_the_lan(lab: &Lab) -> Vec<String> {
    lab.capture_segments6(ROUTER_LAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.src.port() == 21 && !s.payload.is_empty())
        .map(|s| s.text())
        .collect()
}

/// The client's segments to port 21 on the router's LAN side, in capture order.
fn control_commands_on_the_lan(lab: &Lab) -> Vec<String> {
    lab.capture_segments6(ROUTER_LAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.dst.port() == 21 && !s.payload.is_empty())
        .map(|s| s.text())
        .collect()
}

/// The datapath's counters, for a failure's message: `rewrites_skipped` says whether ftpnat
/// saw the line and could not rewrite it.
fn datapath_counters(lab: &Lab) -> String {
    lab.try_ftpnat_json(&["stats"]).map_or_else(
        |err| format!("{err:#}"),
        |stats| format!("the datapath's counters: {}", stats["datapath"]),
    )
}

/// Checks that the client sent EPSV, got a 229 for it and never a 227.
fn assert_epsv_answered_229_on_the_lan(lab: &Lab) {
    let commands = control_commands_on_the_lan(lab);
    assert!(
        commands.iter().any(|c| c.starts_with("EPSV")),
        "the client sent no EPSV: {commands:?}"
    );
    let replies = control_replies_on_the_lan(lab);
    assert!(
        replies.iter().any(|r| r.starts_with("229 ")),
        "the client got no 229: {replies:?}"
    );
    assert!(
        !replies.iter().any(|r| r.contains("227 ")),
        "a 227 reached the client: {replies:?}"
    );
}

/// The lab itself: the client has IPv6 only, its default route through the router; the server
/// has IPv4 only (no IPv6 address at all, no IPv6 route) and serves its file over IPv4 (the
/// router downloads it directly); the router has no IPv6 on its WAN side and no route for the
/// NAT64 prefix.
#[test]
fn the_nat64_lab_has_an_ipv6_only_client_and_an_ipv4_only_server() {
    let setup = nat64_lab(MIB);
    let lab = &setup.lab;
    let text = |ns: &ftpnat_tests::netns::NetNs, args: &[&str]| {
        String::from_utf8_lossy(&ns.ip(args).expect("ip").stdout).into_owned()
    };
    let client_v4 = text(
        &lab.client,
        &["-4", "-o", "addr", "show", "scope", "global"],
    );
    assert!(client_v4.is_empty(), "the client has IPv4: {client_v4}");
    let client_v4_routes = text(&lab.client, &["-4", "route", "show"]);
    assert!(
        client_v4_routes.is_empty(),
        "the client has IPv4 routes: {client_v4_routes}"
    );
    let default = text(&lab.client, &["-6", "route", "show", "default"]);
    let via = format!("via {}", lab.nat64().router_lan);
    assert!(default.contains(&via), "client's default route: {default}");
    let server_v6 = text(&lab.server, &["-6", "addr", "show"]);
    assert!(server_v6.is_empty(), "the server has IPv6: {server_v6}");
    let server_v6_routes = text(&lab.server, &["-6", "route", "show"]);
    assert!(
        server_v6_routes.is_empty(),
        "the server has IPv6 routes: {server_v6_routes}"
    );
    let wan_v6 = text(&lab.router, &["-6", "addr", "show", "dev", ROUTER_WAN_IF]);
    assert!(wan_v6.is_empty(), "the router's WAN has IPv6: {wan_v6}");
    let route = lab
        .router
        .ip(&["-6", "route", "get", &lab.server_via_nat64().to_string()]);
    assert!(
        route
            .as_ref()
            .is_err_and(|err| format!("{err:#}").contains("unreachable")),
        "the router has a route to the NAT64 prefix: {route:?}"
    );
    // The client reaches the router over IPv6.
    lab.client
        .exec(
            "ping",
            &[
                "-6",
                "-c",
                "1",
                "-W",
                "5",
                &lab.nat64().router_lan.to_string(),
            ],
        )
        .expect("the client pings the router's LAN address");
    // vsftpd listens on IPv4 only, and serves the router.
    let listening = lab
        .server
        .exec("ss", &["-Hltn", "sport = :21"])
        .expect("ss");
    let listening = String::from_utf8_lossy(&listening.stdout);
    assert!(
        listening.contains(&format!("{}:21", lab.spec.server)) && !listening.contains('['),
        "vsftpd is not listening on IPv4 only: {listening}"
    );
    let local = lab.dir().join("router-download.bin");
    let url = format!("ftp://{}/{}", lab.spec.server, setup.file.name());
    let out = lab
        .router
        .command(
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                "30",
                "-o",
                &local.to_string_lossy(),
                &url,
            ],
        )
        .output()
        .expect("curl on the router");
    assert!(
        out.status.success(),
        "the router could not download from the server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_content(&local, &setup.file);
    assert_eq!(
        lab.server_via_nat64().to_string(),
        "2001:db8:ff64::cb00:710a",
        "the server's NAT64 address"
    );
}

/// The baseline: without ftpnat, and with ftpnat but without `--nat64`, the IPv6-only client
/// gets nowhere at the server's NAT64 address (nothing in the lab translates it), and the server
/// sees no connection: what works in the other tests is ftpnat's NAT64.
#[test]
fn without_nat64_the_ipv6_only_client_cannot_reach_the_ipv4_server() {
    let setup = nat64_lab(MIB);
    let lab = &setup.lab;
    let attempt = |name: &str| {
        let local = lab.dir().join(name);
        Transfer {
            client: Client::Curl,
            mode: Mode::Epsv,
            server: lab.server_via_nat64().into(),
            port: setup.server.port,
            remote: setup.file.name(),
            local: &local,
            timeout_secs: 5,
        }
        .run(&lab.client)
    };
    assert!(
        attempt("no-ftpnat.bin").is_err(),
        "the client reached the server without a NAT64"
    );
    {
        let _agent = lab.start_ftpnat(&[]).expect("ftpnat run without --nat64");
        assert!(
            attempt("no-nat64.bin").is_err(),
            "the client reached the server through ftpnat without --nat64"
        );
    }
    // vsftpd writes its log at the first connection it accepts.
    let log = setup.server.log_since(0).unwrap_or_default();
    assert!(
        !log.contains("CONNECT"),
        "a connection reached the server:\n{log}"
    );
}

/// The well-known prefix never names a non-global IPv4 address (RFC 6052 section 3.1): with
/// `--nat64` and its default `64:ff9b::/96`, the client's connection to the lab's server (a
/// documentation address) there is not translated but counted, and reaches nothing; the
/// lab's own (network-specific) prefix carries it.
#[test]
fn the_well_known_prefix_does_not_reach_a_non_global_address() {
    let setup = nat64_lab(MIB);
    let lab = &setup.lab;
    let _agent = lab.start_ftpnat(&["--nat64"]).expect("ftpnat run --nat64");
    let well_known = ftpnat_tests::lab::nat64_address(
        "64:ff9b::".parse().expect("the well-known prefix"),
        setup.server.addr,
    );
    let local = lab.dir().join("well-known.bin");
    let attempt = Transfer {
        client: Client::Curl,
        mode: Mode::Epsv,
        server: well_known.into(),
        port: setup.server.port,
        remote: setup.file.name(),
        local: &local,
        timeout_secs: 5,
    }
    .run(&lab.client);
    assert!(
        attempt.is_err(),
        "the client reached {} through the well-known prefix",
        setup.server.addr
    );
    assert!(lab.datapath_counter("nat64_not_global") >= 1);
    assert_eq!(lab.datapath_counter("nat64_translated"), 0);
}

/// Checks the server's side of a download in vsftpd's `dialogue`: the data connection was set
/// up in `mode` (PASV for the client's EPSV, PORT for its EPRT, as ftpnat translates them; EPSV
/// where it passes them) and accepted, and every PORT named the pool address.
fn assert_server_mode(lab: &Lab, dialogue: &[String], mode: Mode) {
    assert_server_mode_behind(dialogue, mode, pool(lab));
}

/// [`assert_server_mode`] for the pool address `pool`.
fn assert_server_mode_behind(dialogue: &[String], mode: Mode, pool: Ipv4Addr) {
    data_commands_in_mode(dialogue, mode).unwrap_or_else(|err| panic!("{err:#}"));
    let pool_port = format!("> PORT {},", commas(pool));
    for line in dialogue.iter().filter(|l| l.starts_with("> PORT")) {
        assert!(
            line.starts_with(&pool_port),
            "a PORT that does not name the pool address: {line}"
        );
    }
}

/// curl through NAT64 from vsftpd, 200 MB each, sha256 checked: with EPSV (sent to the server as
/// PASV, its 227 returned as a 229); with `--disable-epsv`, which over IPv6 curl ignores: it sends
/// EPSV all the same (RFC 2428's PASV cannot name an IPv6 address), so this is the EPSV case
/// again and the server still gets PASV; with EPRT (`-P -`: the client's IPv6 address, sent to
/// the server as PORT naming the pool address); and with `--disable-eprt`, which curl also
/// ignores over IPv6 (PORT cannot carry an IPv6 address): it sends EPRT. The server saw only the
/// pool address; the WAN carried IPv4 between the pool and the server only, the LAN IPv6 only;
/// the client got 229s and never a 227.
#[test]
fn curl_epsv_pasv_eprt_and_port_200mb_through_nat64_from_vsftpd() {
    let setup = nat64_lab(200 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &[]);
    let runs: [(&str, &[&str], Mode, &str); 4] = [
        ("epsv", &[], Mode::Pasv, "EPSV"),
        ("disable-epsv", &["--disable-epsv"], Mode::Pasv, "EPSV"),
        ("eprt", &["-P", "-"], Mode::Port, "EPRT |2|"),
        (
            "disable-eprt",
            &["-P", "-", "--disable-eprt"],
            Mode::Port,
            "EPRT |2|",
        ),
    ];
    for (name, options, server_mode, client_sent) in runs {
        let mark = server.log_mark();
        let commands_before = control_commands_on_the_lan(lab).len();
        let out = curl_via_nat64(lab, file, options, name);
        assert_downloaded(lab, &out, file, name);
        let dialogue = vsftpd_dialogue_from_pool(lab, server, mark);
        assert_server_mode(lab, &dialogue, server_mode);
        let commands = control_commands_on_the_lan(lab);
        let sent: Vec<&String> = commands[commands_before..]
            .iter()
            .filter(|c| {
                ["PASV", "EPSV", "PORT", "EPRT"]
                    .iter()
                    .any(|v| c.starts_with(v))
            })
            .collect();
        assert!(
            !sent.is_empty() && sent.iter().all(|c| c.starts_with(client_sent)),
            "curl {options:?} sent {sent:?}, not {client_sent}"
        );
    }
    let eprt = format!("EPRT |2|{}|", lab.nat64().client);
    assert!(
        control_commands_on_the_lan(lab)
            .iter()
            .any(|c| c.starts_with(&eprt)),
        "the client's EPRT did not name its own address"
    );
    assert_epsv_answered_229_on_the_lan(lab);
    assert_families_kept_apart(lab);
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["refusals"], 0, "{stats}");
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// lftp and Python's ftplib through NAT64 from vsftpd, active and passive, 200 MB each, sha256
/// checked: over IPv6 both send EPSV and EPRT, which the server gets as PASV and PORT naming
/// the pool address. The same captures as for curl.
#[test]
fn lftp_and_ftplib_active_and_passive_200mb_through_nat64_from_vsftpd() {
    let setup = nat64_lab(200 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &[]);
    // Passive first: each mode's failure shows on its own.
    for (mode, server_mode) in [(Mode::Epsv, Mode::Pasv), (Mode::Eprt, Mode::Port)] {
        for client in [Client::Lftp, Client::Ftplib] {
            let mark = server.log_mark();
            download(
                lab,
                server.port,
                file,
                client,
                mode,
                &format!("{client:?}-{mode:?}.bin"),
            );
            let dialogue = vsftpd_dialogue_from_pool(lab, server, mark);
            assert_server_mode(lab, &dialogue, server_mode);
        }
    }
    assert_epsv_answered_229_on_the_lan(lab);
    assert_families_kept_apart(lab);
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["refusals"], 0, "{stats}");
}

/// pyftpdlib's dialogue and peers in its debug log (see [`FtpServer::pyftpdlib_without`]):
/// `("203.0.113.254", "> PASV")`, `("203.0.113.254", "< 227 Entering passive mode (…).")`.
/// Since `mark` ([`FtpServer::log_mark`]).
fn pyftpdlib_dialogue(server: &FtpServer, mark: u64) -> Vec<(String, String)> {
    let log = server.log_since(mark).expect("pyftpdlib's log");
    log.lines()
        .filter_map(|line| {
            let (peer, rest) = line.split_once("-[")?;
            let (_, rest) = rest.split_once("] ")?;
            let (ip, _) = peer.rsplit_once(':')?;
            let entry = if let Some(command) = rest.strip_prefix("<- ") {
                format!("> {command}")
            } else {
                format!("< {}", rest.strip_prefix("-> ")?)
            };
            Some((ip.to_owned(), entry))
        })
        .collect()
}

/// A NAT64 lab with pyftpdlib (without `left_out` commands) serving a file of `size` bytes.
fn pyftpdlib_lab(size: u64, left_out: &[&str]) -> (Lab, FtpServer, TestFile) {
    let lab = Lab::new(LabSpec::nat64()).expect("lab");
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("py.bin"), size, 9).expect("test file");
    let server =
        FtpServer::pyftpdlib_without(&lab.server, lab.spec.server, 21, &root, lab.dir(), left_out)
            .expect("pyftpdlib");
    (lab, server, file)
}

/// The data commands pyftpdlib got, after checking that every line of its dialogue came from
/// the pool address and that none names an IPv6 address.
fn pyftpdlib_data_commands(lab: &Lab, server: &FtpServer) -> Vec<String> {
    let dialogue = pyftpdlib_dialogue(server, 0);
    assert!(!dialogue.is_empty(), "pyftpdlib logged no dialogue");
    let pool = pool(lab).to_string();
    for (peer, line) in &dialogue {
        assert_eq!(
            peer, &pool,
            "pyftpdlib saw another peer than the pool: {line}"
        );
        assert_no_ipv6_text(lab, line, "pyftpdlib's dialogue");
    }
    dialogue
        .into_iter()
        .map(|(_, line)| line)
        .filter(|line| {
            ["> PASV", "> EPSV", "> PORT", "> EPRT"]
                .iter()
                .any(|v| line.starts_with(v))
        })
        .collect()
}

/// pyftpdlib through NAT64, 200 MB passive (curl, EPSV) and active (ftplib, EPRT), sha256
/// checked: pyftpdlib got PASV and PORT naming the pool address, from the pool address.
#[test]
fn pyftpdlib_serves_passive_and_active_200mb_through_nat64() {
    let (lab, server, file) = pyftpdlib_lab(200 * MIB, &[]);
    let _agent = start_nat64(&lab, &[]);
    download(&lab, 21, &file, Client::Curl, Mode::Epsv, "curl-epsv.bin");
    download(
        &lab,
        21,
        &file,
        Client::Ftplib,
        Mode::Eprt,
        "ftplib-eprt.bin",
    );
    let commands = pyftpdlib_data_commands(&lab, &server);
    let port = format!("> PORT {},", commas(pool(&lab)));
    assert!(
        commands.len() == 2 && commands[0] == "> PASV" && commands[1].starts_with(&port),
        "pyftpdlib did not get PASV then {port}…: {commands:?}"
    );
    assert_epsv_answered_229_on_the_lan(&lab);
    assert_families_kept_apart(&lab);
}

/// A server without EPSV (pyftpdlib with it taken out: it would answer `500 Command "EPSV" not
/// understood.`) reached by curl's EPSV with the default policy (`translate`): the server gets
/// PASV, never EPSV, and the client its 229.
#[test]
fn a_server_without_epsv_gets_pasv_for_the_clients_epsv() {
    let (lab, server, file) = pyftpdlib_lab(8 * MIB, &["EPSV"]);
    // pyftpdlib lacks it indeed: asked directly over IPv4 (from the router, before ftpnat
    // runs), it refuses EPSV.
    let refused = lab
        .router
        .command(
            "/usr/bin/python3",
            &[
                "-c",
                "import ftplib, sys\n\
                 ftp = ftplib.FTP(sys.argv[1], timeout=10)\n\
                 ftp.login()\n\
                 try:\n    print(ftp.sendcmd('EPSV'))\n\
                 except ftplib.error_perm as err:\n    print(err)\n\
                 ftp.quit()\n",
                &lab.spec.server.to_string(),
            ],
        )
        .output()
        .expect("ftplib on the router");
    let refused = String::from_utf8_lossy(&refused.stdout);
    assert!(refused.starts_with("500"), "pyftpdlib has EPSV: {refused}");
    let _agent = start_nat64(&lab, &[]);
    let mark = server.log_mark();
    download(&lab, 21, &file, Client::Curl, Mode::Epsv, "curl-epsv.bin");
    let dialogue: Vec<String> = pyftpdlib_dialogue(&server, mark)
        .into_iter()
        .map(|(_, line)| line)
        .collect();
    assert!(
        dialogue.iter().any(|l| l == "> PASV"),
        "no PASV from the client's session: {dialogue:?}"
    );
    assert!(
        !dialogue.iter().any(|l| l.starts_with("> EPSV")),
        "the client's EPSV reached the server: {dialogue:?}"
    );
    assert_epsv_answered_229_on_the_lan(&lab);
}

/// `--nat64-epsv pass`: the client's EPSV reaches vsftpd as it is, the 229 comes back as it is
/// and the data connection it names is translated too; sha256 checked.
#[test]
fn with_epsv_passed_vsftpd_gets_the_epsv_and_answers_229() {
    let setup = nat64_lab(16 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &["--nat64-epsv", "pass"]);
    let mark = server.log_mark();
    download(
        lab,
        server.port,
        file,
        Client::Curl,
        Mode::Epsv,
        "epsv-passed.bin",
    );
    let dialogue = vsftpd_dialogue_from_pool(lab, server, mark);
    assert_server_mode(lab, &dialogue, Mode::Epsv);
    assert_epsv_answered_229_on_the_lan(lab);
    assert_families_kept_apart(lab);
}

/// Over `argv[1]` (the server's NAT64 address): logs in, asks `ALGS STATUS64`, `ALGS DISABLE64`,
/// `ALGS STATUS64`, `ALGS ENABLE64`, `ALGS STATUS64` and `EPSV ALL`, printing each reply after the
/// command, then retrieves `argv[2]` passively (EPSV, as EPSV ALL allows) and prints its sha256.
const ALGS_AND_EPSV_ALL: &str = r#"
import sys
from ftpnat_lab import login, retr_digest
ftp = login(sys.argv[1])
for command in ['ALGS STATUS64', 'ALGS DISABLE64', 'ALGS STATUS64', 'ALGS ENABLE64',
                'ALGS STATUS64', 'EPSV ALL']:
    print(command, '=>', ftp.sendcmd(command), flush=True)
print('sha256', retr_digest(ftp, sys.argv[2]), flush=True)
ftp.quit()
"#;

/// RFC 6384's `ALGS` command is answered by ftpnat: `STATUS64` with a 216 saying the ALG is
/// enabled, `DISABLE64` then `STATUS64` says disabled, `ENABLE64` turns it back on; `EPSV ALL`
/// is answered 200 and a passive transfer after it works (sha256). The server got none of them:
/// each went to it as a NOOP.
#[test]
fn algs_commands_and_epsv_all_are_answered_by_ftpnat() {
    let setup = nat64_lab(4 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &[]);
    let out = lab
        .client_python(
            ALGS_AND_EPSV_ALL,
            &[&lab.server_via_nat64().to_string(), file.name()],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|line| line.split_once(" => "))
        .collect();
    let expected = [
        ("ALGS STATUS64", "216", Some("enabled")),
        ("ALGS DISABLE64", "216", None),
        ("ALGS STATUS64", "216", Some("disabled")),
        ("ALGS ENABLE64", "216", None),
        ("ALGS STATUS64", "216", Some("enabled")),
        ("EPSV ALL", "200", None),
    ];
    assert_eq!(replies.len(), expected.len(), "{out}");
    for ((command, reply), (want_command, code, says)) in replies.iter().zip(expected) {
        assert_eq!(*command, want_command, "{out}");
        assert!(reply.starts_with(code), "{command} answered {reply}");
        if let Some(says) = says {
            let words: Vec<String> = reply
                .to_ascii_lowercase()
                .split(|c: char| !c.is_ascii_alphanumeric())
                .map(str::to_owned)
                .collect();
            assert!(
                words.iter().any(|w| w == says),
                "{command} answered {reply}, not {says}"
            );
        }
    }
    assert!(
        out.contains(&format!("sha256 {}", file.sha256)),
        "the transfer after EPSV ALL: {out}"
    );
    let dialogue = vsftpd_dialogue_from_pool(lab, server, 0);
    assert!(
        !dialogue
            .iter()
            .any(|l| l.starts_with("> ALGS") || l.starts_with("> EPSV")),
        "ALGS or EPSV ALL reached the server: {dialogue:?}"
    );
    let noops = dialogue.iter().filter(|l| l.starts_with("> NOOP")).count();
    assert_eq!(noops, expected.len(), "{dialogue:?}");
    assert_server_mode(lab, &dialogue, Mode::Pasv);
}

/// Over `argv[1]`: `AUTH TLS` (certificate not checked: the lab's is self-signed), login, PWD,
/// QUIT, printing each reply after the step's name.
const AUTH_TLS_SESSION: &str = r#"
import ftplib, ssl, sys
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
ftp = ftplib.FTP_TLS(context=context)
ftp.connect(sys.argv[1], 21, timeout=20)
print('auth', ftp.auth(), flush=True)
print('login', ftp.login(), flush=True)
print('pwd', ftp.pwd(), flush=True)
print('quit', ftp.quit(), flush=True)
"#;

/// `AUTH TLS` passes through NAT64: vsftpd with TLS (a self-signed certificate made in the lab
/// directory), Python's `FTP_TLS` over the server's NAT64 address: AUTH, login, PWD and QUIT all
/// work (after AUTH ftpnat passes the session untouched; a data connection negotiated inside TLS
/// cannot be followed, and is not tried). The server saw the pool address, and the commands
/// crossed the WAN encrypted.
#[test]
fn auth_tls_passes_through_nat64() {
    let lab = Lab::new(LabSpec::nat64()).expect("lab");
    let tls = TlsFiles::self_signed(lab.dir(), "ftpnat-lab").expect("certificate");
    let options = VsftpdOptions {
        tls: Some(tls),
        ..VsftpdOptions::default()
    };
    let (server, _file) = lab.serve_file_with(MIB, 3, &options).expect("vsftpd");
    let _agent = start_nat64(&lab, &[]);
    let out = lab
        .client_python(AUTH_TLS_SESSION, &[&lab.server_via_nat64().to_string()], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    for (step, reply) in [
        ("auth", "auth 234"),
        ("login", "login 230"),
        ("pwd", "pwd /"),
        ("quit", "quit 221"),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(reply)),
            "{step}: no `{reply}` in:\n{out}"
        );
    }
    let dialogue = vsftpd_dialogue_from_pool(&lab, &server, 0);
    assert!(
        dialogue.iter().any(|l| l.starts_with("> PWD")),
        "vsftpd got no PWD: {dialogue:?}"
    );
    let wan = lab
        .capture_segments(ROUTER_WAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.dst.port() == 21)
        .map(|s| s.text())
        .collect::<Vec<_>>();
    assert!(
        wan.iter().any(|t| t.starts_with("AUTH TLS")),
        "no AUTH TLS on the WAN: {wan:?}"
    );
    assert!(
        !wan.iter().any(|t| t.contains("PWD") || t.contains("USER")),
        "commands after AUTH TLS crossed the WAN in clear: {wan:?}"
    );
}

/// Logs in over `argv[1]`, prints `logged-in` and its control connection's port, waits for a
/// line, quits.
const LOGGED_IN_SESSION: &str = r#"
import sys
from ftpnat_lab import login
ftp = login(sys.argv[1])
print('logged-in', ftp.sock.getsockname()[1], flush=True)
sys.stdin.readline()
ftp.quit()
"#;

/// `ftpnat sessions --json` shows a NAT64 session as kind `nat64`, with the client's IPv6
/// endpoint and the server's IPv4 one, and its public side (its id) on the pool address;
/// `flows` its control connection in both families; `stats` the NAT64 settings.
#[test]
fn sessions_json_shows_a_nat64_session_with_both_families() {
    let setup = nat64_lab(MIB);
    let lab = &setup.lab;
    let _agent = start_nat64(lab, &[]);
    let mut client = lab
        .python_stepped(
            &lab.client,
            LOGGED_IN_SESSION,
            &[&lab.server_via_nat64().to_string()],
            60,
        )
        .expect("client");
    let logged_in = client
        .expect("logged-in")
        .unwrap_or_else(|err| panic!("{err:#}"));
    let port: u16 = logged_in[0].parse().expect("port");
    let sessions: Value = lab.ftpnat_json(&["sessions"]);
    let entries = sessions.as_array().expect("a list of sessions");
    assert_eq!(entries.len(), 1, "{sessions}");
    let session = &entries[0];
    assert_eq!(session["kind"], "nat64", "{session}");
    assert_eq!(
        session["client"],
        SocketAddrV6::new(lab.nat64().client, port, 0, 0).to_string(),
        "{session}"
    );
    assert_eq!(
        session["server"],
        SocketAddrV4::new(lab.spec.server, 21).to_string(),
        "{session}"
    );
    let public = session["public"].as_str().unwrap_or_default();
    assert!(
        public.starts_with(&format!("{}:", pool(lab))),
        "the session's public side is not on the pool address: {session}"
    );
    assert_eq!(session["id"], session["public"], "{session}");

    // Its control connection: the IPv6 tuple one way (the server's address shown dotted under
    // the prefix), the IPv4 one back, to the pool address and the session's port.
    let flows: Value = lab.ftpnat_json(&["flows"]);
    let control: Vec<&Value> = flows
        .as_array()
        .expect("a list of flows")
        .iter()
        .filter(|flow| flow["kind"] == "control")
        .collect();
    assert_eq!(control.len(), 1, "{flows}");
    let orig = format!(
        "[{}]:{port} -> [{}{}]:21",
        lab.nat64().client,
        lab.nat64().prefix,
        lab.spec.server
    );
    assert_eq!(control[0]["orig"], orig, "{flows}");
    assert_eq!(
        control[0]["reply"],
        format!("{}:21 -> {public}", lab.spec.server),
        "{flows}"
    );
    assert_eq!(control[0]["session"], session["id"], "{flows}");

    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(
        stats["nat"]["nat64"],
        serde_json::json!({
            "prefix": lab.nat64().prefix_arg(),
            "pool": pool(lab).to_string(),
            "epsv": "translate",
        }),
        "{stats}"
    );
    client.proceed().expect("quit");
    client.finish().unwrap_or_else(|err| panic!("{err:#}"));
}

/// A minimal FTP server on `argv[1]`:21 (IPv4) for one session, whose 227 replies go out in two
/// segments (Nagle off, 300 ms apart), the n-th cut after the n-th of the byte counts in `argv[3]`
/// (comma-separated, from the end if negative; 0: not cut), naming the address `argv[4]` if given
/// instead of its own. It serves the file `argv[2]` to every RETR,
/// answers EPSV and anything it does not know 502, prints `listening` once it listens, then
/// `control-peer ADDRESS`, `command LINE` for each command, `pasv-port PORT` for each 227 and
/// `data-peer ADDRESS` for each data connection.
const SERVER_CUTTING_ITS_227: &str = r#"
import socket, sys, time
addr, path = sys.argv[1], sys.argv[2]
cuts = [int(c) for c in sys.argv[3].split(',')]
announced = sys.argv[4] if len(sys.argv) > 4 else addr
listener = socket.create_server((addr, 21))
print('listening', flush=True)
conn, peer = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print('control-peer', peer[0], flush=True)
reader = conn.makefile('rb')
def reply(text):
    conn.sendall(text.encode() + b'\r\n')
reply('220 a server that cuts its passive replies')
data_listener = None
while line := reader.readline():
    command = line.decode().strip()
    verb = command.split(' ')[0].upper()
    print('command', command, flush=True)
    if verb == 'USER':
        reply('331 any password will do')
    elif verb == 'PASS':
        reply('230 logged in')
    elif verb == 'TYPE':
        reply('200 type set')
    elif verb == 'PASV':
        data_listener = socket.create_server((addr, 0))
        data_listener.settimeout(30)
        port = data_listener.getsockname()[1]
        print('pasv-port', port, flush=True)
        text = '227 Entering Passive Mode (%s,%d,%d).\r\n' % (
            announced.replace('.', ','), port >> 8, port & 255)
        cut = cuts.pop(0)
        cut = cut if cut >= 0 else len(text) + cut
        conn.sendall(text[:cut].encode())
        time.sleep(0.3)
        conn.sendall(text[cut:].encode())
    elif verb == 'RETR' and data_listener:
        reply('150 here it comes')
        data, data_peer = data_listener.accept()
        print('data-peer', data_peer[0], flush=True)
        with open(path, 'rb') as f:
            data.sendfile(f)
        data.close()
        data_listener.close()
        data_listener = None
        reply('226 sent')
    elif verb == 'QUIT':
        reply('221 bye')
        break
    else:
        reply('502 not here')
"#;

/// Logs in over `argv[1]` and retrieves `argv[2]` passively (EPSV over IPv6) `argv[3]` times,
/// printing each reply to EPSV and each sha256.
const PASSIVE_DOWNLOADS: &str = r#"
import hashlib, sys
from ftpnat_lab import login
ftp = login(sys.argv[1])
ftp.voidcmd('TYPE I')
for _ in range(int(sys.argv[3])):
    digest = hashlib.sha256()
    conn = ftp.transfercmd('RETR ' + sys.argv[2])
    while chunk := conn.recv(65536):
        digest.update(chunk)
    conn.close()
    ftp.voidresp()
    print('sha256', digest.hexdigest(), flush=True)
ftp.quit()
"#;

/// A 227 the server sends in two segments, cut inside its code, before its address, inside the
/// address, inside the port and before its CR LF, each the answer to the client's EPSV (sent to
/// the server as PASV): the client gets a whole 229 naming the right port every time and the
/// downloads are intact (sha256); no 227, nor any part of the server's address, reaches it.
#[test]
fn a_227_cut_by_the_server_reaches_the_client_as_a_whole_229() {
    let lab = Lab::new(LabSpec::nat64()).expect("lab");
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("cut.bin"), 2 * MIB, 5).expect("test file");
    // "22" | "7 Entering…", "227 Enter" | "ing…", "…(203,0" | ",113,…", "…,117," | "42).",
    // "…)." | CR LF.
    let cuts = ["2", "9", "32", "-6", "-2"];
    let mut server = lab
        .python_stepped(
            &lab.server,
            SERVER_CUTTING_ITS_227,
            &[
                &lab.spec.server.to_string(),
                &file.path.to_string_lossy(),
                &cuts.join(","),
            ],
            120,
        )
        .expect("server");
    server.expect("listening").expect("the server listening");
    let _agent = start_nat64(&lab, &[]);
    let out = lab
        .client_python(
            PASSIVE_DOWNLOADS,
            &[
                &lab.server_via_nat64().to_string(),
                file.name(),
                &cuts.len().to_string(),
            ],
            90,
        )
        .unwrap_or_else(|err| panic!("{err:#}\n{}", datapath_counters(&lab)));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let sums = out
        .lines()
        .filter(|l| **l == format!("sha256 {}", file.sha256))
        .count();
    assert_eq!(sums, cuts.len(), "{out}");
    let told = server.finish().unwrap_or_else(|err| panic!("{err:#}"));
    let pool = pool(&lab).to_string();
    for line in told.lines() {
        if let Some(peer) = line
            .strip_prefix("control-peer ")
            .or(line.strip_prefix("data-peer "))
        {
            assert_eq!(
                peer, pool,
                "the server saw another address than the pool: {told}"
            );
        }
    }
    assert_eq!(
        told.lines().filter(|l| *l == "command PASV").count(),
        cuts.len(),
        "the server did not get a PASV for each EPSV:\n{told}"
    );
    // The server did cut them: each 227's first part went out alone. The router holds it until
    // the rest comes, so the client acknowledges none of it and the server may send it again
    // meanwhile: each counts once.
    let wan_replies: Vec<(u32, String)> = lab
        .capture_segments(ROUTER_WAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.src.port() == 21 && !s.payload.is_empty())
        .map(|s| (s.seq, s.text()))
        .collect();
    let first_parts: std::collections::BTreeSet<&(u32, String)> = wan_replies
        .iter()
        .filter(|(_, t)| !t.ends_with('\n'))
        .collect();
    assert_eq!(first_parts.len(), cuts.len(), "{wan_replies:?}");
    let lan = control_replies_on_the_lan(&lab).concat();
    let lines_229: Vec<&str> = lan.lines().filter(|l| l.starts_with("229 ")).collect();
    assert_eq!(lines_229.len(), cuts.len(), "{lan}");
    let ports_229: Vec<String> = lines_229
        .iter()
        .filter_map(|l| {
            l.split_once("(|||")?
                .1
                .split_once("|)")
                .map(|(port, _)| port.to_owned())
        })
        .collect();
    let ports_227: Vec<&str> = told
        .lines()
        .filter_map(|l| l.strip_prefix("pasv-port "))
        .collect();
    assert_eq!(
        ports_229, ports_227,
        "the 229s do not name the 227s' ports: {lines_229:?}"
    );
    assert_epsv_answered_229_on_the_lan(&lab);
    assert_families_kept_apart(&lab);
}

/// The translated 227 (the 229 the client gets) is lost before the client, once: the server sends
/// its 227 again, and the router translates it into the same bytes at the same place in the
/// stream; the download is intact (sha256).
#[test]
fn a_retransmitted_227_is_translated_like_the_first_copy() {
    let setup = nat64_lab(2 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    lab.client_drops_first_reply6("229 ");
    let _agent = start_nat64(lab, &[]);
    let mark = server.log_mark();
    download(
        lab,
        server.port,
        file,
        Client::Ftplib,
        Mode::Epsv,
        "resent-227.bin",
    );
    let dialogue = vsftpd_dialogue_from_pool(lab, server, mark);
    assert_server_mode(lab, &dialogue, Mode::Pasv);
    let copies = |segments: Vec<(u32, String)>, code: &str| -> Vec<(u32, String)> {
        segments
            .into_iter()
            .filter(|(_, text)| text.starts_with(code))
            .collect()
    };
    let wan = copies(
        lab.capture_segments(ROUTER_WAN_IF)
            .expect("capture")
            .iter()
            .filter(|s| s.src.port() == 21)
            .map(|s| (s.seq, s.text()))
            .collect(),
        "227 ",
    );
    assert!(
        wan.len() >= 2 && wan.iter().all(|copy| *copy == wan[0]),
        "the server did not send the same 227 again (the test did not bite): {wan:?}"
    );
    let lan = copies(
        lab.capture_segments6(ROUTER_LAN_IF)
            .expect("capture")
            .iter()
            .filter(|s| s.src.port() == 21)
            .map(|s| (s.seq, s.text()))
            .collect(),
        "229 ",
    );
    assert_eq!(
        lan.len(),
        wan.len(),
        "each 227 copy became a 229: {wan:?} {lan:?}"
    );
    assert!(
        lan.iter().all(|copy| *copy == lan[0]),
        "the copies of the 229 differ in bytes or place: {lan:?}"
    );
    assert_epsv_answered_229_on_the_lan(lab);
}

/// The client's EPRT `|2|` cut into two segments — in its verb, after it, in the family field,
/// after it, inside its address, inside the port, before its CR LF — reaches the server as one
/// PORT naming the pool address, which it accepts, and the active download (then a passive one)
/// is intact; nothing of the client's address crosses the WAN.
#[test]
fn an_eprt_cut_by_the_client_reaches_the_server_as_a_port_naming_the_pool() {
    let setup = nat64_lab(2 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &[]);
    // "EPR" | "T …", "EPRT" | " |2|…", "EPRT " | "|2|…", "EPRT |2" | "|…", "EPRT |2|" |
    // "2001:…", "EPRT |2|2001" | ":db8:64::2|…", "…|123" | "45|", "…|" | CR LF.
    let cuts = [3, 4, 5, 7, 8, 12, -5, -2];
    for cut in cuts {
        let mark = server.log_mark();
        let out = lab
            .client_python(
                SPLIT_ANNOUNCEMENT,
                &[
                    &lab.server_via_nat64().to_string(),
                    file.name(),
                    "EPRT",
                    &cut.to_string(),
                ],
                60,
            )
            .unwrap_or_else(|err| panic!("EPRT cut at {cut}: {err:#}\n{}", datapath_counters(lab)));
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(
            lines.first().is_some_and(|l| l.starts_with("200")),
            "EPRT cut at {cut}: the server did not accept the line: {lines:?}\n{}",
            datapath_counters(lab)
        );
        let sums = lines.iter().filter(|l| **l == file.sha256).count();
        assert_eq!(sums, 2, "EPRT cut at {cut}: {lines:?}");
        let dialogue = vsftpd_dialogue_from_pool(lab, server, mark);
        let ports = dialogue.iter().filter(|l| l.starts_with("> PORT")).count();
        assert_eq!(ports, 1, "EPRT cut at {cut}: {dialogue:?}");
        // The active download's part of it, before the passive one's PASV.
        let active = dialogue
            .iter()
            .position(|l| l.starts_with("> PASV"))
            .unwrap_or(dialogue.len());
        assert_server_mode(lab, &dialogue[..active], Mode::Port);
    }
    // Each cut piece counts once: the router holds it until the rest comes, so the server
    // acknowledges none of it and the client may send it again meanwhile.
    let commands: Vec<(u32, String)> = lab
        .capture_segments6(ROUTER_LAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.dst.port() == 21 && !s.payload.is_empty())
        .map(|s| (s.seq, s.text()))
        .collect();
    let cut_pieces: std::collections::BTreeSet<&(u32, String)> = commands
        .iter()
        .filter(|(_, c)| !c.ends_with('\n'))
        .collect();
    assert_eq!(
        cut_pieces.len(),
        cuts.len(),
        "the client did not cut its lines: {commands:?}"
    );
    assert_families_kept_apart(lab);
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// Logs in over `argv[1]` and sends EPSV, printing `epsv` and the reply (or the error), then
/// quits.
const EPSV_REPLY: &str = r#"
import ftplib, sys
from ftpnat_lab import login
ftp = login(sys.argv[1])
try:
    print('epsv', ftp.sendcmd('EPSV'), flush=True)
except ftplib.Error as err:
    print('epsv', err, flush=True)
ftp.quit()
"#;

/// A 227 naming another address than the server's (a server announcing a third host for the
/// data connection) is not turned into a 229, which would send the client to the server
/// instead: the client gets a 425, and the other address does not reach it.
#[test]
fn a_227_naming_another_address_than_the_servers_is_answered_425() {
    let lab = Lab::new(LabSpec::nat64()).expect("lab");
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("other.bin"), MIB, 6).expect("test file");
    let elsewhere = Ipv4Addr::new(203, 0, 113, 99);
    let mut server = lab
        .python_stepped(
            &lab.server,
            SERVER_CUTTING_ITS_227,
            &[
                &lab.spec.server.to_string(),
                &file.path.to_string_lossy(),
                "0",
                &elsewhere.to_string(),
            ],
            60,
        )
        .expect("server");
    server.expect("listening").expect("the server listening");
    let _agent = start_nat64(&lab, &[]);
    let out = lab
        .client_python(EPSV_REPLY, &[&lab.server_via_nat64().to_string()], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.starts_with("epsv 425"),
        "the client's EPSV was answered: {out}"
    );
    let told = server.finish().unwrap_or_else(|err| panic!("{err:#}"));
    assert!(
        told.lines().any(|l| l == "command PASV"),
        "the server got no PASV:\n{told}"
    );
    let replies = control_replies_on_the_lan(&lab);
    for text in [elsewhere.to_string(), commas(elsewhere)] {
        assert!(
            !replies.iter().any(|r| r.contains(&text)),
            "the other address reached the client: {replies:?}"
        );
    }
    assert!(
        !replies
            .iter()
            .any(|r| r.starts_with("227") || r.starts_with("229")),
        "a passive reply reached the client: {replies:?}"
    );
}

/// An EPRT naming another IPv6 address than the client's own (a bounce to a third host) is
/// refused as in every other family: ftpnat leaves the line as it was sent (no PORT, no window
/// port), the IPv4 server cannot use it and refuses it, the client gets that 5xx, the refusal is
/// counted as a bounce, and the session goes on (a passive download after it is intact).
#[test]
fn an_eprt_naming_another_address_than_the_clients_is_refused() {
    let setup = nat64_lab(MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &[]);
    let bounce = "2001:db8:64::99";
    let out = lab
        .client_python(
            SPLIT_ANNOUNCEMENT,
            &[
                &lab.server_via_nat64().to_string(),
                file.name(),
                "EPRT",
                "0",
                bounce,
            ],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with('5')),
        "the bounce was not refused: {lines:?}"
    );
    assert_eq!(
        lines.last(),
        Some(&file.sha256),
        "the session did not go on"
    );
    let dialogue = vsftpd_dialogue(&server.log_since(0).expect("server log"));
    let as_sent = format!("> EPRT |2|{bounce}|");
    let at = dialogue
        .iter()
        .position(|l| l.starts_with(&as_sent))
        .unwrap_or_else(|| panic!("the EPRT did not reach the server as sent: {dialogue:?}"));
    assert!(
        dialogue.get(at + 1).is_some_and(|l| l.starts_with("< 5")),
        "the server accepted the bounce: {dialogue:?}"
    );
    assert!(
        !dialogue.iter().any(|l| l.starts_with("> PORT")),
        "a PORT reached the server: {dialogue:?}"
    );
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["refusals_by_reason"]["bounce"], 1, "{stats}");
}

/// A network-specific prefix (`--nat64 2001:db8:6464::/96`) and a pool address of its own
/// (`--nat64-pool 203.0.113.253`, another address of the router's WAN): the client reaches the
/// server at `2001:db8:6464::cb00:710a`, passive and active (sha256), and the server sees only
/// the pool address, in its log and in the PORT it gets.
#[test]
fn a_network_specific_prefix_and_a_pool_address_of_its_own() {
    let mut spec = LabSpec::nat64();
    if let Some(nat64) = spec.nat64.as_mut() {
        nat64.prefix = "2001:db8:6464::".parse().expect("prefix");
    }
    let setup = setup(spec, 8 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let pool = Ipv4Addr::new(203, 0, 113, 253);
    lab.router
        .ip(&["addr", "add", &format!("{pool}/24"), "dev", ROUTER_WAN_IF])
        .expect("the pool address on the WAN");
    let prefix = lab.nat64().prefix_arg();
    let _agent = lab
        .start_ftpnat(&["--nat64", &prefix, "--nat64-pool", &pool.to_string()])
        .expect("ftpnat run");
    assert_eq!(
        lab.server_via_nat64().to_string(),
        "2001:db8:6464::cb00:710a"
    );
    for (client, mode, server_mode) in [
        (Client::Curl, Mode::Epsv, Mode::Pasv),
        (Client::Ftplib, Mode::Eprt, Mode::Port),
    ] {
        let mark = server.log_mark();
        download(
            lab,
            server.port,
            file,
            client,
            mode,
            &format!("{client:?}-{mode:?}.bin"),
        );
        let dialogue = vsftpd_dialogue_from(lab, server, mark, pool);
        assert_server_mode_behind(&dialogue, server_mode, pool);
    }
    assert_families_kept_apart_behind(lab, pool);
}

/// A minimal FTP server on `argv[1]`:21 (IPv4) for one session, whose replies to NOOP go out in
/// two segments (Nagle off, 300 ms apart), the n-th cut after the n-th of the byte counts in
/// `argv[2]` (comma-separated). It answers anything else it does not know 502, prints
/// `listening` once it listens, then `command LINE` for each command.
const SERVER_CUTTING_ITS_NOOP_REPLIES: &str = r#"
import socket, sys, time
addr = sys.argv[1]
cuts = [int(c) for c in sys.argv[2].split(',')]
listener = socket.create_server((addr, 21))
print('listening', flush=True)
conn, peer = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
reader = conn.makefile('rb')
def reply(text):
    conn.sendall(text.encode() + b'\r\n')
reply('220 a server that cuts its NOOP replies')
while line := reader.readline():
    command = line.decode().strip()
    verb = command.split(' ')[0].upper()
    print('command', command, flush=True)
    if verb == 'USER':
        reply('331 any password will do')
    elif verb == 'PASS':
        reply('230 logged in')
    elif verb == 'NOOP':
        text = b'200 NOOP ok.\r\n'
        cut = cuts.pop(0)
        conn.sendall(text[:cut])
        time.sleep(0.3)
        conn.sendall(text[cut:])
    elif verb == 'QUIT':
        reply('221 bye')
        break
    else:
        reply('502 not here')
"#;

/// Over `argv[1]`: logs in, sends `ALGS STATUS64` and `EPSV ALL`, printing each reply after the
/// command.
const ALGS_STATUS_AND_EPSV_ALL: &str = r#"
import sys
from ftpnat_lab import login
ftp = login(sys.argv[1])
for command in ['ALGS STATUS64', 'EPSV ALL']:
    print(command, '=>', ftp.sendcmd(command), flush=True)
ftp.quit()
"#;

/// The server's reply to the NOOP that a command ftpnat answers itself went to it as, cut in two
/// segments (in its code, and before its CR LF), is still replaced whole by ftpnat's: the client
/// gets `216 … enabled` for `ALGS STATUS64` and `200` for `EPSV ALL`, and nothing of the
/// server's `NOOP ok.`.
#[test]
fn a_reply_cut_by_the_server_is_still_replaced_by_the_algs_own() {
    let lab = Lab::new(LabSpec::nat64()).expect("lab");
    let cuts = ["2", "12"];
    let mut server = lab
        .python_stepped(
            &lab.server,
            SERVER_CUTTING_ITS_NOOP_REPLIES,
            &[&lab.spec.server.to_string(), &cuts.join(",")],
            60,
        )
        .expect("server");
    server.expect("listening").expect("the server listening");
    let _agent = start_nat64(&lab, &[]);
    let out = lab
        .client_python(
            ALGS_STATUS_AND_EPSV_ALL,
            &[&lab.server_via_nat64().to_string()],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|line| line.split_once(" => "))
        .collect();
    assert_eq!(replies.len(), 2, "{out}");
    assert!(
        replies[0].1.starts_with("216") && replies[0].1.to_ascii_lowercase().contains("enabled"),
        "{out}"
    );
    assert!(replies[1].1.starts_with("200"), "{out}");
    let told = server.finish().unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(
        told.lines().filter(|l| *l == "command NOOP").count(),
        cuts.len(),
        "the server did not get a NOOP for each:\n{told}"
    );
    // The server did cut them (each first part counts once: the router holds it, so the server
    // may send it again before the rest).
    let wan_replies: Vec<(u32, String)> = lab
        .capture_segments(ROUTER_WAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.src.port() == 21 && !s.payload.is_empty())
        .map(|s| (s.seq, s.text()))
        .collect();
    let first_parts: std::collections::BTreeSet<&(u32, String)> = wan_replies
        .iter()
        .filter(|(_, t)| !t.ends_with('\n'))
        .collect();
    assert_eq!(first_parts.len(), cuts.len(), "{wan_replies:?}");
    let lan = control_replies_on_the_lan(&lab).concat();
    assert!(
        !lan.contains("NOOP ok"),
        "the server's reply reached the client: {lan}"
    );
    assert_families_kept_apart(&lab);
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// An active download whose `EPRT |2|` line follows a NOOP in the same first segment and is cut
/// after `argv[3]` bytes of its own (from its end if negative), the rest 300 ms later. Prints the
/// NOOP's reply, the EPRT's, the sha256 of the file if the server accepted it; then downloads the
/// file again passively and prints that sha256 too.
const EPRT_CUT_AFTER_A_NOOP: &str = r#"
import ftplib, sys, time
from ftpnat_lab import retr_active, retr_digest, session_with_listener
server, name, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
ftp, listener, host, port = session_with_listener(server)
line = 'EPRT |2|%s|%d|\r\n' % (host, port)
cut = cut if cut >= 0 else len(line) + cut
ftp.sock.sendall(('NOOP\r\n' + line[:cut]).encode())
time.sleep(0.3)
ftp.sock.sendall(line[cut:].encode())
print(ftp.getresp())
try:
    print(ftp.getresp())
    print(retr_active(ftp, listener, name))
except ftplib.error_perm as refused:
    print(refused)
ftp.set_pasv(True)
print(retr_digest(ftp, name))
ftp.quit()
"#;

/// The client's EPRT `|2|` cut as above, but starting after a NOOP in its first segment (a
/// client that sends commands back to back): cut in its verb, after it, after its space, after
/// its family field, inside its address, inside its port, before its CR LF. It reaches the server
/// as one PORT naming the pool address, which it accepts, and the downloads are intact. (Unlike
/// the lines of the test above, each of which starts its segment.)
#[test]
fn an_eprt_cut_after_a_noop_in_its_segment_reaches_the_server_as_a_port() {
    let setup = nat64_lab(2 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &[]);
    for cut in [2, 4, 5, 8, 12, -5, -2] {
        let mark = server.log_mark();
        let out = lab
            .client_python(
                EPRT_CUT_AFTER_A_NOOP,
                &[
                    &lab.server_via_nat64().to_string(),
                    file.name(),
                    &cut.to_string(),
                ],
                60,
            )
            .unwrap_or_else(|err| panic!("EPRT cut at {cut}: {err:#}\n{}", datapath_counters(lab)));
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(
            lines.get(1).is_some_and(|l| l.starts_with("200")),
            "EPRT cut at {cut}: the server did not accept the line: {lines:?}\n{}",
            datapath_counters(lab)
        );
        let sums = lines.iter().filter(|l| **l == file.sha256).count();
        assert_eq!(sums, 2, "EPRT cut at {cut}: {lines:?}");
        let dialogue = vsftpd_dialogue_from_pool(lab, server, mark);
        let active = dialogue
            .iter()
            .position(|l| l.starts_with("> PASV"))
            .unwrap_or(dialogue.len());
        assert_server_mode(lab, &dialogue[..active], Mode::Port);
    }
    assert_families_kept_apart(lab);
}

/// TAYGA (a userspace NAT64 on a TUN device) running in the router namespace for the whole
/// prefix; killed when dropped (the namespace, and its TUN device, go with the lab).
struct Tayga(std::process::Child);

impl Tayga {
    /// Starts TAYGA for the lab's prefix, from its own dynamic IPv4 pool (`192.168.255.0/24`,
    /// which the server routes back to the router), with the router routing the prefix to it.
    fn start(lab: &Lab) -> Self {
        let dir = lab.subdir("tayga").expect("tayga dir");
        let config = dir.join("tayga.conf");
        std::fs::write(
            &config,
            format!(
                "tun-device nat64\nipv4-addr 192.168.255.1\nprefix {}\n\
                 dynamic-pool 192.168.255.0/24\ndata-dir {}\n",
                lab.nat64().prefix_arg(),
                dir.display()
            ),
        )
        .expect("tayga.conf");
        let config = config.to_string_lossy().into_owned();
        lab.router
            .exec("tayga", &["--mktun", "-c", &config])
            .expect("tayga --mktun");
        for args in [
            &["link", "set", "nat64", "up"][..],
            &["route", "add", "192.168.255.0/24", "dev", "nat64"],
            &["route", "add", &lab.nat64().prefix_arg(), "dev", "nat64"],
        ] {
            lab.router.ip(args).expect("tayga's link and routes");
        }
        // Routed back to TAYGA, not masqueraded: the server tells the two translators apart by
        // the address it sees.
        let router_wan = lab.spec.router_wan.to_string();
        lab.server
            .ip(&["route", "add", "192.168.255.0/24", "via", &router_wan])
            .expect("the server's route to tayga's pool");
        let child = lab
            .router
            .command("tayga", &["-d", "-c", &config])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting tayga");
        Self(child)
    }
}

impl Drop for Tayga {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// ftpnat translates only the FTP sessions it follows and coexists with another NAT64 for the
/// rest of the prefix's traffic: with TAYGA on the router for the same prefix, an HTTP download
/// from the server goes through TAYGA (the server sees an address of TAYGA's pool), while FTP —
/// active and passive, which TAYGA alone cannot carry — goes through ftpnat (the server sees only
/// ftpnat's pool address), and neither disturbs the other.
#[test]
fn ftpnat_and_tayga_share_the_prefix_ftp_through_ftpnat_the_rest_through_tayga() {
    let setup = nat64_lab(8 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _tayga = Tayga::start(lab);
    let root = file
        .path
        .parent()
        .expect("the served directory")
        .to_path_buf();
    let mut http = lab
        .server
        .command(
            "/usr/bin/python3",
            &[
                "-m",
                "http.server",
                "-b",
                &server.addr.to_string(),
                "-d",
                &root.to_string_lossy(),
                "8080",
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("an HTTP server");
    let url = format!("http://[{}]:8080/{}", lab.server_via_nat64(), file.name());
    let local = lab.subdir("client").expect("client dir").join("tayga.bin");
    let fetch = || {
        lab.client
            .command(
                "curl",
                &[
                    "-sS",
                    "--fail",
                    "--retry",
                    "5",
                    "--retry-connrefused",
                    "--max-time",
                    "60",
                    "-o",
                    &local.to_string_lossy(),
                    &url,
                ],
            )
            .output()
            .expect("curl")
    };
    let _agent = start_nat64(lab, &[]);
    let out = fetch();
    assert!(
        out.status.success(),
        "HTTP through TAYGA failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_content(&local, file);
    let mark = server.log_mark();
    download(
        lab,
        server.port,
        file,
        Client::Curl,
        Mode::Epsv,
        "beside-tayga-epsv.bin",
    );
    download(
        lab,
        server.port,
        file,
        Client::Curl,
        Mode::Eprt,
        "beside-tayga-eprt.bin",
    );
    let dialogue = vsftpd_dialogue_from_pool(lab, server, mark);
    assert!(
        dialogue.iter().any(|l| l.starts_with("> PASV"))
            && dialogue.iter().any(|l| l.starts_with("> PORT")),
        "ftpnat's ALG did not carry the FTP sessions: {dialogue:?}"
    );
    let _ = http.kill();
    let http_log = http.wait_with_output().expect("the HTTP server's log");
    let http_log = String::from_utf8_lossy(&http_log.stderr);
    let request = format!("\"GET /{} HTTP/1.1\" 200", file.name());
    assert!(
        http_log
            .lines()
            .any(|l| l.starts_with("192.168.255.") && l.contains(&request)),
        "the HTTP request did not come from TAYGA's pool: {http_log}"
    );
    assert!(lab.datapath_counter("nat64_translated") > 0);
}

/// A NAT64 session's entries go when it ends, as an IPv4 one's do: after active and passive
/// downloads (and an ALGS answered in between), the session, its flows in both families and its
/// expectations are removed and every window port it took is back in the window.
#[test]
fn nat64_sessions_drain_and_return_their_window_ports() {
    let setup = nat64_lab(2 * MIB);
    let (lab, server, file) = (&setup.lab, &setup.server, &setup.file);
    let _agent = start_nat64(lab, &["--port-window", "61000-61007"]);
    for (mode, name) in [
        (Mode::Eprt, "drain-eprt.bin"),
        (Mode::Epsv, "drain-epsv.bin"),
    ] {
        download(lab, server.port, file, Client::Ftplib, mode, name);
    }
    let drained = || {
        let stats = lab.ftpnat_json(&["stats"]);
        stats["sessions"] == 0
            && stats["flows"] == 0
            && stats["expectations"] == 0
            && stats["window"]["in_use"] == 0
    };
    ftpnat_tests::lab::wait_until(std::time::Duration::from_secs(15), drained).unwrap_or_else(
        |_| {
            panic!(
                "the NAT64 session's entries stayed: {}",
                lab.ftpnat_json(&["stats"])
            )
        },
    );
    assert!(lab.datapath_counter("nat64_translated") > 0);
}

/// A 227 the server cut in two (after `227 Enter`) whose 229 is then lost before the client once:
/// the server sends the 227 again from its first byte, its two parts merged into one segment (as
/// Linux resends after a timeout), and the router gives that copy the same whole 229 at the same
/// place in the stream; the download is intact (sha256).
#[test]
fn a_cut_227_resent_merged_gets_the_same_whole_229() {
    let lab = Lab::new(LabSpec::nat64()).expect("lab");
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("merged.bin"), 2 * MIB, 7).expect("test file");
    let mut server = lab
        .python_stepped(
            &lab.server,
            SERVER_CUTTING_ITS_227,
            &[
                &lab.spec.server.to_string(),
                &file.path.to_string_lossy(),
                "9",
            ],
            90,
        )
        .expect("server");
    server.expect("listening").expect("the server listening");
    lab.client_drops_first_reply6("229 ");
    let _agent = start_nat64(&lab, &[]);
    let out = lab
        .client_python(
            PASSIVE_DOWNLOADS,
            &[&lab.server_via_nat64().to_string(), file.name(), "1"],
            90,
        )
        .unwrap_or_else(|err| panic!("{err:#}\n{}", datapath_counters(&lab)));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.lines().any(|l| l == format!("sha256 {}", file.sha256)),
        "{out}"
    );
    server.finish().unwrap_or_else(|err| panic!("{err:#}"));
    let wan: Vec<(u32, String)> = lab
        .capture_segments(ROUTER_WAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.src.port() == 21 && !s.payload.is_empty())
        .map(|s| (s.seq, s.text()))
        .collect();
    assert!(
        wan.iter()
            .any(|(_, t)| t.starts_with("227 ") && t.ends_with(").\r\n")),
        "the server did not resend its 227 merged (the test did not bite): {wan:?}"
    );
    let lan: Vec<(u32, String)> = lab
        .capture_segments6(ROUTER_LAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.src.port() == 21 && s.text().starts_with("229 "))
        .map(|s| (s.seq, s.text()))
        .collect();
    assert!(
        lan.len() >= 2 && lan.iter().all(|copy| *copy == lan[0]),
        "the 229's copies differ in bytes or place: {lan:?}"
    );
    assert_epsv_answered_229_on_the_lan(&lab);
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}
