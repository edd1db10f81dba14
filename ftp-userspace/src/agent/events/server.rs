//! The event socket: an abstract Unix socket, on which the agent hands every `events` subscriber
//! the stream and answers `transfers <session id>`.
//!
//! An abstract name has no owner and no permissions: any local process of the network namespace
//! may bind it first. A name known in advance (the pin dir's) could thus be taken to keep the agent
//! from starting. The agent's name has a random part instead, and the agent records it in the pin
//! dir ([`record_path`], a symlink there, which only root can write); `ftpnat events` and
//! `ftpnat sessions ID` read it, and accept a socket only from a root process (or their own
//! user's), so a record left by a killed agent cannot lead them to another process that took its
//! name since. A filesystem socket in a root-only directory would do as well, but the pin dir is
//! on bpffs (which holds no sockets) and the service's file system is read-only elsewhere.

use std::{
    io,
    os::{fd::AsRawFd, linux::net::SocketAddrExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    sync::broadcast,
};

use super::SharedTransferLog;

/// The longest request line a client may send (`transfers <session id>`).
const MAX_REQUEST_LEN: u64 = 256;

/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the agent of `pin_dir` records its event socket's name: a symlink whose target is the
/// name. Removed with the pin dir's lock ([`crate::datapath::pins::PinDirLock`]).
pub fn record_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join(crate::datapath::pins::EVENT_SOCKET_RECORD)
}

/// A fresh event socket name: `ftpnat-events:` and 128 random bits in hex.
fn fresh_name() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        return Err(io::Error::last_os_error())
            .context("getting random bytes for the event socket");
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("ftpnat-events:{hex}"))
}

/// Records `name` as the event socket of `pin_dir`, replacing a previous agent's record at once.
fn write_record(pin_dir: &Path, name: &str) -> anyhow::Result<()> {
    let record = record_path(pin_dir);
    // No dot in the name: bpffs refuses those (they are its own).
    let staged = pin_dir.join(format!(
        "{}-new",
        crate::datapath::pins::EVENT_SOCKET_RECORD
    ));
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(name, &staged)
        .and_then(|()| std::fs::rename(&staged, &record))
        .with_context(|| format!("recording the event socket's name in {}", record.display()))
}

/// The name recorded for `pin_dir`'s event socket.
pub fn recorded_name(pin_dir: &Path) -> io::Result<String> {
    Ok(std::fs::read_link(record_path(pin_dir))?
        .to_string_lossy()
        .into_owned())
}

/// The user id of the process at the other end of a Unix socket (for a client, the one that
/// listens).
pub fn peer_uid(socket: &impl AsRawFd) -> io::Result<u32> {
    // SAFETY: ucred is plain data; all-zero is a valid value for the kernel to overwrite.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and an out-pointer and length that describe `cred`.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether a peer of user `uid` may use the event stream (it names users and files): root and
/// this process's own user.
pub fn trusted_uid(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Listens on the event socket: hands every `events` subscriber the events sent on `events`, and
/// answers `transfers <id>` from `log`.
pub fn serve_subscribers(
    pin_dir: &Path,
    events: &broadcast::Sender<String>,
    log: &SharedTransferLog,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let name = fresh_name()?;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .context("naming the event socket")?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)
        .with_context(|| format!("listening on the event socket @{name}"))?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    write_record(pin_dir, &name)?;
    let events = events.clone();
    let log = Arc::clone(log);
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    log::warn!("event socket @{name}: accepting a connection: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // The stream names users and files: for root and the agent's own user only (an
            // abstract socket has no file permissions to say so).
            if !stream.peer_cred().is_ok_and(|cred| trusted_uid(cred.uid())) {
                continue;
            }
            let mut receiver = events.subscribe();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut request = String::new();
                // A request is one short line; a longer one is not a request.
                if (&mut stream)
                    .take(MAX_REQUEST_LEN)
                    .read_line(&mut request)
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(id) = request.trim().strip_prefix("transfers ") {
                    let transfers = log.lock().map(|log| log.transfers(id)).unwrap_or_default();
                    let reply = serde_json::to_string(&transfers).unwrap_or_else(|_| "[]".into());
                    let _ = stream
                        .get_mut()
                        .write_all(format!("{reply}\n").as_bytes())
                        .await;
                    return;
                }
                let mut stream = stream.into_inner();
                loop {
                    let line = match receiver.recv().await {
                        Ok(line) => line,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            log::warn!(
                                "an `ftpnat events` reader fell behind: {missed} events skipped"
                            );
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if stream
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_are_unguessable_and_fit_an_abstract_address() {
        let (first, second) = (fresh_name().unwrap(), fresh_name().unwrap());
        assert_ne!(first, second);
        assert!(first.starts_with("ftpnat-events:"), "{first}");
        assert_eq!(first.len(), "ftpnat-events:".len() + 32);
        std::os::unix::net::SocketAddr::from_abstract_name(first.as_bytes()).unwrap();
    }

    #[test]
    fn the_record_names_the_socket_and_a_new_one_replaces_it() {
        let dir = std::env::temp_dir().join(format!("ftpnat-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_record(&dir, "ftpnat-events:one").unwrap();
        write_record(&dir, "ftpnat-events:two").unwrap();
        assert_eq!(recorded_name(&dir).unwrap(), "ftpnat-events:two");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
