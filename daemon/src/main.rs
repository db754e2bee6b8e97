//! crid: the daemon's command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crid_daemon::config::{Config, DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE};

/// crid: a CRI v1 container runtime.
#[derive(Debug, Parser)]
#[command(name = "crid", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Drop-in directory; its *.toml files override the file, in name order.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    /// Persistent state directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Volatile state directory.
    #[arg(long)]
    runroot: Option<PathBuf>,
    /// The CRI socket to serve.
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the complete default configuration as commented TOML.
    Config,
    /// Print crid's version and the CRI API version.
    Version,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (file, required) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    let mut config = Config::load(&file, required, &cli.config_dir)
        .map_err(anyhow::Error::new)
        .context("cannot load configuration")?;
    if let Some(root) = &cli.root {
        config.root = root.clone();
    }
    if let Some(runroot) = &cli.runroot {
        config.runroot = runroot.clone();
    }
    if let Some(listen) = &cli.listen {
        config.listen = listen.clone();
    }
    if let Some(level) = &cli.log_level {
        config.log_level = level.clone();
    }
    Ok(config)
}

/// Registers the SIGTERM and SIGINT handlers now (so a signal that comes as soon as the
/// socket accepts is never the default, fatal one) and returns what completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers we can only run until killed.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config) => {
            print!("{}", Config::default_toml());
            return Ok(());
        }
        Some(Command::Version) => {
            println!("crid {}\nCRI API v1", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        None => {}
    }
    // Fds 0-2 are open here, /dev/null where crid was started without them: Rust's start-up
    // code sees to it on Linux. Every fd crid opens is then 3 or above, which the direct
    // exec's child relies on (the fds it uses after moving stdio onto 0-2).
    let config = load_config(&cli)?;
    crid_daemon::logging::init(&config.log_level).map_err(anyhow::Error::msg)?;
    // Files crid creates are private unless made otherwise on purpose.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for dir in [&config.root, &config.runroot] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let shutdown = {
        // Signal handlers register with the runtime's reactor.
        let _entered = runtime.enter();
        shutdown_signal()
    };
    runtime.block_on(crid_daemon::server::run(Arc::new(config), shutdown))?;
    tracing::info!("stopped");
    Ok(())
}
