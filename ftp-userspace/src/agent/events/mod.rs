//! Events: what the datapath saw (from its ring buffer) and what the agent swept, as one stream.
//! The agent logs each event and passes it, as a JSON line, to every `ftpnat events` connected to
//! its event socket. The socket is an abstract Unix socket with a random name the agent records in
//! the pin dir (see `server`): it lives in the router's network namespace, like the agent, and
//! vanishes with it.
//!
//! From the same stream the agent keeps each live session's transfers (command, file, mode,
//! bytes, duration), which `ftpnat sessions ID` asks it for over the same socket: a client's
//! first line is its request, `events` or `transfers <session id>`.

mod record;
mod reporter;
mod server;
mod transfers;

pub use record::EventRecord;
pub use reporter::{EVENT_BACKLOG, EVENT_LOG_TARGET, EventReporter, SessionIds, drain_events};
pub use server::{peer_uid, recorded_name, serve_subscribers, trusted_uid};
pub use transfers::{SharedTransferLog, TransferRecord};
