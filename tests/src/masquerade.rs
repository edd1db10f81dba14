//! The masquerade lab of issue 4: a client on the LAN downloads through the router from vsftpd
//! outside, which has no route back to the LAN. What the `masquerade_*` tests share: the lab with
//! its served file, and downloads checked twice: by sha256, and in the server's protocol log, which
//! must show the data connection opened in the mode the test claims (curl falls back from EPRT to
//! PORT and from EPSV to PASV and still gets its file) and never the client's private address.

use std::{net::IpAddr, ops::RangeInclusive};

use serde_json::Value;

use crate::{
    Client, FtpServer, Lab, LabSpec, Mode, TestFile, Transfer,
    files::assert_same_content,
    servers::{VsftpdOptions, commas, data_commands_in_mode, vsftpd_dialogue},
};

/// A lab whose server serves one file with vsftpd.
pub struct Setup {
    pub lab: Lab,
    pub server: FtpServer,
    pub file: TestFile,
}

/// A lab of `spec` whose server serves a file of `file_size` bytes with vsftpd's defaults.
pub fn setup(spec: LabSpec, file_size: u64) -> Setup {
    setup_with(spec, file_size, &VsftpdOptions::default())
}

/// [`setup`], with vsftpd configured by `options`.
pub fn setup_with(spec: LabSpec, file_size: u64, options: &VsftpdOptions) -> Setup {
    let lab = Lab::new(spec).expect("lab");
    let (server, file) = lab
        .serve_file_with(file_size, 4, options)
        .expect("vsftpd serving a file");
    Setup { lab, server, file }
}

/// The server's protocol dialogue since `mark` (see [`FtpServer::log_mark`]), after checking that
/// the client's private address appears nowhere in it: neither as the peer of the control
/// connection nor inside a command.
pub fn dialogue_since(setup: &Setup, mark: u64) -> Vec<String> {
    let log = setup.server.log_since(mark).expect("server log");
    let client = setup.lab.spec.client;
    for private in [client.to_string(), commas(client)] {
        assert!(
            !log.contains(&private),
            "the server saw the client's private address {private}:\n{log}"
        );
    }
    vsftpd_dialogue(&log)
}

/// Downloads the served file with `client` in `mode`, checks it by sha256 and checks in the
/// server's log that the data connection was opened in `mode`, as the server accepted it. Returns
/// the session's dialogue.
pub fn download(setup: &Setup, client: Client, mode: Mode, name: &str) -> Vec<String> {
    download_from(setup, setup.server.addr.into(), client, mode, name)
}

/// [`download`] from the server's address `server`: its IPv6 one in a dual-stack lab.
pub fn download_from(
    setup: &Setup,
    server: IpAddr,
    client: Client,
    mode: Mode,
    name: &str,
) -> Vec<String> {
    let mark = setup.server.log_mark();
    download_intact_from(setup, server, client, mode, name);
    let dialogue = dialogue_since(setup, mark);
    data_commands_in_mode(&dialogue, mode).unwrap_or_else(|err| panic!("{err:#}"));
    dialogue
}

/// Downloads the served file with `client` in `mode` into `name` and checks it by sha256, without
/// looking at the server's log: for downloads that run at the same time, where one session's
/// check would also read the others' lines, maybe a command whose reply is not logged yet.
pub fn download_intact(setup: &Setup, client: Client, mode: Mode, name: &str) {
    download_intact_from(setup, setup.server.addr.into(), client, mode, name);
}

/// [`download_intact`] from the server's address `server`.
pub fn download_intact_from(setup: &Setup, server: IpAddr, client: Client, mode: Mode, name: &str) {
    let local = setup.lab.subdir("client").expect("client dir").join(name);
    Transfer {
        client,
        mode,
        server,
        port: setup.server.port,
        remote: setup.file.name(),
        local: &local,
        timeout_secs: 120,
    }
    .run(&setup.lab.client)
    .unwrap_or_else(|err| panic!("{err:#}"));
    assert_same_content(&local, &setup.file);
}

/// The port window ftpnat reports in `ftpnat stats --json`.
pub fn window_of(stats: &Value) -> RangeInclusive<u16> {
    let range = stats["window"]["range"].as_str().expect("window range");
    let (lo, hi) = range.split_once('-').expect("LO-HI");
    lo.parse().expect("window start")..=hi.parse().expect("window end")
}
