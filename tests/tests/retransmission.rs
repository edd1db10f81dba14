//! Retransmissions of a rewritten control segment. The receiver must get the same bytes at the
//! same sequence numbers as in the first transmission, also when the sender's retransmission is
//! not a copy of it: Linux, when its retransmission timer fires, merges the following unacknowledged
//! segments into the one it resends. Each scenario runs over IPv4 (a masqueraded `PORT`) and over
//! IPv6 (an `EPRT |2|` through NAT66, whose rewriting changes the line's length as well); those
//! that do not hold bytes back run in IPv6 firewall mode too, where the line must pass as sent
//! and still be followed.

use ftpnat_tests::{Agent, Family, Lab, lab::ROUTER_WAN_IF};
use serde_json::Value;

/// Active download whose PORT (EPRT over IPv6) is followed at once by a NOOP in a segment of its
/// own (no Nagle). Prints both replies, then the file's sha256.
const ANNOUNCEMENT_AND_NOOP_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import active_command, retr_active, session_with_listener
server, name = sys.argv[1], sys.argv[2]
ftp, listener, host, port = session_with_listener(server)
ftp.sock.sendall(active_command(host, port).encode())
ftp.sock.sendall(b'NOOP\r\n')
print(ftp.getresp())
print(ftp.getresp())
print(retr_active(ftp, listener, name))
ftp.quit()
"#;

/// Active download whose PORT (EPRT over IPv6) follows a NOOP in a segment of its own (no
/// Nagle). Prints both replies, then the file's sha256.
const NOOP_THEN_ANNOUNCEMENT_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import active_command, retr_active, session_with_listener
server, name = sys.argv[1], sys.argv[2]
ftp, listener, host, port = session_with_listener(server)
ftp.sock.sendall(b'NOOP\r\n')
ftp.sock.sendall(active_command(host, port).encode())
print(ftp.getresp())
print(ftp.getresp())
print(retr_active(ftp, listener, name))
ftp.quit()
"#;

/// Active download whose PORT (EPRT over IPv6) line goes out in two segments, cut after
/// `argv[3]` bytes, inside the address ("PORT 10,0" | ",0,2,…"). Prints the reply to the line,
/// then the file's sha256.
const ANNOUNCEMENT_CUT_IN_ITS_ADDRESS_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import active_command, retr_active, session_with_listener
server, name, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
ftp, listener, host, port = session_with_listener(server)
line = active_command(host, port)
ftp.sock.sendall(line[:cut].encode())
ftp.sock.sendall(line[cut:].encode())
print(ftp.getresp())
print(retr_active(ftp, listener, name))
ftp.quit()
"#;

/// The active-transfer line in a payload, from its verb to its CR (or the payload's end).
fn announcement(family: Family, payload: &str) -> Option<&str> {
    let start = payload.find(family.active_verb())?;
    let rest = &payload[start..];
    Some(rest.split('\r').next().unwrap_or(rest))
}

/// Checks that the first transmission of the line carries the address the server must get: the
/// router's public one, or the client's own in firewall mode.
fn assert_announces(lab: &Lab, family: Family, line: Option<&str>) {
    let public = format!(
        "{}{}",
        family.active_verb(),
        family.announced_address_text(lab)
    );
    assert!(
        line.is_some_and(|l| l.starts_with(&public)),
        "the line on the WAN is not {public}…: {line:?}"
    );
}

