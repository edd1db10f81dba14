//! Issue 12, item 1: full tables fail closed, counted, and cannot be filled from outside. With a
//! tiny `--max-sessions`, a connection that finds no room is refused (a LAN client gets a reset)
//! and counted, nothing leaves the WAN with a private source address, and the sessions already
//! admitted go on transferring; spoofed SYNs that never complete their handshake leave the tables
//! in seconds, not after the 900 s a control connection may idle; one host cannot hold more than
//! its share of the sessions while another still gets in; and a pinned datapath of another size
//! is not adopted.

use std::time::Duration;

use ftpnat_tests::{
    Client, Lab, LabSpec, MIB, Mode,
    lab::{HOST_IF, ROUTER_WAN_IF, wait_until},
    masquerade::{Setup, download_intact, setup},
};

/// What left the router's WAN side from a LAN address: must be nothing, ever.
fn private_sources_on_the_wan(setup: &Setup) -> String {
    let [a, b, c, _] = setup.lab.spec.client.octets();
    let lan = format!("src net {a}.{b}.{c}.0/24");
    setup
        .lab
        .capture_dump(ROUTER_WAN_IF, &[], &lan)
        .expect("WAN capture")
}

/// Two sessions, a third refused at once, then a passive and an active download in the admitted
/// ones.
const THIRD_SESSION: &str = r#"
import socket, sys
from ftpnat_lab import login, retr_digest
server, name = sys.argv[1], sys.argv[2]
first, second = login(server), login(server)
third = socket.socket()
third.settimeout(10)
try:
    third.connect((server, 21))
    print('third connected')
except ConnectionRefusedError:
    print('third refused')
except socket.timeout:
    print('third timeout')
first.set_pasv(True)
print('first', retr_digest(first, name))
second.set_pasv(False)
print('second', retr_digest(second, name))
first.quit()
second.quit()
"#;

#[test]
fn a_full_session_table_refuses_a_new_session_and_the_admitted_ones_transfer() {
    let setup = setup(LabSpec::default(), 4 * MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--max-sessions", "2"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(THIRD_SESSION, &[&server, setup.file.name()], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("third refused"), "{text}");
    for session in ["first", "second"] {
        assert!(
            text.contains(&format!("{session} {}", setup.file.sha256)),
            "the {session} session's download: {text}"
        );
    }
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["session_table_full"], 1, "{stats}");
    assert_eq!(stats["datapath"]["control_sessions_opened"], 2, "{stats}");
    assert_eq!(stats["capacity"]["sessions"], 2, "{stats}");
    assert_eq!(stats["capacity"]["flows"], 8, "{stats}");
    assert_eq!(stats["capacity"]["expectations"], 8, "{stats}");
    let leaked = private_sources_on_the_wan(&setup);
    assert!(
        leaked.trim().is_empty(),
        "private sources on the WAN:\n{leaked}"
    );
}

/// One session whose flow table (`--max-sessions 1`: 8 entries, the control connection's two and
/// three data connections') is filled by data connections opened and left: the fourth is refused.
/// Then, once the test saw the refused ones swept, a download in the same session.
const FOURTH_DATA_CONNECTION: &str = r#"
import ftplib, socket, sys
from ftpnat_lab import login, retr_digest
server, name = sys.argv[1], sys.argv[2]
ftp = login(server)
ftp.voidcmd('TYPE I')
held, outcome = [], 'none refused'
for attempt in range(1, 5):
    host, port = ftplib.parse227(ftp.sendcmd('PASV'))
    data = socket.socket()
    data.settimeout(10)
    try:
        data.connect((host, port))
        held.append(data)
    except ConnectionRefusedError:
        outcome = f'refused {attempt}'
        break
for data in held:
    data.close()
print(outcome, flush=True)
input()
print('digest', retr_digest(ftp, name), flush=True)
ftp.quit()
"#;

