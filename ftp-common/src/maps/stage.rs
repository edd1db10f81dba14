//! The stage table: the program array of the ingress program's stages, its slots, and the stage
//! programs by slot.

/// The program array of the ingress program's stages. Each load has its own, pinned by the agent
/// once filled: a program array is emptied when no process or pin holds it, which would leave the
/// attached programs without their stages.
pub const NAME: &str = "STAGES";

/// An opening SYN no flow knows: expectations, new control sessions, pinholes, resets.
pub const OPEN: u32 = 0;
/// A packet from a control connection's client: line tracking, the command scanner, the
/// state machine.
pub const CLIENT: u32 = 1;
/// A packet from a control connection's server: line tracking, the reply scanner, the state
/// machine.
pub const SERVER: u32 = 2;
/// A PORT/EPRT/227/229 the client or server stage accepted: the text is rewritten, or held
/// bytes cut or given back.
pub const REWRITE: u32 = 3;
/// A retransmission of a rewritten segment: the same rewrite again.
pub const REPLAY: u32 = 4;
/// Every control packet last: sequence adjustment, translation, redirect.
pub const CONTROL_FORWARD: u32 = 5;
pub const COUNT: u32 = 6;

/// The stages the ingress program continues in (tail calls through the [`NAME`] program array),
/// by their slot in it. Each is verified as a program of its own, so the verifier's work on one
/// does not add to another's.
pub const PROGRAMS: [(u32, &str); COUNT as usize] = [
    (OPEN, "ftpnat_open"),
    (CLIENT, "ftpnat_client"),
    (SERVER, "ftpnat_server"),
    (REWRITE, "ftpnat_rewrite"),
    (REPLAY, "ftpnat_replay"),
    (CONTROL_FORWARD, "ftpnat_control_forward"),
];
