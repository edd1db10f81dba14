//! Issue 12, item 2: one connection cannot stall the agent. A client floods its control
//! connection with empty and junk lines; meanwhile another client's transfers complete intact, the
//! sweep keeps its pace (their connections are swept while the flood goes on), the flood's events
//! are bounded and counted, the tables drain back to zero afterwards, and SIGTERM during a flood
//! stops the agent at once.

use std::time::Duration;

use ftpnat_tests::{
    Agent, FtpServer, Lab, LabSpec, MIB, Mode, TestFile, clients::SteppedScript, lab::wait_until,
};
use serde_json::Value;

/// The FTP port of the flood's server, watched by ftpnat besides 21.
const SINK_PORT: &str = "2121";

/// A server of the attacker's own on the server's host: greets like an FTP server, then reads and
/// discards whatever comes (vsftpd answering every junk line would slow the flood down).
const SINK: &str = r#"
import socket, sys
listener = socket.create_server(('0.0.0.0', int(sys.argv[1])))
print('listening', flush=True)
conn, _ = listener.accept()
conn.sendall(b'220 sink\r\n')
while conn.recv(1 << 20):
    pass
"#;

/// Connects to the sink at `argv[1]:argv[2]` and sends empty lines and junk commands for
/// `argv[3]` seconds as fast as it can, then closes the connection.
const FLOOD: &str = r#"
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
sock.recv(100)
chunk = (b"\r\n" * 400 + b"\n" * 200 + b"XJNK\r\n" * 50) * 20
end = time.monotonic() + float(sys.argv[3])
print('flooding', flush=True)
sent = 0
while time.monotonic() < end:
    sock.sendall(chunk)
    sent += len(chunk)
print('sent', sent, flush=True)
sock.close()
"#;

/// A lab without captures (the flood would fill them) whose server serves a file with vsftpd and
/// runs the sink, and an agent watching both ports.
fn flood_lab(seed: u64) -> (Lab, FtpServer, TestFile, Agent, SteppedScript) {
    let lab = Lab::new(LabSpec {
        capture: false,
        ..LabSpec::default()
    })
    .expect("lab");
    let (server, file) = lab.serve_file(2 * MIB, seed).expect("vsftpd");
    let mut sink = lab
        .python_stepped(&lab.server, SINK, &[SINK_PORT], 120)
        .expect("sink");
    sink.expect("listening").expect("the sink listens");
    let agent = lab
        .start_ftpnat(&[
            "--port-window",
            "61000-61063",
            "--ftp-port",
            "21",
            "--ftp-port",
            SINK_PORT,
        ])
        .expect("ftpnat run");
    (lab, server, file, agent, sink)
}

/// Starts the flood for `seconds`, once it runs.
fn flood(lab: &Lab, server: &FtpServer, seconds: &str) -> SteppedScript {
    let server_ip = server.addr.to_string();
    let mut flood = lab
        .python_stepped(&lab.client, FLOOD, &[&server_ip, SINK_PORT, seconds], 120)
        .expect("flooding client");
    flood.expect("flooding").expect("the flood started");
    flood
}

fn stats(lab: &Lab) -> Value {
    lab.ftpnat_json(&["stats"])
}

/// Only the flooding session is left: the other sessions' connections were swept.
fn only_one_session(lab: &Lab) -> bool {
    let stats = stats(lab);
    stats["sessions"] == 1 && stats["expectations"] == 0 && stats["window"]["in_use"] == 1
}

fn drained(lab: &Lab) -> bool {
    let stats = stats(lab);
    stats["sessions"] == 0
        && stats["flows"] == 0
        && stats["expectations"] == 0
        && stats["window"]["in_use"] == 0
}

#[test]
fn a_flood_of_lines_on_one_session_stalls_nothing_and_its_events_are_bounded() {
    let (lab, server, file, _agent, _sink) = flood_lab(12);
    let mut flood = flood(&lab, &server, "30");

    // Another client's transfers, during the flood.
    for mode in [Mode::Pasv, Mode::Port, Mode::Epsv, Mode::Eprt] {
        lab.curl_from_client(&server, &file, mode)
            .unwrap_or_else(|err| panic!("{mode:?} during the flood: {err:#}"));
    }
    // The sweep keeps its pace: their connections go while the flood goes on.
    let swept = wait_until(Duration::from_secs(15), || only_one_session(&lab));
    assert!(
        swept.is_ok(),
        "the other sessions were not swept during the flood: {}",
        stats(&lab)
    );
    let sessions = lab.ftpnat_json(&["sessions"]);
    let flooding = &sessions[0];
    assert!(
        flooding["events_dropped"].as_u64().unwrap_or(0) > 0,
        "the flooding session dropped no event: {sessions}"
    );
    let suppressed = lab.datapath_counter("events_suppressed");
    assert!(suppressed > 0, "no event was suppressed: {}", stats(&lab));

    let sent = flood.finish().unwrap_or_else(|err| panic!("{err:#}"));
    let sent: u64 = sent
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the flood said {sent:?}"));
    assert!(sent > 10 * MIB, "the flood sent only {sent} bytes");
    let drained = wait_until(Duration::from_secs(20), || drained(&lab));
    assert!(
        drained.is_ok(),
        "the tables did not drain after the flood: {}",
        stats(&lab)
    );
}

#[test]
fn sigterm_stops_the_agent_during_a_flood() {
    let (lab, server, _file, mut agent, _sink) = flood_lab(13);
    let _flood = flood(&lab, &server, "15");
    std::thread::sleep(Duration::from_secs(3));
    // `stop` sends SIGTERM and gives the agent 10 s.
    let (status, log) = agent
        .stop()
        .unwrap_or_else(|err| panic!("SIGTERM during the flood: {err:#}"));
    assert!(status.success(), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
}
