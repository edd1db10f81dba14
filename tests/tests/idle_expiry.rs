//! Issue 12, item 5: long transfers keep their control connection. With `--control-idle 3`, a
//! download that lasts several times that (its control connection silent until the `226`)
//! completes intact, while a session idle without a transfer is removed after about 3 s.

use std::time::Duration;

use ftpnat_tests::{Lab, LabSpec, MIB, lab::wait_until};

/// Logs in and stays, silent, until told to go.
const LOGIN_AND_WAIT: &str = r#"
import sys
from ftpnat_lab import login
ftp = login(sys.argv[1], timeout=10)
print('in', flush=True)
sys.stdin.readline()
"#;

#[test]
fn a_transfer_longer_than_the_control_idle_time_gets_its_226() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(16 * MIB, 5).expect("vsftpd");
    let _agent = lab
        .start_ftpnat(&["--control-idle", "3", "--data-idle", "30"])
        .expect("ftpnat run");
    let local = lab.subdir("client").expect("client dir").join("slow.bin");
    // About 16 s at 1 MB/s. The server sends its 226 once the socket buffers (a few MB) have
    // taken the rest of the file, seconds after the control connection fell silent; curl fails
    // without it.
    lab.curl_slowly(&server, &file, "1M", &local)
        .unwrap_or_else(|err| panic!("{err:#}"));
}

#[test]
fn an_idle_control_connection_without_a_transfer_expires_after_the_control_idle_time() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, _file) = lab.serve_file(MIB, 6).expect("vsftpd");
    let _agent = lab
        .start_ftpnat(&["--control-idle", "3"])
        .expect("ftpnat run");
    let server_ip = server.addr.to_string();
    let mut client = lab
        .python_stepped(&lab.client, LOGIN_AND_WAIT, &[&server_ip], 60)
        .expect("idle client");
    client.expect("in").expect("logged in");
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["sessions"], 1, "{stats}");
    let expired = wait_until(Duration::from_secs(20), || {
        let stats = lab.ftpnat_json(&["stats"]);
        stats["sessions"] == 0 && stats["flows"] == 0 && stats["window"]["in_use"] == 0
    });
    assert!(
        expired.is_ok(),
        "the idle session was not removed: {}",
        lab.ftpnat_json(&["sessions"])
    );
}
