//! Real FTP clients run in the lab's client namespace: curl, lftp and Python's ftplib.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

use crate::netns::NetNs;

/// Which data-connection command family the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passive, `PASV` / `227`.
    Pasv,
    /// Passive, `EPSV` / `229`.
    Epsv,
    /// Active, `PORT`.
    Port,
    /// Active, `EPRT`.
    Eprt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Curl,
    Lftp,
    /// Python's ftplib (under the system interpreter).
    Ftplib,
}

/// One download: which client, which mode, from where, to where.
#[derive(Debug, Clone, Copy)]
pub struct Transfer<'a> {
    pub client: Client,
    pub mode: Mode,
    /// IPv4 or IPv6: over IPv6 the clients speak only EPRT and EPSV (RFC 2428), and a transfer
    /// asking for PORT or PASV there is refused before it starts rather than silently becoming
    /// the other.
    pub server: IpAddr,
    pub port: u16,
    pub remote: &'a str,
    pub local: &'a Path,
    /// Whole-transfer limit, so a broken data path fails the test instead of hanging it.
    pub timeout_secs: u32,
}

impl Transfer<'_> {
    /// Runs the download in `ns`; an error carries the client's output.
    pub fn run(&self, ns: &NetNs) -> anyhow::Result<Output> {
        match (self.mode, self.server.is_ipv6()) {
            (Mode::Port | Mode::Pasv, true) => {
                bail!(
                    "{:?} over IPv6: the clients use EPRT and EPSV there",
                    self.mode
                )
            }
            (Mode::Eprt, false) if self.client == Client::Lftp => {
                bail!("lftp uses EPRT only over IPv6")
            }
            (Mode::Eprt | Mode::Epsv, false) if self.client == Client::Ftplib => {
                bail!("ftplib uses EPSV/EPRT only over IPv6")
            }
            _ => {}
        }
        // `ip:port`, or `[ip]:port` for IPv6, as URLs and lftp's `open` write them.
        let endpoint = SocketAddr::new(self.server, self.port);
        let url = format!("ftp://{endpoint}/{}", self.remote);
        let local = self.local.to_string_lossy().into_owned();
        let timeout = self.timeout_secs.to_string();
        let args: Vec<String> = match self.client {
            Client::Curl => {
                let mut args: Vec<String> = ["-sS", "--fail", "--max-time", &timeout, "-o", &local]
                    .map(str::to_owned)
                    .to_vec();
                match self.mode {
                    Mode::Pasv => args.push("--disable-epsv".into()),
                    Mode::Epsv => {}
                    Mode::Port => args.extend(["-P".into(), "-".into(), "--disable-eprt".into()]),
                    Mode::Eprt => args.extend(["-P".into(), "-".into()]),
                }
                args.push(url);
                ["curl".to_owned()].into_iter().chain(args).collect()
            }
            Client::Lftp => {
                let settings = match self.mode {
                    Mode::Pasv => "set ftp:passive-mode on; set ftp:prefer-epsv no",
                    Mode::Epsv => "set ftp:passive-mode on; set ftp:prefer-epsv yes",
                    Mode::Port | Mode::Eprt => "set ftp:passive-mode off",
                };
                let script = format!(
                    "set net:max-retries 1; set net:timeout 20; {settings}; \
                     open ftp://{endpoint}; get {} -o {local}; bye",
                    self.remote
                );
                [
                    "timeout".into(),
                    timeout,
                    "lftp".into(),
                    "-c".into(),
                    script,
                ]
                .to_vec()
            }
            Client::Ftplib => {
                // ftplib sends EPSV and EPRT by itself over IPv6.
                let passive = match self.mode {
                    Mode::Pasv | Mode::Epsv => "True",
                    Mode::Port | Mode::Eprt => "False",
                };
                let script = format!(
                    "import ftplib\n\
                     ftp = ftplib.FTP()\n\
                     ftp.connect('{}', {}, timeout=20)\n\
                     ftp.login()\n\
                     ftp.set_pasv({passive})\n\
                     with open('{local}', 'wb') as out:\n    \
                         ftp.retrbinary('RETR {}', out.write)\n\
                     ftp.quit()\n",
                    self.server, self.port, self.remote
                );
                [
                    "timeout".into(),
                    timeout,
                    "/usr/bin/python3".into(),
                    "-c".into(),
                    script,
                ]
                .to_vec()
            }
        };
        let (program, rest) = args.split_first().expect("a command line has a program");
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let output = ns.command(program, &rest).output()?;
        if !output.status.success() {
            bail!(
                "{:?} {:?} download of {} failed ({}): {}{}",
                self.client,
                self.mode,
                self.remote,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }
}

/// A script running in the background, driven line by line: it prints a line when it reaches a
/// point the test wants to look at, then waits there for a line on its stdin. Killed on drop, so a
/// failing assertion does not leave it running.
pub struct SteppedScript {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Where its stderr goes, for the error when it ends early.
    stderr: PathBuf,
}

impl SteppedScript {
    /// Starts `command` with its stdin and stdout piped to the test and its stderr into `stderr`.
    pub fn spawn(mut command: Command, stderr: &Path) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(stderr)?)
            .spawn()
            .context("starting a stepped script")?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("piped stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
            stderr: stderr.to_owned(),
        })
    }

    /// Waits for the script's next line, which must start with `word`, and returns its other
    /// words.
    pub fn expect(&mut self, word: &str) -> anyhow::Result<Vec<String>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut words = line.split_whitespace().map(str::to_owned);
        if words.next().as_deref() != Some(word) {
            bail!(
                "the script printed {line:?} instead of {word:?}; its stderr: {}",
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        Ok(words.collect())
    }

    /// Lets the script go on past the point where it waits.
    pub fn proceed(&mut self) -> anyhow::Result<()> {
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits for the script to end, and returns the rest of its output; an error if it failed.
    pub fn finish(&mut self) -> anyhow::Result<String> {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "the script failed ({status}): {rest}{}",
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        Ok(rest)
    }
}

impl Drop for SteppedScript {
    fn drop(&mut self) {
        // Already reaped (by `finish`), its pid may belong to another process by now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM, not SIGKILL: the child is `timeout`, which passes it on to the script.
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A script for [`SteppedScript`]: logs in over `argv[1]` and announces a listening port of its own (EPRT over IPv6, PORT over
/// IPv4), then waits; retrieves `argv[2]` over it, reads a first chunk and waits again; then
/// reads the rest and prints its sha256.
pub const INSPECTED_ACTIVE_SESSION: &str = r#"
import hashlib, sys
from ftpnat_lab import session_with_listener
ftp, listener, host, data_port = session_with_listener(sys.argv[1])
control_port = ftp.sock.getsockname()[1]
if ':' in host:
    ftp.voidcmd(f'EPRT |2|{host}|{data_port}|')
else:
    ftp.voidcmd('PORT ' + ','.join(host.split('.') + [str(data_port >> 8), str(data_port & 255)]))
print('announced', control_port, data_port, flush=True)
sys.stdin.readline()
ftp.sendcmd('RETR ' + sys.argv[2])
data, _ = listener.accept()
digest = hashlib.sha256(data.recv(65536))
print('transferring', flush=True)
sys.stdin.readline()
while chunk := data.recv(1 << 16):
    digest.update(chunk)
data.close()
ftp.voidresp()
print('done', digest.hexdigest(), flush=True)
ftp.quit()
"#;

/// A plain TCP connection to `argv[1]` port `argv[2]`, given up after `argv[3]` seconds, from the
/// source address `argv[4]` if given: prints how it ended (`connected`, `refused` or `timed out`).
pub const CONNECT: &str = r#"
import socket, sys
source = (sys.argv[4], 0) if len(sys.argv) > 4 else None
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]),
                             source_address=source)
    print('connected')
except ConnectionRefusedError:
    print('refused')
except socket.timeout:
    print('timed out')
"#;

/// An active download whose `PORT`/`EPRT` line (`|2|` for an IPv6 address) is sent in pieces, cut after each of the byte
/// counts in `argv[4]` (comma-separated), 300 ms apart; `argv[5]`, if given, is the address to
/// announce instead of the client's own. Prints the server's reply to the line, then the sha256
/// of the file if the server accepted it; then downloads the file again in passive mode and
/// prints that sha256 too: the session must still work.
pub const SPLIT_ANNOUNCEMENT: &str = r#"
import ftplib, sys, time
from ftpnat_lab import retr_active, retr_digest, session_with_listener
server, name, verb = sys.argv[1], sys.argv[2], sys.argv[3]
cuts = [int(c) for c in sys.argv[4].split(',')]  # from the end if negative
ftp, listener, host, port = session_with_listener(server)
announced = sys.argv[5] if len(sys.argv) > 5 else host
if verb == 'PORT':
    line = 'PORT %s,%d,%d\r\n' % (announced.replace('.', ','), port >> 8, port & 255)
else:
    line = 'EPRT |%d|%s|%d|\r\n' % (2 if ':' in announced else 1, announced, port)
cuts = [c if c >= 0 else len(line) + c for c in cuts]
start = 0
for cut in cuts + [len(line)]:
    ftp.sock.sendall(line[start:cut].encode())
    start = cut
    time.sleep(0.3)
try:
    print(ftp.getresp())
    print(retr_active(ftp, listener, name))
except ftplib.error_perm as refused:
    print(refused)
ftp.set_pasv(True)
print(retr_digest(ftp, name))
ftp.quit()
"#;
