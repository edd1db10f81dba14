//! Retransmissions of a rewritten control segment. The receiver must get the same bytes at the
//! same sequence numbers as in the first transmission, also when the sender's retransmission is
//! not a copy of it: Linux, when its retransmission timer fires, merges the following unacknowledged
//! segments into the one it resends.

use ftpnat_tests::{Agent, Lab, LabSpec, TcpSegment, lab::ROUTER_WAN_IF};
use serde_json::Value;

/// For the server's firewall: drop only the first segment that matches.
const ONCE: u32 = 1_000_000;

/// Active download whose PORT is followed at once by a NOOP in a segment of its own (no Nagle).
/// Prints both replies, then the file's sha256.
const PORT_AND_NOOP_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import retr_active, session_with_listener
server, name = sys.argv[1], sys.argv[2]
ftp, listener, host, port = session_with_listener(server)
ftp.sock.sendall(('PORT %s,%d,%d\r\n' % (host.replace('.', ','), port >> 8, port & 255)).encode())
ftp.sock.sendall(b'NOOP\r\n')
print(ftp.getresp())
print(ftp.getresp())
print(retr_active(ftp, listener, name))
ftp.quit()
"#;

/// Active download whose PORT follows a NOOP in a segment of its own (no Nagle). Prints both
/// replies, then the file's sha256.
const NOOP_THEN_PORT_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import retr_active, session_with_listener
server, name = sys.argv[1], sys.argv[2]
ftp, listener, host, port = session_with_listener(server)
ftp.sock.sendall(b'NOOP\r\n')
ftp.sock.sendall(('PORT %s,%d,%d\r\n' % (host.replace('.', ','), port >> 8, port & 255)).encode())
print(ftp.getresp())
print(ftp.getresp())
print(retr_active(ftp, listener, name))
ftp.quit()
"#;

/// Active download whose PORT line goes out in two segments, cut inside the address after 9
/// bytes ("PORT 10,0" | ",0,2,…"). Prints the reply to the PORT, then the file's sha256.
const PORT_CUT_IN_ITS_ADDRESS_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import retr_active, session_with_listener
server, name = sys.argv[1], sys.argv[2]
ftp, listener, host, port = session_with_listener(server)
line = 'PORT %s,%d,%d\r\n' % (host.replace('.', ','), port >> 8, port & 255)
ftp.sock.sendall(line[:9].encode())
ftp.sock.sendall(line[9:].encode())
print(ftp.getresp())
print(retr_active(ftp, listener, name))
ftp.quit()
"#;

/// The client's segments to the FTP port on the router's WAN side, in order: their sequence
/// numbers and payloads.
fn segments_to_port_21(lab: &Lab) -> Vec<(u32, String)> {
    lab.capture_segments(ROUTER_WAN_IF)
        .expect("capture")
        .iter()
        .filter(|s| s.dst.port() == 21 && !s.payload.is_empty())
        .map(|s: &TcpSegment| (s.seq, s.text()))
        .collect()
}

/// The `PORT h,h,h,h,p,p` text in a payload.
fn port_line(payload: &str) -> Option<&str> {
    let start = payload.find("PORT ")?;
    let rest = &payload[start..];
    let end = rest[5..]
        .find(|c: char| !c.is_ascii_digit() && c != ',')
        .map_or(rest.len(), |n| n + 5);
    Some(&rest[..end])
}

/// Runs an active-download `script` (it prints the PORT's reply first and the file's sha256
/// last) through ftpnat while the server's firewall drops the first segment carrying each of
/// `lost`, with tail loss probes off in the client, so that the client's retransmission timer
/// resends and merges what was lost. Checks the server accepted the PORT and the file arrived.
fn download_with_first_copies_lost(script: &str, lost: &[&str]) -> (Lab, Agent) {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(1024 * 1024, 1).expect("vsftpd");
    lab.client
        .exec("sysctl", &["-qw", "net.ipv4.tcp_early_retrans=0"])
        .expect("sysctl in the client namespace");
    for text in lost {
        lab.server_drops_first_of_every(text, ONCE);
    }
    let agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let out = lab
        .client_python(script, &[&server.addr.to_string(), file.name()], 90)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("200")),
        "the server did not accept the rewritten PORT: {lines:?}"
    );
    assert_eq!(lines.last(), Some(&file.sha256), "{lines:?}");
    (lab, agent)
}

