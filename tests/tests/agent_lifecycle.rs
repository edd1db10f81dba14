//! `ftpnat run` on a routed lab: it attaches its programs, transfers still work, the counters
//! account for the traffic, bad input, missing privileges and a verifier refusal are refused
//! cleanly; the datapath outlives the agent (SIGTERM, kill -9) for the next agent to adopt, and
//! `ftpnat detach` removes it; an agent failing after attaching removes only what it attached;
//! an interface created again (a PPPoE reconnect) gets a fresh datapath.

use std::{
    io::{BufRead as _, BufReader},
    process::{ExitStatus, Output, Stdio},
    time::Duration,
};

use aya::maps::{Map, MapData, Queue};
use ftpnat_tests::{
    Agent, Lab, LabSpec, Mode, Routing,
    agent::ftpnat_bin,
    lab::{HOST_IF, ROUTER_LAN_IF, ROUTER_WAN_IF, ftpnat_run_args, wait_until},
};
use serde_json::Value;

fn routed_lab() -> Lab {
    Lab::new(LabSpec {
        routing: Routing::Routed,
        ..LabSpec::default()
    })
    .expect("lab")
}

fn counter(stats: &Value, iface: &str, hook: &str, field: &str) -> u64 {
    stats["interfaces"]
        .as_array()
        .expect("interfaces array")
        .iter()
        .find(|row| row["name"] == iface)
        .unwrap_or_else(|| panic!("no row for {iface} in {stats}"))[hook][field]
        .as_u64()
        .expect("counter")
}

#[test]
fn attached_agent_passes_active_and_passive_transfers_and_counts_them() {
    let lab = routed_lab();
    let (server, file) = lab
        .serve_file(8 * 1024 * 1024, 2)
        .expect("vsftpd serving a file");
    let mut agent = lab.start_ftpnat(&[]).expect("ftpnat run");

    let attached = lab.router_tc_programs(ROUTER_WAN_IF).expect("query tcx");
    assert_eq!(attached, ["ftpnat_ingress"]);

    // The router's counters are read before the server's and after them at the end, so that a
    // packet crossing between two reads (an IPv6 router solicitation, ARP) can only add to
    // wan0's count: the comparison below stays one-sided.
    let before = lab.ftpnat_json(&["stats"]);
    let server_rx_before = Lab::rx_packets(&lab.server, HOST_IF).expect("server counters");
    for mode in [Mode::Port, Mode::Pasv] {
        lab.curl_from_client(&server, &file, mode)
            .unwrap_or_else(|err| panic!("{err:#}"));
    }
    let server_rx =
        Lab::rx_packets(&lab.server, HOST_IF).expect("server counters") - server_rx_before;
    let after = lab.ftpnat_json(&["stats"]);

    // Everything the server received left the router through wan0's egress.
    let wan_out = counter(&after, ROUTER_WAN_IF, "egress", "packets")
        - counter(&before, ROUTER_WAN_IF, "egress", "packets");
    assert!(
        wan_out >= server_rx,
        "wan0 egress counted {wan_out} packets, the server received {server_rx}"
    );
    // And it entered through lan0 (the client's side); the replies went the other way.
    for (iface, hook) in [
        (ROUTER_LAN_IF, "ingress"),
        (ROUTER_WAN_IF, "ingress"),
        (ROUTER_LAN_IF, "egress"),
    ] {
        assert!(
            counter(&after, iface, hook, "packets") > counter(&before, iface, hook, "packets"),
            "{iface} {hook} did not grow: {after}"
        );
    }
    assert!(
        counter(&after, ROUTER_LAN_IF, "egress", "bytes") >= 2 * file.size,
        "lan0 egress carried fewer bytes than the two downloads: {after}"
    );
    assert_eq!(after["total"]["packets"].as_u64().unwrap(), {
        let rows = after["interfaces"].as_array().unwrap();
        rows.iter()
            .map(|r| {
                r["ingress"]["packets"].as_u64().unwrap() + r["egress"]["packets"].as_u64().unwrap()
            })
            .sum::<u64>()
    });

    let (status, log) = agent.stop().expect("stop");
    assert!(status.success(), "agent exited with {status}:\n{log}");
}

fn ingress_attached(lab: &Lab) -> bool {
    [ROUTER_LAN_IF, ROUTER_WAN_IF]
        .iter()
        .all(|iface| lab.router_tc_programs(iface).unwrap() == ["ftpnat_ingress"])
}

