//! The pin directory: where the datapath lives on bpffs, so that it outlives the agent and other
//! processes (`ftpnat stats`) can read it.
//!
//! Layout: `<pin-dir>/v<STATE_LAYOUT_VERSION>/` holds the maps (pinned by name) and what attaches
//! the programs: TCX links (`link-<interface>-<hook>`), or, on kernels without TCX, records of the
//! classic TC filters (`filter-<interface>-<hook>`, see [`FilterRecord`]). A pinned link, like a
//! filter, keeps its program attached when the agent exits or is killed, and a new agent adopts
//! the datapath, maps and all, through the same mechanism. The version names the
//! layout of the pinned maps: an agent never reuses maps laid out by another version. The pin
//! directory itself is flock'ed by whoever manages it (`ftpnat run`, `ftpnat detach`), so two
//! never manage one datapath at once.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use ftp_common::maps::{PINNED, Table};

use super::{
    classic_tc,
    records::{FilterRecord, PinnedHook, existing_filter_records, existing_links},
};

/// `BPF_FS_MAGIC` from linux/magic.h: the `f_type` statfs reports for a bpffs mount.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// The layout of the pinned maps (their key and value types and sizes). Bump it with any change to
/// a pinned map's definition: pins of another layout are refused, never reused.
/// (Layout 1 pinned the maps directly in the pin dir, without links.)
pub const STATE_LAYOUT_VERSION: u32 = 8;

/// The running agent's record of its event socket's name in the pin dir (see
/// `agent::events::server`); gone with the agent (its lock).
pub const EVENT_SOCKET_RECORD: &str = "events-socket";

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

/// Refuses pinned maps whose key or value size is not this build's: maps of another build under
/// the same layout version would be reused and misread (a forgotten version bump, a downgrade).
pub fn refuse_foreign_shapes(pin_dir: &Path) -> anyhow::Result<()> {
    let state = state_dir(pin_dir);
    for Table {
        name,
        key_size: key,
        value_size: value,
    } in PINNED
    {
        let path = state.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let pinned = (info.key_size() as usize, info.value_size() as usize);
        if pinned != (key, value) {
            bail!(
                "{} was pinned by another ftpnat build (key/value {}/{} bytes; this one uses \
                 {key}/{value}), which this one cannot reuse; remove that datapath with `ftpnat \
                 detach --pin-dir {}` (this ends the transfers it carries), then start again",
                path.display(),
                pinned.0,
                pinned.1,
                pin_dir.display()
            );
        }
    }
    Ok(())
}

/// Where the current layout's maps and links are pinned.
pub fn state_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{STATE_LAYOUT_VERSION}"))
}

/// Map pins present in the state dir.
pub fn existing_maps(state_dir: &Path) -> Vec<PathBuf> {
    PINNED
        .iter()
        .map(|table| state_dir.join(table.name))
        .filter(|path| path.exists())
        .collect()
}

