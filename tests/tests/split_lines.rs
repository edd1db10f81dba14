//! A control line that arrives in several TCP segments. Linux's helper drops such a segment and
//! waits for a retransmission that puts the line back together, which a sender that keeps its
//! segment boundaries never sends: the session hangs. ftpnat reads the line across the segments.
//! Cut before the address, the line is rewritten in the segment that holds the address. Cut
//! inside it, ftpnat holds the first segment's part of the address back and the next segment
//! carries the whole rewritten address; if that line is not to be rewritten after all (refused,
//! or cut again), the held bytes go back in front of the next segment and it passes as sent.

use ftpnat_tests::{
    Lab, LabSpec,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
};
use serde_json::Value;

/// An active download whose `PORT`/`EPRT` line is sent in pieces, cut after each of the byte
/// counts in `argv[4]` (comma-separated), 300 ms apart; `argv[5]`, if given, is the address to
/// announce instead of the client's own. Prints the server's reply to the line, then the sha256
/// of the file if the server accepted it; then downloads the file again in passive mode and
/// prints that sha256 too: the session must still work.
const SPLIT_ANNOUNCEMENT: &str = r#"
import ftplib, sys, time
from ftpnat_lab import retr_active, retr_digest, session_with_listener
server, name, verb = sys.argv[1], sys.argv[2], sys.argv[3]
cuts = [int(c) for c in sys.argv[4].split(',')]  # from the end if negative
ftp, listener, host, port = session_with_listener(server)
announced = sys.argv[5] if len(sys.argv) > 5 else host
if verb == 'PORT':
    line = 'PORT %s,%d,%d\r\n' % (announced.replace('.', ','), port >> 8, port & 255)
else:
    line = 'EPRT |1|%s|%d|\r\n' % (announced, port)
cuts = [c if c >= 0 else len(line) + c for c in cuts]
start = 0
for cut in cuts + [len(line)]:
    ftp.sock.sendall(line[start:cut].encode())
    start = cut
    time.sleep(0.3)
try:
    print(ftp.getresp())
    print(retr_active(ftp, listener, name))
except ftplib.error_perm as refused:
    print(refused)
ftp.set_pasv(True)
print(retr_digest(ftp, name))
ftp.quit()
"#;

fn counter(stats: &Value, name: &str) -> u64 {
    stats["datapath"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// Runs the split download with the line cut after `cuts` bytes (and announcing `announced`
/// instead of the client's address, if given); returns the script's output lines.
fn split_download(
    lab: &Lab,
    server: &str,
    file: &str,
    verb: &str,
    cuts: &str,
    announced: Option<&str>,
) -> Vec<String> {
    let mut args = vec![server, file, verb, cuts];
    args.extend(announced);
    let out = lab
        .client_python(SPLIT_ANNOUNCEMENT, &args, 60)
        .unwrap_or_else(|err| panic!("{verb} cut at {cuts}: {err:#}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The client's segments to the FTP port in a capture have exactly these payload lengths.
fn assert_segment_sent(capture: &str, verb: &str, length: usize) {
    let length = format!("length {length}");
    assert!(
        capture.lines().any(|l| l.contains(".21: Flags [P.], seq")
            && (l.ends_with(&length) || l.contains(&format!("{length}:")))),
        "{verb}: no segment of {length} to the server in the capture: the line was not cut"
    );
}

#[test]
fn a_line_cut_before_or_inside_its_address_is_rewritten_whole() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(2 * 1024 * 1024, 2).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = server.addr.to_string();
    // In the verb, right after it, after its space (the address whole in the second segment),
    // and inside the address: "PORT 10,0" | ",0,2,…", "EPRT |1|10.0" | ".0.2|…", and right
    // before the CR LF (the whole address held).
    let cuts = [
        ("PORT", 2),
        ("PORT", 4),
        ("PORT", 5),
        ("PORT", 9),
        ("EPRT", 3),
        ("EPRT", 5),
        ("EPRT", 12),
        ("PORT", 6),
        ("PORT", -2),
    ];
    for (verb, cut) in cuts {
        let lines = split_download(&lab, &server, file.name(), verb, &cut.to_string(), None);
        assert!(
            lines.first().is_some_and(|l| l.starts_with("200")),
            "{verb} cut at {cut}: the server did not accept the rewritten line: {lines:?}"
        );
        let sums = lines.iter().filter(|l| **l == file.sha256).count();
        assert_eq!(sums, 2, "{verb} cut at {cut}: {lines:?}");
    }
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(counter(&stats, "rewrites_skipped"), 0, "{stats}");
    // Every active transfer went through its own window port, every passive one its own
    // expectation.
    assert_eq!(
        counter(&stats, "expectations_created"),
        2 * cuts.len() as u64,
        "{stats}"
    );
    let lan = lab.capture_text(ROUTER_LAN_IF).expect("capture");
    for (verb, cut) in cuts {
        // (The cut before the CR LF shows as the 2-byte segment after it.)
        assert_segment_sent(&lan, verb, usize::try_from(cut).unwrap_or(2));
    }
    let wan = lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        !wan.contains("10,0,0,2") && !wan.contains("|10.0.0.2|") && !wan.contains("10,0"),
        "a part of the client's own address reached the WAN"
    );
}

#[test]
fn a_held_address_goes_back_as_sent_when_its_line_is_not_rewritten() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(2 * 1024 * 1024, 2).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = server.addr.to_string();

    // Cut twice inside the address: the second segment does not end the line, so the held
    // bytes go back in front of it and the line reaches the server as the client sent it.
    let lines = split_download(&lab, &server, file.name(), "PORT", "9,12", None);
    assert!(
        lines.first().is_some_and(|l| l.starts_with('5')),
        "the server should refuse the client's private address: {lines:?}"
    );
    assert_eq!(
        lines.last(),
        Some(&file.sha256),
        "the session did not go on"
    );
    // (vsftpd refuses it because it names the client's private address: had any of it been
    // rewritten, the server would have seen a malformed line or the public address.)
    let lan = lab.capture_text(ROUTER_LAN_IF).expect("capture");
    assert_segment_sent(&lan, "PORT", 9);
    assert_segment_sent(&lan, "PORT", 3);

    // A bounce cut inside its address: refused, given back untouched, counted as a refusal.
    let lines = split_download(&lab, &server, file.name(), "EPRT", "12", Some("10.0.0.99"));
    assert!(
        lines.first().is_some_and(|l| l.starts_with('5')),
        "{lines:?}"
    );
    assert_eq!(
        lines.last(),
        Some(&file.sha256),
        "the session did not go on"
    );
    let wan = lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        wan.contains("|1|10.0.0.99|"),
        "the refused line did not pass as sent"
    );

    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(counter(&stats, "rewrites_skipped"), 1, "{stats}");
    assert_eq!(stats["refusals_by_reason"]["bounce"], 1, "{stats}");
    // Only the two passive downloads opened anything.
    assert_eq!(counter(&stats, "expectations_created"), 2, "{stats}");
}
