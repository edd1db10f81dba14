//! `ftpnat events` and the transfers of `ftpnat sessions ID`: a client of the running agent's
//! event socket.

use std::{os::linux::net::SocketAddrExt as _, path::Path, time::Duration};

use anyhow::{Context as _, anyhow};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::agent::events::{EventRecord, TransferRecord, peer_uid, recorded_name, trusted_uid};

/// Connects to the event socket the agent of `pin_dir` recorded, if a process of root (or of
/// this user) listens there: a socket of another user's took the name of an agent since gone.
fn connect(pin_dir: &Path) -> anyhow::Result<std::os::unix::net::UnixStream> {
    let not_running = |err: &dyn std::fmt::Display| {
        anyhow!(
            "no `ftpnat run` serves events for --pin-dir {} in this network namespace ({err}): \
             is it running, with that pin dir?",
            pin_dir.display()
        )
    };
    let name = recorded_name(pin_dir).map_err(|err| not_running(&err))?;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let stream =
        std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|err| not_running(&err))?;
    let uid = peer_uid(&stream).context("asking who serves the event socket")?;
    if !trusted_uid(uid) {
        return Err(not_running(&format_args!(
            "@{name} is held by a process of user {uid}, not by ftpnat: its agent is gone"
        )));
    }
    Ok(stream)
}

/// Asks the agent for a session's transfers.
pub fn query_transfers(pin_dir: &Path, session: &str) -> anyhow::Result<Vec<TransferRecord>> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = connect(pin_dir)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("transfers {session}\n").as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).context("reading the agent's answer")
}

/// `ftpnat events`: follows the agent's events until interrupted.
pub fn follow(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let stream = connect(pin_dir)?;
        stream.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(stream)?;
        stream.write_all(b"events\n").await?;
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await? {
            if json {
                println!("{line}");
            } else {
                match serde_json::from_str::<EventRecord>(&line) {
                    Ok(record) => println!("{} {}", record.time, record.text()),
                    Err(_) => println!("{line}"),
                }
            }
        }
        Ok(())
    })
}
