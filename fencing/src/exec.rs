//! The exec agent: run a command to fence a node.
//!
//! It speaks the calling convention of the fence-agents project (`fence_ipmilan`,
//! `fence_virsh`, ... as Pacemaker runs them), so those programs work unchanged:
//!
//! - `stdin` (the default): options as `key=value` lines on standard input, starting with
//!   `action=off` (or `action=on`), then the configured options, then `password=...` from the
//!   password file. Nothing secret appears in the process list.
//! - `args`: the command-line form, `--action=off --key=value ...`. No password file allowed
//!   (it would be visible in the process list).
//!
//! Exit code 0 means done (fence-agents confirm the power state themselves before exiting 0);
//! anything else is a failure whose output (masked) goes into the error.
//!
//! The command does not inherit the daemon's environment: it gets `PATH` (the daemon's, else
//! [`DEFAULT_PATH`]), as hooks do, and `CLUSTERD_FENCE_NODE` and `CLUSTERD_FENCE_ACTION` for
//! scripts written for clusterd; nothing else.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent::{FenceError, Fencer, MAX_REPLY, PowerAction, Secret, bounded};

/// `PATH` of the command when the daemon has none. The same list clusterd gives its hooks
/// (this crate cannot use clusterd's, which depends on it).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the options reach the command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptionsVia {
    /// `key=value` lines on standard input (fence-agents' convention).
    #[default]
    Stdin,
    /// `--key=value` arguments.
    Args,
}

/// An exec agent's settings.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// The node this agent fences (passed in the environment).
    pub node: String,
    /// Program (absolute path) and fixed arguments.
    pub command: Vec<String>,
    /// Options passed with the action, e.g. `ip`, `username`, `lanplus`, `plug`.
    pub options: BTreeMap<String, String>,
    /// How options are passed.
    pub via: OptionsVia,
    /// File whose first line is passed as the `password` option (stdin only).
    pub password_file: Option<PathBuf>,
}

/// The exec agent.
#[derive(Debug)]
pub struct Exec {
    config: ExecConfig,
}

impl Exec {
    /// An agent running `config.command`.
    pub fn new(config: ExecConfig) -> Exec {
        Exec { config }
    }
}

/// The standard input of one call in the fence-agents convention (ends with a newline).
pub fn stdin_text(
    action: PowerAction,
    options: &BTreeMap<String, String>,
    password: Option<&Secret>,
) -> String {
    let mut text = format!("action={action}\n");
    for (k, v) in options {
        text.push_str(&format!("{k}={v}\n"));
    }
    if let Some(p) = password {
        text.push_str(&format!("password={}\n", p.expose()));
    }
    text
}

/// The extra arguments of one call in the command-line form.
pub fn args_for(action: PowerAction, options: &BTreeMap<String, String>) -> Vec<String> {
    std::iter::once(format!("--action={action}"))
        .chain(options.iter().map(|(k, v)| format!("--{k}={v}")))
        .collect()
}

/// Everything a pipe delivers until it closes, keeping only the start (the command never
/// blocks on a full pipe).
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut chunk = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = (MAX_REPLY * 2).saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    kept
}

#[async_trait::async_trait]
impl Fencer for Exec {
    fn describe(&self) -> String {
        format!("exec {}", self.config.command.join(" "))
    }

    async fn power(&self, action: PowerAction) -> Result<String, FenceError> {
        let c = &self.config;
        let program = c.command.first().cloned().unwrap_or_default();
        let password = c.password_file.as_deref().map(Secret::read).transpose()?;
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&c.command[1.min(c.command.len())..])
            // Nothing of the daemon's environment reaches a program that is handed a password.
            .env_clear()
            .env("PATH", path)
            .env("CLUSTERD_FENCE_NODE", &c.node)
            .env("CLUSTERD_FENCE_ACTION", action.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A fence abandoned at its deadline must not leave the command running.
            .kill_on_drop(true);
        if c.via == OptionsVia::Args {
            cmd.args(args_for(action, &c.options));
        }
        let mut child = cmd.spawn().map_err(|e| FenceError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        })?;
        let input = match c.via {
            OptionsVia::Stdin => stdin_text(action, &c.options, password.as_ref()),
            OptionsVia::Args => String::new(),
        };
        let stdin = child.stdin.take();
        let write = async {
            if let Some(mut s) = stdin {
                // A command that does not read its input closes the pipe: not an error.
                let _ = s.write_all(input.as_bytes()).await;
            }
        };
        let ((), out, err) = tokio::join!(
            write,
            read_bounded(child.stdout.take()),
            read_bounded(child.stderr.take())
        );
        let status = child.wait().await.map_err(|e| FenceError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        })?;
        let mut output = String::from_utf8_lossy(&out).trim().to_string();
        let err = String::from_utf8_lossy(&err).trim().to_string();
        if !err.is_empty() {
            if !output.is_empty() {
                output.push_str(" | ");
            }
            output.push_str(&err);
        }
        if let Some(p) = &password {
            output = p.mask(&output);
        }
        let output = bounded(&output);
        if status.success() {
            Ok(if output.is_empty() {
                format!("{program} action={action} exited 0")
            } else {
                format!("{program} action={action} exited 0: {output}")
            })
        } else {
            use std::os::unix::process::ExitStatusExt;
            Err(FenceError::Exit {
                program,
                status: match (status.code(), status.signal()) {
                    (Some(code), _) => format!("code {code}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "an unknown status".into(),
                },
                output,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BTreeMap<String, String> {
        [
            ("ip", "192.0.2.241"),
            ("lanplus", "1"),
            ("username", "admin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[tokio::test]
    async fn the_command_sees_only_path_and_the_clusterd_variables() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let prog = dir.path().join("fence_env");
        std::fs::write(&prog, format!("#!/bin/sh\nenv > {}\n", out.display())).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let agent = Exec::new(ExecConfig {
            node: "mx2".into(),
            command: vec![prog.display().to_string()],
            options: options(),
            via: OptionsVia::Stdin,
            password_file: None,
        });
        agent.power(PowerAction::Off).await.unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("CLUSTERD_FENCE_NODE=mx2\n"), "{text}");
        assert!(text.contains("CLUSTERD_FENCE_ACTION=off\n"), "{text}");
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
        assert!(text.contains(&format!("PATH={path}\n")), "{text}");
        // cargo sets it for the test process; the command must not see it.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        assert!(!text.contains("CARGO_MANIFEST_DIR="), "{text}");
        for line in text.lines() {
            let name = line.split('=').next().unwrap();
            assert!(
                name.starts_with("CLUSTERD_FENCE_")
                    || ["PATH", "PWD", "SHLVL", "_"].contains(&name),
                "unexpected variable {line}"
            );
        }
    }

    #[test]
    fn stdin_follows_the_fence_agents_convention() {
        assert_eq!(
            stdin_text(PowerAction::Off, &options(), None),
            "action=off\nip=192.0.2.241\nlanplus=1\nusername=admin\n"
        );
    }

    #[test]
    fn command_line_form_has_the_action_first() {
        assert_eq!(
            args_for(PowerAction::On, &options()),
            vec![
                "--action=on",
                "--ip=192.0.2.241",
                "--lanplus=1",
                "--username=admin"
            ]
        );
    }
}
