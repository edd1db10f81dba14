//! Issue 5: FTP servers behind the router, published on the public address. In these labs the
//! servers run in the LAN namespace (the lab's `client` namespace, 10.0.0.2) and the FTP clients
//! in the WAN namespace (the lab's `server` namespace, 203.0.113.10), which has no route to the
//! LAN: everything it reaches goes through the router's public address, 203.0.113.254.

use std::{net::Ipv4Addr, path::PathBuf};

use ftpnat_tests::{
    Agent, Client, FtpServer, Lab, LabSpec, MIB, Mode, TestFile, Transfer,
    files::assert_same_content,
    lab::{HOST_IF, ROUTER_WAN_IF, wait_until},
    servers::VsftpdOptions,
};
const WINDOW_LO: u16 = 62000;
const WINDOW_HI: u16 = 62099;
/// vsftpd's own passive range, behind the router; never seen outside.
const SERVER_PASV_PORTS: (u16, u16) = (30000, 30009);

fn public_ip(lab: &Lab) -> Ipv4Addr {
    lab.spec.router_wan
}

fn window_arg() -> String {
    format!("{WINDOW_LO}-{WINDOW_HI}")
}

/// A file served from the LAN host by vsftpd with `options`.
fn vsftpd_on_lan(lab: &Lab, options: VsftpdOptions, size: u64) -> (FtpServer, TestFile) {
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("data.bin"), size, 5).expect("test file");
    let server = FtpServer::vsftpd(&lab.client, lab.spec.client, &root, lab.dir(), &options)
        .expect("vsftpd");
    (server, file)
}

fn start_publishing(lab: &Lab, publish: &[&str], extra: &[&str]) -> Agent {
    let window = window_arg();
    let mut args = vec!["--port-window", window.as_str()];
    for value in publish {
        args.extend(["--publish", value]);
    }
    args.extend_from_slice(extra);
    lab.start_ftpnat(&args).expect("ftpnat run")
}

/// Downloads `file` from the public address's `port` on the WAN host, checked by sha256.
fn download(lab: &Lab, port: u16, file: &TestFile, client: Client, mode: Mode, name: &str) {
    let local = lab.subdir("downloads").expect("downloads").join(name);
    Transfer {
        client,
        mode,
        server: public_ip(lab).into(),
        port,
        remote: file.name(),
        local: &local,
        timeout_secs: 120,
    }
    .run(&lab.server)
    .unwrap_or_else(|err| panic!("{err:#}"));
    assert_same_content(&local, file);
    std::fs::remove_file(&local).expect("removing the download");
}

/// curl in all four modes and lftp in the three it speaks over IPv4.
fn every_client_and_mode(lab: &Lab, port: u16, file: &TestFile, label: &str) {
    for mode in [Mode::Pasv, Mode::Epsv, Mode::Port, Mode::Eprt] {
        download(
            lab,
            port,
            file,
            Client::Curl,
            mode,
            &format!("{label}-curl-{mode:?}"),
        );
    }
    for mode in [Mode::Pasv, Mode::Epsv, Mode::Port] {
        download(
            lab,
            port,
            file,
            Client::Lftp,
            mode,
            &format!("{label}-lftp-{mode:?}"),
        );
    }
}

/// Every 227/229 the outside clients received names the public address and a window port.
fn assert_passive_replies_name_the_window(lab: &Lab) {
    let wan = lab.capture_text(ROUTER_WAN_IF).expect("capture");
    let public = public_ip(lab).to_string().replace('.', ",");
    let mut seen = (0, 0);
    for line in wan.lines() {
        if let Some(at) = line.find("227 Entering") {
            let reply = &line[at..];
            let numbers: Vec<u16> = reply
                .split(|c: char| !c.is_ascii_digit() && c != ',')
                .find(|part| part.matches(',').count() == 5)
                .unwrap_or_else(|| panic!("no address in {reply}"))
                .split(',')
                .map(|n| n.parse().expect("number"))
                .collect();
            assert!(reply.contains(&public), "227 with another address: {reply}");
            let port = numbers[4] * 256 + numbers[5];
            assert!(
                (WINDOW_LO..=WINDOW_HI).contains(&port),
                "227 port {port} outside the window: {reply}"
            );
            seen.0 += 1;
        }
        if let Some(at) = line.find("229 Entering") {
            let reply = &line[at..];
            let port: u16 = reply
                .split("(|||")
                .nth(1)
                .and_then(|rest| rest.split('|').next())
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("no port in {reply}"));
            assert!(
                (WINDOW_LO..=WINDOW_HI).contains(&port),
                "229 port {port} outside the window: {reply}"
            );
            seen.1 += 1;
        }
    }
    assert!(
        seen.0 > 0 && seen.1 > 0,
        "no 227 or no 229 in the WAN capture: {seen:?}"
    );
    assert!(
        !wan.contains("10,0,0,2"),
        "the server's own address left the LAN in a 227"
    );
    assert!(
        !wan.contains("10.0.0.2"),
        "the server's own address left the LAN"
    );
    let (lo, hi) = SERVER_PASV_PORTS;
    for port in lo..=hi {
        assert!(
            !wan.contains(&format!("|||{port}|")),
            "the server's own port {port} left the LAN"
        );
    }
}

