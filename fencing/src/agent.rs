//! Fence agents: what powers off a node that leases cannot stop.
//!
//! A lease keeps a *live* daemon from holding a stale address, and the kernel guard stops a
//! frozen daemon's node from answering. Neither helps when the host itself cannot be trusted
//! (a hung kernel, a broken network stack, a VM paused by its hypervisor that may resume with
//! its addresses). A [`Fencer`] cuts such a host off for good: the leader calls it after the
//! node's lease ended and before giving its addresses to another node.
//!
//! Agents: [`crate::redfish`] (a BMC's `ComputerSystem.Reset`), [`crate::exec`] (any command,
//! including the fence-agents `fence_*` programs) and [`crate::webhook`] (an HTTP API). This
//! module holds what they share: the trait, the error type, [`fence`] (off, confirmed, then
//! optionally on again, under one deadline), and secrets read from files that never reach a
//! log or a reply.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest agent reply kept (in the history and in errors), in bytes.
pub const MAX_REPLY: usize = 2000;

/// Most bytes of an HTTP answer's body the Redfish and webhook agents read. A Redfish
/// resource or an API's reply is a few KiB; an endpoint that sends more (broken, or not what
/// the config says it is) must not make the leader buffer it while a fence waits. A Redfish
/// answer that is longer is refused; a webhook's is kept up to here.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What an agent is asked to do with a node's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerAction {
    /// Power off at once (no clean shutdown) and confirm it is off.
    Off,
    /// Power on again.
    On,
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerAction::Off => "off",
            PowerAction::On => "on",
        })
    }
}

/// Why a fence did not (or not provably) happen. Every message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A secret file could not be used.
    #[error(
        "secret file {}: {reason}; put the password or token alone on the first line of \
         a file readable only by the user clusterd runs as (chmod 600)",
        path.display()
    )]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Group or others have some access to a secret file (any bit of mode 0o077), the rule the
    /// cluster key file follows too.
    #[error(
        "secret file {shown} is open to group or others (mode {mode:04o}); run `chmod 600 \
         {shown}` and make it owned by the user clusterd runs as",
        shown = path.display()
    )]
    SecretTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The TLS trust settings could not be used.
    #[error("TLS settings: {0}")]
    Tls(String),
    /// No HTTP answer (connection refused, TLS handshake failed, timed out).
    #[error(
        "{url} did not answer: {reason}; check that the endpoint is up and reachable from this node, and its certificate"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// An HTTP answer with an unexpected status.
    #[error("{url} answered HTTP {status}: {body}")]
    Http {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// An answer that does not say what the agent needs to know.
    #[error("{url}: {what}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong with the answer.
        what: String,
    },
    /// The node did not reach the requested power state.
    #[error(
        "the node is not powered {wanted} after {waited_ms} ms (last state {last:?}); check it by hand"
    )]
    NotConfirmed {
        /// The state asked for.
        wanted: PowerAction,
        /// The last state the agent saw.
        last: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The command could not be started.
    #[error("cannot run {program}: {reason}; check the path and that it is executable")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// The command ran and failed.
    #[error("{program} exited with {status}: {output}")]
    Exit {
        /// The program.
        program: String,
        /// Exit status as text (`code 1`, `signal 9`).
        status: String,
        /// Its output (stdout then stderr), bounded, with secrets masked.
        output: String,
    },
    /// The whole fence took longer than allowed.
    #[error("no confirmed answer within {} s; the node may or may not be off", after.as_secs_f64())]
    Timeout {
        /// The limit.
        after: Duration,
    },
}

/// A way to power a node off (and on).
#[async_trait::async_trait]
pub trait Fencer: Send + Sync + fmt::Debug {
    /// The agent and its target, for logs and the history, e.g.
    /// `redfish https://192.0.2.231 /redfish/v1/Systems/1`. Never contains a secret.
    fn describe(&self) -> String;

    /// Carry out `action` and return only once it is confirmed (for `Off`: the node is off).
    /// The reply says what the agent answered. May be cancelled at any await (the caller's
    /// deadline); an agent must then leave nothing running.
    async fn power(&self, action: PowerAction) -> Result<String, FenceError>;
}

/// How to fence one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceOptions {
    /// Deadline for the power-off and its confirmation.
    pub timeout: Duration,
    /// After a confirmed power-off, power the node on again (a reboot); it then rejoins.
    pub power_on_after: bool,
}

