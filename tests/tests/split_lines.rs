//! A control line that arrives in two TCP segments. Linux's helper drops such a segment and waits
//! for a retransmission that puts the line back together, which a sender that keeps its segment
//! boundaries never sends: the session hangs. ftpnat reads the line across the segments; where the
//! announced address itself is cut in two, the first half has already left the router unchanged,
//! so the line passes as it is, the skip is counted and the session goes on.

use ftpnat_tests::{
    Lab, LabSpec,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
};
use serde_json::Value;

/// An active download whose `PORT`/`EPRT` line is sent in two segments, cut after `argv[4]`
/// bytes, 300 ms apart. Prints the server's reply to the line, then the sha256 of the file if the
/// server accepted it; then downloads the file again in passive mode and prints that sha256 too:
/// the session must still work.
const SPLIT_ANNOUNCEMENT: &str = r#"
import ftplib, hashlib, socket, sys, time
server, name, verb, cut = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ftp = ftplib.FTP()
ftp.connect(server, 21, timeout=20)
ftp.login()
ftp.voidcmd('TYPE I')
ftp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
host = ftp.sock.getsockname()[0]
listener = socket.create_server((host, 0))
port = listener.getsockname()[1]
if verb == 'PORT':
    line = 'PORT %s,%d,%d\r\n' % (host.replace('.', ','), port >> 8, port & 255)
else:
    line = 'EPRT |1|%s|%d|\r\n' % (host, port)
ftp.sock.sendall(line[:cut].encode())
time.sleep(0.3)
ftp.sock.sendall(line[cut:].encode())
try:
    print(ftp.getresp())
    ftp.putcmd('RETR ' + name)
    print(ftp.getresp())
    conn, _ = listener.accept()
    digest = hashlib.sha256()
    while chunk := conn.recv(65536):
        digest.update(chunk)
    conn.close()
    ftp.voidresp()
    print(digest.hexdigest())
except ftplib.error_perm as refused:
    print(refused)
digest = hashlib.sha256()
ftp.set_pasv(True)
ftp.retrbinary('RETR ' + name, digest.update)
print(digest.hexdigest())
ftp.quit()
"#;

fn counter(stats: &Value, name: &str) -> u64 {
    stats["datapath"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// Runs the split download with the line cut after `cut` bytes; returns the script's output lines.
fn split_download(lab: &Lab, server: &str, file: &str, verb: &str, cut: usize) -> Vec<String> {
    let out = lab
        .client_python(
            SPLIT_ANNOUNCEMENT,
            &[server, file, verb, &cut.to_string()],
            60,
        )
        .unwrap_or_else(|err| panic!("{verb} cut at {cut}: {err:#}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_line_cut_before_its_address_is_rewritten_across_segments() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(2 * 1024 * 1024, 2).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = server.addr.to_string();
    // In the verb, right after it, and after its space: the address is whole in the second
    // segment, which is where ftpnat rewrites it.
    let cuts = [
        ("PORT", 2),
        ("PORT", 4),
        ("PORT", 5),
        ("EPRT", 3),
        ("EPRT", 5),
    ];
    for (verb, cut) in cuts {
        let lines = split_download(&lab, &server, file.name(), verb, cut);
        assert!(
            lines.first().is_some_and(|l| l.starts_with("200")),
            "{verb} cut at {cut}: the server did not accept the rewritten line: {lines:?}"
        );
        let sums: Vec<&String> = lines.iter().filter(|l| **l == file.sha256).collect();
        assert_eq!(sums.len(), 2, "{verb} cut at {cut}: {lines:?}");
    }
    let stats = lab.ftpnat_json(&["stats"]).expect("stats");
    assert_eq!(counter(&stats, "rewrites_skipped"), 0, "{stats}");
    // Every active transfer went through its own window port.
    assert_eq!(
        counter(&stats, "expectations_created"),
        2 * cuts.len() as u64,
        "{stats}"
    );
    // The lines really were cut: the client's first segments are exactly the cut lengths.
    let lan = lab.capture_text(ROUTER_LAN_IF).expect("capture");
    for (verb, cut) in cuts {
        let length = format!("length {cut}");
        assert!(
            lan.lines().any(|l| l.contains(".21: Flags [P.], seq")
                && (l.ends_with(&length) || l.contains(&format!("{length}:")))),
            "{verb} cut at {cut}: no {cut}-byte segment to the server in the LAN capture"
        );
    }
    let wan = lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        !wan.contains("10,0,0,2") && !wan.contains("|10.0.0.2|"),
        "the client's own address reached the WAN"
    );
}

#[test]
fn a_line_cut_inside_its_address_passes_counted_and_the_session_goes_on() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(2 * 1024 * 1024, 2).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = server.addr.to_string();
    // "PORT 10,0" | ",0,2,…" and "EPRT |1|10.0" | ".0.2|…": the first half left unchanged.
    for (verb, cut) in [("PORT", 9), ("EPRT", 12)] {
        let lines = split_download(&lab, &server, file.name(), verb, cut);
        assert!(
            lines.first().is_some_and(|l| l.starts_with('5')),
            "{verb} cut at {cut}: the server should refuse the client's private address: {lines:?}"
        );
        assert_eq!(
            lines.last(),
            Some(&file.sha256),
            "{verb} cut at {cut}: the session did not go on: {lines:?}"
        );
    }
    let stats = lab.ftpnat_json(&["stats"]).expect("stats");
    assert_eq!(counter(&stats, "rewrites_skipped"), 2, "{stats}");
    // Only the two passive downloads opened anything.
    assert_eq!(counter(&stats, "expectations_created"), 2, "{stats}");
}
