//! Queries per second of clusterd-dns next to NSD and Knot, same zone, same machine, same run.
//!
//! `cargo bench -p clusterd-dns --bench qps` (env `QPS_SECONDS`, default 10, per server and
//! transport). Needs `dnsperf`, `nsd` and `knot` (Debian packages): a missing one fails the run
//! with the apt-get command. Each server gets its own loopback port, its config in a temp dir and
//! 2 worker threads/processes, rate limiting off; NSD and Knot are stopped by pid at the end.
//! The output is the result, so this binary prints.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterd_dns::example::example_snapshot;
use clusterd_dns::proto::op::{Message, Query};
use clusterd_dns::proto::rr::{Name, RecordType};
use clusterd_dns::{ServeOptions, Zones, serve};

const ZONE: &str = "mail.example.com.";
const QUERIES: &str = "\
imap.mail.example.com A
pop3.mail.example.com A
smtp.mail.example.com A
mail.mail.example.com A
submission.mail.example.com A
mail.example.com AAAA
mail.example.com MX
_imaps._tcp.mail.example.com SRV
mail.example.com SOA
nosuchname.mail.example.com A
";

/// A server process started by this run; killed by its pid on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {} (pid {})", self.name, self.child.id());
    }
}

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; install it with: apt-get install -y {package}"
    );
}

fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for UDP and TCP");
}

/// Waits until `addr` answers an SOA query for the zone over UDP (10 s at most).
fn wait_ready(name: &str, addr: SocketAddr) {
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii(ZONE).expect("zone"),
        RecordType::SOA,
    ));
    let bytes = q.to_vec().expect("encode");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = sock.send_to(&bytes, addr);
        if let Ok(n) = sock.recv(&mut buf)
            && Message::from_vec(&buf[..n]).is_ok_and(|m| !m.answers.is_empty())
        {
            return;
        }
    }
    panic!("{name} did not answer on {addr} within 10 s");
}

fn start_nsd(dir: &Path, zone_file: &Path, port: u16) -> Proc {
    let d = dir.join("nsd");
    std::fs::create_dir_all(&d).expect("nsd dir");
    let conf = d.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  server-count: 2\n  reuseport: yes\n  \
             username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  \
             xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdir: \"{d}\"\n  \
             logfile: \"{d}/nsd.log\"\n  verbosity: 0\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n  \
             tcp-count: 1000\n  minimal-responses: no\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: \"{ZONE}\"\n  zonefile: \"{zf}\"\n",
            d = d.display(),
            zf = zone_file.display()
        ),
    )
    .expect("nsd.conf");
    let child = Command::new("nsd")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nsd");
    Proc { name: "nsd", child }
}

fn start_knot(dir: &Path, zone_file: &Path, port: u16) -> Proc {
    let d = dir.join("knot");
    std::fs::create_dir_all(&d).expect("knot dir");
    let conf = d.join("knot.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  rundir: \"{d}\"\n  pidfile: \"{d}/knot.pid\"\n  listen: 127.0.0.1@{port}\n  \
             udp-workers: 2\n  tcp-workers: 2\n  background-workers: 1\n\
             log:\n  - target: stderr\n    any: error\n\
             database:\n  storage: \"{d}\"\n\
             zone:\n  - domain: {ZONE}\n    file: \"{zf}\"\n    journal-content: none\n    zonefile-sync: -1\n",
            d = d.display(),
            zf = zone_file.display()
        ),
    )
    .expect("knot.conf");
    let child = Command::new("knotd")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start knotd");
    Proc {
        name: "knot",
        child,
    }
}

/// Runs dnsperf and returns its queries per second and the share of queries lost.
fn dnsperf(addr: SocketAddr, queries: &Path, mode: &str, seconds: u64) -> (f64, f64) {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-m",
            mode,
        ])
        .arg("-d")
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "8",
            "-q",
            "200",
            "-T",
            "1",
            "-t",
            "2",
        ])
        .output()
        .expect("run dnsperf");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| l.trim_start()[label.len()..].trim().to_string())
    };
    let qps: f64 = field("Queries per second:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no qps in dnsperf output:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let lost = field("Queries lost:")
        .and_then(|v| {
            v.split('(')
                .nth(1)
                .and_then(|p| p.trim_end_matches("%)").parse().ok())
        })
        .unwrap_or(0.0);
    (qps, lost)
}

fn main() {
    require("dnsperf", "dnsperf");
    require("nsd", "nsd");
    require("knotd", "knot");
    let seconds: u64 = std::env::var("QPS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);

    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = example_snapshot(2_026_112_201);
    let zones = Zones::compile(&snapshot).expect("example compiles");
    let zone_file: PathBuf = dir.path().join("mail.example.com.zone");
    std::fs::write(&zone_file, zones.zone_file(ZONE).expect("zone")).expect("zone file");
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, QUERIES).expect("queries");

    // clusterd-dns in this process, 2 worker threads like the others' 2 workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let port = free_port();
    let clusterd_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (_snapshots, rx) = tokio::sync::watch::channel(Arc::new(snapshot));
    let server = runtime.spawn(async move {
        let udp = tokio::net::UdpSocket::bind(clusterd_addr)
            .await
            .expect("bind udp");
        let tcp = tokio::net::TcpListener::bind(clusterd_addr)
            .await
            .expect("bind tcp");
        serve(
            vec![udp],
            vec![tcp],
            rx,
            ServeOptions::default(),
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
    });

    let nsd_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let nsd = start_nsd(dir.path(), &zone_file, nsd_addr.port());
    let knot_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let knot = start_knot(dir.path(), &zone_file, knot_addr.port());
    let servers = [
        ("clusterd-dns", clusterd_addr),
        ("nsd", nsd_addr),
        ("knot", knot_addr),
    ];
    for (name, addr) in servers {
        wait_ready(name, addr);
    }

    println!(
        "dnsperf, {seconds} s per run, 8 clients, 200 outstanding, zone {ZONE}, 10 query kinds"
    );
    let mut rows = Vec::new();
    for mode in ["udp", "tcp"] {
        for (name, addr) in servers {
            let (qps, lost) = dnsperf(addr, &queries, mode, seconds);
            println!("{name:>13} {mode}: {qps:>10.0} qps  lost {lost:.2}%");
            rows.push((name, mode, qps));
        }
    }
    println!();
    for mode in ["udp", "tcp"] {
        let of = |n: &str| {
            rows.iter()
                .find(|r| r.0 == n && r.1 == mode)
                .map_or(0.0, |r| r.2)
        };
        let ours = of("clusterd-dns");
        println!(
            "{mode}: clusterd-dns/nsd = {:.2}, clusterd-dns/knot = {:.2}",
            ours / of("nsd"),
            ours / of("knot")
        );
    }

    drop(nsd);
    drop(knot);
    let _ = stop_tx.send(());
    let stopped =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await });
    assert!(stopped.is_ok(), "clusterd-dns did not stop within 5 s");
}