#[test]
fn vsftpd_with_its_private_address_serves_every_mode_200mb() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_server, file) = vsftpd_on_lan(
        &lab,
        VsftpdOptions {
            pasv_ports: Some(SERVER_PASV_PORTS),
            ..VsftpdOptions::default()
        },
        200 * MIB,
    );
    let _agent = start_publishing(&lab, &["21=10.0.0.2"], &[]);
    every_client_and_mode(&lab, 21, &file, "private");
    assert_passive_replies_name_the_window(&lab);
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
    assert_eq!(stats["datapath"]["window_exhausted"], 0, "{stats}");
}

#[test]
fn vsftpd_announcing_the_public_address_serves_every_mode_200mb() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_server, file) = vsftpd_on_lan(
        &lab,
        VsftpdOptions {
            pasv_ports: Some(SERVER_PASV_PORTS),
            pasv_address: Some(public_ip(&lab)),
            ..VsftpdOptions::default()
        },
        200 * MIB,
    );
    let _agent = start_publishing(&lab, &["21=10.0.0.2"], &[]);
    every_client_and_mode(&lab, 21, &file, "public");
    assert_passive_replies_name_the_window(&lab);
}

/// vsftpd on 10.0.0.2:21 as public port 21 and pyftpdlib on a second LAN address as public port
/// 2121, in one agent, transferring at the same time, while the same agent masquerades the LAN
/// host's own downloads from a server outside.
#[test]
fn two_published_servers_vsftpd_and_pyftpdlib_at_once() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let second = Ipv4Addr::new(10, 0, 0, 3);
    lab.client
        .ip(&["addr", "add", &format!("{second}/24"), "dev", HOST_IF])
        .expect("second LAN address");
    let (_vsftpd, file) = vsftpd_on_lan(&lab, VsftpdOptions::default(), 200 * MIB);
    let root: PathBuf = lab.subdir("srv").expect("server root");
    let _pyftpdlib =
        FtpServer::pyftpdlib(&lab.client, second, 21, &root, lab.dir()).expect("pyftpdlib");
    // And an FTP server outside, for the LAN host to reach through the masquerade of the same
    // agent at the same time.
    let (outside, outside_file) = lab.serve_file(20 * MIB, 13).expect("vsftpd outside");
    let _agent = start_publishing(&lab, &["21=10.0.0.2", "2121=10.0.0.3:21"], &[]);
    std::thread::scope(|scope| {
        let lab = &lab;
        let file = &file;
        scope.spawn(move || every_client_and_mode(lab, 2121, file, "pyftpdlib"));
        scope.spawn(|| {
            for mode in [Mode::Pasv, Mode::Port] {
                lab.curl_from_client(&outside, &outside_file, mode)
                    .unwrap_or_else(|err| panic!("masquerade beside publish: {err:#}"));
            }
        });
        scope.spawn(move || {
            for mode in [Mode::Pasv, Mode::Port] {
                download(
                    lab,
                    21,
                    file,
                    Client::Curl,
                    mode,
                    &format!("vsftpd-{mode:?}"),
                );
            }
        });
    });
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// Opens `count` control connections to the public address, sends PASV on each and prints each
/// reply (the connections stay open until all replies are in, so each holds its window port).
const PASV_ON_EACH: &str = r#"
import ftplib, sys
public, count = sys.argv[1], int(sys.argv[2])
sessions = []
for _ in range(count):
    ftp = ftplib.FTP()
    ftp.connect(public, 21, timeout=10)
    ftp.login()
    sessions.append(ftp)