/// State of other layouts in the pin dir: `v<N>` directories of other versions, and the maps of
/// layout 1 pinned directly in it.
pub fn foreign_state(pin_dir: &Path) -> Vec<PathBuf> {
    let current = format!("v{STATE_LAYOUT_VERSION}");
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let versioned = name.len() > 1
                && name.starts_with('v')
                && name[1..].bytes().all(|b| b.is_ascii_digit());
            (versioned && name != current) || PINNED.iter().any(|table| table.name == name)
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

/// Refuses a pin dir that holds state of another layout, with the way out.
pub fn refuse_foreign_state(pin_dir: &Path) -> anyhow::Result<()> {
    let foreign = foreign_state(pin_dir);
    if !foreign.is_empty() {
        bail!(
            "{} holds the datapath of another ftpnat version ({}), which this one cannot reuse; \
             remove it with `ftpnat detach --pin-dir {}` (this detaches its programs and ends \
             the transfers it carries), then start again",
            pin_dir.display(),
            foreign
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            pin_dir.display()
        );
    }
    Ok(())
}

/// An exclusive lock on the pin dir, held while managing its datapath; released on drop (and by
/// the kernel when the process dies, so a killed agent never blocks the next one).
pub struct PinDirLock {
    _dir: File,
    path: PathBuf,
}

impl Drop for PinDirLock {
    fn drop(&mut self) {
        // No agent serves events once the lock is let go (also when this is the lock of a detach
        // after an agent was killed): its record goes.
        let _ = fs::remove_file(self.path.join(EVENT_SOCKET_RECORD));
        // A pin dir left empty (a run refused after locking, a detach) is of no use to anyone;
        // one holding a datapath is not empty and stays.
        let _ = fs::remove_dir(&self.path);
    }
}

/// Creates the pin dir if needed and locks it, or explains who holds it.
pub fn lock(pin_dir: &Path) -> anyhow::Result<PinDirLock> {
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    let dir = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            bail!(
                "another ftpnat process (`ftpnat run` or `ftpnat detach`) manages --pin-dir {}; \
                 stop it first, or give this one another --pin-dir",
                pin_dir.display()
            );
        }
        return Err(err).with_context(|| format!("locking {}", pin_dir.display()));
    }
    Ok(PinDirLock {
        _dir: dir,
        path: pin_dir.to_owned(),
    })
}

/// What [`remove_state`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: usize,
    /// Classic TC filters deleted (or found gone with their interface) and their records removed.
    pub filters: usize,
    pub maps: usize,
    /// Where the removed links and filters attached programs (as their names say).
    pub hooks: Vec<PinnedHook>,
}

/// Removes the current layout's links (which detaches their programs once no process holds them)
/// and filters (deleting each from its interface, which detaches its program at once), then its
/// maps, then the state dir; with `foreign`, the state of other layouts too. The pin dir itself
/// stays: the caller holds its lock, which removes it when released if it is empty by then (an
/// agent attaching afresh after this keeps managing the same, still locked, directory).
pub fn remove_state(pin_dir: &Path, foreign: bool) -> anyhow::Result<Removed> {
    let mut removed = Removed::default();
    let mut dirs = vec![state_dir(pin_dir)];
    if foreign {
        for path in foreign_state(pin_dir) {
            if path.is_dir() {
                dirs.push(path);
            } else {
                fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
                removed.maps += 1;
            }
        }
    }
    for dir in &dirs {
        for path in existing_links(dir) {
            fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            removed.links += 1;
            removed.hooks.extend(PinnedHook::of_path(&path));
        }
        for path in existing_filter_records(dir) {
            let hook = PinnedHook::of_path(&path)
                .with_context(|| format!("{} names no interface and hook", path.display()))?;
            // The record goes only once its filter is gone: a detach that fails here can be run
            // again.
            classic_tc::delete_ftpnat_filter(&hook, &FilterRecord::read(&path)?)?;
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.filters += 1;
            removed.hooks.push(hook);
        }
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            removed.maps += 1;
        }
        fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use ftp_common::maps::flows;

    use super::*;

    /// The pins of the layout before the 16-byte addresses (v6), like every older layout's, are
    /// another version's state: refused, and removed by a detach.
    #[test]
    fn older_layouts_are_foreign_state() {
        let pin_dir = std::env::temp_dir().join(format!("ftpnat-pins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&pin_dir);
        for dir in [state_dir(&pin_dir), pin_dir.join("v6")] {
            fs::create_dir_all(dir).unwrap();
        }
        // Layout 1 pinned its maps in the pin dir itself; the event socket's record is no state.
        fs::write(pin_dir.join(flows::NAME), b"").unwrap();
        fs::write(pin_dir.join(EVENT_SOCKET_RECORD), b"").unwrap();
        let foreign = foreign_state(&pin_dir);
        let refusal = refuse_foreign_state(&pin_dir).map_err(|e| e.to_string());
        fs::remove_dir_all(&pin_dir).unwrap();
        assert_eq!(foreign, [pin_dir.join(flows::NAME), pin_dir.join("v6")]);
        assert!(
            refusal.is_err_and(|e| e.contains("ftpnat detach")),
            "refused with the way out"
        );
    }
}
