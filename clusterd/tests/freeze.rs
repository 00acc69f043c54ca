//! An address owner frozen for about one lease (as by SIGSTOP) that resumes exactly while the
//! leader has decided to take its address away and has not committed the takeover yet.
//!
//! The resumed owner's first act is to renew its lease. A lease granted in that window would
//! name a log in which the resumed node still owns the address: its replica catches up with
//! that log, it puts the address back at its superseded epoch, and once the takeover commits it
//! answers next to the new owner until that lease runs out. The grant rule (`lease::table::LeaseTable`)
//! withholds leases from a node while a takeover of its addresses is being committed.
//!
//! The interleaving is driven, not hoped for. Every node runs on its own thread with its own
//! runtime, so one node can be frozen whole: every worker of its runtime blocks, and with them
//! its renewals, its address runtime, its Raft, its API and its timers; on release the overdue
//! timers fire as after SIGCONT. A tracing layer holds the leader's placement task at the moment
//! it logs the takeover it decided, before writing it, while the leader's runtime goes on
//! serving. The owner resumes and renews; only once that renewal was answered does the
//! placement task write the takeover.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clusterd::auth::ClusterKey;
use clusterd::client::{ApiClient, with_retries};
use clusterd::lease::table::Withheld;
use clusterd::lock;
use clusterd::model::{Applied, Command, EventKind, MoveReason};
use clusterd::status::StatusReport;
use clusterd::vip::mem::{MemNet, World};
use common::NodeSpec;
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The one floating address, homed on mx1.
const ADDRESS: &str = "192.0.2.101/24";

/// Worker threads of every node's runtime. Any node may win the election, and the leader needs
/// a worker to answer lease requests while its placement task is held; a frozen node has all
/// of them blocked.
const WORKERS: usize = 2;

/// Longest a frozen node or a held placement task waits for the test to let it go: a failing
/// test never leaves a thread blocked for good.
const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// What every node's config adds to the loopback cluster: one address homed on mx1 that needs
/// no service, and Raft election timeouts long enough that an owner frozen for about a lease
/// resumes as a follower instead of calling an election (a follower elects after
/// `election_timeout_max` plus a random timeout of silence: 2.5-3 s here), so the leader that
/// decided the takeover is the one that writes it.
const EXTRA: &str = "[raft]\nelection_timeout_min = \"1000ms\"\nelection_timeout_max = \"1500ms\"\n\n\
                     [[addresses]]\nip = \"192.0.2.101/24\"\ninterface = \"eth0\"\nhome = \"mx1\"\n\
                     services = []\n";

