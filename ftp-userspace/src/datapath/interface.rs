//! The router's interfaces as the datapath knows them: by name for the operator, by index for the
//! kernel.

use std::{ffi::CString, io};

use anyhow::{Context as _, bail};
use ftp_common::maps::InterfaceRole;

/// An interface to attach to and what it faces.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub role: InterfaceRole,
}

impl Interface {
    /// Resolves `name` in the current network namespace; `flag` names the option it came from.
    pub fn resolve(name: &str, role: InterfaceRole, flag: &str) -> anyhow::Result<Self> {
        let Some(ifindex) =
            ifindex_of(name).with_context(|| format!("looking up interface '{name}' ({flag})"))?
        else {
            bail!(
                "interface '{name}' ({flag}) does not exist in this network namespace; \
                 list the interfaces with `ip link` and pass an existing one"
            );
        };
        Ok(Self {
            name: name.to_owned(),
            ifindex,
            role,
        })
    }
}

/// The index of the interface named `name`, `None` if there is none in this network namespace.
pub fn ifindex_of(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => match io::Error::last_os_error() {
            err if err.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            err => Err(err),
        },
        ifindex => Ok(Some(ifindex)),
    }
}

/// Whether an interface with index `ifindex` exists in this network namespace.
pub fn ifindex_exists(ifindex: u32) -> io::Result<bool> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO | libc::ENODEV) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(true)
}
