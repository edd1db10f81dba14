//! Files to transfer, and their digests: every transfer in the lab is checked by sha256.

use std::{
    fs::File,
    io::{BufWriter, Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

/// A mebibyte, the unit the tests size their files in.
pub const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct TestFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl TestFile {
    /// Writes `size` bytes of pseudo-random content (seeded, so it does not compress and no two
    /// seeds give the same file) and records its digest.
    pub fn create(path: &Path, size: u64, seed: u64) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        // xorshift64*: fast, and good enough to defeat compression.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut block = vec![0u8; 1 << 16];
        let mut left = size;
        while left > 0 {
            for chunk in block.chunks_exact_mut(8) {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            let n = usize::try_from(left.min(block.len() as u64))?;
            out.write_all(&block[..n])?;
            hasher.update(&block[..n]);
            left -= n as u64;
        }
        out.flush()?;
        Ok(Self {
            path: path.to_owned(),
            size,
            sha256: hex(&hasher.finalize()),
        })
    }

    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }
}

pub fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Panics unless `path` holds exactly `expected`'s content.
pub fn assert_same_content(path: &Path, expected: &TestFile) {
    let got = sha256_of(path).unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(
        got,
        expected.sha256,
        "{} differs from {} (sizes {} vs {})",
        path.display(),
        expected.path.display(),
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        expected.size
    );
}
