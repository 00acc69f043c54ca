//! Fencing at run time: the leader powers off a silent node that has a fence agent before its
//! addresses move, and operators fence by hand with `clusterctl fence`.
//!
//! The decisions are pure and live elsewhere: `clusterd_fencing::FenceGate` decides which
//! expired nodes wait for a fence and when to (re)try; [`gate_liveness`] applies it to the
//! planner's input; [`to_clear`] says which fencing records are over. This module carries them
//! out: it builds the agents from `[fencing]`, records "started" through Raft *before* running
//! an agent (a leader that cannot commit has no quorum and must not fence; only the one leader
//! that can commit ever fences, so two survivors never fence each other), runs the agent under
//! its deadline in a task of its own (placement of other addresses goes on meanwhile), and
//! records the reply or the error.

use crate::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clusterd_fencing::exec::{Exec, ExecConfig, OptionsVia};
use clusterd_fencing::redfish::{Redfish, RedfishAuth, RedfishConfig};
use clusterd_fencing::webhook::{Webhook, WebhookConfig};
use clusterd_fencing::{Backoff, FenceError, FenceGate, FenceOptions, Fencer, Secret};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::api;
use crate::auth;
use crate::config::{
    Config, ConfigError, DEFAULT_WEBHOOK_BODY, FenceAgentConfig, FenceAgentKind, OptionsViaKind,
    Problem, RedfishAuthKind,
};
use crate::daemon::Shared;
use crate::model::plan::Liveness;
use crate::model::{Command, FenceProgress, State};

/// Timeout of each HTTP request an agent makes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Gap between two power-state reads of a Redfish agent.
const REDFISH_POLL: Duration = Duration::from_millis(250);

/// Body of `POST /v1/fence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceRequest {
    /// The node to fence.
    pub node: String,
    /// Fence even if that leaves the cluster without a quorum or without a live mail node.
    #[serde(default)]
    pub force: bool,
}

/// Answer of `POST /v1/fence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceReply {
    /// The node.
    pub node: String,
    /// The agent used.
    pub agent: String,
    /// What it answered.
    pub reply: String,
}

/// Build the agent for one node from its config.
pub fn build_agent(node: &str, a: &FenceAgentConfig) -> Result<Arc<dyn Fencer>, FenceError> {
    Ok(match a.agent {
        FenceAgentKind::Redfish => Arc::new(Redfish::new(RedfishConfig {
            url: a.url.clone().unwrap_or_default(),
            system: a.system.clone(),
            username: a.username.clone().unwrap_or_default(),
            password_file: a.password_file.clone().unwrap_or_default(),
            auth: match a.auth {
                Some(RedfishAuthKind::Basic) => RedfishAuth::Basic,
                Some(RedfishAuthKind::Session) | None => RedfishAuth::Session,
            },
            trust: a.trust(),
            request_timeout: REQUEST_TIMEOUT,
            poll_every: REDFISH_POLL,
        })?),
        FenceAgentKind::Exec => Arc::new(Exec::new(ExecConfig {
            node: node.to_string(),
            command: a.command.clone().unwrap_or_default(),
            options: a.options.clone(),
            via: match a.options_via {
                Some(OptionsViaKind::Args) => OptionsVia::Args,
                Some(OptionsViaKind::Stdin) | None => OptionsVia::Stdin,
            },
            password_file: a.password_file.clone(),
        })),
        FenceAgentKind::Webhook => Arc::new(Webhook::new(WebhookConfig {
            node: node.to_string(),
            url: a.url.clone().unwrap_or_default(),
            body: a
                .body
                .clone()
                .unwrap_or_else(|| DEFAULT_WEBHOOK_BODY.to_string()),
            content_type: a
                .content_type
                .clone()
                .unwrap_or_else(|| "application/json".to_string()),
            token_file: a.token_file.clone(),
            trust: a.trust(),
            request_timeout: REQUEST_TIMEOUT,
        })?),
    })
}