for ftp in sessions:
    try:
        print(ftp.sendcmd('PASV'))
    except ftplib.error_temp as err:
        print(err)
for ftp in sessions:
    ftp.quit()
"#;

/// A window of 4 ports and 20 outside clients downloading repeatedly: each transfer either
/// completes intact or fails at once with the 425 ftpnat put in place of the 227 (curl's "weird
/// PASV reply", exit 13; a hang would be curl's timeout, exit 28). Then the 4 ports are free
/// again: four sessions get one each, a fifth gets the 425.
#[test]
fn four_port_window_twenty_clients_fail_promptly_and_every_port_returns() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_server, file) = vsftpd_on_lan(&lab, VsftpdOptions::default(), MIB);
    let _agent = lab
        .start_ftpnat(&[
            "--port-window",
            "62000-62003",
            "--publish",
            "21=10.0.0.2",
            "--expect-timeout",
            "5",
        ])
        .expect("ftpnat run");
    let url = format!("ftp://{}/{}", public_ip(&lab), file.name());
    let outcomes: Vec<(i32, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|client| {
                let (lab, url, file) = (&lab, &url, &file);
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for attempt in 0..4 {
                        let local = lab
                            .subdir("downloads")
                            .expect("downloads")
                            .join(format!("{client}-{attempt}"));
                        let out = lab
                            .server
                            .command(
                                "curl",
                                &[
                                    "-sS",
                                    "--disable-epsv",
                                    "--max-time",
                                    "60",
                                    "-o",
                                    &local.to_string_lossy(),
                                    url,
                                ],
                            )
                            .output()
                            .expect("curl");
                        let code = out.status.code().unwrap_or(-1);
                        if code == 0 {
                            assert_same_content(&local, file);
                        }
                        outcomes.push((code, String::from_utf8_lossy(&out.stderr).into_owned()));
                    }
                    outcomes
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });
    let completed = outcomes.iter().filter(|(code, _)| *code == 0).count();
    let refused: Vec<&(i32, String)> = outcomes.iter().filter(|(code, _)| *code != 0).collect();
    for (code, stderr) in &refused {
        assert_eq!(
            *code, 13,
            "a transfer failed otherwise than by the window's 425: {stderr}"
        );
        assert!(stderr.contains("425"), "{stderr}");
    }
    assert!(completed > 0, "no transfer got a port");
    assert!(
        !refused.is_empty(),
        "20 clients on 4 ports never exhausted the window"
    );
    let stats = lab.ftpnat_json(&["stats"]);
    assert!(
        stats["datapath"]["window_exhausted"].as_u64().unwrap() >= refused.len() as u64,
        "{stats}"
    );
    assert_eq!(stats["window"]["size"], 4, "{stats}");

    let drained = wait_until(std::time::Duration::from_secs(15), || {
        let stats = lab.ftpnat_json(&["stats"]);
        stats["window"]["in_use"] == 0 && stats["sessions"] == 0
    });
    assert!(
        drained.is_ok(),
        "ports still in use: {}",
        lab.ftpnat_json(&["stats"])
    );
    let public = public_ip(&lab).to_string();
    let out = lab
        .python(&lab.server, PASV_ON_EACH, &[&public, "5"], 60)
        .expect("PASV x5");
    let replies: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(replies.len(), 5, "{replies:?}");
    let mut ports: Vec<u16> = replies[..4]
        .iter()
        .map(|reply| {
            assert!(reply.starts_with("227 "), "{replies:?}");
            let numbers: Vec<u16> = reply
                .rsplit('(')
                .next()
                .and_then(|rest| rest.split(')').next())
                .expect("numbers")
                .split(',')
                .map(|n| n.parse().expect("number"))
                .collect();
            numbers[4] * 256 + numbers[5]
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [62000, 62001, 62002, 62003], "{replies:?}");
    assert!(replies[4].starts_with("425 "), "{replies:?}");
}

/// Outside hosts trying window ports: one nobody announced, and one announced to another client.
/// Neither gets a connection (the SYN is dropped: the connect times out), each is counted under
/// its reason, and the announced client still gets its file through its port.
const PINHOLE_PROBES: &str = r#"
import ftplib, hashlib, socket, sys
public, other_source, name = sys.argv[1], sys.argv[2], sys.argv[3]
lo, hi = int(sys.argv[4]), int(sys.argv[5])

