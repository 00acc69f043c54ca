//! This node's fence agents and, while it leads, the fence gate: kept by the node handle,
//! built from `[fencing]` ([`Fencing::from_config`]), used by [`super::run`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterd_fencing::exec::{Exec, ExecConfig, OptionsVia};
use clusterd_fencing::redfish::{Redfish, RedfishAuth, RedfishConfig};
use clusterd_fencing::webhook::{Webhook, WebhookConfig};
use clusterd_fencing::{FenceError, FenceOptions, Fencer, Secret};
use clusterd_lease::{Backoff, FenceGate};
use tracing::warn;

use crate::config::{
    Config, ConfigError, DEFAULT_WEBHOOK_BODY, FenceAgentConfig, FenceAgentKind, OptionsViaKind,
    Problem, RedfishAuthKind,
};
use crate::lock;

/// Timeout of each HTTP request an agent makes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Gap between two power-state reads of a Redfish agent.
const REDFISH_POLL: Duration = Duration::from_millis(250);

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
    pub(super) backoff: Backoff,
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

    pub(super) fn agent(&self, node: &str) -> Result<(Arc<dyn Fencer>, FenceOptions), String> {
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
