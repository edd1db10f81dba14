//! Issue 4: FTP clients behind the router reach a server that has no route back to the LAN, with
//! ftpnat translating the control and data connections in eBPF and no netfilter rule at all.
//!
//! Every download here is checked twice: by sha256, and in the server's protocol log, which must
//! show the data connection opened in the mode the test claims (curl falls back from EPRT to PORT
//! and from EPSV to PASV and still gets its file) and never the client's private address.

use std::{net::Ipv4Addr, ops::RangeInclusive, time::Duration};

use ftpnat_tests::{
    Client, FtpServer, Lab, LabSpec, Mode, TestFile, Transfer,
    files::assert_same_content,
    lab::{HOST_IF, ROUTER_LAN_IF, ROUTER_WAN_IF, wait_until},
    netns::NetNs,
    servers::{VsftpdOptions, data_commands_in_mode, vsftpd_dialogue},
};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

struct Setup {
    lab: Lab,
    server: FtpServer,
    file: TestFile,
}

fn setup(spec: LabSpec, file_size: u64) -> Setup {
    setup_with(spec, file_size, &VsftpdOptions::default())
}

fn setup_with(spec: LabSpec, file_size: u64, options: &VsftpdOptions) -> Setup {
    let lab = Lab::new(spec).expect("lab");
    let (server, file) = lab
        .serve_file_with(file_size, 4, options)
        .expect("vsftpd serving a file");
    Setup { lab, server, file }
}

/// The server's protocol dialogue since `mark` (see [`FtpServer::log_mark`]), after checking that
/// the client's private address appears nowhere in it: neither as the peer of the control
/// connection nor inside a command.
fn dialogue_since(setup: &Setup, mark: u64) -> Vec<String> {
    let log = setup.server.log_since(mark).expect("server log");
    let client = setup.lab.spec.client;
    for private in [client.to_string(), commas(client)] {
        assert!(
            !log.contains(&private),
            "the server saw the client's private address {private}:\n{log}"
        );
    }
    vsftpd_dialogue(&log)
}

/// Downloads the served file with `client` in `mode`, checks it by sha256 and checks in the
/// server's log that the data connection was opened in `mode`, as the server accepted it. Returns
/// the session's dialogue.
fn download(setup: &Setup, client: Client, mode: Mode, name: &str) -> Vec<String> {
    let mark = setup.server.log_mark();
    download_intact(setup, client, mode, name);
    let dialogue = dialogue_since(setup, mark);
    data_commands_in_mode(&dialogue, mode).unwrap_or_else(|err| panic!("{err:#}"));
    dialogue
}

/// Downloads the served file with `client` in `mode` into `name` and checks it by sha256, without
/// looking at the server's log: for downloads that run at the same time, where one session's
/// check would also read the others' lines, maybe a command whose reply is not logged yet.
fn download_intact(setup: &Setup, client: Client, mode: Mode, name: &str) {
    let local = setup.lab.subdir("client").expect("client dir").join(name);
    Transfer {
        client,
        mode,
        server: setup.server.addr,
        port: setup.server.port,
        remote: setup.file.name(),
        local: &local,
        timeout_secs: 120,
    }
    .run(&setup.lab.client)
    .unwrap_or_else(|err| panic!("{err:#}"));
    assert_same_content(&local, &setup.file);
}

/// netfilter's connection table on the router has an entry with `entry` (traffic it tracked),
/// and none with the kernel's FTP helper.
fn assert_tracked_without_ftp_helper(lab: &Lab, entry: &str) {
    let table = lab.router.exec("conntrack", &["-L"]).expect("conntrack");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(entry),
        "netfilter tracked nothing with {entry}:\n{table}"
    );
    assert!(
        !table.contains("helper=ftp"),
        "the kernel's FTP helper was involved:\n{table}"
    );
}

fn ftpnat_json(lab: &Lab, command: &str) -> Value {
    lab.ftpnat_json(&[command])
        .unwrap_or_else(|err| panic!("{err:#}"))
}

fn datapath_counter(lab: &Lab, name: &str) -> u64 {
    let stats = ftpnat_json(lab, "stats");
    stats["datapath"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no datapath counter {name}: {stats}"))
}

/// An address as PORT and 227 write it: `10,0,0,2`.
fn commas(addr: Ipv4Addr) -> String {
    addr.octets().map(|o| o.to_string()).join(",")
}

/// The port window ftpnat reports in `ftpnat stats --json`.
fn window_of(stats: &Value) -> RangeInclusive<u16> {
    let range = stats["window"]["range"].as_str().expect("window range");
    let (lo, hi) = range.split_once('-').expect("LO-HI");
    lo.parse().expect("window start")..=hi.parse().expect("window end")
}

/// The port of `endpoint` (`"ip:port"`), after checking its address is `addr` and its port lies in
/// `window`.
fn window_port(endpoint: &Value, addr: Ipv4Addr, window: &RangeInclusive<u16>) -> u16 {
    let text = endpoint
        .as_str()
        .unwrap_or_else(|| panic!("not an endpoint: {endpoint}"));
    let (ip, port) = text.rsplit_once(':').expect("ip:port");
    assert_eq!(ip, addr.to_string(), "{text}");
    let port: u16 = port.parse().expect("port");
    assert!(
        window.contains(&port),
        "{text} is outside the window {window:?}"
    );
    port
}

#[test]
fn curl_port_eprt_pasv_and_epsv_200mb_without_netfilter() {
    let setup = setup(LabSpec::default(), 200 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Port, Mode::Eprt, Mode::Pasv, Mode::Epsv] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    // The server's side saw only the public address: in the IP headers and in PORT/EPRT.
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        !wan.contains("10.0.0.2"),
        "the client's address leaked to the WAN"
    );
    assert!(
        !wan.contains("10,0,0,2"),
        "a PORT with the client's address reached the server"
    );
    assert!(
        wan.contains("PORT 203,0,113,254,"),
        "no rewritten PORT on the WAN"
    );
    assert!(
        wan.contains("|1|203.0.113.254|"),
        "no rewritten EPRT on the WAN"
    );
    let stats = ftpnat_json(&setup.lab, "stats");
    assert_eq!(stats["datapath"]["expectations_used"], 4, "{stats}");
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// A greeting of 120 `220-` lines (several segments, each with more lines than the server stage
/// may stop at) ends in its `220 ` line as the session sees it: the lines inside a multi-line reply
/// take no pass, so the replies after it are read and every mode works.
#[test]
fn a_long_multi_line_banner_leaves_every_mode_working() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab
        .serve_file_with(
            MIB,
            31,
            &VsftpdOptions {
                banner_lines: 120,
                ..VsftpdOptions::default()
            },
        )
        .expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Pasv, Mode::Epsv, Mode::Port, Mode::Eprt] {
        lab.curl_from_client(&server, &file, mode)
            .unwrap_or_else(|err| panic!("{mode:?} after a long banner: {err:#}"));
    }
    let stats = ftpnat_json(&lab, "stats");
    assert_eq!(stats["datapath"]["expectations_used"], 4, "{stats}");
    assert_eq!(stats["datapath"]["segments_partly_examined"], 0, "{stats}");
    assert_eq!(stats["datapath"]["refusals"], 0, "{stats}");
}

