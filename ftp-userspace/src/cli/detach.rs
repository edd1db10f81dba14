//! `ftpnat detach`: removes the datapath a stopped agent left pinned and attached.

use std::{fs, path::Path};

use crate::datapath::{self, pins};

pub fn run(pin_dir: &Path) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        println!("nothing to detach: {} does not exist", pin_dir.display());
        return Ok(());
    }
    let _lock = pins::lock(pin_dir)?;
    let removed = pins::remove_state(pin_dir, true)?;
    datapath::await_detached(&removed.hooks)?;
    // The lock's release removes the pin dir if this emptied it.
    if fs::read_dir(pin_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        log::warn!(
            "leaving {} in place: it holds files ftpnat did not create",
            pin_dir.display()
        );
    }
    let attachments = match (removed.links, removed.filters) {
        (links, 0) => format!("{links} links"),
        (0, filters) => format!("{filters} TC filters"),
        (links, filters) => format!("{links} links and {filters} TC filters"),
    };
    println!(
        "removed {attachments} (their programs are detached) and {} maps under {}",
        removed.maps,
        pin_dir.display()
    );
    Ok(())
}
