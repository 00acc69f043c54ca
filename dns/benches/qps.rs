//! Queries per second of clusterd-dns next to NSD and Knot, same zone, same machine, same run.
//!
//! `cargo bench -p clusterd-dns --bench qps`. Needs `dnsperf`, `nsd`, `knot` and `taskset`
//! (Debian packages dnsperf, nsd, knot, util-linux): a missing one fails the run with the apt-get
//! command. Each server runs as its own process (clusterd-dns is this binary re-executed with
//! `--serve`) on its own loopback port, config in a temp dir, rate limiting off, pinned with
//! `taskset` to the server CPUs with one worker per CPU; dnsperf is pinned to the client CPUs, so
//! the servers compete for the same cores and not with the load generator. Rounds interleave the
//! servers so that background load hits all of them alike; the median round is reported.
//! Processes are stopped by pid at the end.
//!
//! Besides qps, each round reads how much CPU the server's processes used (`/proc`, the
//! server and its children): CPU microseconds per answered query, and how busy its CPUs were.
//! When dnsperf saturates its own CPU first, every server shows the same qps and only the CPU
//! per query tells them apart.
//!
//! Environment: `QPS_SECONDS` per run (default 5), `QPS_ROUNDS` (default 3), `QPS_SERVER_CPUS`
//! (default `1`), `QPS_CLIENT_CPUS` (default `0`), as taskset CPU lists.
//!
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
use clusterd_dns::{ServeOptions, Zones, bind_tcp, bind_udp, serve};

/// Serial of the benchmark zone (any value; the same zone file goes to every server).
const SERIAL: u32 = 2026;

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

/// Number of CPUs in a taskset list like `1`, `0-1` or `2,3`.
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => {
                b.trim().parse::<usize>().unwrap_or(0) + 1 - a.trim().parse::<usize>().unwrap_or(0)
            }
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

/// `taskset -c CPUS PROGRAM`.
fn pinned(cpus: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpus).arg(program);
    cmd
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

/// Server mode (`--serve ADDR WORKERS`): clusterd-dns on ADDR until killed.
fn serve_clusterd_dns(addr: SocketAddr, workers: usize) {
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .expect("runtime");
    runtime.block_on(async move {
        let udp = bind_udp(addr, workers).expect("bind udp");
        let tcp = bind_tcp(addr).expect("bind tcp");
        let (_snapshots, rx) = tokio::sync::watch::channel(Arc::new(example_snapshot(SERIAL)));
        serve(
            udp,
            vec![tcp],
            rx,
            ServeOptions::default(),
            std::future::pending::<()>(),
        )
        .await
        .expect("serve");
    });
}

fn start_clusterd_dns(cpus: &str, port: u16) -> Proc {
    let me = std::env::current_exe().expect("own path");
    let child = pinned(cpus, me)
        .args([
            "--serve",
            &format!("127.0.0.1:{port}"),
            &cpu_count(cpus).to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start clusterd-dns");
    Proc {
        name: "clusterd-dns",
        child,
    }
}

fn start_nsd(cpus: &str, dir: &Path, zone_file: &Path, port: u16) -> Proc {
    let d = dir.join("nsd");
    std::fs::create_dir_all(&d).expect("nsd dir");
    let conf = d.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  server-count: {n}\n  reuseport: yes\n  \
             username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  \
             xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdir: \"{d}\"\n  \
             logfile: \"{d}/nsd.log\"\n  verbosity: 0\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n  \
             tcp-count: 1000\n  minimal-responses: no\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: \"{ZONE}\"\n  zonefile: \"{zf}\"\n",
            n = cpu_count(cpus),
            d = d.display(),
            zf = zone_file.display()
        ),
    )
    .expect("nsd.conf");
    let child = pinned(cpus, "nsd")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nsd");
    Proc { name: "nsd", child }
}

fn start_knot(cpus: &str, dir: &Path, zone_file: &Path, port: u16) -> Proc {
    let d = dir.join("knot");
    std::fs::create_dir_all(&d).expect("knot dir");
    let conf = d.join("knot.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  rundir: \"{d}\"\n  pidfile: \"{d}/knot.pid\"\n  listen: 127.0.0.1@{port}\n  \
             udp-workers: {n}\n  tcp-workers: {n}\n  background-workers: 1\n\
             log:\n  - target: stderr\n    any: error\n\
             database:\n  storage: \"{d}\"\n\
             zone:\n  - domain: {ZONE}\n    file: \"{zf}\"\n    journal-content: none\n    zonefile-sync: -1\n",
            n = cpu_count(cpus),
            d = d.display(),
            zf = zone_file.display()
        ),
    )
    .expect("knot.conf");
    let child = pinned(cpus, "knotd")
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

/// CPU time (user + system) used so far by process `root` and all its descendants.
fn cpu_of_tree(root: u32) -> Duration {
    // Clock ticks per second: 100 on every Linux that dnsperf runs on.
    const TICKS: u64 = 100;
    let mut parent: Vec<(u32, u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state ppid ... utime stime.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        parent.push((pid, num(1) as u32, num(11) + num(12)));
    }
    let mut tree = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid, _) in &parent {
            if tree.contains(ppid) && !tree.contains(pid) {
                tree.push(*pid);
                grew = true;
            }
        }
    }
    let ticks: u64 = parent
        .iter()
        .filter(|(pid, _, _)| tree.contains(pid))
        .map(|(_, _, t)| t)
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS)
}

