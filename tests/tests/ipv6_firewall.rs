//! Issue 14, IPv6 firewall mode: a dual-stack router whose operator drops unsolicited inbound
//! IPv6 (`lab.drop_unsolicited_inbound_ipv6()`: conntrack's ESTABLISHED,RELATED in, everything
//! else from the WAN dropped and counted, no FTP helper). Without ftpnat, active FTP over IPv6
//! through it fails and passive works; with ftpnat (no flag: IPv6 sessions of LAN clients are
//! followed untranslated), every client and mode works, beside an IPv4 session through the same
//! agent, while an unannounced connection, one from another peer than announced and a bounce
//! EPRT still get nowhere.
//!
//! Every download is checked by sha256 and, in the server's log, for the mode it claims.

use std::{
    net::{IpAddr, Ipv6Addr},
    thread,
};

use ftpnat_tests::{
    Client, Lab, LabSpec, MIB, Mode, Transfer,
    lab::{HOST_IF, ROUTER_LAN_IF, ROUTER_WAN_IF},
    masquerade::{Setup, download_from, download_intact_from, setup},
};
use serde_json::Value;

/// A dual-stack lab behind the operator's IPv6 firewall, its vsftpd serving a file of
/// `file_size` bytes over both families.
fn firewalled(file_size: u64) -> Setup {
    let setup = setup(LabSpec::dual_stack(), file_size);
    setup
        .lab
        .drop_unsolicited_inbound_ipv6()
        .expect("the router's IPv6 firewall");
    setup
}

/// The server's IPv6 address.
fn server6(setup: &Setup) -> IpAddr {
    setup.server.addr6.expect("vsftpd on IPv6").into()
}

/// Why the firewall's drop counter stays at zero while ftpnat follows the sessions.
const FORWARDED_PAST_THE_FIREWALL: &str = "the firewall dropped packets: ftpnat forwards every \
     packet of an announced data connection past it, the opening SYN first";

fn dropped(lab: &Lab) -> u64 {
    lab.unsolicited_inbound_ipv6_dropped()
        .expect("the firewall's drop counter")
}

/// The baseline the issue starts from: through the firewall alone, an active download over IPv6
/// (curl's EPRT, accepted by the server) fails because the server's data connection is dropped,
/// and counted; a passive one (EPSV), which the client opens, works.
#[test]
fn without_ftpnat_the_firewall_stops_active_ftp_over_ipv6_and_passive_works() {
    let setup = firewalled(4 * MIB);
    let lab = &setup.lab;
    download_from(
        &setup,
        server6(&setup),
        Client::Curl,
        Mode::Epsv,
        "epsv.bin",
    );

    let before = dropped(lab);
    let mark = setup.server.log_mark();
    let local = lab.dir().join("eprt.bin");
    let active = Transfer {
        client: Client::Curl,
        mode: Mode::Eprt,
        server: server6(&setup),
        port: setup.server.port,
        remote: setup.file.name(),
        local: &local,
        // Long enough for the server's connection to be tried and retried, short enough for a
        // test: the server would keep trying for a minute.
        timeout_secs: 10,
    }
    .run(&lab.client);
    assert!(
        active.is_err(),
        "active FTP over IPv6 got through the firewall"
    );
    assert!(
        dropped(lab) > before,
        "the firewall did not drop the server's data connection"
    );
    // The command went through and was accepted: what failed was the connection it announced.
    let log = setup.server.log_since(mark).expect("server log");
    let eprt = format!("\"EPRT |2|{}|", lab.ipv6().client);
    assert!(log.contains(&eprt), "no {eprt} in:\n{log}");
    assert!(log.contains("\"200 EPRT command successful"), "{log}");
}

