//! Issue 4: FTP clients behind the router reach a server that has no route back to the LAN, with
//! ftpnat translating the control and data connections in eBPF and no netfilter rule at all: curl
//! in all four modes, lftp keeping five transfers in one session, Python's ftplib, every mode after
//! a long multi-line banner, and the server port, public address and LAN prefix the flags name.
//!
//! Every download here is checked twice: by sha256, and in the server's protocol log, which must
//! show the data connection opened in the mode the test claims (curl falls back from EPRT to PORT
//! and from EPSV to PASV and still gets its file; one test here proves the check sees that) and
//! never the client's private address.

use std::net::Ipv4Addr;

use ftpnat_tests::{
    Client, Lab, LabSpec, MIB, Mode, Transfer,
    files::assert_same_content,
    lab::{HOST_IF, ROUTER_WAN_IF},
    masquerade::{dialogue_since, download, setup, setup_with},
    servers::{VsftpdOptions, commas, data_commands_in_mode},
};

#[test]
fn curl_port_eprt_pasv_and_epsv_200mb_without_netfilter() {
    let setup = setup(LabSpec::default(), 200 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Port, Mode::Eprt, Mode::Pasv, Mode::Epsv] {
        download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
    }
    // The server's side saw only the public address: in the IP headers and in PORT/EPRT.
    let wan = setup.lab.capture_text(ROUTER_WAN_IF).expect("capture");
    assert!(
        !wan.contains("10.0.0.2"),
        "the client's address leaked to the WAN"
    );
    assert!(
        !wan.contains("10,0,0,2"),
        "a PORT with the client's address reached the server"
    );
    assert!(
        wan.contains("PORT 203,0,113,254,"),
        "no rewritten PORT on the WAN"
    );
    assert!(
        wan.contains("|1|203.0.113.254|"),
        "no rewritten EPRT on the WAN"
    );
    let stats = setup.lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["expectations_used"], 4, "{stats}");
    assert_eq!(stats["datapath"]["rewrites_skipped"], 0, "{stats}");
}

/// A greeting of 120 `220-` lines (several segments, each with more lines than the server stage
/// may stop at) ends in its `220 ` line as the session sees it: the lines inside a multi-line reply
/// take no pass, so the replies after it are read and every mode works.
#[test]
fn a_long_multi_line_banner_leaves_every_mode_working() {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (server, file) = lab
        .serve_file_with(
            MIB,
            31,
            &VsftpdOptions {
                banner_lines: 120,
                ..VsftpdOptions::default()
            },
        )
        .expect("vsftpd");
    let _agent = lab.start_ftpnat(&[]).expect("ftpnat run");
    for mode in [Mode::Pasv, Mode::Epsv, Mode::Port, Mode::Eprt] {
        lab.curl_from_client(&server, &file, mode)
            .unwrap_or_else(|err| panic!("{mode:?} after a long banner: {err:#}"));
    }
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["expectations_used"], 4, "{stats}");
    assert_eq!(stats["datapath"]["segments_partly_examined"], 0, "{stats}");
    assert_eq!(stats["datapath"]["refusals"], 0, "{stats}");
}

/// Five gets in one lftp session, active then passive: each run is one control session (a
/// reconnecting client would pass the checksums too) whose five data connections each used an
/// expectation, in the mode the server accepted five times.
#[test]
fn lftp_five_transfers_per_session_and_python_ftplib_200mb() {
    let setup = setup(LabSpec::default(), 200 * MIB);
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    let dir = setup.lab.subdir("client").expect("client dir");
    for (passive, mode) in [("off", Mode::Port), ("on", Mode::Pasv)] {
        let gets: String = (0..5)
            .map(|i| {
                format!(
                    "get {} -o {}/{mode:?}-{i}.bin; ",
                    setup.file.name(),
                    dir.display()
                )
            })
            .collect();
        let script = format!(
            "set net:max-retries 1; set net:timeout 20; set ftp:passive-mode {passive}; \
             set ftp:prefer-epsv no; open ftp://{}; {gets}bye",
            setup.server.addr
        );
        let sessions_before = setup.lab.datapath_counter("control_sessions_opened");
        let used_before = setup.lab.datapath_counter("expectations_used");
        let mark = setup.server.log_mark();
        let out = setup
            .lab
            .client
            .command("timeout", &["300", "lftp", "-c", &script])
            .output()
            .expect("lftp");
        assert!(
            out.status.success(),
            "lftp {mode:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..5 {
            assert_same_content(&dir.join(format!("{mode:?}-{i}.bin")), &setup.file);
        }
        assert_eq!(
            setup.lab.datapath_counter("control_sessions_opened") - sessions_before,
            1,
            "lftp {mode:?} did not keep to one control session"
        );
        assert_eq!(
            setup.lab.datapath_counter("expectations_used") - used_before,
            5,
            "lftp {mode:?}: data connections"
        );
        let dialogue = dialogue_since(&setup, mark);
        assert_eq!(
            data_commands_in_mode(&dialogue, mode).unwrap_or_else(|err| panic!("{err:#}")),
            5,
            "{}",
            dialogue.join("\n")
        );
    }
    for mode in [Mode::Port, Mode::Pasv] {
        download(
            &setup,
            Client::Ftplib,
            mode,
            &format!("ftplib-{mode:?}.bin"),
        );
    }
}

