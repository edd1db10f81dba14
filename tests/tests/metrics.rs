//! Issue 6: `ftpnat run --metrics ADDR:PORT` serves the Prometheus text format, and what it serves
//! is what `ftpnat stats --json` and `ftpnat sessions --json` report at the same moment.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

use ftpnat_tests::{
    Lab, LabSpec, MIB, Mode,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF, wait_until},
};
use serde_json::Value;

const METRICS_ADDR: &str = "127.0.0.1:9464";
/// One sample line of the exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_metric_name(name) && !name.contains(':')
}

/// Parses `{a="x",b="y"}` at the start of `text`; returns the labels and what follows the `}`.
fn parse_labels(text: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut rest = text
        .strip_prefix('{')
        .unwrap_or_else(|| panic!("no label set: {line}"));
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after.to_owned());
        }
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\"value\": {line}"));
        assert!(is_label_name(name), "bad label name {name:?}: {line}");
        let mut value = String::new();
        let mut chars = after.chars();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape \\{other:?}: {line}"),
                },
                Some(c) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        }
        assert!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name} twice: {line}"
        );
        rest = chars.as_str();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A strict reader of the text format (version 0.0.4) as ftpnat writes it: only HELP and TYPE
/// comments, each metric's HELP then TYPE before its samples, samples of one metric together,
/// every value a float, no timestamps, no series twice, no blank lines.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut helped = BTreeSet::new();
    let mut current: Option<(String, String)> = None;
    let mut closed = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("HELP without text: {line}"));
            assert!(is_metric_name(name), "bad metric name: {line}");
            assert!(!help.trim().is_empty(), "empty HELP: {line}");
            assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
            if let Some((previous, _)) = current.take() {
                closed.insert(previous);
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("TYPE without a type: {line}"));
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(current.is_none(), "TYPE twice or late: {line}");
            assert!(
                ["counter", "gauge", "untyped", "summary", "histogram"].contains(&kind),
                "unknown type: {line}"
            );
            current = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (name, kind) = current
                .as_ref()
                .unwrap_or_else(|| panic!("sample before its HELP and TYPE: {line}"));
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            assert_eq!(&line[..end], name, "sample of another metric: {line}");
            let (labels, rest) = if line[end..].starts_with('{') {
                parse_labels(&line[end..], line)
            } else {
                (BTreeMap::new(), line[end..].to_owned())
            };
            let value = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no space before the value: {line}"));
            assert!(!value.contains(' '), "timestamps are not expected: {line}");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|err| panic!("value is not a float ({err}): {line}"));
            assert!(!closed.contains(name), "samples of {name} split up: {line}");
            assert!(
                series.insert((name.clone(), labels.clone())),
                "series twice: {line}"
            );
            assert!(name.starts_with("ftpnat_"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            samples.push(Sample {
                name: name.clone(),
                labels,
                value,
            });
        }
    }
    samples
}

/// The value of the one sample of `name` with exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == labels)
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?} in {samples:#?}");
    let value = found[0].value;
    assert!(value >= 0.0 && value.fract() == 0.0, "{name}: {value}");
    value as u64
}

fn all_of<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

/// `GET http://METRICS_ADDR{path}` from inside the router's namespace: status line, headers, body.
fn http_get(lab: &Lab, path: &str) -> (String, String) {
    let out = lab
        .router
        .command(
            "curl",
            &[
                "-sS",
                "-i",
                "--max-time",
                "10",
                &format!("http://{METRICS_ADDR}{path}"),
            ],
        )
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response = String::from_utf8(out.stdout).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response:?}"));
    (head.to_owned(), body.to_owned())
}

