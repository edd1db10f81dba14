//! A control line that arrives in several TCP segments. Linux's helper drops such a segment and
//! waits for a retransmission that puts the line back together, which a sender that keeps its
//! segment boundaries never sends: the session hangs. ftpnat reads the line across the segments.
//! Cut before the address, the line is rewritten in the segment that holds the address. Cut
//! inside it, ftpnat holds the first segment's part of the address back and the next segment
//! carries the whole rewritten address; if that line is not to be rewritten after all (refused,
//! or cut again), the held bytes go back in front of the next segment and it passes as sent.
//! Each scenario runs over IPv4 (masqueraded) and over IPv6 through NAT66 (`EPRT |2|`); a line
//! cut anywhere is also followed in IPv6 firewall mode, where it passes untouched.

use ftpnat_tests::{
    Agent, Family, FtpServer, Lab, TestFile,
    clients::SPLIT_ANNOUNCEMENT,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
};
use serde_json::Value;

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

/// A lab of `family` whose server serves a file, ftpnat running. (Fields drop in order: the
/// agent and the server before the lab's namespaces.)
struct Served {
    _agent: Agent,
    /// The server's address in the family.
    server: String,
    vsftpd: FtpServer,
    file: TestFile,
    lab: Lab,
}

fn served(family: Family) -> Served {
    let lab = family.lab();
    let (vsftpd, file) = lab.serve_file(2 * 1024 * 1024, 2).expect("vsftpd");
    Served {
        _agent: family.start_ftpnat(&lab),
        server: family.server_addr(&vsftpd).to_string(),
        vsftpd,
        file,
        lab,
    }
}

/// Each line cut at `cuts` (bytes from its start, or before its CR LF if negative) reaches the
/// server as one line that announces the address it must get, and the session goes on; in
/// NAT66 and masquerading nothing of the client's address crosses the WAN, in firewall mode
/// every segment crosses it as sent.
fn lines_cut_before_or_inside_their_address_announce_it_whole(
    family: Family,
    cuts: &[(&str, i32)],
) {
    let Served {
        lab, server, file, ..
    } = &served(family);
    for &(verb, cut) in cuts {
        let lines = split_download(lab, server, file.name(), verb, &cut.to_string(), None);
        assert!(
            lines.first().is_some_and(|l| l.starts_with("200")),
            "{verb} cut at {cut}: the server did not accept the line: {lines:?}"
        );
        let sums = lines.iter().filter(|l| **l == file.sha256).count();
        assert_eq!(sums, 2, "{verb} cut at {cut}: {lines:?}");
    }
    family.assert_firewall_dropped_nothing(lab);
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(counter(&stats, "rewrites_skipped"), 0, "{stats}");
    // Every active transfer went through its own window port (or pinhole), every passive one
    // its own expectation.
    assert_eq!(
        counter(&stats, "expectations_created"),
        2 * cuts.len() as u64,
        "{stats}"
    );
    let lan = lab.capture_text(ROUTER_LAN_IF).expect("capture");
    for &(verb, cut) in cuts {
        // (The cut before the CR LF shows as the 2-byte segment after it.)
        assert_segment_sent(&lan, verb, usize::try_from(cut).unwrap_or(2));
    }
    let wan = lab.capture_text(ROUTER_WAN_IF).expect("capture");
    match family {
        Family::Ipv4 => assert!(
            !wan.contains("10,0,0,2") && !wan.contains("|10.0.0.2|") && !wan.contains("10,0"),
            "a part of the client's own address reached the WAN"
        ),
        // The ULA prefix's first group: in every cut of the address, and in every packet from
        // the client that would leave untranslated.
        Family::Ipv6Nat66 => assert!(
            !wan.contains("fd00"),
            "a part of the client's own address reached the WAN"
        ),
        Family::Ipv6Firewall => assert_eq!(
            family.control_segments(lab, ROUTER_WAN_IF),
            family.control_segments(lab, ROUTER_LAN_IF),
            "the client's control segments did not cross the router as sent"
        ),
    }
}

#[test]
fn a_line_cut_before_or_inside_its_address_is_rewritten_whole() {
    // In the verb, right after it, after its space (the address whole in the second segment),
    // and inside the address: "PORT 10,0" | ",0,2,…", "EPRT |1|10.0" | ".0.2|…", and right
    // before the CR LF (the whole address held).
    lines_cut_before_or_inside_their_address_announce_it_whole(
        Family::Ipv4,
        &[
            ("PORT", 2),
            ("PORT", 4),
            ("PORT", 5),
            ("PORT", 9),
            ("EPRT", 3),
            ("EPRT", 5),
            ("EPRT", 12),
            ("PORT", 6),
            ("PORT", -2),
        ],
    );
}

