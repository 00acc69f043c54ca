//! `[fencing]`: how the leader powers off a node that stopped answering before it gives the
//! node's addresses to another. Must be identical on every node (any node may lead).
//!
//! Secrets (BMC passwords, API tokens) are named by file, never written in the config; the
//! files are read when a fence runs, so they must exist on every node that may lead, with mode
//! 0600 (a fence refuses a file group or others may read; `check-config` reports one, from
//! `crate::fence`, since this module does no IO).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, Millis, Problems, check_absolute};

/// `[fencing]`: fence agents per node and how fences are retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FencingConfig {
    /// Deadline of one fence attempt: the power-off and its confirmation. Default "60s".
    pub timeout: Millis,
    /// Wait after a failed attempt before the next; it doubles with each further failure.
    /// Default "1s".
    pub retry_first: Millis,
    /// Longest wait between two attempts. Default "30s".
    pub retry_max: Millis,
    /// The fence agent of each node that has one, by node name: `[fencing.nodes.mx2]`. A node
    /// listed here is fenced after its lease ended and before its addresses move; a failed
    /// fence keeps its addresses where they are (unserved) until a fence succeeds.
    pub nodes: BTreeMap<String, FenceAgentConfig>,
}

impl Default for FencingConfig {
    fn default() -> Self {
        FencingConfig {
            timeout: Millis::from_millis(60_000),
            retry_first: Millis::from_millis(1000),
            retry_max: Millis::from_millis(30_000),
            nodes: BTreeMap::new(),
        }
    }
}

/// `[fencing.nodes.NAME]`: one node's fence agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceAgentConfig {
    /// "redfish" (the node's BMC), "exec" (a command, e.g. fence-agents' fence_ipmilan) or
    /// "webhook" (an HTTP API).
    pub agent: FenceAgentKind,
    /// After the power-off is confirmed, power the node on again (a reboot); it rejoins the
    /// cluster when clusterd starts on it. Default false (it stays off for an operator).
    #[serde(default)]
    pub power_on_after: bool,
    /// redfish: the BMC's base URL, e.g. "https://192.0.2.231". webhook: the URL to POST to,
    /// where "{node}" and "{action}" (off/on) are filled in. HTTPS; plain http only to a
    /// loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// redfish: path of the computer system, e.g. "/redfish/v1/Systems/1". Default: the only
    /// member of /redfish/v1/Systems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// redfish: the BMC user. Required for redfish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// redfish (required) and exec (optional): absolute path of a file whose first line is the
    /// password; exec passes it as `password=...` on standard input. Mode 0600, owned by the
    /// user clusterd runs as: a fence refuses a file group or others may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// redfish: "session" (log in once per fence, X-Auth-Token; default) or "basic".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RedfishAuthKind>,
    /// redfish, webhook: trust only certificates issued by the CA(s) in this PEM file (absolute
    /// path). Without ca_file or pin_sha256, the system's trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// redfish, webhook: trust exactly the certificate with this SHA-256 fingerprint (as
    /// `openssl x509 -noout -fingerprint -sha256` prints it), e.g. a BMC's self-signed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_sha256: Option<String>,
    /// redfish, webhook: accept any certificate. Anyone on the path could then receive the
    /// password and the power-off; prefer ca_file or pin_sha256. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_invalid_certs: bool,
    /// exec: the program (absolute path) and fixed arguments, run without a shell, e.g.
    /// ["/usr/sbin/fence_ipmilan"]. Exit code 0 means the node is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// exec: options passed with the action, e.g. { ip = "192.0.2.241", username = "admin",
    /// lanplus = "1" }. Not "action" (clusterd sets it) nor "password" (use password_file).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// exec: "stdin" (fence-agents' convention: action=off and the options as key=value lines
    /// on standard input; default) or "args" (--action=off --key=value arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options_via: Option<OptionsViaKind>,
    /// webhook: the body template; "{node}" and "{action}" are filled in. Default
    /// "{\"node\": \"{node}\", \"action\": \"{action}\"}".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// webhook: Content-Type of the body. Default "application/json".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// webhook: absolute path of a file holding a bearer token (first line), sent as
    /// `Authorization: Bearer ...`. Optional. Mode 0600, like password_file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `fencing.nodes.NAME.agent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FenceAgentKind {
    /// A BMC speaking Redfish.
    Redfish,
    /// A command.
    Exec,
    /// An HTTP POST.
    Webhook,
}