#[test]
fn a_full_flow_table_refuses_a_data_connection_and_nothing_leaves_with_a_private_source() {
    let setup = setup(LabSpec::default(), MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--max-sessions", "1"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let mut script = setup
        .lab
        .python_stepped(
            &setup.lab.client,
            FOURTH_DATA_CONNECTION,
            &[&server, setup.file.name()],
            120,
        )
        .expect("script");
    let refused = script
        .expect("refused")
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(refused, ["4"], "the fourth data connection was not refused");
    assert_eq!(setup.lab.datapath_counter("flow_table_full"), 1);
    // The data connections ended: once swept, the session has room again.
    wait_until(Duration::from_secs(30), || {
        setup.lab.ftpnat_json(&["stats"])["flows"] == 1
    })
    .unwrap_or_else(|_| panic!("not swept: {}", setup.lab.ftpnat_json(&["stats"])));
    script.proceed().expect("go on");
    let rest = script.finish().unwrap_or_else(|err| panic!("{err:#}"));
    assert!(
        rest.contains(&format!("digest {}", setup.file.sha256)),
        "{rest}"
    );
    let leaked = private_sources_on_the_wan(&setup);
    assert!(
        leaked.trim().is_empty(),
        "private sources on the WAN:\n{leaked}"
    );
}

/// Sends `count` (argv 2) SYNs to argv 1, port 21, from spoofed sources (argv 3, then the next
/// addresses), hand-built on a raw socket: the server answers each, and no one ever completes a
/// handshake.
const SPOOFED_SYNS: &str = r#"
import ipaddress, random, socket, struct, sys
server, count, first = sys.argv[1], int(sys.argv[2]), ipaddress.IPv4Address(sys.argv[3])

def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack(f'!{len(data) // 2}H', data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff

raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton(server)
for i in range(count):
    src = (first + i).packed
    tcp = struct.pack('!HHIIBBHHH', 40000 + i, 21, random.getrandbits(32), 0, 5 << 4, 0x02,
                      64240, 0, 0)
    pseudo = src + dst + struct.pack('!BBH', 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack('!H', checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), i + 1, 0, 64,
                     socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack('!H', checksum(ip)) + ip[12:]
    raw.sendto(ip + tcp, (server, 0))
print('sent', count)
"#;

#[test]
fn spoofed_syns_that_never_complete_the_handshake_leave_the_tables_in_seconds() {
    let setup = setup(LabSpec::default(), MIB);
    let lab = &setup.lab;
    // The server retransmits an unanswered SYN-ACK once, not five times over a minute: each
    // retransmission refreshes the connection, and the test need not wait for them.
    lab.server
        .sysctl("net.ipv4.tcp_synack_retries", "1")
        .expect("sysctl");
    let _agent = lab
        .start_ftpnat(&["--max-sessions", "4"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    lab.client_python(SPOOFED_SYNS, &[&server, "20", "10.0.0.100"], 30)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["sessions"], 4, "{stats}");
    assert_eq!(stats["datapath"]["session_table_full"], 16, "{stats}");
    // While they hold the table, a real client is refused at once, not left to time out.
    let out = lab
        .client_python(ftpnat_tests::clients::CONNECT, &[&server, "21", "10"], 30)
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    // Answered by the server (its SYN-ACKs came back through ftpnat) but never completed: gone
    // after the handshake time (20 s since the last SYN-ACK), not after the control idle time
    // (900 s) that an established connection may stay.
    let flows = lab.ftpnat_json(&["flows"]);
    assert!(
        flows.to_string().contains("10.0.0.100"),
        "the spoofed connections are not in the flow table: {flows}"
    );
    wait_until(Duration::from_secs(90), || {
        let stats = lab.ftpnat_json(&["stats"]);
        stats["sessions"] == 0 && stats["flows"] == 0 && stats["window"]["in_use"] == 0
    })
    .unwrap_or_else(|_| panic!("still held: {}", lab.ftpnat_json(&["stats"])));
    download_intact(&setup, Client::Curl, Mode::Pasv, "after.bin");
    let leaked = private_sources_on_the_wan(&setup);
    assert!(
        leaked.trim().is_empty(),
        "private sources on the WAN:\n{leaked}"
    );
}

/// Sessions from the client's two addresses (argv 3 and 4): two from the first, a third from it
/// refused, then one from the second address that downloads, and a download in the first.
const THIRD_FROM_ONE_HOST: &str = r#"
import ftplib, sys
from ftpnat_lab import retr_digest
server, name, host, other = sys.argv[1:5]

def session(source):
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=20, source_address=(source, 0))
    ftp.login()
    return ftp

first, second = session(host), session(host)
try:
    session(host)
    print('third admitted')
except ConnectionRefusedError:
    print('third refused')
print('other', retr_digest(session(other), name))
print('first', retr_digest(first, name))
"#;

#[test]
fn one_host_cannot_take_more_than_its_share_while_another_still_gets_in() {
    let setup = setup(LabSpec::default(), MIB);
    let lab = &setup.lab;
    let other = "10.0.0.3";
    lab.client
        .ip(&["addr", "add", &format!("{other}/24"), "dev", HOST_IF])
        .expect("a second client address");
    let _agent = lab
        .start_ftpnat(&["--max-sessions-per-source", "2"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let host = lab.spec.client.to_string();
    let out = lab
        .client_python(
            THIRD_FROM_ONE_HOST,
            &[&server, setup.file.name(), &host, other],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("third refused"), "{text}");
    for session in ["other", "first"] {
        assert!(
            text.contains(&format!("{session} {}", setup.file.sha256)),
            "the {session} session's download: {text}"
        );
    }
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["source_limit"], 1, "{stats}");
    assert_eq!(stats["datapath"]["session_table_full"], 0, "{stats}");
}

#[test]
fn a_pinned_datapath_of_another_size_is_not_adopted() {
    let setup = setup(LabSpec::default(), MIB);
    let lab = &setup.lab;
    let mut agent = lab
        .start_ftpnat(&["--max-sessions", "4"])
        .expect("ftpnat run");
    // Stopped, the datapath stays for the next agent.
    agent.stop().expect("stop");
    let pin_dir = lab.pin_dir().expect("pin dir");
    let (status, stderr) = lab.run_ftpnat_to_end(&pin_dir, &["--max-sessions", "8"]);
    assert!(!status.success(), "adopted a datapath of another size");
    for difference in [
        "tables sized for another --max-sessions than 8 (",
        "SESSIONS 4 entries, not 8",
        "FLOWS 32 entries, not 64",
    ] {
        assert!(stderr.contains(difference), "{stderr}");
    }
    // The same size is adopted, and it still carries transfers.
    let _agent = lab
        .start_ftpnat(&["--max-sessions", "4"])
        .expect("ftpnat run adopting");
    download_intact(&setup, Client::Curl, Mode::Port, "adopted.bin");
    assert_eq!(lab.ftpnat_json(&["stats"])["capacity"]["sessions"], 4);
}

/// Four PASVs never used fill the expectation table of `--max-sessions 1` (4 expectations); then
/// a PORT, whose expectation finds no room.
const PORT_AFTER_FOUR_PASV: &str = r#"
import ftplib, sys
from ftpnat_lab import login
ftp = login(sys.argv[1])
for _ in range(4):
    ftp.sendcmd('PASV')
me = ftp.sock.getsockname()[0].replace('.', ',')
try:
    print('port', ftp.sendcmd(f'PORT {me},200,1'))
except ftplib.error_perm as err:
    print('port', err)
ftp.quit()
"#;

#[test]
fn a_port_that_finds_the_expectation_table_full_is_refused_not_passed_with_the_private_address() {
    let setup = setup(LabSpec::default(), MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--max-sessions", "1", "--max-expectations-per-session", "8"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(PORT_AFTER_FOUR_PASV, &[&server], 30)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("port 500"),
        "the server accepted the PORT: {text}"
    );
    assert_eq!(setup.lab.datapath_counter("expectation_table_full"), 1);
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        wan.contains("PORT 0,0,0,0,0,0"),
        "no refused PORT on the WAN"
    );
    let private = format!(
        "PORT {}",
        setup.lab.spec.client.to_string().replace('.', ",")
    );
    assert!(
        !wan.contains(&private),
        "the private address reached the server"
    );
}

/// The attack of issue 12 on a published server: SYNs to the published port from twenty spoofed
/// outside sources of one /24. The /24's share (`--max-sessions-per-subnet 4`) is all it gets, the
/// rest is dropped and counted; a client from another network still downloads; the four expire
/// in seconds.
#[test]
fn spoofed_syns_to_a_published_server_take_only_their_subnets_share_and_expire() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let root = lab.subdir("srv").expect("server root");
    let file = ftpnat_tests::TestFile::create(&root.join("data.bin"), MIB, 6).expect("file");
    let _server = ftpnat_tests::FtpServer::vsftpd(
        &lab.client,
        lab.spec.client,
        &root,
        lab.dir(),
        &ftpnat_tests::servers::VsftpdOptions::default(),
    )
    .expect("vsftpd on the LAN");
    lab.client
        .sysctl("net.ipv4.tcp_synack_retries", "1")
        .expect("sysctl");
    let published = format!("21={}", lab.spec.client);
    let _agent = lab
        .start_ftpnat(&[
            "--publish",
            &published,
            "--port-window",
            "62000-62099",
            "--max-sessions-per-subnet",
            "4",
        ])
        .expect("ftpnat run");
    let public = lab.spec.router_wan.to_string();
    lab.python(
        &lab.server,
        SPOOFED_SYNS,
        &[&public, "20", "198.51.100.1"],
        30,
    )
    .unwrap_or_else(|err| panic!("{err:#}"));
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["sessions"], 4, "{stats}");
    assert_eq!(stats["datapath"]["source_limit"], 16, "{stats}");
    // A client of another network is not held back by them.
    let local = lab
        .subdir("downloads")
        .expect("downloads")
        .join("outside.bin");
    ftpnat_tests::Transfer {
        client: Client::Curl,
        mode: Mode::Pasv,
        server: lab.spec.router_wan.into(),
        port: 21,
        remote: file.name(),
        local: &local,
        timeout_secs: 120,
    }
    .run(&lab.server)
    .unwrap_or_else(|err| panic!("{err:#}"));
    ftpnat_tests::files::assert_same_content(&local, &file);
    wait_until(Duration::from_secs(90), || {
        let stats = lab.ftpnat_json(&["stats"]);
        stats["sessions"] == 0 && stats["flows"] == 0
    })
    .unwrap_or_else(|_| panic!("still held: {}", lab.ftpnat_json(&["stats"])));
}