/// The secret files `config` names (fence agents' password and token files, checks' test
/// login password files) that would be refused for their mode (group or others have access:
/// [`Secret::check_mode`]), one problem per file, named by its field; `check-config` reports
/// them and the daemon warns at start. A file that cannot be inspected (not there yet, or out
/// of this user's reach) is left to its reader, which names what is wrong with it.
pub fn check_secret_files(config: &Config) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let fences = config.fencing.nodes.iter().flat_map(|(node, a)| {
        [
            ("password_file", &a.password_file),
            ("token_file", &a.token_file),
        ]
        .into_iter()
        .filter_map(move |(field, path)| {
            Some((format!("fencing.nodes.{node}.{field}"), path.as_ref()?))
        })
    });
    let checks = config.checks.iter().filter_map(|(name, c)| {
        Some((
            format!("checks.{name}.password_file"),
            c.password_file.as_ref()?,
        ))
    });
    let problems: Vec<Problem> = fences
        .chain(checks)
        .filter_map(|(field, path)| {
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            let e = Secret::check_mode(path, mode).err()?;
            Some(Problem {
                field,
                message: e.to_string(),
            })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// One node's agent: built at start, rebuilt at each attempt while building fails (e.g. a CA
/// file that appears later).
#[derive(Debug)]
struct NodeAgent {
    config: FenceAgentConfig,
    built: Mutex<Option<Arc<dyn Fencer>>>,
}

/// The fencing side of a node: its agents and, while it leads, the gate.
#[derive(Debug)]
pub struct Fencing {
    agents: BTreeMap<String, NodeAgent>,
    /// Which expired nodes wait for a fence; reset with each term.
    pub gate: Mutex<FenceGate>,
    backoff: Backoff,
    timeout: Duration,
}

impl Fencing {
    /// Agents from `[fencing]`. Agents that cannot be built yet are logged and retried at
    /// each fence.
    pub fn from_config(config: &Config) -> Fencing {
        let f = &config.fencing;
        let agents = f
            .nodes
            .iter()
            .map(|(node, a)| {
                let built = match build_agent(node, a) {
                    Ok(agent) => Some(agent),
                    Err(e) => {
                        warn!(node = %node, error = %e, "fence agent unusable for now");
                        None
                    }
                };
                (
                    node.clone(),
                    NodeAgent {
                        config: a.clone(),
                        built: Mutex::new(built),
                    },
                )
            })
            .collect();
        Fencing {
            agents,
            gate: Mutex::new(FenceGate::default()),
            backoff: Backoff {
                first: f.retry_first.get(),
                max: f.retry_max.get(),
            },
            timeout: f.timeout.get(),
        }
    }

    /// Whether `node` has a fence agent.
    pub fn configured(&self, node: &str) -> bool {
        self.agents.contains_key(node)
    }

    /// The agent of `node` for display: `kind target`.
    pub fn describe(&self, node: &str) -> Option<String> {
        let agent = self.agents.get(node)?;
        if let Some(built) = lock(&agent.built).as_ref() {
            return Some(built.describe());
        }
        Some(format!(
            "{} {}",
            agent.config.agent,
            agent
                .config
                .url
                .clone()
                .or_else(|| agent.config.command.as_ref().map(|c| c.join(" ")))
                .unwrap_or_default()
        ))
    }

    /// Longest a fence may take, including recording it.
    pub fn deadline(&self) -> Duration {
        self.timeout + Duration::from_secs(15)
    }

    fn agent(&self, node: &str) -> Result<(Arc<dyn Fencer>, FenceOptions), String> {
        let agent = self
            .agents
            .get(node)
            .ok_or_else(|| format!("{node} has no fence agent ([fencing.nodes.{node}])"))?;
        let mut built = lock(&agent.built);
        let fencer = match built.as_ref() {
            Some(f) => f.clone(),
            None => {
                let f = build_agent(node, &agent.config).map_err(|e| e.to_string())?;
                *built = Some(f.clone());
                f
            }
        };
        Ok((
            fencer,
            FenceOptions {
                timeout: self.timeout,
                power_on_after: agent.config.power_on_after,
            },
        ))
    }
}

/// Apply the fence gate to the planner's input: expired nodes that must be fenced first are
/// taken out of `live.expired` until a fence of them succeeded after `last_grant`. Returns the
/// fences to start now. Pure apart from the gate's memory.
pub fn gate_liveness(
    gate: &mut FenceGate,
    live: &mut Liveness,
    state: &State,
    configured: impl Fn(&str) -> bool,
    last_grant: impl Fn(&str) -> Option<Instant>,
    now: Instant,
) -> Vec<String> {
    for node in live.current.keys() {
        gate.recovered(node);
    }
    let needs_fence = |node: &str| configured(node) && !state.owned_by(node).is_empty();
    let decision = gate.decide(&live.expired, needs_fence, last_grant, now);
    live.expired = decision.expired;
    decision.start
}

/// Fencing records that are over: nodes with a finished (fenced or failed) record that hold a
/// lease again, in a run that began after the record. `live.current` gives each node's
/// uninterrupted lease time.
pub fn to_clear(state: &State, live: &Liveness, now_ms: u64) -> Vec<String> {
    state
        .fencing
        .iter()
        .filter(|(node, r)| {
            r.progress != FenceProgress::Started
                && live
                    .current
                    .get(*node)
                    .is_some_and(|held| now_ms.saturating_sub(*held) > r.since_ms)
        })
        .map(|(node, _)| node.clone())
        .collect()
}

/// Fence `node` now: record the start through Raft, run the agent, record the outcome and tell
/// the gate. `by` says who asked. The caller has marked the fence running in the gate.
pub async fn run(
    s: Arc<Shared>,
    node: String,
    by: String,
    term: u64,
) -> Result<FenceReply, String> {
    let fencing = &s.fencing;
    let attempt = lock(&fencing.gate).failures(&node) + 1;
    // Count a failure in this term's gate; returns the wait before the next attempt.
    let failed = || {
        let mut gate = lock(&fencing.gate);
        if gate.term() == Some(term) {
            gate.failed(&node, crate::clock::now(), &fencing.backoff)
        } else {
            Duration::ZERO
        }
    };
    let (agent, options) = match fencing.agent(&node) {
        Ok(a) => a,
        Err(e) => {
            let retry = failed();
            error!(node = %node, error = %e, retry_in_ms = retry.as_millis() as u64, "cannot fence");
            return Err(e);
        }
    };
    let agent_name = agent.describe();
    let start = Command::FenceStarted {
        node: node.clone(),
        agent: agent_name.clone(),
        attempt,
        by: by.clone(),
        at_ms: auth::unix_ms(),
    };
    if let Err(e) = api::propose(&s, start).await {
        // Without a committed start there is no quorum behind this fence: do not run it.
        let msg = format!(
            "fence of {node} not started: it could not be recorded ({}); only a leader with a \
             quorum fences",
            e.message_text()
        );
        failed();
        warn!(node = %node, "{msg}");
        return Err(msg);
    }
    info!(node = %node, agent = %agent_name, attempt, by = %by, "fencing");
    let outcome = clusterd_fencing::fence(agent.as_ref(), &options).await;
    let confirmed_at = crate::clock::now();
    match outcome {
        Ok(reply) => {
            let done = Command::FenceSucceeded {
                node: node.clone(),
                reply: reply.clone(),
                at_ms: auth::unix_ms(),
            };
            match api::propose(&s, done).await {
                Ok(_) => {
                    let mut gate = lock(&fencing.gate);
                    if gate.term() == Some(term) {
                        gate.succeeded(&node, confirmed_at);
                    }
                    info!(node = %node, agent = %agent_name, reply = %reply, "fenced");
                    Ok(FenceReply {
                        node,
                        agent: agent_name,
                        reply,
                    })
                }
                Err(e) => {
                    let msg = format!(
                        "{node} was fenced ({reply}) but that could not be recorded ({}); its \
                         addresses wait for a recorded fence",
                        e.message_text()
                    );
                    failed();
                    warn!(node = %node, "{msg}");
                    Err(msg)
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let retry = failed();
            error!(
                node = %node, agent = %agent_name, attempt, error = %msg,
                retry_in_ms = retry.as_millis() as u64,
                "FENCE FAILED: the node's addresses stay where they are until a fence succeeds"
            );
            let record = Command::FenceFailed {
                node: node.clone(),
                error: msg.clone(),
                retry_in_ms: retry.as_millis() as u64,
                at_ms: auth::unix_ms(),
            };
            if let Err(e) = api::propose(&s, record).await {
                warn!(node = %node, error = %e.message_text(), "could not record the failed fence");
            }
            Err(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AddressSpec, Member, Role};

    #[test]
    fn check_config_refuses_a_secret_file_open_to_group_or_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("bmc.pass");
        std::fs::write(&pass, "pw\n").unwrap();
        let mut config = crate::config::tests::base();
        config.fencing = toml::from_str(&format!(
            "[nodes.mx2]\nagent = \"exec\"\ncommand = [\"/usr/sbin/fence_ipmilan\"]\n\
             password_file = {:?}\n\n[nodes.mx3]\nagent = \"exec\"\n\
             command = [\"/usr/sbin/fence_ipmilan\"]\npassword_file = \"/nonexistent/mx3.pass\"\n",
            pass.display().to_string()
        ))
        .unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check_secret_files(&config), Ok(()));
        for (mode, shown) in [(0o640, "0640"), (0o604, "0604")] {
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(mode)).unwrap();
            let problems = check_secret_files(&config).unwrap_err().problems;
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, "fencing.nodes.mx2.password_file");
            let message = &problems[0].message;
            assert!(message.contains(&format!("(mode {shown})")), "{message}");
            assert!(
                message.contains(&format!("chmod 600 {}", pass.display())),
                "{message}"
            );
        }
        // A check's test login password file follows the same rule.
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let probe = dir.path().join("probe.pass");
        std::fs::write(&probe, "pw\n").unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
        let check = config.checks.keys().next().cloned().expect("a check");
        config.checks.get_mut(&check).unwrap().password_file = Some(probe);
        let problems = check_secret_files(&config).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, format!("checks.{check}.password_file"));
    }

    fn state() -> State {
        let mut s = State::default();
        s.set_membership(["mx1", "mx2", "mx3"].map(|n| {
            (
                Member {
                    name: n.into(),
                    addr: format!("{n}:7400"),
                    role: Role::Mail,
                },
                true,
            )
        }));
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![AddressSpec {
                ip: "192.0.2.102/24".into(),
                interface: "eth0".into(),
                home: "mx2".into(),
                services: vec![],
            }],
            at_ms: 0,
        });
        s.apply(&Command::Assign {
            ip: "192.0.2.102/24".into(),
            to: "mx2".into(),
            epoch: 0,
            reason: crate::model::MoveReason::Initial,
            at_ms: 1,
        });
        s
    }

    fn live(current: &[(&str, u64)], expired: &[&str]) -> Liveness {
        Liveness {
            current: current.iter().map(|(n, h)| (n.to_string(), *h)).collect(),
            expired: expired.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn an_expired_owner_with_an_agent_is_held_back_until_fenced() {
        let s = state();
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let t0 = crate::clock::now();
        let mut l = live(&[("mx1", 5000)], &["mx2", "mx3"]);
        let start = gate_liveness(&mut gate, &mut l, &s, |n| n != "mx1", |_| Some(t0), t0);
        // mx3 owns nothing: no need to fence it before "moving" nothing.
        assert_eq!(start, vec!["mx2".to_string()]);
        assert_eq!(l.expired, ["mx3".to_string()].into());
        gate.succeeded("mx2", t0 + Duration::from_millis(10));
        let mut l = live(&[("mx1", 5000)], &["mx2"]);
        let start = gate_liveness(&mut gate, &mut l, &s, |_| true, |_| Some(t0), t0);
        assert!(start.is_empty());
        assert!(l.expired.contains("mx2"));
    }

    #[test]
    fn an_expired_owner_without_an_agent_moves_at_once() {
        let s = state();
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let mut l = live(&[], &["mx2"]);
        let start = gate_liveness(
            &mut gate,
            &mut l,
            &s,
            |_| false,
            |_| None,
            crate::clock::now(),
        );
        assert!(start.is_empty());
        assert!(l.expired.contains("mx2"));
    }

    #[test]
    fn records_clear_only_after_the_node_renews_in_a_new_run() {
        let mut s = state();
        s.apply(&Command::FenceStarted {
            node: "mx2".into(),
            agent: "exec".into(),
            attempt: 1,
            by: "leader mx1".into(),
            at_ms: 10_000,
        });
        // Still running: never cleared.
        assert!(to_clear(&s, &live(&[("mx2", 1)], &[]), 20_000).is_empty());
        s.apply(&Command::FenceSucceeded {
            node: "mx2".into(),
            reply: "off".into(),
            at_ms: 11_000,
        });
        // Its lease run began before the fence (it was live when fenced by hand): keep.
        assert!(to_clear(&s, &live(&[("mx2", 5_000)], &[]), 12_000).is_empty());
        // Not holding a lease: keep.
        assert!(to_clear(&s, &live(&[], &["mx2"]), 30_000).is_empty());
        // Back with a lease run that began after the fence: clear.
        assert_eq!(
            to_clear(&s, &live(&[("mx2", 2_000)], &[]), 30_000),
            vec!["mx2".to_string()]
        );
    }
}
