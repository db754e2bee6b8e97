//! Logging: to journald when systemd started us (`JOURNAL_STREAM` is set), else to stderr.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber at `level` (a tracing filter such as `info` or `crid=debug`).
pub fn init(level: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            registry
                .with(journald.with_syslog_identifier("crid".into()))
                .try_init()
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .try_init()
        .map_err(|e| e.to_string())
}
