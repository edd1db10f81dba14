//! Real FTP servers in the lab's server namespace: vsftpd from a generated config, and pyftpdlib.

use std::{
    fs::{self, File},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{lab::wait_until, netns::NetNs};

/// Settings of a vsftpd instance beyond the lab's defaults (anonymous, read/write).
#[derive(Debug, Clone, Default)]
pub struct VsftpdOptions {
    /// `pasv_min_port`/`pasv_max_port`.
    pub pasv_ports: Option<(u16, u16)>,
    /// `pasv_address`: the address vsftpd announces in 227 instead of its own.
    pub pasv_address: Option<Ipv4Addr>,
    pub port: Option<u16>,
    /// `cmds_denied`: commands vsftpd answers with 550, e.g. `EPRT` to make curl fall back to PORT.
    pub denied_commands: Vec<&'static str>,
    /// A `banner_file` of this many lines: vsftpd greets with a multi-line 220 reply of as many
    /// `220-` lines, as servers with a long legal notice do.
    pub banner_lines: usize,
    /// `max_clients` and `max_per_ip`: Debian's vsftpd turns away more than 50 sessions from
    /// one address ("421 There are too many connections from your internet address"), and all
    /// of a masqueraded LAN's sessions come from the router's public address.
    pub max_sessions: Option<u32>,
    /// `connect_from_port_20=NO`: active data connections from an ephemeral port. Otherwise
    /// vsftpd binds port 20 for each one, and with hundreds at once many fail with "425 Failed
    /// to establish connection" in the same second as their RETR: a collision on the server
    /// (with this set, the same load has none).
    pub data_from_ephemeral_port: bool,
    /// Serve IPv6 clients too, at this address: `listen=NO`, `listen_ipv6=YES`, vsftpd's one
    /// dual-stack socket, which takes IPv4 clients as v4-mapped peers (its log names them
    /// `::ffff:a.b.c.d`; its 227 still names the IPv4 address). That socket is bound to every
    /// address of the namespace (a `listen_address6` would turn IPv4 away), so the server also
    /// answers on addresses the test adds to its namespace later.
    pub ipv6: Option<Ipv6Addr>,
    /// `ssl_enable=YES` with this certificate and key (PEM files), anonymous sessions allowed
    /// over TLS but not made to use it (`AUTH TLS` is the client's choice).
    pub tls: Option<TlsFiles>,
}

/// A server certificate and its private key, PEM files (see [`TlsFiles::self_signed`]).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// A self-signed certificate for `common_name` and its key, made by `openssl` in `dir`.
    pub fn self_signed(dir: &Path, common_name: &str) -> anyhow::Result<Self> {
        let files = Self {
            cert: dir.join("tls-cert.pem"),
            key: dir.join("tls-key.pem"),
        };
        let subject = format!("/CN={common_name}");
        crate::netns::run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &subject,
                "-keyout",
                &files.key.to_string_lossy(),
                "-out",
                &files.cert.to_string_lossy(),
            ],
        )
        .context("making a self-signed certificate (is openssl installed? `cargo xtask setup`)")?;
        Ok(files)
    }
}