/// Fence a node: power off, confirmed within `options.timeout`; then power on again if asked.
///
/// Success means the node is off (or was off and is now booting). A failed power-on after a
/// confirmed power-off is still a successful fence: the reply says the power-on failed.
pub async fn fence(agent: &dyn Fencer, options: &FenceOptions) -> Result<String, FenceError> {
    let started = Instant::now();
    let off = match tokio::time::timeout(options.timeout, agent.power(PowerAction::Off)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(FenceError::Timeout {
                after: options.timeout,
            });
        }
    };
    let mut reply = format!(
        "off confirmed after {} ms: {off}",
        started.elapsed().as_millis()
    );
    if options.power_on_after {
        match tokio::time::timeout(options.timeout, agent.power(PowerAction::On)).await {
            Ok(Ok(on)) => reply.push_str(&format!("; powered on again: {on}")),
            Ok(Err(e)) => reply.push_str(&format!("; power-on FAILED: {e}")),
            Err(_) => reply.push_str(&format!(
                "; power-on not confirmed within {} s",
                options.timeout.as_secs()
            )),
        }
    }
    Ok(bounded(&reply))
}

/// A secret (password, token) read from a file when needed, so a rotated file takes effect at
/// the next fence. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Read the first line of `path`. Refused when group or others have any access to the
    /// file ([`Secret::check_mode`]), or when it is missing or its first line empty.
    pub fn read(path: &Path) -> Result<Secret, FenceError> {
        let err = |reason: String| FenceError::Secret {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        Secret::check_mode(path, meta.permissions().mode())?;
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err(err("its first line is empty".into()));
        }
        Ok(Secret(line.to_string()))
    }

    /// Refuse a secret file whose `mode` gives group or others any access (0o077), as the
    /// cluster key file is refused: a password that powers nodes off is worth as much as the
    /// key. The one rule for fences and for `check-config`.
    pub fn check_mode(path: &Path, mode: u32) -> Result<(), FenceError> {
        let mode = mode & 0o777;
        if mode & 0o077 != 0 {
            return Err(FenceError::SecretTooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        Ok(())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret masked.
    pub fn mask(&self, text: &str) -> String {
        text.replace(&self.0, "***")
    }
}

/// An HTTP answer's body as far as an agent read it.
#[derive(Debug)]
pub(crate) struct Body {
    /// What was read, at most [`MAX_RESPONSE_BYTES`], as text (invalid UTF-8 replaced).
    pub(crate) text: String,
    /// Why reading stopped.
    pub(crate) end: BodyEnd,
}

/// Why reading an HTTP answer's body stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// At its end: the text is the whole body.
    Complete,
    /// At the limit: the body is longer, the rest was not read.
    TooLong,
    /// The connection failed (or the request timed out) before the end.
    Failed(String),
}

/// Read `resp`'s body chunk by chunk, stopping at [`MAX_RESPONSE_BYTES`]. Dropping the answer
/// then closes the connection, so the rest is never received.
pub(crate) async fn read_body(resp: reqwest::Response) -> Body {
    let (kept, end) = read_at_most(resp, MAX_RESPONSE_BYTES).await;
    Body {
        text: String::from_utf8_lossy(&kept).into_owned(),
        end,
    }
}

/// `resp`'s whole body if it is at most `limit` bytes, else why not ([`BodyEnd::TooLong`]: the
/// rest is not read; or [`BodyEnd::Failed`]).
pub async fn read_whole(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyEnd> {
    match read_at_most(resp, limit).await {
        (bytes, BodyEnd::Complete) => Ok(bytes),
        (_, end) => Err(end),
    }
}

impl BodyEnd {
    /// Why reading stopped short, for a body read with `limit`.
    pub fn describe(&self, limit: usize) -> String {
        match self {
            BodyEnd::Complete => "the answer was read whole".into(),
            BodyEnd::TooLong => format!("the answer is longer than {limit} bytes"),
            BodyEnd::Failed(why) => format!("the answer broke off: {why}"),
        }
    }
}

/// Read `resp`'s body chunk by chunk, keeping at most `limit` bytes: an answer from anyone
/// (a BMC, a peer) can never make the reader hold more. Dropping the answer then closes the
/// connection, so the rest is never received.
pub async fn read_at_most(mut resp: reqwest::Response, limit: usize) -> (Vec<u8>, BodyEnd) {
    let mut kept = Vec::new();
    let end = loop {
        match resp.chunk().await {
            Ok(None) => break BodyEnd::Complete,
            Ok(Some(chunk)) => {
                let room = limit.saturating_sub(kept.len());
                if chunk.len() > room {
                    kept.extend_from_slice(&chunk[..room]);
                    break BodyEnd::TooLong;
                }
                kept.extend_from_slice(&chunk);
            }
            Err(e) => break BodyEnd::Failed(crate::tls::error_chain(&e)),
        }
    };
    (kept, end)
}

/// `text` cut to at most [`MAX_REPLY`] bytes (on a character boundary), marked when cut.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_REPLY {
        return text.to_string();
    }
    let mut end = MAX_REPLY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Scripted {
        calls: Mutex<Vec<PowerAction>>,
        off_takes: Duration,
        on_fails: bool,
    }

    #[async_trait::async_trait]
    impl Fencer for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        async fn power(&self, action: PowerAction) -> Result<String, FenceError> {
            self.calls.lock().unwrap().push(action);
            match action {
                PowerAction::Off => {
                    tokio::time::sleep(self.off_takes).await;
                    Ok("Off".into())
                }
                PowerAction::On if self.on_fails => Err(FenceError::Protocol {
                    url: "x".into(),
                    what: "refused".into(),
                }),
                PowerAction::On => Ok("On".into()),
            }
        }
    }

    fn opts(power_on_after: bool) -> FenceOptions {
        FenceOptions {
            timeout: Duration::from_secs(5),
            power_on_after,
        }
    }

    #[tokio::test]
    async fn fence_powers_off_and_only_then_on_when_asked() {
        let agent = Scripted::default();
        let reply = fence(&agent, &opts(false)).await.unwrap();
        assert!(reply.starts_with("off confirmed after"), "{reply}");
        assert_eq!(*agent.calls.lock().unwrap(), vec![PowerAction::Off]);
        let agent = Scripted::default();
        let reply = fence(&agent, &opts(true)).await.unwrap();
        assert!(reply.contains("powered on again: On"), "{reply}");
        assert_eq!(
            *agent.calls.lock().unwrap(),
            vec![PowerAction::Off, PowerAction::On]
        );
    }

    #[tokio::test]
    async fn a_failed_power_on_after_a_confirmed_off_is_still_a_fence() {
        let agent = Scripted {
            on_fails: true,
            ..Scripted::default()
        };
        let reply = fence(&agent, &opts(true)).await.unwrap();
        assert!(reply.contains("power-on FAILED"), "{reply}");
    }

    #[tokio::test]
    async fn an_unconfirmed_off_within_the_deadline_is_a_timeout() {
        let agent = Scripted {
            off_takes: Duration::from_secs(60),
            ..Scripted::default()
        };
        let options = FenceOptions {
            timeout: Duration::from_millis(100),
            power_on_after: true,
        };
        let err = fence(&agent, &options).await.unwrap_err();
        assert!(matches!(err, FenceError::Timeout { .. }), "{err}");
        assert_eq!(*agent.calls.lock().unwrap(), vec![PowerAction::Off]);
    }

    #[test]
    fn secrets_come_from_private_files_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Secret::read(&path).unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.mask("password=s3cret ok"), "password=*** ok");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Secret::read(&path).unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");

        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            Secret::read(&path)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let missing = Secret::read(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn a_secret_file_open_to_group_or_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bmc.pass");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Secret::read(&path).unwrap().expose(), "s3cret");
        for (mode, shown) in [(0o640, "0640"), (0o604, "0604")] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Secret::read(&path).unwrap_err();
            assert!(
                matches!(err, FenceError::SecretTooOpen { mode: m, .. } if m == mode),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains(&format!("(mode {shown})")), "{text}");
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(
                text.contains("owned by the user clusterd runs as"),
                "{text}"
            );
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    /// Serves `body` at every path, announcing `announced` bytes (more than sent: the rest
    /// never comes).
    async fn body_of(body: Vec<u8>, announced: Option<usize>) -> Body {
        let server = crate::test_http::serve(move |_, _| crate::test_http::Answer {
            status: 200,
            body: body.clone(),
            announced,
        })
        .await;
        let client = crate::tls::client(&crate::Trust::System, Duration::from_secs(60)).unwrap();
        let resp = client
            .get(format!("http://{}/", server.addr))
            .send()
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), read_body(resp))
            .await
            .expect("the body was read within 5 s")
    }

    #[tokio::test]
    async fn a_body_at_the_limit_is_read_whole() {
        let body = body_of(vec![b'x'; MAX_RESPONSE_BYTES], None).await;
        assert_eq!(body.end, BodyEnd::Complete);
        assert_eq!(body.text.len(), MAX_RESPONSE_BYTES);
    }

    #[tokio::test]
    async fn a_body_one_byte_over_the_limit_is_cut_at_the_limit() {
        let body = body_of(vec![b'x'; MAX_RESPONSE_BYTES + 1], None).await;
        assert_eq!(body.end, BodyEnd::TooLong);
        assert_eq!(body.text.len(), MAX_RESPONSE_BYTES);
    }

    #[tokio::test]
    async fn reading_stops_at_the_limit_without_waiting_for_the_rest() {
        let body = body_of(
            vec![b'x'; MAX_RESPONSE_BYTES + 1],
            Some(10 * MAX_RESPONSE_BYTES),
        )
        .await;
        assert_eq!(body.end, BodyEnd::TooLong);
        assert_eq!(body.text.len(), MAX_RESPONSE_BYTES);
    }

    #[test]
    fn long_replies_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_REPLY);
        let cut = bounded(&text);
        assert!(cut.len() < text.len());
        assert!(cut.ends_with("bytes cut)"), "{cut}");
        assert_eq!(bounded("short"), "short");
    }
}
