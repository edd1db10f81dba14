//! Issue 4, what ends gives its place back: sessions that end drain every table and return every
//! port to the window (whole again, as four sessions at once show); an expectation never used
//! expires while its session lives, turning a late connection away, and frees its place under the
//! session's limit; a client killed mid-transfer is swept soon after its reset.

use std::time::Duration;

use ftpnat_tests::{
    Client, Lab, LabSpec, MIB, Mode,
    lab::{ROUTER_LAN_IF, wait_until},
    masquerade::{dialogue_since, download, download_intact, setup},
    servers::{VsftpdOptions, data_commands_in_mode},
};
use serde_json::Value;

const PORT_THEN_QUIT: &str = r#"
import sys
from ftpnat_lab import login
ftp = login(sys.argv[1])
me = ftp.sock.getsockname()[0].replace('.', ',')
ftp.sendcmd(f"PORT {me},200,1")
ftp.quit()
"#;

/// Announces a port it listens on with PORT, then waits for a line on stdin before it quits: a
/// session that outlives its expectation, and a client that would accept a connection ftpnat
/// wrongly let through.
const PORT_THEN_WAIT: &str = r#"
import socket, sys
from ftpnat_lab import login
ftp = login(sys.argv[1], timeout=30)
host = ftp.sock.getsockname()[0]
listener = socket.create_server((host, 0))
port = listener.getsockname()[1]
ftp.sendcmd('PORT ' + ','.join(host.split('.') + [str(port >> 8), str(port & 255)]))
print('announced', flush=True)
sys.stdin.readline()
ftp.quit()
"#;

/// Whether ftpnat holds no expectation at all (`ftpnat expectations` lists none).
fn no_expectations(lab: &Lab) -> bool {
    lab.ftpnat_json(&["expectations"]) == Value::Array(Vec::new())
}

fn drained(lab: &Lab) -> bool {
    let stats = lab.ftpnat_json(&["stats"]);
    stats["sessions"] == 0
        && stats["flows"] == 0
        && stats["expectations"] == 0
        && stats["window"]["in_use"] == 0
}

#[test]
fn tables_drain_and_every_window_port_returns_when_sessions_end() {
    let setup = setup(LabSpec::default(), 2 * MIB);
    // Long enough that the expectation read once the PORT is answered is still there on a
    // loaded machine; its expiry is then waited for, not timed.
    let _agent = setup
        .lab
        .start_ftpnat(&["--port-window", "61000-61007", "--expect-timeout", "10"])
        .expect("ftpnat run");
    for mode in [Mode::Port, Mode::Epsv] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    // An announced connection that never comes, in a session that ends at once: the expectation
    // goes with its session.
    let server = setup.server.addr.to_string();
    setup
        .lab
        .client_python(PORT_THEN_QUIT, &[&server], 30)
        .unwrap_or_else(|err| panic!("{err:#}"));
    wait_until(Duration::from_secs(15), || drained(&setup.lab)).unwrap_or_else(|_| {
        panic!(
            "tables did not drain: {}",
            setup.lab.ftpnat_json(&["stats"])
        )
    });

    // One in a session that stays: the expectation expires while the session lives, and its port
    // returns to the window.
    let mut held = setup
        .lab
        .python_stepped(&setup.lab.client, PORT_THEN_WAIT, &[&server], 120)
        .expect("held session");
    held.expect("announced").expect("PORT sent");
    let expectations = setup.lab.ftpnat_json(&["expectations"]);
    let public = expectations[0]["public"]
        .as_str()
        .unwrap_or_else(|| panic!("no expectation for the PORT: {expectations}"));
    let (public_ip, public_port) = public.rsplit_once(':').expect("ip:port");
    wait_until(Duration::from_secs(40), || no_expectations(&setup.lab))
        .expect("the expectation did not expire");
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["sessions"], 1, "{stats}");
    assert_eq!(
        stats["window"]["in_use"], 1,
        "only the control connection should hold a port: {stats}"
    );
    // The server's connection, come too late, is turned away and counted.
    let turned_away = setup.lab.datapath_counter("pinhole_no_expectation");
    let out = setup
        .lab
        .python(
            &setup.lab.server,
            ftpnat_tests::clients::CONNECT,
            &[public_ip, public_port, "3"],
            10,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    let outcome = String::from_utf8_lossy(&out.stdout);
    assert_ne!(outcome.trim(), "connected", "a late connection got through");
    assert!(
        setup.lab.datapath_counter("pinhole_no_expectation") > turned_away,
        "the late connection was not counted"
    );
    held.proceed().expect("QUIT");
    held.finish().unwrap_or_else(|err| panic!("{err:#}"));

    wait_until(Duration::from_secs(15), || drained(&setup.lab)).unwrap_or_else(|_| {
        panic!(
            "tables did not drain: {}",
            setup.lab.ftpnat_json(&["stats"])
        )
    });
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["window"]["size"], 8);
    // The window is really whole again: four sessions at once, each taking two ports (control
    // and data), need all eight. A missing port would show as a refused connection.
    let mark = setup.server.log_mark();
    std::thread::scope(|scope| {
        for i in 0..4 {
            let setup = &setup;
            scope.spawn(move || {
                download_intact(setup, Client::Curl, Mode::Pasv, &format!("again-{i}.bin"));
            });
        }
    });
    // Read once all four have their files: each 227 reached its client, so it is logged.
    let dialogue = dialogue_since(&setup, mark);
    assert_eq!(
        data_commands_in_mode(&dialogue, Mode::Pasv).unwrap_or_else(|err| panic!("{err:#}")),
        4,
        "{}",
        dialogue.join("\n")
    );
}