pub struct FtpServer {
    pub addr: Ipv4Addr,
    /// The address IPv6 clients reach it at ([`VsftpdOptions::ipv6`]); `None` if IPv4 only.
    pub addr6: Option<Ipv6Addr>,
    pub port: u16,
    /// Directory served (anonymous root).
    pub root: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl FtpServer {
    /// Starts vsftpd in `ns`, serving `root` anonymously on `addr`.
    pub fn vsftpd(
        ns: &NetNs,
        addr: Ipv4Addr,
        root: &Path,
        work_dir: &Path,
        options: &VsftpdOptions,
    ) -> anyhow::Result<Self> {
        let port = options.port.unwrap_or(21);
        let log = work_dir.join(format!("vsftpd-{port}.log"));
        let listen = match options.ipv6 {
            None => format!("listen=YES\nlisten_ipv6=NO\nlisten_address={addr}\n"),
            Some(_) => "listen=NO\nlisten_ipv6=YES\n".to_owned(),
        };
        let mut config = format!(
            "{listen}\
             listen_port={port}\n\
             background=NO\n\
             anonymous_enable=YES\n\
             local_enable=NO\n\
             no_anon_password=YES\n\
             anon_root={root}\n\
             write_enable=YES\n\
             anon_upload_enable=YES\n\
             anon_umask=022\n\
             pasv_enable=YES\n\
             port_enable=YES\n\
             connect_from_port_20={from_port_20}\n\
             seccomp_sandbox=NO\n\
             secure_chroot_dir=/var/run/vsftpd/empty\n\
             vsftpd_log_file={log}\n\
             xferlog_enable=YES\n\
             log_ftp_protocol=YES\n\
             dual_log_enable=NO\n\
             idle_session_timeout=120\n\
             data_connection_timeout=60\n",
            root = root.display(),
            log = log.display(),
            from_port_20 = if options.data_from_ephemeral_port {
                "NO"
            } else {
                "YES"
            },
        );
        if let Some((min, max)) = options.pasv_ports {
            config.push_str(&format!("pasv_min_port={min}\npasv_max_port={max}\n"));
        }
        if let Some(max) = options.max_sessions {
            config.push_str(&format!("max_clients={max}\nmax_per_ip={max}\n"));
        }
        if let Some(public) = options.pasv_address {
            config.push_str(&format!("pasv_address={public}\n"));
        }
        if !options.denied_commands.is_empty() {
            config.push_str(&format!(
                "cmds_denied={}\n",
                options.denied_commands.join(",")
            ));
        }
        if let Some(tls) = &options.tls {
            // vsftpd's default ciphers are 3DES only, which OpenSSL 3 no longer offers.
            config.push_str(&format!(
                "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=NO\n\
                 force_anon_data_ssl=NO\nssl_ciphers=HIGH\nrsa_cert_file={}\n\
                 rsa_private_key_file={}\n",
                tls.cert.display(),
                tls.key.display()
            ));
        }
        if options.banner_lines > 0 {
            let banner = work_dir.join(format!("vsftpd-{port}.banner"));
            let text: String = (1..=options.banner_lines)
                .map(|n| format!("Line {n} of the notice every user of this server is shown.\n"))
                .collect();
            fs::write(&banner, text)?;
            config.push_str(&format!("banner_file={}\n", banner.display()));
        }
        let config_path = work_dir.join(format!("vsftpd-{port}.conf"));
        fs::write(&config_path, config)?;
        // vsftpd checks this directory exists; Debian creates it only when its service starts.
        fs::create_dir_all("/var/run/vsftpd/empty")?;
        let child = ns
            .command("vsftpd", &[&config_path.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(
                work_dir.join(format!("vsftpd-{port}.stderr")),
            )?)
            .spawn()
            .context("starting vsftpd (is it installed? `cargo xtask setup`)")?;
        let mut server = Self::wait_listening(ns, addr, port, root, log, child)?;
        server.addr6 = options.ipv6;
        Ok(server)
    }

    /// Starts pyftpdlib (anonymous, writable) in `ns`, serving `root` on `addr:port`.
    pub fn pyftpdlib(
        ns: &NetNs,
        addr: Ipv4Addr,
        port: u16,
        root: &Path,
        work_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::pyftpdlib_with_passive_ports(ns, addr, port, root, work_dir, None)
    }

    /// As [`FtpServer::pyftpdlib`], announcing passive ports `FROM-TO` only (pyftpdlib, unlike
    /// vsftpd, also takes ports below 1024).
    pub fn pyftpdlib_with_passive_ports(
        ns: &NetNs,
        addr: Ipv4Addr,
        port: u16,
        root: &Path,
        work_dir: &Path,
        passive_ports: Option<(u16, u16)>,
    ) -> anyhow::Result<Self> {
        let log = work_dir.join(format!("pyftpdlib-{port}.log"));
        let (addr_arg, port_arg, root_arg) =
            (addr.to_string(), port.to_string(), root.to_string_lossy());
        let mut args = vec![
            "-m",
            "pyftpdlib",
            "-i",
            &addr_arg,
            "-p",
            &port_arg,
            "-d",
            &root_arg,
            "-w",
        ];
        let range = passive_ports.map(|(from, to)| format!("{from}-{to}"));
        if let Some(range) = &range {
            args.extend(["-r", range.as_str()]);
        }
        // Debian's python3-pyftpdlib belongs to the system interpreter, not a pyenv one on PATH.
        let child = ns
            .command("/usr/bin/python3", &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting pyftpdlib (is python3-pyftpdlib installed? `cargo xtask setup`)")?;
        Self::wait_listening(ns, addr, port, root, log, child)
    }

    /// pyftpdlib (anonymous, writable) in `ns` on `addr:port`, serving `root`, its handler
    /// without `left_out` commands (it answers them `500 Command "EPSV" not understood.`, as a
    /// server that predates them does; none: all of pyftpdlib's), logging its whole dialogue
    /// (pyftpdlib's debug log: `<- COMMAND`, `-> REPLY`, each after the peer's `address:port`).
    pub fn pyftpdlib_without(
        ns: &NetNs,
        addr: Ipv4Addr,
        port: u16,
        root: &Path,
        work_dir: &Path,
        left_out: &[&str],
    ) -> anyhow::Result<Self> {
        const SERVER: &str = r#"
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
addr, port, root, left_out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
logging.basicConfig(level=logging.DEBUG, format='%(message)s')
authorizer = DummyAuthorizer()
authorizer.add_anonymous(root, perm='elradfmwMT')
class Handler(FTPHandler):
    proto_cmds = {verb: info for verb, info in FTPHandler.proto_cmds.items()
                  if verb not in left_out}
Handler.authorizer = authorizer
FTPServer((addr, port), Handler).serve_forever()
"#;
        let log = work_dir.join(format!("pyftpdlib-{port}.log"));
        let script = work_dir.join(format!("pyftpdlib-{port}.py"));
        fs::write(&script, SERVER)?;
        let (script_arg, addr_arg, port_arg, root_arg) = (
            script.to_string_lossy(),
            addr.to_string(),
            port.to_string(),
            root.to_string_lossy(),
        );
        let mut args = vec![&*script_arg, &addr_arg, &port_arg, &*root_arg];
        args.extend(left_out);
        let child = ns
            .command("/usr/bin/python3", &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting pyftpdlib (is python3-pyftpdlib installed? `cargo xtask setup`)")?;
        Self::wait_listening(ns, addr, port, root, log, child)
    }

    fn wait_listening(
        ns: &NetNs,
        addr: Ipv4Addr,
        port: u16,
        root: &Path,
        log: PathBuf,
        mut child: Child,
    ) -> anyhow::Result<Self> {
        let filter = format!("sport = :{port}");
        let listening = wait_until(Duration::from_secs(10), || {
            ns.exec("ss", &["-Hltn", &filter])
                .is_ok_and(|out| !out.stdout.is_empty())
        });
        if listening.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "FTP server on {addr}:{port} did not start listening; its log: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(Self {
            addr,
            addr6: None,
            port,
            root: root.to_owned(),
            log,
            child,
        })
    }
}

impl FtpServer {
    /// How far the server's log is written: a mark for [`FtpServer::log_since`], taken before a
    /// session so that its lines can be told from earlier sessions'.
    pub fn log_mark(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// What the server logged since `mark`.
    pub fn log_since(&self, mark: u64) -> anyhow::Result<String> {
        let log = fs::read(&self.log).with_context(|| format!("reading {}", self.log.display()))?;
        let from = usize::try_from(mark)?.min(log.len());
        Ok(String::from_utf8_lossy(&log[from..]).into_owned())
    }
}

/// An address as PORT and 227 write it: `10,0,0,2`.
pub fn commas(addr: Ipv4Addr) -> String {
    addr.octets().map(|o| o.to_string()).join(",")
}

/// The FTP dialogue in a vsftpd log (`log_ftp_protocol=YES`): each command the server received
/// as `"> PORT 203,0,113,254,238,72"`, each reply it sent as `"< 200 PORT command successful.
/// Consider using PASV."`. What the server received is what crossed the router. Sessions that ran
/// at the same time are told apart by vsftpd's process (`[pid N]`; one before the login, one
/// after): the lines of each process come together, in order, processes in the order they first
/// logged.
pub fn vsftpd_dialogue(log: &str) -> Vec<String> {
    let mut processes: Vec<(&str, Vec<String>)> = Vec::new();
    for line in log.lines() {
        let Some(pid) = line
            .split_once("[pid ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        let (arrow, rest) = if let Some((_, rest)) = line.split_once("FTP command: Client \"") {
            (">", rest)
        } else if let Some((_, rest)) = line.split_once("FTP response: Client \"") {
            ("<", rest)
        } else {
            continue;
        };
        // `ADDRESS", "TEXT"`
        let Some(text) = rest
            .split_once("\", \"")
            .and_then(|(_, text)| text.strip_suffix('"'))
        else {
            continue;
        };
        let entry = format!("{arrow} {text}");
        match processes.iter_mut().find(|(p, _)| *p == pid) {
            Some((_, lines)) => lines.push(entry),
            None => processes.push((pid, vec![entry])),
        }
    }
    processes.into_iter().flat_map(|(_, lines)| lines).collect()
}

/// How many data connections a dialogue set up in `mode`, each command accepted by the server;
/// an error if it set up none, if the server refused one, or if the client used any other data
/// command. curl retries with PORT after a refused EPRT, and with PASV after an EPSV that failed,
/// and still gets its file: only the server's side of the dialogue shows which mode really ran.
pub fn data_commands_in_mode(dialogue: &[String], mode: crate::Mode) -> anyhow::Result<usize> {
    use crate::Mode;
    let (wanted, accepted) = match mode {
        Mode::Port => ("PORT", "200 PORT command successful"),
        Mode::Eprt => ("EPRT", "200 EPRT command successful"),
        Mode::Pasv => ("PASV", "227 Entering Passive Mode"),
        Mode::Epsv => ("EPSV", "229 Entering Extended Passive Mode"),
    };
    let mut count = 0;
    for (i, line) in dialogue.iter().enumerate() {
        let Some(command) = line.strip_prefix("> ") else {
            continue;
        };
        let verb = command
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if !["PORT", "EPRT", "PASV", "EPSV"].contains(&verb.as_str()) {
            continue;
        }
        if verb != wanted {
            bail!(
                "{mode:?} expected, but the client sent `{command}`:\n{}",
                dialogue.join("\n")
            );
        }
        let reply = dialogue[i + 1..]
            .iter()
            .find_map(|l| l.strip_prefix("< "))
            .unwrap_or("(none)");
        if !reply.starts_with(accepted) {
            bail!(
                "the server answered `{command}` with `{reply}`:\n{}",
                dialogue.join("\n")
            );
        }
        count += 1;
    }
    if count == 0 {
        bail!("no {wanted} in the dialogue:\n{}", dialogue.join("\n"));
    }
    Ok(count)
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::vsftpd_dialogue;

    #[test]
    fn sessions_logged_at_once_are_told_apart_by_process() {
        let log = r#"Fri Nov 27 10:05:27 2026 [pid 11] CONNECT: Client "203.0.113.254"
Fri Nov 27 10:05:27 2026 [pid 11] FTP command: Client "203.0.113.254", "USER anonymous"
Fri Nov 27 10:05:27 2026 [pid 12] [ftp] FTP response: Client "203.0.113.254", "230 Login successful."
Fri Nov 27 10:05:27 2026 [pid 21] FTP command: Client "203.0.113.254", "USER anonymous"
Fri Nov 27 10:05:27 2026 [pid 12] [ftp] FTP command: Client "203.0.113.254", "PASV"
Fri Nov 27 10:05:27 2026 [pid 22] [ftp] FTP response: Client "203.0.113.254", "230 Login successful."
Fri Nov 27 10:05:27 2026 [pid 12] [ftp] FTP response: Client "203.0.113.254", "227 Entering Passive Mode (203,0,113,10,32,109)."
"#;
        assert_eq!(
            vsftpd_dialogue(log),
            [
                "> USER anonymous",
                "< 230 Login successful.",
                "> PASV",
                "< 227 Entering Passive Mode (203,0,113,10,32,109).",
                "> USER anonymous",
                "< 230 Login successful.",
            ]
        );
    }
}