/// Five gets in one lftp session, active then passive: each run is one control session (a
/// reconnecting client would pass the checksums too) whose five data connections each used an
/// expectation, in the mode the server accepted five times.
#[test]
fn lftp_five_transfers_per_session_and_python_ftplib_200mb() {
    let setup = setup(LabSpec::default(), 200 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let dir = setup.lab.subdir("client").expect("client dir");
    for (passive, mode) in [("off", Mode::Port), ("on", Mode::Pasv)] {
        let gets: String = (0..5)
            .map(|i| {
                format!(
                    "get {} -o {}/{mode:?}-{i}.bin; ",
                    setup.file.name(),
                    dir.display()
                )
            })
            .collect();
        let script = format!(
            "set net:max-retries 1; set net:timeout 20; set ftp:passive-mode {passive}; \
             set ftp:prefer-epsv no; open ftp://{}; {gets}bye",
            setup.server.addr
        );
        let sessions_before = datapath_counter(&setup.lab, "control_sessions_opened");
        let used_before = datapath_counter(&setup.lab, "expectations_used");
        let mark = setup.server.log_mark();
        let out = setup
            .lab
            .client
            .command("timeout", &["300", "lftp", "-c", &script])
            .output()
            .expect("lftp");
        assert!(
            out.status.success(),
            "lftp {mode:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..5 {
            assert_same_content(&dir.join(format!("{mode:?}-{i}.bin")), &setup.file);
        }
        assert_eq!(
            datapath_counter(&setup.lab, "control_sessions_opened") - sessions_before,
            1,
            "lftp {mode:?} did not keep to one control session"
        );
        assert_eq!(
            datapath_counter(&setup.lab, "expectations_used") - used_before,
            5,
            "lftp {mode:?}: data connections"
        );
        let dialogue = dialogue_since(&setup, mark);
        assert_eq!(
            data_commands_in_mode(&dialogue, mode).unwrap_or_else(|err| panic!("{err:#}")),
            5,
            "{}",
            dialogue.join("\n")
        );
    }
    for mode in [Mode::Port, Mode::Pasv] {
        download(
            &setup,
            Client::Ftplib,
            mode,
            &format!("ftplib-{mode:?}.bin"),
        );
    }
}

/// The address text changes length both ways: `10,0,0,2` grows into `203,0,113,254` (the default
/// lab) and `192,168,100,200` shrinks into `192,0,2,1`, in PORT and in EPRT; then twenty PORTs in
/// one session shrink the stream twenty times before a transfer, which works only if every later
/// segment and acknowledgement is moved by the sum of the changes.
#[test]
fn rewritten_address_may_be_shorter_than_the_original() {
    let spec = LabSpec {
        client: Ipv4Addr::new(192, 168, 100, 200),
        router_lan: Ipv4Addr::new(192, 168, 100, 1),
        router_wan: Ipv4Addr::new(192, 0, 2, 1),
        server: Ipv4Addr::new(192, 0, 2, 10),
        ..LabSpec::default()
    };
    let setup = setup(spec, 8 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Port, Mode::Eprt] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    ports_then_retr_all_rewritten(&setup, 20);

    // On the server's side only the public address, in the IP headers and in PORT/EPRT.
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        wan.contains("PORT 192,0,2,1,"),
        "no shortened PORT on the WAN"
    );
    assert!(
        wan.contains("EPRT |1|192.0.2.1|"),
        "no shortened EPRT on the WAN"
    );
    assert!(
        !wan.contains("192,168,100,200"),
        "a PORT with the client's address reached the WAN"
    );
    assert!(
        !wan.contains("192.168.100.200"),
        "the client's address reached the WAN (IP header or EPRT)"
    );
    let lan = setup.lab.capture_text(ROUTER_LAN_IF).expect("capture");
    assert!(
        lan.contains("EPRT |1|192.168.100.200|"),
        "the capture of the LAN side missed the client's own EPRT"
    );
}

/// Sends `argv[3]` PORT commands, then downloads `argv[2]` in active mode; prints its sha256.
const PORTS_THEN_RETR: &str = r#"
import ftplib, hashlib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=20)
ftp.login()
me = ftp.sock.getsockname()[0].replace('.', ',')
for i in range(int(sys.argv[3])):
    reply = ftp.sendcmd(f"PORT {me},{200 + i // 256},{i % 256}")
    assert reply.startswith('200'), reply
ftp.set_pasv(False)
digest = hashlib.sha256()
ftp.retrbinary('RETR ' + sys.argv[2], digest.update)
print(digest.hexdigest())
ftp.quit()
"#;

#[test]
fn fifty_port_commands_then_a_transfer_keep_the_stream_in_step() {
    let setup = setup(LabSpec::default(), 8 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    ports_then_retr_all_rewritten(&setup, 50);
}

/// Sends `count` PORTs in one session, then downloads the file (ftplib sends a PORT of its own):
/// the server must have accepted every one, each naming the public address, and the file must
/// be intact.
fn ports_then_retr_all_rewritten(setup: &Setup, count: usize) {
    let server = setup.server.addr.to_string();
    let mark = setup.server.log_mark();
    let out = setup
        .lab
        .client_python(
            PORTS_THEN_RETR,
            &[&server, setup.file.name(), &count.to_string()],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        setup.file.sha256
    );
    let dialogue = dialogue_since(setup, mark);
    assert_eq!(
        data_commands_in_mode(&dialogue, Mode::Port).unwrap(),
        count + 1
    );
    let public = format!("> PORT {},", commas(setup.lab.spec.router_wan));
    assert_eq!(
        dialogue.iter().filter(|l| l.starts_with(&public)).count(),
        count + 1
    );
}

/// The server drops the first copy of every segment carrying a PORT, so each rewritten PORT is
/// retransmitted by the client and must be rewritten again, byte for byte, at the same place in
/// the stream: a retransmission passed through unrewritten would no longer fit the sequence space
/// the server has seen, and the control channel would come apart.
#[test]
fn retransmitted_ports_are_rewritten_identically() {
    let setup = setup(LabSpec::default(), MIB);
    setup.lab.server_drops_first_of_every("PORT ", 2);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(PORTS_THEN_RETR, &[&server, setup.file.name(), "5"], 90)
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        setup.file.sha256
    );
    let rules = setup
        .lab
        .server
        .exec("iptables", &["-L", "INPUT", "-v", "-x", "-n"])
        .expect("iptables -L");
    let dropped: u64 = String::from_utf8_lossy(&rules.stdout)
        .lines()
        .find(|line| line.contains("DROP"))
        .and_then(|line| line.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped >= 6,
        "only {dropped} PORT segments were dropped: the test did not bite"
    );
}