/// Starts an active download with a small receive buffer, so that it stalls with data unread,
/// reads a little and waits to be killed.
const STALLED_ACTIVE_DOWNLOAD: &str = r#"
import os, socket, sys
from ftpnat_lab import login
ftp = login(sys.argv[1], timeout=30)
ftp.voidcmd('TYPE I')
host = ftp.sock.getsockname()[0]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
listener.bind((host, 0))
listener.listen(1)
port = listener.getsockname()[1]
ftp.voidcmd('PORT ' + ','.join(host.split('.') + [str(port >> 8), str(port & 255)]))
ftp.sendcmd('RETR ' + sys.argv[2])
data, _ = listener.accept()
data.recv(1024)
print('transferring', os.getpid(), flush=True)
sys.stdin.readline()
"#;

/// A client killed in the middle of an active download: its kernel resets the data connection
/// (unread data in the socket) and closes the control connection, and ftpnat sweeps both soon
/// after, long before the idle timeouts (minutes) would.
#[test]
fn a_client_killed_mid_transfer_is_swept_after_its_reset() {
    let setup = setup(LabSpec::default(), 8 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let mut client = setup
        .lab
        .python_stepped(
            &setup.lab.client,
            STALLED_ACTIVE_DOWNLOAD,
            &[&server, setup.file.name()],
            60,
        )
        .expect("client");
    let pid: i32 = client.expect("transferring").expect("download started")[0]
        .parse()
        .expect("pid");
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["sessions"], 1, "{stats}");
    assert_eq!(stats["flows"], 2, "{stats}");
    assert_eq!(stats["window"]["in_use"], 2, "{stats}");
    // SAFETY: kill has no memory-safety preconditions; the pid is the script's, which waits.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    wait_until(Duration::from_secs(15), || drained(&setup.lab)).unwrap_or_else(|_| {
        panic!(
            "tables did not drain after the reset: {}",
            setup.lab.ftpnat_json(&["stats"])
        )
    });
    let resets = setup
        .lab
        .capture_dump(
            ROUTER_LAN_IF,
            &[],
            &format!(
                "src host {} and tcp[tcpflags] & tcp-rst != 0",
                setup.lab.spec.client
            ),
        )
        .expect("capture");
    assert!(
        !resets.is_empty(),
        "the client sent no reset: the test did not bite"
    );
}

/// Four PASV replies never used fill the session's limit of outstanding expectations; once they
/// expire (the agent counts them released, the datapath applies the count) the same session
/// opens a data connection again. Waits on stdin after the fourth reply, for the test to see
/// them expired.
const UNUSED_PASV_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import login, retr_digest
ftp = login(sys.argv[1])
for _ in range(4):
    ftp.sendcmd('PASV')
