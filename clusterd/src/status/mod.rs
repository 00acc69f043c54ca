//! The `status` report: its stable JSON schema and its table rendering.
//!
//! The daemon builds a [`StatusReport`] from its replica and its own view of the network; the
//! same types are decoded by `clusterctl`. Field names here are a public interface (scripts read
//! `clusterctl status --json`): add fields, never rename or remove them.

pub mod report;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::{AdminState, Event, FenceProgress, Health, Role};

/// Everything `clusterctl status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The node that answered.
    pub answered_by: String,
    /// The Raft leader as the answering node knows it, if any.
    pub leader: Option<String>,
    /// Current Raft term.
    pub term: u64,
    /// Index of the last log entry the answering node knows to be committed (applied).
    pub commit_index: Option<u64>,
    /// Last log index included in the answering node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Log entries up to this index were compacted away on the answering node.
    pub purged_index: Option<u64>,
    /// How fresh the answering node's replica is.
    pub freshness: Freshness,
    /// Every member.
    pub nodes: Vec<NodeReport>,
    /// Every floating address.
    pub addresses: Vec<AddressReport>,
    /// The most recent history events, oldest first.
    pub events: Vec<Event>,
    /// DNS names of the answering node that no served address passes right now (answered
    /// fail-open or fail-closed); empty when all pass or the node serves no DNS.
    #[serde(default)]
    pub dns_failing: Vec<DnsName>,
    /// Every mail node's service health, by node then check name.
    #[serde(default)]
    pub health: Vec<ServiceReport>,
    /// Nodes with a fencing record: being fenced, fenced, or whose fence FAILED (then their
    /// addresses are blocked until a fence succeeds).
    #[serde(default)]
    pub fencing: Vec<FenceReport>,
    /// Failover drills in progress.
    #[serde(default)]
    pub drills: Vec<DrillStatus>,
    /// The answering node's own loops that fell silent (a wedged duty): empty when all beat.
    #[serde(default)]
    pub stuck_loops: Vec<StuckLoop>,
}

/// A loop of the answering node that has not beaten for a while (`status --json`
/// `stuck_loops[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StuckLoop {
    /// The loop's name, e.g. "placement".
    pub name: String,
    /// How long it has been silent, ms.
    pub silent_ms: u64,
}

/// A running failover drill (`status --json` `drills[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillStatus {
    /// The node playing failed.
    pub node: String,
    /// What it simulates.
    pub kind: crate::model::DrillKind,
    /// Who started it.
    pub by: String,
    /// When (unix ms).
    pub since_ms: u64,
}

/// One service on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The node.
    pub node: String,
    /// Check name.
    pub check: String,
    /// pending, passing, warning or critical.
    pub state: Health,
    /// When it entered that state (unix ms, the node's clock).
    pub since_ms: u64,
    /// The probe's reason for the state (empty for a clean pass).
    pub reason: String,
    /// Latency of the node's last probe (ms) when the node answered the status request's
    /// brief query (`live`), else of the probe that decided the state.
    pub latency_ms: Option<u64>,
    /// Whether `latency_ms` comes from the node's last probe.
    pub live: bool,
}

/// One node's latest fence (`status --json` `fencing[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FenceReport {
    /// The node.
    pub node: String,
    /// `started`, `fenced` or `failed`.
    pub state: FenceProgress,
    /// The agent and its target.
    pub agent: String,
    /// Attempt number since the node last held a lease.
    pub attempt: u32,
    /// Who started it (the leader, or an operator via a node).
    pub by: String,
    /// When it reached its state (unix ms).
    pub since_ms: u64,
    /// The agent's reply, or the error.
    pub detail: String,
    /// After a failure: ms from `since_ms` to the next attempt.
    pub retry_in_ms: Option<u64>,
    /// Addresses whose takeover waits for this fence.
    pub blocked_addresses: Vec<String>,
}