/// The router masquerades the LAN with netfilter alone (no FTP helper): a passive transfer works,
/// so the lab routes and translates; the same active transfer fails, because the PORT names the
/// client's private address, which the server refuses. Once ftpnat runs it works: ftpnat, and
/// nothing else in the lab, makes active FTP work through the NAT.
#[test]
fn without_ftpnat_the_same_active_transfer_fails() {
    let setup = setup(LabSpec::default(), 4 * MIB);
    setup.lab.netfilter_masquerade(false).expect("iptables");
    download(&setup, Client::Curl, Mode::Pasv, "pasv-without.bin");

    let mark = setup.server.log_mark();
    let local = setup.lab.dir().join("never.bin");
    let result = Transfer {
        client: Client::Curl,
        mode: Mode::Port,
        server: setup.server.addr,
        port: setup.server.port,
        remote: setup.file.name(),
        local: &local,
        timeout_secs: 20,
    }
    .run(&setup.lab.client);
    assert!(
        result.is_err(),
        "an active transfer through a plain masquerade worked"
    );
    let log = setup.server.log_since(mark).expect("server log");
    let dialogue = vsftpd_dialogue(&log);
    let port = dialogue
        .iter()
        .position(|line| line.starts_with(&format!("> PORT {},", commas(setup.lab.spec.client))))
        .unwrap_or_else(|| panic!("no PORT with the private address reached the server:\n{log}"));
    assert!(
        dialogue
            .get(port + 1)
            .is_some_and(|reply| reply.starts_with("< 500 Illegal PORT command")),
        "the server did not refuse the private PORT:\n{log}"
    );
    assert!(
        !dialogue.iter().any(|line| line.starts_with("< 150")),
        "a data connection opened:\n{log}"
    );

    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    download(&setup, Client::Curl, Mode::Port, "port-with.bin");
    assert_eq!(datapath_counter(&setup.lab, "expectations_used"), 1);

    // netfilter tracked the masqueraded control connections, and never with its FTP helper.
    assert_tracked_without_ftp_helper(&setup.lab, "dport=21 ");
}

/// A PORT naming another host (bounce), one naming the client's privileged port 80, and one that
/// does not parse; then a passive download in the same session.
const BOUNCE: &str = r#"
import ftplib, hashlib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=20)
ftp.login()
me = ftp.sock.getsockname()[0].replace('.', ',')
for line in ("PORT 10,0,0,99,195,80", f"PORT {me},0,80", f"PORT {me},256,80"):
    try:
        ftp.sendcmd(line)
    except ftplib.error_perm as refused:
        print("server refused:", refused, file=sys.stderr)
digest = hashlib.sha256()
ftp.set_pasv(True)
ftp.retrbinary('RETR ' + sys.argv[2], digest.update)
print(digest.hexdigest())
ftp.quit()
"#;

#[test]
fn bounce_privileged_and_malformed_ports_open_nothing_and_the_session_goes_on() {
    let setup = setup(LabSpec::default(), 4 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(BOUNCE, &[&server, setup.file.name()], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        setup.file.sha256
    );
    let stats = ftpnat_json(&setup.lab, "stats");
    assert_eq!(stats["datapath"]["refusals"], 2, "{stats}");
    assert_eq!(stats["datapath"]["malformed_lines"], 1, "{stats}");
    // Each counted under its reason too.
    assert_eq!(stats["refusals_by_reason"]["bounce"], 1, "{stats}");
    assert_eq!(stats["refusals_by_reason"]["privileged_port"], 1, "{stats}");
    assert_eq!(
        stats["malformed_by_reason"]["octet_out_of_range"], 1,
        "{stats}"
    );
    // Only the passive transfer's expectation was ever created.
    assert_eq!(stats["datapath"]["expectations_created"], 1, "{stats}");
    assert_eq!(stats["datapath"]["expectations_used"], 1, "{stats}");
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    let ports: Vec<&str> = wan.lines().filter(|l| l.contains("PORT")).collect();
    for untouched in [
        "PORT 10,0,0,99,195,80",
        "PORT 10,0,0,2,0,80",
        "PORT 10,0,0,2,256,80",
    ] {
        assert!(
            ports.iter().any(|line| line.contains(untouched)),
            "{untouched} did not pass untouched: {ports:?}"
        );
    }
}

#[test]
fn coexists_with_a_netfilter_masquerade_for_other_traffic() {
    let setup = setup(LabSpec::default(), 20 * MIB);
    setup.lab.netfilter_masquerade(false).expect("iptables");
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Port, Mode::Pasv] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    // Plain traffic still goes through netfilter's masquerade.
    let server = setup.server.addr.to_string();
    setup
        .lab
        .client
        .exec("ping", &["-c", "2", "-W", "2", &server])
        .expect("ping through the masquerade");
    let listener = setup
        .lab
        .server
        .command(
            "socat",
            &["-u", "TCP-LISTEN:8080,reuseaddr", "OPEN:/dev/null"],
        )
        .spawn()
        .expect("socat listener");
    let mut listener = ChildGuard(listener);
    wait_until(Duration::from_secs(5), || {
        setup
            .lab
            .server
            .exec("ss", &["-Hltn", "sport = :8080"])
            .is_ok_and(|o| !o.stdout.is_empty())
    })
    .expect("listener up");
    setup
        .lab
        .client
        .exec(
            "sh",
            &[
                "-c",
                &format!("echo hello | socat -u STDIN TCP:{server}:8080"),
            ],
        )
        .expect("a TCP exchange through the masquerade");
    let _ = listener.0.kill();
    // netfilter tracked the plain traffic, never with the FTP helper.
    assert_tracked_without_ftp_helper(&setup.lab, "dport=8080");
}

/// Kills the child on drop, so a failing assertion does not leave it running.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PORT_THEN_QUIT: &str = r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=20)
ftp.login()
me = ftp.sock.getsockname()[0].replace('.', ',')
ftp.sendcmd(f"PORT {me},200,1")
ftp.quit()
"#;

