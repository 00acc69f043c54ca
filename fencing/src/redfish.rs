//! The Redfish agent: power a server off through its BMC (DMTF Redfish over HTTPS).
//!
//! Off: read the system's `PowerState`; unless it is already `Off`, POST
//! `ComputerSystem.Reset` with `ResetType: ForceOff` to the action target the system resource
//! names, then poll `PowerState` until it reads `Off`. On: `ResetType: On`, polled until `On`.
//! Authentication is HTTP basic or a Redfish session (`X-Auth-Token`, deleted afterwards).
//! The password is read from its file at each fence and never logged. An answer longer than
//! [`MAX_RESPONSE_BYTES`] is refused after that many bytes, the rest unread.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{
    BodyEnd, FenceError, Fencer, MAX_RESPONSE_BYTES, PowerAction, Secret, bounded, read_body,
};
use crate::tls::{self, Trust};

/// Longest wait for the power state to change, whatever the caller's deadline.
const MAX_POLL: Duration = Duration::from_secs(600);

/// How the agent logs in to the BMC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedfishAuth {
    /// A session (`POST /redfish/v1/SessionService/Sessions`, then `X-Auth-Token`).
    #[default]
    Session,
    /// HTTP basic authentication on every request.
    Basic,
}

/// A Redfish agent's settings.
#[derive(Clone, Debug)]
pub struct RedfishConfig {
    /// Base URL of the BMC, e.g. `https://192.0.2.231` (no path).
    pub url: String,
    /// Path of the computer system, e.g. `/redfish/v1/Systems/1`; `None`: the only member of
    /// `/redfish/v1/Systems`.
    pub system: Option<String>,
    /// BMC user.
    pub username: String,
    /// File holding the BMC password.
    pub password_file: PathBuf,
    /// Session or basic authentication.
    pub auth: RedfishAuth,
    /// Which certificate the BMC may present.
    pub trust: Trust,
    /// Timeout of each HTTP request.
    pub request_timeout: Duration,
    /// Gap between two `PowerState` reads while waiting for the change.
    pub poll_every: Duration,
}

/// The Redfish agent.
#[derive(Debug)]
pub struct Redfish {
    config: RedfishConfig,
    client: reqwest::Client,
}

impl Redfish {
    /// An agent with `config`. Fails when the TLS settings cannot be used.
    pub fn new(config: RedfishConfig) -> Result<Redfish, FenceError> {
        let client = tls::client(&config.trust, config.request_timeout)?;
        Ok(Redfish { config, client })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }
}

/// A logged-in conversation with the BMC.
struct Conversation<'a> {
    agent: &'a Redfish,
    password: Secret,
    token: Option<String>,
    session: Option<String>,
}

