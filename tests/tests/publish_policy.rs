//! Issue 12, item 3: a published server's 227/229 cannot open a pinhole beyond its passive ports,
//! and a packet forged on the WAN with a LAN server's address gets into none of its connections.
//! As in `publish.rs`, the server runs in the lab's `client` namespace (10.0.0.2, the LAN) and the
//! outside clients in the `server` namespace (203.0.113.10, the WAN).

use ftpnat_tests::{FtpServer, Lab, LabSpec, TestFile, lab::HOST_IF, servers::VsftpdOptions};
use serde_json::Value;

const WINDOW: &str = "62000-62099";

fn public_ip(lab: &Lab) -> String {
    lab.spec.router_wan.to_string()
}

/// vsftpd on the LAN host, passive ports 30000-30009, serving one file.
fn vsftpd_on_lan(lab: &Lab) -> (FtpServer, TestFile) {
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("data.bin"), 256 * 1024, 7).expect("test file");
    let options = VsftpdOptions {
        pasv_ports: Some((30000, 30009)),
        ..VsftpdOptions::default()
    };
    let server = FtpServer::vsftpd(&lab.client, lab.spec.client, &root, lab.dir(), &options)
        .expect("vsftpd");
    (server, file)
}

/// Asks for passive mode both ways and prints the replies; downloads `argv[2]` in passive mode
/// and prints its sha256, or `failed` and why.
const PASSIVE: &str = r#"
import ftplib, hashlib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=10)
ftp.login()
print('pasv', ftp.sendcmd('PASV'), flush=True)
print('epsv', ftp.sendcmd('EPSV'), flush=True)
digest = hashlib.sha256()
try:
    ftp.retrbinary('RETR ' + sys.argv[2], digest.update)
    print('digest', digest.hexdigest(), flush=True)
except Exception as err:
    print('failed', err, flush=True)
"#;

fn run_passive(lab: &Lab, file: &TestFile) -> String {
    let out = lab
        .python(&lab.server, PASSIVE, &[&public_ip(lab), file.name()], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_passive_port_outside_the_published_range_opens_nothing() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_server, file) = vsftpd_on_lan(&lab);
    // vsftpd announces 30000-30009; the operator allows only 40000-40100.
    let _agent = lab
        .start_ftpnat(&[
            "--port-window",
            WINDOW,
            "--publish",
            "21=10.0.0.2,passive=40000-40100",
        ])
        .expect("ftpnat run");
    let out = run_passive(&lab, &file);
    // Refused replies pass as the server sent them: its own address, which the WAN cannot reach.
    assert!(
        out.contains("pasv 227") && out.contains("(10,0,0,2,117,"),
        "{out}"
    );
    assert!(out.contains("epsv 229") && out.contains("(|||300"), "{out}");
    assert!(out.contains("failed"), "a transfer got through: {out}");
    assert_eq!(lab.ftpnat_json(&["expectations"]), Value::Array(Vec::new()));
    let stats = lab.ftpnat_json(&["stats"]);
    assert!(
        stats["refusals_by_reason"]["passive_port_not_allowed"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "the PASV, the EPSV and the transfer's own passive reply were not counted: {stats}"
    );
}

#[test]
fn a_passive_port_inside_the_published_range_works() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_server, file) = vsftpd_on_lan(&lab);
    let _agent = lab
        .start_ftpnat(&[
            "--port-window",
            WINDOW,
            "--publish",
            "21=10.0.0.2,passive=30000-30009",
        ])
        .expect("ftpnat run");
    let out = run_passive(&lab, &file);
    assert!(
        out.contains(&format!("digest {}", file.sha256)),
        "the passive download failed: {out}"
    );
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(
        stats["refusals_by_reason"]["passive_port_not_allowed"], 0,
        "{stats}"
    );
}

/// An outside client's session, idle until the test says go; then a passive download whose sha256
/// it prints.
const IDLE_THEN_DOWNLOAD: &str = r#"
import sys
from ftpnat_lab import retr_digest
import ftplib
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=30)
ftp.login()
ftp.voidcmd('TYPE I')
print('idle', ftp.sock.getsockname()[1], flush=True)
sys.stdin.readline()
print('digest', retr_digest(ftp, sys.argv[2]), flush=True)
ftp.quit()
"#;

