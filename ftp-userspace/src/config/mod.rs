//! `ftpnat run`'s settings: the command line and the config file ([`run`]), and the NAT settings
//! they name, checked against the router ([`nat`]). Nothing here touches the datapath.

pub mod nat;
pub mod run;

/// Where `ftpnat run` pins its maps unless told otherwise; the inspection commands read from here.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ftpnat";
