//! The inspection contract: what `ftpnat sessions`, `expectations` and `flows` report for a live
//! active session (`--json`, and the human tables with each value under its header), checked field
//! by field against what the client and the server saw, and against the window `ftpnat stats`
//! reports.

use std::{net::Ipv4Addr, ops::RangeInclusive};

use ftpnat_tests::{
    Lab, LabSpec, MIB,
    masquerade::{dialogue_since, setup, window_of},
    servers::commas,
};
use serde_json::Value;

/// The port of `endpoint` (`"ip:port"`), after checking its address is `addr` and its port lies in
/// `window`.
fn window_port(endpoint: &Value, addr: Ipv4Addr, window: &RangeInclusive<u16>) -> u16 {
    let text = endpoint
        .as_str()
        .unwrap_or_else(|| panic!("not an endpoint: {endpoint}"));
    let (ip, port) = text.rsplit_once(':').expect("ip:port");
    assert_eq!(ip, addr.to_string(), "{text}");
    let port: u16 = port.parse().expect("port");
    assert!(
        window.contains(&port),
        "{text} is outside the window {window:?}"
    );
    port
}

/// The single entry of an inspection table.
fn only_entry(table: &Value) -> &Value {
    match table.as_array().map(Vec::as_slice) {
        Some([entry]) => entry,
        _ => panic!("one entry expected: {table}"),
    }
}