/// One dnsperf run against one server.
#[derive(Clone, Copy, Debug)]
struct Sample {
    qps: f64,
    lost: f64,
    /// Server CPU microseconds per answered query.
    cpu_us_per_query: f64,
    /// Share of the server's CPUs it kept busy (100 = all of them, all the time).
    busy: f64,
}

/// Runs dnsperf and returns its queries per second and the share of queries lost (%).
fn dnsperf(cpus: &str, addr: SocketAddr, queries: &Path, mode: &str, seconds: u64) -> (f64, f64) {
    let threads = cpu_count(cpus).to_string();
    let out = pinned(cpus, "dnsperf")
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
            &threads,
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

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let addr = args[i + 1].parse().expect("--serve ADDR WORKERS");
        let workers = args[i + 2].parse().expect("--serve ADDR WORKERS");
        serve_clusterd_dns(addr, workers);
        return;
    }
    require("dnsperf", "dnsperf");
    require("nsd", "nsd");
    require("knotd", "knot");
    require("taskset", "util-linux");
    let seconds: u64 = env_or("QPS_SECONDS", 5);
    let rounds: usize = env_or("QPS_ROUNDS", 3).max(1);
    let server_cpus: String = env_or("QPS_SERVER_CPUS", "1".to_string());
    let client_cpus: String = env_or("QPS_CLIENT_CPUS", "0".to_string());

    let dir = tempfile::tempdir().expect("temp dir");
    let zones = Zones::compile(&example_snapshot(SERIAL)).expect("example compiles");
    let zone_file: PathBuf = dir.path().join("mail.example.com.zone");
    std::fs::write(&zone_file, zones.zone_file(ZONE).expect("zone")).expect("zone file");
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, QUERIES).expect("queries");

    let ports = [free_port(), free_port(), free_port()];
    let procs = [
        start_clusterd_dns(&server_cpus, ports[0]),
        start_nsd(&server_cpus, dir.path(), &zone_file, ports[1]),
        start_knot(&server_cpus, dir.path(), &zone_file, ports[2]),
    ];
    let servers: Vec<(&str, SocketAddr)> = procs
        .iter()
        .zip(ports)
        .map(|(p, port)| (p.name, SocketAddr::from(([127, 0, 0, 1], port))))
        .collect();
    for (name, addr) in &servers {
        wait_ready(name, *addr);
    }

    println!(
        "dnsperf -c 8 -q 200 on CPUs {client_cpus}; servers on CPUs {server_cpus} ({} worker(s) each); \
         zone {ZONE}, {} query kinds; {rounds} rounds of {seconds} s per server and transport, median shown",
        cpu_count(&server_cpus),
        QUERIES.lines().count()
    );
    let mut results: Vec<(&str, &str, f64, f64)> = Vec::new();
    for mode in ["udp", "tcp"] {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); servers.len()];
        for _ in 0..rounds {
            for (i, (_, addr)) in servers.iter().enumerate() {
                let pid = procs[i].child.id();
                let (cpu_before, started) = (cpu_of_tree(pid), Instant::now());
                let (qps, lost) = dnsperf(&client_cpus, *addr, &queries, mode, seconds);
                let (cpu, wall) = (cpu_of_tree(pid) - cpu_before, started.elapsed());
                samples[i].push(Sample {
                    qps,
                    lost,
                    cpu_us_per_query: cpu.as_secs_f64() * 1e6 / (qps * seconds as f64).max(1.0),
                    busy: 100.0 * cpu.as_secs_f64()
                        / (wall.as_secs_f64() * cpu_count(&server_cpus) as f64),
                });
            }
        }
        for (i, (name, _)) in servers.iter().enumerate() {
            let qps = median(samples[i].iter().map(|s| s.qps).collect());
            let cpu = median(samples[i].iter().map(|s| s.cpu_us_per_query).collect());
            let busy = median(samples[i].iter().map(|s| s.busy).collect());
            let lost = samples[i].iter().map(|s| s.lost).fold(0.0, f64::max);
            let all: Vec<String> = samples[i].iter().map(|s| format!("{:.0}", s.qps)).collect();
            println!(
                "{name:>13} {mode}: {qps:>9.0} qps, {cpu:>5.2} CPU µs/query, CPUs {busy:>3.0}% busy \
                 (rounds: {}; max lost {lost:.2}%)",
                all.join(", ")
            );
            results.push((name, mode, qps, cpu));
        }
    }
    println!();
    for mode in ["udp", "tcp"] {
        let of = |n: &str| {
            results
                .iter()
                .find(|r| r.0 == n && r.1 == mode)
                .map_or((0.0, 0.0), |r| (r.2, r.3))
        };
        let (ours, nsd, knot) = (of("clusterd-dns"), of("nsd"), of("knot"));
        println!(
            "{mode}: qps clusterd-dns/nsd = {:.2}, clusterd-dns/knot = {:.2}; \
             CPU per query clusterd-dns/nsd = {:.2}, clusterd-dns/knot = {:.2}",
            ours.0 / nsd.0,
            ours.0 / knot.0,
            ours.1 / nsd.1,
            ours.1 / knot.1
        );
    }
    drop(procs);
}
