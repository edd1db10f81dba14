//! Control segments longer than the datapath's 512-byte scratch window, or with more commands than
//! the client stage has passes for. Every byte is scanned (a window at a time) up to the last pass,
//! so the session keeps following the stream; an address the datapath cannot rewrite there passes
//! as sent and opens nothing, which is counted, and the session goes on.

use ftpnat_tests::{Lab, LabSpec};
use serde_json::Value;

/// `argv[3]` NOOPs, each padded with an argument of `argv[4]` bytes, and a PORT naming the
/// client's listener, all in one segment; prints how many NOOPs the server answered with 200 and
/// its reply to the PORT. Then an active download with a PORT in a segment of its own, and a
/// passive one: their sha256 sums.
const LONG_SEGMENT: &str = r#"
import ftplib, sys
from ftpnat_lab import retr_active, retr_digest, session_with_listener
server, name = sys.argv[1], sys.argv[2]
noops, padding = int(sys.argv[3]), int(sys.argv[4])
noop = 'NOOP' + (' ' + 'x' * padding if padding else '') + '\r\n'
ftp, listener, host, port = session_with_listener(server)
port_line = 'PORT %s,%d,%d\r\n' % (host.replace('.', ','), port >> 8, port & 255)
ftp.sock.sendall((noop * noops + port_line).encode())
print(sum(ftp.getresp().startswith('200') for _ in range(noops)))
try:
    print(ftp.getresp())
except ftplib.all_errors as refused:
    print(refused)
ftp.sendport(host, port)
print(retr_active(ftp, listener, name))
ftp.set_pasv(True)
print(retr_digest(ftp, name))
ftp.quit()
"#;

fn counter(stats: &Value, name: &str) -> u64 {
    stats["datapath"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// Sends `noops` NOOPs padded with `padding` bytes and a PORT in one segment, then downloads
/// actively and passively; checks the NOOPs were answered, the PORT (not rewritten) refused by
/// the server (it names the client's own address), both later transfers whole, and returns the datapath's counters.
fn long_segment_then_transfers(noops: usize, padding: usize) -> Value {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(1024 * 1024, 1).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let args = [
        server.addr.to_string(),
        file.name().to_owned(),
        noops.to_string(),
        padding.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.client_python(LONG_SEGMENT, &args, 60).expect("client");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines.first(),
        Some(&noops.to_string()),
        "every NOOP of the long segment answered: {lines:?}"
    );
    // The server sees an address other than its peer's and refuses.
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with('5')),
        "the unrewritten PORT was refused by the server: {lines:?}"
    );
    let sums = lines.iter().filter(|l| **l == file.sha256).count();
    assert_eq!(
        sums, 2,
        "active and passive transfers after it work: {lines:?}"
    );
    let stats = lab.ftpnat_json(&["stats"]);
    // The later active download's PORT and the passive one's reply opened one expectation each;
    // the long segment's PORT opened nothing.
    assert_eq!(counter(&stats, "expectations_created"), 2, "{stats}");
    stats
}

#[test]
fn a_port_after_byte_512_of_a_segment_is_counted_and_the_session_goes_on() {
    // 15 lines of 46 bytes: the PORT starts at byte 690, in the scan's second window.
    let stats = long_segment_then_transfers(15, 40);
    assert_eq!(counter(&stats, "rewrites_skipped"), 1, "{stats}");
    assert_eq!(counter(&stats, "segments_partly_examined"), 0, "{stats}");
}

#[test]
fn a_port_after_more_commands_than_passes_is_counted_and_the_session_goes_on() {
    // One pass per command: 120 of them outnumber the client stage's passes, and the rest of the
    // segment (with its PORT) passes unexamined.
    let stats = long_segment_then_transfers(120, 0);
    // (The server's 120 replies may come in segments of more than 26 lines too: each is counted.)
    assert!(counter(&stats, "segments_partly_examined") >= 1, "{stats}");
}
