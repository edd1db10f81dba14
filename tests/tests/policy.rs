//! The operator's policy flags: `--allow-privileged-data-ports` and
//! `--max-expectations-per-session`, against their defaults.

use std::time::Duration;

use ftpnat_tests::{Lab, LabSpec, lab::wait_until};
use serde_json::Value;

/// Active download to the client's port `argv[3]`. Prints the reply to the PORT; then the
/// file's sha256 if the server accepted it, else the refusal; then a passive download's sha256:
/// the session goes on either way.
const PORT_TO_GIVEN_PORT: &str = r#"
import ftplib, socket, sys
from ftpnat_lab import login, retr_active, retr_digest
server, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ftp = login(server)
ftp.voidcmd('TYPE I')
host = ftp.sock.getsockname()[0]
listener = socket.create_server((host, port))
try:
    print(ftp.sendcmd('PORT %s,%d,%d' % (host.replace('.', ','), port >> 8, port & 255)))
    print(retr_active(ftp, listener, name, timeout=10))
except (ftplib.error_perm, ftplib.error_temp, socket.timeout) as failed:
    print('failed:', failed)
ftp.set_pasv(True)
print(retr_digest(ftp, name))
ftp.quit()
"#;

/// Two PASV in a row, each reply printed as `passive REPLY`; then, once the test lets it go on
/// (after the expectations expired), a passive download.
const TWO_PASV_THEN_RETR: &str = r#"
import sys
from ftpnat_lab import login, retr_digest
ftp = login(sys.argv[1])
for _ in range(2):
    print('passive', ftp.sendcmd('PASV'), flush=True)
sys.stdin.readline()
print(retr_digest(ftp, sys.argv[2]))
ftp.quit()
"#;

fn output_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_privileged_data_port_is_refused_unless_the_operator_allows_it() {
    for allowed in [false, true] {
        let lab = Lab::new(LabSpec::default()).expect("lab");
        let (server, file) = lab.serve_file(1024 * 1024, 1).expect("vsftpd");
        let flags: &[&str] = if allowed {
            &["--allow-privileged-data-ports"]
        } else {
            &[]
        };
        let _agent = lab.start_ftpnat(flags).expect("ftpnat run");
        let out = lab
            .client_python(
                PORT_TO_GIVEN_PORT,
                &[&server.addr.to_string(), file.name(), "1000"],
                60,
            )
            .unwrap_or_else(|err| panic!("{err:#}"));
        let lines = output_lines(&out);
        let stats = lab.ftpnat_json(&["stats"]);
        assert_eq!(
            lines.last(),
            Some(&file.sha256),
            "the session did not go on: {lines:?}"
        );
        if allowed {
            // The server sees a window port, and the data connection reaches the client's 1000.
            let sums = lines.iter().filter(|l| **l == file.sha256).count();
            assert_eq!(sums, 2, "the active download failed: {lines:?}");
            assert_eq!(stats["refusals_by_reason"]["privileged_port"], 0, "{stats}");
        } else {
            // Passed untouched: vsftpd itself refuses the client's private address.
            assert!(
                lines.first().is_some_and(|l| l.contains("500")),
                "{lines:?}"
            );
            assert_eq!(stats["refusals_by_reason"]["privileged_port"], 1, "{stats}");
        }
    }
}

#[test]
fn the_per_session_expectation_limit_follows_the_flag() {
    for (limit, refused) in [(None, 0), (Some("1"), 1)] {
        let lab = Lab::new(LabSpec::default()).expect("lab");
        let (server, file) = lab.serve_file(1024 * 1024, 1).expect("vsftpd");
        let mut flags = vec!["--expect-timeout", "2"];
        if let Some(limit) = limit {
            flags.extend(["--max-expectations-per-session", limit]);
        }
        let agent = lab.start_ftpnat(&flags).expect("ftpnat run");
        let mut client = lab
            .python_stepped(
                &lab.client,
                TWO_PASV_THEN_RETR,
                &[&server.addr.to_string(), file.name()],
                120,
            )
            .expect("client");
        let replies: Vec<String> = (0..2)
            .map(|_| client.expect("passive").expect("PASV answered").join(" "))
            .collect();
        // Under the limit of 1 the RETR's PASV has a place only once the agent has swept the
        // first expectation: a fixed pause would be too short on a loaded machine, and the
        // refusal counter would read 2. The agent logs an expiry after its sweep has also given
        // the place back, which it does a moment after the expectation leaves the table.
        let created = lab.ftpnat_json(&["stats"])["datapath"]["expectations_created"]
            .as_u64()
            .expect("expectations_created");
        wait_until(Duration::from_secs(40), || {
            lab.ftpnat_json(&["expectations"]) == Value::Array(Vec::new())
                && agent.log_text().matches("expectation_expired").count() as u64 == created
        })
        .unwrap_or_else(|_| panic!("the expectations did not expire:\n{}", agent.log_text()));
        client.proceed().expect("RETR");
        let rest = client.finish().unwrap_or_else(|err| panic!("{err:#}"));
        assert_eq!(
            rest.lines().last(),
            Some(file.sha256.as_str()),
            "{replies:?} {rest}"
        );
        let stats = lab.ftpnat_json(&["stats"]);
        assert_eq!(
            stats["refusals_by_reason"]["too_many_expectations"], refused,
            "limit {limit:?}: {stats}"
        );
    }
}