/// The server refuses EPRT and EPSV: curl falls back to PORT and PASV and still gets its file,
/// which is why every download here is also checked in the server's log. The check must see the
/// fallback.
#[test]
fn the_mode_check_sees_curl_fall_back_from_eprt_and_epsv() {
    let setup = setup_with(
        LabSpec::default(),
        MIB,
        &VsftpdOptions {
            denied_commands: vec!["EPRT", "EPSV"],
            ..VsftpdOptions::default()
        },
    );
    let _agent = setup.lab.start_ftpnat(&[]).expect("ftpnat run");
    for (asked, fallback) in [
        (Mode::Eprt, "< 200 PORT command successful"),
        (Mode::Epsv, "< 227 Entering Passive Mode"),
    ] {
        let local = setup.lab.dir().join(format!("{asked:?}.bin"));
        let mark = setup.server.log_mark();
        Transfer {
            client: Client::Curl,
            mode: asked,
            server: setup.server.addr.into(),
            port: setup.server.port,
            remote: setup.file.name(),
            local: &local,
            timeout_secs: 60,
        }
        .run(&setup.lab.client)
        .unwrap_or_else(|err| panic!("{err:#}"));
        assert_same_content(&local, &setup.file);
        let dialogue = dialogue_since(&setup, mark);
        let text = dialogue.join("\n");
        assert!(text.contains("< 550 Permission denied."), "{text}");
        assert!(
            dialogue.iter().any(|line| line.starts_with(fallback)),
            "curl did not fall back:\n{text}"
        );
        assert!(
            data_commands_in_mode(&dialogue, asked).is_err(),
            "the check took the fallback for {asked:?}:\n{text}"
        );
    }
}

/// `--ftp-port`, `--public-ip` and `--masquerade` are honoured: the server listens on 2121 only,
/// and the client is masqueraded (by its /32) behind a second address of the WAN, not the first
/// one ftpnat would default to.
#[test]
fn ftp_port_public_ip_and_masquerade_prefix_are_honoured() {
    let setup = setup_with(
        LabSpec::default(),
        4 * MIB,
        &VsftpdOptions {
            port: Some(2121),
            ..VsftpdOptions::default()
        },
    );
    let lab = &setup.lab;
    let public = Ipv4Addr::new(203, 0, 113, 253);
    lab.router
        .ip(&[
            "addr",
            "add",
            &format!("{public}/{}", lab.spec.wan_prefix_len),
            "dev",
            ROUTER_WAN_IF,
        ])
        .expect("second WAN address");
    let client = format!("{}/32", lab.spec.client);
    let _agent = lab
        .start_ftpnat(&[
            "--ftp-port",
            "2121",
            "--public-ip",
            &public.to_string(),
            "--masquerade",
            &client,
        ])
        .expect("ftpnat run");
    for mode in [Mode::Port, Mode::Pasv] {
        let mark = setup.server.log_mark();
        let dialogue = download(&setup, Client::Curl, mode, &format!("{mode:?}.bin"));
        let log = setup.server.log_since(mark).expect("server log");
        assert!(
            log.contains(&format!("Client \"{public}\"")),
            "the control connection did not come from {public}:\n{log}"
        );
        if mode == Mode::Port {
            let port = format!("> PORT {},", commas(public));
            assert!(
                dialogue.iter().any(|line| line.starts_with(&port)),
                "{}",
                dialogue.join("\n")
            );
        }
    }
    // A LAN address outside the --masquerade prefix is not translated: its connection, untouched,
    // cannot come back from a server with no route to the LAN.
    let outside = Ipv4Addr::new(10, 0, 0, 3);
    lab.client
        .ip(&[
            "addr",
            "add",
            &format!("{outside}/{}", lab.spec.lan_prefix_len),
            "dev",
            HOST_IF,
        ])
        .expect("second client address");
    let url = format!("ftp://{}:2121/{}", setup.server.addr, setup.file.name());
    let out = lab
        .client
        .command(
            "curl",
            &[
                "-sS",
                "--interface",
                &outside.to_string(),
                "--connect-timeout",
                "3",
                "--disable-epsv",
                "-o",
                "/dev/null",
                &url,
            ],
        )
        .output()
        .expect("curl");
    assert!(
        !out.status.success(),
        "a client outside --masquerade {client} got through"
    );
    let stats = lab.ftpnat_json(&["stats"]);
    assert_eq!(stats["datapath"]["control_sessions_opened"], 2, "{stats}");
    assert_eq!(stats["datapath"]["expectations_used"], 2, "{stats}");
}
