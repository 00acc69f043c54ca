//! `clusterd`: the daemon. Parses flags, sets up logging, loads the config and calls
//! `clusterd::daemon::run` until SIGTERM or SIGINT.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// High-availability manager for mail clusters: one daemon per node.
#[derive(Debug, Parser)]
#[command(name = "clusterd", version, about)]
struct Args {
    /// Config file.
    #[arg(long, short, env = "CLUSTERD_CONFIG", default_value = clusterd::ctl::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, before the
/// daemon starts, so a signal that arrives early is never fatal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    init_logging(args.log_format);
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let config = match clusterd::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            error!("{}: {e}", args.config.display());
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.node.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(
                "cannot listen on {}: {e} (another clusterd running? wrong node.listen?)",
                config.node.listen
            );
            std::process::exit(1);
        }
    };
    if let Err(e) = clusterd::daemon::run(config, listener, shutdown).await {
        error!("{e}");
        std::process::exit(1);
    }
}