impl Conversation<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .agent
            .client
            .request(method, self.agent.url(path))
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        match &self.token {
            Some(token) => req.header("X-Auth-Token", token),
            None => req.basic_auth(&self.agent.config.username, Some(self.password.expose())),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, path: &str) -> Result<Value, FenceError> {
        let url = self.agent.url(path);
        let resp = req.send().await.map_err(|e| FenceError::Unreachable {
            url: url.clone(),
            reason: self.password.mask(&tls::error_chain(&e)),
        })?;
        let status = resp.status();
        let answer = read_body(resp).await;
        if !status.is_success() {
            let mut body = bounded(&self.password.mask(answer.text.trim()));
            if status.as_u16() == 401 {
                body.push_str(" (check username and password_file)");
            }
            return Err(FenceError::Http {
                url,
                status: status.as_u16(),
                body,
            });
        }
        match answer.end {
            BodyEnd::Complete => {}
            BodyEnd::TooLong => {
                return Err(FenceError::Protocol {
                    url,
                    what: format!(
                        "the answer is longer than {MAX_RESPONSE_BYTES} bytes, the most clusterd \
                         reads from a BMC; check that url is the BMC's Redfish service"
                    ),
                });
            }
            BodyEnd::Failed(reason) => {
                return Err(FenceError::Unreachable {
                    url,
                    reason: self
                        .password
                        .mask(&format!("the answer broke off: {reason}")),
                });
            }
        }
        let text = answer.text;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| FenceError::Protocol {
            url,
            what: format!("the answer is not JSON ({e})"),
        })
    }

    async fn get(&self, path: &str) -> Result<Value, FenceError> {
        self.send(self.request(reqwest::Method::GET, path), path)
            .await
    }

    async fn login(agent: &Redfish) -> Result<Conversation<'_>, FenceError> {
        let password = Secret::read(&agent.config.password_file)?;
        let mut conv = Conversation {
            agent,
            password,
            token: None,
            session: None,
        };
        if agent.config.auth == RedfishAuth::Session {
            let path = "/redfish/v1/SessionService/Sessions";
            let url = agent.url(path);
            let resp = agent
                .client
                .post(&url)
                .header("Accept", "application/json")
                .json(&json!({
                    "UserName": agent.config.username,
                    "Password": conv.password.expose(),
                }))
                .send()
                .await
                .map_err(|e| FenceError::Unreachable {
                    url: url.clone(),
                    reason: conv.password.mask(&tls::error_chain(&e)),
                })?;
            let status = resp.status();
            let token = resp
                .headers()
                .get("X-Auth-Token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let location = resp
                .headers()
                .get("Location")
                .and_then(|v| v.to_str().ok())
                .map(session_path);
            if !status.is_success() {
                let body = read_body(resp).await.text;
                return Err(FenceError::Http {
                    url,
                    status: status.as_u16(),
                    body: bounded(&format!(
                        "{} (session login; check username and password_file, or set auth = \"basic\")",
                        conv.password.mask(body.trim())
                    )),
                });
            }
            let Some(token) = token else {
                return Err(FenceError::Protocol {
                    url,
                    what: "the session login answered without an X-Auth-Token header; set \
                           auth = \"basic\""
                        .into(),
                });
            };
            conv.token = Some(token);
            conv.session = location;
        }
        Ok(conv)
    }

    /// End the session, if any (best effort: it expires by itself otherwise).
    async fn logout(self) {
        if let (Some(_), Some(session)) = (&self.token, &self.session) {
            let _ = self.request(reqwest::Method::DELETE, session).send().await;
        }
    }

    async fn system_path(&self) -> Result<String, FenceError> {
        if let Some(s) = &self.agent.config.system {
            return Ok(s.clone());
        }
        let path = "/redfish/v1/Systems";
        let systems = self.get(path).await?;
        let members: Vec<&str> = systems["Members"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["@odata.id"].as_str()).collect())
            .unwrap_or_default();
        match members.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(FenceError::Protocol {
                url: self.agent.url(path),
                what: "the BMC lists no computer system; set system = \"/redfish/v1/Systems/1\""
                    .into(),
            }),
            many => Err(FenceError::Protocol {
                url: self.agent.url(path),
                what: format!(
                    "the BMC manages {} systems ({}); say which one with system = \"...\"",
                    many.len(),
                    many.join(", ")
                ),
            }),
        }
    }

    async fn power_state(&self, system: &str) -> Result<(String, Value), FenceError> {
        let sys = self.get(system).await?;
        let state = sys["PowerState"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| FenceError::Protocol {
                url: self.agent.url(system),
                what: "the system resource has no PowerState".into(),
            })?;
        Ok((state, sys))
    }

    async fn reset(&self, system: &str, sys: &Value, reset_type: &str) -> Result<u16, FenceError> {
        let action = &sys["Actions"]["#ComputerSystem.Reset"];
        if let Some(allowed) = action["ResetType@Redfish.AllowableValues"].as_array()
            && !allowed.iter().any(|v| v.as_str() == Some(reset_type))
        {
            return Err(FenceError::Protocol {
                url: self.agent.url(system),
                what: format!(
                    "the BMC does not offer ResetType {reset_type} (it offers {allowed:?}); \
                     use another agent for this node"
                ),
            });
        }
        let target = action["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{system}/Actions/ComputerSystem.Reset"));
        let url = self.agent.url(&target);
        let resp = self
            .request(reqwest::Method::POST, &target)
            .json(&json!({ "ResetType": reset_type }))
            .send()
            .await
            .map_err(|e| FenceError::Unreachable {
                url: url.clone(),
                reason: self.password.mask(&tls::error_chain(&e)),
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_body(resp).await.text;
            return Err(FenceError::Http {
                url,
                status: status.as_u16(),
                body: bounded(&self.password.mask(body.trim())),
            });
        }
        Ok(status.as_u16())
    }
}

/// A `Location` header may be a full URL or a path; keep the path.
fn session_path(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_else(|| "/".into()),
        None => location.to_string(),
    }
}

#[async_trait::async_trait]
impl Fencer for Redfish {
    fn describe(&self) -> String {
        match &self.config.system {
            Some(s) => format!("redfish {} {s}", self.config.url),
            None => format!("redfish {}", self.config.url),
        }
    }

    async fn power(&self, action: PowerAction) -> Result<String, FenceError> {
        let conv = Conversation::login(self).await?;
        let result = power_with(&conv, action, self.config.poll_every).await;
        conv.logout().await;
        result
    }
}