print('announced', flush=True)
sys.stdin.readline()
print(retr_digest(ftp, sys.argv[2]))
ftp.quit()
"#;

#[test]
fn expired_expectations_free_their_places_under_the_session_limit() {
    let setup = setup(LabSpec::default(), MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--expect-timeout", "2"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let mut client = setup
        .lab
        .python_stepped(
            &setup.lab.client,
            UNUSED_PASV_THEN_RETR,
            &[&server, setup.file.name()],
            120,
        )
        .expect("client");
    client.expect("announced").expect("four PASV answered");
    // The RETR's PASV finds the places free only once the agent has swept the four: a fixed
    // pause would be too short on a loaded machine, and the refusal counter would say so.
    wait_until(Duration::from_secs(40), || no_expectations(&setup.lab))
        .expect("the four expectations did not expire");
    client.proceed().expect("RETR");
    let out = client.finish().unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(out.trim(), setup.file.sha256);
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(
        stats["refusals_by_reason"]["too_many_expectations"], 0,
        "{stats}"
    );
    assert_eq!(stats["datapath"]["expectations_used"], 1, "{stats}");
}

/// Logs in from source port `argv[3]`, resets the control connection (SO_LINGER 0), logs in again
/// at once from the same port, waits `argv[4]` seconds (past the old connection's linger and the
/// sweep) and downloads `argv[2]` passively: prints its sha256.
const RESET_THEN_SAME_PORT: &str = r#"
import ftplib, socket, struct, sys, time
from ftpnat_lab import retr_digest
server, name, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def session():
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=20, source_address=('', port))
    ftp.login()
    return ftp
first = session()
first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
first.file.close()
first.sock.close()
second = session()
# ftplib binds its data connections to the same source address: not this one.
second.source_address = None
time.sleep(wait)
second.voidcmd('TYPE I')
print(retr_digest(second, name))
second.quit()
"#;

#[test]
fn a_new_connection_on_a_reset_ones_port_takes_its_place() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(MIB, 5).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let args = [&server.addr.to_string(), file.name(), "45678", "5"];
    let out = lab
        .client_python(RESET_THEN_SAME_PORT, &args, 60)
        .expect("the second session on the same port works");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), file.sha256, "{stdout}");
    // Two sessions: the second took the reset one's place instead of riding its entries.
    assert_eq!(lab.datapath_counter("control_sessions_opened"), 2);
}

/// Two active-mode downloads in a row, each in a session of its own, the client listening for
/// both data connections on the same port (`argv[3]`), as a busy client's kernel may hand out a
/// freed port again at once. The server connects from port 20 both times: the second data
/// connection's answers carry the first one's tuple. Prints both files' sha256; a stalled
/// transfer times out after `argv[4]` seconds.
const ACTIVE_TWICE_ON_ONE_PORT: &str = r#"
import socket, sys
from ftpnat_lab import login, retr_active
server, name, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
for _ in range(2):
    ftp = login(server, timeout=timeout)
    ftp.voidcmd('TYPE I')
    host = ftp.sock.getsockname()[0]
    listener = socket.create_server((host, port), reuse_port=True)
    ftp.sendcmd('PORT ' + ','.join(host.split('.') + [str(port >> 8), str(port & 255)]))
    print(retr_active(ftp, listener, name, timeout=timeout))
    listener.close()
    ftp.quit()
"#;

#[test]
fn a_data_connection_on_a_closed_ones_tuple_takes_its_place() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(64 * 1024, 6).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let args = [&server.addr.to_string(), file.name(), "45679", "10"];
    let out = lab
        .client_python(ACTIVE_TWICE_ON_ONE_PORT, &args, 60)
        .expect("the second data connection on the first one's tuple is let in");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digests: Vec<&str> = stdout
        .lines()
        .filter(|line| !line.starts_with("150"))
        .collect();
    assert_eq!(digests, [file.sha256.as_str(); 2], "{stdout}");
    // Let in at its first SYN, not after the sweep removed the closed connection's entries.
    assert_eq!(lab.datapath_counter("flow_table_full"), 0);
    assert_eq!(lab.datapath_counter("pinhole_no_expectation"), 0);
    assert_eq!(lab.datapath_counter("closed_replaced"), 1);
}