impl std::fmt::Display for FenceAgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FenceAgentKind::Redfish => "redfish",
            FenceAgentKind::Exec => "exec",
            FenceAgentKind::Webhook => "webhook",
        })
    }
}

/// `fencing.nodes.NAME.auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedfishAuthKind {
    /// Redfish session.
    Session,
    /// HTTP basic.
    Basic,
}

/// `fencing.nodes.NAME.options_via`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptionsViaKind {
    /// key=value lines on standard input.
    Stdin,
    /// --key=value arguments.
    Args,
}

/// Default webhook body.
pub const DEFAULT_WEBHOOK_BODY: &str = r#"{"node": "{node}", "action": "{action}"}"#;

impl FenceAgentConfig {
    /// The TLS trust these settings ask for (validated: at most one of them is set).
    pub fn trust(&self) -> clusterd_fencing::Trust {
        if let Some(ca) = &self.ca_file {
            clusterd_fencing::Trust::CaFile(ca.clone())
        } else if let Some(pin) = self
            .pin_sha256
            .as_deref()
            .and_then(|p| clusterd_fencing::tls::parse_pin(p).ok())
        {
            clusterd_fencing::Trust::PinSha256(pin)
        } else if self.accept_invalid_certs {
            clusterd_fencing::Trust::AcceptInvalid
        } else {
            clusterd_fencing::Trust::System
        }
    }

    /// The settings written for this agent kind, and the ones that apply only to others.
    fn misplaced(&self) -> Vec<&'static str> {
        let set: [(&str, bool, &[FenceAgentKind]); 15] = {
            use FenceAgentKind::{Exec, Redfish, Webhook};
            [
                ("url", self.url.is_some(), &[Redfish, Webhook]),
                ("system", self.system.is_some(), &[Redfish]),
                ("username", self.username.is_some(), &[Redfish]),
                (
                    "password_file",
                    self.password_file.is_some(),
                    &[Redfish, Exec],
                ),
                ("auth", self.auth.is_some(), &[Redfish]),
                ("ca_file", self.ca_file.is_some(), &[Redfish, Webhook]),
                ("pin_sha256", self.pin_sha256.is_some(), &[Redfish, Webhook]),
                (
                    "accept_invalid_certs",
                    self.accept_invalid_certs,
                    &[Redfish, Webhook],
                ),
                ("command", self.command.is_some(), &[Exec]),
                ("options", !self.options.is_empty(), &[Exec]),
                ("options_via", self.options_via.is_some(), &[Exec]),
                ("body", self.body.is_some(), &[Webhook]),
                ("content_type", self.content_type.is_some(), &[Webhook]),
                ("token_file", self.token_file.is_some(), &[Webhook]),
                ("power_on_after", false, &[]),
            ]
        };
        set.iter()
            .filter(|(_, present, kinds)| *present && !kinds.contains(&self.agent))
            .map(|(name, ..)| *name)
            .collect()
    }
}

impl Config {
    pub(super) fn check_fencing(&self, v: &mut Problems) {
        let f = &self.fencing;
        for (key, d) in [
            ("timeout", f.timeout),
            ("retry_first", f.retry_first),
            ("retry_max", f.retry_max),
        ] {
            if d.get().is_zero() {
                v.push(
                    format!("fencing.{key}"),
                    format!("{d} is not a usable duration; write a positive one, e.g. \"30s\""),
                );
            }
        }
        if f.retry_max < f.retry_first {
            v.push(
                "fencing.retry_max",
                format!(
                    "retry_max ({}) is shorter than retry_first ({}); make it at least \
                     retry_first, e.g. \"30s\"",
                    f.retry_max, f.retry_first
                ),
            );
        }
        let members: Vec<String> = self.members().into_iter().map(|m| m.name).collect();
        for (node, a) in &f.nodes {
            let p = format!("fencing.nodes.{node}");
            if !members.contains(node) {
                v.push(
                    p.clone(),
                    format!(
                        "{node:?} is not a member (node.name or a [[peers]] name: {}); fix the \
                         name or remove the section",
                        members.join(", ")
                    ),
                );
            }
            for field in a.misplaced() {
                v.push(
                    format!("{p}.{field}"),
                    format!(
                        "{field} does not apply to agent = \"{}\"; remove it",
                        a.agent
                    ),
                );
            }
            match a.agent {
                FenceAgentKind::Redfish => check_redfish(v, &p, a),
                FenceAgentKind::Exec => check_exec(v, &p, a),
                FenceAgentKind::Webhook => check_webhook(v, &p, a),
            }
            check_trust(v, &p, a);
            for (field, path) in [
                ("password_file", &a.password_file),
                ("token_file", &a.token_file),
                ("ca_file", &a.ca_file),
            ] {
                if let Some(path) = path {
                    check_absolute(
                        v,
                        &format!("{p}.{field}"),
                        path,
                        &format!(
                            "/etc/clusterd/fence/{node}.{}",
                            field.trim_end_matches("_file")
                        ),
                    );
                }
            }
        }
    }
}

