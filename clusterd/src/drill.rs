//! `clusterctl drill`: a failover drill measured the way a mail client sees it.
//!
//! The drilled node keeps running; the replicated drill makes it play failed (a node drill stops
//! its lease renewals, a service drill makes one probe report critical), so the addresses take
//! the real failure path. From where clusterctl runs, one prober per address and service connects
//! every 50 ms and reads the greeting; DNS is asked for the zone's SOA serial on every mail node.
//! The drill reports, per address and service, when it answered again, which node answered, and
//! the longest time it went unanswered; and when the DNS serial changed on each node. Restoring
//! ends the drill and moves the addresses back with planned moves, measured the same way.
//!
//! The analysis of the samples ([`analyse`]) is pure and unit-tested; the rest is IO.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

use crate::client::admin_paths;
use crate::client::{ApiClient, ClientError, with_retries};
use crate::config::{CheckKind, Config};
use crate::model::{Applied, Command, DrillKind, Health, Role};
use crate::status::StatusReport;

/// Gap between two probes of one address and service.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Deadline of one probe's connect and greeting.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// One probe result: ms since the phase started, and the greeting (None: no answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// ms since the phase started (the drill started, or the restore started).
    pub at_ms: u64,
    /// The first line the service sent, if it answered.
    pub greeting: Option<String>,
}

/// What the samples of one address and service say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// ms from the phase start until it answered from its new place (None: never, within the
    /// bound).
    pub served_ms: Option<u64>,
    /// The greeting then.
    pub greeting: Option<String>,
    /// Longest stretch without an answer (ms, from the first failed probe to the next answer).
    pub unserved_ms: u64,
}

/// Analyse the samples of one address and service. `moved(g)` tells whether a greeting comes
/// from the new place (`Some(true)`: it names the node expected now) or not (`Some(false)`);
/// `None` when the greeting names no node, and then the first answer after a stretch without
/// one counts.
pub fn analyse(samples: &[Sample], moved: impl Fn(&str) -> Option<bool>) -> Outcome {
    let mut unserved_ms = 0;
    let mut gap_start: Option<u64> = None;
    let mut had_gap = false;
    let mut served: Option<(u64, String)> = None;
    for s in samples {
        match &s.greeting {
            None => {
                gap_start.get_or_insert(s.at_ms);
                had_gap = true;
            }
            Some(g) => {
                if let Some(start) = gap_start.take() {
                    unserved_ms = unserved_ms.max(s.at_ms - start);
                }
                if served.is_none() && moved(g).unwrap_or(had_gap) {
                    served = Some((s.at_ms, g.clone()));
                }
            }
        }
    }
    if let (Some(start), Some(last)) = (gap_start, samples.last()) {
        unserved_ms = unserved_ms.max(last.at_ms - start);
    }
    Outcome {
        served_ms: served.as_ref().map(|(t, _)| *t),
        greeting: served.map(|(_, g)| g),
        unserved_ms,
    }
}

/// The member named in a greeting (as a whole word), if any.
pub fn greeter<'a>(greeting: &str, members: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let words: Vec<&str> = greeting
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .collect();
    members
        .into_iter()
        .find(|m| words.iter().any(|w| w.eq_ignore_ascii_case(m)))
        .map(str::to_string)
}

/// One measured address and service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReport {
    /// `ip/prefix`.
    pub address: String,
    /// Check name.
    pub service: String,
    /// TCP port probed.
    pub port: u16,
    /// Node named by the greeting before the drill.
    pub before: Option<String>,
    /// Node named by the greeting once served again (else the owner by the replicated state).
    pub after: Option<String>,
    /// What the probes saw.
    pub outcome: Outcome,
}

/// When one node's DNS answered with a new serial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsChange {
    /// The node.
    pub node: String,
    /// Its DNS server.
    pub server: String,
    /// SOA serial before the drill.
    pub serial_before: Option<u32>,
    /// ms from the drill start until its serial changed (None: not within the bound).
    pub changed_ms: Option<u64>,
}

