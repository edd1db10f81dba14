//! Issue 6: live events. `ftpnat events --json`, connected to the agent from another process,
//! follows one masqueraded session from open to close, in order, with the password redacted; the
//! agent logs the same events, as JSON with `--log-format json`.

use std::{
    fs::{self, File},
    process::Stdio,
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
        .stderr(Stdio::null())
        .spawn()
        .expect("ftpnat events");
    // Give it a moment to connect: events before that are not replayed.
    std::thread::sleep(Duration::from_millis(500));

    let local = lab.subdir("client").expect("client dir").join("file.bin");
    let out = lab
        .client
        .command(
            "curl",
            &[
                "-sS",
                "--fail",
                "--disable-epsv",
                "-u",
                &format!("anonymous:{PASSWORD}"),
                "-o",
                &local.to_string_lossy(),
                &format!("ftp://{}/{}", server.addr, file.name()),
            ],
        )
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let read = || fs::read_to_string(&events_path).unwrap_or_default();
    let closed = wait_until(Duration::from_secs(20), || {
        read().contains("\"session_closed\"")
    });
    let _ = follower.kill();
    let _ = follower.wait();
    let text = read();
    assert!(closed.is_ok(), "no session_closed event: {text}");
    assert!(
        !text.contains(PASSWORD),
        "the password reached the events: {text}"
    );

    let events: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
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
    let session = &events[opened]["session"];
    assert!(
        events[opened..=session_closed]
            .iter()
            .all(|e| &e["session"] == session),
        "one session's events carry one id: {text}"
    );

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
