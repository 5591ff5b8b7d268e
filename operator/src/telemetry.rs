//! Logging: `tracing` to stderr, as text for people or JSON for collectors,
//! filtered by `RUST_LOG` (default `info`); the node's setup, with the
//! operator's variable and default.

pub use aspen_node::logging::LogFormat;

/// Install the global subscriber; call once, first thing in `main`.
pub fn init(format: LogFormat) {
    aspen_node::logging::init(format, "RUST_LOG", "info");
}
