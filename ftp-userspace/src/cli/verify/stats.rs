//! The verifier's own account of a program it accepted: the statistics it writes at the end of
//! its log (`BPF_LOG_STATS`) — peak and total states, stack depth per frame, its own timing.
//!
//! aya 0.14 keeps no log of a load that succeeds (it asks for one only to explain a refusal), so
//! this loads each program a second time itself, from the same object with the same relocations:
//! aya-obj parses and links it, the maps are created by aya from the object's definitions (data
//! sections filled and `.rodata` frozen as aya does, since the verifier prunes on frozen values),
//! and `BPF_PROG_LOAD` is called with a log buffer at the statistics level.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, anyhow};
use aya::maps::MapData;
use aya_obj::{
    EbpfSectionKind, Object,
    generated::{bpf_attr, bpf_cmd, bpf_prog_type},
};

/// What the verifier's closing lines say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub processed_insns: Option<u32>,
    pub peak_states: Option<u32>,
    pub total_states: Option<u32>,
    /// One figure per frame, as the verifier prints it (`112+0+160`).
    pub stack_depth: Option<String>,
    pub verification_us: Option<u64>,
}

/// Reads the statistics from the end of a verifier log.
pub fn parse(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("verification time ") {
            stats.verification_us = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("stack depth ") {
            stats.stack_depth = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("processed ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            stats.processed_insns = words.first().and_then(|n| n.parse().ok());
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|n| n.parse().ok())
            };
            stats.peak_states = after("peak_states");
            stats.total_states = after("total_states");
        }
    }
    stats
}

/// The globals the programs are loaded with (name, value), as [`super`] passes them to aya.
pub type Globals<'a> = &'a [(&'a str, &'a [u8])];

/// Loads every program of `object` with a statistics log; its parsed statistics by program name.
pub fn of_every_program(
    object: &[u8],
    globals: Globals<'_>,
) -> anyhow::Result<HashMap<String, Stats>> {
    let mut obj = Object::parse(object).context("parsing the eBPF object")?;
    obj.patch_map_data(
        globals
            .iter()
            .map(|(name, value)| (*name, (*value, true)))
            .collect(),
    )
    .context("setting the object's globals")?;
    let features = aya::features();
    let btf_fd = match features.btf() {
        Some(btf_features) => match obj.fixup_and_sanitize_btf(btf_features)? {
            Some(btf) => Some(load_btf(&btf.to_bytes())?),
            None => None,
        },
        None => None,
    };
    let mut maps = Vec::new();
    for (name, map) in &obj.maps {
        let mut data = MapData::create(map.clone(), name, btf_fd.as_ref().map(|fd| fd.as_fd()))
            .with_context(|| format!("creating map {name}"))?;
        fill_data_section(&mut data, map)
            .with_context(|| format!("filling the data of map {name}"))?;
        maps.push((name.clone(), data, map.clone()));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        maps.iter()
            .map(|(name, data, map)| (name.as_str(), data.fd().as_fd().as_raw_fd(), map)),
        &text_sections,
    )
    .context("relocating the object's map references")?;
    obj.relocate_calls(&text_sections)
        .context("relocating the object's calls")?;
    obj.sanitize_functions(features);

    let mut stats = HashMap::new();
    for (name, program) in &obj.programs {
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| anyhow!("program {name} has no code in the object"))?;
        let log = load_for_log(name, function, btf_fd.as_ref())?;
        stats.insert(name.clone(), parse(&log));
    }
    Ok(stats)
}

/// Writes a data section's initial bytes into its map and freezes `.rodata`, as aya does.
fn fill_data_section(data: &mut MapData, map: &aya_obj::Map) -> io::Result<()> {
    let fd = data.fd().as_fd().as_raw_fd();
    if !map.data().is_empty() {
        let key = 0u32;
        let value = map.data().to_vec();
        // SAFETY: plain old data; the pointers outlive the call.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_2.map_fd = fd as u32;
        attr.__bindgen_anon_2.key = (&raw const key) as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_ptr() as u64;
        bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr)?;
    }
    if map.section_kind() == EbpfSectionKind::Rodata {
        // SAFETY: as above.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_2.map_fd = fd as u32;
        bpf(bpf_cmd::BPF_MAP_FREEZE, &mut attr)?;
    }
    Ok(())
}

fn load_btf(bytes: &[u8]) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain old data; the pointer outlives the call.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_7.btf = bytes.as_ptr() as u64;
    attr.__bindgen_anon_7.btf_size = bytes.len() as u32;
    let fd = bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr).context("loading the object's BTF")?;
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads one program as a TC classifier with a statistics log, and returns the log.
fn load_for_log(
    name: &str,
    function: &aya_obj::Function,
    btf_fd: Option<&OwnedFd>,
) -> anyhow::Result<String> {
    /// `BPF_LOG_STATS`: only the closing statistics.
    const LOG_LEVEL_STATS: u32 = 4;
    let license = CString::new("GPL")?;
    let mut log = vec![0u8; 64 * 1024];
    // SAFETY: plain old data; every pointer set below outlives the call.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the zeroed union's program-load member, the one BPF_PROG_LOAD reads.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS as u32;
    load.insns = function.instructions.as_ptr() as u64;
    load.insn_cnt = function.instructions.len() as u32;
    load.license = license.as_ptr() as u64;
    load.log_level = LOG_LEVEL_STATS;
    load.log_buf = log.as_mut_ptr() as u64;
    load.log_size = log.len() as u32;
    for (slot, byte) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte as libc::c_char;
    }
    if let Some(btf_fd) = btf_fd {
        load.prog_btf_fd = btf_fd.as_raw_fd() as u32;
        if !function.func_info.func_info.is_empty() {
            load.func_info_rec_size = function.func_info_rec_size as u32;
            load.func_info = function.func_info.func_info.as_ptr() as u64;
            load.func_info_cnt = function.func_info.func_info.len() as u32;
        }
        if !function.line_info.line_info.is_empty() {
            load.line_info_rec_size = function.line_info_rec_size as u32;
            load.line_info = function.line_info.line_info.as_ptr() as u64;
            load.line_info_cnt = function.line_info.line_info.len() as u32;
        }
    }
    let loaded = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).into_owned();
    match loaded {
        Ok(fd) => {
            // SAFETY: a descriptor the kernel just returned; closed here, the figures are read.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(text)
        }
        // A refusal's statistics are in its log too.
        Err(_) => Ok(text),
    }
}

/// The `bpf()` system call; its non-negative result (a descriptor or 0).
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i32> {
    // SAFETY: `attr` is a valid bpf_attr whose pointers the caller keeps alive.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_statistics_are_read() {
        let log = "func#0 @0\nverification time 3439427 usec\nstack depth 112+0+160+160+0\n\
                   processed 1000001 insns (limit 1000000) max_states_per_insn 69 total_states \
                   41954 peak_states 51094 mark_read 0\n";
        assert_eq!(
            parse(log),
            Stats {
                processed_insns: Some(1_000_001),
                peak_states: Some(51_094),
                total_states: Some(41_954),
                stack_depth: Some("112+0+160+160+0".to_owned()),
                verification_us: Some(3_439_427),
            }
        );
    }

    #[test]
    fn a_log_without_statistics_gives_none() {
        assert_eq!(parse("R1 invalid mem access\n"), Stats::default());
    }
}
