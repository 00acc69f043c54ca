//! The daemon: wires config, store, Raft, the API and the background duties together.
//!
//! [`run`] is what `clusterd` calls and what in-process tests call: it owns no global state, so
//! several nodes can run in one process. Background duties are small loops that look at Raft
//! metrics and the replica and propose commands; the decisions themselves live in `model`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::api;
use crate::auth::{ClusterKey, KeyError};
use crate::client::{AddMemberRequest, MembershipReply, admin_paths};
use crate::config::{Config, FailbackMode};
use crate::model::plan::Policy;
use crate::model::{AddressSpec, Command, Member, NodeId, node_id};
use crate::node::Shared;
use crate::raft::network::{Network, PeerTable};
use crate::raft::propose::ProposeError;
use crate::raft::store::{self, OpenError};
use crate::raft::{Metrics, Raft};
use crate::status::StatusReport;

/// How often background duties look at the cluster when nothing changed.
const DUTY_TICK: Duration = Duration::from_millis(250);
/// Pause after a failed duty before trying it again.
const DUTY_RETRY: Duration = Duration::from_millis(300);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cluster key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The Raft store could not be opened.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// openraft refused its configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The kernel address runtime could not start.
    #[error("address runtime: {0}")]
    Net(String),
    /// The API server failed.
    #[error("API server on {addr}: {source}")]
    Serve {
        /// The listen address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A task that must run as long as the daemon ended on its own.
    #[error(
        "the daemon's {task} task {how}; clusterd stopped so that the service manager starts \
         it afresh (its addresses were released)"
    )]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// How it ended (returned, or the panic message).
        how: String,
    },
}

/// The daemon's long-lived tasks, each of which must run until the daemon stops. One that
/// ends before (a panic, a loop that gave up) is noticed: the daemon logs it and stops with
/// [`RunError::TaskEnded`], rather than running on without it (a dead health reporter would
/// leave the leader believing stale health; a dead address runtime would leave addresses
/// unmanaged).
#[derive(Default)]
struct Supervised {
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Supervised {
    fn spawn(&mut self, task: &'static str, f: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((task, tokio::spawn(f)));
    }

    /// [`Supervised::spawn`] a loop that must also beat in `loops` (the watchdog and `status`
    /// report it when it falls silent).
    fn spawn_watched(
        &mut self,
        loops: &crate::systemd::loops::Loops,
        task: &'static str,
        f: impl Future<Output = ()> + Send + 'static,
    ) {
        loops.watch(task);
        self.spawn(task, f);
    }

    /// The first task to end, and how; pends for ever while all run (or there are none).
    async fn first_end(&mut self) -> (&'static str, String) {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (result, i, _) =
            futures_util::future::select_all(self.tasks.iter_mut().map(|(_, h)| h)).await;
        let (task, _) = self.tasks.swap_remove(i);
        let how = match result {
            Ok(()) => "returned".to_string(),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                format!("panicked: {msg}")
            }
            Err(_) => "was cancelled".to_string(),
        };
        (task, how)
    }

    /// Wait for every task still running (after the stop signal).
    async fn join(self) {
        for (_, task) in self.tasks {
            let _ = task.await;
        }
    }
}

fn raft_config(config: &Config) -> Result<openraft::Config, RunError> {
    let ms = |d: Duration| d.as_millis() as u64;
    let r = &config.raft;
    openraft::Config {
        cluster_name: "clusterd".to_string(),
        heartbeat_interval: ms(r.heartbeat_interval.0),
        election_timeout_min: ms(r.election_timeout_min.0),
        election_timeout_max: ms(r.election_timeout_max.0),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_after),
        max_in_snapshot_log_to_keep: 100,
        max_payload_entries: crate::raft::network::MAX_APPEND_ENTRIES,
        snapshot_max_chunk_size: crate::raft::network::SNAPSHOT_CHUNK,
        // A chunk is encoded, signed, sent, decoded and (the last one) installed within this.
        install_snapshot_timeout: 5000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| RunError::Raft(e.to_string()))
}

/// Run one node until `shutdown` resolves, serving on `listener`, with the real kernel
/// address runtime on mail nodes (none in `dry_run`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let net = if config.node.role == crate::model::Role::Mail && !config.node.dry_run {
        Some(Arc::new(
            crate::vip::linux::LinuxNet::new().map_err(|e| RunError::Net(e.to_string()))?,
        ))
    } else {
        None
    };
    run_with(config, listener, shutdown, net).await
}