fn check_redfish(v: &mut Problems, p: &str, a: &FenceAgentConfig) {
    match &a.url {
        None => v.push(
            format!("{p}.url"),
            "a redfish agent needs the BMC's address; add url = \"https://192.0.2.231\"",
        ),
        Some(url) => {
            if let Err(e) = check_url(url, false) {
                v.push(format!("{p}.url"), e);
            } else if url_path(url).is_some_and(|path| path != "/") {
                v.push(
                    format!("{p}.url"),
                    format!(
                        "{url:?} has a path; write only the BMC's base URL, e.g. \
                         \"https://192.0.2.231\", and the system path in system = \
                         \"/redfish/v1/Systems/1\""
                    ),
                );
            }
        }
    }
    if let Some(system) = &a.system
        && !system.starts_with("/redfish/v1/")
    {
        v.push(
            format!("{p}.system"),
            format!(
                "{system:?} is not a Redfish path; write the system's path, e.g. \
                 \"/redfish/v1/Systems/1\", or remove it to use the only system"
            ),
        );
    }
    if a.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
        v.push(
            format!("{p}.username"),
            "a redfish agent needs the BMC user; add username = \"clusterd\"",
        );
    }
    if a.password_file.is_none() {
        v.push(
            format!("{p}.password_file"),
            "a redfish agent needs the BMC password; add password_file = \
             \"/etc/clusterd/fence/bmc.pass\" (a file readable only by clusterd's user)",
        );
    }
}

fn check_exec(v: &mut Problems, p: &str, a: &FenceAgentConfig) {
    match a.command.as_deref() {
        None | Some([]) => v.push(
            format!("{p}.command"),
            "an exec agent needs the program to run; add command = [\"/usr/sbin/fence_ipmilan\"]",
        ),
        Some([program, ..]) if !Path::new(program).is_absolute() => v.push(
            format!("{p}.command"),
            format!(
                "the program {program:?} is not an absolute path; commands run without a shell \
                 or PATH search, so write the full path, e.g. \"/usr/sbin/{program}\""
            ),
        ),
        Some(_) => {}
    }
    for (k, value) in &a.options {
        let bad_key = k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bad_key {
            v.push(
                format!("{p}.options"),
                format!(
                    "option name {k:?} is not allowed; use letters, digits, '_' and '-', as \
                     the agent's options are named (e.g. ip, username, lanplus)"
                ),
            );
        } else if k == "action" {
            v.push(
                format!("{p}.options.action"),
                "clusterd sets the action itself (off, then on with power_on_after); remove it",
            );
        } else if k == "password" || k == "passwd" {
            v.push(
                format!("{p}.options.{k}"),
                "a password in the config would be readable by everyone who can read it; put \
                 it in a file and set password_file",
            );
        }
        if value.contains('\n') || value.contains('\r') {
            v.push(
                format!("{p}.options.{k}"),
                "the value contains a line break, which would end the option early on \
                 standard input; write it on one line",
            );
        }
    }
    if a.options_via == Some(OptionsViaKind::Args) && a.password_file.is_some() {
        v.push(
            format!("{p}.password_file"),
            "with options_via = \"args\" the password would show in the process list; use \
             options_via = \"stdin\" (the fence-agents default) or remove password_file",
        );
    }
}

fn check_webhook(v: &mut Problems, p: &str, a: &FenceAgentConfig) {
    match &a.url {
        None => v.push(
            format!("{p}.url"),
            "a webhook agent needs the URL to POST to; add url = \
             \"https://api.example.net/servers/{node}/{action}\"",
        ),
        Some(url) => {
            if let Err(e) = check_url(url, true) {
                v.push(format!("{p}.url"), e);
            }
        }
    }
    if a.content_type
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        v.push(
            format!("{p}.content_type"),
            "content_type is empty; write e.g. \"application/json\" or remove it",
        );
    }
}

