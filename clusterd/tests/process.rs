//! Process tests: the real `clusterd` and `clusterctl` binaries on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use clusterd::auth::ClusterKey;
use clusterd::client::{ApiClient, ClientError};
use clusterd::model::EventKind;
use clusterd::status::StatusReport;
use common::{NodeSpec, eventually, write_configs, write_key};

const CLUSTERD: &str = env!("CARGO_BIN_EXE_clusterd");
const CLUSTERCTL: &str = env!("CARGO_BIN_EXE_clusterctl");

/// Daemons started by this test; killed (by their own pid) when dropped.
struct Daemons {
    children: Vec<Child>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(spec: &NodeSpec, log: &Path) -> Child {
    Command::new(CLUSTERD)
        .arg("--config")
        .arg(&spec.config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start clusterd")
}

fn ctl(args: &[&str]) -> Output {
    Command::new(CLUSTERCTL)
        .args(args)
        .output()
        .expect("run clusterctl")
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Lab {
    dir: tempfile::TempDir,
    key_path: PathBuf,
    specs: Vec<NodeSpec>,
    daemons: Daemons,
}

impl Lab {
    fn start() -> Lab {
        Self::start_with(&common::two_addresses)
    }

    /// Three daemons whose configs end with `extra(node)`.
    fn start_with(extra: &dyn Fn(&str) -> String) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let key_path = write_key(dir.path());
        let specs = write_configs(
            dir.path(),
            &key_path,
            &["n1", "n2", "n3"],
            &["n1", "n2", "n3"],
            extra,
        );
        let children = specs
            .iter()
            .map(|s| start(s, &dir.path().join(format!("{}.log", s.name))))
            .collect();
        Lab {
            dir,
            key_path,
            specs,
            daemons: Daemons { children },
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn status_json(&self, node: usize) -> Option<StatusReport> {
        let out = ctl(&[
            "--config",
            path_str(&self.specs[node].config_path),
            "status",
            "--json",
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_show_three_nodes_and_one_leader_in_clusterctl_status() {
    let lab = Lab::start();
    let report = eventually(
        "a leader in clusterctl status",
        Duration::from_secs(15),
        || async {
            let r = lab.status_json(0)?;
            r.leader.is_some().then_some(r)
        },
    )
    .await;
    assert_eq!(report.nodes.len(), 3, "{report:?}");
    let leaders: Vec<_> = report
        .nodes
        .iter()
        .filter(|n| n.raft_state == "leader")
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(leaders, vec![report.leader.clone().unwrap()]);
    // The JSON has the documented top-level fields.
    let out = ctl(&[
        "--config",
        path_str(&lab.specs[1].config_path),
        "status",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["leader", "term", "nodes", "addresses", "events"] {
        assert!(v.get(field).is_some(), "status --json lacks {field}: {v}");
    }
    // Every node agrees on the leader; --leader answers from the leader itself.
    for i in 0..3 {
        let r = eventually("same leader everywhere", Duration::from_secs(5), || async {
            let r = lab.status_json(i)?;
            (r.leader == report.leader).then_some(r)
        })
        .await;
        assert_eq!(r.nodes.len(), 3);
    }
    // --leader answers from the leader itself (retried: leadership may still settle).
    eventually(
        "status --leader from the leader",
        Duration::from_secs(10),
        || async {
            let out = ctl(&[
                "--config",
                path_str(&lab.specs[0].config_path),
                "status",
                "--leader",
                "--json",
            ]);
            let r: StatusReport = serde_json::from_slice(&out.stdout).ok()?;
            (Some(&r.answered_by) == r.leader.as_ref()).then_some(())
        },
    )
    .await;
    // The table is readable.
    let out = ctl(&["--config", path_str(&lab.specs[0].config_path), "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NODE") && text.contains("192.0.2.101/24"),
        "{text}"
    );
    drop(lab.daemons);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_gets_401_and_changes_nothing() {
    let lab = Lab::start();
    eventually("a leader", Duration::from_secs(15), || async {
        lab.status_json(0)?.leader.map(|_| ())
    })
    .await;
    let key = ClusterKey::load(&lab.key_path).unwrap();
    let addr = lab.specs[0].addr.to_string();
    let events_before = eventually("history settles", Duration::from_secs(5), || async {
        let e: Vec<clusterd::model::Event> = ApiClient::new(addr.clone(), key.clone())
            .expect("an HTTP client")
            .get("/v1/history")
            .await
            .ok()?;
        // Leader election, membership, addresses and three declarations: wait until the two
        // address-declaring nodes have reported.
        (e.len() >= 3).then_some(e)
    })
    .await;

    let wrong_path = lab.dir.path().join("wrong.key");
    ClusterKey::generate().write(&wrong_path, false).unwrap();
    let wrong = ClusterKey::load(&wrong_path).unwrap();

    // clusterctl with the wrong key: refused, exit code 1, a message about the key.
    let out = ctl(&[
        "--node",
        &addr,
        "--key-file",
        path_str(&wrong_path),
        "note",
        "should",
        "not",
        "land",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");

    // A wrongly signed write, an unsigned one, and a wrongly signed Raft RPC: all 401.
    let err = ApiClient::new(addr.clone(), wrong.clone())
        .expect("an HTTP client")
        .post::<_, serde_json::Value>("/v1/note", &serde_json::json!({"text": "forged"}))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized { .. }), "{err}");
    let http = reqwest::Client::new();
    for (path, body) in [
        ("/v1/note", r#"{"text":"unsigned"}"#),
        ("/raft/vote", r#"{}"#),
        (
            "/v1/members",
            r#"{"name":"evil","addr":"127.0.0.1:1","role":"mail","voter":true}"#,
        ),
    ] {
        let resp = http
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path}");
    }
    let resp = http
        .get(format!("http://{addr}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Nothing changed: the history holds no note and membership is unchanged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<clusterd::model::Event> = ApiClient::new(addr.clone(), key.clone())
        .expect("an HTTP client")
        .get("/v1/history")
        .await
        .unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Note { .. })),
        "{events:?}"
    );
    assert!(events.len() >= events_before.len());
    let report = lab.status_json(0).unwrap();
    assert_eq!(report.nodes.len(), 3);

    // The refusals were logged once (rate-limited), and no key material reached a log.
    let log = lab.log("n1");
    let lines = log.matches("rejected unauthenticated request").count();
    assert_eq!(
        lines, 1,
        "expected one rate-limited line, got {lines}:\n{log}"
    );
    let key_hex = std::fs::read_to_string(&lab.key_path).unwrap();
    let wrong_hex = std::fs::read_to_string(&wrong_path).unwrap();
    for name in ["n1", "n2", "n3"] {
        let log = lab.log(name);
        assert!(!log.contains(key_hex.trim()) && !log.contains(wrong_hex.trim()));
    }

    // With the right key the same note lands.
    let out = ctl(&[
        "--config",
        path_str(&lab.specs[0].config_path),
        "note",
        "right",
        "key",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = ctl(&[
        "--config",
        path_str(&lab.specs[2].config_path),
        "history",
        "--json",
    ]);
    let events: Vec<clusterd::model::Event> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Note { text, .. } if text == "right key"))
    );
    drop(lab.daemons);
}

#[test]
fn sigterm_stops_a_daemon_cleanly() {
    let lab = Lab::start();
    let mut daemons = lab.daemons;
    let mut child = daemons.children.remove(0);
    let log_path = lab.dir.path().join("n1.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no 'listening on' line"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "clusterd ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("stopped"), "{log}");
}

/// A key and the configs of three voters n1, n2, n3 in a fresh directory (kept alive by the
/// returned guard).
fn three_voters() -> (tempfile::TempDir, std::path::PathBuf, Vec<NodeSpec>) {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path());
    let specs = write_configs(
        dir.path(),
        &key,
        &["n1", "n2", "n3"],
        &["n1", "n2", "n3"],
        &|_| String::new(),
    );
    (dir, key, specs)
}

#[test]
fn check_config_accepts_good_and_names_the_field_of_bad_configs() {
    let (dir, _key, specs) = three_voters();
    let out = ctl(&["check-config", path_str(&specs[0].config_path)]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&specs[0].config_path)
        .unwrap()
        .replace(
            "[cluster]\nvoters = [\"n1\", \"n2\", \"n3\"]",
            "[cluster]\nvoters = [\"n1\", \"n2\"]",
        );
    std::fs::write(&bad, text).unwrap();
    let out = ctl(&["check-config", path_str(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.voters"), "{stderr}");
    assert!(stderr.contains("witness"), "{stderr}");

    // The daemon refuses the same file at start, with the same explanation.
    let out = Command::new(CLUSTERD)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.voters"));
}

#[test]
fn check_config_refuses_a_key_file_the_daemon_would_refuse() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, key, specs) = three_voters();
    let config = path_str(&specs[0].config_path).to_string();
    let refused = |what: &str, needle: &str| {
        let out = ctl(&["check-config", &config]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains("node.key_file"), "{what}: {stderr}");
        assert!(stderr.contains(needle), "{what}: {stderr}");
        // The daemon refuses it too.
        let out = Command::new(CLUSTERD)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: the daemon started");
    };
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused("mode 0644", "chmod 600");
    std::fs::write(&key, "").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused("empty", "does not hold a cluster key");
    std::fs::remove_file(&key).unwrap();
    refused("missing", "clusterctl keygen");
}

#[test]
fn check_config_refuses_a_fence_password_file_open_to_others() {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;
    let (dir, _key, specs) = three_voters();
    let pass = dir.path().join("bmc.pass");
    std::fs::write(&pass, "pw\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&specs[0].config_path)
        .unwrap();
    write!(
        config,
        "\n[fencing.nodes.n2]\nagent = \"exec\"\ncommand = [\"/usr/sbin/fence_ipmilan\"]\n\
         password_file = {:?}\n",
        pass.display().to_string()
    )
    .unwrap();
    drop(config);
    let config = path_str(&specs[0].config_path).to_string();
    let out = ctl(&["check-config", &config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("fencing.nodes.n2.password_file")
            && stderr.contains(&format!("chmod 600 {}", pass.display())),
        "{stderr}"
    );
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = ctl(&["check-config", &config]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let out = ctl(&["keygen", path_str(&path)]);
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = ctl(&["keygen", path_str(&path)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hooks_are_logged_and_metrics_are_served_plain_and_signed() {
    use std::os::unix::fs::PermissionsExt;
    let hooks = tempfile::tempdir().unwrap();
    let script = hooks.path().join("notify");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"pager unreachable for $CLUSTERD_EVENT\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ports: std::collections::BTreeMap<String, u16> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| (n.to_string(), common::free_port()))
        .collect();
    let cfg_ports = ports.clone();
    let extra = move |n: &str| {
        format!(
            "{}\n[hooks]\nscripts = [\"{}\"]\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n",
            common::two_addresses(n),
            script.display(),
            cfg_ports[n]
        )
    };
    let lab = Lab::start_with(&extra);
    // Every node runs service_state for its own imap check once it rises: the failure is
    // logged with the exit status and the first line the script wrote to stderr.
    for name in ["n1", "n2", "n3"] {
        eventually("a logged hook failure", Duration::from_secs(15), || async {
            let log = lab.log(name);
            log.lines()
                .any(|l| {
                    l.contains("hook failed")
                        && l.contains("exit code 1")
                        && l.contains("pager unreachable for service_state")
                })
                .then_some(())
        })
        .await;
        let port = ports[name];
        assert!(
            lab.log(name)
                .contains(&format!("metrics listening on 127.0.0.1:{port}")),
            "{}",
            lab.log(name)
        );
    }

    // Prometheus scrapes the plain listener without credentials.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("http://127.0.0.1:{}/metrics", ports["n1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("# TYPE clusterd_raft_term gauge"), "{text}");
    assert!(
        text.contains("clusterd_hook_runs_total{result=\"failed\"}"),
        "{text}"
    );

    // On the API, /metrics is signed like every route: 401 without, clusterctl prints it.
    let api = lab.specs[0].addr;
    let resp = http
        .get(format!("http://{api}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let out = ctl(&["--config", path_str(&lab.specs[0].config_path), "metrics"]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("clusterd_build_info{version=") && printed.contains("node=\"n1\""),
        "{printed}"
    );
    drop(lab.daemons);
}

/// Largest resident set (bytes) of `pid` seen while the returned sampler runs; stop it by
/// setting the flag.
fn sample_rss(
    pid: u32,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut max = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            max = max.max(kib * 1024);
            std::thread::sleep(Duration::from_millis(20));
        }
        max
    });
    (stop, sampler)
}

/// A TCP connection to `to` from the loopback address `from` (all of 127/8 is this host's).
async fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(from.into(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `stream` (EOF or reset) within `within`; bytes it sends (an
/// answer) are read past.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// How many of `streams` the server closes within `within` (watched all at once).
async fn count_closed(streams: &mut [tokio::net::TcpStream], within: Duration) -> usize {
    futures_util::future::join_all(streams.iter_mut().map(|s| closed_by_server(s, within)))
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

/// Read the status code of the first answer on `stream`, within `within`.
async fn answer_status(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Let this test (and the daemons it starts) hold a few thousand sockets.
fn raise_descriptor_limit(to: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, soft.max(to.min(hard)), hard).unwrap();
}

/// The attacks of an unauthenticated client on the API listener, one after the other against
/// a running daemon: bodies that stall, headers that never end, and thousands of idle
/// connections, from one source and from many. The daemon must stay under 100 MB, keep
/// answering signed requests and keep committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_floods_neither_grow_memory_nor_shut_out_signed_requests() {
    use clusterd::http_server::{HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_PER_SOURCE};
    use std::net::Ipv4Addr;
    use tokio::io::AsyncWriteExt;
    raise_descriptor_limit(8192);
    let lab = Lab::start();
    let started = std::time::Instant::now();
    let key = ClusterKey::load(&lab.key_path).unwrap();
    let target = lab.specs[0].addr;
    let client = ApiClient::new(target.to_string(), key.clone()).expect("an HTTP client");
    eventually("a leader", Duration::from_secs(15), || async {
        let r: StatusReport = client.get("/v1/status").await.ok()?;
        r.leader.map(|_| ())
    })
    .await;
    let pid = lab.daemons.children[0].id();
    let (stop_sampler, sampler) = sample_rss(pid);
    let mut notes = 0;
    let mut signed_answered = async || {
        let r: Result<StatusReport, _> = client.get("/v1/status").await;
        assert!(r.is_ok(), "a signed status during the attack: {r:?}");
        notes += 1;
        let out = ctl(&[
            "--config",
            path_str(&lab.specs[0].config_path),
            "note",
            &format!("during the attack {notes}"),
        ]);
        assert!(out.status.success(), "a note during the attack: {out:?}");
    };

    // 1. Bodies that stall: 40 clients from 40 sources each declare 16 MiB less one byte
    //    (over the limit) or 100 000 bytes (under it, but unsigned), send 64 KiB and stall.
    //    Every one is answered at once (413 or 401) without its body being read.
    let chunk = vec![b'x'; 64 * 1024];
    let mut stalled = Vec::new();
    for i in 0..40u8 {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 1, i + 1), target).await;
        let (path, len) = if i % 2 == 0 {
            ("/v1/note", 16 * 1024 * 1024 - 1)
        } else {
            ("/raft/append", 100_000)
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(&chunk).await;
        stalled.push((path, s));
    }
    for (path, s) in &mut stalled {
        let status = answer_status(s, Duration::from_secs(3)).await;
        let expected = if *path == "/v1/note" { 413 } else { 401 };
        assert_eq!(status, Some(expected), "{path}: a stalled body's answer");
    }
    signed_answered().await;
    drop(stalled);

    // 2. Idle connections from one source: it keeps its share, the rest are closed at once.
    let mut one_source = Vec::new();
    for _ in 0..100 {
        one_source.push(connect_from(Ipv4Addr::new(127, 0, 2, 1), target).await);
    }
    let closed = count_closed(&mut one_source, Duration::from_millis(500)).await;
    assert_eq!(
        closed,
        100 - MAX_PER_SOURCE,
        "connections from one source closed at once"
    );
    signed_answered().await;

    // 3. Slow headers and idle connections from many sources: strangers together get the
    //    total, a member (127.0.0.1, the nodes' own address) still gets in.
    let mut many = Vec::new();
    for i in 0..(MAX_CONNECTIONS + 44) {
        let from = Ipv4Addr::new(127, 0, 3 + (i / 250) as u8, 1 + (i % 250) as u8);
        let mut s = connect_from(from, target).await;
        if i % 2 == 0 {
            // Headers that never end.
            let _ = s
                .write_all(b"POST /v1/note HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await;
        }
        many.push(s);
    }
    let refused = count_closed(&mut many, Duration::from_millis(500)).await;
    // The one-source connections still hold their share of the total.
    assert_eq!(
        refused,
        MAX_CONNECTIONS + 44 - (MAX_CONNECTIONS - MAX_PER_SOURCE),
        "connections over the total closed at once"
    );
    signed_answered().await;
    let (code, metrics) = client
        .send_raw("GET", "/metrics", Vec::new(), &[])
        .await
        .expect("signed metrics during the attack");
    assert_eq!(code, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    let refused_total = metrics
        .lines()
        .find(|l| {
            l.starts_with("clusterd_http_connections_refused_total{listener=\"api\",cap=\"total\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        refused_total.is_some_and(|n| n >= 44),
        "refusals counted: {refused_total:?}"
    );

    // 4. The server itself closes what stays idle or never finishes its headers.
    let mut open = one_source;
    open.extend(many);
    let total = open.len();
    assert_eq!(
        count_closed(&mut open, HEADER_TIMEOUT + Duration::from_secs(3)).await,
        total,
        "connections idle for longer than the header timeout were left open"
    );
    signed_answered().await;

    // Every loop of the attacked daemon kept beating (a loop that never beat since the start
    // would be listed once the silence limit has passed).
    tokio::time::sleep(
        clusterd::systemd::loops::LOOP_SILENCE.saturating_sub(started.elapsed())
            + Duration::from_secs(1),
    )
    .await;
    let report: StatusReport = client.get("/v1/status").await.unwrap();
    assert!(
        report.stuck_loops.is_empty(),
        "loops silent after the attacks: {:?}",
        report.stuck_loops
    );

    stop_sampler.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_rss = sampler.join().unwrap();
    assert!(max_rss > 0, "the resident set was never read");
    assert!(
        max_rss < 100_000_000,
        "the daemon grew to {} MB under the attacks",
        max_rss / 1_000_000
    );
    drop(lab.daemons);
}

/// Descriptors `pid` holds open now.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Set the soft descriptor limit of the running process `pid` (util-linux `prlimit`).
fn set_descriptor_limit(pid: u32, limit: usize) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:"))
        .output()
        .expect("prlimit (util-linux) must be installed: apt-get install util-linux");
    assert!(out.status.success(), "prlimit: {out:?}");
}

/// A daemon that runs out of file descriptors (its limit lowered to what it holds, and the
/// rest taken by idle connections) keeps running, and once descriptors are back its health
/// reporting works again: a check that failed meanwhile reaches the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_out_of_descriptors_recovers_and_reports_the_health_it_missed() {
    use clusterd::model::Health;
    use std::net::Ipv4Addr;
    raise_descriptor_limit(8192);
    let health = tempfile::tempdir().unwrap();
    let dir = health.path().to_path_buf();
    let lab = Lab::start_with(&move |n: &str| common::addresses_with_health(n, Some(&dir)));
    let key = ClusterKey::load(&lab.key_path).unwrap();
    let imap_of = |r: &StatusReport, node: &str| {
        r.health
            .iter()
            .find(|h| h.node == node && h.check == "imap")
            .map(|h| h.state)
    };
    let via_n1 = ApiClient::new(lab.specs[0].addr.to_string(), key.clone()).unwrap();
    eventually("n2's imap passing", Duration::from_secs(20), || async {
        let r: StatusReport = via_n1.get("/v1/status").await.ok()?;
        (imap_of(&r, "n2") == Some(Health::Passing)).then_some(())
    })
    .await;

    // Starve n2: its limit lowered to what it holds plus a few, those few taken by idle
    // connections from strangers.
    let pid = lab.daemons.children[1].id();
    let normal = open_descriptors(pid);
    set_descriptor_limit(pid, normal + 4);
    let mut hogs = Vec::new();
    for i in 0..64u8 {
        hogs.push(connect_from(Ipv4Addr::new(127, 0, 4, i + 1), lab.specs[1].addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Its imap check fails while it cannot tell anyone (nor even start the check's process).
    std::fs::write(health.path().join("n2-imap-down"), b"").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        lab.daemons.children[1].id() == pid && open_descriptors(pid) > 0,
        "n2 is gone"
    );

    // Descriptors come back: the failure reaches the leader, and n2 never panicked.
    drop(hogs);
    set_descriptor_limit(pid, 8192);
    eventually(
        "n2's imap failure reaches the cluster",
        Duration::from_secs(30),
        || async {
            let r: StatusReport = via_n1.get("/v1/status").await.ok()?;
            (imap_of(&r, "n2") == Some(Health::Critical)).then_some(())
        },
    )
    .await;
    let log = lab.log("n2");
    assert!(
        log.contains("cannot accept a connection") || log.contains("Too many open files"),
        "n2 never ran out of descriptors:\n{log}"
    );
    assert!(!log.contains("panicked"), "n2 panicked:\n{log}");
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok(),
        "n2 exited"
    );
    drop(lab.daemons);
}