/// Two passive downloads in one session, the client's data connection bound both times to the
/// same port (`argv[3]`) and the server's passive range one port: the second data connection has
/// the first one's tuple exactly, opened a moment after the first ended (the server closed first,
/// so the client may reuse the tuple at once). Prints both files' sha256.
const PASSIVE_TWICE_ON_ONE_TUPLE: &str = r#"
import ftplib, hashlib, socket, sys
from ftpnat_lab import login
server, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ftp = login(server, timeout=10)
ftp.voidcmd('TYPE I')
for _ in range(2):
    host, pasv_port = ftplib.parse227(ftp.sendcmd('PASV'))
    data = socket.socket()
    data.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    data.bind(('', port))
    data.settimeout(10)
    data.connect((host, pasv_port))
    ftp.sendcmd('RETR ' + name)
    digest = hashlib.sha256()
    while chunk := data.recv(65536):
        digest.update(chunk)
    data.close()
    ftp.voidresp()
    print(digest.hexdigest())
ftp.quit()
"#;

#[test]
fn a_passive_data_connection_on_a_closed_ones_tuple_takes_its_place() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let options = VsftpdOptions {
        pasv_ports: Some((50_100, 50_100)),
        ..VsftpdOptions::default()
    };
    let (server, file) = lab.serve_file_with(64 * 1024, 7, &options).expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let args = [&server.addr.to_string(), file.name(), "45680"];
    let out = lab
        .client_python(PASSIVE_TWICE_ON_ONE_TUPLE, &args, 60)
        .expect("two passive downloads on one tuple");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digests: Vec<&str> = stdout.lines().collect();
    assert_eq!(digests, [file.sha256.as_str(); 2], "{stdout}");
    // The second connection got entries of its own (and a window port) at its SYN instead of
    // riding the closed one's, which the agent releases 250 ms after their last packet.
    assert_eq!(lab.datapath_counter("closed_replaced"), 1);
    assert_eq!(lab.datapath_counter("expectations_used"), 2);
}

/// `argv[3]` sessions one after another, alternately active (PORT) and passive (EPSV), each
/// downloading `argv[2]`: prints each file's sha256. A session whose connection is refused (the
/// window has no free port yet) is tried again every 0.1 s for up to `argv[4]` seconds.
const SESSIONS_ONE_AFTER_ANOTHER: &str = r#"
import ftplib, sys, time
from ftpnat_lab import retr_digest
server, name, sessions, patience = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def connect():
    deadline = time.monotonic() + patience
    while True:
        ftp = ftplib.FTP()
        try:
            ftp.connect(server, 21, timeout=10)
            return ftp
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
for n in range(sessions):
    ftp = connect()
    ftp.login()
    if n % 2 == 0:
        ftp.set_pasv(False)
    else:
        ftp.makepasv = lambda: ftplib.parse229(ftp.sendcmd('EPSV'), ftp.sock.getpeername())
    print(retr_digest(ftp, name))
    ftp.quit()
    ftp.close()
"#;

#[test]
fn closed_connections_give_their_window_ports_back_promptly() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(64 * 1024, 7).expect("vsftpd");
    // Two ports: one session's control and data connections take the whole window.
    let _agent = lab
        .start_ftpnat(&["--port-window", "61000-61001"])
        .expect("ftpnat run");
    // Less than the 2 s (plus up to a 1 s sweep) a closed connection used to hold its port: each
    // session needs the ports of the one before.
    let args = [&server.addr.to_string(), file.name(), "6", "1.5"];
    let out = lab
        .client_python(SESSIONS_ONE_AFTER_ANOTHER, &args, 120)
        .expect("every session finds the ports of the one before it free");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digests: Vec<&str> = stdout.lines().collect();
    assert_eq!(digests, [file.sha256.as_str(); 6], "{stdout}");
    wait_until(Duration::from_secs(10), || drained(&lab)).expect("the tables drain");
}
