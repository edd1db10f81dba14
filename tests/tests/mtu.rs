//! Issue 12, item 8: a WAN link narrower than the LAN (PPPoE 1492, WireGuard 1420).
//! `bpf_redirect_neigh` skips the stack's MTU check; ftpnat clamps the MSS of the SYN and SYN-ACK
//! of every connection it translates (control and data) to what both interfaces carry.
//!
//! The router's side of the WAN veth gets the small MTU; the server's side keeps 1500, as a
//! server on the Internet behind the narrow link does, so each end announces an MSS of 1460.
//! Without clamping, the server's full-size segments are lost at the router (a veth drops a frame
//! bigger than its receiver's MTU) and the client's leave the WAN bigger than its MTU. Segmentation
//! offloads are off on every interface of the path: a GSO packet crosses a veth whole, whatever
//! its length, and would hide the narrow link altogether.

use std::{net::Ipv4Addr, path::Path, process::Command, time::Duration};

use ftpnat_tests::{
    Client, FtpServer, Lab, LabSpec, MIB, Mode, TestFile, Transfer,
    files::assert_same_content,
    lab::{HOST_IF, ROUTER_LAN_IF, ROUTER_WAN_IF, wait_until},
    netns::{NetNs, run},
    servers::VsftpdOptions,
};

const SIZE: u64 = 24 * MIB;
const PPPOE_MTU: u32 = 1492;
const WIREGUARD_MTU: u32 = 1420;
/// What the IPv4 and TCP headers (without options) take of an MTU.
const HEADERS: u32 = 40;

/// A lab whose router has a WAN interface of `mtu` bytes, every offload of the path off.
fn narrow_wan_lab(mtu: u32) -> Lab {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    lab.router
        .ip(&["link", "set", ROUTER_WAN_IF, "mtu", &mtu.to_string()])
        .expect("setting the WAN MTU");
    for (ns, iface) in [
        (&lab.client, HOST_IF),
        (&lab.router, ROUTER_LAN_IF),
        (&lab.router, ROUTER_WAN_IF),
        (&lab.server, HOST_IF),
    ] {
        ns.exec(
            "ethtool",
            &["-K", iface, "tso", "off", "gso", "off", "gro", "off"],
        )
        .expect("turning segmentation offloads off");
    }
    lab
}

/// vsftpd in `ns` on `addr`, serving a file and taking uploads into `incoming/`.
fn vsftpd_taking_uploads(lab: &Lab, ns: &NetNs, addr: Ipv4Addr) -> (FtpServer, TestFile) {
    let root = lab.subdir("srv").expect("server root");
    let file = TestFile::create(&root.join("data.bin"), SIZE, 12).expect("test file");
    let incoming = root.join("incoming");
    std::fs::create_dir_all(&incoming).expect("upload directory");
    // vsftpd's anonymous user writes there; its root stays the router's (vsftpd refuses a
    // writable chroot).
    run("chown", &["ftp:ftp", &incoming.to_string_lossy()]).expect("chown ftp");
    let server =
        FtpServer::vsftpd(ns, addr, &root, lab.dir(), &VsftpdOptions::default()).expect("vsftpd");
    (server, file)
}

/// curl uploading `local` as `incoming/name` to `server` in `mode` from `ns`, with curl's `options`.
fn upload_command(
    ns: &NetNs,
    server: Ipv4Addr,
    mode: Mode,
    local: &Path,
    name: &str,
    options: &[&str],
) -> Command {
    let url = format!("ftp://{server}/incoming/{name}");
    let local = local.to_string_lossy();
    let mut args = vec!["-sS", "--fail", "--max-time", "60", "-T", &local];
    match mode {
        Mode::Pasv => args.push("--disable-epsv"),
        Mode::Port => args.extend(["-P", "-", "--disable-eprt"]),
        Mode::Epsv | Mode::Eprt => unreachable!("the tests use PASV and PORT"),
    }
    args.extend_from_slice(options);
    args.push(&url);
    ns.command("curl", &args)
}

