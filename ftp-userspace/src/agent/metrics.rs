//! `ftpnat run --metrics ADDR:PORT`: the agent's state in the Prometheus text exposition format
//! (version 0.0.4), read at every scrape from the same pinned maps `ftpnat stats` reads, with
//! [`stats::collect`], so the two always agree.
//!
//! The HTTP side is the least a scraper needs: `GET /metrics` answers 200 with the exposition,
//! anything else 404, and every connection closes after its response. It is bounded: at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed unanswered), a request head of at most
//! [`MAX_REQUEST_HEAD`] bytes sent within [`REQUEST_TIMEOUT`]; and the maps are read on the
//! runtime's blocking pool, never on the thread that runs the agent's sweep.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::report::stats::Direction;
use anyhow::Context as _;
use tokio::{net::TcpStream, sync::Semaphore, task::JoinHandle};

use crate::report::stats::{self, Stats};

/// A request head larger than this is not a scrape: the connection is answered 404.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head, so that idle connections do not pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; a scraper needs one. Further ones are closed at once, so that
/// connections left open (a slow client, a port scan) cannot pile up.
const MAX_CONNECTIONS: usize = 32;
/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the metrics address. Called before anything is attached, so that a busy or foreign
/// address fails `ftpnat run` with nothing to undo.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).map_err(|err| {
        let fix = match err.kind() {
            io::ErrorKind::AddrInUse => {
                "another process listens there (another ftpnat?); choose a free port, e.g. \
                 --metrics 127.0.0.1:9464, or stop that process"
            }
            io::ErrorKind::AddrNotAvailable => {
                "no interface of this host has that address; give one of its addresses, \
                 127.0.0.1 for local scrapers or 0.0.0.0 for all"
            }
            io::ErrorKind::PermissionDenied => {
                "the port is privileged or a security policy forbids it; choose a port above 1023"
            }
            _ => "choose another ADDR:PORT for --metrics",
        };
        anyhow::anyhow!("--metrics {addr}: cannot listen there ({err}): {fix}")
    })?;
    // Tokio takes the socket over and needs it non-blocking.
    listener
        .set_nonblocking(true)
        .with_context(|| format!("--metrics {addr}: making the socket non-blocking"))?;
    Ok(listener)
}

/// Serves the metrics of the agent pinned under `pin_dir` from `listener` (from [`bind`]) on a
/// task of the current runtime, until the returned handle is aborted.
pub fn spawn(listener: TcpListener, pin_dir: PathBuf) -> anyhow::Result<JoinHandle<()>> {
    let addr = listener
        .local_addr()
        .context("reading the metrics socket's address")?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .with_context(|| format!("--metrics {addr}: registering the socket with the runtime"))?;
    log::info!("serving Prometheus metrics at http://{addr}/metrics");
    let pin_dir: Arc<Path> = pin_dir.into();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                        log::debug!(
                            "metrics at {addr}: {MAX_CONNECTIONS} connections open, closing {peer}'s"
                        );
                        continue;
                    };
                    let pin_dir = Arc::clone(&pin_dir);
                    tokio::spawn(async move {
                        respond(stream, pin_dir).await;
                        drop(permit);
                    });
                }
                Err(err) => {
                    log::warn!("metrics at {addr}: accepting a connection: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }))
}

/// Answers one connection's request, then closes it.
async fn respond(stream: TcpStream, pin_dir: Arc<Path>) {
    // A client that goes away or stalls before its request is complete gets no answer.
    let Ok(Ok(head)) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&stream)).await else {
        return;
    };
    let response = if is_scrape(&head) {
        // Reading every table takes a while when they are full: not on the agent's thread.
        let collected = tokio::task::spawn_blocking(move || stats::collect(&pin_dir))
            .await
            .unwrap_or_else(|err| Err(anyhow::anyhow!("the reading task failed: {err}")));
        match collected {
            Ok(stats) => http_response("200 OK", CONTENT_TYPE, &render(&stats)),
            Err(err) => {
                log::warn!("metrics: reading the pinned maps: {err:#}");
                http_response(
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    &format!("ftpnat: reading the pinned maps: {err:#}\n"),
                )
            }
        }
    } else {
        http_response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "ftpnat serves GET /metrics only\n",
        )
    };
    match tokio::time::timeout(RESPONSE_TIMEOUT, write_all(&stream, response.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => log::debug!("metrics: sending a response: {err}"),
        Err(_) => log::debug!("metrics: a client did not read its response in time"),
    }
}

