//! Shared helpers for clusterd's in-process and process tests: loopback cluster configs, keys,
//! and bounded waits.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clusterd::auth::ClusterKey;
use clusterd::client::ApiClient;
use clusterd::status::StatusReport;

/// One node of a test cluster: its name, address and files.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
}

/// A loopback port that is free right now (bound and released), never handed out twice in this
/// test process, so tests running in parallel cannot pick the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh loopback port after 100 tries")
}

/// Write a cluster key into `dir` and return its path.
pub fn write_key(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.key");
    ClusterKey::generate()
        .write(&path, false)
        .expect("write key");
    path
}

/// Configs for `names` on loopback, with `voters` as the voter set; each node's file lists
/// `extra` (raw TOML) at the end, e.g. floating addresses and checks. The nodes run in
/// `dry_run` (they never touch this machine's addresses or firewall): tests that exercise the
/// address runtime give `daemon::run_with` an in-memory network instead.
pub fn write_configs(
    dir: &Path,
    key: &Path,
    names: &[&str],
    voters: &[&str],
    extra: &dyn Fn(&str) -> String,
) -> Vec<NodeSpec> {
    write_configs_with(dir, key, names, voters, extra, true)
}

/// [`write_configs`], choosing `dry_run`.
pub fn write_configs_with(
    dir: &Path,
    key: &Path,
    names: &[&str],
    voters: &[&str],
    extra: &dyn Fn(&str) -> String,
    dry_run: bool,
) -> Vec<NodeSpec> {
    let nodes: Vec<NodeSpec> = names
        .iter()
        .map(|n| NodeSpec {
            name: n.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            config_path: dir.join(format!("{n}.toml")),
            data_dir: dir.join(n),
        })
        .collect();
    for node in &nodes {
        let mut text = format!(
            "[node]\nname = \"{}\"\nlisten = \"{}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\ndry_run = {dry_run}\n\n",
            node.name,
            node.addr,
            node.data_dir.display(),
            key.display()
        );
        text.push_str(&format!(
            "[cluster]\nvoters = [{}]\n\n",
            voters
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for peer in nodes.iter().filter(|p| p.name != node.name) {
            text.push_str(&format!(
                "[[peers]]\nname = \"{}\"\naddress = \"{}\"\n\n",
                peer.name, peer.addr
            ));
        }
        text.push_str(&extra(&node.name));
        std::fs::write(&node.config_path, text).expect("write config");
    }
    nodes
}

/// Floating addresses and the checks they need, identical on every node. The imap check is a
/// plugin that passes while `DIR/NODE-imap-down` does not exist (`health_dir`), so tests decide
/// each node's health; without a directory it always passes.
pub fn two_addresses(node: &str) -> String {
    addresses_with_health(node, None)
}

/// [`two_addresses`] with the imap check failing on a node while `dir/NODE-imap-down` exists.
pub fn addresses_with_health(node: &str, dir: Option<&std::path::Path>) -> String {
    // Tests that fail services probe often; the others keep the default pace (fewer processes).
    let (test, interval) = match dir {
        Some(d) => (
            format!(
                "test ! -e {}/{node}-imap-down || {{ echo CRITICAL - imap down; exit 2; }}",
                d.display()
            ),
            "200ms",
        ),
        None => ("exit 0".to_string(), "1s"),
    };
    format!(
        "[[addresses]]\nip = \"192.0.2.101/24\"\ninterface = \"eth0\"\nhome = \"n1\"\nservices = [\"imap\"]\n\n\
         [[addresses]]\nip = \"192.0.2.102/24\"\ninterface = \"eth0\"\nhome = \"n2\"\nservices = [\"imap\"]\n\n\
         [checks.imap]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"{test}\"]\n\
         interval = \"{interval}\"\ntimeout = \"{interval}\"\n"
    )
}

/// Poll `f` every 20 ms until it returns `Some`, or fail after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status report of the node at `addr`, if it answers.
pub async fn status(addr: SocketAddr, key: &ClusterKey) -> Option<StatusReport> {
    ApiClient::new(addr.to_string(), key.clone())
        .expect("an HTTP client")
        .with_timeout(Duration::from_secs(2))
        .get::<StatusReport>("/v1/status?limit=100")
        .await
        .ok()
}

/// Wait until every node in `addrs` reports the same leader, other than `not`, and return it.
pub async fn agreed_leader(addrs: &[SocketAddr], key: &ClusterKey, not: Option<&str>) -> String {
    eventually(
        "one leader agreed by every node",
        Duration::from_secs(10),
        || async {
            let mut leader: Option<String> = None;
            for addr in addrs {
                let l = status(*addr, key).await?.leader?;
                if Some(l.as_str()) == not {
                    return None;
                }
                match &leader {
                    None => leader = Some(l),
                    Some(prev) if *prev != l => return None,
                    Some(_) => {}
                }
            }
            leader
        },
    )
    .await
}

/// Send daemon logs to the test output when RUST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
