//! `clusterd`'s command line, as a library so that packaging generates its man page and shell
//! completions from the same definitions the binary parses (see [`crate::docs`]).
//!
//! The binary stays thin: it parses these flags, sets up logging and calls the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::ctl::DEFAULT_CONFIG;

/// High-availability manager for mail clusters: one daemon per node.
#[derive(Debug, Parser)]
#[command(
    name = "clusterd",
    version,
    about,
    long_about = "High-availability manager for mail clusters: one daemon per node.\n\n\
        Every mail node and the witness run clusterd with their own config. Together the \
        daemons form a Raft cluster that decides which node holds each floating address, \
        moves addresses away from failed nodes, and serves DNS that matches what is served. \
        Operate the cluster with clusterctl(1).",
    after_long_help = "FILES:\n  /etc/clusterd/clusterd.toml  this node's config \
        (--config, $CLUSTERD_CONFIG)\n  /etc/clusterd/cluster.key    the cluster key \
        (node.key_file; mode 0600, owned by the daemon's user)\n  /var/lib/clusterd            \
        Raft log and state (node.data_dir)\n\nSIGNALS:\n  SIGTERM, SIGINT  stop cleanly: \
        drop this node's floating addresses and the nftables guard, then exit.\n\n\
        SYSTEMD:\n  Under systemd (Type=notify) clusterd reports READY=1 once the node has \
        joined the cluster and its addresses have converged, pings the watchdog while its \
        loops are alive, and logs to the journal with --log-format journal."
)]
pub struct Args {
    /// Config file.
    #[arg(long, short, global = true, env = "CLUSTERD_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log format: text or json on stderr, or journal (systemd's journal, with structured
    /// fields).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Run the daemon (no subcommand), or one of these.
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// systemd's journal (native protocol): every field a journal field.
    Journal,
}

/// clusterd subcommands; without one, clusterd runs the daemon.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Remove this node's floating addresses and the nftables guard tables, after the daemon
    /// stopped (systemd runs it as ExecStopPost). Safe to run when nothing is there.
    Cleanup,
    /// Write the man pages and bash/zsh completions of clusterd and clusterctl into DIR.
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/, completions/bash/, completions/zsh/ are created in it).
        dir: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn config_defaults_to_the_node_config_and_flags_still_win() {
        let a = Args::try_parse_from(["clusterd"]).unwrap();
        assert_eq!(a.config, PathBuf::from("/etc/clusterd/clusterd.toml"));
        assert!(a.command.is_none());
        let a = Args::try_parse_from(["clusterd", "cleanup", "--config", "/tmp/x.toml"]).unwrap();
        assert_eq!(a.config, PathBuf::from("/tmp/x.toml"));
        assert!(matches!(a.command, Some(DaemonCommand::Cleanup)));
    }
}
