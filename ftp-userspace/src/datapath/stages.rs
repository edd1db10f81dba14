//! The ingress program's stages: loaded into this load's stage table, which is pinned so that it
//! outlives the agent (see DEVELOPERS.md, "Stages").

use std::{fs, io, path::Path};

use anyhow::Context as _;
use aya::{maps::ProgramArray, programs::ProgramError};
use ftp_common::maps::{names, programs};

use super::Datapath;

impl Datapath {
    /// Loads the ingress program's stages and fills this load's stage table with them.
    pub(super) fn load_stages(&mut self) -> anyhow::Result<()> {
        let mut loaded = Vec::new();
        for (slot, program) in programs::STAGES {
            self.load_program(program)?;
            let fd = self
                .classifier(program)?
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
                .with_context(|| format!("taking a descriptor of program {program}"))?;
            loaded.push((slot, program, fd));
        }
        let mut stages: ProgramArray<_> = ProgramArray::try_from(self.map_mut(names::STAGES)?)?;
        for (slot, program, fd) in &loaded {
            stages
                .set(*slot, fd, 0)
                .with_context(|| format!("putting {program} in the stage table"))?;
        }
        Ok(())
    }

    /// Pins this load's stage table in the state dir, in place of a previous agent's: a program
    /// array is emptied when nothing holds it any more, and the attached programs outlive the
    /// agent.
    pub(super) fn pin_stages(&mut self, state_dir: &Path) -> anyhow::Result<()> {
        let pin = state_dir.join(names::STAGES);
        match fs::remove_file(&pin) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("unpinning {}", pin.display())),
        }
        ProgramArray::try_from(self.map_mut(names::STAGES)?)?
            .pin(&pin)
            .with_context(|| format!("pinning the stage table at {}", pin.display()))
    }
}
