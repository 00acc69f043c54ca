//! `[hooks]` and `[metrics]`: how a node tells the outside world about transitions.
//!
//! Both sections are per node (they may differ between nodes) and optional: without them no
//! script runs and metrics are served only on the authenticated API at `/metrics`. Like the
//! rest of `config`, this module names files and sockets but never opens them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Config, Millis, Problems, check_absolute};

/// `[hooks]`: programs run on transitions, with the facts in `CLUSTERD_*` environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Programs run for every transition, one after the other in this order: absolute paths,
    /// run without a shell and without arguments, e.g. ["/etc/clusterd/hooks.d/notify"].
    /// Default: none (no hooks run).
    pub scripts: Vec<PathBuf>,
    /// How long one script may run; then its whole process group is killed and the run is
    /// logged as timed out. Default "10s".
    pub timeout: Millis,
    /// Transitions waiting to run at most; when the queue is full the oldest is dropped, with
    /// a log line and `clusterd_hook_events_dropped_total`. Default 1000.
    pub queue: usize,
    /// Run hooks only for these transitions, e.g. ["address_acquired", "node_down"]. Default:
    /// every kind (see README, "Hooks").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<HookEventKind>>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            scripts: Vec::new(),
            timeout: Millis::from_millis(10_000),
            queue: 1000,
            events: None,
        }
    }
}

/// The kinds of transition a hook runs for (`CLUSTERD_EVENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookEventKind {
    /// This node configured a floating address and announced it.
    AddressAcquired,
    /// This node removed a floating address.
    AddressReleased,
    /// The leader stopped hearing from a node.
    NodeDown,
    /// The leader hears from a node again.
    NodeUp,
    /// An address got a new owner (committed by the leader).
    OwnerChanged,
    /// One of this node's services changed state.
    ServiceState,
    /// The leader started fencing a node.
    FenceStarted,
    /// A fence ended: the node is off, or the fence failed.
    FenceResult,
    /// This node became the Raft leader.
    LeaderElected,
    /// Raft membership changed.
    MembershipChanged,
    /// An operator drained or undrained a node.
    AdminChanged,
}

impl HookEventKind {
    /// Every kind, in documentation order.
    pub const ALL: [HookEventKind; 11] = [
        HookEventKind::AddressAcquired,
        HookEventKind::AddressReleased,
        HookEventKind::NodeDown,
        HookEventKind::NodeUp,
        HookEventKind::OwnerChanged,
        HookEventKind::ServiceState,
        HookEventKind::FenceStarted,
        HookEventKind::FenceResult,
        HookEventKind::LeaderElected,
        HookEventKind::MembershipChanged,
        HookEventKind::AdminChanged,
    ];

    /// The name scripts see in `CLUSTERD_EVENT` and operators write in `hooks.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEventKind::AddressAcquired => "address_acquired",
            HookEventKind::AddressReleased => "address_released",
            HookEventKind::NodeDown => "node_down",
            HookEventKind::NodeUp => "node_up",
            HookEventKind::OwnerChanged => "owner_changed",
            HookEventKind::ServiceState => "service_state",
            HookEventKind::FenceStarted => "fence_started",
            HookEventKind::FenceResult => "fence_result",
            HookEventKind::LeaderElected => "leader_elected",
            HookEventKind::MembershipChanged => "membership_changed",
            HookEventKind::AdminChanged => "admin_changed",
        }
    }
}