fn check_trust(v: &mut Problems, p: &str, a: &FenceAgentConfig) {
    let chosen: Vec<&str> = [
        ("ca_file", a.ca_file.is_some()),
        ("pin_sha256", a.pin_sha256.is_some()),
        ("accept_invalid_certs", a.accept_invalid_certs),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| n)
    .collect();
    if chosen.len() > 1 {
        v.push(
            format!("{p}.{}", chosen[1]),
            format!(
                "{} are exclusive ways to trust the endpoint's certificate; keep one",
                chosen.join(" and ")
            ),
        );
    }
    if let Some(pin) = &a.pin_sha256
        && let Err(e) = clusterd_fencing::tls::parse_pin(pin)
    {
        v.push(format!("{p}.pin_sha256"), e);
    }
}

/// The path of an http(s) URL, if it parses as one.
fn url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// An https URL (or http to loopback); `templated` allows "{node}"/"{action}" in it.
fn check_url(url: &str, templated: bool) -> Result<(), String> {
    let example = if templated {
        "\"https://api.example.net/servers/{node}/{action}\""
    } else {
        "\"https://192.0.2.231\""
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{url:?} is not a URL; write e.g. {example}"));
    };
    let host_port = rest.split('/').next().unwrap_or("");
    let host = host_port
        .strip_prefix('[')
        .and_then(|h| h.split(']').next())
        .unwrap_or_else(|| host_port.rsplit_once(':').map_or(host_port, |(h, _)| h));
    if host.is_empty() || (!templated && host.contains('{')) {
        return Err(format!("{url:?} has no host; write e.g. {example}"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) => Ok(()),
        "http" => Err(format!(
            "{url:?} is plain http: the credentials and the power-off would cross the network \
             unprotected; use https (plain http is accepted only to a loopback address)"
        )),
        other => Err(format!(
            "{other:?} is not a supported scheme; write an https URL, e.g. {example}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_refused, assert_valid, base};
    use super::*;

    fn redfish() -> FenceAgentConfig {
        FenceAgentConfig {
            agent: FenceAgentKind::Redfish,
            power_on_after: false,
            url: Some("https://192.0.2.232".into()),
            system: None,
            username: Some("clusterd".into()),
            password_file: Some("/etc/clusterd/fence/mx2.pass".into()),
            auth: None,
            ca_file: Some("/etc/clusterd/fence/bmc-ca.pem".into()),
            pin_sha256: None,
            accept_invalid_certs: false,
            command: None,
            options: BTreeMap::new(),
            options_via: None,
            body: None,
            content_type: None,
            token_file: None,
        }
    }

    fn exec() -> FenceAgentConfig {
        FenceAgentConfig {
            agent: FenceAgentKind::Exec,
            url: None,
            username: None,
            password_file: None,
            ca_file: None,
            command: Some(vec!["/usr/sbin/fence_ipmilan".into()]),
            options: [("ip".to_string(), "192.0.2.242".to_string())].into(),
            ..redfish()
        }
    }

    fn webhook() -> FenceAgentConfig {
        FenceAgentConfig {
            agent: FenceAgentKind::Webhook,
            url: Some("https://api.example.net/servers/{node}/{action}".into()),
            username: None,
            password_file: None,
            token_file: Some("/etc/clusterd/fence/api.token".into()),
            ..redfish()
        }
    }

    fn with(node: &str, a: FenceAgentConfig) -> Config {
        let mut c = base();
        c.fencing.nodes.insert(node.into(), a);
        c
    }

    #[test]
    fn every_agent_kind_with_its_settings_is_valid() {
        let mut c = base();
        c.fencing.nodes.insert("mx1".into(), redfish());
        c.fencing.nodes.insert("mx2".into(), exec());
        c.fencing.nodes.insert("w1".into(), webhook());
        assert_valid(&c);
    }

    #[test]
    fn fencing_parses_from_toml() {
        let text = format!(
            "{}\n[fencing]\ntimeout = \"20s\"\n\n[fencing.nodes.mx2]\nagent = \"exec\"\n\
             command = [\"/usr/sbin/fence_ipmilan\"]\noptions = {{ ip = \"192.0.2.242\", \
             lanplus = \"1\" }}\npassword_file = \"/etc/clusterd/fence/mx2.pass\"\n",
            super::super::tests::BASE
        );
        let c = super::super::parse(&text).unwrap();
        assert_eq!(c.fencing.timeout, Millis::from_millis(20_000));
        assert_eq!(c.fencing.nodes["mx2"].options["lanplus"], "1");
    }

    #[test]
    fn fencing_of_an_unknown_node_refused() {
        assert_refused(&with("mx9", redfish()), "fencing.nodes.mx9", "not a member");
    }

    #[test]
    fn setting_of_another_agent_kind_refused() {
        let mut a = exec();
        a.body = Some("{}".into());
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.body",
            "does not apply to agent = \"exec\"",
        );
    }

    #[test]
    fn redfish_without_url_refused() {
        let mut a = redfish();
        a.url = None;
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.url", "add url");
    }

    #[test]
    fn redfish_url_with_a_path_refused() {
        let mut a = redfish();
        a.url = Some("https://192.0.2.232/redfish/v1/Systems/1".into());
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.url", "base URL");
    }

    #[test]
    fn plain_http_to_a_remote_endpoint_refused() {
        let mut a = redfish();
        a.url = Some("http://192.0.2.232".into());
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.url", "use https");
        let mut w = webhook();
        w.token_file = None;
        w.url = Some("http://127.0.0.1:8080/fence/{node}".into());
        assert_valid(&with("mx2", w));
    }

    #[test]
    fn redfish_system_outside_redfish_refused() {
        let mut a = redfish();
        a.system = Some("Systems/1".into());
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.system", "Redfish path");
    }

    #[test]
    fn redfish_without_username_refused() {
        let mut a = redfish();
        a.username = None;
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.username", "BMC user");
    }

    #[test]
    fn redfish_without_password_file_refused() {
        let mut a = redfish();
        a.password_file = None;
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.password_file",
            "add password_file",
        );
    }

    #[test]
    fn relative_secret_file_refused() {
        let mut a = redfish();
        a.password_file = Some("mx2.pass".into());
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.password_file",
            "absolute path",
        );
    }

    #[test]
    fn two_ways_of_trusting_a_certificate_refused() {
        let mut a = redfish();
        a.accept_invalid_certs = true;
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.accept_invalid_certs",
            "keep one",
        );
    }

    #[test]
    fn malformed_pin_refused() {
        let mut a = redfish();
        a.ca_file = None;
        a.pin_sha256 = Some("abc".into());
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.pin_sha256", "SHA-256");
    }

    #[test]
    fn exec_without_command_refused() {
        let mut a = exec();
        a.command = None;
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.command", "add command");
    }

    #[test]
    fn exec_with_relative_program_refused() {
        let mut a = exec();
        a.command = Some(vec!["fence_ipmilan".into()]);
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.command",
            "/usr/sbin/fence_ipmilan",
        );
    }

    #[test]
    fn exec_action_option_refused() {
        let mut a = exec();
        a.options.insert("action".into(), "reboot".into());
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.options.action",
            "sets the action",
        );
    }

    #[test]
    fn exec_password_option_refused() {
        let mut a = exec();
        a.options.insert("password".into(), "hunter2".into());
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.options.password",
            "password_file",
        );
    }

    #[test]
    fn exec_option_with_odd_name_or_line_break_refused() {
        let mut a = exec();
        a.options.insert("a=b".into(), "1".into());
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.options", "not allowed");
        let mut a = exec();
        a.options.insert("plug".into(), "1\naction=on".into());
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.options.plug",
            "line break",
        );
    }

    #[test]
    fn exec_password_on_the_command_line_refused() {
        let mut a = exec();
        a.options_via = Some(OptionsViaKind::Args);
        a.password_file = Some("/etc/clusterd/fence/mx2.pass".into());
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.password_file",
            "process list",
        );
    }

    #[test]
    fn webhook_without_url_refused() {
        let mut a = webhook();
        a.url = None;
        assert_refused(&with("mx2", a), "fencing.nodes.mx2.url", "add url");
    }

    #[test]
    fn webhook_with_empty_content_type_refused() {
        let mut a = webhook();
        a.content_type = Some(" ".into());
        assert_refused(
            &with("mx2", a),
            "fencing.nodes.mx2.content_type",
            "application/json",
        );
    }

    #[test]
    fn zero_fence_timeout_refused() {
        let mut c = base();
        c.fencing.timeout = Millis::from_millis(0);
        assert_refused(&c, "fencing.timeout", "positive");
    }

    #[test]
    fn retry_max_below_retry_first_refused() {
        let mut c = base();
        c.fencing.retry_first = Millis::from_millis(5000);
        c.fencing.retry_max = Millis::from_millis(1000);
        assert_refused(&c, "fencing.retry_max", "at least retry_first");
    }
}