/// Announces a port it listens on with PORT, then waits for a line on stdin before it quits: a
/// session that outlives its expectation, and a client that would accept a connection ftpnat
/// wrongly let through.
const PORT_THEN_WAIT: &str = r#"
import ftplib, socket, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=30)
ftp.login()
host = ftp.sock.getsockname()[0]
listener = socket.create_server((host, 0))
port = listener.getsockname()[1]
ftp.sendcmd('PORT ' + ','.join(host.split('.') + [str(port >> 8), str(port & 255)]))
print('announced', flush=True)
sys.stdin.readline()
ftp.quit()
"#;

/// Connects to `argv[1]:argv[2]` and says how that went.
const CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print('connected')
except ConnectionRefusedError:
    print('refused')
except socket.timeout:
    print('timed out')
"#;

/// Whether ftpnat holds no expectation at all (`ftpnat expectations` lists none).
fn no_expectations(lab: &Lab) -> bool {
    ftpnat_json(lab, "expectations") == Value::Array(Vec::new())
}

fn drained(lab: &Lab) -> bool {
    let stats = ftpnat_json(lab, "stats");
    stats["sessions"] == 0
        && stats["flows"] == 0
        && stats["expectations"] == 0
        && stats["window"]["in_use"] == 0
}

#[test]
fn tables_drain_and_every_window_port_returns_when_sessions_end() {
    let setup = setup(LabSpec::default(), 2 * MIB);
    // Long enough that the expectation read once the PORT is answered is still there on a
    // loaded machine; its expiry is then waited for, not timed.
    let _agent = setup
        .lab
        .start_ftpnat(&["--port-window", "61000-61007", "--expect-timeout", "10"])
        .expect("ftpnat run");
    for mode in [Mode::Port, Mode::Epsv] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    // An announced connection that never comes, in a session that ends at once: the expectation
    // goes with its session.
    let server = setup.server.addr.to_string();
    setup
        .lab
        .client_python(PORT_THEN_QUIT, &[&server], 30)
        .unwrap_or_else(|err| panic!("{err:#}"));
    wait_until(Duration::from_secs(15), || drained(&setup.lab))
        .unwrap_or_else(|_| panic!("tables did not drain: {}", ftpnat_json(&setup.lab, "stats")));

    // One in a session that stays: the expectation expires while the session lives, and its port
    // returns to the window.
    let mut held = setup
        .lab
        .python_stepped(&setup.lab.client, PORT_THEN_WAIT, &[&server], 120)
        .expect("held session");
    held.expect("announced").expect("PORT sent");
    let expectations = ftpnat_json(&setup.lab, "expectations");
    let public = expectations[0]["public"]
        .as_str()
        .unwrap_or_else(|| panic!("no expectation for the PORT: {expectations}"));
    let (public_ip, public_port) = public.rsplit_once(':').expect("ip:port");
    wait_until(Duration::from_secs(40), || no_expectations(&setup.lab))
        .expect("the expectation did not expire");
    let stats = ftpnat_json(&setup.lab, "stats");
    assert_eq!(stats["sessions"], 1, "{stats}");
    assert_eq!(
        stats["window"]["in_use"], 1,
        "only the control connection should hold a port: {stats}"
    );
    // The server's connection, come too late, is turned away and counted.
    let turned_away = datapath_counter(&setup.lab, "pinhole_no_expectation");
    let out = setup
        .lab
        .python(&setup.lab.server, CONNECT, &[public_ip, public_port], 10)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let outcome = String::from_utf8_lossy(&out.stdout);
    assert_ne!(outcome.trim(), "connected", "a late connection got through");
    assert!(
        datapath_counter(&setup.lab, "pinhole_no_expectation") > turned_away,
        "the late connection was not counted"
    );
    held.proceed().expect("QUIT");
    held.finish().unwrap_or_else(|err| panic!("{err:#}"));

    wait_until(Duration::from_secs(15), || drained(&setup.lab))
        .unwrap_or_else(|_| panic!("tables did not drain: {}", ftpnat_json(&setup.lab, "stats")));
    let stats = ftpnat_json(&setup.lab, "stats");
    assert_eq!(stats["window"]["size"], 8);
    // The window is really whole again: four sessions at once, each taking two ports (control
    // and data), need all eight. A missing port would show as a refused connection.
    let mark = setup.server.log_mark();
    std::thread::scope(|scope| {
        for i in 0..4 {
            let setup = &setup;
            scope.spawn(move || {
                download_intact(setup, Client::Curl, Mode::Pasv, &format!("again-{i}.bin"));
            });
        }
    });
    // Read once all four have their files: each 227 reached its client, so it is logged.
    let dialogue = dialogue_since(&setup, mark);
    assert_eq!(
        data_commands_in_mode(&dialogue, Mode::Pasv).unwrap_or_else(|err| panic!("{err:#}")),
        4,
        "{}",
        dialogue.join("\n")
    );
}

/// Starts an active download with a small receive buffer, so that it stalls with data unread,
/// reads a little and waits to be killed.
const STALLED_ACTIVE_DOWNLOAD: &str = r#"
import ftplib, os, socket, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=30)
ftp.login()
ftp.voidcmd('TYPE I')
host = ftp.sock.getsockname()[0]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
listener.bind((host, 0))
listener.listen(1)
port = listener.getsockname()[1]
ftp.voidcmd('PORT ' + ','.join(host.split('.') + [str(port >> 8), str(port & 255)]))
ftp.sendcmd('RETR ' + sys.argv[2])
data, _ = listener.accept()
data.recv(1024)
print('transferring', os.getpid(), flush=True)
sys.stdin.readline()
"#;

/// A client killed in the middle of an active download: its kernel resets the data connection
/// (unread data in the socket) and closes the control connection, and ftpnat sweeps both soon
/// after, long before the idle timeouts (minutes) would.
#[test]
fn a_client_killed_mid_transfer_is_swept_after_its_reset() {
    let setup = setup(LabSpec::default(), 8 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let mut client = setup
        .lab
        .python_stepped(
            &setup.lab.client,
            STALLED_ACTIVE_DOWNLOAD,
            &[&server, setup.file.name()],
            60,
        )
        .expect("client");
    let pid: i32 = client.expect("transferring").expect("download started")[0]
        .parse()
        .expect("pid");
    let stats = ftpnat_json(&setup.lab, "stats");
    assert_eq!(stats["sessions"], 1, "{stats}");
    assert_eq!(stats["flows"], 2, "{stats}");
    assert_eq!(stats["window"]["in_use"], 2, "{stats}");
    // SAFETY: kill has no memory-safety preconditions; the pid is the script's, which waits.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    wait_until(Duration::from_secs(15), || drained(&setup.lab)).unwrap_or_else(|_| {
        panic!(
            "tables did not drain after the reset: {}",
            ftpnat_json(&setup.lab, "stats")
        )
    });
    let resets = setup
        .lab
        .capture_dump(
            ROUTER_LAN_IF,
            &[],
            &format!(
                "src host {} and tcp[tcpflags] & tcp-rst != 0",
                setup.lab.spec.client
            ),
        )
        .expect("capture");
    assert!(
        !resets.is_empty(),
        "the client sent no reset: the test did not bite"
    );
}