fn scrape(lab: &Lab) -> Vec<Sample> {
    let (head, body) = http_get(lab, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse_exposition(&body)
}

/// A scrape, `stats --json` and `sessions --json` of one moment: the two JSON reports are taken
/// between two scrapes that agree, so nothing moved while they were read (a TCP probe of the
/// stalled transfer, or a sweep, makes the attempt start over).
fn snapshot(lab: &Lab) -> (Vec<Sample>, Value, Value) {
    for _ in 0..25 {
        let before = scrape(lab);
        let stats = lab.ftpnat_json(&["stats"]);
        let sessions = lab.ftpnat_json(&["sessions"]);
        if scrape(lab) == before {
            return (before, stats, sessions);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the metrics never held still for two scrapes");
}

/// FTP sessions held open by a client process for the test, one per state the datapath can tell
/// apart without TLS; the process ends with the value.
struct HeldSessions(Child);

impl HeldSessions {
    /// A session idle after login (command), one whose download nobody reads (transfer), and one
    /// that sent QUIT and was closed by the server but not by the client (closing).
    fn start(lab: &Lab, server: &str, remote: &str) -> Self {
        let script = "\
import ftplib, sys, time
server, remote = sys.argv[1], sys.argv[2]
def login():
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=30)
    ftp.login()
    return ftp
idle = login()
stalled = login()
stalled.voidcmd('TYPE I')
data = stalled.transfercmd('RETR ' + remote)
quitting = login()
quitting.sendcmd('QUIT')
print('ready', flush=True)
time.sleep(100)
";
        let mut child = lab
            .client
            .command(
                "timeout",
                &["110", "/usr/bin/python3", "-c", script, server, remote],
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the client's output");
        assert_eq!(line.trim(), "ready", "the held sessions did not open");
        Self(child)
    }
}

impl Drop for HeldSessions {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's (`timeout`,
        // which passes the signal on to python).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn state_counts(sessions: &Value) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for row in sessions.as_array().expect("sessions array") {
        let key = (
            row["kind"].as_str().expect("kind").to_owned(),
            row["state"].as_str().expect("state").to_owned(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_stats() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(32 * MIB, 6).expect("vsftpd serving a file");
    let mut agent = lab
        .start_ftpnat(&["--metrics", METRICS_ADDR])
        .expect("ftpnat run --metrics");
    // The agent says where it serves metrics a moment after it says it attached.
    wait_until(Duration::from_secs(10), || {
        agent
            .log_text()
            .contains(&format!("http://{METRICS_ADDR}/metrics"))
    })
    .unwrap_or_else(|_| panic!("no metrics address in the log:\n{}", agent.log_text()));
    for mode in [Mode::Pasv, Mode::Port] {
        lab.curl_from_client(&server, &file, mode)
            .unwrap_or_else(|err| panic!("{err:#}"));
    }
    let held = HeldSessions::start(&lab, &server.addr.to_string(), file.name());
    let expected: BTreeMap<(String, String), u64> = ["command", "transfer", "closing"]
        .into_iter()
        .map(|state| (("masquerade".to_owned(), state.to_owned()), 1))
        .collect();
    // Until the finished downloads' connections are swept, only the held sessions remain.
    wait_until(Duration::from_secs(15), || {
        state_counts(&lab.ftpnat_json(&["sessions"])) == expected
    })
    .unwrap_or_else(|_| panic!("sessions: {}", lab.ftpnat_json(&["sessions"])));

    let (metrics, stats, sessions) = snapshot(&lab);
    assert_eq!(state_counts(&sessions), expected);

    // Every datapath counter, by its stats name, and nothing else under that metric.
    let datapath = stats["datapath"].as_object().expect("datapath counters");
    assert_eq!(
        all_of(&metrics, "ftpnat_datapath_events_total").len(),
        datapath.len()
    );
    for (event, count) in datapath {
        assert_eq!(
            value(
                &metrics,
                "ftpnat_datapath_events_total",
                &[("event", event)]
            ),
            count.as_u64().expect("counter"),
            "{event}"
        );
    }
    for event in [
        "expectations_used",
        "packets_translated",
        "control_sessions_opened",
    ] {
        assert!(datapath[event].as_u64().unwrap() > 0, "{event}: {stats}");
    }

    let window = &stats["window"];
    for (metric, field) in [
        ("ftpnat_port_window_size", "size"),
        ("ftpnat_port_window_in_use", "in_use"),
        ("ftpnat_port_window_exhausted_total", "exhausted"),
    ] {
        assert_eq!(
            value(&metrics, metric, &[]),
            window[field].as_u64().unwrap(),
            "{field}"
        );
    }
    assert!(window["in_use"].as_u64().unwrap() >= 3, "{stats}");

    // Sessions by kind and state: every pair present, agreeing with `ftpnat sessions` and summing
    // to the stats' count.
    let by_state = all_of(&metrics, "ftpnat_sessions");
    // Four kinds (masquerade, publish, firewall, nat64) in four states.
    assert_eq!(by_state.len(), 4 * 4, "{by_state:#?}");
    for sample in &by_state {
        let key = (
            sample.labels["kind"].clone(),
            sample.labels["state"].clone(),
        );
        assert_eq!(
            sample.value as u64,
            expected.get(&key).copied().unwrap_or(0),
            "{key:?}"
        );
    }
    let total: f64 = by_state.iter().map(|s| s.value).sum();
    assert_eq!(total as u64, stats["sessions"].as_u64().unwrap());

    let flows: Vec<(String, u64)> = all_of(&metrics, "ftpnat_flows")
        .iter()
        .map(|s| (s.labels["kind"].clone(), s.value as u64))
        .collect();
    assert_eq!(
        flows,
        [("control".to_owned(), 3), ("data".to_owned(), 1)],
        "{stats}"
    );
    assert_eq!(
        flows.iter().map(|(_, n)| n).sum::<u64>(),
        stats["flows"].as_u64().unwrap()
    );
    assert_eq!(
        value(&metrics, "ftpnat_expectations", &[]),
        stats["expectations"].as_u64().unwrap()
    );

    // Packets and bytes of every interface and direction.
    let interfaces = stats["interfaces"].as_array().expect("interfaces");
    let names: BTreeSet<&str> = interfaces
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from([ROUTER_LAN_IF, ROUTER_WAN_IF]));
    for (metric, field) in [
        ("ftpnat_interface_packets_total", "packets"),
        ("ftpnat_interface_bytes_total", "bytes"),
    ] {
        assert_eq!(all_of(&metrics, metric).len(), 2 * interfaces.len());
        for row in interfaces {
            let name = row["name"].as_str().unwrap();
            for direction in ["ingress", "egress"] {
                let counted = row[direction][field].as_u64().unwrap();
                assert_eq!(
                    value(
                        &metrics,
                        metric,
                        &[("interface", name), ("direction", direction)]
                    ),
                    counted,
                    "{name} {direction} {field}"
                );
            }
        }
    }
    assert!(
        value(
            &metrics,
            "ftpnat_interface_bytes_total",
            &[("interface", ROUTER_LAN_IF), ("direction", "egress")]
        ) >= 2 * file.size
    );

    // Anything but GET /metrics is not found.
    for path in ["/", "/metrics/extra", "/favicon.ico"] {
        let (head, _) = http_get(&lab, path);
        assert!(head.starts_with("HTTP/1.1 404 "), "{path}: {head}");
    }

    drop(held);
    let (status, log) = agent.stop().expect("stop");
    assert!(status.success(), "agent exited with {status}:\n{log}");
    // The port is free again once the agent is gone.
    lab.router
        .run_inside(|| std::net::TcpListener::bind(METRICS_ADDR))
        .expect("entering the router")
        .expect("the metrics port is released on exit");
}

#[test]
fn unusable_metrics_address_fails_before_anything_is_attached() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let pin_dir = lab.pin_dir().expect("pin dir");
    // Another listener on the metrics port, inside the router's namespace.
    let _taken = lab
        .router
        .run_inside(|| std::net::TcpListener::bind(METRICS_ADDR))
        .expect("entering the router")
        .expect("binding the metrics port");
    for (addr, problem) in [
        (METRICS_ADDR, "in use"),
        // TEST-NET-2: no interface of the router has it.
        (
            "198.51.100.7:9464",
            "no interface of this host has that address",
        ),
        ("localhost-9464", "invalid"),
    ] {
        let (status, stderr) = lab.run_ftpnat_to_end(&pin_dir, &["--metrics", addr]);
        assert!(!status.success(), "{addr}: exit status {status}");
        assert!(
            stderr.contains("--metrics"),
            "{addr}: flag not named: {stderr}"
        );
        assert!(stderr.contains(addr), "{addr}: address not named: {stderr}");
        assert!(stderr.contains(problem), "{addr}: {stderr}");
        for iface in [ROUTER_WAN_IF, ROUTER_LAN_IF] {
            assert!(
                lab.router_tc_programs(iface).unwrap().is_empty(),
                "{addr}: programs attached to {iface}"
            );
        }
        assert!(!pin_dir.exists(), "{addr}: pins left behind");
    }
}