/// Runs an upload to its end; it must succeed.
fn finish_upload(mut curl: Command, mode: Mode, name: &str) {
    let out = curl.output().expect("curl");
    assert!(
        out.status.success(),
        "{mode:?} upload of {name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Downloads and uploads `file` in passive and active mode, from `client` to `server` (the address
/// the client dials), each checked by sha256.
fn transfer_both_ways(lab: &Lab, client: &NetNs, server: Ipv4Addr, file: &TestFile) {
    let incoming = file.path.with_file_name("incoming");
    for mode in [Mode::Pasv, Mode::Port] {
        let local = lab
            .subdir("downloads")
            .expect("downloads")
            .join(format!("{mode:?}"));
        Transfer {
            client: Client::Curl,
            mode,
            server: server.into(),
            port: 21,
            remote: file.name(),
            local: &local,
            timeout_secs: 60,
        }
        .run(client)
        .unwrap_or_else(|err| panic!("{err:#}"));
        assert_same_content(&local, file);
        let name = format!("{mode:?}.bin");
        let curl = upload_command(client, server, mode, &file.path, &name, &[]);
        finish_upload(curl, mode, &name);
        assert_same_content(&incoming.join(&name), file);
    }
}

/// What crossed the WAN fitted its MTU: no longer frame; and every SYN or SYN-ACK ftpnat sent on,
/// out of the WAN (from the public address) or into the LAN (to the LAN host), announced an MSS
/// within it (those arriving show what the ends announced: 1460). The datapath clamped them and
/// never met a packet too big.
fn assert_wan_fitted(lab: &Lab, mtu: u32) {
    // tcpdump's `greater` counts the Ethernet header.
    let too_long = lab
        .capture_dump(ROUTER_WAN_IF, &[], &format!("greater {}", mtu + 14 + 1))
        .expect("WAN capture");
    assert!(
        too_long.is_empty(),
        "frames longer than the MTU left by the WAN:\n{too_long}"
    );
    let sent_on = [
        (ROUTER_WAN_IF, format!("src host {}", lab.spec.router_wan)),
        (ROUTER_LAN_IF, format!("dst host {}", lab.spec.client)),
    ];
    for (iface, direction) in sent_on {
        let filter = format!("tcp[tcpflags] & tcp-syn != 0 and {direction}");
        let syns = lab.capture_dump(iface, &[], &filter).expect("capture");
        let announced: Vec<u32> = syns
            .split("mss ")
            .skip(1)
            .map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no MSS in {rest}"))
            })
            .collect();
        assert!(
            announced.len() >= 4,
            "fewer SYNs with an MSS on {iface} than connections:\n{syns}"
        );
        assert!(
            announced.iter().all(|&mss| mss <= mtu - HEADERS),
            "an MSS above {} left by {iface}:\n{syns}",
            mtu - HEADERS
        );
    }
    assert!(lab.datapath_counter("mss_clamped") >= 8);
    assert_eq!(lab.datapath_counter("too_big_passed"), 0);
    assert_eq!(lab.datapath_counter("too_big_dropped"), 0);
}

/// The LAN client downloads and uploads through the masquerade.
fn masquerade_through(mtu: u32) {
    let lab = narrow_wan_lab(mtu);
    let (_server, file) = vsftpd_taking_uploads(&lab, &lab.server, lab.spec.server);
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    transfer_both_ways(&lab, &lab.client, lab.spec.server, &file);
    assert_wan_fitted(&lab, mtu);
}

/// An outside client downloads from and uploads to the LAN's server, published on port 21.
fn publish_through(mtu: u32) {
    let lab = narrow_wan_lab(mtu);
    let (_server, file) = vsftpd_taking_uploads(&lab, &lab.client, lab.spec.client);
    let publish = format!("21={}", lab.spec.client);
    let _agent = lab
        .start_ftpnat(&["--port-window", "62000-62099", "--publish", &publish])
        .expect("ftpnat run");
    transfer_both_ways(&lab, &lab.server, lab.spec.router_wan, &file);
    assert_wan_fitted(&lab, mtu);
}

#[test]
fn masquerade_through_a_pppoe_mtu() {
    masquerade_through(PPPOE_MTU);
}

#[test]
fn masquerade_through_a_wireguard_mtu() {
    masquerade_through(WIREGUARD_MTU);
}

#[test]
fn publish_through_a_pppoe_mtu() {
    publish_through(PPPOE_MTU);
}

#[test]
fn publish_through_a_wireguard_mtu() {
    publish_through(WIREGUARD_MTU);
}

/// The WAN link's MTU drops from 1500 to 1400 in the middle of an upload (a connection set up
/// before, its MSS 1460, no longer fits; without ftpnat's check its segments would be lost): ftpnat hands the client's too-big segments to the stack
/// untranslated, the stack answers the client with ICMP fragmentation-needed, the client's path
/// MTU discovery lowers its segments, and the upload completes.
#[test]
fn an_mtu_lowered_mid_transfer_is_learnt_by_path_mtu_discovery() {
    let lab = narrow_wan_lab(1500);
    let (_server, file) = vsftpd_taking_uploads(&lab, &lab.server, lab.spec.server);
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    let name = "lowered.bin";
    let curl = upload_command(
        &lab.client,
        lab.spec.server,
        Mode::Pasv,
        &file.path,
        name,
        &["--limit-rate", "4M"],
    );
    std::thread::scope(|scope| {
        let upload = scope.spawn(|| finish_upload(curl, Mode::Pasv, name));
        let flowing = wait_until(Duration::from_secs(20), || {
            lab.ftpnat_json(&["flows"])
                .as_array()
                .is_some_and(|flows| flows.iter().any(|f| f["kind"] == "data"))
        });
        assert!(flowing.is_ok(), "the data connection never opened");
        // Both ends of the link: a frame longer than the server's MTU is lost on the way.
        lab.router
            .ip(&["link", "set", ROUTER_WAN_IF, "mtu", "1400"])
            .expect("lowering the WAN MTU");
        lab.server
            .ip(&["link", "set", HOST_IF, "mtu", "1400"])
            .expect("lowering the server's MTU");
        upload.join().expect("the upload");
    });
    assert_same_content(&file.path.with_file_name("incoming").join(name), &file);
    assert!(lab.datapath_counter("too_big_passed") >= 1);
    assert_eq!(lab.datapath_counter("too_big_dropped"), 0);
}