/// Whether the router's interfaces are free of TC programs, right now. The kernel releases a
/// link whose pin was removed a moment later (after an RCU grace period, from a work queue);
/// ftpnat waits for that before it says "detached" or exits, so that an `ftpnat run` started next
/// does not find the old programs still there.
fn nothing_attached(lab: &Lab) -> bool {
    [ROUTER_LAN_IF, ROUTER_WAN_IF]
        .iter()
        .all(|iface| lab.router_tc_programs(iface).unwrap().is_empty())
}

#[test]
fn sigterm_leaves_the_datapath_attached_and_detach_removes_it() {
    let lab = routed_lab();
    let mut agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let pin_dir = lab.pin_dir().expect("pin dir");
    let state = lab.state_dir().expect("state dir");
    assert!(
        state.join("COUNTERS").exists(),
        "maps are pinned while running"
    );
    assert!(
        state.join("link-wan0-ingress").exists(),
        "links are pinned while running"
    );
    assert!(ingress_attached(&lab));

    let (status, log) = agent.stop_with(libc::SIGTERM).expect("stop");
    assert!(status.success(), "agent exited with {status}:\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("leaving the datapath attached"), "{log}");
    assert!(
        ingress_attached(&lab),
        "a restart must not interrupt the datapath"
    );
    lab.ftpnat_json(&["stats"]);

    assert!(lab.detach().contains("removed 2 links"));
    assert!(nothing_attached(&lab));
    assert!(
        !pin_dir.exists(),
        "{} still exists after detach",
        pin_dir.display()
    );
    // The inspection CLI now says plainly that nothing is running, and detach is idempotent.
    let out = lab.ftpnat(&["stats"]).expect("ftpnat stats");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `ftpnat run` running"));
    assert!(lab.detach().contains("nothing to detach"));
}

#[test]
fn detach_on_exit_removes_programs_and_pins_on_sigint_and_sigterm() {
    let lab = routed_lab();
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let mut agent = lab.start_ftpnat(&["--detach-on-exit"]).expect("ftpnat run");
        assert!(ingress_attached(&lab));
        let (status, log) = agent.stop_with(signal).expect("stop");
        assert!(
            status.success(),
            "agent exited with {status} on {name}:\n{log}"
        );
        assert!(
            log.contains(&format!("{name} received: detaching")),
            "{log}"
        );
        assert!(log.contains("pins under"), "{log}");
        assert!(
            nothing_attached(&lab),
            "programs left attached after {name}"
        );
        assert!(
            !lab.pin_dir().unwrap().exists(),
            "pins left behind after {name}"
        );
    }
}

#[test]
fn killed_agent_keeps_forwarding_and_the_next_run_adopts_it() {
    let lab = routed_lab();
    let mut agent = lab
        .start_ftpnat(&["--port-window", "61000-61099"])
        .expect("ftpnat run");
    agent.stop_with(libc::SIGKILL).expect("kill -9");
    assert!(
        ingress_attached(&lab),
        "the pinned links keep the programs attached"
    );

    // Other settings would reinterpret its sessions and ports: refused, datapath untouched.
    let refused = lab.start_ftpnat(&["--port-window", "61000-61009"]);
    let message = format!("{:#}", refused.err().expect("adoption with other settings"));
    assert!(
        message.contains("port window 61000-61099, not 61000-61009"),
        "{message}"
    );
    assert!(message.contains("ftpnat detach"), "{message}");
    assert!(ingress_attached(&lab));

    let mut again = lab
        .start_ftpnat(&["--port-window", "61000-61099"])
        .expect("second ftpnat run");
    assert!(
        again.log_text().contains("adopted the datapath"),
        "{}",
        again.log_text()
    );
    assert!(
        ingress_attached(&lab),
        "adoption swaps programs in place, never adds any"
    );
    assert_eq!(
        lab.ftpnat_json(&["stats"])["window"]["range"],
        "61000-61099"
    );
    let (status, log) = again.stop().expect("stop");
    assert!(status.success(), "{status}:\n{log}");
    lab.detach();
    assert!(nothing_attached(&lab));
}

#[test]
fn datapath_of_another_version_is_refused_until_detached() {
    let lab = routed_lab();
    let pin_dir = lab.pin_dir().expect("pin dir");
    std::fs::create_dir_all(pin_dir.join("v1")).expect("an older layout's directory");
    let refused = lab.start_ftpnat(&[]);
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(message.contains("another ftpnat version"), "{message}");
    assert!(message.contains("ftpnat detach --pin-dir"), "{message}");
    assert!(nothing_attached(&lab));
    lab.detach();
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run after detach");
    assert!(ingress_attached(&lab));
}

