//! Shared between the ftpnat eBPF programs (built for `bpfel-unknown-none`) and the agent.
//!
//! Everything here is `no_std`, allocation-free and panic-free so that the kernel program can use it
//! verbatim: the map types in [`maps`], and the FTP control-channel protocol core.
//!
//! # The protocol core
//!
//! One implementation of the FTP control-channel grammar, used by the datapath and the agent alike
//! (see `README.md` next to this crate for the grammar, every refusal rule and the RFC behind it):
//!
//! - [`line`](mod@line): which bytes of a TCP segment may be parsed ([`LineTracker`]).
//! - [`command`]: client commands — [`CommandScanner`], which reads them one byte at a time and
//!   keeps its state across segments, and [`parse_command`] for a line held in memory.
//! - [`reply`]: server replies — [`ReplyScanner`] and [`parse_reply`].
//! - [`format`]: rendering a new address/port into the field a parser reported, and [`splice`].
//! - [`session`]: the per-connection state machine and policy ([`Session`]), whose verdicts the
//!   caller acts on.
//! - [`number`] and [`address`]: the strict number and address readers underneath.
//! - [`checksum`]: incremental checksum updates of the headers the datapath translates.
//! - [`mss`](mod@mss): MSS clamping of the SYNs the datapath forwards (TCP, not FTP, but protocol
//!   logic all the same).
//!
//! The grammar is read one byte at a time because that is what a BPF verifier can follow: a
//! scanner step called from a `bpf_loop` callback is verified once, whatever the line.
//!
//! Per TCP segment of a control connection, in the client direction (the server direction is the
//! same with [`ReplyScanner`] and [`Session::on_server_reply`]):
//!
//! ```
//! use ftp_common::{ClientVerdict, CommandScanner, LineTracker, PolicyContext, Policy, Session, SegmentVerdict};
//! use core::net::{IpAddr, Ipv4Addr};
//! use ftp_common::maps::ip;
//!
//! let ctx = PolicyContext {
//!     client: ip::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
//!     server: ip::from_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
//!     policy: Policy::new(),
//! };
//! // Stored per control connection.
//! let mut session = Session::new();
//! let mut client_lines = LineTracker::new();
//! let mut client_scanner = CommandScanner::new();
//! client_lines.on_syn(1000); // the client's SYN: its first data byte, 1001, starts a line
//!
//! let payload = b"PORT 10,0,0,2,195,80\r\n";
//! if let SegmentVerdict::InSync(in_sync) = client_lines.on_segment(1001, payload) {
//!     if !in_sync.continues_line {
//!         client_scanner.reset();
//!     }
//!     for &byte in &payload[in_sync.start as usize..] {
//!         if client_scanner.push(byte) {
//!             let verdict = session.on_client_command(client_scanner.command(), &ctx);
//!             assert!(matches!(verdict, ClientVerdict::OpenActive { .. }));
//!         }
//!     }
//! }
//! ```
//!
//! Nothing in the core has side effects beyond the state structs the caller passes in: opening an
//! expectation, rewriting the packet and counting are the caller's.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod maps;

/// Declares the protocol modules. They run inside the eBPF program, where a panic or an unchecked
/// computation cannot be tolerated: unsafe code in them is a compile error, and indexing, unwrap,
/// panics and overflowing arithmetic are denied clippy lints, errors under `cargo xtask lint` (not
/// `cargo build`; test code is exempt). (The lints are set per module because [`maps`] keeps
/// ordinary slicing and its `aya::Pod` impls.)
macro_rules! datapath_modules {
    ($($name:ident),* $(,)?) => {
        $(
            #[deny(unsafe_code)]
            #[cfg_attr(
                not(test),
                deny(
                    clippy::indexing_slicing,
                    clippy::unwrap_used,
                    clippy::expect_used,
                    clippy::panic,
                    clippy::unreachable,
                    clippy::arithmetic_side_effects
                )
            )]
            pub mod $name;
        )*
    };
}

datapath_modules!(
    address, checksum, command, format, hold, line, mss, nat64, number, reason, reply, seqadj,
    session, span, tcp_window
);

pub use command::{
    AlgsArg, AuthMechanism, Command, CommandName, CommandScanner, EpsvArg, TransferVerb,
    parse_command,
};
pub use format::{
    AlgReply, Ipv6AddressText, MAX_229_FIELD_LEN, MAX_229_LINE_LEN, MAX_ALG_REPLY_LEN,
    MAX_EPRT_FIELD_LEN, MAX_FIELD_LEN, MAX_PORT_FIELD_LEN, MAX_PORT_LINE_LEN, NOOP_LINE, PASV_LINE,
    PublicAddress, REFUSED_PASSIVE_LINE, REFUSED_PORT_FIELD, format_227_field, format_229_field,
    format_229_line, format_eprt_field, format_eprt6_field, format_port_field, format_port_line,
    format_refused_eprt_field, format_rewrite, splice,
};
pub use line::{InSync, LineTracker, MAX_LINE_LEN, SegmentVerdict, skippable_word};
pub use reason::{MalformedReason, RefusalReason};
pub use reply::{Reply, ReplyBody, ReplyScanner, ReplyShape, parse_reply};
pub use seqadj::{MAX_TCP_OPTIONS, SackStep, SeqAdjust};
pub use session::{
    ActiveKind, ClientVerdict, PassiveEndpoint, PassiveKind, Policy, PolicyContext, ServerVerdict,
    Session,
};
pub use span::Span;
pub use tcp_window::{Segment, TcpWindow, WindowVerdict};
