//! Issue 14, NAT66 and publishing over IPv6: a dual-stack router whose LAN is numbered from the
//! ULA prefix `fd00:1::/64` (`LabSpec::nat66()`: the server has no route to it, so only what the
//! router translates to its public IPv6 address gets answers), behind the operator's IPv6
//! firewall (`lab.drop_unsolicited_inbound_ipv6()`: conntrack's ESTABLISHED,RELATED in, everything
//! else from the WAN dropped and counted). With `--masquerade6 fd00:1::/64`, LAN clients leave
//! behind the router's WAN address and their EPRT names it; with `--publish 2121=[fd00:1::2]:21`,
//! an outside IPv6 client reaches the LAN's vsftpd at that address. The firewall drops nothing of
//! either: ftpnat forwards the translated packets past it.
//!
//! Every download is checked by sha256 and, in the server's log, for the mode it claims.

use std::{net::Ipv6Addr, ops::RangeInclusive};

use ftpnat_tests::{
    Client, FtpServer, Lab, LabSpec, MIB, Mode, TestFile, Transfer,
    files::assert_same_content,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
    masquerade::{Setup, download_from, setup},
    servers::VsftpdOptions,
};
use serde_json::Value;

const WINDOW: RangeInclusive<u16> = 62000..=62099;

fn window_arg() -> String {
    format!("{}-{}", WINDOW.start(), WINDOW.end())
}

/// A NAT66 lab behind the operator's IPv6 firewall, its vsftpd outside serving a file of
/// `file_size` bytes over both families.
fn firewalled(file_size: u64) -> Setup {
    let setup = setup(LabSpec::nat66(), file_size);
    setup
        .lab
        .drop_unsolicited_inbound_ipv6()
        .expect("the router's IPv6 firewall");
    setup
}

/// The router's public IPv6 address: its WAN address, which `--public-ip6` defaults to.
fn public6(lab: &Lab) -> Ipv6Addr {
    lab.ipv6().router_wan
}

/// The LAN's ULA prefix, `fd00:1::/64`, as `--masquerade6` takes it.
fn ula_prefix(lab: &Lab) -> String {
    lab.ipv6().lan_prefix()
}

/// The first groups of the LAN's prefix, `fd00:1:`: how any of its addresses starts in text.
fn ula_text(lab: &Lab) -> String {
    let groups = lab.ipv6().client.segments();
    format!("{:x}:{:x}:", groups[0], groups[1])
}

/// Why the firewall's drop counter stays at zero while ftpnat translates.
const FORWARDED_PAST_THE_FIREWALL: &str = "the firewall dropped packets: ftpnat forwards every \
     translated packet past it, the opening SYN of each data connection first";

fn dropped(lab: &Lab) -> u64 {
    lab.unsolicited_inbound_ipv6_dropped()
        .expect("the firewall's drop counter")
}

/// The router's WAN side carried no packet from or to the LAN's ULA prefix, and no FTP control
/// segment (to or from `ftp_port`) naming an address of it.
fn assert_no_ula_on_the_wan(lab: &Lab, ftp_port: u16) {
    let prefix = ula_prefix(lab);
    let headers = lab
        .capture_dump(ROUTER_WAN_IF, &[], &format!("ip6 net {prefix}"))
        .expect("capture");
    assert!(
        headers.is_empty(),
        "packets with the ULA prefix {prefix} left by the WAN:\n{headers}"
    );
    let control = lab
        .capture_dump(ROUTER_WAN_IF, &["-A"], &format!("tcp port {ftp_port}"))
        .expect("capture");
    let ula = ula_text(lab);
    let leaked: Vec<&str> = control.lines().filter(|l| l.contains(&ula)).collect();
    assert!(
        leaked.is_empty(),
        "a ULA address in the WAN's FTP control segments:\n{}",
        leaked.join("\n")
    );
}

