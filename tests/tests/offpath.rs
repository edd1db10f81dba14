//! Issue 12, item 4: off-path packets do not change state. A host on the WAN that cannot see a
//! control connection forges segments from the server's address and port to the session's public
//! port, with random sequence and acknowledgement numbers: a storm of resets and FINs, and pairs
//! of segments that would first move the ALG's line tracking and then hand it a `234` (which would
//! switch the ALG off for the session). The idle session must still work afterwards, through NAT,
//! in passive and active mode; the forged segments are counted as outside the window.

use ftpnat_tests::{LabSpec, MIB, masquerade::setup};

/// An anonymous ftplib session, idle until the test says go: then a passive and an active
/// download, whose sha256 it prints, and the session's end.
const IDLE_THEN_TRANSFER: &str = r#"
import sys
from ftpnat_lab import login, retr_digest
ftp = login(sys.argv[1], timeout=60)
ftp.voidcmd('TYPE I')
print('idle', flush=True)
sys.stdin.readline()
passive = retr_digest(ftp, sys.argv[2])
ftp.set_pasv(False)
active = retr_digest(ftp, sys.argv[2])
print('digests', passive, active, flush=True)
sys.stdin.readline()
ftp.quit()
"#;

/// Forges segments from `argv[1]:21` to `argv[2]:argv[3]` through a raw socket, with random
/// sequence and acknowledgement numbers: `argv[4]` resets, as many FIN-ACKs, and as many pairs of
/// a lone LF followed by a `234` at the next sequence number.
const FORGE: &str = r#"
import random, socket, sys
from ftpnat_lab import ACK, FIN, PSH, RST, forged_tcp
src, dst, dport, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = 0
for _ in range(count):
    seq, ack = random.getrandbits(32), random.getrandbits(32)
    for flags, at, payload in (
        (RST, seq, b''),
        (RST | ACK, seq, b''),
        (FIN | ACK, seq, b''),
        (PSH | ACK, seq, b'\n'),
        (PSH | ACK, (seq + 1) & 0xffffffff, b'234 AUTH TLS successful\r\n'),
    ):
        raw.sendto(forged_tcp(src, 21, dst, dport, at, ack if flags & ACK else 0, flags, payload),
                   (dst, 0))
        sent += 1
print('sent', sent, flush=True)
"#;

#[test]
fn a_blind_storm_of_forged_segments_leaves_an_idle_session_working() {
    let setup = setup(LabSpec::default(), 2 * MIB);
    let lab = &setup.lab;
    let _agent = lab
        .start_ftpnat(&["--port-window", "61000-61099"])
        .expect("ftpnat run");
    let server = setup.server.addr.to_string();
    let mut session = lab
        .python_stepped(
            &lab.client,
            IDLE_THEN_TRANSFER,
            &[&server, setup.file.name()],
            300,
        )
        .expect("idle session");
    session.expect("idle").expect("logged in");

    let sessions = lab.ftpnat_json(&["sessions"]);
    let public = sessions[0]["public"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {sessions}"))
        .to_owned();
    let (public_ip, public_port) = public.rsplit_once(':').expect("ip:port");

    let forged = lab
        .python(
            &lab.server,
            FORGE,
            &[&server, public_ip, public_port, "2000"],
            120,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert!(
        String::from_utf8_lossy(&forged.stdout).starts_with("sent 10000"),
        "{forged:?}"
    );
    // Longer than the sweep's grace for a reset connection: a reset taken would have ended it.
    std::thread::sleep(std::time::Duration::from_secs(4));

    let sessions = lab.ftpnat_json(&["sessions"]);
    assert_eq!(sessions[0]["public"], public.as_str(), "{sessions}");
    assert_eq!(sessions[0]["state"], "command", "{sessions}");
    assert!(
        lab.datapath_counter("segments_out_of_window") >= 8000,
        "the forged segments were not counted as outside the window: {}",
        lab.ftpnat_json(&["stats"])
    );

    session.proceed().expect("go");
    let digests = session.expect("digests").expect("both transfers");
    assert_eq!(
        digests,
        [setup.file.sha256.clone(), setup.file.sha256.clone()]
    );
    session.proceed().expect("quit");
    session.finish().unwrap_or_else(|err| panic!("{err:#}"));
}