/// With checksum offload off on every veth, the endpoints compute full checksums and verify what
/// they receive: a wrong incremental update (headers, or the payload of a rewritten PORT/EPRT)
/// would drop the packet and stall the transfer. With offload on, veth would mark everything
/// verified and hide such a bug.
#[test]
fn checksums_hold_when_endpoints_compute_and_verify_them() {
    let setup = setup(LabSpec::default(), 20 * MIB);
    for (ns, iface) in [
        (&setup.lab.client, "eth0"),
        (&setup.lab.server, "eth0"),
        (&setup.lab.router, "lan0"),
        (&setup.lab.router, "wan0"),
    ] {
        ns.exec("ethtool", &["-K", iface, "rx", "off", "tx", "off"])
            .expect("ethtool");
    }
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Port, Mode::Eprt, Mode::Pasv, Mode::Epsv] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    assert_eq!(
        tcp_in_csum_errors(&setup.lab.server),
        0,
        "the server saw bad TCP checksums"
    );
    assert_eq!(
        tcp_in_csum_errors(&setup.lab.client),
        0,
        "the client saw bad TCP checksums"
    );
}

/// With the only window port taken by the control connection, a PORT is rewritten into one the
/// server refuses at once, and a second control connection is reset at once: both ask for a port
/// the window does not have, and both learn it promptly instead of waiting on silence.
const EXHAUST_ONE_PORT: &str = r#"
import ftplib, socket, sys
server = sys.argv[1]
ftp = ftplib.FTP()
ftp.connect(server, 21, timeout=20)
ftp.login()
me = ftp.sock.getsockname()[0].replace('.', ',')
try:
    print('port', ftp.sendcmd(f"PORT {me},200,1"))
except ftplib.error_perm as err:
    print('port', err)
second = socket.socket()
second.settimeout(10)
try:
    second.connect((server, 21))
    print('second connected')
except ConnectionRefusedError:
    print('second refused')
except socket.timeout:
    print('second timeout')
ftp.quit()
"#;

#[test]
fn exhausted_window_fails_port_and_new_sessions_promptly() {
    let setup = setup(LabSpec::default(), MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--port-window", "61000-61000"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(EXHAUST_ONE_PORT, &[&server], 30)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("port 500"),
        "the server accepted a PORT ftpnat could not serve: {text}"
    );
    assert!(text.contains("second refused"), "{text}");
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        wan.contains("PORT 0,0,0,0,0,0"),
        "no refused PORT on the WAN"
    );
    let stats = ftpnat_json(&setup.lab, "stats");
    assert_eq!(stats["datapath"]["window_exhausted"], 2, "{stats}");
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// Four PASV replies never used fill the session's limit of outstanding expectations; once they
/// expire (the agent counts them released, the datapath applies the count) the same session
/// opens a data connection again. Waits on stdin after the fourth reply, for the test to see
/// them expired.
const UNUSED_PASV_THEN_RETR: &str = r#"
import ftplib, hashlib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=20)
ftp.login()
for _ in range(4):
    ftp.sendcmd('PASV')
print('announced', flush=True)
sys.stdin.readline()
digest = hashlib.sha256()
ftp.retrbinary('RETR ' + sys.argv[2], digest.update)
print(digest.hexdigest())
ftp.quit()
"#;

#[test]
fn expired_expectations_free_their_places_under_the_session_limit() {
    let setup = setup(LabSpec::default(), MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--expect-timeout", "2"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let mut client = setup
        .lab
        .python_stepped(
            &setup.lab.client,
            UNUSED_PASV_THEN_RETR,
            &[&server, setup.file.name()],
            120,
        )
        .expect("client");
    client.expect("announced").expect("four PASV answered");
    // The RETR's PASV finds the places free only once the agent has swept the four: a fixed
    // pause would be too short on a loaded machine, and the refusal counter would say so.
    wait_until(Duration::from_secs(40), || no_expectations(&setup.lab))
        .expect("the four expectations did not expire");
    client.proceed().expect("RETR");
    let out = client.finish().unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(out.trim(), setup.file.sha256);
    let stats = ftpnat_json(&setup.lab, "stats");
    assert_eq!(
        stats["refusals_by_reason"]["too_many_expectations"], 0,
        "{stats}"
    );
    assert_eq!(stats["datapath"]["expectations_used"], 1, "{stats}");
}

/// After a PORT rewrite has shifted the client's stream (`10,0,0,2` became `203,0,113,254`, and
/// the port a window port), the server's firewall drops the client's next segment once, so the one after
/// it arrives out of order and the server acknowledges it with a SACK block. That block is in the
/// server's (shifted) sequence space; the client must receive it in its own.
const PORT_THEN_TWO_SEGMENTS: &str = r#"
import ftplib, socket, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=20)
ftp.login()
ftp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
me = ftp.sock.getsockname()[0].replace('.', ',')
print(ftp.sendcmd(f"PORT {me},200,1"))
# Two segments (no Nagle), the second right behind the first: it must reach the server before
# the first's retransmission does.
ftp.sock.sendall(b"HELP\r\n")
ftp.sock.sendall(b"NOOP\r\n")
print(ftp.getresp())
print(ftp.getresp())
ftp.quit()
"#;

/// The client's segment carrying the command `command` and the SACK block the server sent for it,
/// as absolute sequence numbers from a capture of the router's `iface`:
/// ((start, end), (left, right)).
fn segment_and_its_sack(lab: &Lab, iface: &str, command: &str) -> ((u32, u32), (u32, u32)) {
    let pcap = lab.dir().join(format!("router-{iface}.pcap"));
    let out = ftpnat_tests::netns::run(
        "tcpdump",
        &["-nn", "-S", "-r", &pcap.to_string_lossy(), "tcp port 21"],
    )
    .expect("tcpdump -r");
    let dump = String::from_utf8_lossy(&out.stdout);
    let number = |s: &str| {
        s.parse::<u32>()
            .unwrap_or_else(|_| panic!("not a number: {s}"))
    };
    let between = |line: &'_ str, open: &str, close: char| -> Option<(u32, u32)> {
        let rest = &line[line.find(open)? + open.len()..];
        let (left, right) = rest[..rest.find(close)?].split_once(':')?;
        Some((number(left), number(right)))
    };
    // tcpdump names the command of a client segment (to port 21) in its summary.
    let segment = dump
        .lines()
        .find(|line| line.contains(".21: Flags") && line.ends_with(&format!("FTP: {command}")))
        .and_then(|line| between(line, "seq ", ','))
        .unwrap_or_else(|| panic!("no {command} segment on {iface}:\n{dump}"));
    let sack = dump
        .lines()
        .filter_map(|line| between(line, "sack 1 {", '}'))
        .find(|block| block.0 == segment.0 || block.1 == segment.1)
        .or_else(|| dump.lines().find_map(|line| between(line, "sack 1 {", '}')))
        .unwrap_or_else(|| panic!("no SACK block on {iface}:\n{dump}"));
    (segment, sack)
}