/// The baseline: without ftpnat, the ULA LAN gets no answer from the server over IPv6, not even
/// to a passive session's control connection (the server has no route back): what works in the
/// tests below is NAT66's doing.
#[test]
fn without_ftpnat_a_ula_lan_gets_no_answer_over_ipv6() {
    let setup = firewalled(MIB);
    let lab = &setup.lab;
    let local = lab.dir().join("epsv.bin");
    let passive = Transfer {
        client: Client::Curl,
        mode: Mode::Epsv,
        server: setup.server.addr6.expect("vsftpd on IPv6").into(),
        port: setup.server.port,
        remote: setup.file.name(),
        local: &local,
        timeout_secs: 5,
    }
    .run(&lab.client);
    assert!(
        passive.is_err(),
        "the server answered the ULA LAN without NAT66"
    );
    // vsftpd writes its log at the first connection it accepts.
    let log = setup.server.log_since(0).unwrap_or_default();
    assert!(
        !log.contains("CONNECT"),
        "a connection from the ULA LAN was set up:\n{log}"
    );
}

/// curl (EPRT and EPSV), lftp (active and passive) and Python's ftplib (active and passive) over
/// IPv6 through NAT66 and the firewall, 200 MB each, sha256 checked. The server saw only the
/// public address — as the control connection's peer and in every EPRT — while the client sent
/// its ULA one; nothing with the ULA prefix left by the WAN; the firewall dropped nothing.
#[test]
fn curl_lftp_and_ftplib_active_and_passive_200mb_through_nat66() {
    let setup = firewalled(200 * MIB);
    let lab = &setup.lab;
    let prefix = ula_prefix(lab);
    let _agent = lab
        .start_ftpnat(&["--masquerade6", &prefix, "--port-window", &window_arg()])
        .expect("ftpnat run");
    let server = setup.server.addr6.expect("vsftpd on IPv6").into();
    let mut transfers = 0;
    // Passive first: each mode's failure shows on its own.
    for mode in [Mode::Epsv, Mode::Eprt] {
        for client in [Client::Curl, Client::Lftp, Client::Ftplib] {
            download_from(
                &setup,
                server,
                client,
                mode,
                &format!("{client:?}-{mode:?}.bin"),
            );
            transfers += 1;
            let downloaded = lab
                .dir()
                .join("client")
                .join(format!("{client:?}-{mode:?}.bin"));
            // Checked already; 200 MB each would fill the disk.
            std::fs::remove_file(downloaded).expect("removing the download");
        }
    }

    let public = public6(lab);
    let log = setup.server.log_since(0).expect("server log");
    let ula = ula_text(lab);
    assert!(!log.contains(&ula), "the server saw a ULA address:\n{log}");
    assert!(
        log.contains(&format!("CONNECT: Client \"{public}\"")),
        "the server did not see the public address connect:\n{log}"
    );
    let eprts: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("\"EPRT "))
        .collect();
    assert_eq!(eprts.len(), 3, "one EPRT per active download:\n{log}");
    let rewritten = format!("\"EPRT |2|{public}|");
    for line in &eprts {
        assert!(line.contains(&rewritten), "EPRT not rewritten: {line}");
    }
    let lan = lab
        .capture_dump(ROUTER_LAN_IF, &["-A"], "tcp port 21")
        .expect("capture");
    let sent = format!("EPRT |2|{}|", lab.ipv6().client);
    assert!(lan.contains(&sent), "the client sent no {sent}");
    let wan = lab
        .capture_dump(ROUTER_WAN_IF, &["-A"], "tcp port 21")
        .expect("capture");
    assert!(
        wan.contains(&format!("EPRT |2|{public}|")),
        "no rewritten EPRT on the WAN"
    );
    assert_no_ula_on_the_wan(lab, 21);
    assert_eq!(dropped(lab), 0, "{FORWARDED_PAST_THE_FIREWALL}");

    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(
        stats["datapath"]["control_sessions_opened"], transfers,
        "{stats}"
    );
    assert_eq!(stats["datapath"]["expectations_used"], transfers, "{stats}");
    assert_eq!(stats["datapath"]["refusals"], 0, "{stats}");
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// Logs in over IPv6 to `argv[1]`, says so with its control port and waits; announces a
/// listening port of its own with EPRT, says so and waits; retrieves `argv[2]` over it, printing
/// the server's 150, then the sha256 of what arrived.
const ANNOUNCED_ACTIVE_SESSION: &str = r#"
import sys
from ftpnat_lab import session_with_listener, retr_active
ftp, listener, host, data_port = session_with_listener(sys.argv[1])
print('logged-in', ftp.sock.getsockname()[1], flush=True)
sys.stdin.readline()
ftp.voidcmd(f'EPRT |2|{host}|{data_port}|')
print('announced', data_port, flush=True)
sys.stdin.readline()
print('done', retr_active(ftp, listener, sys.argv[2], timeout=30), flush=True)
ftp.quit()
"#;

