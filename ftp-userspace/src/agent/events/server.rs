//! The event socket: an abstract Unix socket named after the pin dir, on which the agent hands
//! every `events` subscriber the stream and answers `transfers <session id>`.

use std::{os::linux::net::SocketAddrExt as _, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    sync::broadcast,
};

use super::SharedTransferLog;

/// The longest request line a client may send (`transfers <session id>`).
const MAX_REQUEST_LEN: u64 = 256;

/// The abstract socket the agent serves events on, for a pin dir.
pub fn socket_name(pin_dir: &Path) -> String {
    format!("ftpnat-events:{}", pin_dir.display())
}

/// Listens on the event socket: hands every `events` subscriber the events sent on `events`, and
/// answers `transfers <id>` from `log`.
pub fn serve_subscribers(
    pin_dir: &Path,
    events: &broadcast::Sender<String>,
    log: &SharedTransferLog,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let name = socket_name(pin_dir);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .context("naming the event socket")?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).with_context(|| {
        format!("listening on the event socket @{name} (is another agent using this --pin-dir?)")
    })?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let events = events.clone();
    let log = Arc::clone(log);
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // The stream names users and files: for root and the agent's own user only (an
            // abstract socket has no file permissions to say so).
            // SAFETY: geteuid has no preconditions.
            let agent_uid = unsafe { libc::geteuid() };
            let allowed = stream
                .peer_cred()
                .is_ok_and(|cred| cred.uid() == 0 || cred.uid() == agent_uid);
            if !allowed {
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