/// curl over IPv6 through the firewall with ftpnat, 200 MB in each mode, and an IPv4 download
/// through the same agent, alone and at the same time as an IPv6 one. The EPRT crosses the router
/// untouched (IPv6 firewall mode translates nothing) and the firewall drops nothing: ftpnat
/// forwards the data connections past it.
#[test]
fn curl_eprt_and_epsv_200mb_over_ipv6_through_the_firewall_and_ipv4_beside_them() {
    let setup = firewalled(200 * MIB);
    let lab = &setup.lab;
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let v6 = server6(&setup);
    for mode in [Mode::Eprt, Mode::Epsv] {
        download_from(&setup, v6, Client::Curl, mode, &format!("v6-{mode:?}.bin"));
    }
    let v4 = setup.server.addr.into();
    download_from(&setup, v4, Client::Curl, Mode::Port, "v4-port.bin");
    // One IPv4 and one IPv6 session through the agent at once, both active.
    thread::scope(|scope| {
        scope.spawn(|| download_intact_from(&setup, v4, Client::Curl, Mode::Port, "v4-both.bin"));
        scope.spawn(|| download_intact_from(&setup, v6, Client::Curl, Mode::Eprt, "v6-both.bin"));
    });

    assert_eq!(dropped(lab), 0, "{FORWARDED_PAST_THE_FIREWALL}");
    let wan = lab.capture_text(ROUTER_WAN_IF).expect("capture");
    let untouched = format!("EPRT |2|{}|", lab.ipv6().client);
    assert!(
        wan.contains(&untouched),
        "no untouched {untouched} on the WAN"
    );
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["control_sessions_opened"], 5, "{stats}");
    assert_eq!(stats["datapath"]["expectations_used"], 5, "{stats}");
    assert_eq!(stats["datapath"]["refusals"], 0, "{stats}");
}

/// lftp and Python's ftplib over IPv6 through the firewall with ftpnat, active (EPRT) and passive
/// (EPSV), 200 MB each, the firewall dropping nothing.
#[test]
fn lftp_and_python_ftplib_active_and_passive_200mb_over_ipv6_through_the_firewall() {
    let setup = firewalled(200 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let v6 = server6(&setup);
    for client in [Client::Lftp, Client::Ftplib] {
        for mode in [Mode::Eprt, Mode::Epsv] {
            download_from(
                &setup,
                v6,
                client,
                mode,
                &format!("{client:?}-{mode:?}.bin"),
            );
        }
    }
    assert_eq!(dropped(&setup.lab), 0, "{FORWARDED_PAST_THE_FIREWALL}");
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["expectations_used"], 4, "{stats}");
}

/// Logs in over IPv6 to `argv[1]`, listens on two ports of the client's address, announces only
/// the first with EPRT and says so: `listening PORT UNANNOUNCED`; then, told to go
/// on, retrieves `argv[2]` over the announced one and prints its sha256.
const ANNOUNCES_ONE_OF_TWO: &str = r#"
import socket, sys
from ftpnat_lab import session_with_listener, retr_active, family_of
ftp, listener, host, port = session_with_listener(sys.argv[1])
unannounced = socket.create_server((host, 0), family=family_of(host))
ftp.voidcmd(f'EPRT |2|{host}|{port}|')
print('listening', port, unannounced.getsockname()[1], flush=True)
sys.stdin.readline()
print('done', retr_active(ftp, listener, sys.argv[2], timeout=30), flush=True)
ftp.quit()
"#;

/// With ftpnat following an IPv6 session that announced one port: a connection from the server
/// to another port the client listens on is dropped by the firewall (and counted there), one
/// from another WAN host to the announced port is turned away (counted by ftpnat as a wrong
/// peer), and the announced connection from the server still works afterwards: the wrong peer
/// did not use it up.
#[test]
fn unannounced_and_wrong_peer_connections_over_ipv6_are_dropped_and_counted() {
    let setup = firewalled(4 * MIB);
    let lab = &setup.lab;
    // A second host on the WAN: another address of the server's namespace.
    let other_peer = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x11);
    let v6 = lab.ipv6().clone();
    lab.server
        .ip(&[
            "-6",
            "addr",
            "add",
            &format!("{other_peer}/{}", v6.wan_prefix_len),
            "dev",
            HOST_IF,
            "nodad",
        ])
        .expect("second server address");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = v6.server.to_string();
    let mut client = lab
        .python_stepped(
            &lab.client,
            ANNOUNCES_ONE_OF_TWO,
            &[&server, setup.file.name()],
            90,
        )
        .expect("client");
    let ports = client.expect("listening").expect("EPRT accepted");
    let (announced, unannounced) = (&ports[0], &ports[1]);
    let client_addr = v6.client.to_string();

    let before = dropped(lab);
    let out = lab
        .python(
            &lab.server,
            ftpnat_tests::clients::CONNECT,
            &[&client_addr, unannounced, "3", &server],
            10,
        )
        .expect("connect script");
    let outcome = String::from_utf8_lossy(&out.stdout);
    assert_eq!(outcome.trim(), "timed out", "an unannounced connection");
    assert!(
        dropped(lab) > before,
        "the unannounced connection was not dropped by the firewall"
    );

    let wrong_peer = lab.datapath_counter("pinhole_wrong_peer");
    let out = lab
        .python(
            &lab.server,
            ftpnat_tests::clients::CONNECT,
            &[&client_addr, announced, "3", &other_peer.to_string()],
            10,
        )
        .expect("connect script");
    let outcome = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        outcome.trim(),
        "timed out",
        "a connection from {other_peer}"
    );
    assert!(
        lab.datapath_counter("pinhole_wrong_peer") > wrong_peer,
        "the connection from another peer was not counted"
    );

    client.proceed().expect("RETR");
    client.expect("150").expect("the server's data connection");
    let done = client.expect("done").expect("transfer done");
    assert_eq!(done.first(), Some(&setup.file.sha256));
    client.finish().unwrap_or_else(|err| panic!("{err:#}"));
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["expectations_used"], 1, "{stats}");
}