/// The entry of an inspection table whose `field` is `value`.
fn entry_with<'a>(table: &'a Value, field: &str, value: &str) -> &'a Value {
    table
        .as_array()
        .and_then(|entries| entries.iter().find(|entry| entry[field] == value))
        .unwrap_or_else(|| panic!("no entry with {field} {value}: {table}"))
}

/// The port of an `[v6]:port` endpoint at `addr`, which must be in the window.
fn window_port_of(endpoint: &Value, addr: Ipv6Addr) -> u16 {
    let text = endpoint.as_str().unwrap_or_default();
    let port = text
        .strip_prefix(&format!("[{addr}]:"))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{endpoint} is not [{addr}]:PORT"));
    assert!(WINDOW.contains(&port), "{endpoint} outside the window");
    port
}

/// With `--public-ip6` given: once the client is logged in, `ftpnat sessions --json` shows its
/// NAT66 session as a masquerade of the client's ULA endpoint behind a window port of the public
/// address (its id), and `stats` names the prefix and the public address; after its EPRT, the
/// session's expectation delivers the public port the rewritten EPRT named (which is what the
/// server received) to the client's ULA listener. The active download ends intact.
#[test]
fn sessions_json_shows_a_nat66_session_as_masquerade_of_the_ula_client() {
    let setup = firewalled(8 * MIB);
    let lab = &setup.lab;
    let public = public6(lab);
    let prefix = ula_prefix(lab);
    let _agent = lab
        .start_ftpnat(&[
            "--masquerade6",
            &prefix,
            "--public-ip6",
            &public.to_string(),
            "--port-window",
            &window_arg(),
            "--expect-timeout",
            "30",
        ])
        .expect("ftpnat run");
    let v6 = lab.ipv6().clone();
    let mark = setup.server.log_mark();
    let mut client = lab
        .python_stepped(
            &lab.client,
            ANNOUNCED_ACTIVE_SESSION,
            &[&v6.server.to_string(), setup.file.name()],
            90,
        )
        .expect("client");
    let logged_in = client.expect("logged-in").expect("logged in");
    let control_port = &logged_in[0];

    let sessions = lab.ftpnat_json(&["sessions"]);
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
    let client_end = format!("[{}]:{control_port}", v6.client);
    let session = entry_with(&sessions, "client", &client_end);
    assert_eq!(session["kind"], "masquerade", "{session}");
    assert_eq!(
        session["server"],
        format!("[{}]:21", v6.server),
        "{session}"
    );
    window_port_of(&session["public"], public);
    assert_eq!(session["id"], session["public"], "{session}");

    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["nat"]["public_ip6"], public.to_string(), "{stats}");
    assert_eq!(
        stats["nat"]["masquerade6"],
        serde_json::json!([prefix]),
        "{stats}"
    );

    client.proceed().expect("EPRT");
    let announced = client.expect("announced").unwrap_or_else(|err| {
        panic!(
            "{err:#}\nthe datapath's counters: {}",
            lab.ftpnat_json(&["stats"])["datapath"]
        )
    });
    let data_port = &announced[0];
    let expectations = lab.ftpnat_json(&["expectations"]);
    let target = format!("[{}]:{data_port}", v6.client);
    let expectation = entry_with(&expectations, "target", &target);
    assert_eq!(expectation["peer"], v6.server.to_string(), "{expectation}");
    assert_eq!(expectation["session"], session["id"], "{expectation}");
    let announced_port = window_port_of(&expectation["public"], public);
    let log = setup.server.log_since(mark).expect("server log");
    let received = format!("\"EPRT |2|{public}|{announced_port}|\"");
    assert!(log.contains(&received), "no {received} in:\n{log}");

    client.proceed().expect("RETR");
    client.expect("150").expect("the server's data connection");
    let done = client.expect("done").expect("transfer done");
    assert_eq!(done.first(), Some(&setup.file.sha256));
    client.finish().unwrap_or_else(|err| panic!("{err:#}"));
    assert_no_ula_on_the_wan(lab, 21);
    assert_eq!(dropped(lab), 0, "{FORWARDED_PAST_THE_FIREWALL}");
}

/// vsftpd's own passive range, behind the router; never seen outside.
const SERVER_PASV_PORTS: (u16, u16) = (30000, 30009);

