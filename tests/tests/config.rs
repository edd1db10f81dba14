//! Issue 6: `ftpnat run --config FILE`. A mistake in the file is refused, naming the file and the
//! key, before anything is attached; the file's settings behave exactly like the same flags, and
//! a flag given on the command line overrides its key.

use std::path::{Path, PathBuf};

use ftpnat_tests::{
    Agent, Lab, LabSpec,
    agent::ftpnat_bin,
    lab::{ROUTER_LAN_IF, ROUTER_WAN_IF},
};
use serde_json::Value;

/// A lab without captures: these tests look at the agent, not at packets.
fn quiet_lab() -> Lab {
    Lab::new(LabSpec {
        capture: false,
        ..LabSpec::default()
    })
    .expect("lab")
}

/// Writes a config file for the lab's router (its interfaces and pin dir, then `settings`).
fn write_config(lab: &Lab, name: &str, settings: &str) -> PathBuf {
    let pin_dir = lab.pin_dir().expect("pin dir");
    let path = lab.dir().join(name);
    std::fs::write(
        &path,
        format!(
            "wan = \"{ROUTER_WAN_IF}\"\nlan = [\"{ROUTER_LAN_IF}\"]\npin_dir = \"{}\"\n{settings}",
            pin_dir.display()
        ),
    )
    .expect("writing the config file");
    path
}

fn start_with_config(lab: &Lab, config: &Path, extra_args: &[&str]) -> Agent {
    let mut args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        config.to_string_lossy().into_owned(),
    ];
    args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
    Agent::start(lab, &args).expect("ftpnat run --config")
}

/// The port window `ftpnat stats` reports: its range and size.
fn stats_window(lab: &Lab) -> (String, u64) {
    let out = lab.ftpnat(&["stats", "--json"]).expect("ftpnat stats");
    assert!(
        out.status.success(),
        "ftpnat stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    (
        stats["window"]["range"]
            .as_str()
            .expect("window range")
            .to_owned(),
        stats["window"]["size"].as_u64().expect("window size"),
    )
}

/// What the agent's log says it does with the settings, without the timestamps.
fn settings_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|line| {
            ["masquerading", "publishing"]
                .iter()
                .find_map(|word| line.find(word).map(|at| &line[at..]))
        })
        .collect()
}

/// Stops the agent and removes its datapath, so that the next run starts afresh with its own
/// settings instead of being refused the running datapath's.
fn stop(lab: &Lab, agent: &mut Agent) -> String {
    let (status, log) = agent.stop().expect("stop");
    assert!(status.success(), "agent exited with {status}:\n{log}");
    lab.detach();
    log
}

#[test]
fn a_typo_in_the_config_file_is_refused_by_name_and_nothing_is_attached() {
    let lab = quiet_lab();
    let config = write_config(&lab, "typo.toml", "port_windw = \"62000-62009\"\n");
    let out = lab
        .in_router(
            &ftpnat_bin().expect("ftpnat binary").to_string_lossy(),
            &["run", "--config", &config.to_string_lossy()],
        )
        .output()
        .expect("ftpnat run --config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    let expected = format!(
        "{}: unknown key 'port_windw' (known keys: ",
        config.display()
    );
    assert!(
        stderr.contains(&expected) && stderr.contains("port_window"),
        "{stderr}"
    );
    for iface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
        assert!(
            lab.router_tc_programs(iface).unwrap().is_empty(),
            "{iface} has programs attached"
        );
    }
    assert!(!lab.pin_dir().unwrap().exists(), "pins left behind");
}

#[test]
fn a_config_file_behaves_like_the_same_flags_and_flags_override_it() {
    let lab = quiet_lab();

    let mut agent = lab
        .start_ftpnat(&[
            "--port-window",
            "62000-62009",
            "--expect-timeout",
            "7",
            "--publish",
            "2121=10.0.0.2:21",
        ])
        .expect("ftpnat run with flags");
    let flags_window = stats_window(&lab);
    let flags_log = stop(&lab, &mut agent);
    assert_eq!(flags_window, ("62000-62009".to_owned(), 10));

    let config = write_config(
        &lab,
        "ftpnat.toml",
        "port_window = \"62000-62009\"\nexpect_timeout = 7\npublish = [\"2121=10.0.0.2:21\"]\n",
    );
    let mut agent = start_with_config(&lab, &config, &[]);
    let file_window = stats_window(&lab);
    let file_log = stop(&lab, &mut agent);
    assert_eq!(file_window, flags_window);
    let said = settings_lines(&flags_log);
    assert!(
        said.iter().any(|line| line.starts_with("masquerading"))
            && said.iter().any(|line| line.starts_with("publishing")),
        "{flags_log}"
    );
    assert_eq!(settings_lines(&file_log), said, "{file_log}");

    // A flag on the command line wins over its key in the file.
    let mut agent = start_with_config(&lab, &config, &["--port-window", "62100-62119"]);
    assert_eq!(stats_window(&lab), ("62100-62119".to_owned(), 20));
    stop(&lab, &mut agent);
}