/// How stale the answering node's view may be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Freshness {
    /// Raft state of the answering node: leader, follower, candidate, learner, shutdown.
    pub raft_state: String,
    /// For the leader: ms since a quorum last acknowledged it. For others: ms since the leader
    /// last reached this node. `None`: never.
    pub last_contact_ms: Option<u64>,
    /// Human summary, e.g. "leader, quorum ack 12 ms ago".
    pub summary: String,
}

/// One member as seen from the answering node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Member name.
    pub name: String,
    /// `mail` or `witness`.
    pub role: Role,
    /// Votes (true) or is a learner.
    pub voter: bool,
    /// leader, follower, candidate, learner (the answering node's own state for itself).
    pub raft_state: String,
    /// Whether the answering node has heard from it recently; `None` when it cannot know
    /// (followers only hear from the leader).
    pub reachable: Option<bool>,
    /// ms since the answering node last heard from it, if ever.
    pub last_contact_ms: Option<u64>,
    /// Highest log index known replicated to it (leader only).
    pub matched_index: Option<u64>,
    /// Operator-set admin state.
    pub admin: AdminState,
    /// Its peer/admin API address.
    pub address: String,
    /// How its configured addresses compare with the cluster's: `same`, `unreported`, or a
    /// description of the difference.
    pub declared: String,
    /// Its fence agent (`[fencing.nodes.NAME]`), if it has one.
    #[serde(default)]
    pub fence_agent: Option<String>,
}

/// One floating address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressReport {
    /// `ip/prefix`.
    pub ip: String,
    /// Interface it is configured on.
    pub interface: String,
    /// Home node.
    pub home: String,
    /// Services its owner must pass.
    pub services: Vec<String>,
    /// Current owner, if assigned.
    pub owner: Option<String>,
    /// Assignment epoch.
    pub epoch: u64,
    /// When the owner got it (unix ms).
    pub since_ms: Option<u64>,
    /// Set when a service it needs is critical on its owner and no other node passes them
    /// all, so it stays where it is: says which.
    #[serde(default)]
    pub stuck: Option<String>,
}

/// What this node's DNS answers now (`clusterctl dns`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsReport {
    /// The node that answered.
    pub answered_by: String,
    /// SOA serial of its zones.
    pub serial: u32,
    /// One entry per configured name.
    pub names: Vec<DnsName>,
}

/// One DNS name and its current answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsName {
    /// Fully qualified name.
    pub name: String,
    /// Services the name needs.
    pub services: Vec<String>,
    /// Addresses answered (rotated per query).
    pub addresses: Vec<String>,
    /// `passing`, `fail-open` (nothing passes: every address answered) or `fail-closed`
    /// (nothing passes: nothing answered).
    pub state: String,
}

/// Render a DNS report as a table.
pub fn render_dns(report: &DnsReport) -> String {
    let mut out = format!(
        "DNS as answered by {} (serial {})\n\n",
        report.answered_by, report.serial
    );
    let rows: Vec<Vec<String>> = report
        .names
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.services.join(","),
                n.state.clone(),
                if n.addresses.is_empty() {
                    "(none: NODATA)".to_string()
                } else {
                    n.addresses.join(" ")
                },
            ]
        })
        .collect();
    table(&mut out, &["NAME", "SERVICES", "STATE", "ANSWER"], &rows);
    out
}