/// The whole drill result (`clusterctl drill ... --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The drilled node.
    pub node: String,
    /// What was simulated.
    pub kind: DrillKind,
    /// The bound each address had to be served again within (ms).
    pub bound_ms: u64,
    /// Per address and service, the failure phase.
    pub failover: Vec<TargetReport>,
    /// Per mail node, the DNS change.
    pub dns: Vec<DnsChange>,
    /// Per address and service, the restore phase (empty with `--no-restore`).
    pub restore: Vec<TargetReport>,
    /// Whether every address was served again within the bound (and restored, if asked).
    pub ok: bool,
    /// What went wrong, for humans.
    pub problems: Vec<String>,
}

/// Options of one drill.
#[derive(Clone, Debug)]
pub struct DrillPlan {
    /// The node to drill.
    pub node: String,
    /// What to simulate.
    pub kind: DrillKind,
    /// Bound for each address to be served again.
    pub bound: Duration,
    /// Restore afterwards.
    pub restore: bool,
}

/// Why a drill cannot start, for the operator.
pub fn refuse_reason(report: &StatusReport, plan: &DrillPlan) -> Option<String> {
    if report.leader.is_none() || report.freshness.summary.contains("WITHOUT QUORUM") {
        return Some(
            "the cluster has no leader with a quorum now; a drill would fail for that reason, \
             not the one it tests. Check `clusterctl status`"
                .into(),
        );
    }
    if let Some(d) = report.drills.first() {
        return Some(format!(
            "a drill is already running on {} ({}); end it with `clusterctl drill end {}`",
            d.node, d.kind, d.node
        ));
    }
    let Some(node) = report.nodes.iter().find(|n| n.name == plan.node) else {
        return Some(format!("{} is not a member of this cluster", plan.node));
    };
    if node.role != Role::Mail {
        return Some(format!(
            "{} is a witness: it holds no addresses, so there is nothing to drill",
            plan.node
        ));
    }
    let targets = targets(report, plan);
    if targets.is_empty() {
        return Some(match &plan.kind {
            DrillKind::Node => format!("{} holds no address now; nothing to measure", plan.node),
            DrillKind::Service { check } => format!(
                "{} holds no address that needs {check}; nothing to measure",
                plan.node
            ),
        });
    }
    for a in targets {
        let healthy_elsewhere = report.nodes.iter().any(|n| {
            n.name != plan.node
                && n.role == Role::Mail
                && n.admin == crate::model::AdminState::Active
                && n.reachable != Some(false)
                && a.services.iter().all(|c| {
                    report
                        .health
                        .iter()
                        .any(|h| h.node == n.name && &h.check == c && h.state.is_up())
                })
        });
        if !healthy_elsewhere {
            return Some(format!(
                "no other node could take {}: none is active, reachable and passing {}; the \
                 cluster would not survive this failure now",
                a.ip,
                a.services.join(", ")
            ));
        }
    }
    None
}

/// The addresses a drill moves.
fn targets<'a>(
    report: &'a StatusReport,
    plan: &DrillPlan,
) -> Vec<&'a crate::status::AddressReport> {
    report
        .addresses
        .iter()
        .filter(|a| a.owner.as_deref() == Some(plan.node.as_str()))
        .filter(|a| match &plan.kind {
            DrillKind::Node => true,
            DrillKind::Service { check } => a.services.contains(check),
        })
        .collect()
}

/// The TCP port of a service: from the local config's check if known, else by its name.
fn port_of(config: Option<&Config>, service: &str) -> Option<u16> {
    if let Some(c) = config.and_then(|c| c.checks.get(service)) {
        return c.effective_port();
    }
    // A service named like a check kind (imap, smtp, ...) is on that kind's port.
    let kind = CheckKind::ALL
        .into_iter()
        .find(|k| k.to_string() == service)?;
    kind.default_port()
}

