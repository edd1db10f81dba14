//! The commands that read a running agent's datapath from another process (`ftpnat stats`,
//! `sessions`, `expectations`, `flows`, `events`), `ftpnat detach`, and `ftpnat verify`.

pub mod detach;
pub mod events;
pub mod render;
pub mod stats;
pub mod tables;
pub mod verify;
