//! `clusterd`: the daemon. Parses flags (`clusterd::cli`), sets up logging, loads the config
//! and calls `clusterd::daemon::run` until SIGTERM or SIGINT; or runs one subcommand.

use clap::Parser;
use clusterd::cli::{Args, DaemonCommand, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"))
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Colours only on a terminal: a log redirected to a file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = || {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(colour)
            .with_writer(std::io::stderr)
    };
    match format {
        LogFormat::Text => stderr().init(),
        LogFormat::Json => stderr().json().init(),
        LogFormat::Journal => match tracing_journald::layer() {
            // Fields keep their names (ADDRESS=, NODE=, EPOCH=): `journalctl ADDRESS=...`.
            Ok(journal) => tracing_subscriber::registry()
                .with(filter())
                .with(
                    journal
                        .with_field_prefix(None)
                        .with_syslog_identifier("clusterd".into())
                        // Info lines are informational (6), not notices (the crate's default).
                        .with_priority_mappings(tracing_journald::PriorityMappings {
                            info: tracing_journald::Priority::Informational,
                            ..tracing_journald::PriorityMappings::new()
                        }),
                )
                .init(),
            Err(e) => {
                stderr().init();
                warn!(error = %e, "cannot reach the journal; logging to stderr");
            }
        },
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

fn load_config(args: &Args) -> clusterd::config::Config {
    match clusterd::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            error!("{}: {e}", args.config.display());
            std::process::exit(2);
        }
    }
}

/// `clusterd cleanup`: exit 0 when nothing of ours is left in the kernel.
async fn cleanup(args: &Args) -> i32 {
    let config = load_config(args);
    let net = match clusterd::vip::linux::LinuxNet::new() {
        Ok(n) => n,
        Err(e) => {
            error!("cleanup: {e}");
            return 1;
        }
    };
    match clusterd::vip::cleanup::cleanup(&config, &net).await {
        Ok(done) => {
            if let Some(why) = done.skipped {
                info!("cleanup: nothing to do ({why})");
            } else {
                for a in &done.removed {
                    info!(address = %a, "cleanup: address removed");
                }
                info!(
                    removed = done.removed.len(),
                    "cleanup: no floating address or guard table left"
                );
            }
            0
        }
        Err(e) => {
            error!("{e} (clusterd needs CAP_NET_ADMIN: run it as root or with that capability)");
            1
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    init_logging(args.log_format);
    match &args.command {
        Some(DaemonCommand::Cleanup) => std::process::exit(cleanup(&args).await),
        Some(DaemonCommand::GenerateDocs { dir }) => match clusterd::docs::generate(dir) {
            Ok(files) => {
                info!(
                    files = files.len(),
                    "wrote man pages and completions to {}",
                    dir.display()
                );
                return;
            }
            Err(e) => {
                error!("{}: {e}", dir.display());
                std::process::exit(1);
            }
        },
        None => {}
    }
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let config = load_config(&args);
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
