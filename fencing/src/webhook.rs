//! The webhook agent: fence through an HTTP API (a cloud provider's "stop server" call, an
//! orchestrator, a power switch with a web API).
//!
//! It POSTs a body made from a template to a URL made from a template, with an optional bearer
//! token read from a file at each call. Templates may use `{node}` and `{action}` (`off` or
//! `on`). Any 2xx answer is success, so the API should answer only once the machine is off (or
//! wrap an asynchronous API in a script and use the exec agent). Of the answer's body, at most
//! [`MAX_RESPONSE_BYTES`](crate::agent::MAX_RESPONSE_BYTES) are read; the reply keeps its start.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{FenceError, Fencer, PowerAction, Secret, bounded, read_body};
use crate::tls::{self, Trust};

/// A webhook agent's settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The node this agent fences (`{node}` in the templates).
    pub node: String,
    /// URL template, e.g. `https://api.example.net/servers/{node}/{action}`.
    pub url: String,
    /// Body template, e.g. `{"server": "{node}", "power": "{action}"}`.
    pub body: String,
    /// `Content-Type` of the body.
    pub content_type: String,
    /// File holding a bearer token (`Authorization: Bearer ...`), if the API needs one.
    pub token_file: Option<PathBuf>,
    /// Which certificate the API may present.
    pub trust: Trust,
    /// Timeout of the request.
    pub request_timeout: Duration,
}

/// The webhook agent.
#[derive(Debug)]
pub struct Webhook {
    config: WebhookConfig,
    client: reqwest::Client,
}

impl Webhook {
    /// An agent with `config`. Fails when the TLS settings cannot be used.
    pub fn new(config: WebhookConfig) -> Result<Webhook, FenceError> {
        let client = tls::client(&config.trust, config.request_timeout)?;
        Ok(Webhook { config, client })
    }
}

/// Fill `{node}` and `{action}` into a template.
pub fn render(template: &str, node: &str, action: PowerAction) -> String {
    template
        .replace("{node}", node)
        .replace("{action}", &action.to_string())
}

#[async_trait::async_trait]
impl Fencer for Webhook {
    fn describe(&self) -> String {
        format!("webhook {}", self.config.url)
    }

    async fn power(&self, action: PowerAction) -> Result<String, FenceError> {
        let c = &self.config;
        let token = c.token_file.as_deref().map(Secret::read).transpose()?;
        let url = render(&c.url, &c.node, action);
        let mut req = self
            .client
            .post(&url)
            .header("Content-Type", &c.content_type)
            .body(render(&c.body, &c.node, action));
        if let Some(t) = &token {
            req = req.bearer_auth(t.expose());
        }
        let mask = |text: &str| match &token {
            Some(t) => t.mask(text),
            None => text.to_string(),
        };
        let resp = req.send().await.map_err(|e| FenceError::Unreachable {
            url: url.clone(),
            reason: mask(&tls::error_chain(&e)),
        })?;
        let status = resp.status();
        let text = mask(read_body(resp).await.text.trim());
        if status.is_success() {
            Ok(bounded(&format!("HTTP {}: {text}", status.as_u16())))
        } else {
            Err(FenceError::Http {
                url,
                status: status.as_u16(),
                body: bounded(&text),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::MAX_RESPONSE_BYTES;
    use crate::test_http::{Answer, serve};

    #[tokio::test]
    async fn a_reply_over_the_limit_is_kept_cut_without_reading_the_rest() {
        let mut server = serve(|_, _| Answer {
            status: 200,
            body: vec![b'x'; MAX_RESPONSE_BYTES + 1],
            announced: Some(10 * MAX_RESPONSE_BYTES),
        })
        .await;
        let agent = Webhook::new(WebhookConfig {
            node: "mx2".into(),
            url: format!("http://{}/fence/{{node}}/{{action}}", server.addr),
            body: "{}".into(),
            content_type: "application/json".into(),
            token_file: None,
            trust: Trust::System,
            request_timeout: Duration::from_secs(60),
        })
        .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), agent.power(PowerAction::Off))
            .await
            .expect("the agent answered without waiting for the rest")
            .unwrap();
        assert!(reply.starts_with("HTTP 200: xxx"), "{reply}");
        assert!(reply.ends_with("bytes cut)"), "{reply}");
        tokio::time::timeout(Duration::from_secs(5), server.hung_up.recv())
            .await
            .expect("the agent closed the connection")
            .unwrap();
    }

    #[test]
    fn templates_get_node_and_action() {
        assert_eq!(
            render(
                r#"{"server": "{node}", "power": "{action}"}"#,
                "mx2",
                PowerAction::Off
            ),
            r#"{"server": "mx2", "power": "off"}"#
        );
        assert_eq!(
            render("https://api/{node}/{action}", "mx2", PowerAction::On),
            "https://api/mx2/on"
        );
    }
}