#[test]
fn unknown_interface_is_refused_and_nothing_is_attached() {
    let lab = routed_lab();
    let pin_dir = lab.pin_dir().expect("pin dir");
    for (flag_args, bad) in [
        (["--wan", "nosuch0", "--lan", ROUTER_LAN_IF], "nosuch0"),
        (["--wan", ROUTER_WAN_IF, "--lan", "nosuch1"], "nosuch1"),
    ] {
        let mut args = vec!["run"];
        args.extend(flag_args);
        let out = lab
            .in_router(
                &ftpnat_tests::agent::ftpnat_bin().unwrap().to_string_lossy(),
                &args,
            )
            .args(["--pin-dir", &pin_dir.to_string_lossy()])
            .output()
            .expect("ftpnat run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "exit status {}", out.status);
        assert!(
            stderr.contains(bad),
            "message does not name {bad}: {stderr}"
        );
        for iface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
            assert!(lab.router_tc_programs(iface).unwrap().is_empty());
        }
        assert!(!pin_dir.exists(), "pins left behind");
    }
}

#[test]
fn second_agent_on_the_same_interfaces_is_refused_and_the_first_keeps_running() {
    let lab = routed_lab();
    let _first = lab.start_ftpnat(&[]).expect("ftpnat run");
    let other_pins = lab.pin_dir().unwrap().with_file_name("second");
    let (status, stderr) = lab.run_ftpnat_to_end(&other_pins, &[]);
    assert!(!status.success());
    assert!(
        stderr.contains("another `ftpnat run` manages it"),
        "{stderr}"
    );
    assert!(!other_pins.exists());
    assert_eq!(
        lab.router_tc_programs(ROUTER_WAN_IF).unwrap(),
        ["ftpnat_ingress"]
    );
    // The same pin dir is locked by the first agent; so is `ftpnat detach` while it runs.
    let same = lab.start_ftpnat(&[]);
    let message = format!(
        "{:#}",
        same.err().expect("second agent on the same pin dir")
    );
    assert!(message.contains("another ftpnat process"), "{message}");
    let out = lab.ftpnat(&["detach"]).expect("ftpnat detach");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ftpnat process"));
    assert!(ingress_attached(&lab));
}

#[test]
fn pin_dir_outside_bpffs_is_refused_with_the_fix() {
    let lab = routed_lab();
    let not_bpffs = lab.dir().join("plain-dir/ftpnat");
    let (status, stderr) = lab.run_ftpnat_to_end(&not_bpffs, &[]);
    assert!(!status.success());
    assert!(stderr.contains("mount -t bpf"), "{stderr}");
    assert!(lab.router_tc_programs(ROUTER_WAN_IF).unwrap().is_empty());
    assert!(
        !lab.dir().join("plain-dir").exists(),
        "the refused pin dir was created"
    );
}

/// `ftpnat run` on the lab's interfaces with the lab's pin dir, in the router's namespace, through
/// `wrapper` (a program and its arguments that then run ftpnat, such as setpriv), to its end.
fn run_wrapped(lab: &Lab, wrapper: &[&str]) -> Output {
    let pin_dir = lab.pin_dir().expect("pin dir");
    let bin = ftpnat_bin().expect("ftpnat binary");
    let bin = bin.to_string_lossy();
    let run = ftpnat_run_args(&pin_dir, &[]);
    let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
    let mut args = wrapper_args.to_vec();
    args.push(&bin);
    args.extend(run.iter().map(String::as_str));
    lab.in_router(program, &args)
        .env("RUST_LOG", "info")
        .output()
        .expect("ftpnat run")
}

