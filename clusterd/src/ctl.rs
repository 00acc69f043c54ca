//! `clusterctl`: the operator's command line, as a library so that tests and packaging (man
//! pages, completions) use the same definitions.
//!
//! Exit codes: 0 done; 1 the cluster refused or failed the operation; 2 bad usage or config;
//! 3 no node or no leader could be reached (retrying later may help).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::ClusterKey;
use crate::client::{AddMemberRequest, MembershipReply, NoteRequest, admin_paths};
use crate::client::{ApiClient, ClientError, with_retries};
use crate::config::{self, Config};
use crate::model::{
    AdminState, Applied, Command as ModelCommand, DrillKind, Event, EventKind, Role,
};
use crate::status::{self, StatusReport};

/// Default config path on a node.
pub const DEFAULT_CONFIG: &str = "/etc/clusterd/clusterd.toml";

/// Exit code: the cluster refused or failed the operation.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage or config.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: nothing reachable or no leader.
pub const EXIT_UNREACHABLE: i32 = 3;

/// Operate a clusterd cluster.
#[derive(Debug, Parser)]
#[command(
    name = "clusterctl",
    version,
    about = "Operate a clusterd cluster: status, moves, drains, membership, keys, config checks",
    after_long_help = "FILES:\n  /etc/clusterd/clusterd.toml  the local node's config, read by \
        default (--config, $CLUSTERD_CONFIG)\n\nEXIT STATUS:\n  0  done\n  1  the cluster \
        refused or failed the operation\n  2  bad usage or config\n  3  no node or no leader \
        reachable (retrying later may help)"
)]
pub struct Cli {
    /// Config file of the local node: gives the node address and the key file.
    #[arg(long, short, global = true, env = "CLUSTERD_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Talk to this node (HOST:PORT) instead of the one in the config.
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// Cluster key file, instead of the config's key_file.
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// clusterctl subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show nodes, leader, addresses and recent events.
    Status(StatusArgs),
    /// Show the cluster's event history.
    History {
        /// Show only the last N events.
        #[arg(long, short = 'n')]
        limit: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what this node's DNS answers now, name by name.
    Dns {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the node's metrics in the Prometheus text format (what `[metrics] listen` serves).
    Metrics,
    /// Write a note into the cluster's history (e.g. "maintenance on mx2 starts").
    Note {
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Move a floating address to a node (planned: the old owner releases first).
    Move {
        /// The address, e.g. 192.0.2.101 or 192.0.2.101/24.
        address: String,
        /// The node to move it to.
        #[arg(value_name = "NODE")]
        to: String,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Move every address off a node and give it none until `undrain` (e.g. for maintenance).
    Drain {
        /// The node.
        #[arg(value_name = "NODE")]
        name: String,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Let a drained node hold addresses again (its own come back with failback).
    Undrain {
        /// The node.
        #[arg(value_name = "NODE")]
        name: String,
    },
    /// Change cluster membership.
    Members {
        /// add or remove.
        #[command(subcommand)]
        action: MembersAction,
    },
    /// Write a new cluster key file (mode 0600) to copy to every node.
    Keygen {
        /// Where to write it (default: the config's key_file, else /etc/clusterd/cluster.key).
        path: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a config file without starting anything.
    CheckConfig {
        /// The file (default: --config).
        path: Option<PathBuf>,
    },
    /// Power a node off now through its fence agent ([fencing.nodes.NODE]); asks for
    /// confirmation on a terminal.
    Fence {
        /// The node.
        #[arg(value_name = "NODE")]
        name: String,
        /// Do not ask for confirmation (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
        /// Fence even if that leaves the cluster without a quorum or without a live mail node.
        #[arg(long)]
        force: bool,
    },
    /// Failover drill: make a node (or one of its services) behave as failed while it keeps
    /// running, and measure, as a mail client here sees it, how long each address took to be
    /// served again, by whom, and when DNS changed on every node; then restore.
    Drill {
        /// What to drill.
        #[command(subcommand)]
        what: DrillCmd,
    },
}

/// `drill` forms.
#[derive(Debug, Subcommand)]
pub enum DrillCmd {
    /// NODE plays a failed node for its addresses (stops renewing its lease).
    Node {
        /// The node.
        #[arg(value_name = "NODE")]
        name: String,
        /// Options.
        #[command(flatten)]
        opts: DrillOpts,
    },
    /// NODE plays a failure of SERVICE (its check reports critical).
    Service {
        /// The node.
        #[arg(value_name = "NODE")]
        name: String,
        /// The check name, e.g. imap.
        service: String,
        /// Options.
        #[command(flatten)]
        opts: DrillOpts,
    },
    /// End a drill left running with --no-restore (addresses return by the failback policy).
    End {
        /// The node.
        #[arg(value_name = "NODE")]
        name: String,
    },
}

/// Options of a drill.
#[derive(Debug, Args)]
pub struct DrillOpts {
    /// Keep the node failed afterwards (end it later with `clusterctl drill end NODE`).
    #[arg(long)]
    pub no_restore: bool,
    /// Each address must be served again within this long, or the drill fails (exit 1).
    #[arg(long, default_value = "10s", value_parser = parse_millis)]
    pub bound: config::Millis,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_millis(s: &str) -> Result<config::Millis, String> {
    s.parse()
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (schema: leader, term, nodes[], addresses[], events[]).
    #[arg(long)]
    pub json: bool,
    /// Ask the leader instead of the node's own replica.
    #[arg(long)]
    pub leader: bool,
    /// Refresh every N seconds until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
    /// How many recent events to include.
    #[arg(long, default_value_t = 5)]
    pub events: usize,
}

/// `members` actions.
#[derive(Debug, Subcommand)]
pub enum MembersAction {
    /// Add a node (as a learner; --voter to make it vote once it caught up).
    Add {
        /// Its name.
        name: String,
        /// Its API address, HOST:PORT.
        addr: String,
        /// mail or witness.
        #[arg(long, default_value = "mail", value_parser = parse_role)]
        role: Role,
        /// Make it a voter.
        #[arg(long)]
        voter: bool,
        /// Accept a voter count other than 3 or 5.
        #[arg(long)]
        force: bool,
    },
    /// Remove a node from the cluster.
    Remove {
        /// Its name.
        name: String,
        /// Accept a voter count other than 3 or 5.
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "mail" => Ok(Role::Mail),
        "witness" => Ok(Role::Witness),
        other => Err(format!("{other:?} is not a role; use mail or witness")),
    }
}

/// A failed command: exit code and message.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: i32,
    /// What went wrong and what to do.
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = if e.is_retryable() {
            EXIT_UNREACHABLE
        } else {
            EXIT_FAILED
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: e.to_string(),
        }
    }
}

/// Run one clusterctl invocation, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<(), Failure> {
    match &cli.command {
        Command::CheckConfig { path } => {
            let path = path.as_deref().unwrap_or(&cli.config);
            let cfg = config::load(path)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            // The daemon refuses to start without a usable key: so does check-config.
            ClusterKey::load(&cfg.node.key_file)
                .map_err(|e| Failure::usage(format!("{}: node.key_file: {e}", path.display())))?;
            // Every reader refuses a secret file others may read: check-config says so now.
            crate::fence::agents::check_secret_files(&cfg)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            writeln!(
                out,
                "{}: ok ({} as {:?}, {} members, voters {}, {} addresses)",
                path.display(),
                cfg.node.name,
                cfg.node.role,
                cfg.members().len(),
                cfg.voters().join(","),
                cfg.addresses.len()
            )?;
            Ok(())
        }
        Command::Keygen { path, force } => {
            let path = match path {
                Some(p) => p.clone(),
                None => config::load(&cli.config)
                    .map(|c| c.node.key_file)
                    .unwrap_or_else(|_| PathBuf::from("/etc/clusterd/cluster.key")),
            };
            ClusterKey::generate()
                .write(&path, *force)
                .map_err(|e| Failure::usage(e.to_string()))?;
            writeln!(
                out,
                "wrote a new cluster key to {} (mode 0600); copy it to every node",
                path.display()
            )?;
            Ok(())
        }
        Command::Status(args) => status_cmd(&cli, args, out).await,
        Command::History { limit, json } => {
            let client = connect(&cli)?;
            let path = match limit {
                Some(n) => format!("{}?limit={n}", admin_paths::HISTORY),
                None => admin_paths::HISTORY.to_string(),
            };
            let events: Vec<Event> = client.get(&path).await?;
            if *json {
                writeln!(out, "{}", to_json(&events))?;
            } else {
                write!(
                    out,
                    "{}",
                    status::render_events(&events, crate::clock::unix_ms())
                )?;
            }
            Ok(())
        }
        Command::Dns { json } => {
            let client = connect(&cli)?;
            let report: crate::status::DnsReport = client.get(admin_paths::DNS).await?;
            if *json {
                writeln!(out, "{}", to_json(&report))?;
            } else {
                write!(out, "{}", status::render_dns(&report))?;
            }
            Ok(())
        }
        Command::Metrics => {
            let client = connect(&cli)?;
            let (code, body) = client
                .send_raw("GET", admin_paths::METRICS, Vec::new(), &[])
                .await?;
            if !(200..300).contains(&code) {
                return Err(ClientError::Api {
                    status: code,
                    message: String::from_utf8_lossy(&body).into_owned(),
                }
                .into());
            }
            out.write_all(&body)?;
            Ok(())
        }
        Command::Note { text } => {
            let client = connect(&cli)?;
            let req = NoteRequest {
                text: text.join(" "),
            };
            let _: Applied = with_retries(|| client.post(admin_paths::NOTE, &req)).await?;
            writeln!(out, "noted")?;
            Ok(())
        }
        Command::Move {
            address,
            to,
            timeout,
        } => move_cmd(&cli, address, to, *timeout, out).await,
        Command::Drain {
            name: node,
            timeout,
        } => {
            set_admin(&cli, node, AdminState::Drained, out).await?;
            let client = connect(&cli)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(*timeout);
            loop {
                let report: StatusReport = client.get(admin_paths::STATUS).await?;
                let held: Vec<&str> = report
                    .addresses
                    .iter()
                    .filter(|a| a.owner.as_deref() == Some(node.as_str()))
                    .map(|a| a.ip.as_str())
                    .collect();
                if held.is_empty() {
                    writeln!(out, "{node} is drained: it holds no address")?;
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Failure {
                        code: EXIT_FAILED,
                        message: format!(
                            "{node} still holds {} after {timeout} s: is another mail node \
                             alive to take them? (`clusterctl status`)",
                            held.join(", ")
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Command::Undrain { name } => set_admin(&cli, name, AdminState::Active, out).await,
        Command::Fence { name, yes, force } => fence_cmd(&cli, name, *yes, *force, out).await,
        Command::Drill { what } => drill_cmd(&cli, what, out).await,
        Command::Members { action } => {
            let client = connect(&cli)?.with_timeout(Duration::from_secs(40));
            let reply: MembershipReply = match action {
                MembersAction::Add {
                    name,
                    addr,
                    role,
                    voter,
                    force,
                } => {
                    let req = AddMemberRequest {
                        name: name.clone(),
                        addr: addr.clone(),
                        role: *role,
                        voter: *voter,
                        force: *force,
                    };
                    with_retries(|| client.post(admin_paths::MEMBERS, &req)).await?
                }
                MembersAction::Remove { name, force } => {
                    let path = if *force {
                        format!("{}/{name}?force=true", admin_paths::MEMBERS)
                    } else {
                        format!("{}/{name}", admin_paths::MEMBERS)
                    };
                    with_retries(|| client.delete(&path)).await?
                }
            };
            writeln!(out, "{}", reply.message)?;
            writeln!(out, "voters: {}", reply.voters.join(", "))?;
            if !reply.learners.is_empty() {
                writeln!(out, "learners: {}", reply.learners.join(", "))?;
            }
            Ok(())
        }
    }
}

async fn set_admin(
    cli: &Cli,
    node: &str,
    state: AdminState,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let client = connect(cli)?;
    let cmd = ModelCommand::SetAdmin {
        node: node.to_string(),
        state,
        by: "clusterctl".to_string(),
        at_ms: crate::clock::unix_ms(),
    };
    let applied: Applied = with_retries(|| client.post(admin_paths::PROPOSE, &cmd)).await?;
    if applied.changed {
        writeln!(out, "{node} set {state}")?;
    } else {
        writeln!(out, "{node} was already {state}")?;
    }
    Ok(())
}

async fn move_cmd(
    cli: &Cli,
    address: &str,
    node: &str,
    timeout: u64,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let client = connect(cli)?;
    let report: StatusReport = client.get(admin_paths::STATUS).await?;
    let Some(current) = report
        .addresses
        .iter()
        .find(|a| a.ip == address || a.ip.split('/').next() == Some(address))
    else {
        return Err(Failure::usage(format!(
            "{address} is not a floating address of this cluster; it has: {}",
            report
                .addresses
                .iter()
                .map(|a| a.ip.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let ip = current.ip.clone();
    let start_epoch = current.epoch;
    let started = std::time::Instant::now();
    let cmd = ModelCommand::RequestMove {
        ip: ip.clone(),
        to: node.to_string(),
        by: "clusterctl".to_string(),
        at_ms: crate::clock::unix_ms(),
    };
    let _: Applied = with_retries(|| client.post(admin_paths::PROPOSE, &cmd)).await?;
    if current.owner.as_deref() == Some(node) {
        writeln!(out, "{ip} is already on {node}")?;
        return Ok(());
    }
    let deadline = started + Duration::from_secs(timeout);
    loop {
        let events: Vec<Event> = client.get(admin_paths::HISTORY).await?;
        let served = events.iter().rev().find_map(|e| match &e.kind {
            EventKind::Serving {
                ip: i,
                node: n,
                epoch,
                unserved_ms,
            } if *i == ip && n == node && *epoch > start_epoch => Some(*unserved_ms),
            _ => None,
        });
        if let Some(unserved) = served {
            write!(
                out,
                "{ip} moved to {node} in {} ms",
                started.elapsed().as_millis()
            )?;
            match unserved {
                Some(ms) => writeln!(out, "; unserved for {ms} ms (by the nodes' clocks)")?,
                None => writeln!(out)?,
            }
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Failure {
                code: EXIT_FAILED,
                message: format!(
                    "{ip} is not served by {node} after {timeout} s; see `clusterctl status` \
                     and `clusterctl history`"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fence_cmd(
    cli: &Cli,
    node: &str,
    yes: bool,
    force: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let client = connect(cli)?;
    let report: StatusReport = client.get(admin_paths::STATUS).await?;
    let Some(member) = report.nodes.iter().find(|n| n.name == node) else {
        return Err(Failure::usage(format!(
            "{node} is not a member of this cluster; its members are: {}",
            report
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let Some(agent) = member.fence_agent.clone() else {
        return Err(Failure::usage(if member.role == Role::Witness {
            format!(
                "{node} is a witness without a fence agent: it holds no addresses, so it needs \
                 none; to fence it anyway add [fencing.nodes.{node}] to every node's config"
            )
        } else {
            format!(
                "{node} has no fence agent: add [fencing.nodes.{node}] to every node's config \
                 (see the example configs), restart clusterd, and try again"
            )
        }));
    };
    if !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err(Failure::usage(format!(
                "fencing powers {node} off; not on a terminal to confirm, so pass --yes"
            )));
        }
        write!(
            out,
            "This powers {node} off now ({agent}). Type {node} to confirm: "
        )?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != node {
            return Err(Failure {
                code: EXIT_FAILED,
                message: format!("not confirmed; {node} was not fenced"),
            });
        }
    }
    let req = crate::client::FenceRequest {
        node: node.to_string(),
        force,
    };
    // The leader answers once the agent confirmed (or gave up), within its fencing timeout.
    let client = client.with_timeout(Duration::from_secs(600));
    let reply: crate::client::FenceReply = client.post(admin_paths::FENCE, &req).await?;
    writeln!(
        out,
        "{} fenced by {}: {}",
        reply.node, reply.agent, reply.reply
    )?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Where to connect and with which key, from the flags and the config.
async fn drill_cmd(
    cli: &Cli,
    what: &DrillCmd,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let client = connect(cli)?;
    let (node, kind, opts) = match what {
        DrillCmd::End { name: node } => {
            let cmd = ModelCommand::EndDrill {
                node: node.clone(),
                by: "clusterctl".into(),
                at_ms: crate::clock::unix_ms(),
            };
            let a: Applied = with_retries(|| client.post(admin_paths::PROPOSE, &cmd)).await?;
            if a.changed {
                writeln!(out, "drill of {node} ended; it takes part normally again")?;
            } else {
                writeln!(out, "no drill was running on {node}")?;
            }
            return Ok(());
        }
        DrillCmd::Node { name: node, opts } => (node, DrillKind::Node, opts),
        DrillCmd::Service {
            name: node,
            service,
            opts,
        } => (
            node,
            DrillKind::Service {
                check: service.clone(),
            },
            opts,
        ),
    };
    let plan = crate::drill::DrillPlan {
        node: node.clone(),
        kind,
        bound: opts.bound.into(),
        restore: !opts.no_restore,
    };
    let local = config::load(&cli.config).ok();
    let mut progress: Box<dyn Write + Send> = if opts.json {
        Box::new(std::io::sink())
    } else {
        Box::new(&mut *out)
    };
    let result = crate::drill::run(&client, local.as_ref(), &plan, &mut *progress)
        .await
        .map_err(|message| Failure {
            code: EXIT_FAILED,
            message,
        });
    drop(progress);
    let result = result?;
    if opts.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&result).map_err(|e| Failure {
                code: EXIT_FAILED,
                message: e.to_string()
            })?
        )?;
    } else {
        write!(out, "{}", crate::drill::render(&result))?;
    }
    if result.ok {
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            message: format!("the drill failed: {}", result.problems.join("; ")),
        })
    }
}

fn connect(cli: &Cli) -> Result<ApiClient, Failure> {
    let (addr, key_path) = match (&cli.node, &cli.key_file) {
        (Some(node), Some(key)) => (node.clone(), key.clone()),
        _ => {
            let cfg = config::load(&cli.config).map_err(|e| {
                Failure::usage(format!(
                    "{}: {e}\n(give --node HOST:PORT and --key-file PATH to run without a config)",
                    cli.config.display()
                ))
            })?;
            (
                cli.node.clone().unwrap_or_else(|| local_address(&cfg)),
                cli.key_file.clone().unwrap_or(cfg.node.key_file),
            )
        }
    };
    let key = ClusterKey::load(&key_path).map_err(|e| Failure::usage(e.to_string()))?;
    Ok(ApiClient::new(addr, key)?)
}

/// The address to reach the local node: its listen address, or its advertised one when it
/// listens on all addresses.
fn local_address(cfg: &Config) -> String {
    if cfg.node.listen.ip().is_unspecified() {
        cfg.advertise().to_string()
    } else {
        cfg.node.listen.to_string()
    }
}

async fn fetch_status(client: &ApiClient, args: &StatusArgs) -> Result<StatusReport, ClientError> {
    let path = format!("{}?limit={}&live=1", admin_paths::STATUS, args.events);
    let report: StatusReport = client.get(&path).await?;
    if !args.leader {
        return Ok(report);
    }
    let Some(leader) = report.leader.clone() else {
        return Err(ClientError::Api {
            status: 503,
            message: format!(
                "{} knows no leader (no quorum?); run without --leader to see its replica",
                report.answered_by
            ),
        });
    };
    if leader == report.answered_by {
        return Ok(report);
    }
    let Some(node) = report.nodes.iter().find(|n| n.name == leader) else {
        return Ok(report);
    };
    let leader_client = client.clone_to(&node.address).for_node(node.name.clone());
    leader_client.get(&path).await
}

async fn status_cmd(
    cli: &Cli,
    args: &StatusArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let client = connect(cli)?;
    loop {
        let report = fetch_status(&client, args).await?;
        if args.json {
            writeln!(out, "{}", to_json(&report))?;
        } else {
            if args.watch.is_some() {
                // Clear the screen and go home, like watch(1).
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", status::render(&report, crate::clock::unix_ms()))?;
        }
        out.flush()?;
        match args.watch {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
            None => return Ok(()),
        }
    }
}
