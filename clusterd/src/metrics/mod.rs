//! Prometheus metrics of a node, in the text exposition format (version 0.0.4).
//!
//! Owns the counters nothing else keeps (announcements, failovers and fence results seen in the
//! applied history, probe latency histograms, which addresses this node has configured) and
//! [`render`], which writes them together with what other parts already know (Raft metrics, the
//! replica, this node's lease, probe states, the DNS server's counters, hook runs) at scrape
//! time. Served at `/metrics` on the signed API and, when `[metrics] listen` is set, on a
//! separate plain listener for Prometheus ([`serve`]).
//!
//! It must not decide anything or propose commands; recording is a few atomic or briefly
//! locked operations so that no caller waits on a scrape.

use crate::lock;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod registry;
pub mod text;

use crate::model::Health;
use crate::node::Shared;
use text::Text;

/// Path of the metrics on both listeners.
pub const PATH: &str = crate::client::admin_paths::METRICS;
/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn raft_state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Health as a number: 0 passing, 1 warning, 2 critical, 3 pending (Nagios' OK, WARNING,
/// CRITICAL, UNKNOWN).
pub fn health_value(h: Health) -> u8 {
    match h {
        Health::Passing => 0,
        Health::Warning => 1,
        Health::Critical => 2,
        Health::Pending => 3,
    }
}

/// Every metric of this node, in the text exposition format.
pub fn render(s: &Shared) -> String {
    let mut t = Text::default();
    let metrics = s.raft.metrics().borrow().clone();
    let replica = s.replica.borrow().clone();

    t.family(
        "clusterd_build_info",
        "gauge",
        "Always 1; labels name the version, this node and its role.",
    );
    let role = s.config.node.role.to_string();
    t.sample(
        "clusterd_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("node", &s.me),
            ("role", &role),
        ],
        1,
    );

    // Raft.
    let leads = s.leads(&metrics);
    t.family(
        "clusterd_raft_state",
        "gauge",
        "1 for this node's Raft state, 0 for the others.",
    );
    for state in [
        ServerState::Leader,
        ServerState::Follower,
        ServerState::Candidate,
        ServerState::Learner,
        ServerState::Shutdown,
    ] {
        t.sample(
            "clusterd_raft_state",
            &[("state", raft_state_name(state))],
            u8::from(metrics.state == state),
        );
    }
    t.family(
        "clusterd_raft_leader",
        "gauge",
        "1 while this node is the Raft leader.",
    );
    t.sample("clusterd_raft_leader", &[], u8::from(leads));
    t.family(
        "clusterd_raft_has_leader",
        "gauge",
        "1 while this node knows a Raft leader.",
    );
    t.sample(
        "clusterd_raft_has_leader",
        &[],
        u8::from(metrics.current_leader.is_some()),
    );
    t.family("clusterd_raft_term", "gauge", "Current Raft term.");
    t.sample("clusterd_raft_term", &[], metrics.current_term);
    t.family(
        "clusterd_raft_commit_index",
        "gauge",
        "Highest log index committed and applied on this node.",
    );
    t.sample(
        "clusterd_raft_commit_index",
        &[],
        metrics.last_applied.map_or(0, |l| l.index),
    );
    t.family(
        "clusterd_raft_last_log_index",
        "gauge",
        "Highest log index stored on this node.",
    );
    t.sample(
        "clusterd_raft_last_log_index",
        &[],
        metrics.last_log_index.unwrap_or(0),
    );
    if let Some(ms) = s.leading(&metrics).and_then(|l| l.confirmed_ms) {
        t.family(
            "clusterd_raft_quorum_ack_age_seconds",
            "gauge",
            "Leader only: time since a quorum last confirmed its leadership (counted from when \
             that check began; leases are granted only while it is under quorum_fresh).",
        );
        t.sample(
            "clusterd_raft_quorum_ack_age_seconds",
            &[],
            ms as f64 / 1000.0,
        );
    }

    // Addresses.
    t.family(
        "clusterd_address_owner",
        "gauge",
        "1 per floating address, labelled with its owner in the replicated state (empty: none).",
    );
    for (ip, a) in &replica.state.addresses {
        let owner = a.owner.as_deref().unwrap_or("");
        t.sample(
            "clusterd_address_owner",
            &[("address", ip), ("owner", owner)],
            1,
        );
    }
    t.family(
        "clusterd_address_epoch",
        "gauge",
        "Ownership epoch of each floating address (increases with every change of owner).",
    );
    for (ip, a) in &replica.state.addresses {
        t.sample("clusterd_address_epoch", &[("address", ip)], a.epoch);
    }
    t.family(
        "clusterd_address_configured",
        "gauge",
        "1 for each floating address configured on this node now (summed over nodes: at most 1).",
    );
    let held = lock(&s.metrics.held).clone();
    for ip in replica.state.addresses.keys() {
        t.sample(
            "clusterd_address_configured",
            &[("address", ip)],
            u8::from(held.contains_key(ip)),
        );
    }
    t.family(
        "clusterd_lease_remaining_seconds",
        "gauge",
        "Time left on this node's address lease (0: none).",
    );
    let remaining = s
        .leases
        .holder
        .borrow()
        .map(|l| l.deadline.saturating_duration_since(crate::clock::now()))
        .unwrap_or_default();
    t.sample(
        "clusterd_lease_remaining_seconds",
        &[],
        remaining.as_millis() as f64 / 1000.0,
    );
    t.family(
        "clusterd_announcements_total",
        "counter",
        "Gratuitous ARP / unsolicited neighbour advertisement rounds for an address, by result.",
    );
    for ((address, result), n) in lock(&s.metrics.announcements).iter() {
        t.sample(
            "clusterd_announcements_total",
            &[("address", address), ("result", result)],
            n,
        );
    }
    t.labelled(
        "clusterd_failovers_total",
        "counter",
        "Addresses moved from one owner to another, by reason, as applied on this node since it started.",
        "reason",
        lock(&s.metrics.failovers).clone(),
    );
    t.labelled(
        "clusterd_fence_attempts_total",
        "counter",
        "Fence attempts that ended, by result (fenced, failed), as applied on this node since it started.",
        "result",
        lock(&s.metrics.fences).clone(),
    );

    // Health.
    t.family(
        "clusterd_check_state",
        "gauge",
        "State of each of this node's checks: 0 passing, 1 warning, 2 critical, 3 pending.",
    );
    for (check, c) in s.probes.snapshot() {
        t.sample(
            "clusterd_check_state",
            &[("check", &check)],
            health_value(c.health),
        );
    }
    let probes = lock(&s.metrics.probes);
    t.family(
        "clusterd_probes_total",
        "counter",
        "Probes run by this node, by check and result (ok, warning, critical).",
    );
    for (check, p) in probes.iter() {
        for (result, n) in &p.results {
            t.sample(
                "clusterd_probes_total",
                &[("check", check), ("result", result)],
                n,
            );
        }
    }
    t.family(
        "clusterd_probe_duration_seconds",
        "histogram",
        "How long this node's probes took, by check.",
    );
    for (check, p) in probes.iter() {
        t.histogram(
            "clusterd_probe_duration_seconds",
            &[("check", check)],
            &p.latency,
        );
    }
    drop(probes);

    // DNS.
    t.family(
        "clusterd_dns_queries_total",
        "counter",
        "DNS queries answered by this node, by question type and response code (DROPPED: over the rate limit).",
    );
    for c in s.metrics.dns.snapshot() {
        t.sample(
            "clusterd_dns_queries_total",
            &[("qtype", c.qtype), ("rcode", c.rcode)],
            c.count,
        );
    }

    // HTTP listeners.
    let listeners = [
        ("api", &s.metrics.http),
        ("metrics", &s.metrics.metrics_http),
    ];
    t.family(
        "clusterd_http_connections",
        "gauge",
        "HTTP connections open now, by listener (api, metrics).",
    );
    for (name, stats) in listeners {
        t.sample(
            "clusterd_http_connections",
            &[("listener", name)],
            stats.open(),
        );
    }
    t.family(
        "clusterd_http_connections_refused_total",
        "counter",
        "HTTP connections closed as soon as they were accepted, by listener and the cap they met (per_source, total).",
    );
    for (name, stats) in listeners {
        for (cap, n) in stats.refused() {
            t.sample(
                "clusterd_http_connections_refused_total",
                &[("listener", name), ("cap", cap.token())],
                n,
            );
        }
    }

    // Hooks.
    s.hooks.render_metrics(&mut t);
    t.finish()
}

