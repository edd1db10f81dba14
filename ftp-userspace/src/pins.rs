//! The pin directory: where the maps live on bpffs so that other processes (`ftpnat stats`) can
//! read them while the agent runs.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use ftp_common::maps::names;

/// `BPF_FS_MAGIC` from linux/magic.h: the `f_type` statfs reports for a bpffs mount.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// Maps the agent pins, by name; the inspection commands open exactly these.
pub const PINNED_MAPS: [&str; 10] = [
    names::SESSIONS,
    names::EXPECTS,
    names::TRAFFIC,
    names::INTERFACES,
    names::CONFIG,
    names::MASQUERADE,
    names::FLOWS,
    names::FREE_PORTS,
    names::COUNTERS,
    names::PUBLISH,
];

/// Checks that `pin_dir` is (or would be created) on a bpffs mount, before anything is loaded.
pub fn require_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    if !pin_dir.is_absolute() {
        bail!(
            "--pin-dir {} is relative; give an absolute path on a bpffs mount",
            pin_dir.display()
        );
    }
    // The pin dir itself may not exist yet: check the nearest existing ancestor.
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if filesystem_magic(existing)? != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpffs mount, so maps cannot be pinned there; mount one with \
             `mount -t bpf bpf {}` or pass --pin-dir DIR on an existing bpffs",
            existing.display(),
            if existing == Path::new("/") || existing == Path::new("/sys/fs") {
                "/sys/fs/bpf".to_owned()
            } else {
                existing.display().to_string()
            }
        );
    }
    Ok(())
}

fn filesystem_magic(path: &Path) -> anyhow::Result<libc::c_long> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: `statfs` is plain old data, so all-zero is a valid value for the kernel to overwrite.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type)
}

/// Paths of our pins that exist under `pin_dir`.
pub fn existing_pins(pin_dir: &Path) -> Vec<PathBuf> {
    PINNED_MAPS
        .iter()
        .map(|name| pin_dir.join(name))
        .filter(|path| path.exists())
        .collect()
}

/// Removes our pins and then the directory if that leaves it empty. Anything else in the directory
/// is not ours and stays.
pub fn remove_pins(pin_dir: &Path) -> anyhow::Result<()> {
    for path in existing_pins(pin_dir) {
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => {
            log::warn!(
                "left {} in place: it holds files ftpnat did not create",
                pin_dir.display()
            );
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("removing {}", pin_dir.display())),
    }
}
