//! Logging for Aspen's binaries: `tracing` to stderr, as text for people
//! (coloured on a terminal) or as JSON lines for log collectors.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber, filtered by the environment variable
/// `filter_var` (an `EnvFilter` directive such as `info,openraft=warn`), or
/// by `default_filter` when it is unset or invalid. Call once, first thing in
/// `main`.
pub fn init(format: LogFormat, filter_var: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env(filter_var).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}
