//! The lab's own promises: it cleans up when a test panics, labs running at once do not
//! collide, and a dual-stack lab carries IPv6 as soon as it is built.

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::PathBuf,
    sync::Barrier,
    thread,
    time::Duration,
};

use ftpnat_tests::{
    Client, Lab, LabSpec, MIB, Mode, Routing,
    lab::wait_until,
    masquerade::{Setup, download_intact_from, setup},
    netns::{remove_stale, run, unique_prefix},
    servers::{data_commands_in_mode, vsftpd_dialogue},
};

fn namespaces_named(prefix: &str) -> Vec<String> {
    let out = run("ip", &["netns", "list"]).expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

fn is_mounted(path: &std::path::Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some(&*path))
}

#[test]
fn a_lab_dropped_while_panicking_removes_its_namespaces_and_its_bpffs() {
    // (name, directory, bpffs mount point) of the lab, once it is up.
    let mut built: Option<(String, PathBuf, PathBuf)> = None;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new(LabSpec::default()).expect("lab");
        let pin_dir = lab.pin_dir().expect("the lab's bpffs");
        let bpffs = pin_dir.parent().expect("the bpffs mount").to_owned();
        assert_eq!(namespaces_named(&format!("{}-", lab.name)).len(), 3);
        assert!(is_mounted(&bpffs));
        built = Some((lab.name.clone(), lab.dir().to_owned(), bpffs));
        panic!("deliberate: the lab must clean up while this unwinds");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    let (name, dir, bpffs) = built.expect("the lab was built before the panic");

    assert_eq!(namespaces_named(&format!("{name}-")), Vec::<String>::new());
    assert!(!is_mounted(&bpffs), "{} is still mounted", bpffs.display());
    // A failing test's captures are kept for the post-mortem; this one failed on purpose.
    assert!(
        dir.join("router-lan0.pcap").exists(),
        "the captures of a failed test were not kept"
    );
    fs::remove_dir_all(&dir).expect("removing the kept lab directory");
}

/// Builds a lab with ftpnat on its router and downloads a file through it in passive and active
/// mode, side by side with the other thread doing the same; returns the lab's name.
fn lab_with_transfers(both: &Barrier, seed: u64) -> anyhow::Result<String> {
    let lab = Lab::new(LabSpec::default());
    // Both labs exist before either transfers, and until both are done: they run side by side.
    both.wait();
    let outcome = lab.and_then(|lab| {
        let (server, file) = lab.serve_file(4 * MIB, seed)?;
        let _agent = lab.start_ftpnat(&[])?;
        for mode in [Mode::Pasv, Mode::Port] {
            lab.curl_from_client(&server, &file, mode)?;
        }
        Ok(lab.name.clone())
    });
    both.wait();
    outcome
}

#[test]
fn two_labs_at_once_each_carry_their_own_transfers() {
    let both = Barrier::new(2);
    let names: Vec<String> = thread::scope(|scope| {
        let both = &both;
        let labs = [11, 12].map(|seed| scope.spawn(move || lab_with_transfers(both, seed)));
        labs.into_iter()
            .map(|lab| {
                lab.join()
                    .expect("lab thread")
                    .unwrap_or_else(|err| panic!("{err:#}"))
            })
            .collect()
    });
    assert_ne!(names[0], names[1]);
    for name in &names {
        assert_eq!(namespaces_named(&format!("{name}-")), Vec::<String>::new());
    }
}