async fn power_with(
    conv: &Conversation<'_>,
    action: PowerAction,
    poll_every: Duration,
) -> Result<String, FenceError> {
    let (wanted, reset_type) = match action {
        PowerAction::Off => ("Off", "ForceOff"),
        PowerAction::On => ("On", "On"),
    };
    let system = conv.system_path().await?;
    let (state, sys) = conv.power_state(&system).await?;
    if state == wanted {
        return Ok(format!("{system} PowerState was already {wanted}"));
    }
    let started = Instant::now();
    let status = conv.reset(&system, &sys, reset_type).await?;
    // Bounded by the caller's deadline (`agent::fence`) and by MAX_POLL.
    let mut last = state;
    loop {
        if last == wanted {
            return Ok(format!(
                "{system} Reset {reset_type} accepted (HTTP {status}), PowerState {wanted} \
                 after {} ms",
                started.elapsed().as_millis()
            ));
        }
        if started.elapsed() >= MAX_POLL {
            return Err(FenceError::NotConfirmed {
                wanted: action,
                last,
                waited_ms: started.elapsed().as_millis() as u64,
            });
        }
        tokio::time::sleep(poll_every).await;
        last = conv.power_state(&system).await?.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::{Answer, Server, serve};
    use std::os::unix::fs::PermissionsExt;

    /// A system resource of exactly `len` bytes whose PowerState is Off.
    fn system_of_len(len: usize) -> Vec<u8> {
        let (head, tail) = (r#"{"PowerState": "Off", "Padding": ""#, r#""}"#);
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len())).into_bytes()
    }

    /// A BMC on loopback answering every request with `body` (announcing `announced` bytes),
    /// and an agent with basic auth pointed at it.
    async fn bmc_answering(
        body: Vec<u8>,
        announced: Option<usize>,
    ) -> (tempfile::TempDir, Server, Redfish) {
        let server = serve(move |_, _| Answer {
            status: 200,
            body: body.clone(),
            announced,
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("bmc.pass");
        std::fs::write(&password_file, "pw\n").unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let agent = Redfish::new(RedfishConfig {
            url: format!("http://{}", server.addr),
            system: Some("/redfish/v1/Systems/1".into()),
            username: "admin".into(),
            password_file,
            auth: RedfishAuth::Basic,
            trust: Trust::System,
            request_timeout: Duration::from_secs(60),
            poll_every: Duration::from_millis(50),
        })
        .unwrap();
        (dir, server, agent)
    }

    #[tokio::test]
    async fn a_bmc_answer_at_the_limit_is_used() {
        let (_dir, _server, agent) = bmc_answering(system_of_len(MAX_RESPONSE_BYTES), None).await;
        let reply = agent.power(PowerAction::Off).await.unwrap();
        assert!(reply.contains("already Off"), "{reply}");
    }

    #[tokio::test]
    async fn a_bmc_answer_over_the_limit_is_refused_without_reading_the_rest() {
        let announced = Some(10 * MAX_RESPONSE_BYTES);
        let (_dir, mut server, agent) =
            bmc_answering(system_of_len(MAX_RESPONSE_BYTES + 1), announced).await;
        let err = tokio::time::timeout(Duration::from_secs(5), agent.power(PowerAction::Off))
            .await
            .expect("the agent answered without waiting for the rest")
            .unwrap_err();
        assert!(matches!(err, FenceError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("longer than 65536 bytes"), "{err}");
        tokio::time::timeout(Duration::from_secs(5), server.hung_up.recv())
            .await
            .expect("the agent closed the connection")
            .unwrap();
    }

    #[test]
    fn session_location_is_kept_as_a_path() {
        assert_eq!(
            session_path("https://192.0.2.231/redfish/v1/SessionService/Sessions/7"),
            "/redfish/v1/SessionService/Sessions/7"
        );
        assert_eq!(
            session_path("/redfish/v1/Sessions/1"),
            "/redfish/v1/Sessions/1"
        );
    }

    #[test]
    fn describe_names_the_bmc_and_never_the_password() {
        let agent = Redfish::new(RedfishConfig {
            url: "https://192.0.2.231".into(),
            system: Some("/redfish/v1/Systems/1".into()),
            username: "admin".into(),
            password_file: "/etc/clusterd/bmc.pass".into(),
            auth: RedfishAuth::Session,
            trust: Trust::AcceptInvalid,
            request_timeout: Duration::from_secs(5),
            poll_every: Duration::from_millis(500),
        })
        .unwrap();
        assert_eq!(
            agent.describe(),
            "redfish https://192.0.2.231 /redfish/v1/Systems/1"
        );
    }
}