/// `ftpnat <command>` without `--json`: a header line, then one row per entry of `json`, each
/// with the entry's value of every `(HEADER, field)` in `columns` starting under that header.
fn assert_human_table(lab: &Lab, command: &str, json: &Value, columns: &[(&str, &str)]) {
    let out = lab.ftpnat(&[command]).expect("ftpnat");
    assert!(out.status.success(), "ftpnat {command}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let entries = json.as_array().expect("entries");
    assert_eq!(lines.len(), entries.len() + 1, "ftpnat {command}:\n{text}");
    let header = lines[0];
    for entry in entries {
        let cells: Vec<(usize, String)> = columns
            .iter()
            .map(|(name, field)| {
                let at = header
                    .find(name)
                    .unwrap_or_else(|| panic!("no column {name} in {header:?}"));
                let value = match &entry[*field] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (at, value)
            })
            .collect();
        assert!(
            lines[1..].iter().any(|row| {
                cells.iter().all(|(at, value)| {
                    row.get(*at..)
                        .is_some_and(|r| r.starts_with(value.as_str()))
                })
            }),
            "ftpnat {command}: no row aligned under its header for {entry}:\n{text}"
        );
    }
}

/// What `ftpnat sessions|expectations|flows` report while an active session is open, checked
/// field by field against what the client and the server saw.
#[test]
fn inspection_shows_a_live_session_its_expectation_and_its_connections() {
    let setup = setup(LabSpec::default(), 8 * MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--expect-timeout", "30"])
        .expect("ftpnat run");
    let lab = &setup.lab;
    let (client_ip, public_ip, server_ip) = (lab.spec.client, lab.spec.router_wan, lab.spec.server);
    let window = window_of(&lab.ftpnat_json(&["stats"]));
    let mark = setup.server.log_mark();
    let server = server_ip.to_string();
    let mut client = lab
        .python_stepped(
            &lab.client,
            ftpnat_tests::clients::INSPECTED_ACTIVE_SESSION,
            &[&server, setup.file.name()],
            90,
        )
        .expect("client");
    let announced = client.expect("announced").expect("PORT sent");
    let (control_port, data_port) = (&announced[0], &announced[1]);

    let sessions = lab.ftpnat_json(&["sessions"]);
    let session = only_entry(&sessions);
    let session_public = window_port(&session["public"], public_ip, &window);
    let id = format!("{public_ip}:{session_public}");
    assert_eq!(session["id"], id.as_str(), "{session}");
    assert_eq!(session["kind"], "masquerade", "{session}");
    assert_eq!(
        session["client"],
        format!("{client_ip}:{control_port}"),
        "{session}"
    );
    assert_eq!(session["server"], format!("{server_ip}:21"), "{session}");
    assert_eq!(session["data_flows"], 0, "{session}");

    let expectations = lab.ftpnat_json(&["expectations"]);
    let expectation = only_entry(&expectations);
    assert_eq!(expectation["session"], id.as_str(), "{expectation}");
    assert_eq!(expectation["peer"], server_ip.to_string(), "{expectation}");
    let expected_port = window_port(&expectation["public"], public_ip, &window);
    assert_ne!(expected_port, session_public);
    assert_eq!(
        expectation["target"],
        format!("{client_ip}:{data_port}"),
        "{expectation}"
    );
    let expires_in = expectation["expires_in_ms"]
        .as_u64()
        .expect("expires_in_ms");
    assert!(expires_in > 0 && expires_in <= 30_000, "{expectation}");
    // The expectation waits where the server was told to connect.
    let told = format!(
        "> PORT {},{},{}",
        commas(public_ip),
        expected_port >> 8,
        expected_port & 0xff
    );
    let dialogue = dialogue_since(&setup, mark);
    assert!(
        dialogue.contains(&told),
        "no `{told}` in:\n{}",
        dialogue.join("\n")
    );

    assert_human_table(
        lab,
        "sessions",
        &sessions,
        &[
            ("ID", "id"),
            ("KIND", "kind"),
            ("CLIENT", "client"),
            ("PUBLIC", "public"),
            ("SERVER", "server"),
            ("DATA FLOWS", "data_flows"),
        ],
    );
    assert_human_table(
        lab,
        "expectations",
        &expectations,
        &[
            ("SESSION", "session"),
            ("PEER", "peer"),
            ("PUBLIC", "public"),
            ("TARGET", "target"),
        ],
    );

    // The transfer runs (and stalls: the client reads no more for now).
    client.proceed().expect("RETR");
    client.expect("transferring").expect("data connection open");
    assert_eq!(lab.ftpnat_json(&["expectations"]), Value::Array(Vec::new()));
    let session = lab.ftpnat_json(&["sessions"]);
    assert_eq!(only_entry(&session)["data_flows"], 1, "{session}");
    let flows = lab.ftpnat_json(&["flows"]);
    let rows = flows.as_array().expect("flows");
    assert_eq!(rows.len(), 2, "{flows}");
    let of_kind = |kind: &str| {
        rows.iter()
            .find(|row| row["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} flow: {flows}"))
    };
    let control = of_kind("control");
    assert_eq!(control["session"], id.as_str(), "{control}");
    assert_eq!(
        control["orig"],
        format!("{client_ip}:{control_port} -> {server_ip}:21"),
        "{control}"
    );
    assert_eq!(
        control["reply"],
        format!("{server_ip}:21 -> {id}"),
        "{control}"
    );
    assert!(control["bytes"].as_u64() > Some(0), "{control}");
    let data = of_kind("data");
    assert_eq!(data["session"], id.as_str(), "{data}");
    // vsftpd connects from port 20 to the public port it was told, and reaches the client's.
    assert_eq!(
        data["orig"],
        format!("{server_ip}:20 -> {public_ip}:{expected_port}"),
        "{data}"
    );
    assert_eq!(
        data["reply"],
        format!("{client_ip}:{data_port} -> {server_ip}:20"),
        "{data}"
    );
    assert!(data["bytes"].as_u64() > Some(0), "{data}");
    assert_human_table(
        lab,
        "flows",
        &flows,
        &[
            ("SESSION", "session"),
            ("KIND", "kind"),
            ("ORIG", "orig"),
            ("REPLY", "reply"),
        ],
    );

    client.proceed().expect("rest of the transfer");
    let done = client.expect("done").expect("transfer done");
    assert_eq!(done.first(), Some(&setup.file.sha256));
    client.finish().unwrap_or_else(|err| panic!("{err:#}"));
}
