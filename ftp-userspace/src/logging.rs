//! The log every command writes: text, or for `ftpnat run --log-format json` one JSON object per
//! line, in which the agent's events are embedded as objects.

use crate::{agent::events::EVENT_LOG_TARGET, config::run::LogFormat};

/// Installs the process's logger: `RUST_LOG` filters it (info by default), `format` shapes its lines.
pub fn init(format: LogFormat) {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Json => logger.format(json_log_line),
        LogFormat::Text => logger.format_timestamp_millis(),
    };
    logger.init();
}

/// `--log-format json`: one object per line. An event (already JSON) is embedded as an object;
/// any other message as a string.
fn json_log_line(
    out: &mut env_logger::fmt::Formatter,
    record: &log::Record<'_>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let message = record.args().to_string();
    let body = if record.target() == EVENT_LOG_TARGET {
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