/// Render the report as the table `clusterctl status` prints.
pub fn render(report: &StatusReport, now_ms: u64) -> String {
    let mut out = String::new();
    let leader = report.leader.as_deref().unwrap_or("none (no quorum?)");
    let commit = report
        .commit_index
        .map(|c| c.to_string())
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "leader: {leader}   term: {}   commit index: {commit}",
        report.term
    );
    let _ = writeln!(
        out,
        "answered by {} ({})",
        report.answered_by, report.freshness.summary
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{:?}", n.role).to_lowercase(),
                if n.voter { "voter" } else { "learner" }.to_string(),
                n.raft_state.clone(),
                match n.reachable {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "?".into(),
                },
                n.last_contact_ms
                    .map(|ms| format!("{ms} ms ago"))
                    .unwrap_or_else(|| "-".into()),
                n.admin.to_string(),
                n.declared.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "NODE",
            "ROLE",
            "VOTE",
            "RAFT",
            "REACHABLE",
            "LAST CONTACT",
            "ADMIN",
            "CONFIG",
        ],
        &rows,
    );
    out.push('\n');
    if report.addresses.is_empty() {
        out.push_str("no floating addresses configured\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .addresses
            .iter()
            .map(|a| {
                vec![
                    a.ip.clone(),
                    a.interface.clone(),
                    a.home.clone(),
                    a.services.join(","),
                    a.owner.clone().unwrap_or_else(|| "unassigned".into()),
                    a.epoch.to_string(),
                    a.since_ms
                        .map(|s| age(now_ms.saturating_sub(s)))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "ADDRESS", "IFACE", "HOME", "SERVICES", "OWNER", "EPOCH", "SINCE",
            ],
            &rows,
        );
    }
    for d in &report.drills {
        let _ = writeln!(
            out,
            "\nDRILL: {} plays {} since {} ago (by {}); end it with `clusterctl drill end {}`",
            d.node,
            d.kind,
            age(now_ms.saturating_sub(d.since_ms)),
            d.by,
            d.node
        );
    }
    for a in report.addresses.iter().filter(|a| a.stuck.is_some()) {
        let _ = writeln!(
            out,
            "\n{} STAYS on {}: {}",
            a.ip,
            a.owner.as_deref().unwrap_or("-"),
            a.stuck.as_deref().unwrap_or("")
        );
    }
    if !report.health.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = report
            .health
            .iter()
            .map(|h| {
                vec![
                    h.node.clone(),
                    h.check.clone(),
                    format!(
                        "{}{}",
                        match h.state {
                            Health::Critical => "CRITICAL".to_string(),
                            other => other.to_string(),
                        },
                        if h.live { "" } else { "*" }
                    ),
                    age(now_ms.saturating_sub(h.since_ms)),
                    h.latency_ms
                        .map(|ms| format!("{ms} ms"))
                        .unwrap_or_else(|| "-".into()),
                    h.reason.clone(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["NODE", "SERVICE", "HEALTH", "SINCE", "LATENCY", "REASON"],
            &rows,
        );
        if report.health.iter().any(|h| !h.live) {
            out.push_str("* the node did not answer just now: its last replicated state\n");
        }
    }
    for n in &report.dns_failing {
        let _ = writeln!(
            out,
            "\nDNS {}: {} (no served address passes {}){}",
            n.name,
            n.state,
            n.services.join(","),
            if n.addresses.is_empty() {
                ", answering nothing".to_string()
            } else {
                format!(", answering {}", n.addresses.join(" "))
            }
        );
    }
    render_fencing(&mut out, &report.fencing, now_ms);
    for l in &report.stuck_loops {
        let _ = writeln!(
            out,
            "\nSTUCK on {}: its {} loop has been silent for {} (the watchdog restarts a node \
             whose loops stay silent)",
            report.answered_by,
            l.name,
            age(l.silent_ms)
        );
    }
    if !report.events.is_empty() {
        out.push_str("\nrecent events:\n");
        for e in report.events.iter().rev().take(5).rev() {
            let _ = writeln!(
                out,
                "  {} ago  {}",
                age(now_ms.saturating_sub(e.at_ms)),
                e.kind
            );
        }
    }
    out
}

/// The fencing section of the status table: failures first and loud.
fn render_fencing(out: &mut String, fencing: &[FenceReport], now_ms: u64) {
    let mut sorted: Vec<&FenceReport> = fencing.iter().collect();
    sorted.sort_by_key(|f| (f.state != FenceProgress::Failed, f.node.clone()));
    for f in sorted {
        let ago = age(now_ms.saturating_sub(f.since_ms));
        let blocked = f.blocked_addresses.join(", ");
        let _ = match f.state {
            FenceProgress::Failed => writeln!(
                out,
                "\n!!! FENCING OF {} FAILED (attempt {}, {ago} ago, {}): {}\n!!! takeover of \
                 [{blocked}] is BLOCKED until a fence succeeds; next attempt {}. Fix the \
                 agent, or power {} off by hand and run `clusterctl fence {}`.",
                f.node,
                f.attempt,
                f.agent,
                f.detail,
                match f.retry_in_ms {
                    Some(ms) if f.since_ms + ms > now_ms => {
                        format!("in {}", age(f.since_ms + ms - now_ms))
                    }
                    _ => "due now".to_string(),
                },
                f.node,
                f.node
            ),
            FenceProgress::Started => writeln!(
                out,
                "\nfencing {} (attempt {}, {}, started {ago} ago by {}); takeover of \
                 [{blocked}] waits for it",
                f.node, f.attempt, f.agent, f.by
            ),
            FenceProgress::Fenced => writeln!(
                out,
                "\n{} fenced {ago} ago by {} ({}): {}",
                f.node, f.agent, f.by, f.detail
            ),
        };
    }
}

/// Render history events, one per line, oldest first.
pub fn render_events(events: &[Event], now_ms: u64) -> String {
    let mut out = String::new();
    for e in events {
        let _ = writeln!(
            out,
            "#{:<5} {:>10} ago  {}",
            e.seq,
            age(now_ms.saturating_sub(e.at_ms)),
            e.kind
        );
    }
    if out.is_empty() {
        out.push_str("no events\n");
    }
    out
}

/// A short human duration: `850ms`, `12s`, `5m03s`, `2h10m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(
        out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for row in rows {
        line(out, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn report() -> StatusReport {
        StatusReport {
            answered_by: "mx2".into(),
            leader: Some("mx1".into()),
            term: 3,
            commit_index: Some(17),
            snapshot_index: None,
            purged_index: None,
            freshness: Freshness {
                raft_state: "follower".into(),
                last_contact_ms: Some(20),
                summary: "follower, leader contact 20 ms ago".into(),
            },
            nodes: vec![NodeReport {
                name: "mx1".into(),
                role: Role::Mail,
                voter: true,
                raft_state: "leader".into(),
                reachable: Some(true),
                last_contact_ms: Some(20),
                matched_index: None,
                admin: AdminState::Active,
                address: "192.0.2.11:7400".into(),
                declared: "same".into(),
                fence_agent: None,
            }],
            addresses: vec![AddressReport {
                ip: "192.0.2.101/24".into(),
                interface: "eth0".into(),
                home: "mx1".into(),
                services: vec!["imap".into(), "smtp".into()],
                owner: None,
                epoch: 0,
                since_ms: None,
                stuck: None,
            }],
            events: vec![Event {
                seq: 1,
                at_ms: 1_000,
                kind: EventKind::LeaderElected {
                    node: "mx1".into(),
                    term: 3,
                },
            }],
            dns_failing: vec![],
            health: vec![],
            fencing: vec![],
            drills: vec![],
            stuck_loops: vec![],
        }
    }

    fn failed_fence() -> FenceReport {
        FenceReport {
            node: "mx2".into(),
            state: FenceProgress::Failed,
            agent: "redfish https://192.0.2.232".into(),
            attempt: 3,
            by: "leader mx1".into(),
            since_ms: 60_000,
            detail: "https://192.0.2.232 answered HTTP 500".into(),
            retry_in_ms: Some(4_000),
            blocked_addresses: vec!["192.0.2.102/24".into()],
        }
    }

    #[test]
    fn table_shows_a_failed_fence_loudly_with_the_blocked_addresses() {
        let mut r = report();
        r.fencing.push(failed_fence());
        let text = render(&r, 61_000);
        assert!(
            text.contains("!!! FENCING OF mx2 FAILED (attempt 3, 1s ago"),
            "{text}"
        );
        assert!(
            text.contains("takeover of [192.0.2.102/24] is BLOCKED") && text.contains("in 3s"),
            "{text}"
        );
        assert!(text.contains("`clusterctl fence mx2`"), "{text}");
    }

    #[test]
    fn json_reports_fencing_per_node() {
        let mut r = report();
        r.fencing.push(failed_fence());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["fencing"][0]["state"], "failed");
        assert_eq!(v["fencing"][0]["blocked_addresses"][0], "192.0.2.102/24");
        assert_eq!(v["nodes"][0]["fence_agent"], serde_json::Value::Null);
    }

    #[test]
    fn table_shows_health_per_node_and_service_and_stuck_addresses() {
        let mut r = report();
        r.addresses[0].owner = Some("mx1".into());
        r.addresses[0].stuck = Some("imap critical on mx1 and no other node passes imap".into());
        r.health = vec![
            ServiceReport {
                node: "mx1".into(),
                check: "imap".into(),
                state: Health::Critical,
                since_ms: 31_000,
                reason: "connect to 127.0.0.1:143: Connection refused".into(),
                latency_ms: Some(1),
                live: false,
            },
            ServiceReport {
                node: "mx1".into(),
                check: "smtp".into(),
                state: Health::Passing,
                since_ms: 1_000,
                reason: String::new(),
                latency_ms: Some(4),
                live: true,
            },
        ];
        let text = render(&r, 61_000);
        assert!(
            text.contains("192.0.2.101/24 STAYS on mx1: imap critical on mx1"),
            "{text}"
        );
        assert!(
            text.contains("mx1   imap     CRITICAL*  30s    1 ms     connect to 127.0.0.1:143"),
            "{text}"
        );
        assert!(
            text.contains("mx1   smtp     passing    1m00s  4 ms"),
            "{text}"
        );
        assert!(
            text.contains("* the node did not answer just now: its last replicated state"),
            "{text}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["health"][0]["state"], "critical");
    }

    #[test]
    fn table_says_when_dns_answers_fail_open() {
        let mut r = report();
        r.dns_failing.push(DnsName {
            name: "imap.mail.example.com.".into(),
            services: vec!["imap".into()],
            addresses: vec!["192.0.2.101".into()],
            state: "fail-open".into(),
        });
        let text = render(&r, 61_000);
        assert!(
            text.contains(
                "DNS imap.mail.example.com.: fail-open (no served address passes imap), \
                 answering 192.0.2.101"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_schema_has_the_documented_top_level_fields() {
        let v = serde_json::to_value(report()).unwrap();
        for field in ["leader", "term", "nodes", "addresses", "events"] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["nodes"][0]["role"], "mail");
        assert_eq!(v["events"][0]["kind"]["type"], "leader_elected");
    }

    #[test]
    fn table_names_a_stuck_loop_of_the_answering_node() {
        let mut r = report();
        assert!(!render(&r, 61_000).contains("STUCK"));
        r.stuck_loops.push(StuckLoop {
            name: "placement".into(),
            silent_ms: 12_000,
        });
        let text = render(&r, 61_000);
        assert!(
            text.contains(&format!(
                "STUCK on {}: its placement loop has been silent for 12s",
                r.answered_by
            )),
            "{text}"
        );
    }

    #[test]
    fn table_shows_leader_nodes_addresses_and_events() {
        let text = render(&report(), 61_000);
        assert!(text.starts_with("leader: mx1   term: 3   commit index: 17"));
        assert!(text.contains("mx1   mail  voter  leader  yes"), "{text}");
        assert!(
            text.contains("192.0.2.101/24  eth0   mx1   imap,smtp  unassigned"),
            "{text}"
        );
        assert!(
            text.contains("1m00s ago  mx1 became leader in term 3"),
            "{text}"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_000), "12s");
        assert_eq!(age(303_000), "5m03s");
        assert_eq!(age(7_800_000), "2h10m");
        assert_eq!(age(273_600_000), "3d04h");
    }
}