/// One probe: connect and read the first line.
async fn probe(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let mut line = String::new();
        BufReader::new(tcp).read_line(&mut line).await.ok()?;
        (!line.is_empty()).then(|| line.trim_end().to_string())
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

/// Probers for a set of targets, sampling until stopped.
struct Probers {
    samples: Vec<Arc<Mutex<Vec<Sample>>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probers {
    fn start(addrs: &[SocketAddr], t0: Instant) -> Probers {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut samples = Vec::new();
        let mut tasks = Vec::new();
        for addr in addrs {
            let store = Arc::new(Mutex::new(Vec::new()));
            samples.push(store.clone());
            let addr = *addr;
            let mut rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                // A new probe every PROBE_EVERY, whether or not the previous one finished, so
                // the resolution is PROBE_EVERY even while probes hang until their timeout.
                let mut probes = tokio::task::JoinSet::new();
                let mut tick = tokio::time::interval(PROBE_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = rx.wait_for(|s| *s) => break,
                    }
                    let at_ms = t0.elapsed().as_millis() as u64;
                    let store = store.clone();
                    probes.spawn(async move {
                        let greeting = probe(addr).await;
                        crate::lock(&store).push(Sample { at_ms, greeting });
                    });
                    while probes.try_join_next().is_some() {}
                }
                while probes.join_next().await.is_some() {}
            }));
        }
        Probers {
            samples,
            stop,
            tasks,
        }
    }

    fn snapshot(&self, i: usize) -> Vec<Sample> {
        sorted(&self.samples[i])
    }

    async fn finish(self) -> Vec<Vec<Sample>> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.samples.iter().map(|s| sorted(s)).collect()
    }
}

/// The samples in the order the probes started.
fn sorted(samples: &Mutex<Vec<Sample>>) -> Vec<Sample> {
    let mut v = crate::lock(samples).clone();
    v.sort_by_key(|s| s.at_ms);
    v
}

/// The SOA serial of `zone` from the DNS server at `server`, over UDP.
async fn soa_serial(server: SocketAddr, zone: &str) -> Option<u32> {
    use clusterd_dns::proto::op::{Message, Query};
    use clusterd_dns::proto::rr::{Name, RData, RecordType};
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(zone).ok()?, RecordType::SOA));
    let bytes = q.to_vec().ok()?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.send_to(&bytes, server).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    })
}

/// DNS servers to watch: each mail node's member address with the local DNS port.
fn dns_servers(
    report: &StatusReport,
    config: Option<&Config>,
) -> Vec<(String, SocketAddr, String)> {
    let Some(dns) = config.and_then(|c| c.dns.as_ref()) else {
        return Vec::new();
    };
    let (Some(listen), Some(zone)) = (dns.listen.first(), dns.zones.first()) else {
        return Vec::new();
    };
    report
        .nodes
        .iter()
        .filter(|n| n.role == Role::Mail)
        .filter_map(|n| {
            let ip: IpAddr = n.address.parse::<SocketAddr>().ok()?.ip();
            Some((
                n.name.clone(),
                SocketAddr::new(ip, listen.port()),
                zone.name.clone(),
            ))
        })
        .collect()
}

async fn propose(client: &ApiClient, cmd: &Command) -> Result<Applied, ClientError> {
    with_retries(|| client.post(admin_paths::PROPOSE, cmd)).await
}

