//! Issue 6: live events. `ftpnat events --json`, connected to the agent from another process,
//! follows one masqueraded session from open to close, in order, with the password redacted; the
//! agent logs the same events, as JSON with `--log-format json`.

use std::{
    fs::{self, File},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use ftpnat_tests::{FtpServer, Lab, LabSpec, TestFile, lab::wait_until};
use serde_json::Value;

const PASSWORD: &str = "s3cret-pass-do-not-log";

#[test]
fn events_follow_a_session_in_order_with_the_password_redacted() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    // pyftpdlib asks anonymous users for a password (vsftpd here does not), so PASS is sent.
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("data.bin"), 3 * 1024 * 1024, 11).expect("file");
    let server = FtpServer::pyftpdlib(&lab.server, lab.spec.server, 21, &root, lab.dir())
        .expect("pyftpdlib");
    let agent = lab
        .start_ftpnat(&["--log-format", "json"])
        .expect("ftpnat run");
    let events_path = lab.dir().join("events.jsonl");
    let pin_dir = lab.pin_dir().expect("pin dir");
    let mut follower = lab
        .in_router(
            &ftpnat_tests::agent::ftpnat_bin().unwrap().to_string_lossy(),
            &["events", "--json", "--pin-dir", &pin_dir.to_string_lossy()],
        )
        .stdout(File::create(&events_path).expect("events file"))
        .stderr(File::create(lab.dir().join("events.stderr")).expect("events stderr file"))
        .spawn()
        .expect("ftpnat events");
    let read = || fs::read_to_string(&events_path).unwrap_or_default();
    // Events sent before the follower has subscribed are not replayed to it, and nothing says
    // when it has: probe until it reports a probe's session. Each probe is a TCP connection to
    // the FTP port from the client, closed at once: a session that opens and closes, with no
    // command, so the client's session below is the one with a USER.
    let ftp_port = SocketAddr::from((server.addr, 21));
    let subscribed = wait_until(Duration::from_secs(20), || {
        let probe = lab.client.run_inside(|| {
            let _ = TcpStream::connect_timeout(&ftp_port, Duration::from_secs(5));
        });
        probe.expect("probe from the client namespace");
        read().contains("\"session_opened\"")
    });
    assert!(
        subscribed.is_ok(),
        "the follower reported no probe's session: {}\nits stderr: {}\nthe agent's log: {}",
        read(),
        fs::read_to_string(lab.dir().join("events.stderr")).unwrap_or_default(),
        agent.log_text()
    );

    let local = lab.subdir("client").expect("client dir").join("file.bin");
    let credentials = format!("anonymous:{PASSWORD}");
    let out = lab
        .curl_passive(&server, &file, &local, &["-u", &credentials])
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let closed = wait_until(Duration::from_secs(20), || {
        // The follower may be in the middle of a line: only whole ones parse.
        let events: Vec<Value> = read()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        client_session(&events).is_some_and(|session| {
            events
                .iter()
                .any(|e| e["event"] == "session_closed" && &e["session"] == session)
        })
    });
    let _ = follower.kill();
    let _ = follower.wait();
    let text = read();
    assert!(
        closed.is_ok(),
        "no session_closed event of the client: {text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "the password reached the events: {text}"
    );

    let all: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let session = client_session(&all)
        .unwrap_or_else(|| panic!("no USER event: {text}"))
        .clone();
    let (events, probes): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|e| e["session"] == session);
    // The probes' sessions only open and close: anything else there would be an event of the
    // client's session under another id (as would a session_opened or session_closed of it,
    // missing from `events` below).
    assert!(
        probes
            .iter()
            .all(|e| e["event"] == "session_opened" || e["event"] == "session_closed"),
        "one session's events carry one id: {text}"
    );
    let position = |what: &str, matches: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .position(matches)
            .unwrap_or_else(|| panic!("no {what} event in {text}"))
    };
    let command =
        |name: &'static str| move |e: &Value| e["event"] == "command" && e["command"] == name;
    let opened = position("session_opened", &|e| e["event"] == "session_opened");
    let user = position("USER", &command("USER"));
    let pass = position("PASS", &command("PASS"));
    let pasv = position("PASV", &command("PASV"));
    let reply = position("227", &|e| {
        e["event"] == "passive_reply" && e["kind"] == "227"
    });
    let retr = position("RETR", &command("RETR"));
    let data_closed = position("data_flow_closed", &|e| e["event"] == "data_flow_closed");
    let session_closed = position("session_closed", &|e| e["event"] == "session_closed");
    let order = [
        opened,
        user,
        pass,
        pasv,
        reply,
        retr,
        data_closed,
        session_closed,
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order {order:?}: {text}"
    );

    assert_eq!(events[user]["argument"], "anonymous", "{text}");
    assert!(events[pass].get("argument").is_none(), "{text}");
    assert_eq!(events[retr]["argument"], file.name(), "{text}");
    assert!(
        events[data_closed]["bytes"].as_u64().unwrap() >= file.size,
        "{text}"
    );
    assert_eq!(events[session_closed]["data_flows"], 1, "{text}");

    // The agent logged the same, one JSON object per line, events as objects.
    let log = agent.log_text();
    assert!(!log.contains(PASSWORD), "the password reached the log");
    let logged: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l["event"]["event"] == "command" && l["event"]["command"] == "RETR"),
        "{log}"
    );
}

