//! Issue 4, the rewritten text and the stream around it: the address text grows or shrinks (and
//! fifty PORTs shift the stream fifty times) with every later segment and acknowledgement moved in
//! step; a retransmitted PORT is rewritten again byte for byte; a SACK block goes back into the
//! client's sequence space; checksums hold whether the endpoints compute and verify them or leave
//! them partial for the router to complete.

use std::net::Ipv4Addr;

use ftpnat_tests::{
    Client, Lab, LabSpec, MIB, Mode,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
    masquerade::{Setup, dialogue_since, download, setup},
    netns::NetNs,
    servers::{commas, data_commands_in_mode},
};

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
import sys
from ftpnat_lab import login, retr_digest
ftp = login(sys.argv[1])
me = ftp.sock.getsockname()[0].replace('.', ',')
for i in range(int(sys.argv[3])):
    reply = ftp.sendcmd(f"PORT {me},{200 + i // 256},{i % 256}")
    assert reply.startswith('200'), reply
ftp.set_pasv(False)
print(retr_digest(ftp, sys.argv[2]))
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

/// After a PORT rewrite has shifted the client's stream (`10,0,0,2` became `203,0,113,254`, and
/// the port a window port), the server's firewall drops the client's next segment once, so the one after
/// it arrives out of order and the server acknowledges it with a SACK block. That block is in the
/// server's (shifted) sequence space; the client must receive it in its own.
const PORT_THEN_TWO_SEGMENTS: &str = r#"
import socket, sys
from ftpnat_lab import login
ftp = login(sys.argv[1])
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
