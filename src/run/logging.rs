//! tracing on stderr (stdout carries the summary), filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // try_init: tests may initialise twice in one process.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Plain => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// Before the configuration is valid we cannot know the format; a lenient
/// read keeps config errors in the operator's chosen format where possible.
pub fn format_hint() -> LogFormat {
    match std::env::var(crate::config::vars::LOG_FORMAT).as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Plain,
    }
}
