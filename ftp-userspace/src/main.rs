//! `ftpnat`: loads and attaches the FTP ALG's TC programs (`ftpnat run`) and inspects their pinned
//! state from another process (`ftpnat stats`).

mod agent;
mod attach;
mod events;
mod expire;
mod inspect;
mod metrics;
mod pins;
mod settings;
mod stats;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Where `ftpnat run` pins its maps unless told otherwise; the inspection commands read from here.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ftpnat";

#[derive(Parser, Debug)]
#[command(
    name = "ftpnat",
    version,
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
    /// Load the programs, attach them to the router's interfaces and run until SIGINT/SIGTERM.
    Run(agent::RunArgs),
    /// Show packet and byte counters, the port window and what the datapath did.
    Stats(StatsArgs),
    /// List the FTP control sessions ftpnat tracks.
    Sessions(StatsArgs),
    /// List the announced data connections not yet opened.
    Expectations(StatsArgs),
    /// List the connections ftpnat translates (control and data).
    Flows(StatsArgs),
    /// Follow the running agent's events live: sessions opening and closing, each command (PASS
    /// redacted), expectations, data connections with their bytes, refusals, anomalies.
    Events(StatsArgs),
    /// Remove the datapath a stopped agent left attached: its programs, links and pins (also those
    /// of another ftpnat version). Transfers it carries end.
    Detach(DetachArgs),
}

#[derive(clap::Args, Debug)]
struct DetachArgs {
    /// The pin directory of the datapath to remove.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
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

fn detach(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        println!("nothing to detach: {} does not exist", pin_dir.display());
        return Ok(());
    }
    let _lock = pins::lock(pin_dir)?;
    let removed = pins::remove_state(pin_dir, true)?;
    println!(
        "removed {} links (their programs are detached) and {} maps under {}",
        removed.links,
        removed.maps,
        pin_dir.display()
    );
    Ok(())
}

/// `--log-format json`: one object per line. An event (already JSON) is embedded as an object;
/// any other message as a string.
fn json_log_line(
    out: &mut env_logger::fmt::Formatter,
    record: &log::Record<'_>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let message = record.args().to_string();
    let body = if record.target() == agent::EVENT_LOG_TARGET {
        format!("\"event\":{message}")
    } else {
        format!("\"message\":{}", serde_json::Value::String(message))
    };
    writeln!(
        out,
        "{{\"time\":\"{}\",\"level\":\"{}\",\"target\":{},{body}}}",
        out.timestamp_millis(),
        record.level(),
        serde_json::Value::String(record.target().to_owned())
    )
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`ftpnat flows | head`) instead of panicking on the broken pipe.
    // SAFETY: restoring a signal's default disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match &cli.command {
        Command::Run(args) if args.log_format == agent::LogFormat::Json => {
            logger.format(json_log_line);
        }
        _ => {
            logger.format_timestamp_millis();
        }
    }
    logger.init();
    let result = match cli.command {
        Command::Run(args) => agent::run(args),
        Command::Stats(args) => stats::print(&args.pin_dir, args.json),
        Command::Sessions(args) => inspect::print("sessions", &args.pin_dir, args.json),
        Command::Expectations(args) => inspect::print("expectations", &args.pin_dir, args.json),
        Command::Flows(args) => inspect::print("flows", &args.pin_dir, args.json),
        Command::Events(args) => events::follow(&args.pin_dir, args.json),
        Command::Detach(args) => detach(&args.pin_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ftpnat: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
