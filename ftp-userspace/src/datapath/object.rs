//! The eBPF object embedded in the binary, and what is said when the kernel refuses a program or
//! the object lacks a program or map by name.

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier},
};

/// The object built from ftp-ebpf, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftp-ebpf"));

/// How many lines of the verifier's log to show when it rejects a program: the reason is at the end.
const VERIFIER_LOG_TAIL_LINES: usize = 30;

/// The error for a map the code names but the embedded object lacks (a build out of step with
/// ftp-common's names).
pub fn missing_map(name: &str) -> anyhow::Error {
    anyhow!("map {name} is missing from the embedded object")
}

/// The program `program` of the loaded object, as the TC classifier every ftpnat program is.
pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &str,
) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(program)
        .ok_or_else(|| anyhow!("program {program} is missing from the embedded object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a TC classifier"))
}

pub fn explain_load_error(program: &str, err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!(verifier_rejection(
            program,
            &io_error,
            &verifier_log.to_string()
        )),
        other => anyhow::Error::new(other).context(format!("loading program {program}")),
    }
}

/// The operator's message for a program the verifier refused: the reason is at the end of its log,
/// so only the last [`VERIFIER_LOG_TAIL_LINES`] lines are shown, and said to be the verifier's.
fn verifier_rejection(program: &str, io_error: &std::io::Error, log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(VERIFIER_LOG_TAIL_LINES)..];
    format!(
        "the kernel's verifier rejected program {program} ({io_error}); last {} lines of its \
         log:\n{}",
        tail.len(),
        tail.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel declares its maps in ftp-ebpf and ftp-common describes them for the pin-dir check
    /// and the inspection commands: the embedded object must agree with every pinned table's shape,
    /// or a pin would be reused (or read) with the wrong layout.
    #[test]
    fn the_embedded_object_declares_every_pinned_table_as_ftp_common_describes_it() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        for table in ftp_common::maps::PINNED {
            let map = object
                .maps
                .get(table.name)
                .unwrap_or_else(|| panic!("the object declares no map {}", table.name));
            assert_eq!(
                (map.key_size() as usize, map.value_size() as usize),
                (table.key_size, table.value_size),
                "map {}: (key, value) sizes in the object vs in ftp-common",
                table.name
            );
        }
    }

    fn denied() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EACCES)
    }

    #[test]
    fn verifier_rejection_shows_only_the_end_of_a_long_log() {
        let log: String = (1..=100).map(|n| format!("insn {n}\n")).collect();
        let message = verifier_rejection("ftpnat_ingress", &denied(), &log);
        let (headline, tail) = message.split_once('\n').expect("a headline, then the log");
        assert!(
            headline.starts_with("the kernel's verifier rejected program ftpnat_ingress ("),
            "{headline}"
        );
        assert!(headline.contains("Permission denied"), "{headline}");
        assert!(
            headline.ends_with(&format!("last {VERIFIER_LOG_TAIL_LINES} lines of its log:")),
            "{headline}"
        );
        let shown: Vec<&str> = tail.lines().collect();
        let expected: Vec<String> = (100 - VERIFIER_LOG_TAIL_LINES + 1..=100)
            .map(|n| format!("insn {n}"))
            .collect();
        assert_eq!(shown, expected);
    }

    #[test]
    fn verifier_rejection_shows_a_short_log_whole() {
        let message = verifier_rejection(
            "ftpnat_egress",
            &denied(),
            "0: R1=ctx() R10=fp0\nR2 pointer arithmetic prohibited\n",
        );
        assert!(
            message.ends_with(
                "last 2 lines of its log:\n0: R1=ctx() R10=fp0\nR2 pointer arithmetic prohibited"
            ),
            "{message}"
        );
    }
}
