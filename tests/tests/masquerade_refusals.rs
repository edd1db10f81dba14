//! Issue 4, what ftpnat refuses and how promptly it says so: PORTs naming another host, a
//! privileged port or an octet out of range pass untouched, open nothing and leave the session
//! working; an exhausted port window fails a PORT and a new session at once instead of with
//! silence; a port window inside the router's own ephemeral range is refused at start, and the
//! default one avoids it.

use ftpnat_tests::{
    Client, LabSpec, MIB, Mode,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
    masquerade::{download, setup, window_of},
};

/// A PORT naming another host (bounce), one naming the client's privileged port 80, and one that
/// does not parse; then a passive download in the same session.
const BOUNCE: &str = r#"
import ftplib, sys
from ftpnat_lab import login, retr_digest
ftp = login(sys.argv[1])
me = ftp.sock.getsockname()[0].replace('.', ',')
for line in ("PORT 10,0,0,99,195,80", f"PORT {me},0,80", f"PORT {me},256,80"):
    try:
        ftp.sendcmd(line)
    except ftplib.error_perm as refused:
        print("server refused:", refused, file=sys.stderr)
ftp.set_pasv(True)
print(retr_digest(ftp, sys.argv[2]))
ftp.quit()
"#;

#[test]
fn bounce_privileged_and_malformed_ports_open_nothing_and_the_session_goes_on() {
    let setup = setup(LabSpec::default(), 4 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(BOUNCE, &[&server, setup.file.name()], 60)
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        setup.file.sha256
    );
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["refusals"], 2, "{stats}");
    assert_eq!(stats["datapath"]["malformed_lines"], 1, "{stats}");
    // Each counted under its reason too.
    assert_eq!(stats["refusals_by_reason"]["bounce"], 1, "{stats}");
    assert_eq!(stats["refusals_by_reason"]["privileged_port"], 1, "{stats}");
    assert_eq!(
        stats["malformed_by_reason"]["octet_out_of_range"], 1,
        "{stats}"
    );
    // Only the passive transfer's expectation was ever created.
    assert_eq!(stats["datapath"]["expectations_created"], 1, "{stats}");
    assert_eq!(stats["datapath"]["expectations_used"], 1, "{stats}");
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    let ports: Vec<&str> = wan.lines().filter(|l| l.contains("PORT")).collect();
    for untouched in [
        "PORT 10,0,0,99,195,80",
        "PORT 10,0,0,2,0,80",
        "PORT 10,0,0,2,256,80",
    ] {
        assert!(
            ports.iter().any(|line| line.contains(untouched)),
            "{untouched} did not pass untouched: {ports:?}"
        );
    }
}

/// With the only window port taken by the control connection, a PORT is rewritten into one the
/// server refuses at once, and a second control connection is reset at once: both ask for a port
/// the window does not have, and both learn it promptly instead of waiting on silence.
const EXHAUST_ONE_PORT: &str = r#"
import ftplib, socket, sys
from ftpnat_lab import login
server = sys.argv[1]
ftp = login(server)
me = ftp.sock.getsockname()[0].replace('.', ',')
try:
    print('port', ftp.sendcmd(f"PORT {me},200,1"))
except ftplib.error_perm as err:
    print('port', err)
second = socket.socket()
second.settimeout(10)
try:
    second.connect((server, 21))
    print('second connected')
except ConnectionRefusedError:
    print('second refused')
except socket.timeout:
    print('second timeout')
ftp.quit()
"#;

#[test]
fn exhausted_window_fails_port_and_new_sessions_promptly() {
    let setup = setup(LabSpec::default(), MIB);
    let _agent = setup
        .lab
        .start_ftpnat(&["--port-window", "61000-61000"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let out = setup
        .lab
        .client_python(EXHAUST_ONE_PORT, &[&server], 30)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("port 500"),
        "the server accepted a PORT ftpnat could not serve: {text}"
    );
    assert!(text.contains("second refused"), "{text}");
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        wan.contains("PORT 0,0,0,0,0,0"),
        "no refused PORT on the WAN"
    );
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["window_exhausted"], 2, "{stats}");
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// Without `--port-window`, ftpnat picks a window outside the router's own ephemeral range (the
/// router namespace's, set here to one that the window ftpnat would pick for the kernel's default
/// range overlaps); a window inside it, which the default range would allow, is refused naming
/// the flag, with nothing attached and nothing pinned.
#[test]
fn default_window_avoids_the_routers_ephemeral_range_and_an_overlapping_one_is_refused() {
    let setup = setup(LabSpec::default(), 4 * MIB);
    let lab = &setup.lab;
    lab.router
        .sysctl("net.ipv4.ip_local_port_range", "50000 62000")
        .expect("sysctl");
    let ephemeral = 50000..=62000u16;

    let pin_dir = lab.pin_dir().expect("pin dir");
    let (status, stderr) = lab.run_ftpnat_to_end(&pin_dir, &["--port-window", "61000-61099"]);
    assert!(!status.success(), "an overlapping window was taken");
    assert!(stderr.contains("--port-window 61000-61099"), "{stderr}");
    assert!(
        stderr.contains("ip_local_port_range (50000-62000)"),
        "{stderr}"
    );
    for iface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
        assert!(lab.router_tc_programs(iface).unwrap().is_empty(), "{iface}");
    }
    assert!(!pin_dir.exists(), "pins left behind");

    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let window = window_of(&lab.ftpnat_json(&["stats"]));
    assert!(
        window.end() < ephemeral.start() || window.start() > ephemeral.end(),
        "default window {window:?} overlaps the ephemeral range {ephemeral:?}"
    );
    // The port the server is told comes from that window.
    let dialogue = download(&setup, Client::Curl, Mode::Port, "port.bin");
    let port = dialogue
        .iter()
        .find_map(|line| line.strip_prefix("> PORT "))
        .and_then(|args| {
            let fields: Vec<u16> = args.split(',').filter_map(|f| f.parse().ok()).collect();
            Some(fields.get(4)? * 256 + fields.get(5)?)
        })
        .unwrap_or_else(|| panic!("no PORT in:\n{}", dialogue.join("\n")));
    assert!(
        window.contains(&port),
        "PORT names {port}, outside {window:?}"
    );
}