#[test]
fn a_coalesced_retransmission_of_a_port_is_rewritten_like_the_original() {
    let (lab, _agent) =
        download_with_first_copies_lost(PORT_AND_NOOP_THEN_RETR, &["PORT ", "NOOP"]);

    let segments = segments_to_port_21(&lab);
    let (first_seq, first) = segments
        .iter()
        .find(|(_, s)| s.contains("PORT ") && !s.contains("NOOP"))
        .expect("the PORT's first transmission on the WAN");
    let (merged_seq, merged) = segments
        .iter()
        .find(|(_, s)| s.contains("PORT ") && s.contains("NOOP"))
        .expect(
            "a retransmission with the NOOP merged into the PORT's segment: the test did not bite",
        );
    assert_eq!(
        (first_seq, port_line(first)),
        (merged_seq, port_line(merged)),
        "the retransmission carries other bytes, or at another place, than the original"
    );
    assert!(port_line(first).is_some_and(|l| l.starts_with("PORT 203,0,113,254,")));

    let stats: Value = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

#[test]
fn a_retransmission_merging_a_port_into_the_segment_before_it_is_rewritten_inside_it() {
    // Both first copies lost: the client's timer resends from the NOOP, with the PORT merged in,
    // so the rewritten segment starts inside the retransmission.
    let (lab, _agent) =
        download_with_first_copies_lost(NOOP_THEN_PORT_THEN_RETR, &["NOOP", "PORT "]);

    let segments = segments_to_port_21(&lab);
    let (first_seq, first) = segments
        .iter()
        .find(|(_, s)| s.contains("PORT ") && !s.contains("NOOP"))
        .expect("the PORT's first transmission on the WAN");
    let (merged_seq, merged) = segments
        .iter()
        .find(|(_, s)| s.starts_with("NOOP") && s.contains("PORT "))
        .expect("a retransmission from the NOOP with the PORT merged in: the test did not bite");
    assert_eq!(
        (
            merged_seq.wrapping_add(merged.find("PORT ").unwrap() as u32),
            port_line(merged)
        ),
        (*first_seq, port_line(first)),
        "the retransmission carries other bytes, or at another place, than the original"
    );
    assert!(port_line(first).is_some_and(|l| l.starts_with("PORT 203,0,113,254,")));

    let stats: Value = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// A PORT cut inside its address: ftpnat sends "PORT " and holds "10,0", and the next segment
/// carries the whole rewritten address. The server loses the first segment (`drop_first`), or
/// both; the client's retransmission (on its own, or with the second merged into it) must get
/// the same bytes as the first time.
fn held_address_survives_retransmission(drop_second_too: bool) {
    let lost: &[&str] = if drop_second_too {
        &["PORT ", "203,0,113,254,"]
    } else {
        &["PORT "]
    };
    let (lab, _agent) = download_with_first_copies_lost(PORT_CUT_IN_ITS_ADDRESS_THEN_RETR, lost);
    let segments = segments_to_port_21(&lab);
    // Where the PORT line starts in the stream, each time the first segment went out.
    let cuts: Vec<u32> = segments
        .iter()
        .filter(|(_, s)| s.ends_with("PORT "))
        .map(|(seq, s)| seq.wrapping_add((s.len() - "PORT ".len()) as u32))
        .collect();
    let completion = segments
        .iter()
        .find_map(|(_, s)| Some(&s[s.find("203,0,113,254,")?..]))
        .expect("the second segment, with the whole rewritten address");
    if drop_second_too {
        let (merged_seq, merged) = segments
            .iter()
            .find(|(_, s)| s.contains("PORT 203,0,113,254,"))
            .expect("a retransmission with both segments merged: the test did not bite");
        assert!(
            merged.ends_with(&format!("PORT {completion}")),
            "the merged retransmission carries other bytes than the two segments: {segments:?}"
        );
        let merged_port = merged_seq.wrapping_add((merged.len() - completion.len() - 5) as u32);
        assert_eq!(
            cuts.first(),
            Some(&merged_port),
            "the merged retransmission puts the PORT elsewhere in the stream: {segments:?}"
        );
    } else {
        assert!(
            cuts.len() == 2 && cuts[0] == cuts[1],
            "the first segment was not cut to \"PORT \" at the same place both times: \
             {segments:?}"
        );
    }
    let stats: Value = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

#[test]
fn a_segment_whose_address_was_held_is_cut_again_when_resent() {
    held_address_survives_retransmission(false);
}

#[test]
fn a_resent_held_segment_with_the_next_merged_in_gets_the_whole_address() {
    held_address_survives_retransmission(true);
}