/// Reads up to the blank line that ends the request head (or [`MAX_REQUEST_HEAD`] bytes of it).
async fn read_head(stream: &TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                let complete = head.windows(4).any(|w| w == b"\r\n\r\n")
                    || head.windows(2).any(|w| w == b"\n\n");
                if complete || head.len() > MAX_REQUEST_HEAD {
                    return Ok(head);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Whether a request head asks for `GET /metrics` (a query string is ignored).
fn is_scrape(head: &[u8]) -> bool {
    if head.len() > MAX_REQUEST_HEAD {
        return false;
    }
    let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = request_line.trim_ascii().split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    method == b"GET" && path == b"/metrics" && version.starts_with(b"HTTP/1.")
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The exposition of `stats`: every metric's HELP and TYPE lines, then its samples.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();

    let mut sessions = Metric::start(
        &mut out,
        "ftpnat_sessions",
        "gauge",
        "FTP control sessions ftpnat tracks, by kind (masquerade, publish, firewall, nat64) and \
         state (command, transfer, encrypted, closing).",
    );
    for (&(kind, state), &count) in &stats.sessions_by {
        sessions.sample(&[("kind", kind), ("state", state)], count as u64);
    }

    let mut flows = Metric::start(
        &mut out,
        "ftpnat_flows",
        "gauge",
        "Connections ftpnat translates, by kind (control, data).",
    );
    for (&kind, &count) in &stats.flows_by {
        flows.sample(&[("kind", kind)], count as u64);
    }

    Metric::start(
        &mut out,
        "ftpnat_expectations",
        "gauge",
        "Announced data connections not yet opened.",
    )
    .sample(&[], stats.expectations as u64);

    let mut capacity = Metric::start(
        &mut out,
        "ftpnat_table_capacity",
        "gauge",
        "What each table can hold (--max-sessions sizes them): sessions, flows (connections), \
         expectations; compare with ftpnat_sessions, ftpnat_flows, ftpnat_expectations.",
    );
    for (table, value) in [
        ("sessions", stats.capacity.sessions),
        ("flows", stats.capacity.flows),
        ("expectations", stats.capacity.expectations),
    ] {
        capacity.sample(&[("table", table)], u64::from(value));
    }

    Metric::start(
        &mut out,
        "ftpnat_port_window_size",
        "gauge",
        "Ports in the port window (--port-window).",
    )
    .sample(&[], u64::from(stats.window.size));
    Metric::start(
        &mut out,
        "ftpnat_port_window_in_use",
        "gauge",
        "Window ports held by connections and expectations.",
    )
    .sample(&[], u64::from(stats.window.in_use));
    Metric::start(
        &mut out,
        "ftpnat_port_window_exhausted_total",
        "counter",
        "Requests for a window port that found none free and were refused; widen --port-window.",
    )
    .sample(&[], stats.window.exhausted);

    let mut events = Metric::start(
        &mut out,
        "ftpnat_datapath_events_total",
        "counter",
        "What the datapath did, by event, as in `ftpnat stats`. Among them: refusals \
         (PORT/EPRT/227/229 refused by policy), malformed_lines (control lines that could not be \
         parsed), pinhole_no_expectation and pinhole_wrong_peer (SYNs to window ports dropped), \
         window_exhausted.",
    );
    for (&event, &count) in &stats.datapath {
        events.sample(&[("event", event)], count);
    }

    let mut refusals = Metric::start(
        &mut out,
        "ftpnat_refusals_total",
        "counter",
        "PORT/EPRT/227/229 refused by policy (passed untouched, nothing opened), by reason.",
    );
    for (&reason, &count) in &stats.refusals_by_reason {
        refusals.sample(&[("reason", reason)], count);
    }
    let mut malformed = Metric::start(
        &mut out,
        "ftpnat_malformed_lines_total",
        "counter",
        "Control lines that could not be parsed (passed untouched), by reason.",
    );
    for (&reason, &count) in &stats.malformed_by_reason {
        malformed.sample(&[("reason", reason)], count);
    }

    for (name, help, bytes) in [
        (
            "ftpnat_interface_packets_total",
            "Packets each interface ftpnat is attached to received (ingress) and sent (egress), from the kernel's interface statistics.",
            false,
        ),
        (
            "ftpnat_interface_bytes_total",
            "Bytes each interface ftpnat is attached to received and sent (link-layer header included), from the kernel's interface statistics.",
            true,
        ),
    ] {
        let mut metric = Metric::start(&mut out, name, "counter", help);
        for row in &stats.interfaces {
            for (direction, counters) in [
                (Direction::Ingress, &row.ingress),
                (Direction::Egress, &row.egress),
            ] {
                metric.sample(
                    &[("interface", &row.name), ("direction", direction.as_str())],
                    if bytes {
                        counters.bytes
                    } else {
                        counters.packets
                    },
                );
            }
        }
    }
    out
}

/// One metric being written: its name, for the samples that follow its HELP and TYPE lines.
struct Metric<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Metric<'a> {
    fn start(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        out.push_str(&format!("# HELP {name} {}\n", escape_help(help)));
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        Self { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value)))
                .collect();
            self.out.push_str(&format!("{{{}}}", labels.join(",")));
        }
        self.out.push_str(&format!(" {value}\n"));
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// Label values also escape the double quote that ends them.
fn escape_label_value(value: &str) -> String {
    escape_help(value).replace('"', r#"\""#)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::stats::{Capacity, Counters, InterfaceStats, NatStats, WindowStats};

    fn stats() -> Stats {
        Stats {
            interfaces: vec![InterfaceStats {
                name: "wan0".to_owned(),
                ifindex: 2,
                role: "wan".to_owned(),
                ingress: Counters {
                    packets: 10,
                    bytes: 1500,
                },
                egress: Counters {
                    packets: 7,
                    bytes: 900,
                },
            }],
            nat: NatStats::default(),
            total: Counters {
                packets: 17,
                bytes: 2400,
            },
            window: WindowStats {
                range: "61000-61999".to_owned(),
                size: 1000,
                in_use: 3,
                exhausted: 2,
            },
            datapath: BTreeMap::from([("refusals", 4), ("window_exhausted", 2)]),
            refusals_by_reason: BTreeMap::from([("bounce", 3), ("unsolicited_reply", 1)]),
            malformed_by_reason: BTreeMap::from([("port_out_of_range", 5)]),
            sessions: 4,
            flows: 3,
            expectations: 1,
            capacity: Capacity {
                sessions: 4096,
                flows: 16384,
                expectations: 16384,
            },
            sessions_by: BTreeMap::from([
                (("masquerade", "command"), 1),
                (("publish", "transfer"), 1),
                (("nat64", "transfer"), 2),
            ]),
            flows_by: BTreeMap::from([("control", 2), ("data", 1)]),
        }
    }

    #[test]
    fn every_metric_has_help_and_type_before_its_samples() {
        let text = render(&stats());
        let mut described: Vec<&str> = Vec::new();
        let mut typed: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(name.starts_with("ftpnat_"), "{line}");
                assert!(!help.is_empty(), "{line}");
                assert!(!described.contains(&name), "HELP twice: {line}");
                described.push(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(
                    described.last(),
                    Some(&name),
                    "TYPE right after HELP: {line}"
                );
                assert!(kind == "gauge" || kind == "counter", "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                typed.push(name);
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(
                    typed.last(),
                    Some(&name),
                    "sample of the metric just typed: {line}"
                );
                let value = line.rsplit(' ').next().unwrap();
                value.parse::<f64>().unwrap();
            }
        }
        assert_eq!(described, typed);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn samples_carry_the_stats_values() {
        let text = render(&stats());
        for sample in [
            "ftpnat_sessions{kind=\"masquerade\",state=\"command\"} 1\n",
            "ftpnat_sessions{kind=\"publish\",state=\"transfer\"} 1\n",
            "ftpnat_sessions{kind=\"nat64\",state=\"transfer\"} 2\n",
            "ftpnat_flows{kind=\"control\"} 2\n",
            "ftpnat_flows{kind=\"data\"} 1\n",
            "ftpnat_expectations 1\n",
            "ftpnat_table_capacity{table=\"sessions\"} 4096\n",
            "ftpnat_table_capacity{table=\"flows\"} 16384\n",
            "ftpnat_table_capacity{table=\"expectations\"} 16384\n",
            "ftpnat_refusals_total{reason=\"bounce\"} 3\n",
            "ftpnat_refusals_total{reason=\"unsolicited_reply\"} 1\n",
            "ftpnat_malformed_lines_total{reason=\"port_out_of_range\"} 5\n",
            "ftpnat_port_window_size 1000\n",
            "ftpnat_port_window_in_use 3\n",
            "ftpnat_port_window_exhausted_total 2\n",
            "ftpnat_datapath_events_total{event=\"refusals\"} 4\n",
            "ftpnat_datapath_events_total{event=\"window_exhausted\"} 2\n",
            "ftpnat_interface_packets_total{interface=\"wan0\",direction=\"ingress\"} 10\n",
            "ftpnat_interface_packets_total{interface=\"wan0\",direction=\"egress\"} 7\n",
            "ftpnat_interface_bytes_total{interface=\"wan0\",direction=\"ingress\"} 1500\n",
            "ftpnat_interface_bytes_total{interface=\"wan0\",direction=\"egress\"} 900\n",
        ] {
            assert!(text.contains(sample), "{sample:?} missing from\n{text}");
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("two\nlines"), r"two\nlines");
        assert_eq!(escape_help(r#"say "hi" \ bye"#), r#"say "hi" \\ bye"#);
        let mut stats = stats();
        stats.interfaces[0].name = "we\"ird\\".to_owned();
        let text = render(&stats);
        assert!(
            text.contains(
                "ftpnat_interface_packets_total{interface=\"we\\\"ird\\\\\",direction=\"ingress\"} 10\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn only_get_metrics_is_a_scrape() {
        assert!(is_scrape(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_scrape(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"));
        assert!(!is_scrape(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!is_scrape(b"GET /metricsx HTTP/1.1\r\n\r\n"));
        assert!(!is_scrape(b"POST /metrics HTTP/1.1\r\n\r\n"));
        assert!(!is_scrape(b"GET /metrics\r\n\r\n"));
        assert!(!is_scrape(b"\r\n\r\n"));
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST_HEAD + 1, b'a');
        assert!(!is_scrape(&huge));
    }

    #[test]
    fn responses_close_and_state_their_length() {
        let response = http_response("200 OK", CONTENT_TYPE, "ab\n");
        assert_eq!(
            response,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 3\r\nConnection: close\r\n\r\nab\n"
        );
    }
}