/// Run a drill against the cluster behind `client`, writing progress to `out`.
pub async fn run(
    client: &ApiClient,
    config: Option<&Config>,
    plan: &DrillPlan,
    out: &mut (dyn Write + Send),
) -> Result<DrillReport, String> {
    let report: StatusReport = client
        .get(admin_paths::STATUS)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(why) = refuse_reason(&report, plan) {
        return Err(format!("refusing to start the drill: {why}"));
    }
    let members: Vec<String> = report.nodes.iter().map(|n| n.name.clone()).collect();
    let names = || members.iter().map(String::as_str);
    let mut wanted: Vec<(String, String, SocketAddr, Vec<String>)> = Vec::new();
    let mut problems = Vec::new();
    for a in targets(&report, plan) {
        let ip: IpAddr =
            a.ip.split('/')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad address {}", a.ip))?;
        let services: Vec<&String> = match &plan.kind {
            DrillKind::Node => a.services.iter().collect(),
            DrillKind::Service { check } => a.services.iter().filter(|s| *s == check).collect(),
        };
        for svc in services {
            match port_of(config, svc) {
                Some(port) => wanted.push((
                    a.ip.clone(),
                    svc.clone(),
                    SocketAddr::new(ip, port),
                    a.services.clone(),
                )),
                None => problems.push(format!(
                    "{}: no port known for {svc} (not in the local config); not measured",
                    a.ip
                )),
            }
        }
    }
    // Before: who greets, and each node's DNS serial.
    let mut before = Vec::new();
    for (_, _, addr, _) in &wanted {
        before.push(probe(*addr).await.and_then(|g| greeter(&g, names())));
    }
    let servers = dns_servers(&report, config);
    let mut serials_before = Vec::new();
    for (_, server, zone) in &servers {
        serials_before.push(soa_serial(*server, zone).await);
    }

    let t0 = Instant::now();
    let addrs: Vec<SocketAddr> = wanted.iter().map(|w| w.2).collect();
    let probers = Probers::start(&addrs, t0);
    propose(
        client,
        &Command::StartDrill {
            node: plan.node.clone(),
            kind: plan.kind.clone(),
            by: "clusterctl drill".into(),
            at_ms: crate::clock::unix_ms(),
        },
    )
    .await
    .map_err(|e| e.to_string())
    .and_then(|a| match a.refused {
        Some(r) => Err(format!("the cluster refused the drill: {r}")),
        None => Ok(()),
    })?;
    let _ = writeln!(
        out,
        "drill started: {} plays {}; measuring {} address/service pairs and {} DNS servers \
         (bound {} s)",
        plan.node,
        plan.kind,
        wanted.len(),
        servers.len(),
        plan.bound.as_secs_f64()
    );

    // Watch until every target is served again and every DNS serial moved, or the bound.
    let old = plan.node.clone();
    let moved = |g: &str| greeter(g, names()).map(|n| n != old);
    let mut reported = vec![false; wanted.len()];
    let mut dns_changed: Vec<Option<u64>> = vec![None; servers.len()];
    loop {
        let elapsed = t0.elapsed();
        for (i, w) in wanted.iter().enumerate() {
            if reported[i] {
                continue;
            }
            let o = analyse(&probers.snapshot(i), moved);
            if let Some(ms) = o.served_ms {
                reported[i] = true;
                let by = o.greeting.as_deref().and_then(|g| greeter(g, names()));
                let _ = writeln!(
                    out,
                    "  +{:.2}s  {} {} answered by {}",
                    ms as f64 / 1000.0,
                    w.0,
                    w.1,
                    by.as_deref().unwrap_or("?"),
                );
            }
        }
        for (i, (name, server, zone)) in servers.iter().enumerate() {
            if dns_changed[i].is_none() {
                let now = soa_serial(*server, zone).await;
                if now.is_some() && now != serials_before[i] {
                    let ms = t0.elapsed().as_millis() as u64;
                    dns_changed[i] = Some(ms);
                    let _ = writeln!(
                        out,
                        "  +{:.2}s  DNS on {name} answers serial {}",
                        ms as f64 / 1000.0,
                        now.unwrap_or_default()
                    );
                }
            }
        }
        if (reported.iter().all(|r| *r) && dns_changed.iter().all(Option::is_some))
            || elapsed >= plan.bound
        {
            break;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let samples = probers.finish().await;
    let status_after: Option<StatusReport> = client.get(admin_paths::STATUS).await.ok();
    let owner_now = |ip: &str| {
        status_after
            .as_ref()
            .and_then(|s| s.addresses.iter().find(|a| a.ip == ip))
            .and_then(|a| a.owner.clone())
    };
    let failover: Vec<TargetReport> = wanted
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let outcome = analyse(&samples[i], moved);
            let after = outcome
                .greeting
                .as_deref()
                .and_then(|g| greeter(g, names()))
                .or_else(|| owner_now(&w.0));
            TargetReport {
                address: w.0.clone(),
                service: w.1.clone(),
                port: w.2.port(),
                before: before[i].clone(),
                after,
                outcome,
            }
        })
        .collect();
    for t in &failover {
        if t.outcome.served_ms.is_none() {
            problems.push(format!(
                "{} {} was not served again within {} s",
                t.address,
                t.service,
                plan.bound.as_secs_f64()
            ));
        }
    }
    let dns: Vec<DnsChange> = servers
        .iter()
        .enumerate()
        .map(|(i, (name, server, _))| DnsChange {
            node: name.clone(),
            server: server.to_string(),
            serial_before: serials_before[i],
            changed_ms: dns_changed[i],
        })
        .collect();

    let mut restore = Vec::new();
    if plan.restore {
        let _ = writeln!(
            out,
            "restoring: ending the drill and moving the addresses back"
        );
        restore = restore_phase(client, plan, &wanted, names(), out, &mut problems).await?;
    } else {
        let _ = writeln!(
            out,
            "left as is (--no-restore): end it with `clusterctl drill end {}`",
            plan.node
        );
    }
    let result = DrillReport {
        node: plan.node.clone(),
        kind: plan.kind.clone(),
        bound_ms: plan.bound.as_millis() as u64,
        ok: problems.is_empty(),
        failover,
        dns,
        restore,
        problems,
    };
    let summary = summary(&result);
    let _ = propose(
        client,
        &Command::DrillReport {
            node: plan.node.clone(),
            result: summary,
            at_ms: crate::clock::unix_ms(),
        },
    )
    .await;
    Ok(result)
}