/// A door that threads wait at until it opens, or until their own limit passes.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *lock(&self.open) = true;
        self.opened.notify_all();
    }

    fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut open = lock(&self.open);
        while !*open {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            open = self
                .opened
                .wait_timeout(open, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Opens its gate when dropped, so a failing step still lets every held thread go.
struct Opener(Arc<Gate>);

impl Drop for Opener {
    fn drop(&mut self) {
        self.0.open();
    }
}

thread_local! {
    /// The node whose runtime this thread belongs to.
    static NODE: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

fn name_thread(node: &Arc<str>) {
    NODE.with(|n| *n.borrow_mut() = Some(node.clone()));
}

/// One event a node logged.
#[derive(Clone, Debug)]
struct Logged {
    at: Instant,
    node: Arc<str>,
    message: String,
    fields: BTreeMap<&'static str, String>,
}

/// The leader's placement task, held after logging the takeover it decided.
#[derive(Debug)]
struct Held {
    at: Instant,
    node: Arc<str>,
    command: String,
}

/// Hold the placement task that logs a lease-expiry takeover of `address`.
struct Trap {
    address: String,
    hit: mpsc::Sender<Held>,
    release: Arc<Gate>,
}

/// What the tracing layer saw and what it is set to hold.
#[derive(Default)]
struct Probe {
    logged: Mutex<Vec<Logged>>,
    trap: Mutex<Option<Trap>>,
    /// When the held placement task went on to write its takeover.
    let_go: Mutex<Option<Instant>>,
}

fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(Probe::default)
}

impl Probe {
    /// What `node` logged with `message` at or after `since`.
    fn logged(&self, node: &str, message: &str, since: Instant) -> Vec<Logged> {
        lock(&self.logged)
            .iter()
            .filter(|l| &*l.node == node && l.message == message && l.at >= since)
            .cloned()
            .collect()
    }
}

/// An event's fields as text.
#[derive(Default)]
struct Fields(BTreeMap<&'static str, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

/// Whether `command` (a `Command`'s debug text) takes `address` from an owner whose lease
/// expired.
fn is_takeover(command: &str, address: &str) -> bool {
    command.starts_with("Assign {")
        && command.contains(&format!("ip: \"{address}\""))
        && command.contains("reason: LeaseExpired")
}

/// Records every `clusterd` event of the node threads, and holds the placement task the trap
/// is set for right after it logged its decision, before it writes it.
struct ProbeLayer;

impl<S: Subscriber> Layer<S> for ProbeLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let Some(node) = NODE.try_with(|n| n.borrow().clone()).ok().flatten() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let logged = Logged {
            at: Instant::now(),
            node,
            message,
            fields: fields.0,
        };
        lock(&probe().logged).push(logged.clone());
        if logged.message == "placement" {
            hold_if_trapped(&logged);
        }
    }
}

fn hold_if_trapped(logged: &Logged) {
    let Some(command) = logged.fields.get("command") else {
        return;
    };
    let trap = {
        let mut trap = lock(&probe().trap);
        match &*trap {
            Some(t) if is_takeover(command, &t.address) => trap.take(),
            _ => None,
        }
    };
    let Some(trap) = trap else {
        return;
    };
    let _ = trap.hit.send(Held {
        at: logged.at,
        node: logged.node.clone(),
        command: command.clone(),
    });
    let wait = || trap.release.wait(HOLD_LIMIT);
    // The worker's other tasks move to a fresh worker thread, so the leader keeps serving with
    // all its workers while this task sits between its decision and its write.
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
    *lock(&probe().let_go) = Some(Instant::now());
}

/// The probe for every thread of this test process; daemon logs on the test output too when
/// RUST_LOG is set.
fn install_probe() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let probe = ProbeLayer.with_filter(filter_fn(|m| {
            m.target().starts_with("clusterd") && *m.level() <= Level::DEBUG
        }));
        let logs = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_thread_names(true)
                .with_test_writer()
                .with_filter(EnvFilter::from_default_env())
        });
        tracing_subscriber::registry()
            .with(probe)
            .with(logs)
            .try_init()
            .expect("the only tracing subscriber of this test process");
    });
}

/// A node on its own thread with its own runtime.
struct Node {
    spec: NodeSpec,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: mpsc::Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// Start `spec`; a mail node's addresses live in `world`.
    fn start(spec: &NodeSpec, world: &Arc<World>, mail: bool) -> Node {
        let config = clusterd::config::load(&spec.config_path).expect("valid test config");
        let listener = std::net::TcpListener::bind(spec.addr).expect("bind test port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let net: Option<Arc<MemNet>> = mail.then(|| Arc::new(world.node(&spec.name)));
        let (runtime_tx, runtime_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = mpsc::channel();
        let name: Arc<str> = spec.name.as_str().into();
        let thread = std::thread::Builder::new()
            .name(spec.name.clone())
            .spawn(move || {
                name_thread(&name);
                let label = name.clone();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKERS)
                    .thread_name(format!("{name}-worker"))
                    .on_thread_start(move || name_thread(&label))
                    .enable_all()
                    .build()
                    .expect("node runtime");
                let _ = runtime_tx.send(runtime.handle().clone());
                let result = runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                    let shutdown = async move {
                        let _ = stop_rx.await;
                    };
                    tokio::spawn(clusterd::daemon::run_with(config, listener, shutdown, net))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
                let _ = stopped_tx.send(result);
            })
            .expect("node thread");
        let runtime = runtime_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{}: no runtime within 5 s", spec.name));
        Node {
            spec: spec.clone(),
            runtime,
            stop: Some(stop_tx),
            stopped: stopped_rx,
            thread: Some(thread),
        }
    }

    /// Freeze the whole node: every worker of its runtime blocks until the returned opener is
    /// dropped. Returns once all of them are blocked.
    fn freeze(&self) -> Opener {
        let gate = Arc::new(Gate::default());
        let (started_tx, started_rx) = mpsc::channel();
        for _ in 0..WORKERS {
            let (gate, started) = (gate.clone(), started_tx.clone());
            self.runtime.spawn(async move {
                let _ = started.send(());
                // A blocking wait on purpose: it stops this worker thread, as SIGSTOP stops
                // the process.
                gate.wait(HOLD_LIMIT);
            });
        }
        let opener = Opener(gate);
        for _ in 0..WORKERS {
            started_rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| {
                    panic!("{}: not every worker frozen within 5 s", self.spec.name)
                });
        }
        opener
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stop the node through its shutdown future and wait for its thread.
    fn stop(&mut self) -> Result<(), String> {
        self.signal_stop();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let result = self
            .stopped
            .recv_timeout(Duration::from_secs(15))
            .map_err(|_| format!("{} did not stop within 15 s", self.spec.name))?;
        thread
            .join()
            .map_err(|_| format!("{}'s thread panicked", self.spec.name))?;
        result.map_err(|e| format!("{} stopped with an error: {e}", self.spec.name))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The nodes of the test cluster.
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .expect("a node of the cluster")
    }

    fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.signal_stop();
        }
        for n in &mut self.nodes {
            n.stop().expect("clean shutdown");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.signal_stop();
        }
    }
}

