//! `--tc-attach netlink`: the datapath attached through classic TC — a clsact qdisc and a
//! direct-action cls_bpf filter per hook, as on kernels without TCX (before 6.6) — on this kernel,
//! which has both. Transfers cross it; it outlives the agent and the next one swaps its programs
//! into the same filters mid-transfer; `ftpnat detach` and a failed start leave no filter; an
//! interface created again gets fresh filters; a second agent is refused whichever way the first
//! attached. What the kernel lists is read with iproute2's `tc filter show`.

use std::time::Duration;

use ftpnat_tests::{
    Agent, Lab, LabSpec, MIB, Mode,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF, TcFilter, wait_until},
};

fn netlink_agent(lab: &Lab, extra: &[&str]) -> anyhow::Result<Agent> {
    let mut args = vec!["--tc-attach", "netlink"];
    args.extend_from_slice(extra);
    lab.start_ftpnat(&args)
}

fn filters(lab: &Lab, iface: &str) -> Vec<TcFilter> {
    lab.router_tc_filters(iface)
        .unwrap_or_else(|err| panic!("{err:#}"))
}

/// Every interface has exactly ftpnat's filter, at its ingress, and no TCX program.
fn attached_through_filters(lab: &Lab) -> bool {
    [ROUTER_LAN_IF, ROUTER_WAN_IF].iter().all(|iface| {
        let names: Vec<(&str, String)> = filters(lab, iface)
            .into_iter()
            .map(|f| (f.hook, f.name))
            .collect();
        names == [("ingress", "ftpnat_ingress".to_owned())]
            && lab.router_tc_programs(iface).unwrap().is_empty()
    })
}

fn no_filters(lab: &Lab) -> bool {
    [ROUTER_LAN_IF, ROUTER_WAN_IF].iter().all(|iface| {
        filters(lab, iface).is_empty() && lab.router_tc_programs(iface).unwrap().is_empty()
    })
}

#[test]
fn classic_tc_carries_transfers_refuses_a_second_agent_and_detach_removes_every_filter() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(4 * MIB, 21).expect("vsftpd");
    let mut agent = netlink_agent(&lab, &[]).expect("ftpnat run");
    let log = agent.log_text();
    assert!(
        log.contains("attaching through classic TC filters")
            && log.contains("--tc-attach netlink asks for it"),
        "the log does not say how the agent attaches, and why:\n{log}"
    );
    assert!(
        attached_through_filters(&lab),
        "{:?}",
        filters(&lab, ROUTER_WAN_IF)
    );
    let state = lab.state_dir().expect("state dir");
    let record = std::fs::read_link(state.join("filter-wan0-ingress")).expect("a filter record");
    let wan_ingress = &filters(&lab, ROUTER_WAN_IF)[0];
    assert!(
        record.to_string_lossy().ends_with(&format!(
            "pref {} handle {}",
            wan_ingress.pref, wan_ingress.handle
        )),
        "the record {record:?} does not name the filter {wan_ingress:?}"
    );
    assert!(!state.join("link-wan0-ingress").exists());

    // The lab has no route back to the client: only ftpnat's masquerade carries these.
    for mode in [Mode::Port, Mode::Pasv] {
        lab.curl_from_client(&server, &file, mode)
            .unwrap_or_else(|err| panic!("{err:#}"));
    }
    let stats = lab.ftpnat_json(&["stats"]);
    let wan = stats["interfaces"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["name"] == ROUTER_WAN_IF))
        .unwrap_or_else(|| panic!("no wan0 row: {stats}"));
    assert!(
        wan["ingress"]["bytes"].as_u64().unwrap() >= 2 * file.size,
        "wan0 ingress counted less than the two downloads: {stats}"
    );

    // Another agent, with another pin dir, finds the filters whichever way it would attach.
    let other_pins = lab.pin_dir().unwrap().with_file_name("second");
    for mechanism in ["auto", "netlink"] {
        let (status, stderr) = lab.run_ftpnat_to_end(&other_pins, &["--tc-attach", mechanism]);
        assert!(!status.success(), "a second agent ({mechanism}) started");
        assert!(
            stderr.contains("another `ftpnat run` manages it")
                && stderr.contains("through classic TC filters"),
            "{mechanism}: {stderr}"
        );
        assert!(!other_pins.exists());
    }

    let before = filters(&lab, ROUTER_WAN_IF);
    let (status, log) = agent.stop().expect("stop");
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("leaving the datapath attached"), "{log}");
    assert_eq!(
        filters(&lab, ROUTER_WAN_IF),
        before,
        "the filters keep their programs when the agent exits"
    );
    lab.curl_from_client(&server, &file, Mode::Pasv)
        .unwrap_or_else(|err| panic!("no agent, the filters still carry transfers: {err:#}"));

    let removed = lab.detach();
    assert!(removed.contains("removed 2 TC filters"), "{removed}");
    assert!(no_filters(&lab), "{:?}", filters(&lab, ROUTER_WAN_IF));
    assert!(!lab.pin_dir().unwrap().exists());

    // --detach-on-exit takes the same way out.
    let mut agent = netlink_agent(&lab, &["--detach-on-exit"]).expect("ftpnat run");
    assert!(attached_through_filters(&lab));
    let (status, log) = agent.stop().expect("stop");
    assert!(status.success(), "{status}:\n{log}");
    assert!(no_filters(&lab), "{log}");
    assert!(!lab.pin_dir().unwrap().exists(), "{log}");
}