impl fmt::Display for HookEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[metrics]`: where Prometheus scrapes this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A separate plain-HTTP listener serving only `GET /metrics`, without authentication, for
    /// Prometheus, e.g. "127.0.0.1:9400" or the node's private-network address. Never expose
    /// it publicly. Default: none (metrics only at `/metrics` on the signed API, as
    /// `clusterctl metrics` prints them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl Config {
    pub(super) fn check_hooks(&self, v: &mut Problems) {
        let h = &self.hooks;
        let mut seen = BTreeSet::new();
        for (i, script) in h.scripts.iter().enumerate() {
            let field = format!("hooks.scripts[{i}]");
            check_absolute(v, &field, script, "/etc/clusterd/hooks.d/notify");
            if !seen.insert(script) {
                v.push(
                    field,
                    format!(
                        "{:?} is listed twice, so it would run twice per transition; list \
                         each script once",
                        script.display().to_string()
                    ),
                );
            }
        }
        if h.timeout.get().is_zero() {
            v.push(
                "hooks.timeout",
                format!(
                    "{} leaves a script no time to run; write a positive duration, e.g. \"10s\"",
                    h.timeout
                ),
            );
        }
        if h.queue == 0 {
            v.push(
                "hooks.queue",
                "0 would drop every transition; write how many may wait, e.g. 1000",
            );
        }
        if h.events.as_ref().is_some_and(Vec::is_empty) {
            v.push(
                "hooks.events",
                format!(
                    "an empty list runs no hook; remove the key to run hooks for every \
                     transition, or list some of: {}",
                    HookEventKind::ALL.map(HookEventKind::as_str).join(", ")
                ),
            );
        }
    }

    pub(super) fn check_metrics(&self, v: &mut Problems) {
        let Some(listen) = self.metrics.listen else {
            return;
        };
        if listen.ip().is_unspecified() {
            v.push(
                "metrics.listen",
                format!(
                    "{listen} listens on every interface, public ones included, and the metrics \
                     listener has no authentication; write a loopback or private-network \
                     address, e.g. \"127.0.0.1:{}\"",
                    listen.port().max(1)
                ),
            );
        }
        if listen.port() == 0 {
            v.push(
                "metrics.listen",
                format!(
                    "{listen} has port 0, so Prometheus could not know where to scrape; write a \
                     fixed port, e.g. \"{}:9400\"",
                    listen.ip()
                ),
            );
        }
        if Some(listen) == self.node.advertise && listen != self.node.listen {
            v.push(
                "metrics.listen",
                format!(
                    "{listen} is this node's API address (node.listen), which already serves \
                     /metrics with authentication; pick another port, e.g. \"{}:9400\"",
                    listen.ip()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{BASE, assert_refused, assert_valid, base};
    use super::*;

    fn with_hooks(h: HooksConfig) -> Config {
        let mut c = base();
        c.hooks = h;
        c
    }

    fn one_script() -> HooksConfig {
        HooksConfig {
            scripts: vec!["/etc/clusterd/hooks.d/notify".into()],
            ..HooksConfig::default()
        }
    }

    fn with_metrics(listen: &str) -> Config {
        let mut c = base();
        c.metrics.listen = Some(listen.parse().unwrap());
        c
    }

    #[test]
    fn hooks_and_metrics_sections_parse_with_their_defaults() {
        let text = format!(
            "{BASE}\n[hooks]\nscripts = [\"/etc/clusterd/hooks.d/notify\"]\n\n\
             [metrics]\nlisten = \"127.0.0.1:9400\"\n"
        );
        let c = super::super::parse(&text).unwrap();
        assert_eq!(c.hooks.timeout, Millis::from_millis(10_000));
        assert_eq!(c.hooks.queue, 1000);
        assert_eq!(c.hooks.events, None);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9400".parse().unwrap()));
        assert_valid(&c);
    }

    #[test]
    fn hook_event_names_round_trip_through_the_config() {
        for kind in HookEventKind::ALL {
            let text = format!("{BASE}\n[hooks]\nevents = [\"{kind}\"]\n");
            let c = super::super::parse(&text).unwrap();
            assert_eq!(c.hooks.events, Some(vec![kind]));
        }
    }

    #[test]
    fn unknown_hook_event_is_refused_with_the_known_names() {
        let text = format!("{BASE}\n[hooks]\nevents = [\"address_up\"]\n");
        let e = super::super::parse(&text).unwrap_err();
        let p = &e.problems[0];
        assert!(p.field.starts_with("hooks.events"), "{e}");
        assert!(p.message.contains("address_acquired"), "{e}");
    }

    #[test]
    fn relative_hook_script_is_refused() {
        let c = with_hooks(HooksConfig {
            scripts: vec!["hooks.d/notify".into()],
            ..HooksConfig::default()
        });
        assert_refused(&c, "hooks.scripts[0]", "absolute path");
    }

    #[test]
    fn hook_script_listed_twice_is_refused() {
        let mut h = one_script();
        h.scripts.push(h.scripts[0].clone());
        assert_refused(&with_hooks(h), "hooks.scripts[1]", "list each script once");
    }

    #[test]
    fn zero_hook_timeout_is_refused() {
        let c = with_hooks(HooksConfig {
            timeout: Millis::from_millis(0),
            ..one_script()
        });
        assert_refused(&c, "hooks.timeout", "positive duration");
    }

    #[test]
    fn zero_hook_queue_is_refused() {
        let c = with_hooks(HooksConfig {
            queue: 0,
            ..one_script()
        });
        assert_refused(&c, "hooks.queue", "how many may wait");
    }

    #[test]
    fn empty_hook_event_list_is_refused() {
        let c = with_hooks(HooksConfig {
            events: Some(Vec::new()),
            ..one_script()
        });
        assert_refused(&c, "hooks.events", "remove the key");
    }

    #[test]
    fn metrics_on_every_interface_is_refused() {
        assert_refused(
            &with_metrics("0.0.0.0:9400"),
            "metrics.listen",
            "no authentication",
        );
    }

    #[test]
    fn metrics_on_port_zero_is_refused() {
        assert_refused(&with_metrics("127.0.0.1:0"), "metrics.listen", "fixed port");
    }

    #[test]
    fn metrics_on_the_api_address_is_refused() {
        assert_refused(
            &with_metrics("192.0.2.11:7400"),
            "metrics.listen",
            "another port",
        );
    }

    #[test]
    fn metrics_on_a_private_address_is_accepted() {
        assert_valid(&with_metrics("192.0.2.11:9400"));
    }
}
