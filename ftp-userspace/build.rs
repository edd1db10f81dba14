//! Builds the eBPF object (nightly, `-Z build-std=core`, bpf-linker, BTF) into OUT_DIR so that
//! `main.rs` can embed it: the agent is one self-contained binary.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ftp-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ftp-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF object failed: run `cargo xtask setup` to install the nightly rust-src component and bpf-linker")
}
