//! Issue 12, item 5: long transfers keep their control connection. With `--control-idle 3`, a
//! download that lasts several times that (its control connection silent until the `226`)
//! completes intact, while a session idle without a transfer is removed after about 3 s.
//! Issue 13: the sweep reads a table of tens of thousands of entries whole.

use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use ftp_common::maps::{FlowEntry, FlowKey, FlowKind, flows, ip};
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

/// Connections written into the flow table, half idle, half live: more entries than one of the
/// sweep's batch reads returns (4096), within the default table (32768 entries).
const FILLED_CONNECTIONS: u32 = 12_000;

/// CLOCK_MONOTONIC, the clock of the datapath's `last_seen_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The sweep judges a connection by both its directions, which a table read in batches returns
/// in different calls: an idle original whose reply is live must stay. Every idle connection
/// goes, every live one stays.
#[test]
fn a_table_read_in_many_batches_loses_its_idle_connections_and_keeps_the_live_ones() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let _agent = lab
        .start_ftpnat(&["--control-idle", "1"])
        .expect("ftpnat run");
    let pin = lab.state_dir().expect("state dir").join(flows::NAME);
    let data = MapData::from_pin(&pin).expect("the pinned flow table");
    let mut table: HashMap<MapData, FlowKey, FlowEntry> =
        HashMap::try_from(Map::HashMap(data)).expect("a hash map");
    // Dated an hour ahead: stays fresh for the whole test.
    let live_until = monotonic_ns() + 3_600_000_000_000;
    for n in 0..FILLED_CONNECTIONS {
        // Addresses outside the lab (100.64/16 live, 100.65/16 idle): no packet refreshes them.
        let key = FlowKey {
            saddr: ip::v4_mapped([100, 64 + (n % 2) as u8, (n >> 8) as u8, n as u8]),
            daddr: ip::v4_mapped([198, 18, 0, 1]),
            sport: 40000u16.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        };
        // Established both ways; the original last seen at boot, longer ago than --control-idle.
        let reply_seen = if n % 2 == 0 { live_until } else { 0 };
        let entries = FlowEntry::established_untranslated(key, FlowKind::Control, (0, reply_seen));
        for (key, entry) in entries {
            table.insert(key, entry, 0).expect("a flow entry");
        }
    }
    let left = |table: &HashMap<MapData, FlowKey, FlowEntry>, second_octet: u8| {
        table
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                let filled = |addr: &ip::IpBytes| {
                    ip::is_v4(addr) && ip::v4_octets(addr)[..2] == [100, second_octet]
                };
                filled(&key.saddr) || filled(&key.daddr)
            })
            .count()
    };
    wait_until(Duration::from_secs(30), || left(&table, 65) == 0).unwrap_or_else(|_| {
        panic!(
            "{} of the {} idle entries are still in the flow table",
            left(&table, 65),
            FILLED_CONNECTIONS
        )
    });
    assert_eq!(
        left(&table, 64),
        FILLED_CONNECTIONS as usize,
        "every entry of a live connection stays"
    );
}