async fn scrape(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&s))
}

/// The `/metrics` handler (used by the API router too, behind its authentication).
pub fn route() -> axum::routing::MethodRouter<Arc<Shared>> {
    get(scrape)
}

/// Serve `GET /metrics` without authentication on `listener` until `stop`.
pub async fn serve(s: Arc<Shared>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let stats = s.metrics.metrics_http.clone();
    let app = Router::new().route(PATH, route()).with_state(s);
    // Scrapers are no members: everyone shares the strangers' caps.
    crate::http_server::serve(
        "metrics",
        listener,
        app,
        crate::http_server::Bounds::default(),
        Arc::new(|_| false),
        stats,
        stop,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::registry::*;
    use super::*;
    use crate::model::MoveReason;

    #[test]
    fn families_and_samples_follow_the_text_format() {
        let mut t = Text::default();
        t.family(
            "clusterd_x_total",
            "counter",
            "Things, by kind.\nSecond line.",
        );
        t.sample("clusterd_x_total", &[("kind", "a\"b\\c\nd")], 3);
        t.sample("clusterd_x_total", &[], 0.25);
        t.sample(
            "clusterd_x_total",
            &[("address", "192.0.2.101/24"), ("owner", "mx1")],
            1,
        );
        assert_eq!(
            t.finish(),
            "# HELP clusterd_x_total Things, by kind.\\nSecond line.\n\
             # TYPE clusterd_x_total counter\n\
             clusterd_x_total{kind=\"a\\\"b\\\\c\\nd\"} 3\n\
             clusterd_x_total 0.25\n\
             clusterd_x_total{address=\"192.0.2.101/24\",owner=\"mx1\"} 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::default();
        for v in [0.0005, 0.003, 0.003, 0.2, 30.0] {
            h.observe(v);
        }
        let mut t = Text::default();
        t.histogram("p", &[("check", "imap")], &h);
        let text = t.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "p_bucket{check=\"imap\",le=\"0.001\"} 1");
        assert_eq!(lines[1], "p_bucket{check=\"imap\",le=\"0.0025\"} 1");
        assert_eq!(lines[2], "p_bucket{check=\"imap\",le=\"0.005\"} 3");
        assert_eq!(lines[7], "p_bucket{check=\"imap\",le=\"0.25\"} 4");
        assert_eq!(lines[12], "p_bucket{check=\"imap\",le=\"10\"} 4");
        assert_eq!(lines[13], "p_bucket{check=\"imap\",le=\"+Inf\"} 5");
        assert_eq!(lines[14], "p_sum{check=\"imap\"} 30.2065");
        assert_eq!(lines[15], "p_count{check=\"imap\"} 5");
        assert_eq!(lines.len(), 16);
    }

    #[test]
    fn model_enums_map_to_their_serde_names() {
        assert_eq!(token(&MoveReason::LeaseExpired), "lease_expired");
        assert_eq!(token(&Health::Critical), "critical");
        assert_eq!(health_value(Health::Pending), 3);
    }

    #[test]
    fn registry_counts_by_label() {
        let r = Registry::default();
        r.failover(MoveReason::LeaseExpired);
        r.failover(MoveReason::LeaseExpired);
        r.failover(MoveReason::Operator);
        r.announced("192.0.2.101/24", true);
        r.held("192.0.2.101/24", 4);
        assert_eq!(lock(&r.failovers).get("lease_expired"), Some(&2));
        assert_eq!(lock(&r.failovers).get("operator"), Some(&1));
        assert_eq!(r.released("192.0.2.101/24"), Some(4));
        assert_eq!(r.released("192.0.2.101/24"), None);
    }
}
