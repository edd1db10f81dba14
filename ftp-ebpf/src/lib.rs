//! Present only so the crate has a library target that ftp-userspace can name as a
//! build-dependency: that makes cargo rebuild the agent (and re-embed the object) whenever the
//! eBPF sources change. The programs themselves are in `main.rs`.
#![no_std]
