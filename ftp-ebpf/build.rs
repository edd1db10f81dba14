//! Rebuild the object when bpf-linker changes: cargo does not track the linker binary itself,
//! and an object linked by an older linker can carry BTF the kernel rejects.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
