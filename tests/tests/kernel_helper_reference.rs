//! Proof that the lab itself is sound: with the kernel's own FTP helper (netfilter MASQUERADE plus
//! `CT --helper ftp`) a client behind the router completes active and passive transfers to a server
//! that has no route back to the LAN. If these fail, the lab is broken, not ftpnat.

use ftpnat_tests::{Lab, LabSpec, Mode, Routing};

const FILE_SIZE: u64 = 50 * 1024 * 1024;

#[test]
fn kernel_ftp_helper_masquerades_active_and_passive_50mb() {
    let lab = Lab::new(LabSpec {
        routing: Routing::Nat,
        ..LabSpec::default()
    })
    .expect("lab");
    lab.netfilter_masquerade(true).expect("netfilter rules");
    let (server, file) = lab.serve_file(FILE_SIZE, 1).expect("vsftpd serving a file");
    for mode in [Mode::Port, Mode::Pasv] {
        lab.curl_from_client(&server, &file, mode)
            .unwrap_or_else(|err| panic!("{err:#}"));
    }

    // The helper really was involved: the data connections were expected by it.
    let conntrack = lab.router.exec("conntrack", &["-L"]).expect("conntrack -L");
    let table = String::from_utf8_lossy(&conntrack.stdout);
    assert!(table.contains("helper=ftp"), "no helper=ftp in:\n{table}");
}