/// What `Lab::new` relies on when a killed run's namespaces carry the prefix it is about to use:
/// those go, with any process in them; namespaces of another prefix stay, even one that merely
/// starts with the same characters.
#[test]
fn stale_namespaces_of_a_prefix_are_removed_and_no_others() {
    let prefix = unique_prefix();
    let stale = [format!("{prefix}-client"), format!("{prefix}-router")];
    let other = format!("{prefix}0-router");
    for name in stale.iter().chain([&other]) {
        run("ip", &["netns", "add", name]).expect("ip netns add");
    }
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &stale[1], "sleep", "600"])
        .spawn()
        .expect("a process in a stale namespace");
    // `ip netns exec` enters the namespace after it starts: until it has, there is nothing in the
    // namespace to kill (on a loaded machine this once let the sleeper escape the check).
    let pid = sleeper.id().to_string();
    wait_until(Duration::from_secs(10), || {
        let out = run("ip", &["netns", "pids", &stale[1]]).expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.trim() == pid)
    })
    .expect("the sleeper entered its namespace");

    let mut removed = remove_stale(&prefix).expect("remove_stale");
    removed.sort();
    let still_there = namespaces_named(&prefix);
    let sleeper_killed = wait_until(Duration::from_secs(10), || {
        sleeper.try_wait().ok().flatten().is_some()
    });
    if sleeper_killed.is_err() {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    run("ip", &["netns", "del", &other]).expect("removing the other namespace");

    assert_eq!(removed, stale);
    assert_eq!(still_there, [other]);
    assert!(sleeper_killed.is_ok(), "the process inside was not killed");
}

/// An active session over IPv6 with the lab's Python helpers: a listener on the client's IPv6
/// address and an EPRT naming it by hand, then the download over the server's connection to it.
const EPRT_BY_HAND: &str = r#"
import sys
from ftpnat_lab import session_with_listener, retr_active
ftp, listener, host, port = session_with_listener(sys.argv[1])
ftp.voidcmd(f'EPRT |2|{host}|{port}|')
print('sha256', retr_active(ftp, listener, sys.argv[2], timeout=30))
ftp.quit()
"#;

/// Downloads the served file from `server` with `client` in `mode`, checked by sha256 and, in the
/// server's log, for the mode (without the masquerade's check for the client's address: the lab
/// routes it). Returns the session's dialogue.
fn routed_download(
    setup: &Setup,
    server: std::net::IpAddr,
    client: Client,
    mode: Mode,
    name: &str,
) -> Vec<String> {
    let mark = setup.server.log_mark();
    download_intact_from(setup, server, client, mode, name);
    let dialogue = vsftpd_dialogue(&setup.server.log_since(mark).expect("server log"));
    data_commands_in_mode(&dialogue, mode).unwrap_or_else(|err| panic!("{err:#}"));
    dialogue
}

/// A dual-stack lab without ftpnat or a firewall, IPv4 routed too: IPv6 works the moment the lab
/// is built (no address waits on duplicate address detection), and vsftpd's one dual-stack socket
/// serves every client and mode over both families — so that an IPv6 test failing behind
/// ftpnat or the firewall fails there, not in the lab.
#[test]
fn a_dual_stack_lab_carries_every_client_and_mode_over_both_families() {
    let setup = setup(
        LabSpec {
            routing: Routing::Routed,
            ..LabSpec::dual_stack()
        },
        MIB,
    );
    let lab = &setup.lab;
    let v6 = lab.ipv6().clone();
    for ns in [&lab.client, &lab.router, &lab.server] {
        let out = ns
            .ip(&["-6", "addr", "show", "tentative"])
            .expect("ip addr");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(setup.server.addr6, Some(v6.server));
    let v4 = setup.server.addr.into();
    for mode in [Mode::Pasv, Mode::Epsv, Mode::Port, Mode::Eprt] {
        routed_download(&setup, v4, Client::Curl, mode, &format!("v4-{mode:?}.bin"));
    }
    for client in [Client::Curl, Client::Lftp, Client::Ftplib] {
        for mode in [Mode::Epsv, Mode::Eprt] {
            let name = format!("v6-{client:?}-{mode:?}.bin");
            let dialogue = routed_download(&setup, v6.server.into(), client, mode, &name);
            if mode == Mode::Eprt {
                let eprt = format!("> EPRT |2|{}|", v6.client);
                assert!(
                    dialogue.iter().any(|line| line.starts_with(&eprt)),
                    "{}",
                    dialogue.join("\n")
                );
            }
        }
    }
    let out = lab
        .client_python(
            EPRT_BY_HAND,
            &[&v6.server.to_string(), setup.file.name()],
            60,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    // retr_active prints the server's 150 first.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some(format!("sha256 {}", setup.file.sha256).as_str()),
        "{stdout}"
    );
}