/// In the verb, right after it, after its space, inside the family field ("EPRT |2" | "|…"),
/// after it ("EPRT |2|" | "fd00:…"), inside the address ("EPRT |2|fd00" | ":1::2|…"), inside the
/// port, and right before the CR LF.
const EPRT6_CUTS: [(&str, i32); 8] = [
    ("EPRT", 3),
    ("EPRT", 4),
    ("EPRT", 5),
    ("EPRT", 7),
    ("EPRT", 8),
    ("EPRT", 12),
    ("EPRT", -5),
    ("EPRT", -2),
];

#[test]
fn an_ipv6_eprt_cut_before_or_inside_its_address_is_rewritten_whole_by_nat66() {
    lines_cut_before_or_inside_their_address_announce_it_whole(Family::Ipv6Nat66, &EPRT6_CUTS);
}

#[test]
fn an_ipv6_eprt_cut_anywhere_is_followed_and_passes_as_sent_in_firewall_mode() {
    lines_cut_before_or_inside_their_address_announce_it_whole(Family::Ipv6Firewall, &EPRT6_CUTS);
}
/// A line cut twice inside its address (`twice`: the byte counts) passes as sent, refused by the
/// server; a bounce (announcing `bounce`) cut inside its address (after `once` bytes) is
/// refused by ftpnat and passes as sent too; the session goes on after each.
fn held_addresses_go_back_as_sent(
    family: Family,
    twice: (usize, usize),
    once: usize,
    bounce: &str,
) {
    let Served {
        lab,
        server,
        file,
        vsftpd,
        ..
    } = &served(family);
    let verb = family.active_verb().trim_end();

    // Cut twice inside the address: the second segment does not end the line, so the held
    // bytes go back in front of it and the line reaches the server as the client sent it.
    let cuts = format!("{},{}", twice.0, twice.1);
    let mark = vsftpd.log_mark();
    let lines = split_download(lab, server, file.name(), verb, &cuts, None);
    assert!(
        lines.first().is_some_and(|l| l.starts_with('5')),
        "the server should refuse the client's private address: {lines:?}"
    );
    assert_eq!(
        lines.last(),
        Some(&file.sha256),
        "the session did not go on"
    );
    // vsftpd refuses it because it names the client's private address, which it got whole: had
    // any of it been rewritten or the held bytes been lost, it would have seen a malformed line
    // or the public address.
    let log = vsftpd.log_since(mark).expect("server log");
    let as_sent = format!("\"{verb} {}", Family::address_text(family.client_addr(lab)));
    assert!(log.contains(&as_sent), "no {as_sent} in:\n{log}");
    let lan = lab.capture_text(ROUTER_LAN_IF).expect("capture");
    assert_segment_sent(&lan, verb, twice.0);
    assert_segment_sent(&lan, verb, twice.1 - twice.0);

    // A bounce cut inside its address: refused, given back untouched, counted as a refusal.
    let lines = split_download(
        lab,
        server,
        file.name(),
        "EPRT",
        &once.to_string(),
        Some(bounce),
    );
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
    let as_sent = format!("|{}|{bounce}|", if bounce.contains(':') { 2 } else { 1 });
    assert!(
        wan.contains(&as_sent),
        "the refused line did not pass as sent ({as_sent})"
    );

    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(counter(&stats, "rewrites_skipped"), 1, "{stats}");
    assert_eq!(stats["refusals_by_reason"]["bounce"], 1, "{stats}");
    // Only the two passive downloads opened anything.
    assert_eq!(counter(&stats, "expectations_created"), 2, "{stats}");
}

#[test]
fn a_held_address_goes_back_as_sent_when_its_line_is_not_rewritten() {
    // "PORT 10,0" | ",0," | "2,…"; "EPRT |1|10.0" | ".0.99|…".
    held_addresses_go_back_as_sent(Family::Ipv4, (9, 12), 12, "10.0.0.99");
}

#[test]
fn a_held_ipv6_address_goes_back_as_sent_when_its_line_is_not_rewritten_by_nat66() {
    // "EPRT |2|fd00" | ":1" | "::2|…"; "EPRT |2|fd00" | ":1::99|…".
    held_addresses_go_back_as_sent(Family::Ipv6Nat66, (12, 14), 12, "fd00:1::99");
}