/// An EPRT naming another host of the LAN (bounce) and one naming the client's privileged port
/// 80, each answered; then a passive download in the same session.
const BOUNCE: &str = r#"
import ftplib, sys
from ftpnat_lab import login, retr_digest
ftp = login(sys.argv[1])
me = ftp.sock.getsockname()[0]
for line in (f"EPRT |2|{sys.argv[3]}|50000|", f"EPRT |2|{me}|80|"):
    try:
        print('accepted', ftp.sendcmd(line))
    except ftplib.error_perm as refused:
        print('refused', refused)
ftp.set_pasv(True)
print('sha256', retr_digest(ftp, sys.argv[2]))
ftp.quit()
"#;

/// As for IPv4 (masquerade_refusals): an EPRT `|2|` naming another host, and one naming a
/// privileged port, are refused by ftpnat's policy — counted under their reasons, passed on
/// untouched for the server to refuse too, nothing opened — and the session goes on.
#[test]
fn bounce_and_privileged_eprt_over_ipv6_open_nothing_and_the_session_goes_on() {
    let setup = firewalled(4 * MIB);
    let lab = &setup.lab;
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let v6 = lab.ipv6().clone();
    let elsewhere = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x99);
    let out = lab
        .client_python(
            BOUNCE,
            &[
                &v6.server.to_string(),
                setup.file.name(),
                &elsewhere.to_string(),
            ],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 3 && lines[..2].iter().all(|line| line.starts_with("refused 5")),
        "{stdout}"
    );
    assert_eq!(
        lines[2],
        format!("sha256 {}", setup.file.sha256),
        "{stdout}"
    );
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["refusals"], 2, "{stats}");
    assert_eq!(stats["refusals_by_reason"]["bounce"], 1, "{stats}");
    assert_eq!(stats["refusals_by_reason"]["privileged_port"], 1, "{stats}");
    // Only the passive transfer's expectation was ever created.
    assert_eq!(stats["datapath"]["expectations_created"], 1, "{stats}");
    assert_eq!(stats["datapath"]["expectations_used"], 1, "{stats}");
    let wan = lab.capture_text(ROUTER_WAN_IF).expect("capture");
    for untouched in [
        format!("EPRT |2|{elsewhere}|50000|"),
        format!("EPRT |2|{}|80|", v6.client),
    ] {
        assert!(
            wan.contains(&untouched),
            "{untouched} did not pass untouched"
        );
    }
}

/// The entry of an inspection table whose `field` is `value`.
fn entry_with<'a>(table: &'a Value, field: &str, value: &str) -> &'a Value {
    table
        .as_array()
        .and_then(|entries| entries.iter().find(|entry| entry[field] == value))
        .unwrap_or_else(|| panic!("no entry with {field} {value}: {table}"))
}