/// Runs an active-download `script` (it prints the announcement's reply first and the file's
/// sha256 last; `args` follow the server's address and the file's name) through ftpnat in
/// `family`'s `lab` while the server's firewall drops the first segment carrying each of `lost`,
/// with tail loss probes off in the client, so that the client's retransmission timer resends and
/// merges what was lost. Checks the server accepted the line and the file arrived (in firewall
/// mode, past the firewall: ftpnat followed the line).
fn download_with_first_copies_lost(
    family: Family,
    lab: &Lab,
    script: &str,
    args: &[&str],
    lost: &[&str],
) -> Agent {
    let (server, file) = lab.serve_file(1024 * 1024, 1).expect("vsftpd");
    // (The ipv4 sysctls of TCP are TCP's over IPv6 too.)
    lab.client
        .exec("sysctl", &["-qw", "net.ipv4.tcp_early_retrans=0"])
        .expect("sysctl in the client namespace");
    for text in lost {
        family.server_drops_first(lab, text);
    }
    let agent = family.start_ftpnat(lab);
    let server = family.server_addr(&server).to_string();
    let mut all_args = vec![server.as_str(), file.name()];
    all_args.extend(args);
    let out = lab
        .client_python(script, &all_args, 90)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("200")),
        "the server did not accept the rewritten line: {lines:?}"
    );
    assert_eq!(lines.last(), Some(&file.sha256), "{lines:?}");
    family.assert_firewall_dropped_nothing(lab);
    agent
}

