//! `cargo xtask test`: unit tests, then the lab's integration tests; a closing `N passed, M failed`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{HOST_PACKAGES, build, workspace_root};

/// Integration tests run two at a time: each has its own namespaces, so they cannot collide, and
/// two matches the CI machine's cores.
const LAB_TEST_THREADS: &str = "2";

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failed_suites: Vec<String>,
}

pub fn run() -> anyhow::Result<()> {
    let mut tally = Tally::default();
    let namespaces_before = lab_namespaces()?;

    println!("xtask test: unit tests");
    cargo_test(&mut tally, "unit tests", &HOST_PACKAGES, &[], &[])?;

    println!("xtask test: integration tests (netns lab)");
    let binary = build(false)?;
    cargo_test(
        &mut tally,
        "integration tests",
        &["--package", "ftpnat-tests"],
        &["--test-threads", LAB_TEST_THREADS],
        &[("FTPNAT_BIN", binary.to_string_lossy().as_ref())],
    )?;

    let leftovers: Vec<String> = lab_namespaces()?
        .into_iter()
        .filter(|ns| !namespaces_before.contains(ns))
        .collect();
    if !leftovers.is_empty() {
        tally.failed += 1;
        tally.failed_suites.push(format!(
            "cleanup: namespaces left behind: {}",
            leftovers.join(" ")
        ));
    }

    for suite in &tally.failed_suites {
        eprintln!("xtask test: FAILED: {suite}");
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 || !tally.failed_suites.is_empty() {
        bail!("tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output and adding its `test result:` lines to the tally.
fn cargo_test(
    tally: &mut Tally,
    suite: &str,
    cargo_args: &[&str],
    harness_args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root())
        .arg("test")
        // Every suite runs and is counted, even after one fails.
        .arg("--no-fail-fast")
        .args(cargo_args)
        .arg("--")
        .args(harness_args)
        .stdout(Stdio::piped());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut counted_any = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((passed, failed)) = parse_result_line(&line) {
            tally.passed += passed;
            tally.failed += failed;
            counted_any = true;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        // A build failure or a crashed harness reports no failed test; count it as one.
        if !counted_any || tally.failed == 0 {
            tally.failed += 1;
        }
        tally.failed_suites.push(format!("{suite} ({status})"));
    }
    Ok(())
}

/// Reads `test result: ok. 12 passed; 0 failed; …` into (12, 0).
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut passed = None;
    let mut failed = None;
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let label = words.next()?;
        let count = words.next().and_then(|n| n.parse().ok());
        match label {
            "passed" => passed = count,
            "failed" => failed = count,
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// Namespaces the lab creates (`ftpnat-<pid>-<n>-<role>`).
fn lab_namespaces() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("ftpnat-"))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::parse_result_line;

    #[test]
    fn reads_passing_and_failing_result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured"),
            Some((3, 2))
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_result_line("test foo ... ok"), None);
        assert_eq!(parse_result_line("running 3 tests"), None);
    }
}
