//! `cargo xtask verify`: loads every program of the built agent on the running kernel (`ftpnat
//! verify --json`) and holds each to its budget of the verifier's instruction limit. The kernel's
//! verifier changes under the project (a program that passed in November was refused in December
//! at the same object), so `cargo xtask test` runs this on every run: headroom is measured, not
//! assumed.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// One program's figures, as `ftpnat verify --json` reports them.
#[derive(Debug)]
pub struct ProgramFigures {
    pub program: String,
    pub loaded: bool,
    pub processed_insns: Option<u64>,
    pub insn_limit: u64,
    pub insn_budget: u64,
    pub verification_us: Option<u64>,
    pub peak_states: Option<u64>,
    pub stack_depth: Option<String>,
    pub xlated_bytes: Option<u64>,
    pub jited_bytes: Option<u64>,
    pub error: Option<String>,
}

impl ProgramFigures {
    /// Why the program fails its budget, or None if it loads within it.
    pub fn over_budget(&self) -> Option<String> {
        if !self.loaded {
            return Some(format!(
                "{} was refused by the verifier: {}",
                self.program,
                self.error.as_deref().unwrap_or("(no log)")
            ));
        }
        match self.processed_insns {
            Some(n) if n <= self.insn_budget => None,
            Some(n) => Some(format!(
                "{} took {n} processed instructions, over its budget of {} ({}% of the limit \
                 {}): split its work into another stage (DEVELOPERS.md, eBPF rules)",
                self.program,
                self.insn_budget,
                self.insn_budget * 100 / self.insn_limit,
                self.insn_limit
            )),
            None => Some(format!(
                "{}: the kernel did not report its processed instructions (Linux < 5.16)",
                self.program
            )),
        }
    }
}

pub fn run(release: bool) -> anyhow::Result<()> {
    let binary = crate::build(release)?;
    let figures = measure(&binary)?;
    print_table(&figures);
    let over: Vec<String> = figures
        .iter()
        .filter_map(ProgramFigures::over_budget)
        .collect();
    if !over.is_empty() {
        bail!("{}", over.join("\n"));
    }
    Ok(())
}

/// Runs `ftpnat verify --json` and reads its report.
pub fn measure(binary: &Path) -> anyhow::Result<Vec<ProgramFigures>> {
    let output = Command::new(binary)
        .args(["verify", "--json"])
        .output()
        .with_context(|| format!("running {} verify", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // A refused program still gets its row (and a non-zero exit): the JSON is read either way.
    let report: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "`ftpnat verify --json` printed no report ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    parse(&report)
}

pub fn parse(report: &Value) -> anyhow::Result<Vec<ProgramFigures>> {
    let rows = report
        .as_array()
        .context("`ftpnat verify --json` did not print an array")?;
    rows.iter()
        .map(|row| {
            let number = |key: &str| row.get(key).and_then(Value::as_u64);
            Ok(ProgramFigures {
                program: row
                    .get("program")
                    .and_then(Value::as_str)
                    .context("a row without a program name")?
                    .to_owned(),
                loaded: row.get("loaded").and_then(Value::as_bool).unwrap_or(false),
                processed_insns: number("processed_insns"),
                insn_limit: number("insn_limit").context("a row without insn_limit")?,
                insn_budget: number("insn_budget").context("a row without insn_budget")?,
                verification_us: number("verification_us"),
                peak_states: number("peak_states"),
                stack_depth: row
                    .get("stack_depth")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                xlated_bytes: number("xlated_bytes"),
                jited_bytes: number("jited_bytes"),
                error: row.get("error").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect()
}

fn print_table(figures: &[ProgramFigures]) {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("xtask verify: kernel {kernel}");
    println!(
        "{:<24} {:>10} {:>7} {:>7} {:>8} {:>10} {:>8} {:>8}  stack bytes per subprogram",
        "program", "processed", "limit", "budget", "peak st.", "time", "xlated", "jited"
    );
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for f in figures {
        let share = |of: u64| {
            f.processed_insns.map_or_else(
                || "-".to_owned(),
                |n| format!("{:.1}%", n as f64 * 100.0 / of as f64),
            )
        };
        let time = f.verification_us.map_or_else(
            || "-".to_owned(),
            |us| format!("{:.1} ms", us as f64 / 1000.0),
        );
        println!(
            "{:<24} {:>10} {:>7} {:>7} {:>8} {:>10} {:>8} {:>8}  {}{}",
            f.program,
            show(f.processed_insns),
            share(f.insn_limit),
            share(f.insn_budget),
            show(f.peak_states),
            time,
            show(f.xlated_bytes),
            show(f.jited_bytes),
            f.stack_depth.as_deref().unwrap_or("-"),
            if f.loaded { "" } else { "  REFUSED" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(loaded: bool, processed: Option<u64>) -> ProgramFigures {
        ProgramFigures {
            program: "ftpnat_client".to_owned(),
            loaded,
            processed_insns: processed,
            insn_limit: 1_000_000,
            insn_budget: 250_000,
            verification_us: Some(1),
            peak_states: None,
            stack_depth: None,
            xlated_bytes: None,
            jited_bytes: None,
            error: (!loaded).then(|| "R1 invalid".to_owned()),
        }
    }

    #[test]
    fn a_program_is_held_to_its_budget_and_named_when_over() {
        assert_eq!(figures(true, Some(250_000)).over_budget(), None);
        let over = figures(true, Some(250_001)).over_budget().unwrap();
        assert!(over.starts_with("ftpnat_client took 250001"), "{over}");
        let refused = figures(false, None).over_budget().unwrap();
        assert!(
            refused.contains("refused") && refused.contains("R1 invalid"),
            "{refused}"
        );
        assert!(figures(true, None).over_budget().is_some());
    }

    #[test]
    fn the_agents_report_is_read() {
        let report: Value = serde_json::from_str(
            r#"[{"program":"ftpnat_ingress","loaded":true,"processed_insns":5144,
                "insn_limit":1000000,"insn_budget":250000,"verification_us":3900,
                "xlated_bytes":10304,"jited_bytes":6109,"error":null}]"#,
        )
        .unwrap();
        let rows = parse(&report).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].processed_insns, Some(5144));
        assert_eq!(rows[0].over_budget(), None);
    }
}
