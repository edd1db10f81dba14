//! Issue 6: the agent as a service. Its datapath outlives it: a `kill -9` does not interrupt a
//! transfer, and the next agent adopts the running sessions.

use std::time::Duration;

use ftpnat_tests::{Lab, LabSpec, MIB};

/// A 200 MB download limited to 10 MB/s (about 20 s, leaving a loaded machine time to kill one
/// agent and start the next while it runs) through a NAT lab, where nothing but ftpnat
/// can carry it; the agent is killed with SIGKILL a moment in, and a new one started.
#[test]
fn kill_9_mid_transfer_interrupts_nothing_and_the_next_agent_adopts_the_session() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab.serve_file(200 * MIB, 9).expect("vsftpd");
    let mut agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let local = lab.subdir("client").expect("client dir").join("big.bin");
    std::thread::scope(|scope| {
        let transfer = scope.spawn(|| lab.curl_slowly(&server, &file, "10M", &local));
        lab.kill_agent_once_data_flows(&mut agent);

        // Nothing runs the agent now; the pinned datapath still carries the transfer.
        let size = || std::fs::metadata(&local).map_or(0, |m| m.len());
        let before = size();
        std::thread::sleep(Duration::from_secs(1));
        assert!(size() > before, "the transfer stalled with the agent gone");

        let mut again = lab.start_ftpnat(&[]).expect("ftpnat run after kill -9");
        assert!(
            again.log_text().contains("adopted the datapath"),
            "{}",
            again.log_text()
        );
        let sessions = lab.ftpnat_json(&["sessions"]);
        let session = sessions
            .as_array()
            .and_then(|s| s.first())
            .unwrap_or_else(|| panic!("no session after adoption: {sessions}"));
        assert_eq!(session["kind"], "masquerade", "{sessions}");
        assert!(session["data_flows"].as_u64().unwrap() >= 1, "{sessions}");
        assert!(
            session["bytes_to_client"].as_u64().unwrap() > 10 * MIB,
            "{sessions}"
        );

        transfer
            .join()
            .expect("transfer thread")
            .unwrap_or_else(|err| panic!("{err:#}"));
        let (status, log) = again.stop().expect("stop");
        assert!(status.success(), "{status}:\n{log}");
    });
}