def times_out(port, source=None):
    s = socket.socket()
    s.settimeout(2)
    if source:
        s.bind((source, 0))
    try:
        s.connect((public, port))
        return 'connected'
    except socket.timeout:
        return 'timeout'
    except OSError as err:
        return 'error ' + str(err)
    finally:
        s.close()

ftp = ftplib.FTP()
ftp.connect(public, 21, timeout=10)
ftp.login()
ftp.voidcmd('TYPE I')
host, port = ftplib.parse227(ftp.sendcmd('PASV'))
assert host == public, host
unannounced = lo if port != lo else lo + 1
print('unannounced', times_out(unannounced))
print('other-client', times_out(port, other_source))
data = socket.create_connection((public, port), timeout=10)
ftp.sendcmd('RETR ' + name)
digest = hashlib.sha256()
while True:
    chunk = data.recv(65536)
    if not chunk:
        break
    digest.update(chunk)
data.close()
ftp.voidresp()
ftp.quit()
print('sha256', digest.hexdigest())
"#;

#[test]
fn window_ports_admit_only_the_announced_client() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let other_source = "203.0.113.11";
    lab.server
        .ip(&["addr", "add", &format!("{other_source}/24"), "dev", HOST_IF])
        .expect("second WAN address");
    let (_server, file) = vsftpd_on_lan(&lab, VsftpdOptions::default(), 4 * MIB);
    let _agent = start_publishing(&lab, &["21=10.0.0.2"], &[]);
    let public = public_ip(&lab).to_string();
    let (lo, hi) = (WINDOW_LO.to_string(), WINDOW_HI.to_string());
    let out = lab
        .python(
            &lab.server,
            PINHOLE_PROBES,
            &[&public, other_source, file.name(), &lo, &hi],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unannounced timeout"), "{text}");
    assert!(text.contains("other-client timeout"), "{text}");
    assert!(text.contains(&format!("sha256 {}", file.sha256)), "{text}");
    let stats = lab.ftpnat_json(&["stats"]);
    assert!(
        stats["datapath"]["pinhole_no_expectation"]
            .as_u64()
            .unwrap()
            >= 1,
        "{stats}"
    );
    assert!(
        stats["datapath"]["pinhole_wrong_peer"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert_eq!(stats["datapath"]["expectations_used"], 1, "{stats}");
}

/// `ftpnat sessions` and `expectations` report published sessions as such.
#[test]
fn published_sessions_and_expectations_are_reported() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_server, _file) = vsftpd_on_lan(&lab, VsftpdOptions::default(), MIB);
    let _agent = start_publishing(&lab, &["21=10.0.0.2"], &[]);
    let public = public_ip(&lab).to_string();
    let script = r#"
import ftplib, sys, time
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=10)
ftp.login()
print(ftp.sendcmd('PASV'), flush=True)
time.sleep(3)
ftp.quit()
"#;
    std::thread::scope(|scope| {
        let client = scope.spawn(|| lab.python(&lab.server, script, &[&public], 30));
        let reported = wait_until(std::time::Duration::from_secs(10), || {
            lab.ftpnat_json(&["expectations"])
                .as_array()
                .is_some_and(|e| !e.is_empty())
        });
        let sessions = lab.ftpnat_json(&["sessions"]);
        let expectations = lab.ftpnat_json(&["expectations"]);
        assert!(reported.is_ok(), "{sessions} {expectations}");
        let session = &sessions[0];
        assert_eq!(session["kind"], "publish", "{sessions}");
        assert_eq!(session["public"], format!("{public}:21"), "{sessions}");
        assert!(
            session["server"]
                .as_str()
                .unwrap()
                .starts_with("10.0.0.2:21"),
            "{sessions}"
        );
        assert!(
            session["client"]
                .as_str()
                .unwrap()
                .starts_with("203.0.113.10:"),
            "{sessions}"
        );
        let expectation = &expectations[0];
        assert_eq!(expectation["session"], session["id"], "{expectations}");
        assert_eq!(expectation["kind"], "passive", "{expectations}");
        assert_eq!(expectation["peer"], "203.0.113.10", "{expectations}");
        assert!(
            expectation["public"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{public}:620")),
            "{expectations}"
        );
        assert!(
            expectation["target"]
                .as_str()
                .unwrap()
                .starts_with("10.0.0.2:"),
            "{expectations}"
        );
        client.join().expect("client thread").expect("client");
    });
}