/// Where a node serves its API and how it reaches its peers.
pub enum Endpoint {
    /// HTTP on this listener; peers over HTTP.
    Listen(TcpListener),
    /// A simulation: no socket at all. The node's shared state and API router go to the
    /// harness through `started` (it delivers peers' requests to the router itself), and the
    /// node reaches its peers through `wire`.
    Sim {
        /// The simulated network.
        wire: Arc<dyn crate::wire::PeerWire>,
        /// Receives the node's state and router once they exist.
        started: tokio::sync::oneshot::Sender<(Arc<Shared>, axum::Router)>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Listen(l) => write!(f, "Listen({:?})", l.local_addr()),
            Endpoint::Sim { wire, .. } => write!(f, "Sim({wire:?})"),
        }
    }
}

/// [`run`] with a chosen address runtime (`None`, or `dry_run` in the config: this node holds
/// no addresses).
pub async fn run_with<N: crate::vip::NetOps>(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    net: Option<Arc<N>>,
) -> Result<(), RunError> {
    run_at(config, Endpoint::Listen(listener), shutdown, net).await
}

/// [`run_with`] at a chosen [`Endpoint`].
pub async fn run_at<N: crate::vip::NetOps>(
    config: Config,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()> + Send + 'static,
    net: Option<Arc<N>>,
) -> Result<(), RunError> {
    // Before Raft runs: whatever this node acknowledged in an earlier life was before this.
    let started = crate::clock::now();
    let key = ClusterKey::load(&config.node.key_file)?;
    // A fence secret open to others is refused when a fence reads it; say so now, not at the
    // first fence.
    if let Err(e) = crate::fence::agents::check_secret_files(&config) {
        warn!("{e}; fences that need these files will fail until they are fixed");
    }
    // Bound before anything starts, so a taken port stops the daemon with a clear error.
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Serve {
                    addr: format!("{addr} (metrics.listen)"),
                    source,
                })?,
        ),
        None => None,
    };
    let mut server_tasks = Vec::new();
    let lease_timings = config.leases.timings();
    let policy = Policy {
        auto_failback: config.placement.failback == FailbackMode::Auto,
        failback_after_ms: config.placement.failback_after.as_millis(),
        hold_down_ms: config.placement.hold_down.as_millis(),
    };
    let me = config.node.name.clone();
    let id = node_id(&me);
    let (log_store, state_machine, replica) =
        store::open(&config.node.data_dir, config.raft.history_limit as usize)?;
    let database = log_store.database();
    let raft_cfg = raft_config(&config)?;
    let reachable_within = Duration::from_millis(raft_cfg.election_timeout_max * 3);
    // Well above a loaded machine's heartbeat delays, well below an operator's patience.
    let quorum_lost_after =
        Duration::from_millis(raft_cfg.election_timeout_max * 5).max(Duration::from_secs(1));
    let peers = PeerTable::default();
    // Built once: building a client later, when descriptors may have run out, could fail.
    let http: crate::wire::Http = match &endpoint {
        Endpoint::Listen(_) => crate::raft::network::http_client()
            .map_err(|e| RunError::Net(format!("cannot build the HTTP client: {e}")))?
            .into(),
        Endpoint::Sim { wire, .. } => crate::wire::Http::Sim(wire.clone()),
    };
    let votes = Arc::new(std::sync::Mutex::new(
        crate::lease::table::VoteAnswers::default(),
    ));
    let network = Network::new(
        id,
        key.clone(),
        peers.clone(),
        Duration::from_millis(raft_cfg.heartbeat_interval * 4),
        http.clone(),
        votes.clone(),
        lease_timings.drift_ppm,
    );
    let raft = Raft::new(id, Arc::new(raft_cfg), network, log_store, state_machine)
        .await
        .map_err(|e| RunError::Raft(e.to_string()))?;
    // Elections wait for a majority's pre-vote (`raft::prevote`, whose loop turns them on).
    raft.runtime_config().elect(false);
    let config_for_fencing = config.clone();
    let shared = Arc::new(Shared {
        me: me.clone(),
        id,
        config,
        raft: raft.clone(),
        key,
        http,
        replica,
        peers,
        unauthorized: Mutex::new(crate::auth::UnauthorizedLog::default()),
        loops: Default::default(),
        reachable_within,
        quorum_lost_after,
        leases: crate::lease::table::Leases::new(lease_timings, started, votes),
        probes: crate::health::view::LocalView::default(),
        fencing: crate::fence::agents::Fencing::from_config(&config_for_fencing),
        hooks: crate::hooks::queue::Hooks::new(&me, &config_for_fencing.hooks),
        metrics: crate::metrics::registry::Registry::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let app = api::router(shared.clone());
    let (local, server) = match endpoint {
        Endpoint::Listen(listener) => {
            let local = listener.local_addr();
            let is_member: crate::http_server::IsMember = {
                let shared = shared.clone();
                Arc::new(move |ip| shared.is_member_address(ip))
            };
            let server = tokio::spawn(crate::http_server::serve(
                "api",
                listener,
                app,
                crate::http_server::Bounds::default(),
                is_member,
                shared.metrics.http.clone(),
                stop_rx.clone(),
            ));
            (local, server)
        }
        Endpoint::Sim { started, .. } => {
            let _ = started.send((shared.clone(), app));
            let mut stop = stop_rx.clone();
            let server = tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            let local = Err(std::io::Error::other("simulated: no listener"));
            (local, server)
        }
    };
    let addr = local
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    info!(node = %me, "listening on {addr}");

    if let Some(listener) = metrics_listener {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        info!(node = %me, "metrics listening on {addr}");
        server_tasks.push(tokio::spawn(crate::metrics::serve(
            shared.clone(),
            listener,
            stop_rx.clone(),
        )));
    }
    // The hook runner outlives the other duties, so that what they report while stopping (the
    // addresses released at shutdown) still reaches the scripts.
    let (hooks_stop, hooks_stop_rx) = watch::channel(false);
    let hook_runner = tokio::spawn(crate::hooks::run(shared.clone(), hooks_stop_rx));

    use crate::systemd::loops::{
        DNS, DUTIES, ELECTIONS, HEALTH, HOOKS, LEADERSHIP, LEASE_RENEWAL, PLACEMENT,
    };
    let mut background = Supervised::default();
    let loops = &shared.loops;
    background.spawn_watched(
        loops,
        ELECTIONS,
        crate::raft::prevote::run(shared.clone(), stop_rx.clone()),
    );
    background.spawn_watched(loops, DUTIES, duties(shared.clone(), stop_rx.clone()));
    background.spawn_watched(
        loops,
        HOOKS,
        crate::hooks::observe(shared.clone(), stop_rx.clone()),
    );
    background.spawn_watched(
        loops,
        PLACEMENT,
        crate::placement::run(shared.clone(), policy, stop_rx.clone()),
    );
    background.spawn_watched(
        loops,
        DNS,
        crate::dns_feed::run(shared.clone(), stop_rx.clone()),
    );
    background.spawn_watched(
        loops,
        HEALTH,
        crate::health::run(shared.clone(), stop_rx.clone()),
    );
    background.spawn_watched(
        loops,
        LEADERSHIP,
        crate::lease::confirm_loop(shared.clone(), stop_rx.clone()),
    );
    let net = net.filter(|_| !shared.config.node.dry_run);
    if let Ok(local) = local {
        // The watchdog itself: not watched by itself.
        background.spawn(
            "service manager",
            crate::systemd::run(
                shared.clone(),
                crate::systemd::reachable(local),
                net.is_some(),
                stop_rx.clone(),
            ),
        );
    }
    if let Some(net) = net {
        // Only a node that can hold addresses takes leases for them.
        background.spawn_watched(
            loops,
            LEASE_RENEWAL,
            crate::lease::renew_loop(shared.clone(), stop_rx.clone()),
        );
        background.spawn(
            "link watch",
            crate::vip::watch_links(net.clone(), stop_rx.clone()),
        );
        background.spawn_watched(
            loops,
            crate::systemd::loops::ADDRESSES,
            crate::vip::run(shared.clone(), net, stop_rx.clone()),
        );
    }
    let joiner = tokio::spawn(bootstrap(shared.clone(), stop_rx.clone()));

    let ended = tokio::select! {
        () = shutdown => None,
        ended = background.first_end() => Some(ended),
    };
    match &ended {
        None => info!(node = %me, "shutting down"),
        Some((task, how)) => error!(
            node = %me,
            task,
            how = %how,
            "a daemon task ended on its own: shutting down so that the service manager \
             restarts clusterd"
        ),
    }
    let _ = stop_tx.send(true);
    let _ = joiner.await;
    background.join().await;
    let _ = hooks_stop.send(true);
    let _ = hook_runner.await;
    for task in server_tasks {
        let _ = task.await;
    }
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft did not shut down cleanly");
    }
    let served = server.await;
    drop(raft);
    drop(shared);
    // Raft's worker tasks let go of the store shortly after shutdown. Close the file here, as
    // its last user, so that `run` returns only once it is closed and a restart in the same
    // process can open it again.
    let deadline = crate::clock::now() + Duration::from_secs(5);
    while Arc::strong_count(&database) > 1 && crate::clock::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if Arc::strong_count(&database) > 1 {
        warn!("the Raft store is still in use 5 s after shutdown");
    }
    if crate::clock::simulated() {
        drop(database);
    } else {
        let _ = tokio::task::spawn_blocking(move || drop(database)).await;
    }
    if let Err(e) = served {
        warn!(error = %e, "API server task failed");
    }
    info!(node = %me, "stopped");
    match ended {
        Some((task, how)) => Err(RunError::TaskEnded { task, how }),
        None => Ok(()),
    }
}