/// The public port the LAN's IPv6 vsftpd is published on.
const PUBLISHED_PORT: u16 = 2121;

/// vsftpd on the LAN host (the lab's `client` namespace, `fd00:1::2` and `10.0.0.2`) serving a
/// file of `size` bytes, its passive ports [`SERVER_PASV_PORTS`].
fn vsftpd_on_lan(lab: &Lab, size: u64) -> (FtpServer, TestFile) {
    let root = lab.subdir("srv-lan").expect("server root");
    let file = TestFile::create(&root.join("published.bin"), size, 6).expect("test file");
    let options = VsftpdOptions {
        pasv_ports: Some(SERVER_PASV_PORTS),
        ipv6: Some(lab.ipv6().client),
        ..VsftpdOptions::default()
    };
    let server = FtpServer::vsftpd(&lab.client, lab.spec.client, &root, lab.dir(), &options)
        .expect("vsftpd on the LAN");
    (server, file)
}

/// A vsftpd on the ULA LAN published over IPv6 (`--publish 2121=[fd00:1::2]:21,passive=…`,
/// reached at the router's public IPv6 address, `--public-ip6`'s default) through the firewall:
/// an outside IPv6 client downloads with curl, EPSV and EPRT, sha256 checked. The 229 it got
/// names a window port, never the server's own; nothing with the ULA prefix left by the WAN; the
/// firewall dropped nothing.
#[test]
fn a_vsftpd_published_over_ipv6_serves_curl_epsv_and_eprt_through_the_firewall() {
    let lab = Lab::new(LabSpec::nat66()).expect("lab");
    lab.drop_unsolicited_inbound_ipv6()
        .expect("the router's IPv6 firewall");
    let (server, file) = vsftpd_on_lan(&lab, 8 * MIB);
    let (lo, hi) = SERVER_PASV_PORTS;
    let publish = format!(
        "{PUBLISHED_PORT}=[{}]:21,passive={lo}-{hi}",
        lab.ipv6().client
    );
    let _agent = lab
        .start_ftpnat(&["--publish", &publish, "--port-window", &window_arg()])
        .expect("ftpnat run");
    let public = public6(&lab);
    for mode in [Mode::Epsv, Mode::Eprt] {
        let local = lab
            .subdir("downloads")
            .expect("downloads")
            .join(format!("{mode:?}.bin"));
        Transfer {
            client: Client::Curl,
            mode,
            server: public.into(),
            port: PUBLISHED_PORT,
            remote: file.name(),
            local: &local,
            timeout_secs: 120,
        }
        .run(&lab.server)
        .unwrap_or_else(|err| panic!("{err:#}"));
        assert_same_content(&local, &file);
    }

    let dialogue = ftpnat_tests::servers::vsftpd_dialogue(&server.log_since(0).expect("log"));
    let outside = lab.ipv6().server;
    for (command, reply) in [
        ("> EPSV", "< 229 Entering Extended Passive Mode"),
        (
            &format!("> EPRT |2|{outside}|") as &str,
            "< 200 EPRT command successful",
        ),
    ] {
        let at = dialogue
            .iter()
            .position(|line| line.starts_with(command))
            .unwrap_or_else(|| panic!("no {command} in:\n{}", dialogue.join("\n")));
        assert!(
            dialogue[at + 1].starts_with(reply),
            "{command} answered {}",
            dialogue[at + 1]
        );
    }

    let wan = lab
        .capture_dump(
            ROUTER_WAN_IF,
            &["-A"],
            &format!("tcp port {PUBLISHED_PORT}"),
        )
        .expect("capture");
    let ports: Vec<u16> = wan
        .lines()
        .filter_map(|line| line.split_once("229 Entering Extended Passive Mode (|||"))
        .filter_map(|(_, rest)| rest.split('|').next()?.parse().ok())
        .collect();
    assert_eq!(ports.len(), 1, "not one 229 on the WAN:\n{wan}");
    assert!(
        ports.iter().all(|port| WINDOW.contains(port)),
        "a 229 outside the window: {ports:?}"
    );
    assert_no_ula_on_the_wan(&lab, PUBLISHED_PORT);
    assert_eq!(dropped(&lab), 0, "{FORWARDED_PAST_THE_FIREWALL}");
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["expectations_used"], 2, "{stats}");
    assert_eq!(stats["datapath"]["refusals"], 0, "{stats}");
}