/// As restart.rs's kill -9 test, through filters: the next agent replaces the programs of the
/// filters in place (same priority and handle, new program), with no gap in forwarding.
#[test]
fn classic_tc_restart_mid_transfer_swaps_programs_into_the_same_filters() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(100 * MIB, 22).expect("vsftpd");
    let mut agent = netlink_agent(&lab, &[]).expect("ftpnat run");
    let first = filters(&lab, ROUTER_WAN_IF);
    let local = lab.subdir("client").expect("client dir").join("big.bin");
    std::thread::scope(|scope| {
        let transfer = scope.spawn(|| lab.curl_slowly(&server, &file, "5M", &local));
        lab.kill_agent_once_data_flows(&mut agent);

        // Another mechanism would leave these filters behind and attach twice: refused, the
        // datapath untouched.
        let refused = lab.start_ftpnat(&["--tc-attach", "tcx"]);
        let message = format!("{:#}", refused.err().expect("adoption through TCX"));
        assert!(
            message.contains("attached through classic TC filters")
                && message.contains("not TCX links")
                && message.contains("--tc-attach netlink"),
            "{message}"
        );
        assert_eq!(filters(&lab, ROUTER_WAN_IF), first);

        let mut again = netlink_agent(&lab, &[]).expect("ftpnat run after kill -9");
        assert!(
            again.log_text().contains("adopted the datapath"),
            "{}",
            again.log_text()
        );
        let swapped = filters(&lab, ROUTER_WAN_IF);
        assert_eq!(swapped.len(), 1, "{swapped:?}");
        for (old, new) in first.iter().zip(&swapped) {
            assert_eq!(
                (old.hook, old.pref, &old.handle),
                (new.hook, new.pref, &new.handle)
            );
            assert_ne!(old.program_id, new.program_id, "{old:?} kept its program");
        }
        let sessions = lab.ftpnat_json(&["sessions"]);
        let session = sessions
            .as_array()
            .and_then(|s| s.first())
            .unwrap_or_else(|| panic!("no session after adoption: {sessions}"));
        assert!(session["data_flows"].as_u64().unwrap() >= 1, "{sessions}");

        transfer
            .join()
            .expect("transfer thread")
            .unwrap_or_else(|err| panic!("{err:#}"));
        let (status, log) = again.stop().expect("stop");
        assert!(status.success(), "{status}:\n{log}");
    });
    lab.detach();
    assert!(no_filters(&lab));
}

/// An interface whose qdisc at the ingress handle is a plain `ingress` one cannot take an egress
/// filter (it would run at ingress): the start fails naming it and the fix, after the ingress
/// filter of the interface before it was attached — which goes again.
#[test]
fn classic_tc_failed_start_leaves_no_filter() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    lab.router
        .exec("tc", &["qdisc", "add", "dev", ROUTER_LAN_IF, "ingress"])
        .expect("an ingress qdisc on lan0");
    let pin_dir = lab.pin_dir().expect("pin dir");
    let (status, stderr) = lab.run_ftpnat_to_end(&pin_dir, &["--tc-attach", "netlink"]);
    assert!(!status.success(), "ftpnat run started");
    assert!(
        stderr.contains("interface 'lan0' has an 'ingress' qdisc")
            && stderr.contains("tc qdisc del dev lan0 ingress"),
        "{stderr}"
    );
    assert!(no_filters(&lab), "{:?}", filters(&lab, ROUTER_WAN_IF));
    assert!(!pin_dir.exists(), "pins left behind");

    lab.router
        .exec("tc", &["qdisc", "del", "dev", ROUTER_LAN_IF, "ingress"])
        .expect("removing lan0's ingress qdisc");
    let _agent = netlink_agent(&lab, &[]).expect("ftpnat run after the fix");
    assert!(attached_through_filters(&lab));
}

/// A PPPoE reconnect through filters: the WAN interface is deleted, taking its qdisc and filters;
/// the agent notices, removes the LAN's filters, and attaches afresh once wan0 is back.
#[test]
fn classic_tc_interface_created_again_gets_fresh_filters() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(1024 * 1024, 23).expect("vsftpd");
    let download = || {
        lab.curl_from_client(&server, &file, Mode::Port)
            .unwrap_or_else(|err| panic!("{err:#}"))
    };
    let mut agent = netlink_agent(&lab, &[]).expect("ftpnat run");
    download();

    lab.lose_wan_under(&agent);
    assert!(
        filters(&lab, ROUTER_LAN_IF).is_empty(),
        "lan0 kept filters that lead to a WAN that is gone"
    );

    lab.wire_wan().expect("creating wan0 again");
    let attached = wait_until(Duration::from_secs(20), || attached_through_filters(&lab));
    assert!(attached.is_ok(), "no fresh filters:\n{}", agent.log_text());
    download();
    let (status, log) = agent.stop().expect("stop");
    assert!(status.success(), "{status}:\n{log}");
    lab.detach();
    assert!(no_filters(&lab));
}