fn coalesced_retransmission_carries_what_the_original_did(family: Family) {
    let verb = family.active_verb();
    let lab = family.lab();
    let _agent = download_with_first_copies_lost(
        family,
        &lab,
        ANNOUNCEMENT_AND_NOOP_THEN_RETR,
        &[],
        &[verb, "NOOP"],
    );

    let segments = family.control_segments(&lab, ROUTER_WAN_IF);
    let (first_seq, first) = segments
        .iter()
        .find(|(_, s)| s.contains(verb) && !s.contains("NOOP"))
        .expect("the line's first transmission on the WAN");
    let (merged_seq, merged) = segments
        .iter()
        .find(|(_, s)| s.contains(verb) && s.contains("NOOP"))
        .expect(
            "a retransmission with the NOOP merged into the line's segment: the test did not bite",
        );
    assert_eq!(
        (first_seq, announcement(family, first)),
        (merged_seq, announcement(family, merged)),
        "the retransmission carries other bytes, or at another place, than the original"
    );
    assert_announces(&lab, family, announcement(family, first));

    let stats: Value = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

#[test]
fn a_coalesced_retransmission_of_a_port_is_rewritten_like_the_original() {
    coalesced_retransmission_carries_what_the_original_did(Family::Ipv4);
}

#[test]
fn a_coalesced_retransmission_of_an_ipv6_eprt_is_rewritten_like_the_original() {
    coalesced_retransmission_carries_what_the_original_did(Family::Ipv6Nat66);
}

fn retransmission_merging_into_the_segment_before_carries_the_line_where_it_was(family: Family) {
    // Both first copies lost: the client's timer resends from the NOOP, with the line merged in,
    // so the rewritten segment starts inside the retransmission.
    let verb = family.active_verb();
    let lab = family.lab();
    let _agent = download_with_first_copies_lost(
        family,
        &lab,
        NOOP_THEN_ANNOUNCEMENT_THEN_RETR,
        &[],
        &["NOOP", verb],
    );

    let segments = family.control_segments(&lab, ROUTER_WAN_IF);
    let (first_seq, first) = segments
        .iter()
        .find(|(_, s)| s.contains(verb) && !s.contains("NOOP"))
        .expect("the line's first transmission on the WAN");
    let (merged_seq, merged) = segments
        .iter()
        .find(|(_, s)| s.starts_with("NOOP") && s.contains(verb))
        .expect("a retransmission from the NOOP with the line merged in: the test did not bite");
    assert_eq!(
        (
            merged_seq.wrapping_add(merged.find(verb).unwrap() as u32),
            announcement(family, merged)
        ),
        (*first_seq, announcement(family, first)),
        "the retransmission carries other bytes, or at another place, than the original"
    );
    assert_announces(&lab, family, announcement(family, first));

    let stats: Value = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

#[test]
fn a_coalesced_retransmission_of_an_ipv6_eprt_passes_as_sent_in_firewall_mode() {
    coalesced_retransmission_carries_what_the_original_did(Family::Ipv6Firewall);
}

#[test]
fn a_retransmission_merging_a_port_into_the_segment_before_it_is_rewritten_inside_it() {
    retransmission_merging_into_the_segment_before_carries_the_line_where_it_was(Family::Ipv4);
}

#[test]
fn a_retransmission_merging_an_ipv6_eprt_into_the_segment_before_it_is_rewritten_inside_it() {
    retransmission_merging_into_the_segment_before_carries_the_line_where_it_was(Family::Ipv6Nat66);
}

/// A PORT (EPRT) cut inside its address, 4 bytes into it: ftpnat sends "PORT " ("EPRT ") and
/// holds "10,0" ("|2|fd00"), and the next segment carries the whole rewritten address. The server
/// loses the first segment, or both (`drop_second_too`); the client's retransmission (on its
/// own, or with the second merged into it) must get the same bytes as the first time.
fn held_address_survives_retransmission(family: Family, drop_second_too: bool) {
    let verb = family.active_verb();
    let cut = family.cut_inside_address().to_string();
    let lab = family.lab();
    let public = family.announced_address_text(&lab);
    let public = public.as_str();
    let lost: &[&str] = if drop_second_too {
        &[verb, public]
    } else {
        &[verb]
    };
    let _agent = download_with_first_copies_lost(
        family,
        &lab,
        ANNOUNCEMENT_CUT_IN_ITS_ADDRESS_THEN_RETR,
        &[&cut],
        lost,
    );
    let segments = family.control_segments(&lab, ROUTER_WAN_IF);
    // Where the line's address starts in the stream, each time the first segment went out.
    let cuts: Vec<u32> = segments
        .iter()
        .filter(|(_, s)| s.ends_with(verb))
        .map(|(seq, s)| seq.wrapping_add((s.len() - verb.len()) as u32))
        .collect();
    let completion = segments
        .iter()
        .find_map(|(_, s)| Some(&s[s.find(public)?..]))
        .expect("the second segment, with the whole rewritten address");
    if drop_second_too {
        let (merged_seq, merged) = segments
            .iter()
            .find(|(_, s)| s.contains(&format!("{verb}{public}")))
            .expect("a retransmission with both segments merged: the test did not bite");
        assert!(
            merged.ends_with(&format!("{verb}{completion}")),
            "the merged retransmission carries other bytes than the two segments: {segments:?}"
        );
        let merged_line =
            merged_seq.wrapping_add((merged.len() - completion.len() - verb.len()) as u32);
        assert_eq!(
            cuts.first(),
            Some(&merged_line),
            "the merged retransmission puts the line elsewhere in the stream: {segments:?}"
        );
    } else {
        assert!(
            cuts.len() == 2 && cuts[0] == cuts[1],
            "the first segment was not cut to {verb:?} at the same place both times: \
             {segments:?}"
        );
    }
    let stats: Value = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

#[test]
fn a_segment_whose_address_was_held_is_cut_again_when_resent() {
    held_address_survives_retransmission(Family::Ipv4, false);
}

#[test]
fn a_resent_held_segment_with_the_next_merged_in_gets_the_whole_address() {
    held_address_survives_retransmission(Family::Ipv4, true);
}

#[test]
fn an_ipv6_eprt_segment_whose_address_was_held_is_cut_again_when_resent() {
    held_address_survives_retransmission(Family::Ipv6Nat66, false);
}

#[test]
fn a_resent_held_ipv6_eprt_segment_with_the_next_merged_in_gets_the_whole_address() {
    held_address_survives_retransmission(Family::Ipv6Nat66, true);
}

#[test]
fn a_retransmission_merging_an_ipv6_eprt_into_the_segment_before_it_passes_in_firewall_mode() {
    retransmission_merging_into_the_segment_before_carries_the_line_where_it_was(
        Family::Ipv6Firewall,
    );
}