/// `ftpnat <command>` without `--json`, which must succeed: its output.
fn human(lab: &Lab, command: &str) -> String {
    let out = lab.ftpnat(&[command]).expect("ftpnat");
    assert!(out.status.success(), "ftpnat {command}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An IPv6 and an IPv4 active session at once through one agent: `ftpnat sessions`,
/// `expectations` and `flows` list both, the IPv6 one with its addresses as IPv6 (`[v6]:port`
/// endpoints, bare addresses where the field is an address), untranslated; both downloads end
/// intact.
#[test]
fn inspection_shows_an_ipv6_session_beside_an_ipv4_one() {
    let setup = firewalled(8 * MIB);
    let lab = &setup.lab;
    let _agent = lab
        .start_ftpnat(&["--expect-timeout", "30"])
        .expect("ftpnat run");
    let v6 = lab.ipv6().clone();
    let start = |server: String| {
        let mut client = lab
            .python_stepped(
                &lab.client,
                ftpnat_tests::clients::INSPECTED_ACTIVE_SESSION,
                &[&server, setup.file.name()],
                90,
            )
            .expect("client");
        let announced = client.expect("announced").expect("announced");
        (client, announced[0].clone(), announced[1].clone())
    };
    let (mut client6, control6, data6) = start(v6.server.to_string());
    let (mut client4, control4, _) = start(lab.spec.server.to_string());

    let sessions = lab.ftpnat_json(&["sessions"]);
    assert_eq!(sessions.as_array().map(Vec::len), Some(2), "{sessions}");
    let client_end = format!("[{}]:{control6}", v6.client);
    let session6 = entry_with(&sessions, "client", &client_end);
    assert_eq!(session6["kind"], "firewall", "{session6}");
    // Untranslated, the session keeps the client's endpoint on the way out, which names it.
    assert_eq!(session6["id"], client_end.as_str(), "{session6}");
    assert_eq!(
        session6["server"],
        format!("[{}]:21", v6.server),
        "{session6}"
    );
    let client4_end = format!("{}:{control4}", lab.spec.client);
    let session4 = entry_with(&sessions, "client", &client4_end);
    assert_eq!(
        session4["server"],
        format!("{}:21", lab.spec.server),
        "{session4}"
    );
    let table = human(lab, "sessions");
    for shown in [&client_end, &client4_end] {
        assert!(table.contains(shown.as_str()), "no {shown} in:\n{table}");
    }

    let expectations = lab.ftpnat_json(&["expectations"]);
    let target = format!("[{}]:{data6}", v6.client);
    let expectation6 = entry_with(&expectations, "target", &target);
    assert_eq!(
        expectation6["peer"],
        v6.server.to_string(),
        "{expectation6}"
    );
    assert_eq!(expectation6["session"], session6["id"], "{expectation6}");
    let table = human(lab, "expectations");
    assert!(table.contains(&target), "no {target} in:\n{table}");

    client6.proceed().expect("RETR");
    client6
        .expect("transferring")
        .expect("data connection open");
    let flows = lab.ftpnat_json(&["flows"]);
    // vsftpd connects from port 20 straight to the client's listener: nothing translated.
    let orig = format!("[{}]:20 -> {target}", v6.server);
    let data = entry_with(&flows, "orig", &orig);
    assert_eq!(data["kind"], "data", "{data}");
    assert_eq!(
        data["reply"],
        format!("{target} -> [{}]:20", v6.server),
        "{data}"
    );
    assert_eq!(data["session"], session6["id"], "{data}");
    let table = human(lab, "flows");
    assert!(table.contains(&orig), "no {orig} in:\n{table}");

    client4.proceed().expect("RETR");
    client4
        .expect("transferring")
        .expect("data connection open");
    for client in [&mut client6, &mut client4] {
        client.proceed().expect("rest of the transfer");
        let done = client.expect("done").expect("transfer done");
        assert_eq!(done.first(), Some(&setup.file.sha256));
        client.finish().unwrap_or_else(|err| panic!("{err:#}"));
    }
}

/// A router whose LAN has IPv6 only (its IPv4 address removed before ftpnat starts) runs in
/// firewall mode: the agent starts without an IPv4 masquerade, says so, and follows active and
/// passive FTP over IPv6 through the firewall.
#[test]
fn a_lan_with_ipv6_only_runs_in_firewall_mode() {
    let setup = firewalled(4 * MIB);
    let lab = &setup.lab;
    lab.router
        .ip(&["-4", "addr", "flush", "dev", ROUTER_LAN_IF])
        .expect("removing the LAN's IPv4 address");
    let agent = lab
        .start_ftpnat(&[])
        .expect("ftpnat run on an IPv6-only LAN");
    assert!(
        agent.log_text().contains("no IPv4 FTP masqueraded"),
        "{}",
        agent.log_text()
    );
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(
        stats["nat"]["masquerade"],
        Value::Array(Vec::new()),
        "{stats}"
    );
    for mode in [Mode::Eprt, Mode::Epsv] {
        download_from(
            &setup,
            server6(&setup),
            Client::Curl,
            mode,
            &format!("{mode:?}.bin"),
        );
    }
    assert_eq!(dropped(lab), 0, "{FORWARDED_PAST_THE_FIREWALL}");
}