#[test]
fn sack_blocks_are_moved_back_into_the_clients_sequence_space() {
    let setup = setup(LabSpec::default(), MIB);
    setup.lab.server_drops_first_of_every("HELP", 1000000);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(PORT_THEN_TWO_SEGMENTS, &[&server], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("200"), "{text}");
    assert!(text.contains("214"), "HELP was never answered: {text}");

    let (lan_segment, lan_sack) = segment_and_its_sack(&setup.lab, "lan0", "NOOP");
    let (wan_segment, wan_sack) = segment_and_its_sack(&setup.lab, ROUTER_WAN_IF, "NOOP");
    // The server saw the segment further on (the rewritten PORT is longer), and acknowledged it
    // there...
    let shift = wan_segment.0.wrapping_sub(lan_segment.0);
    assert!(shift > 0 && shift < 16, "{lan_segment:?} {wan_segment:?}");
    assert_eq!(wan_sack, wan_segment, "the server's SACK block");
    assert_eq!(lan_sack, lan_segment, "the SACK block the client received");
}

/// The server refuses EPRT and EPSV: curl falls back to PORT and PASV and still gets its file,
/// which is why every download here is also checked in the server's log. The check must see the
/// fallback.
#[test]
fn the_mode_check_sees_curl_fall_back_from_eprt_and_epsv() {
    let setup = setup_with(
        LabSpec::default(),
        MIB,
        &VsftpdOptions {
            denied_commands: vec!["EPRT", "EPSV"],
            ..VsftpdOptions::default()
        },
    );
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for (asked, fallback) in [
        (Mode::Eprt, "< 200 PORT command successful"),
        (Mode::Epsv, "< 227 Entering Passive Mode"),
    ] {
        let local = setup.lab.dir().join(format!("{asked:?}.bin"));
        let mark = setup.server.log_mark();
        Transfer {
            client: Client::Curl,
            mode: asked,
            server: setup.server.addr,
            port: setup.server.port,
            remote: setup.file.name(),
            local: &local,
            timeout_secs: 60,
        }
        .run(&setup.lab.client)
        .unwrap_or_else(|err| panic!("{err:#}"));
        assert_same_content(&local, &setup.file);
        let dialogue = dialogue_since(&setup, mark);
        let text = dialogue.join("\n");
        assert!(text.contains("< 550 Permission denied."), "{text}");
        assert!(
            dialogue.iter().any(|line| line.starts_with(fallback)),
            "curl did not fall back:\n{text}"
        );
        assert!(
            data_commands_in_mode(&dialogue, asked).is_err(),
            "the check took the fallback for {asked:?}:\n{text}"
        );
    }
}

/// Logs in and announces a listening port of its own with PORT, then waits; retrieves `argv[2]`
/// over it, reads a first chunk and waits again; then reads the rest and prints its sha256.
const INSPECTED_ACTIVE_SESSION: &str = r#"
import ftplib, hashlib, socket, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=30)
ftp.login()
ftp.voidcmd('TYPE I')
host, control_port = ftp.sock.getsockname()
listener = socket.create_server((host, 0))
data_port = listener.getsockname()[1]
ftp.voidcmd('PORT ' + ','.join(host.split('.') + [str(data_port >> 8), str(data_port & 255)]))
print('announced', control_port, data_port, flush=True)
sys.stdin.readline()
ftp.sendcmd('RETR ' + sys.argv[2])
data, _ = listener.accept()
digest = hashlib.sha256(data.recv(65536))
print('transferring', flush=True)
sys.stdin.readline()
while chunk := data.recv(1 << 16):
    digest.update(chunk)
data.close()
ftp.voidresp()
print('done', digest.hexdigest(), flush=True)
ftp.quit()
"#;

/// The single entry of an inspection table.
fn only_entry(table: &Value) -> &Value {
    match table.as_array().map(Vec::as_slice) {
        Some([entry]) => entry,
        _ => panic!("one entry expected: {table}"),
    }
}