/// End the drill, wait until the node can take its addresses again, move them back, measure.
async fn restore_phase<'a>(
    client: &ApiClient,
    plan: &DrillPlan,
    wanted: &[(String, String, SocketAddr, Vec<String>)],
    names: impl Iterator<Item = &'a str> + Clone,
    out: &mut (dyn Write + Send),
    problems: &mut Vec<String>,
) -> Result<Vec<TargetReport>, String> {
    propose(
        client,
        &Command::EndDrill {
            node: plan.node.clone(),
            by: "clusterctl drill".into(),
            at_ms: crate::clock::unix_ms(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    // The node must pass every service its addresses need before they can go back.
    let mut needed: Vec<String> = wanted.iter().flat_map(|w| w.3.clone()).collect();
    needed.sort();
    needed.dedup();
    let ready_by = Instant::now() + plan.bound.max(Duration::from_secs(10));
    loop {
        let r: Option<StatusReport> = client.get(admin_paths::STATUS).await.ok();
        let ready = r.as_ref().is_some_and(|r| {
            needed.iter().all(|c| {
                r.health
                    .iter()
                    .any(|h| h.node == plan.node && &h.check == c && h.state == Health::Passing)
            })
        });
        if ready {
            break;
        }
        if Instant::now() >= ready_by {
            problems.push(format!(
                "{} did not pass {} again in time; addresses left where they are",
                plan.node,
                needed.join(", ")
            ));
            return Ok(Vec::new());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    let addrs: Vec<SocketAddr> = wanted.iter().map(|w| w.2).collect();
    let probers = Probers::start(&addrs, t0);
    let mut ips: Vec<&String> = wanted.iter().map(|w| &w.0).collect();
    ips.dedup();
    let deadline = t0 + plan.bound;
    let mut pending: BTreeMap<String, bool> =
        ips.iter().map(|ip| (ip.to_string(), false)).collect();
    // Move each address back; a move to a node whose lease is not current yet is called off by
    // the leader, so keep asking until it is served there or the bound passes.
    while pending.values().any(|done| !done) && Instant::now() < deadline {
        let r: Option<StatusReport> = client.get(admin_paths::STATUS).await.ok();
        for (ip, done) in pending.iter_mut().filter(|(_, d)| !**d) {
            let owner = r
                .as_ref()
                .and_then(|r| r.addresses.iter().find(|a| &a.ip == ip))
                .and_then(|a| a.owner.clone());
            if owner.as_deref() == Some(plan.node.as_str()) {
                *done = true;
                continue;
            }
            let _ = propose(
                client,
                &Command::RequestMove {
                    ip: ip.clone(),
                    to: plan.node.clone(),
                    by: "clusterctl drill restore".into(),
                    at_ms: crate::clock::unix_ms(),
                },
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the probers see the restored owner answer.
    let node = plan.node.clone();
    let back = |g: &str| greeter(g, names.clone()).map(|n| n == node);
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle.min(deadline) {
        let all =
            (0..wanted.len()).all(|i| analyse(&probers.snapshot(i), back).served_ms.is_some());
        if all {
            break;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let samples = probers.finish().await;
    let mut reports = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let outcome = analyse(&samples[i], back);
        let after = outcome
            .greeting
            .as_deref()
            .and_then(|g| greeter(g, names.clone()));
        if !pending.get(&w.0).copied().unwrap_or(false) {
            problems.push(format!("{} did not go back to {}", w.0, plan.node));
        }
        let _ = writeln!(
            out,
            "  {} {} back on {} (unserved {} ms)",
            w.0,
            w.1,
            after.as_deref().unwrap_or("?"),
            outcome.unserved_ms
        );
        reports.push(TargetReport {
            address: w.0.clone(),
            service: w.1.clone(),
            port: w.2.port(),
            before: None,
            after,
            outcome,
        });
    }
    Ok(reports)
}

/// One line for the history.
pub fn summary(r: &DrillReport) -> String {
    let worst = r.failover.iter().filter_map(|t| t.outcome.served_ms).max();
    let dns = r.dns.iter().filter_map(|d| d.changed_ms).max();
    let mut s = format!(
        "{} ({}): {} of {} address/service pairs served again",
        if r.ok { "passed" } else { "FAILED" },
        r.kind,
        r.failover
            .iter()
            .filter(|t| t.outcome.served_ms.is_some())
            .count(),
        r.failover.len()
    );
    if let Some(w) = worst {
        s.push_str(&format!(", slowest after {w} ms"));
    }
    if !r.dns.is_empty() {
        match dns {
            Some(ms) if r.dns.iter().all(|d| d.changed_ms.is_some()) => s.push_str(&format!(
                ", DNS updated on all {} nodes within {ms} ms",
                r.dns.len()
            )),
            _ => s.push_str(", DNS not updated on every node"),
        }
    }
    if !r.restore.is_empty() {
        let worst = r
            .restore
            .iter()
            .map(|t| t.outcome.unserved_ms)
            .max()
            .unwrap_or(0);
        s.push_str(&format!("; restored, longest unserved {worst} ms"));
    }
    for p in &r.problems {
        s.push_str(&format!("; {p}"));
    }
    s
}

/// The drill result as a table.
pub fn render(r: &DrillReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "\ndrill of {} ({}):", r.node, r.kind);
    let _ = writeln!(
        out,
        "{:<18} {:<11} {:<8} {:<8} {:>13} {:>10}",
        "ADDRESS", "SERVICE", "BEFORE", "AFTER", "SERVED AGAIN", "UNSERVED"
    );
    for t in &r.failover {
        let _ = writeln!(
            out,
            "{:<18} {:<11} {:<8} {:<8} {:>13} {:>10}",
            t.address,
            t.service,
            t.before.as_deref().unwrap_or("?"),
            t.after.as_deref().unwrap_or("?"),
            t.outcome
                .served_ms
                .map(|ms| format!("{:.2} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "NOT SERVED".into()),
            format!("{} ms", t.outcome.unserved_ms)
        );
    }
    for d in &r.dns {
        let _ = writeln!(
            out,
            "DNS {:<8} {:<22} {}",
            d.node,
            d.server,
            d.changed_ms
                .map(|ms| format!("new serial after {:.2} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "serial NOT changed".into())
        );
    }
    for t in &r.restore {
        let _ = writeln!(
            out,
            "restored {} {} on {}: unserved {} ms",
            t.address,
            t.service,
            t.after.as_deref().unwrap_or("?"),
            t.outcome.unserved_ms
        );
    }
    let _ = writeln!(out, "result: {}", summary(r));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, g: Option<&str>) -> Sample {
        Sample {
            at_ms,
            greeting: g.map(str::to_string),
        }
    }

    #[test]
    fn served_again_is_the_first_answer_after_a_gap() {
        let samples = [
            s(0, Some("* OK mx1 ready")),
            s(50, Some("* OK mx1 ready")),
            s(100, None),
            s(150, None),
            s(900, Some("* OK mx2 ready")),
            s(950, Some("* OK mx2 ready")),
        ];
        let o = analyse(&samples, |g| Some(g.contains("mx2")));
        assert_eq!(o.served_ms, Some(900));
        assert_eq!(o.greeting.as_deref(), Some("* OK mx2 ready"));
        assert_eq!(o.unserved_ms, 800);
    }

    #[test]
    fn a_move_without_a_visible_gap_counts_when_the_greeting_changes() {
        let samples = [s(0, Some("mx1")), s(50, Some("mx1")), s(100, Some("mx2"))];
        let o = analyse(&samples, |g| Some(g == "mx2"));
        assert_eq!(o.served_ms, Some(100));
        assert_eq!(o.unserved_ms, 0);
    }

    #[test]
    fn an_answer_from_the_old_place_after_a_gap_is_not_the_move() {
        let samples = [
            s(0, Some("mx2")),
            s(50, None),
            s(100, Some("mx2")),
            s(150, Some("mx1")),
        ];
        let o = analyse(&samples, |g| Some(g == "mx1"));
        assert_eq!(o.served_ms, Some(150));
        assert_eq!(o.unserved_ms, 50);
    }

    #[test]
    fn never_served_again_reports_the_gap_up_to_the_last_sample() {
        let samples = [s(0, Some("mx1")), s(50, None), s(3050, None)];
        let o = analyse(&samples, |_| Some(false));
        assert_eq!(o.served_ms, None);
        assert_eq!(o.unserved_ms, 3000);
    }

    #[test]
    fn unchanged_greetings_without_a_gap_are_not_a_move() {
        let samples = [s(0, Some("Dovecot ready.")), s(50, Some("Dovecot ready."))];
        assert_eq!(analyse(&samples, |_| None).served_ms, None);
        // ... but after a gap, the first answer counts when greetings cannot tell.
        let samples = [s(0, Some("ready")), s(50, None), s(100, Some("ready"))];
        assert_eq!(analyse(&samples, |_| None).served_ms, Some(100));
    }

    #[test]
    fn greeter_finds_a_member_as_a_whole_word() {
        let m = ["mx1", "mx2", "mx10"];
        assert_eq!(
            greeter("220 mx2.lab.example ESMTP mx2 postfix ready", m).as_deref(),
            Some("mx2")
        );
        assert_eq!(
            greeter("* OK [CAPABILITY IMAP4rev1] mx10 ready", m).as_deref(),
            Some("mx10")
        );
        assert_eq!(greeter("* OK Dovecot ready.", m), None);
    }
}
