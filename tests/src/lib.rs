//! The ftpnat lab: network namespaces joined by veth (client | router | server, more on request),
//! real FTP servers and clients, captures on failure, and cleanup on drop — also when a test
//! panics. Every integration test builds its own lab; names are unique per process and per lab, so
//! tests can run in parallel and never touch anything outside their own namespaces.

pub mod agent;
pub mod capture;
pub mod clients;
pub mod family;
pub mod files;
pub mod lab;
pub mod masquerade;
pub mod netns;
pub mod servers;

pub use agent::Agent;
pub use capture::TcpSegment;
pub use clients::{Client, Mode, Transfer};
pub use family::Family;
pub use files::{MIB, TestFile};
pub use lab::{Lab, LabSpec, Nat64Spec, Routing};
pub use servers::FtpServer;