/// `ftpnat <command>` without `--json`: a header line, then one row per entry of `json`, each
/// with the entry's value of every `(HEADER, field)` in `columns` starting under that header.
fn assert_human_table(lab: &Lab, command: &str, json: &Value, columns: &[(&str, &str)]) {
    let out = lab.ftpnat(&[command]).expect("ftpnat");
    assert!(out.status.success(), "ftpnat {command}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let entries = json.as_array().expect("entries");
    assert_eq!(lines.len(), entries.len() + 1, "ftpnat {command}:\n{text}");
    let header = lines[0];
    for entry in entries {
        let cells: Vec<(usize, String)> = columns
            .iter()
            .map(|(name, field)| {
                let at = header
                    .find(name)
                    .unwrap_or_else(|| panic!("no column {name} in {header:?}"));
                let value = match &entry[*field] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (at, value)
            })
            .collect();
        assert!(
            lines[1..].iter().any(|row| {
                cells.iter().all(|(at, value)| {
                    row.get(*at..)
                        .is_some_and(|r| r.starts_with(value.as_str()))
                })
            }),
            "ftpnat {command}: no row aligned under its header for {entry}:\n{text}"
        );
    }
}

/// What `ftpnat sessions|expectations|flows` report while an active session is open, checked
/// field by field against what the client and the server saw.
#[test]
fn inspection_shows_a_live_session_its_expectation_and_its_connections() {
    let setup = setup(LabSpec::default(), 8 * MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--expect-timeout", "30"])
        .expect("ftpnat run");
    let lab = &setup.lab;
    let (client_ip, public_ip, server_ip) = (lab.spec.client, lab.spec.router_wan, lab.spec.server);
    let window = window_of(&ftpnat_json(lab, "stats"));
    let mark = setup.server.log_mark();
    let server = server_ip.to_string();
    let mut client = lab
        .python_stepped(
            &lab.client,
            INSPECTED_ACTIVE_SESSION,
            &[&server, setup.file.name()],
            90,
        )
        .expect("client");
    let announced = client.expect("announced").expect("PORT sent");
    let (control_port, data_port) = (&announced[0], &announced[1]);

    let sessions = ftpnat_json(lab, "sessions");
    let session = only_entry(&sessions);
    let session_public = window_port(&session["public"], public_ip, &window);
    let id = format!("{public_ip}:{session_public}");
    assert_eq!(session["id"], id.as_str(), "{session}");
    assert_eq!(session["kind"], "masquerade", "{session}");
    assert_eq!(
        session["client"],
        format!("{client_ip}:{control_port}"),
        "{session}"
    );
    assert_eq!(session["server"], format!("{server_ip}:21"), "{session}");
    assert_eq!(session["data_flows"], 0, "{session}");

    let expectations = ftpnat_json(lab, "expectations");
    let expectation = only_entry(&expectations);
    assert_eq!(expectation["session"], id.as_str(), "{expectation}");
    assert_eq!(expectation["peer"], server_ip.to_string(), "{expectation}");
    let expected_port = window_port(&expectation["public"], public_ip, &window);
    assert_ne!(expected_port, session_public);
    assert_eq!(
        expectation["target"],
        format!("{client_ip}:{data_port}"),
        "{expectation}"
    );
    let expires_in = expectation["expires_in_ms"]
        .as_u64()
        .expect("expires_in_ms");
    assert!(expires_in > 0 && expires_in <= 30_000, "{expectation}");
    // The expectation waits where the server was told to connect.
    let told = format!(
        "> PORT {},{},{}",
        commas(public_ip),
        expected_port >> 8,
        expected_port & 0xff
    );
    let dialogue = dialogue_since(&setup, mark);
    assert!(
        dialogue.contains(&told),
        "no `{told}` in:\n{}",
        dialogue.join("\n")
    );

    assert_human_table(
        lab,
        "sessions",
        &sessions,
        &[
            ("ID", "id"),
            ("KIND", "kind"),
            ("CLIENT", "client"),
            ("PUBLIC", "public"),
            ("SERVER", "server"),
            ("DATA FLOWS", "data_flows"),
        ],
    );
    assert_human_table(
        lab,
        "expectations",
        &expectations,
        &[
            ("SESSION", "session"),
            ("PEER", "peer"),
            ("PUBLIC", "public"),
            ("TARGET", "target"),
        ],
    );

    // The transfer runs (and stalls: the client reads no more for now).
    client.proceed().expect("RETR");
    client.expect("transferring").expect("data connection open");
    assert_eq!(ftpnat_json(lab, "expectations"), Value::Array(Vec::new()));
    let session = ftpnat_json(lab, "sessions");
    assert_eq!(only_entry(&session)["data_flows"], 1, "{session}");
    let flows = ftpnat_json(lab, "flows");
    let rows = flows.as_array().expect("flows");
    assert_eq!(rows.len(), 2, "{flows}");
    let of_kind = |kind: &str| {
        rows.iter()
            .find(|row| row["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} flow: {flows}"))
    };
    let control = of_kind("control");
    assert_eq!(control["session"], id.as_str(), "{control}");
    assert_eq!(
        control["orig"],
        format!("{client_ip}:{control_port} -> {server_ip}:21"),
        "{control}"
    );
    assert_eq!(
        control["reply"],
        format!("{server_ip}:21 -> {id}"),
        "{control}"
    );
    assert!(control["bytes"].as_u64() > Some(0), "{control}");
    let data = of_kind("data");
    assert_eq!(data["session"], id.as_str(), "{data}");
    // vsftpd connects from port 20 to the public port it was told, and reaches the client's.
    assert_eq!(
        data["orig"],
        format!("{server_ip}:20 -> {public_ip}:{expected_port}"),
        "{data}"
    );
    assert_eq!(
        data["reply"],
        format!("{client_ip}:{data_port} -> {server_ip}:20"),
        "{data}"
    );
    assert!(data["bytes"].as_u64() > Some(0), "{data}");
    assert_human_table(
        lab,
        "flows",
        &flows,
        &[
            ("SESSION", "session"),
            ("KIND", "kind"),
            ("ORIG", "orig"),
            ("REPLY", "reply"),
        ],
    );

    client.proceed().expect("rest of the transfer");
    let done = client.expect("done").expect("transfer done");
    assert_eq!(done.first(), Some(&setup.file.sha256));
    client.finish().unwrap_or_else(|err| panic!("{err:#}"));
}

/// Without `--port-window`, ftpnat picks a window outside the router's own ephemeral range (the
/// router namespace's, set here to one that the window ftpnat would pick for the kernel's default
/// range overlaps); a window inside it, which the default range would allow, is refused naming
/// the flag, with nothing attached and nothing pinned.
#[test]
fn default_window_avoids_the_routers_ephemeral_range_and_an_overlapping_one_is_refused() {
    let setup = setup(LabSpec::default(), 4 * MIB);
    let lab = &setup.lab;
    lab.router
        .sysctl("net.ipv4.ip_local_port_range", "50000 62000")
        .expect("sysctl");
    let ephemeral = 50000..=62000u16;

    let pin_dir = lab.pin_dir().expect("pin dir");
    let out = lab
        .in_router(
            &ftpnat_tests::agent::ftpnat_bin().unwrap().to_string_lossy(),
            &[
                "run",
                "--wan",
                ROUTER_WAN_IF,
                "--lan",
                ROUTER_LAN_IF,
                "--port-window",
                "61000-61099",
                "--pin-dir",
                &pin_dir.to_string_lossy(),
            ],
        )
        .output()
        .expect("ftpnat run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an overlapping window was taken");
    assert!(stderr.contains("--port-window 61000-61099"), "{stderr}");
    assert!(
        stderr.contains("ip_local_port_range (50000-62000)"),
        "{stderr}"
    );
    for iface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
        assert!(lab.router_tc_programs(iface).unwrap().is_empty(), "{iface}");
    }
    assert!(!pin_dir.exists(), "pins left behind");

    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let window = window_of(&ftpnat_json(lab, "stats"));
    assert!(
        window.end() < ephemeral.start() || window.start() > ephemeral.end(),
        "default window {window:?} overlaps the ephemeral range {ephemeral:?}"
    );
    // The port the server is told comes from that window.
    let dialogue = download(&setup, Client::Curl, Mode::Port, "port.bin");
    let port = dialogue
        .iter()
        .find_map(|line| line.strip_prefix("> PORT "))
        .and_then(|args| {
            let fields: Vec<u16> = args.split(',').filter_map(|f| f.parse().ok()).collect();
            Some(fields.get(4)? * 256 + fields.get(5)?)
        })
        .unwrap_or_else(|| panic!("no PORT in:\n{}", dialogue.join("\n")));
    assert!(
        window.contains(&port),
        "PORT names {port}, outside {window:?}"
    );
}

/// `--ftp-port`, `--public-ip` and `--masquerade` are honoured: the server listens on 2121 only,
/// and the client is masqueraded (by its /32) behind a second address of the WAN, not the first
/// one ftpnat would default to.
#[test]
fn ftp_port_public_ip_and_masquerade_prefix_are_honoured() {
    let setup = setup_with(
        LabSpec::default(),
        4 * MIB,
        &VsftpdOptions {
            port: Some(2121),
            ..VsftpdOptions::default()
        },
    );
    let lab = &setup.lab;
    let public = Ipv4Addr::new(203, 0, 113, 253);
    lab.router
        .ip(&[
            "addr",
            "add",
            &format!("{public}/{}", lab.spec.wan_prefix_len),
            "dev",
            ROUTER_WAN_IF,
        ])
        .expect("second WAN address");
    let client = format!("{}/32", lab.spec.client);
    let _agent = lab
        .start_ftpnat(&[
            "--ftp-port",
            "2121",
            "--public-ip",
            &public.to_string(),
            "--masquerade",
            &client,
        ])
        .expect("ftpnat run");
    for mode in [Mode::Port, Mode::Pasv] {
        let mark = setup.server.log_mark();
        let dialogue = download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
        let log = setup.server.log_since(mark).expect("server log");
        assert!(
            log.contains(&format!("Client \"{public}\"")),
            "the control connection did not come from {public}:\n{log}"
        );
        if mode == Mode::Port {
            let port = format!("> PORT {},", commas(public));
            assert!(
                dialogue.iter().any(|line| line.starts_with(&port)),
                "{}",
                dialogue.join("\n")
            );
        }
    }
    // A LAN address outside the --masquerade prefix is not translated: its connection, untouched,
    // cannot come back from a server with no route to the LAN.
    let outside = Ipv4Addr::new(10, 0, 0, 3);
    lab.client
        .ip(&[
            "addr",
            "add",
            &format!("{outside}/{}", lab.spec.lan_prefix_len),
            "dev",
            HOST_IF,
        ])
        .expect("second client address");
    let url = format!("ftp://{}:2121/{}", setup.server.addr, setup.file.name());
    let out = lab
        .client
        .command(
            "curl",
            &[
                "-sS",
                "--interface",
                &outside.to_string(),
                "--connect-timeout",
                "3",
                "--disable-epsv",
                "-o",
                "/dev/null",
                &url,
            ],
        )
        .output()
        .expect("curl");
    assert!(
        !out.status.success(),
        "a client outside --masquerade {client} got through"
    );
    let stats = ftpnat_json(lab, "stats");
    assert_eq!(stats["datapath"]["control_sessions_opened"], 2, "{stats}");
    assert_eq!(stats["datapath"]["expectations_used"], 2, "{stats}");
}

/// The `Tcp: InCsumErrors` counter of a namespace: segments its TCP dropped for a bad checksum.
fn tcp_in_csum_errors(ns: &NetNs) -> u64 {
    let snmp = ns.exec("cat", &["/proc/net/snmp"]).expect("snmp");
    let snmp = String::from_utf8_lossy(&snmp.stdout);
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (names, values) = (tcp[0].split_whitespace(), tcp[1].split_whitespace());
    names
        .zip(values)
        .find(|(name, _)| *name == "InCsumErrors")
        .and_then(|(_, value)| value.parse().ok())
        .expect("InCsumErrors")
}

/// Both endpoints leave checksum offload on for what they send, so their segments reach the
/// router CHECKSUM_PARTIAL (the checksum field holds only the pseudo-header's sum); the router's
/// interfaces have it off, so the kernel completes each checksum from what ftpnat left in the
/// field after translating and rewriting; and the endpoints verify what they receive. A rewrite
/// that updated a partial checksum as if it were complete (or the reverse) shows as a wrong
/// checksum on the way out of the router, and as a drop at the endpoint.
#[test]
fn checksums_hold_when_packets_arrive_checksum_partial() {
    let setup = setup(LabSpec::default(), 8 * MIB);
    let lab = &setup.lab;
    for ns in [&lab.client, &lab.server] {
        ns.exec("ethtool", &["-K", "eth0", "rx", "off", "tx", "on"])
            .expect("ethtool");
    }
    for iface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
        lab.router
            .exec("ethtool", &["-K", iface, "tx", "off"])
            .expect("ethtool");
    }
    // The server loses the client's HELP once, so that it acknowledges the NOOP behind it with a
    // SACK block, which ftpnat moves into the client's sequence space: an option rewritten in a
    // partial-checksum segment.
    setup.lab.server_drops_first_of_every("HELP", 1000000);
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Port, Mode::Eprt] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    let out = lab
        .client_python(PORT_THEN_TWO_SEGMENTS, &[&lab.spec.server.to_string()], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("214"), "HELP was never answered: {text}");
    assert_eq!(
        tcp_in_csum_errors(&lab.server),
        0,
        "the server saw bad checksums"
    );
    assert_eq!(
        tcp_in_csum_errors(&lab.client),
        0,
        "the client saw bad checksums"
    );

    let (client, public, server) = (lab.spec.client, lab.spec.router_wan, lab.spec.server);
    let verified =
        |iface: &str, filter: String| lab.capture_dump(iface, &["-vv"], &filter).expect("capture");
    // The premise: control segments from both endpoints arrived with partial checksums (tcpdump
    // checks the whole packets it captured, and calls those incorrect).
    let from_client = verified(
        ROUTER_LAN_IF,
        format!("src host {client} and tcp dst port 21"),
    );
    assert!(
        from_client.contains("(incorrect"),
        "no partial checksum from the client:\n{from_client}"
    );
    let from_server = verified(
        ROUTER_WAN_IF,
        format!("src host {server} and tcp src port 21"),
    );
    assert!(
        from_server.contains("(incorrect"),
        "no partial checksum from the server:\n{from_server}"
    );
    // What left the router towards each side, the rewritten PORT/EPRT and the shifted
    // acknowledgements among it, carries complete and correct checksums.
    let to_server = verified(
        ROUTER_WAN_IF,
        format!("src host {public} and tcp dst port 21"),
    );
    assert!(to_server.contains("(correct)"), "{to_server}");
    assert!(
        !to_server.contains("(incorrect"),
        "bad checksum towards the server:\n{to_server}"
    );
    let to_client = verified(
        ROUTER_LAN_IF,
        format!("dst host {client} and tcp src port 21"),
    );
    assert!(to_client.contains("(correct)"), "{to_client}");
    assert!(
        !to_client.contains("(incorrect"),
        "bad checksum towards the client:\n{to_client}"
    );
    let sacks: Vec<&str> = to_client
        .lines()
        .filter(|line| line.contains("sack 1 {"))
        .collect();
    assert!(
        !sacks.is_empty(),
        "no SACK block reached the client:\n{to_client}"
    );
    assert!(
        sacks.iter().all(|line| line.contains("(correct)")),
        "{sacks:?}"
    );
}
