//! Issue 12, item 9: the agent's sockets. A local process that binds the event socket's old,
//! predictable name first does not keep the agent from starting; a process of another user that
//! takes the name of a killed agent's socket is not taken for the agent; the metrics server bounds
//! its connections and requests, and goes on serving once the slow ones are gone, while the agent
//! keeps sweeping.

use std::{
    fs::{self, File},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use ftpnat_tests::{Lab, LabSpec, MIB, Mode, agent::ftpnat_bin, lab::wait_until};

/// Listens on the abstract Unix socket named `argv[1]`, as the user `argv[2]` (a number), until
/// told to stop.
const SQUAT: &str = r#"
import os, socket, sys
uid = int(sys.argv[2])
if uid != 0:
    os.setgid(uid)
    os.setuid(uid)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind('\0' + sys.argv[1])
listener.listen()
print('bound', flush=True)
sys.stdin.readline()
"#;

/// The user squatting processes run as: nobody.
const NOBODY: &str = "65534";

/// Whether an `ftpnat events --json` follower started now reports a TCP connection the client
/// opens to the server's FTP port (probing until it does, up to 20 s).
fn events_follow(lab: &Lab, server: SocketAddr) -> Result<(), String> {
    let pin_dir = lab.pin_dir().expect("pin dir");
    let path = lab.dir().join("events.jsonl");
    let stderr = lab.dir().join("events.stderr");
    let mut follower = lab
        .in_router(
            &ftpnat_bin().unwrap().to_string_lossy(),
            &["events", "--json", "--pin-dir", &pin_dir.to_string_lossy()],
        )
        .stdout(File::create(&path).expect("events file"))
        .stderr(File::create(&stderr).expect("events stderr"))
        .spawn()
        .expect("ftpnat events");
    let reported = wait_until(Duration::from_secs(20), || {
        lab.client
            .run_inside(|| {
                let _ = TcpStream::connect_timeout(&server, Duration::from_secs(5));
            })
            .expect("probe from the client namespace");
        fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("\"session_opened\"")
    });
    let _ = follower.kill();
    let _ = follower.wait();
    reported.map_err(|_| fs::read_to_string(&stderr).unwrap_or_default())
}

#[test]
fn a_process_holding_the_old_event_socket_name_does_not_keep_the_agent_out() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, _file) = lab.serve_file(MIB, 21).expect("vsftpd");
    let pin_dir = lab.pin_dir().expect("pin dir");
    // The name an agent of this pin dir used to take, known to any local process in advance.
    let old_name = format!("ftpnat-events:{}", pin_dir.display());
    let mut squatter = lab
        .python_stepped(&lab.router, SQUAT, &[&old_name, NOBODY], 60)
        .expect("squatter");
    squatter.expect("bound").expect("the old name taken");
    let agent = lab
        .start_ftpnat(&[])
        .expect("ftpnat run with the old name taken");
    events_follow(&lab, SocketAddr::from((server.addr, 21))).unwrap_or_else(|stderr| {
        panic!(
            "ftpnat events reported nothing: {stderr}\nthe agent's log: {}",
            agent.log_text()
        )
    });
}

#[test]
fn another_users_socket_under_a_killed_agents_name_is_not_taken_for_the_agent() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let _server = lab.serve_file(MIB, 22).expect("vsftpd");
    let mut agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let record = lab.pin_dir().expect("pin dir").join("events-socket");
    let name = fs::read_link(&record)
        .unwrap_or_else(|err| panic!("{}: {err}", record.display()))
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("ftpnat-events:") && name.len() == "ftpnat-events:".len() + 32,
        "{name}"
    );
    // Killed, the agent leaves its record; its name is free for anyone.
    agent.stop_with(libc::SIGKILL).expect("kill -9");
    let mut squatter = lab
        .python_stepped(&lab.router, SQUAT, &[&name, NOBODY], 60)
        .expect("squatter");
    squatter.expect("bound").expect("the name taken");
    let pin_dir = lab.pin_dir().expect("pin dir");
    let out = lab
        .in_router(
            "timeout",
            &[
                "10",
                &ftpnat_bin().unwrap().to_string_lossy(),
                "events",
                "--pin-dir",
                &pin_dir.to_string_lossy(),
            ],
        )
        .output()
        .expect("ftpnat events");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("held by a process of user 65534"),
        "{}: {stderr}",
        out.status
    );
}

/// Opens 40 connections to the metrics server that send nothing and one that sends a 64 KiB
/// request head, waits a second, then says how many of the 40 the server closed and what the big
/// one got; holds the connections until told to go.
const SLOW_CLIENTS: &str = r#"
import socket, sys, time
addr = ('127.0.0.1', 9464)
idle = [socket.create_connection(addr) for _ in range(40)]
big = socket.create_connection(addr)
try:
    big.sendall(b'GET /metrics HTTP/1.1\r\nX-Padding: ' + b'a' * 65536)
except OSError:
    pass
time.sleep(1)
closed = 0
for conn in idle:
    conn.settimeout(0.05)
    try:
        if conn.recv(1) == b'':
            closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1
big.settimeout(5)
try:
    answer = big.recv(100).split(b'\r\n')[0].decode() or 'closed'
except socket.timeout:
    answer = 'nothing'
except OSError:
    answer = 'closed'
print('closed', closed, flush=True)
print('oversize', answer.replace(' ', '_'), flush=True)
sys.stdin.readline()
"#;

fn scrape(lab: &Lab) -> Option<String> {
    let out = lab
        .router
        .command(
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                "10",
                "http://127.0.0.1:9464/metrics",
            ],
        )
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_metrics_server_bounds_connections_and_requests_and_the_agent_goes_on() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(2 * MIB, 23).expect("vsftpd");
    let _agent = lab
        .start_ftpnat(&["--metrics", "127.0.0.1:9464"])
        .expect("ftpnat run");
    assert!(scrape(&lab).is_some(), "no scrape before the slow clients");
    let mut slow = lab
        .python_stepped(&lab.router, SLOW_CLIENTS, &[], 120)
        .expect("slow clients");
    let closed: usize = slow.expect("closed").expect("closed count")[0]
        .parse()
        .expect("a count");
    // Beyond the 32 connections it serves, each is closed at once; the rest wait for their
    // request.
    assert!(
        (8..40).contains(&closed),
        "{closed} of 40 idle connections closed at once"
    );
    let oversize = slow.expect("oversize").expect("the oversize answer");
    assert!(
        oversize[0] == "HTTP/1.1_404_Not_Found" || oversize[0] == "closed",
        "an oversize request got {oversize:?}"
    );
    // Meanwhile the agent forwards and sweeps.
    lab.curl_from_client(&server, &file, Mode::Pasv)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let swept = wait_until(Duration::from_secs(15), || {
        lab.ftpnat_json(&["stats"])["sessions"] == 0
    });
    assert!(swept.is_ok(), "{}", lab.ftpnat_json(&["stats"]));
    // Once the idle connections have had their time, scrapes are answered again, whatever the
    // slow client still holds open.
    let scraped = wait_until(Duration::from_secs(20), || {
        scrape(&lab).is_some_and(|text| text.contains("ftpnat_sessions"))
    });
    assert!(scraped.is_ok(), "no scrape answered after the slow clients");
    slow.proceed().expect("let the slow clients go");
}
