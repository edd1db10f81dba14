//! What attaches the pinned datapath's programs, as the state dir records it: TCX link pins
//! (`link-<interface>-<hook>`) and classic TC filter records (`filter-<interface>-<hook>`), their
//! names and what a filter record says.

use std::{
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The pin of the TCX link attaching a program to `interface` at `hook`.
pub fn link_pin(state_dir: &Path, interface: &str, hook: &str) -> PathBuf {
    state_dir.join(format!("{LINK_PREFIX}{interface}-{hook}"))
}

/// The record of the classic TC filter attaching a program to `interface` at `hook`.
pub fn filter_record(state_dir: &Path, interface: &str, hook: &str) -> PathBuf {
    state_dir.join(format!("{FILTER_PREFIX}{interface}-{hook}"))
}

const LINK_PREFIX: &str = "link-";

const FILTER_PREFIX: &str = "filter-";

/// TCX link pins present in the state dir.
pub fn existing_links(state_dir: &Path) -> Vec<PathBuf> {
    entries_named(state_dir, LINK_PREFIX)
}

/// Classic TC filter records present in the state dir.
pub fn existing_filter_records(state_dir: &Path) -> Vec<PathBuf> {
    entries_named(state_dir, FILTER_PREFIX)
}

/// What attaches the pinned datapath's programs, whichever the mechanism: link pins and filter
/// records.
pub fn existing_attachments(state_dir: &Path) -> Vec<PathBuf> {
    let mut found = existing_links(state_dir);
    found.extend(existing_filter_records(state_dir));
    found.sort();
    found
}

/// Entries of `dir` whose names start with `prefix`, sorted.
fn entries_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().as_bytes().starts_with(prefix.as_bytes()))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

/// Where a classic TC filter of the datapath is. A filter is no kernel object that can be pinned
/// (the kernel holds its program as long as the filter exists, agent or not), and bpffs holds no
/// regular files, so the record is a symbolic link whose target says it, in tc's words:
/// `ifindex 7 pref 49152 handle 0x1`. The index tells the device the filter was made on from one
/// created again under its name, which has none of its filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterRecord {
    pub ifindex: u32,
    pub priority: u16,
    pub handle: u32,
}

impl FilterRecord {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::os::unix::fs::symlink(self.to_string(), path)
            .with_context(|| format!("recording the filter at {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let target = fs::read_link(path)
            .with_context(|| format!("reading the filter record {}", path.display()))?;
        let text = target.to_string_lossy();
        text.parse().with_context(|| {
            format!(
                "{} records no filter ('{text}' is not 'ifindex N pref N handle 0xN')",
                path.display()
            )
        })
    }
}

impl std::fmt::Display for FilterRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ifindex {} pref {} handle {:#x}",
            self.ifindex, self.priority, self.handle
        )
    }
}

impl std::str::FromStr for FilterRecord {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let words: Vec<&str> = text.split(' ').collect();
        let ["ifindex", ifindex, "pref", priority, "handle", handle] = words[..] else {
            bail!("not a filter record");
        };
        let handle = handle
            .strip_prefix("0x")
            .context("the handle is not hexadecimal")?;
        Ok(Self {
            ifindex: ifindex.parse()?,
            priority: priority.parse()?,
            handle: u32::from_str_radix(handle, 16)?,
        })
    }
}

/// An interface and TC hook (`ingress`/`egress`) the pinned datapath attaches a program to, as a
/// link pin's or filter record's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedHook {
    pub interface: String,
    pub hook: String,
}

impl PinnedHook {
    /// The hook named by a link pin (`link-<interface>-<hook>`) or a filter record
    /// (`filter-<interface>-<hook>`); interface names may hold `-`.
    pub fn of_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let name = name
            .strip_prefix(LINK_PREFIX)
            .or_else(|| name.strip_prefix(FILTER_PREFIX))?;
        let (interface, hook) = name.rsplit_once('-')?;
        Some(Self {
            interface: interface.to_owned(),
            hook: hook.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_pin_or_filter_record_names_its_interface_and_hook() {
        let state = Path::new("/sys/fs/bpf/ftpnat/v3");
        let expected = Some(PinnedHook {
            interface: "eth-wan.7".to_owned(),
            hook: "egress".to_owned(),
        });
        assert_eq!(
            PinnedHook::of_path(&link_pin(state, "eth-wan.7", "egress")),
            expected
        );
        assert_eq!(
            PinnedHook::of_path(&filter_record(state, "eth-wan.7", "egress")),
            expected
        );
        assert_eq!(PinnedHook::of_path(&state.join("sessions")), None);
    }

    #[test]
    fn a_filter_record_reads_back_what_was_written() {
        let record = FilterRecord {
            ifindex: 7,
            priority: 49152,
            handle: 0x8000_0001,
        };
        assert_eq!(record.to_string(), "ifindex 7 pref 49152 handle 0x80000001");
        assert_eq!(record.to_string().parse::<FilterRecord>().unwrap(), record);
        for bad in [
            "ifindex 7 pref 49152 handle 1",
            "ifindex 7 pref 70000 handle 0x1",
            "pref 49152 handle 0x1",
            "../v2/sessions",
        ] {
            assert!(bad.parse::<FilterRecord>().is_err(), "{bad} was accepted");
        }
    }
}
