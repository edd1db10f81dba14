//! How the programs attach to an interface's TC hooks: TCX links, or classic TC filters where the
//! kernel has no TCX.

use anyhow::bail;
use aya::{
    programs::{ProgramError, SchedClassifier, TcAttachType},
    sys::SyscallError,
};

use crate::config::run::TcAttach;

/// How the programs attach to an interface's TC hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// TCX links (Linux ≥ 6.6), pinned in the state dir.
    Tcx,
    /// Classic TC: a clsact qdisc and a direct-action cls_bpf filter per hook, made over netlink
    /// and recorded in the state dir. Any kernel ftpnat runs on has it.
    Netlink,
}

impl Mechanism {
    /// The mechanism `requested` resolves to on this kernel, and why, for the log. The kernel is
    /// asked, not its version compared: a TCX query on `probe` (an interface of the datapath)
    /// fails with EINVAL on a kernel without TCX, whatever its version says or its vendor
    /// backported.
    pub fn choose(requested: TcAttach, probe: &str) -> anyhow::Result<(Self, String)> {
        if requested == TcAttach::Netlink {
            return Ok((Self::Netlink, "--tc-attach netlink asks for it".to_owned()));
        }
        let tcx = match SchedClassifier::query_tcx(probe, TcAttachType::Ingress) {
            Ok(_) => Ok(format!("the kernel answered a TCX query on {probe}")),
            Err(err) if lacks_tcx(&err) => Err(format!(
                "the kernel has no TCX: a TCX query on {probe} failed with EINVAL (TCX came with \
                 Linux 6.6)"
            )),
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("asking the kernel whether it has TCX (on {probe})")));
            }
        };
        match (requested, tcx) {
            (TcAttach::Tcx, Ok(_)) => Ok((Self::Tcx, "--tc-attach tcx asks for it".to_owned())),
            (TcAttach::Tcx, Err(why)) => bail!(
                "--tc-attach tcx cannot be honoured: {why}; use --tc-attach netlink (classic TC) \
                 or auto (tc_attach in the config file)"
            ),
            (_, Ok(why)) => Ok((Self::Tcx, why)),
            (_, Err(why)) => Ok((Self::Netlink, why)),
        }
    }

    /// The `--tc-attach` value that asks for this mechanism.
    pub fn flag_value(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcx => "TCX links",
            Self::Netlink => "classic TC filters (a clsact qdisc and cls_bpf over netlink)",
        })
    }
}

/// Whether a TCX query failed because the kernel has no TCX: it does not know the attach type.
pub fn lacks_tcx(err: &ProgramError) -> bool {
    matches!(
        err,
        ProgramError::SyscallError(SyscallError { io_error, .. })
            if io_error.raw_os_error() == Some(libc::EINVAL)
    )
}
