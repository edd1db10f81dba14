//! Issue 4 beside netfilter: a netfilter masquerade alone carries passive FTP but not active (the
//! server refuses a PORT naming the private address), so ftpnat and nothing else in the lab makes
//! active FTP work through the NAT; and ftpnat runs beside a netfilter masquerade that carries the
//! router's other traffic, with the kernel's FTP helper never involved.

use std::time::Duration;

use ftpnat_tests::{
    Client, Lab, LabSpec, MIB, Mode, Transfer,
    lab::wait_until,
    masquerade::{download, setup},
    servers::{commas, vsftpd_dialogue},
};

/// netfilter's connection table on the router has an entry with `entry` (traffic it tracked),
/// and none with the kernel's FTP helper.
fn assert_tracked_without_ftp_helper(lab: &Lab, entry: &str) {
    let table = lab.router.exec("conntrack", &["-L"]).expect("conntrack");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(entry),
        "netfilter tracked nothing with {entry}:\n{table}"
    );
    assert!(
        !table.contains("helper=ftp"),
        "the kernel's FTP helper was involved:\n{table}"
    );
}

/// The router masquerades the LAN with netfilter alone (no FTP helper): a passive transfer works,
/// so the lab routes and translates; the same active transfer fails, because the PORT names the
/// client's private address, which the server refuses. Once ftpnat runs it works: ftpnat, and
/// nothing else in the lab, makes active FTP work through the NAT.
#[test]
fn without_ftpnat_the_same_active_transfer_fails() {
    let setup = setup(LabSpec::default(), 4 * MIB);
    setup.lab.netfilter_masquerade(false).expect("iptables");
    download(&setup, Client::Curl, Mode::Pasv, "pasv-without.bin");

    let mark = setup.server.log_mark();
    let local = setup.lab.dir().join("never.bin");
    let result = Transfer {
        client: Client::Curl,
        mode: Mode::Port,
        server: setup.server.addr.into(),
        port: setup.server.port,
        remote: setup.file.name(),
        local: &local,
        timeout_secs: 20,
    }
    .run(&setup.lab.client);
    assert!(
        result.is_err(),
        "an active transfer through a plain masquerade worked"
    );
    let log = setup.server.log_since(mark).expect("server log");
    let dialogue = vsftpd_dialogue(&log);
    let port = dialogue
        .iter()
        .position(|line| line.starts_with(&format!("> PORT {},", commas(setup.lab.spec.client))))
        .unwrap_or_else(|| panic!("no PORT with the private address reached the server:\n{log}"));
    assert!(
        dialogue
            .get(port + 1)
            .is_some_and(|reply| reply.starts_with("< 500 Illegal PORT command")),
        "the server did not refuse the private PORT:\n{log}"
    );
    assert!(
        !dialogue.iter().any(|line| line.starts_with("< 150")),
        "a data connection opened:\n{log}"
    );

    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    download(&setup, Client::Curl, Mode::Port, "port-with.bin");
    assert_eq!(setup.lab.datapath_counter("expectations_used"), 1);

    // netfilter tracked the masqueraded control connections, and never with its FTP helper.
    assert_tracked_without_ftp_helper(&setup.lab, "dport=21 ");
}

#[test]
fn coexists_with_a_netfilter_masquerade_for_other_traffic() {
    let setup = setup(LabSpec::default(), 20 * MIB);
    setup.lab.netfilter_masquerade(false).expect("iptables");
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Port, Mode::Pasv] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    // Plain traffic still goes through netfilter's masquerade.
    let server = setup.server.addr.to_string();
    setup
        .lab
        .client
        .exec("ping", &["-c", "2", "-W", "2", &server])
        .expect("ping through the masquerade");
    let listener = setup
        .lab
        .server
        .command(
            "socat",
            &["-u", "TCP-LISTEN:8080,reuseaddr", "OPEN:/dev/null"],
        )
        .spawn()
        .expect("socat listener");
    let mut listener = ChildGuard(listener);
    wait_until(Duration::from_secs(5), || {
        setup
            .lab
            .server
            .exec("ss", &["-Hltn", "sport = :8080"])
            .is_ok_and(|o| !o.stdout.is_empty())
    })
    .expect("listener up");
    setup
        .lab
        .client
        .exec(
            "sh",
            &[
                "-c",
                &format!("echo hello | socat -u STDIN TCP:{server}:8080"),
            ],
        )
        .expect("a TCP exchange through the masquerade");
    let _ = listener.0.kill();
    // netfilter tracked the plain traffic, never with the FTP helper.
    assert_tracked_without_ftp_helper(&setup.lab, "dport=8080");
}

/// Kills the child on drop, so a failing assertion does not leave it running.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