/// Sends, on the WAN, frames to the router carrying segments that claim to come from the LAN
/// server `argv[1]:21` to the outside client `argv[2]:argv[3]`: what the router's publish reply
/// entry for that control connection matches. `argv[4]` of them, resets and data.
const FORGE_LAN_SOURCE: &str = r#"
import random, socket, sys
from ftpnat_lab import ACK, PSH, RST, forged_tcp
lan, client, cport, count, iface, router = sys.argv[1:7]
router_mac = None
for line in open('/proc/net/arp').read().splitlines()[1:]:
    fields = line.split()
    if fields[0] == router:
        router_mac = bytes.fromhex(fields[3].replace(':', ''))
own_mac = bytes.fromhex(open(f'/sys/class/net/{iface}/address').read().strip().replace(':', ''))
frames = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
frames.bind((iface, 0))
for _ in range(int(count)):
    seq, ack = random.getrandbits(32), random.getrandbits(32)
    for flags, payload in ((RST | ACK, b''), (PSH | ACK, b'226 forged\r\n')):
        segment = forged_tcp(lan, 21, client, int(cport), seq, ack, flags, payload)
        frames.send(router_mac + own_mac + b'\x08\x00' + segment)
print('sent', flush=True)
"#;

#[test]
fn a_lan_source_forged_on_the_wan_gets_into_no_connection() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_server, file) = vsftpd_on_lan(&lab);
    let _agent = lab
        .start_ftpnat(&["--port-window", WINDOW, "--publish", "21=10.0.0.2"])
        .expect("ftpnat run");
    let public = public_ip(&lab);
    let mut session = lab
        .python_stepped(
            &lab.server,
            IDLE_THEN_DOWNLOAD,
            &[&public, file.name()],
            120,
        )
        .expect("outside client");
    let client_port = session.expect("idle").expect("logged in")[0].clone();
    let control_packets = || {
        let flows = lab.ftpnat_json(&["flows"]);
        flows
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["kind"] == "control"))
            .and_then(|row| row["packets"].as_u64())
            .unwrap_or_else(|| panic!("no control flow: {flows}"))
    };
    // Once the last delayed ACK of the login has gone by.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let before = control_packets();
    let client = lab.spec.server.to_string();
    let lan = lab.spec.client.to_string();
    lab.python(
        &lab.server,
        FORGE_LAN_SOURCE,
        &[&lan, &client, &client_port, "200", HOST_IF, &public],
        60,
    )
    .unwrap_or_else(|err| panic!("{err:#}"));
    // The idle session sent nothing meanwhile: none of the forged packets got into its flows.
    assert_eq!(control_packets(), before, "forged packets were taken");
    assert!(
        lab.datapath_counter("wrong_interface") >= 400,
        "{}",
        lab.ftpnat_json(&["stats"])
    );
    session.proceed().expect("go");
    let digest = session.expect("digest").expect("download");
    assert_eq!(digest, std::slice::from_ref(&file.sha256));
    session.finish().unwrap_or_else(|err| panic!("{err:#}"));
}

#[test]
fn a_privileged_passive_port_opens_nothing_by_default() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("data.bin"), 64 * 1024, 8).expect("test file");
    // A server whose passive replies name another of its services: a port below 1024.
    let _server = FtpServer::pyftpdlib_with_passive_ports(
        &lab.client,
        lab.spec.client,
        21,
        &root,
        lab.dir(),
        Some((990, 990)),
    )
    .expect("pyftpdlib");
    let _agent = lab
        .start_ftpnat(&["--port-window", WINDOW, "--publish", "21=10.0.0.2"])
        .expect("ftpnat run");
    let out = run_passive(&lab, &file);
    assert!(out.contains("(10,0,0,2,3,222)"), "{out}");
    assert!(out.contains("(|||990|)"), "{out}");
    assert!(out.contains("failed"), "a transfer got through: {out}");
    assert_eq!(lab.ftpnat_json(&["expectations"]), Value::Array(Vec::new()));
    let stats = lab.ftpnat_json(&["stats"]);
    assert!(
        stats["refusals_by_reason"]["passive_port_not_allowed"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "{stats}"
    );
}
