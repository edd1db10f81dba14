//! Whole-table reads with the kernel's batch lookup (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): a
//! table of a million entries in a few hundred system calls, where aya's iterators make two per
//! entry (`get_next_key`, then a lookup). aya 0.14 has no API for it, so the call is made here on
//! the map's descriptor.
//!
//! A hash table is read bucket by bucket: each call returns whole buckets and a token (the next
//! bucket) for the next call; `ENOENT` says the last bucket was read (with entries still returned
//! by that call); `ENOSPC` says one bucket holds more entries than the buffer, which is then
//! enlarged. Entries added or removed during the read may be seen or not, as with an iterator.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Entries asked per call: few calls, buffers that stay small.
const CHUNK: usize = 4096;

/// Every entry of the hash table `fd` (keys `K`, values `V`), appended to `keys` and `values`,
/// which the kernel writes directly.
///
/// # Safety
///
/// The map's key and value sizes must be those of `K` and `V`: the kernel writes entries of its
/// sizes into room reserved for entries of theirs.
pub unsafe fn read_all<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
) -> io::Result<()> {
    let mut chunk = CHUNK;
    // A hash table's token is its next bucket's index (a u32); room for any map's.
    let mut token = [0u64; 2];
    let mut first = true;
    loop {
        keys.reserve(chunk);
        values.reserve(chunk);
        // SAFETY: bpf_attr is a union of plain integers.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch.in_batch = if first { 0 } else { token.as_ptr() as u64 };
        attr.batch.out_batch = token.as_mut_ptr() as u64;
        attr.batch.keys = keys.spare_capacity_mut().as_mut_ptr() as u64;
        attr.batch.values = values.spare_capacity_mut().as_mut_ptr() as u64;
        attr.batch.count = chunk as u32;
        attr.batch.map_fd = fd.as_raw_fd() as u32;
        // SAFETY: the attribute points at room for `chunk` keys and values (reserved above) and
        // at the token, all alive for the call; the kernel writes no more than that.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        // SAFETY: reading back the count the kernel wrote (it writes it on ENOENT too).
        let count = (unsafe { attr.batch.count } as usize).min(chunk);
        // SAFETY: the kernel wrote `count` whole keys and values into the reserved room; Pod
        // types have no invalid bit patterns.
        unsafe {
            keys.set_len(keys.len() + count);
            values.set_len(values.len() + count);
        }
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more entries than `chunk`: the token still names it.
            Some(libc::ENOSPC) => chunk *= 2,
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        first = false;
    }
}