/// The nodes answering for an address, from each instant on.
type Timeline = Vec<(Instant, Vec<String>)>;

/// Who answers for one address, over time: every change, polled every millisecond.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Timeline>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(world: Arc<World>, ip: IpAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![(Instant::now(), world.holders(ip))]));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = world.holders(ip);
                    let mut seen = lock(&seen);
                    if seen.last().is_none_or(|(_, last)| *last != now) {
                        seen.push((Instant::now(), now));
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Timeline {
        lock(&self.seen).clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll `f` every 5 ms until it returns `Some`; fail naming `step` after `within`.
fn wait_for<T>(step: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{step}: not reached within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn owner_and_epoch(report: &StatusReport) -> Option<(String, u64)> {
    let a = report.addresses.iter().find(|a| a.ip == ADDRESS)?;
    Some((a.owner.clone()?, a.epoch))
}

/// `w1` is the witness: it only votes, and every peer knows it as such.
fn make_witness(specs: &[NodeSpec], witness: &str) {
    let peer = format!("[[peers]]\nname = \"{witness}\"\n");
    for spec in specs {
        let text = std::fs::read_to_string(&spec.config_path).expect("read config");
        let text = if spec.name == witness {
            text.replacen("[node]\n", "[node]\nrole = \"witness\"\n", 1)
        } else {
            text.replacen(&peer, &format!("{peer}role = \"witness\"\n"), 1)
        };
        std::fs::write(&spec.config_path, text).expect("write config");
    }
}

/// How the resumed owner's renewal, sent while its takeover was being committed, came out.
#[derive(Debug)]
enum Renewal {
    /// The leader refused it: the refusal as the resumed node logged it.
    Refused(Logged),
    /// The resumed node answered for the address again (so it was granted a lease).
    HeldAgain(Instant),
}

#[test]
fn a_resumed_owner_renewing_while_its_takeover_is_being_committed_never_holds_alongside_the_new_owner()
 {
    install_probe();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = common::write_key(dir.path());
    let key = ClusterKey::load(&key_path).expect("cluster key");
    let names = ["mx1", "mx2", "w1"];
    let specs = common::write_configs_with(
        dir.path(),
        &key_path,
        &names,
        &names,
        &|_| EXTRA.into(),
        false,
    );
    make_witness(&specs, "w1");
    let world = World::new();
    let mut cluster = Cluster {
        nodes: specs
            .iter()
            .map(|s| Node::start(s, &world, s.name != "w1"))
            .collect(),
    };
    let addr_of = |name: &str| -> SocketAddr { cluster.node(name).spec.addr };
    let status_of = |name: &str| client.block_on(common::status(addr_of(name), &key));
    let ip: IpAddr = ADDRESS.split('/').next().unwrap().parse().unwrap();

    // 1. A leader, and the address placed on one mail node.
    let addrs: Vec<SocketAddr> = specs.iter().map(|s| s.addr).collect();
    let leader = client.block_on(common::agreed_leader(&addrs, &key, None));
    let owner = wait_for(
        "step 1 (the address placed and held by one mail node)",
        Duration::from_secs(15),
        || match world.holders(ip).as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        },
    );

    // 2. The owner to freeze is the mail node that does not lead; the other mail node takes
    // over. A witness leader leaves the owner where it is.
    let other = |n: &str| if n == "mx1" { "mx2" } else { "mx1" };
    let (frozen, taker) = match leader.as_str() {
        "mx1" | "mx2" => (other(&leader), leader.as_str()),
        _ => (owner.as_str(), other(&owner)),
    };
    if owner != frozen {
        let move_to = Command::RequestMove {
            ip: ADDRESS.into(),
            to: frozen.into(),
            by: "test".into(),
            at_ms: clusterd::clock::unix_ms(),
        };
        let leader_api =
            ApiClient::new(addr_of(&leader).to_string(), key.clone()).expect("an HTTP client");
        let _: Applied = client
            .block_on(with_retries(|| leader_api.post("/v1/propose", &move_to)))
            .expect("planned move accepted");
    }
    let epoch_before = wait_for(
        "step 2 (the node to freeze serves the address alone, its serving reported)",
        Duration::from_secs(10),
        || {
            if world.holders(ip) != [frozen] {
                return None;
            }
            let r = status_of(&leader)?;
            let (o, epoch) = owner_and_epoch(&r)?;
            let reported = r.events.iter().any(|e| {
                matches!(&e.kind, EventKind::Serving { ip, node, epoch: e, .. }
                    if ip == ADDRESS && node == frozen && *e == epoch)
            });
            (o == frozen && reported).then_some(epoch)
        },
    );

    // 3. Freeze the owner; the leader's placement task is held once it logs the takeover. The
    // leader chose which node to freeze, so it must still be the one leading.
    let still = client.block_on(common::agreed_leader(&addrs, &key, None));
    assert_eq!(still, leader, "leadership moved before the freeze");
    let sampler = Sampler::start(world.clone(), ip);
    let hold = Arc::new(Gate::default());
    let let_go = Opener(hold.clone());
    let (hit_tx, hit_rx) = mpsc::channel();
    *lock(&probe().trap) = Some(Trap {
        address: ADDRESS.into(),
        hit: hit_tx,
        release: hold,
    });
    let frozen_at = Instant::now();
    let thaw = cluster.node(frozen).freeze();
    let held = hit_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| {
            panic!(
                "step 3 (the leader decides to take the address from frozen {frozen}): not \
                 reached within 10 s"
            )
        });
    let frozen_for = held.at - frozen_at;
    assert_eq!(
        &*held.node, leader,
        "the takeover was decided by {}, not by the leader {leader}: leadership moved",
        held.node
    );
    assert!(
        held.command
            .contains(&format!("to: \"{taker}\", epoch: {epoch_before},")),
        "not the takeover from {frozen} at epoch {epoch_before} to {taker}: {}",
        held.command
    );
    // The frozen owner's guard closed by itself before the leader could decide anything.
    assert_eq!(
        world.holders(ip),
        Vec::<String>::new(),
        "someone answers for {ADDRESS} when the takeover is decided, {frozen_for:?} into the freeze"
    );

    // 4. Resume the owner while the takeover is decided and not written: it renews first.
    let resumed_at = Instant::now();
    drop(thaw);
    let withholding = format!("{leader} withholds a lease from {frozen}");
    let renewal = wait_for(
        "step 4 (the resumed owner's renewal answered while the takeover is held)",
        Duration::from_secs(5),
        || {
            let refused = [
                "address lease lost: dropping addresses",
                "lease renewal failed",
            ]
            .into_iter()
            .flat_map(|m| probe().logged(frozen, m, resumed_at))
            .find(|l| {
                l.fields
                    .get("reason")
                    .is_some_and(|r| r.contains(&withholding))
            });
            if let Some(l) = refused {
                return Some(Renewal::Refused(l));
            }
            world
                .holders(ip)
                .contains(&frozen.to_string())
                .then(|| Renewal::HeldAgain(Instant::now()))
        },
    );

    let answered = match &renewal {
        Renewal::Refused(l) => format!(
            "refused {:?} after resuming: {}",
            l.at - resumed_at,
            l.fields.get("reason").map_or("", String::as_str)
        ),
        Renewal::HeldAgain(at) => format!(
            "granted: {frozen} answered for {ADDRESS} again {:?} after resuming",
            *at - resumed_at
        ),
    };

    // 5. Let the leader write the takeover.
    let released_at = Instant::now();
    drop(let_go);
    wait_for(
        "step 5 (the new owner serves the address alone)",
        Duration::from_secs(10),
        || (world.holders(ip) == [taker]).then_some(()),
    );
    let (report, epoch_after) = wait_for(
        "step 5 (both mail nodes' replicas show the takeover)",
        Duration::from_secs(10),
        || {
            let on_taker = owner_and_epoch(&status_of(taker)?)?;
            let r = status_of(frozen)?;
            let on_frozen = owner_and_epoch(&r)?;
            (on_taker == on_frozen && on_taker.0 == taker).then_some((r, on_taker.1))
        },
    );

    // No instant with two nodes answering, and no comeback of the resumed owner.
    let since_resume = |seen: &Timeline| -> Vec<String> {
        seen.iter()
            .filter(|(at, holders)| *at >= resumed_at && holders.contains(&frozen.to_string()))
            .map(|(at, holders)| format!("+{:?} {holders:?}", *at - resumed_at))
            .collect()
    };
    let comeback = since_resume(&sampler.seen());
    let re_added = probe().logged(frozen, "address added", resumed_at);
    assert_eq!(
        world.violations(),
        Vec::<String>::new(),
        "{ADDRESS} answered by two nodes: {frozen}, frozen {frozen_for:?} and resumed while \
         the takeover by {leader} was held, answered again at (after resuming) {comeback:?}; \
         its renewal in the window: {answered}"
    );
    assert!(
        comeback.is_empty() && re_added.is_empty(),
        "{frozen} answered for {ADDRESS} again after resuming (after resuming: {comeback:?}), \
         re-added at epoch {:?}; its renewal in the window: {answered}",
        re_added
            .iter()
            .map(|l| l.fields.get("epoch"))
            .collect::<Vec<_>>()
    );

    // The race window was hit: the leader's placement task was held from before the resumed
    // owner's renewal was answered until after, and the refusal says why.
    let Renewal::Refused(refusal) = renewal else {
        unreachable!("a comeback failed the assertion above")
    };
    let written = lock(&probe().let_go).expect("the held placement task went on");
    assert!(
        held.at < resumed_at && resumed_at <= refusal.at && refusal.at < released_at,
        "the renewal was not answered inside the window: {refusal:?}"
    );
    assert!(written >= released_at, "the placement task went on early");
    let reason = &refusal.fields["reason"];
    assert!(
        reason.contains(&Withheld::TakeoverInFlight.to_string()),
        "refused for another reason: {reason}"
    );

    // The takeover is the one decided: the other mail node, a higher epoch, the expired lease.
    assert!(
        epoch_after > epoch_before,
        "{epoch_after} <= {epoch_before}"
    );
    assert!(
        report.events.iter().any(|e| matches!(
            &e.kind,
            EventKind::OwnerChanged { ip, from: Some(from), to, reason: MoveReason::LeaseExpired, .. }
                if ip == ADDRESS && from == frozen && to == taker
        )),
        "no lease-expiry takeover from {frozen} to {taker} in the history"
    );

    // 6. The resumed node holds a lease again: the grant names the takeover, which its replica
    // has applied, so it holds nothing, to the end.
    wait_for(
        "step 6 (the resumed owner holds a lease again)",
        Duration::from_secs(5),
        || {
            let renewed = probe().logged(frozen, "holding an address lease", released_at);
            renewed.first().map(|l| l.at)
        },
    );
    cluster.stop_all();
    assert_eq!(
        since_resume(&sampler.seen()),
        Vec::<String>::new(),
        "{frozen} answered for {ADDRESS} again once it held a lease after the takeover"
    );
    assert_eq!(
        world.violations(),
        Vec::<String>::new(),
        "{ADDRESS} answered by two nodes after the takeover"
    );
    drop(sampler);
}
