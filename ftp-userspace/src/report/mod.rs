//! What the pinned datapath holds, as ftpnat reports it to the operator: the summed counters and
//! tables, and how sessions are named and classified. The inspection commands, the agent's
//! metrics and its event stream all read these, so they say the same.

pub mod sessions;
pub mod stats;