fn is_member(metrics: &Metrics, id: NodeId) -> bool {
    metrics
        .membership_config
        .membership()
        .get_node(&id)
        .is_some()
}

/// Form the cluster on first start, or join an existing one.
///
/// Configured voters that find no initialized peer call `initialize` with the configured voter
/// set; several doing so at once is safe because they all write the same first entry. A node
/// that finds an existing cluster (or is not a configured voter) asks the leader to add it as a
/// learner instead, and keeps asking until it is a member.
async fn bootstrap(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.config;
    let initialized = shared.raft.is_initialized().await.unwrap_or(false);
    if initialized {
        info!("restarting from the Raft store; no bootstrap needed");
        return;
    }
    let voter = cfg.is_voter(&shared.me);
    if voter && !existing_cluster(&shared).await {
        let members: BTreeMap<NodeId, Member> = cfg
            .members()
            .into_iter()
            .filter(|m| cfg.is_voter(&m.name))
            .map(|m| {
                (
                    node_id(&m.name),
                    Member {
                        name: m.name,
                        addr: m.address.to_string(),
                        role: m.role,
                    },
                )
            })
            .collect();
        match shared.raft.initialize(members).await {
            Ok(()) => info!(voters = ?cfg.voters(), "initialized a new cluster"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                debug!("already initialized by a peer")
            }
            Err(e) => warn!(error = %e, "could not initialize the cluster"),
        }
        return;
    }
    if voter {
        info!("found an existing cluster; waiting to be replicated to");
        return;
    }
    // A learner: ask to be added until we are a member.
    let request = AddMemberRequest {
        name: shared.me.clone(),
        addr: cfg.advertise().to_string(),
        role: cfg.node.role,
        voter: false,
        force: false,
    };
    loop {
        if is_member(&shared.raft.metrics().borrow(), shared.id) {
            info!("joined the cluster as a learner");
            return;
        }
        for peer in &cfg.peers {
            let client = shared
                .client_to(peer.name.clone(), peer.address.to_string())
                .with_timeout(Duration::from_secs(20));
            match client
                .post::<_, MembershipReply>(admin_paths::MEMBERS, &request)
                .await
            {
                Ok(reply) => {
                    info!(via = %peer.name, "{}", reply.message);
                    break;
                }
                Err(e) => debug!(via = %peer.name, error = %e, "join request failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Whether any peer already runs an initialized cluster.
async fn existing_cluster(shared: &Shared) -> bool {
    for peer in &shared.config.peers {
        let client = shared
            .client_to(peer.name.clone(), peer.address.to_string())
            .with_timeout(Duration::from_millis(700));
        if let Ok(report) = client.get::<StatusReport>(admin_paths::STATUS).await
            && report.commit_index.is_some()
        {
            return true;
        }
    }
    false
}

/// Observed Raft facts worth a log line when they change.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    state: ServerState,
    leader: Option<NodeId>,
    term: u64,
    membership: (Vec<String>, Vec<String>),
}

fn observe(m: &Metrics) -> Observed {
    let (_, voters, learners) = crate::raft::membership_names(m);
    Observed {
        state: m.state,
        leader: m.current_leader,
        term: m.current_term,
        membership: (voters, learners),
    }
}

fn name_of(m: &Metrics, id: Option<NodeId>) -> String {
    id.and_then(|id| m.membership_config.membership().get_node(&id))
        .map(|n| n.name.clone())
        .unwrap_or_else(|| "none".into())
}

/// The node's own duties: log Raft changes, and declare this mail node's configured addresses
/// (the leader's duties are [`crate::placement`]'s).
async fn duties(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut metrics_rx = shared.raft.metrics();
    let mut last: Option<Observed> = None;
    let mut retry_at = crate::clock::now();
    let declared = shared.config.declared_addresses();
    loop {
        shared.loops.beat(crate::systemd::loops::DUTIES);
        let metrics = metrics_rx.borrow_and_update().clone();
        let now = observe(&metrics);
        if last.as_ref() != Some(&now) {
            log_change(last.as_ref(), &now, &metrics);
            if last.as_ref().map(|l| (l.leader, l.term)) != Some((now.leader, now.term)) {
                // A new leader may accept what the old one could not: try at once.
                retry_at = crate::clock::now();
            }
            last = Some(now);
        }
        if crate::clock::now() >= retry_at
            && let Err(e) = declare(&shared, &metrics, &declared).await
        {
            debug!(error = %e, "declaring the configured addresses failed; will retry");
            retry_at = crate::clock::now() + DUTY_RETRY;
        }
        tokio::select! {
            _ = metrics_rx.changed() => {}
            _ = tokio::time::sleep(DUTY_TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn log_change(before: Option<&Observed>, now: &Observed, m: &Metrics) {
    let leader = name_of(m, now.leader);
    match before {
        Some(b) if b.state != now.state => info!(
            from = ?b.state, to = ?now.state, term = now.term, leader = %leader,
            "raft state changed"
        ),
        Some(b) if b.leader != now.leader => {
            info!(leader = %leader, term = now.term, "leader changed")
        }
        None => info!(state = ?now.state, term = now.term, leader = %leader, "raft started"),
        _ => {}
    }
    if before.map(|b| &b.membership) != Some(&now.membership) {
        info!(voters = ?now.membership.0, learners = ?now.membership.1, "membership");
    }
}

/// A mail node reports its configured address set when the replica does not have it yet.
async fn declare(
    shared: &Shared,
    metrics: &Metrics,
    declared: &[AddressSpec],
) -> Result<(), ProposeError> {
    if metrics.current_leader.is_none() {
        return Ok(());
    }
    let replica = shared.replica.borrow().clone();
    let at_ms = crate::clock::unix_ms();
    let reported = replica
        .state
        .declared
        .get(&shared.me)
        .map(|d| d.addresses.as_slice());
    if shared.config.node.role == crate::model::Role::Mail
        && is_member(metrics, shared.id)
        && reported != Some(declared)
    {
        crate::raft::propose::propose(
            shared,
            Command::Declare {
                node: shared.me.clone(),
                addresses: declared.to_vec(),
                at_ms,
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_supervised_task_that_panics_or_returns_is_named_with_how_it_ended() {
        let mut s = Supervised::default();
        s.spawn("forever", std::future::pending());
        s.spawn("health", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("too many open files");
        });
        let (task, how) = s.first_end().await;
        assert_eq!(task, "health");
        assert_eq!(how, "panicked: too many open files");
        s.spawn("placement", async {});
        let (task, how) = s.first_end().await;
        assert_eq!((task, how.as_str()), ("placement", "returned"));
        // The one still running is the only one left to join.
        assert_eq!(s.tasks.len(), 1);
        s.tasks[0].1.abort();
        s.join().await;
    }

    #[tokio::test]
    async fn no_supervised_task_means_nothing_ever_ends() {
        let mut s = Supervised::default();
        let waited = tokio::time::timeout(Duration::from_millis(50), s.first_end()).await;
        assert!(waited.is_err());
    }
}