#[test]
fn verifier_refusal_without_perfmon_or_sys_admin_shows_its_log_and_leaves_nothing() {
    let lab = routed_lab();
    // Root with CAP_BPF and CAP_NET_ADMIN, but neither capability that lets the verifier accept
    // pointer arithmetic.
    let out = run_wrapped(
        &lab,
        &[
            "setpriv",
            "--bounding-set=-sys_admin,-perfmon",
            "--inh-caps=-sys_admin,-perfmon",
            "--",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    let (headline, log_tail) = stderr
        .split_once("the kernel's verifier rejected program ftpnat_")
        .and_then(|(_, refusal)| refusal.split_once('\n'))
        .unwrap_or_else(|| panic!("not a verifier refusal: {stderr}"));
    // "… (Permission denied …); last N lines of its log:", then those lines, ending the output.
    let shown: usize = headline
        .rsplit_once("; last ")
        .and_then(|(_, count)| count.strip_suffix(" lines of its log:"))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no line count: {stderr}"));
    let tail: Vec<&str> = log_tail.lines().collect();
    assert!(shown > 0, "{stderr}");
    assert_eq!(tail.len(), shown, "{stderr}");
    assert!(
        tail.iter()
            .any(|line| line.contains("pointer arithmetic") && line.contains("prohibited")),
        "the log's tail does not give the verifier's reason: {stderr}"
    );
    assert!(nothing_attached(&lab));
    assert!(
        !lab.pin_dir().unwrap().exists(),
        "maps pinned before the refusal were left behind"
    );
}

#[test]
fn non_root_is_refused_before_anything_is_created() {
    let lab = routed_lab();
    let out = run_wrapped(
        &lab,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert!(nothing_attached(&lab));
    assert!(!lab.pin_dir().unwrap().exists(), "the pin dir was created");
}

/// Makes the running agent fail after attaching: a control connection through the masquerade takes
/// a window port; the queue of free ports is then filled to the brim from outside, so that when
/// the connection has ended the agent cannot push the port back and stops with an error — from
/// the release of closed connections, or from its sweep if that comes first. Returns the agent's
/// exit status and log.
fn fail_the_sweep(lab: &Lab, agent: &mut Agent) -> (ExitStatus, String) {
    // Held open (banner read) until told otherwise on stdin.
    const HOLD_CONTROL_CONNECTION: &str = "\
import socket, sys
conn = socket.create_connection((sys.argv[1], 21), timeout=30)
conn.recv(1024)
print('connected', flush=True)
sys.stdin.readline()
conn.close()
";
    let server = lab.spec.server.to_string();
    let mut client = lab
        .client
        .command(
            "timeout",
            &[
                "60",
                "/usr/bin/python3",
                "-c",
                HOLD_CONTROL_CONNECTION,
                &server,
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(client.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the client's first line");
    assert_eq!(
        line.trim(),
        "connected",
        "the control connection did not open"
    );

    let free_ports = lab.state_dir().expect("state dir").join("FREE_PORTS");
    let mut queue: Queue<_, u16> = Queue::try_from(Map::Queue(
        MapData::from_pin(&free_ports).expect("the pinned FREE_PORTS"),
    ))
    .expect("a queue of ports");
    let capacity = queue.capacity();
    let room = (0..=capacity)
        .take_while(|_| queue.push(WINDOW_LO, 0).is_ok())
        .count();
    assert!(
        room <= capacity as usize,
        "the queue of {capacity} ports never filled"
    );

    drop(client.stdin.take().expect("stdin"));
    client.wait().expect("the client's end");
    agent
        .wait_for_exit(Duration::from_secs(60))
        .expect("the agent stops on the sweep's error")
}

/// The agent's error on a port it could not give back to the full queue.
fn failed_to_return_the_port(log: &str) -> bool {
    (log.contains("releasing closed connections") || log.contains("sweeping finished connections"))
        && log.contains("bpf_map_push_elem")
}

const WINDOW_LO: u16 = 61000;
const WINDOW: &str = "61000-61009";

/// An agent that fails while serving leaves the datapath as SIGTERM does, whether it attached it
/// or adopted it: it carries transfers, and the next agent adopts it.
#[test]
fn an_error_while_serving_leaves_a_fresh_datapath_for_the_next_agent() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let _server = lab.serve_file(1024, 3).expect("vsftpd");
    let mut agent = lab
        .start_ftpnat(&["--port-window", WINDOW])
        .expect("ftpnat run");
    let (status, log) = fail_the_sweep(&lab, &mut agent);
    assert!(!status.success(), "agent exited with {status}:\n{log}");
    assert!(failed_to_return_the_port(&log), "{log}");
    assert!(log.contains("stays attached"), "{log}");
    assert!(ingress_attached(&lab), "the datapath was removed:\n{log}");
    let next = lab
        .start_ftpnat(&["--port-window", WINDOW])
        .expect("the next ftpnat run");
    assert!(next.log_text().contains("adopted the datapath"));
}

#[test]
fn error_after_adopting_leaves_the_datapath_unless_detach_on_exit() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let _server = lab.serve_file(1024, 4).expect("vsftpd");
    let mut first = lab
        .start_ftpnat(&["--port-window", WINDOW])
        .expect("ftpnat run");
    first
        .stop()
        .expect("first agent stops, leaving its datapath");

    let mut adopter = lab
        .start_ftpnat(&["--port-window", WINDOW])
        .expect("ftpnat run adopting");
    assert!(adopter.log_text().contains("adopted the datapath"));
    let (status, log) = fail_the_sweep(&lab, &mut adopter);
    assert!(!status.success(), "agent exited with {status}:\n{log}");
    assert!(failed_to_return_the_port(&log), "{log}");
    assert!(log.contains("stays attached"), "{log}");
    assert!(
        ingress_attached(&lab),
        "a previous run's datapath was removed:\n{log}"
    );
    lab.ftpnat_json(&["stats"]);

    let mut told_to_detach = lab
        .start_ftpnat(&["--port-window", WINDOW, "--detach-on-exit"])
        .expect("ftpnat run adopting again");
    let (status, log) = fail_the_sweep(&lab, &mut told_to_detach);
    assert!(!status.success(), "agent exited with {status}:\n{log}");
    assert!(
        log.contains("stopping on an error: detached from all interfaces"),
        "{log}"
    );
    assert!(nothing_attached(&lab), "{log}");
    assert!(!lab.pin_dir().unwrap().exists(), "pins left behind:\n{log}");
}

/// A PPPoE reconnect deletes the WAN interface and, a while later, creates it again under its
/// name; the programs go with the old one. The agent notices, removes its datapath (FTP takes the
/// router's ordinary path meanwhile), waits, and attaches afresh to the new interface, keeping
/// its pin dir locked throughout; also when the new interface has the old one's index. A run
/// that finds such a datapath still pinned — its agent was
/// killed before it could notice — replaces it instead of adopting it.
#[test]
fn a_wan_interface_created_again_gets_a_fresh_datapath() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab
        .serve_file(4 * 1024 * 1024, 8)
        .expect("vsftpd serving a file");
    let download = || {
        lab.curl_from_client(&server, &file, Mode::Port)
            .unwrap_or_else(|err| panic!("{err:#}"))
    };
    let mut agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    download();

    lab.lose_wan_under(&agent);
    assert!(
        lab.router_tc_programs(ROUTER_LAN_IF).unwrap().is_empty(),
        "lan0 kept programs that lead to a WAN that is gone"
    );

    lab.wire_wan().expect("creating wan0 again");
    let attached = wait_until(Duration::from_secs(20), || ingress_attached(&lab));
    assert!(attached.is_ok(), "no fresh datapath:\n{}", agent.log_text());
    download();
    let refused = lab.ftpnat(&["detach"]).expect("ftpnat detach");
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("another ftpnat process"),
        "the pin dir is not locked by the agent any more: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    // Created again under the same index: the index is no clue, the missing programs are.
    lab.recreate_wan_keeping_its_index()
        .expect("creating wan0 again with its index");
    let reattached = wait_until(Duration::from_secs(20), || {
        agent.log_text().matches("lost ftpnat's programs").count() == 2 && ingress_attached(&lab)
    });
    assert!(
        reattached.is_ok(),
        "no fresh datapath after wan0 came back with its index:\n{}",
        agent.log_text()
    );
    download();

    agent.stop_with(libc::SIGKILL).expect("kill -9");
    lab.recreate_wan()
        .expect("creating wan0 again, with no agent");
    let mut third = lab
        .start_ftpnat(&[])
        .expect("ftpnat run over a datapath that lost wan0");
    let log = third.log_text();
    assert!(
        log.contains("no longer attached at wan0/ingress") && log.contains("attaching afresh"),
        "{log}"
    );
    assert!(ingress_attached(&lab));
    download();

    // Stopped while it waits for a lost interface: nothing attached, nothing pinned.
    lab.delete_wan().expect("deleting wan0 again");
    let waiting = wait_until(Duration::from_secs(20), || {
        third
            .log_text()
            .contains("attaching again once the interfaces are all there")
    });
    assert!(waiting.is_ok(), "{}", third.log_text());
    let (status, log) = third.stop().expect("SIGTERM while waiting");
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("SIGTERM received while waiting"), "{log}");
    assert!(lab.router_tc_programs(ROUTER_LAN_IF).unwrap().is_empty());
    assert!(!lab.pin_dir().unwrap().exists(), "pins left behind:\n{log}");
}
