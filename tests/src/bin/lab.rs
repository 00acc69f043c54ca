//! `lab`: bring a clusterd mail lab up in network namespaces, look at it, break it, take it
//! down. A thin shell over `clusterd_tests::lab`; the state lives in the run directory, so every
//! command works from any shell.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use clusterd_tests::lab::cleanup;
use clusterd_tests::lab::mail;
use clusterd_tests::lab::process::ns_command;
use clusterd_tests::lab::state::{DEFAULT_RUN_ROOT, LabState, run_prefix_of};
use clusterd_tests::{Fault, Lab, LabSpec, Service};

#[derive(Debug, Parser)]
#[command(
    name = "lab",
    about = "A clusterd mail cluster in network namespaces, for rehearsals and tests"
)]
struct Cli {
    /// Directory holding lab run directories.
    #[arg(long, global = true, env = "LAB_RUN_ROOT", default_value = DEFAULT_RUN_ROOT)]
    run_root: PathBuf,
    /// Which running lab (its run directory); default: the only one under --run-root.
    #[arg(long, global = true, env = "LAB_RUN_DIR")]
    run_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a lab and leave it running.
    Up {
        /// Number of mail nodes (mx1..mxN).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Add a witness node w1 (default).
        #[arg(long, overrides_with = "no_witness")]
        witness: bool,
        /// No witness node.
        #[arg(long)]
        no_witness: bool,
        /// clusterd binary to run on every node (default: $CLUSTERD_BIN, else the one built
        /// next to this program).
        #[arg(long)]
        clusterd: Option<PathBuf>,
        /// clusterctl binary (default: $CLUSTERCTL_BIN, or next to clusterd).
        #[arg(long)]
        clusterctl: Option<PathBuf>,
        /// Start no clusterd: only the network and the mail services.
        #[arg(long)]
        no_daemons: bool,
        /// Seconds to wait for services and for a leader.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// What the lab consists of and what the cluster says about itself.
    Status {
        /// Print the lab state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a node (or `client`); `clusterctl` gets the node's config.
    Exec {
        /// Node name (mx1, w1, ...) or `client`.
        node: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Inject a fault into a node.
    Fault {
        /// Node name.
        node: String,
        #[command(subcommand)]
        fault: FaultCmd,
    },
    /// Remove the lab: processes, namespaces, interfaces, run directory.
    Down,
    /// The demo: bring a lab up, show `clusterctl status`, cut the Raft leader off, show the
    /// new leader and how long the election took, heal, tear down.
    Demo {
        /// Number of mail nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// clusterd binary (default: $CLUSTERD_BIN).
        #[arg(long)]
        clusterd: Option<PathBuf>,
        /// clusterctl binary (default: $CLUSTERCTL_BIN, or next to clusterd).
        #[arg(long)]
        clusterctl: Option<PathBuf>,
    },
    /// Remove leftovers of crashed lab runs (never a lab that is up on purpose).
    Sweep,
    /// A chaos campaign in a new lab (three mail nodes, mx3 a learner, and the witness):
    /// random, overlapping faults and operator actions, every invariant observer running, and
    /// a check of every promise afterwards. Exits 1 on any violation; the schedule and report
    /// are written to --out.
    Chaos {
        /// Number of faults.
        #[arg(long, default_value_t = 100)]
        faults: usize,
        /// The seed (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// Start no new burst after this many minutes.
        #[arg(long)]
        minutes: Option<u64>,
        /// Run the schedule in this file (a schedule.json a campaign wrote) instead.
        #[arg(long, conflicts_with_all = ["faults", "seed"])]
        replay: Option<PathBuf>,
        /// Directory for the schedule, the report and, on failure, the daemons' logs
        /// (default: a new directory under /tmp).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum FaultCmd {
    /// SIGKILL the node's clusterd.
    Kill,
    /// SIGSTOP the node's clusterd.
    Stop,
    /// SIGCONT the node's clusterd.
    Cont,
    /// Restart the node's clusterd.
    Restart,
    /// Pull the node's cable at the switch.
    LinkDown,
    /// Plug it back in.
    LinkUp,
    /// Drop traffic between the node and the other nodes (nftables in the node).
    Partition {
        /// Only cut this peer.
        #[arg(long)]
        from: Option<String>,
    },
    /// One way: the node hears nothing from the other nodes (or --from), but can still send.
    DeafTo {
        /// Only this peer.
        #[arg(long)]
        from: Option<String>,
    },
    /// One way: nothing the node sends reaches the other nodes (or --to), but it hears them.
    MuteTo {
        /// Only this peer.
        #[arg(long)]
        to: Option<String>,
    },
    /// Remove the node's partition rules.
    Heal,
    /// Starve the node's clusterd of CPU (busy loops in its namespace, the daemon at the idle
    /// scheduling class).
    Starve,
    /// End the starvation.
    Unstarve,
    /// Stop dovecot or postfix (also: imap, pop3, smtp).
    ServiceStop {
        /// dovecot or postfix.
        service: String,
    },
    /// Crash dovecot or postfix (SIGKILL of its master process).
    ServiceCrash {
        /// dovecot or postfix.
        service: String,
    },
    /// Start dovecot or postfix again.
    ServiceStart {
        /// dovecot or postfix.
        service: String,
    },
    /// Silently drop incoming TCP to a port on the node (connections hang, not refused).
    BlockPort {
        /// The port, e.g. 143.
        port: u16,
    },
    /// Remove the node's port blocks.
    UnblockPorts,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Up {
            nodes,
            witness: _,
            no_witness,
            clusterd,
            clusterctl,
            no_daemons,
            timeout,
        } => {
            let started = Instant::now();
            let lab = Lab::up(LabSpec {
                mail_nodes: nodes,
                witness: !no_witness,
                run_daemons: !no_daemons,
                run_root: cli.run_root.clone(),
                clusterd_bin: clusterd,
                clusterctl_bin: clusterctl,
                ready_timeout: Duration::from_secs(timeout),
                ..LabSpec::default()
            })?;
            let leader = if lab.has_clusterd() && lab.state().clusterctl_bin.is_some() {
                lab.wait_for_leader(Duration::from_secs(timeout)).ok()
            } else {
                None
            };
            let st = lab.detach()?;
            print_summary(&st);
            println!("up in {:.1?}", started.elapsed());
            match (&st.clusterd_bin, leader) {
                (None, _) => println!(
                    "clusterd: not started (no binary; pass --clusterd PATH or set CLUSTERD_BIN)"
                ),
                (Some(_), Some(l)) => println!("clusterd: running, leader {l}"),
                (Some(_), None) => println!("clusterd: running, no leader confirmed"),
            }
            println!();
            println!("Try:");
            println!("  lab status");
            println!("  lab exec mx1 -- clusterctl status");
            println!(
                "  lab exec client -- dig @{} imap.lab.example",
                st.nodes[0].ipv4
            );
            println!("  lab fault mx1 partition      # and: lab fault mx1 heal");
            println!("  lab down");
            if !st.run_dir.starts_with(DEFAULT_RUN_ROOT) {
                println!("(set LAB_RUN_DIR={} in other shells)", st.run_dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let st = LabState::load(&select(&cli.run_root, cli.run_dir.as_deref())?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_summary(&st);
                print_cluster_status(&st);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { node, command } => {
            let st = LabState::load(&select(&cli.run_root, cli.run_dir.as_deref())?)?;
            let (ns, config) = if node == "client" {
                (st.client.netns.clone(), None)
            } else {
                let n = st.node(&node)?;
                (n.netns.clone(), n.clusterd_config.clone())
            };
            let mut args = command.into_iter();
            let program = args.next().context("no command given")?;
            let mut cmd: Command;
            if program == "clusterctl"
                && let Some(bin) = &st.clusterctl_bin
            {
                cmd = ns_command(&ns, bin);
                let rest: Vec<String> = args.collect();
                if let Some(cfg) = config
                    && !rest.iter().any(|a| a == "--config")
                {
                    cmd.arg("--config").arg(cfg);
                }
                cmd.args(rest);
            } else {
                cmd = ns_command(&ns, program);
                cmd.args(args);
            }
            let status = cmd.status().context("running the command")?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        Cmd::Chaos {
            faults,
            seed,
            minutes,
            replay,
            out,
        } => chaos(cli.run_root, faults, seed, minutes, replay, out),
        Cmd::Fault { node, fault } => {
            let mut lab = Lab::attach(&select(&cli.run_root, cli.run_dir.as_deref())?)?;
            let fault = match fault {
                FaultCmd::Kill => Fault::Kill,
                FaultCmd::Stop => Fault::Stop,
                FaultCmd::Cont => Fault::Cont,
                FaultCmd::Restart => Fault::Restart,
                FaultCmd::LinkDown => Fault::LinkDown,
                FaultCmd::LinkUp => Fault::LinkUp,
                FaultCmd::Partition { from } => Fault::Partition { from },
                FaultCmd::DeafTo { from } => Fault::DeafTo { from },
                FaultCmd::MuteTo { to } => Fault::MuteTo { to },
                FaultCmd::Heal => Fault::Heal,
                FaultCmd::Starve => Fault::Starve,
                FaultCmd::Unstarve => Fault::Unstarve,
                FaultCmd::ServiceStop { service } => {
                    Fault::ServiceStop(service.parse::<Service>()?)
                }
                FaultCmd::ServiceCrash { service } => {
                    Fault::ServiceCrash(service.parse::<Service>()?)
                }
                FaultCmd::ServiceStart { service } => {
                    Fault::ServiceStart(service.parse::<Service>()?)
                }
                FaultCmd::BlockPort { port } => Fault::BlockPort(port),
                FaultCmd::UnblockPorts => Fault::UnblockPorts,
            };
            let what = format!("{fault:?}");
            lab.fault(&node, fault)?;
            println!("{node}: {what} done");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            let dir = select(&cli.run_root, cli.run_dir.as_deref())?;
            let st = LabState::load(&dir)?;
            cleanup::teardown(&st)?;
            let left = cleanup::leftovers(&st);
            if left.is_empty() {
                println!("lab {} removed", st.prefix);
                Ok(ExitCode::SUCCESS)
            } else {
                bail!(
                    "lab {} left things behind:\n  {}",
                    st.prefix,
                    left.join("\n  ")
                );
            }
        }
        Cmd::Demo {
            nodes,
            clusterd,
            clusterctl,
        } => demo(&cli.run_root, nodes, clusterd, clusterctl),
        Cmd::Sweep => {
            let report = cleanup::sweep(&cli.run_root)?;
            println!("removed: {:?}", report.removed);
            println!("kept (running): {:?}", report.kept);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn demo(
    run_root: &Path,
    nodes: usize,
    clusterd: Option<PathBuf>,
    clusterctl: Option<PathBuf>,
) -> Result<ExitCode> {
    let (clusterd, clusterctl) =
        clusterd_tests::lab::clusterd::resolve_binaries(clusterd, clusterctl);
    if clusterd.is_none() || clusterctl.is_none() {
        bail!(
            "the demo needs the daemon: pass --clusterd PATH (clusterctl next to it) or set CLUSTERD_BIN"
        );
    }
    let timeout = Duration::from_secs(30);
    let t = Instant::now();
    println!(
        "== bringing up {nodes} mail nodes and a witness, each with dovecot, postfix and clusterd"
    );
    let mut lab = Lab::up(LabSpec {
        mail_nodes: nodes,
        run_root: run_root.to_owned(),
        clusterd_bin: clusterd,
        clusterctl_bin: clusterctl,
        ready_timeout: timeout,
        ..LabSpec::default()
    })?;
    let leader = lab.wait_for_leader(timeout)?;
    println!("up in {:.1?}; leader {leader}", t.elapsed());
    let sampler = clusterd_tests::monitor::AddressSampler::start(&lab)?;
    let arp = clusterd_tests::monitor::ArpProber::start(&lab)?;
    println!("\n== clusterctl status (on {leader})");
    print!("{}", lab.clusterctl(&leader, &["status"])?);

    println!("\n== cutting the leader {leader} off from its peers (nftables in its namespace)");
    let cut = Instant::now();
    lab.fault(&leader, Fault::Partition { from: None })?;
    let new = lab.wait_for_new_leader(&leader, timeout)?;
    println!(
        "new leader {new}, elected {:.0?} after the cut",
        cut.elapsed()
    );
    println!("\n== clusterctl status (on {new})");
    print!("{}", lab.clusterctl(&new, &["status"])?);

    println!("\n== healing {leader}");
    lab.fault(&leader, Fault::Heal)?;
    let after = lab.wait_for_leader(timeout)?;
    println!("one leader again: {after}");

    // The address failover a mail client sees: kill the daemon holding mx1's home address.
    let floating = lab.floating_of("mx1")?;
    let imap = std::net::SocketAddr::new(std::net::IpAddr::V4(floating), 143);
    let greeter = |lab: &Lab| lab.imap_greeter(imap.ip());
    let waiting = Instant::now();
    let mut owner = None;
    while waiting.elapsed() < timeout {
        owner = floating_owner(&lab, &after, floating);
        if owner.is_some() && owner == greeter(&lab) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let owner = owner.unwrap_or_else(|| "mx1".to_string());

    // A failover drill of the owner, measured as a mail client on another mail node sees it.
    let other = lab
        .node_names()
        .into_iter()
        .find(|n| n.starts_with("mx") && *n != owner)
        .unwrap_or_else(|| "mx2".to_string());
    println!(
        "\n== clusterctl drill node {owner} (run on {other}): {owner} plays dead for its \
         addresses, then is restored"
    );
    match lab.clusterctl(&other, &["drill", "node", &owner]) {
        Ok(out) => print!("{out}"),
        Err(e) => println!("the drill did not pass: {e}"),
    }
    println!("\n== killing clusterd on {owner}, which serves {floating} (kill -9)");
    let prober = clusterd_tests::ServiceProber::start(
        &lab,
        clusterd_tests::ProberSpec {
            protocols: vec![clusterd_tests::Protocol::Imap],
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(300),
            ..clusterd_tests::ProberSpec::new(std::net::IpAddr::V4(floating))
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    lab.fault(&owner, Fault::Kill)?;
    let killed = Instant::now();
    let mut new_owner = None;
    while killed.elapsed() < Duration::from_secs(10) && new_owner.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        new_owner = floating_owner(&lab, &other, floating).filter(|o| *o != owner);
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop();
    let greeters = log.greeters(clusterd_tests::Protocol::Imap);
    match (
        &new_owner,
        log.longest_outage(clusterd_tests::Protocol::Imap),
    ) {
        (Some(n), Some(outage)) => println!(
            "{floating} moved to {n}; IMAP greeters seen by the client: {}; longest time without \
             an IMAP greeting: {outage:.0?}",
            greeters
                .iter()
                .map(|(_, g)| g.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        ),
        (Some(n), None) => println!(
            "{floating} moved to {n}; the client never went without an IMAP greeting \
             (greeters: {greeters:?})"
        ),
        (None, _) => println!("{floating} did not move within 10 s (see `lab status`)"),
    }
    let survivor = new_owner.unwrap_or(other.clone());
    println!("\n== clusterctl status (on {survivor})");
    print!("{}", lab.clusterctl(&survivor, &["status"])?);
    let (sampled, network) = (sampler.stop(), arp.stop());
    for (name, t) in [
        ("address sampler", sampled.sampled),
        ("kernel address events", sampled.events),
        ("ARP prober", network.timeline),
        ("ICMP echo per MAC", network.echo),
    ] {
        match t.assert_single_holder() {
            Ok(()) => println!(
                "{name}: no address ever had two holders ({} samples)",
                t.samples
            ),
            Err(report) => println!("{name}: {report}"),
        }
    }
    println!("\n== tearing down");
    let st = lab.state().clone();
    lab.down()?;
    let left = cleanup::leftovers(&st);
    if !left.is_empty() {
        bail!("the demo lab left things behind:\n  {}", left.join("\n  "));
    }
    println!("done in {:.1?}", t.elapsed());
    Ok(ExitCode::SUCCESS)
}

/// The owner of `floating` as `via`'s clusterctl reports it.
fn floating_owner(lab: &Lab, via: &str, floating: std::net::Ipv4Addr) -> Option<String> {
    let status = lab.cluster_status(via).ok()?;
    let prefix = format!("{floating}/");
    status.addresses.as_array()?.iter().find_map(|a| {
        let ip = a.get("ip")?.as_str()?;
        if ip.starts_with(&prefix) {
            a.get("owner")?.as_str().map(str::to_string)
        } else {
            None
        }
    })
}

/// The run directory to act on.
fn select(run_root: &Path, run_dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = run_dir {
        return Ok(d.to_owned());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(run_root)
        .with_context(|| format!("no lab is up (nothing in {})", run_root.display()))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| run_prefix_of(n) == Some(n))
        })
        .map(|e| e.path())
        .filter(|p| p.join("state.json").exists())
        .collect();
    found.sort();
    match found.len() {
        0 => bail!(
            "no lab is up under {} (start one with `lab up`)",
            run_root.display()
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "several labs are up; pick one with --run-dir: {}",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One line of the node table.
fn row(c: [&str; 10]) -> String {
    format!(
        "{:<5} {:<8} {:<18} {:<14} {:<16} {:<13} {:<10} {:<10} {:<8} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
    )
}

fn print_summary(st: &LabState) {
    println!(
        "lab {}  (run directory {})",
        st.prefix,
        st.run_dir.display()
    );
    println!(
        "switch namespace {} (bridge {}), client namespace {} at {} / {}",
        st.switch_netns, st.bridge, st.client.netns, st.client.ipv4, st.client.ipv6
    );
    println!(
        "{}",
        row([
            "node",
            "role",
            "namespace",
            "address",
            "ipv6",
            "floating",
            "clusterd",
            "dovecot",
            "postfix",
            "network",
        ])
    );
    for n in &st.nodes {
        let proc_state = |p: Option<clusterd_tests::lab::process::ProcId>| match p {
            None => "-".to_owned(),
            Some(p) if p.stopped() => format!("{} STOP", p.pid),
            Some(p) if p.alive() => p.pid.to_string(),
            Some(_) => "dead".to_owned(),
        };
        let postfix = if n.role == clusterd_tests::NodeRole::Mail {
            if mail::postfix_running(n) {
                "running"
            } else {
                "stopped"
            }
        } else {
            "-"
        };
        let mut network = Vec::new();
        let port = Command::new("ip")
            .args(["-n", &st.switch_netns, "-o", "link", "show", &n.bridge_port])
            .output();
        if port.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("state DOWN")) {
            network.push("link-down");
        }
        let nft = ns_command(&n.netns, "nft")
            .args([
                "list",
                "table",
                "inet",
                clusterd_tests::lab::PARTITION_TABLE,
            ])
            .output();
        if nft.is_ok_and(|o| o.status.success()) {
            network.push("partitioned");
        }
        let network = if network.is_empty() {
            "ok".to_owned()
        } else {
            network.join(",")
        };
        let floating = n.floating.map_or_else(|| "-".to_owned(), |f| f.to_string());
        println!(
            "{}",
            row([
                &n.name,
                n.role.as_str(),
                &n.netns,
                &n.ipv4.to_string(),
                &n.ipv6.to_string(),
                &floating,
                &proc_state(n.clusterd),
                &proc_state(n.dovecot),
                postfix,
                &network,
            ])
        );
    }
}

fn print_cluster_status(st: &LabState) {
    if st.clusterd_bin.is_none() {
        println!("clusterd: not running in this lab");
        return;
    }
    for n in st
        .nodes
        .iter()
        .filter(|n| n.clusterd.is_some_and(|p| p.alive() && !p.stopped()))
    {
        match clusterd_tests::lab::clusterd::clusterctl(st, n, &["status"]) {
            Ok(out) => {
                println!("clusterctl status (as {} sees it):", n.name);
                print!("{out}");
                return;
            }
            Err(e) => println!("clusterctl status on {}: {e}", n.name),
        }
    }
}

/// `lab chaos`: generate (or load) a schedule, run it, print the outcome.
fn chaos(
    run_root: PathBuf,
    faults: usize,
    seed: Option<u64>,
    minutes: Option<u64>,
    replay: Option<PathBuf>,
    out: Option<PathBuf>,
) -> Result<ExitCode> {
    use clusterd_tests::chaos::{self, Schedule, Shape};
    let schedule = match &replay {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            serde_json::from_str::<Schedule>(&text)
                .with_context(|| format!("{} is not a chaos schedule", file.display()))?
        }
        None => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
            });
            Schedule::generate(seed, faults, &Shape::standard())
        }
    };
    let out_dir = out.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "clusterd-chaos-{}-{}",
            schedule.seed,
            std::process::id()
        ))
    });
    eprintln!(
        "chaos: seed {}, {} faults in {} bursts; schedule and report in {}",
        schedule.seed,
        schedule.faults(),
        schedule.bursts.len(),
        out_dir.display()
    );
    let opts = chaos::Options {
        schedule,
        max_duration: minutes.map(|m| Duration::from_secs(m * 60)),
        out_dir: out_dir.clone(),
        run_root,
    };
    let outcome = chaos::run::run(&opts, &mut |line| eprintln!("chaos: {line}"))?;
    println!("{}", outcome.summary());
    for v in &outcome.violations {
        println!("VIOLATION: {v}");
    }
    if outcome.violations.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "seed {}; replay with: lab chaos --replay {}",
            opts.schedule.seed,
            out_dir.join("schedule.json").display()
        );
        Ok(ExitCode::FAILURE)
    }
}
