//! `ftpnat`: loads and attaches the FTP ALG's TC programs (`ftpnat run`) and inspects their pinned
//! state from another process (`ftpnat stats`).

mod agent;
mod cli;
mod config;
mod datapath;
mod logging;
mod report;

use std::{io, path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;
use config::DEFAULT_PIN_DIR;

#[derive(Parser, Debug)]
#[command(
    name = "ftpnat",
    version,
    long_version = concat!(
        env!("CARGO_PKG_VERSION"),
        "\ncommit: ",
        env!("FTPNAT_COMMIT"),
        "\neBPF object: ",
        env!("FTPNAT_EBPF_OBJECT"),
        "\neBPF object built by: ",
        env!("FTPNAT_EBPF_BUILT_BY"),
    ),
    about = "FTP connection tracking and NAT helper (FTP ALG) for eBPF router datapaths",
    long_about = "ftpnat attaches eBPF TC programs to a router's interfaces and tracks the FTP \
                  sessions crossing them. `ftpnat run` is the agent; the other commands read its \
                  pinned state from another process."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach the programs to the router's interfaces (or adopt the datapath a previous agent
    /// left pinned) and run until SIGINT/SIGTERM.
    Run(Box<config::run::RunArgs>),
    /// Show packet and byte counters, the port window and what the datapath did.
    Stats(StatsArgs),
    /// List the FTP control sessions ftpnat tracks; with an ID, that session's transfers and
    /// expectations.
    Sessions(SessionsArgs),
    /// List the announced data connections not yet opened.
    Expectations(StatsArgs),
    /// List the connections ftpnat translates (control and data).
    Flows(StatsArgs),
    /// Follow the running agent's events live: sessions opening and closing, each command (PASS
    /// redacted), expectations, data connections with their bytes, refusals, anomalies.
    Events(StatsArgs),
    /// Remove the datapath a stopped agent left attached: its programs, links or TC filters, and
    /// pins (also those of another ftpnat version). Transfers it carries end.
    Detach(DetachArgs),
    /// Load every program on this kernel without attaching anything, and report what its
    /// verifier made of each (processed instructions against the limit, time, code size): to
    /// check a kernel before running ftpnat on it.
    Verify {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    /// For instance `ftpnat completions bash > /etc/bash_completion.d/ftpnat`, or `ftpnat
    /// completions zsh > "${fpath[1]}/_ftpnat"`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(clap::Args, Debug)]
struct DetachArgs {
    /// The pin directory of the datapath to remove.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct SessionsArgs {
    /// A session's id (the first column of `ftpnat sessions`).
    id: Option<String>,
    #[command(flatten)]
    view: StatsArgs,
}

/// Options of the commands that read a running agent's state.
#[derive(clap::Args, Debug)]
struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The pin directory of the `ftpnat run` to inspect.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`ftpnat flows | head`) instead of panicking on the broken pipe.
    // SAFETY: restoring a signal's default disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    // `run` picks its log format from its settings (flags or --config); the others log text.
    if !matches!(cli.command, Command::Run(_)) {
        logging::init(config::run::LogFormat::Text);
    }
    let result = match cli.command {
        Command::Run(args) => config::run::resolve(*args).and_then(|options| {
            logging::init(options.log_format());
            agent::run(options)
        }),
        Command::Stats(args) => cli::stats::print(&args.pin_dir, args.json),
        Command::Sessions(SessionsArgs { id: Some(id), view }) => {
            cli::tables::print_session(&view.pin_dir, &id, view.json)
        }
        Command::Sessions(SessionsArgs { id: None, view }) => {
            cli::tables::print("sessions", &view.pin_dir, view.json)
        }
        Command::Expectations(args) => cli::tables::print("expectations", &args.pin_dir, args.json),
        Command::Flows(args) => cli::tables::print("flows", &args.pin_dir, args.json),
        Command::Events(args) => cli::events::follow(&args.pin_dir, args.json),
        Command::Detach(args) => cli::detach::run(&args.pin_dir),
        Command::Verify { json } => cli::verify::print(json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ftpnat", &mut io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ftpnat: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_and_flag_is_documented() {
        fn check(command: &clap::Command, path: &str) {
            assert!(command.get_about().is_some(), "`{path}` has no about text");
            for arg in command.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "`{path}` argument '{}' has no help",
                    arg.get_id()
                );
            }
            for sub in command.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let mut cli = Cli::command();
        // The generated --help/--version and `help` entries exist only once built.
        cli.build();
        check(&cli, "ftpnat");
    }

    #[test]
    fn bash_completion_knows_the_commands_and_the_run_flags() {
        let mut script = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), "ftpnat", &mut script);
        let script = String::from_utf8(script).unwrap();
        for word in [
            "run",
            "--publish",
            "--config",
            "--port-window",
            "completions",
        ] {
            assert!(script.contains(word), "the bash completion lacks {word}");
        }
    }
}