/// The session id of the first USER command among `events`: the FTP client's session.
fn client_session(events: &[Value]) -> Option<&Value> {
    events
        .iter()
        .find(|e| e["event"] == "command" && e["command"] == "USER")
        .map(|e| &e["session"])
}

/// `ftpnat sessions` names the session's user; `ftpnat sessions ID` lists its transfers as the
/// agent followed them (command, file, mode, bytes, duration).
#[test]
fn session_report_shows_the_user_and_each_transfer() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(2 * 1024 * 1024, 12).expect("vsftpd");
    let agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    // Stays logged in after its transfers until the test has read the reports: a session is
    // known by its control connection's translation, which the agent removes once the session
    // ends (`ftpnat sessions` then shows its id as `-`, and `ftpnat sessions -` finds nothing).
    let script = r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=20)
ftp.login('anonymous', 'x')
ftp.retrbinary('RETR ' + sys.argv[2], lambda chunk: None)
ftp.set_pasv(False)
ftp.retrbinary('RETR ' + sys.argv[2], lambda chunk: None)
print('transferred', flush=True)
sys.stdin.readline()
ftp.quit()
"#;
    let server_addr = server.addr.to_string();
    let mut client = lab
        .python_stepped(&lab.client, script, &[&server_addr, file.name()], 120)
        .expect("client");
    client.expect("transferred").expect("both downloads");

    // Both transfers reported closed (the agent sees a data connection end when it sweeps).
    let mut report = Value::Null;
    let mut last_failure = String::new();
    let done = wait_until(Duration::from_secs(20), || {
        let result = lab.try_ftpnat_json(&["sessions"]).and_then(|sessions| {
            match sessions[0]["id"].as_str() {
                // `-`: no translation to name the session by (the session is ending).
                Some(id) if id != "-" => lab.try_ftpnat_json(&["sessions", id]),
                _ => anyhow::bail!("no session id in {sessions}"),
            }
        });
        match result {
            Ok(latest) => report = latest,
            Err(err) => {
                last_failure = format!("{err:#}");
                return false;
            }
        }
        report["transfers"]
            .as_array()
            .is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["bytes"].is_u64()))
    });
    assert!(
        done.is_ok(),
        "no report of two closed transfers: {report}\nlast failure: {last_failure}\n\
         the agent's log: {}",
        agent.log_text()
    );
    assert_eq!(report["session"]["user"], "anonymous", "{report}");
    let transfers = report["transfers"].as_array().unwrap();
    for (transfer, mode) in transfers.iter().zip(["passive", "active"]) {
        assert_eq!(transfer["command"], "RETR", "{report}");
        assert_eq!(transfer["file"], file.name(), "{report}");
        assert_eq!(transfer["mode"], mode, "{report}");
        assert!(transfer["bytes"].as_u64().unwrap() >= file.size, "{report}");
        assert!(transfer["duration_ms"].is_u64(), "{report}");
    }
    // The table form says the same.
    let id = report["session"]["id"].as_str().unwrap().to_owned();
    let out = lab.ftpnat(&["sessions", &id]).expect("ftpnat sessions ID");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("user:") && table.contains("anonymous"),
        "{table}"
    );
    assert!(table.contains(file.name()), "{table}");
    client.proceed().expect("letting the client quit");
    client.finish().expect("client");
}
