//! Cluster-core benchmark: a 3-node clusterd cluster on loopback, side by side with a 3-member
//! etcd cluster (the consensus store many HA stacks use) on the same machine in the same run.
//!
//! Prints, for each: write commit latency p50/p99 (sequential writes through the leader, each
//! acknowledged after it is committed, fsync'd and applied), idle RSS and idle CPU per daemon,
//! and the ratio clusterd / etcd. Run with `cargo bench -p clusterd --bench core`.
//! Every process started here is stopped (by its pid) on exit; every wait is bounded.

#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterd::auth::ClusterKey;
use clusterd::client::ApiClient;
use clusterd::client::NoteRequest;
use clusterd::model::Applied;

const CLUSTERD: &str = env!("CARGO_BIN_EXE_clusterd");
const WRITES: usize = 500;
const IDLE_SECS: u64 = 10;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
struct Result {
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    rss_mib: Vec<f64>,
    cpu_pct: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

fn idle_usage(pids: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let secs = start.elapsed().as_secs_f64();
    let cpu = pids
        .iter()
        .zip(before)
        .map(|(p, b)| (cpu_ticks(*p) - b) as f64 / hz / secs * 100.0)
        .collect();
    let rss = pids.iter().map(|p| rss_mib(*p)).collect();
    (rss, cpu)
}

fn summarize(mut lat_ms: Vec<f64>, pids: &[u32]) -> Result {
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let mean_ms = lat_ms.iter().sum::<f64>() / lat_ms.len() as f64;
    // Let the write burst settle before measuring idle cost.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_mib, cpu_pct) = idle_usage(pids);
    Result {
        p50_ms: percentile(&lat_ms, 0.5),
        p99_ms: percentile(&lat_ms, 0.99),
        mean_ms,
        rss_mib,
        cpu_pct,
    }
}

async fn bench_clusterd(dir: &Path) -> Result {
    let key_path = common::write_key(dir);
    let key = ClusterKey::load(&key_path).unwrap();
    let names = ["n1", "n2", "n3"];
    let specs = common::write_configs(dir, &key_path, &names, &names, &common::two_addresses);
    let procs = Procs(
        specs
            .iter()
            .map(|s| {
                Command::new(CLUSTERD)
                    .arg("--config")
                    .arg(&s.config_path)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start clusterd")
            })
            .collect(),
    );
    let addrs: Vec<_> = specs.iter().map(|s| s.addr).collect();
    let leader = common::agreed_leader(&addrs, &key, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader_addr = specs.iter().find(|s| s.name == leader).unwrap().addr;
    let client = ApiClient::new(leader_addr.to_string(), key.clone()).expect("an HTTP client");
    let mut lat = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let req = NoteRequest {
            text: format!("bench {i}"),
        };
        let t = Instant::now();
        let applied: Applied = client.post("/v1/note", &req).await.expect("write");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(applied.changed);
    }
    let pids: Vec<u32> = procs.0.iter().map(|c| c.id()).collect();
    let r = tokio::task::block_in_place(|| summarize(lat, &pids));
    drop(procs);
    r
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn bench_etcd(dir: &Path) -> Option<Result> {
    if Command::new("etcd").arg("--version").output().is_err() {
        println!(
            "etcd is not installed: apt-get install -y etcd-server (the anchor of this benchmark)"
        );
        return None;
    }
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (common::free_port(), common::free_port()))
        .collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let procs = Procs(
        ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                Command::new("etcd")
                    .args(["--name", &format!("e{i}")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("e{i}")))
                    .args([
                        "--listen-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                    ])
                    .args([
                        "--advertise-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                    ])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                    ])
                    .args(["--initial-cluster", &cluster])
                    .args([
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        "bench",
                    ])
                    .args(["--log-level", "error"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start etcd")
            })
            .collect(),
    );
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v3/kv/put", ports[0].0);
    let body = |i: usize| {
        format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(format!("bench/{}", i % 50).as_bytes()),
            b64(format!("bench {i}").as_bytes())
        )
    };
    // Wait (bounded) until the cluster accepts writes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = http
            .post(&url)
            .body(body(0))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd did not accept writes within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lat = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let t = Instant::now();
        let resp = http
            .post(&url)
            .body(body(i))
            .send()
            .await
            .expect("etcd put");
        assert!(resp.status().is_success());
        let _ = resp.bytes().await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let pids: Vec<u32> = procs.0.iter().map(|c| c.id()).collect();
    let r = tokio::task::block_in_place(|| summarize(lat, &pids));
    drop(procs);
    Some(r)
}

fn row(name: &str, ours: f64, anchor: Option<f64>, unit: &str) {
    match anchor {
        Some(a) => println!(
            "{name:<28} {ours:>10.2} {unit:<4} {a:>10.2} {unit:<4} {:>7.2}x",
            ours / a
        ),
        None => println!("{name:<28} {ours:>10.2} {unit:<4} {:>10} {unit:<4}", "-"),
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; nothing to filter here.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("clusterd")).unwrap();
    std::fs::create_dir_all(dir.path().join("etcd")).unwrap();
    let ours = bench_clusterd(&dir.path().join("clusterd")).await;
    let anchor = bench_etcd(&dir.path().join("etcd")).await;
    println!();
    println!(
        "3 nodes on loopback, {WRITES} sequential writes through the leader, idle over {IDLE_SECS} s"
    );
    println!(
        "{:<28} {:>15} {:>15} {:>8}",
        "metric", "clusterd", "etcd 3.4", "ratio"
    );
    let a = anchor.as_ref();
    row("commit latency p50", ours.p50_ms, a.map(|r| r.p50_ms), "ms");
    row("commit latency p99", ours.p99_ms, a.map(|r| r.p99_ms), "ms");
    row(
        "commit latency mean",
        ours.mean_ms,
        a.map(|r| r.mean_ms),
        "ms",
    );
    row(
        "idle RSS per daemon (mean)",
        mean(&ours.rss_mib),
        a.map(|r| mean(&r.rss_mib)),
        "MiB",
    );
    row(
        "idle CPU per daemon (mean)",
        mean(&ours.cpu_pct),
        a.map(|r| mean(&r.cpu_pct)),
        "%",
    );
    println!(
        "clusterd per daemon: RSS {:?} MiB, CPU {:?} %",
        ours.rss_mib
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        ours.cpu_pct
            .iter()
            .map(|v| (v * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    if let Some(r) = a {
        println!(
            "etcd per member:     RSS {:?} MiB, CPU {:?} %",
            r.rss_mib
                .iter()
                .map(|v| (v * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            r.cpu_pct
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    } else {
        std::process::exit(1);
    }
}
