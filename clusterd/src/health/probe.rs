//! One probe run: the protocol exchange a mail client would have with the service.
//!
//! SMTP-like (smtp, submission, smtps, lmtp): the whole 220 banner (multi-line too, nothing sent
//! before it ends), EHLO (LHLO for LMTP), optional STARTTLS and EHLO again, NOOP, QUIT. IMAP:
//! `* OK` greeting, CAPABILITY, optional STARTTLS, optional LOGIN + SELECT INBOX with a test
//! account, LOGOUT. POP3: `+OK`, optional STLS, optional USER/PASS, QUIT. tcp: connect.
//! exec: a Nagios-style plugin. Everything runs under the check's timeout; a failed test login,
//! a deep postfix queue or a certificate near expiry make the result a warning, never critical.

use crate::lock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::tls::{self, TlsClient};
use super::tracker::Outcome;
use crate::config::{CheckConfig, CheckKind};

/// Longest protocol line accepted from a service.
const MAX_LINE: usize = 8192;
/// Most lines in one multi-line reply (SMTP) or before a tagged answer (IMAP).
const MAX_LINES: usize = 200;
/// Most bytes of plugin or queue output read.
const MAX_OUTPUT: usize = 4 << 20;
/// Longest a postfix queue read may run before it is killed and reported as unreadable.
/// `postqueue -j` walks the whole queue: on a deep queue or a loaded node it takes seconds.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Name the probe gives in EHLO/LHLO.
const HELO_NAME: &str = "clusterd-probe.invalid";

/// Why the service part of a probe failed (the check is then critical), in the words the
/// check's reason shows.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The check lacks what its kind needs (a port, a command, TLS settings); `check-config`
    /// refuses such a check, so this is a defect, not an input.
    #[error("{0}")]
    Unconfigured(&'static str),
    /// The TCP connection failed: refused, unreachable, or reset.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The service answered wrongly, too much, or not at all (TLS included), in its words.
    #[error("{0}")]
    Protocol(String),
}

impl ProbeError {
    /// Whether nothing listens: the kernel refused the connection at once. Unlike a slow or
    /// wrong answer, that is decisive.
    pub fn is_refused(&self) -> bool {
        matches!(self, ProbeError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

impl From<String> for ProbeError {
    fn from(said: String) -> Self {
        ProbeError::Protocol(said)
    }
}

impl From<&str> for ProbeError {
    fn from(said: &str) -> Self {
        ProbeError::Protocol(said.to_string())
    }
}

/// A check ready to run.
#[derive(Debug)]
pub struct Probe {
    kind: CheckKind,
    addr: Option<SocketAddr>,
    timeout: Duration,
    tls: Option<TlsClient>,
    starttls: bool,
    login: Option<(String, PathBuf)>,
    command: Option<Vec<String>>,
    queue: Option<QueueWatch>,
    cert_warning: Duration,
}

/// What one run found, and how long it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// Pass, degraded or failed, with the reason.
    pub outcome: Outcome,
    /// Time the whole exchange took.
    pub latency: Duration,
}

/// Default queue command when `queue_threshold` is set without `queue_command`.
pub const DEFAULT_QUEUE_COMMAND: [&str; 2] = ["/usr/sbin/postqueue", "-j"];

impl Probe {
    /// Prepare the probe of a validated check; the error says what is unusable (e.g. the CA
    /// file cannot be read).
    pub fn new(c: &CheckConfig) -> Result<Probe, String> {
        let tls = if c.uses_tls() {
            Some(tls::client(
                c.tls_ca_file.as_deref(),
                c.tls_server_name.as_deref(),
                c.host,
            )?)
        } else {
            None
        };
        Ok(Probe {
            kind: c.kind,
            addr: c.effective_port().map(|p| SocketAddr::new(c.host, p)),
            timeout: c.timeout.into(),
            tls,
            starttls: c.starttls,
            login: c.login_user.clone().zip(c.password_file.clone()),
            command: c.command.clone(),
            queue: c.queue_threshold.map(|threshold| QueueWatch {
                cmd: c
                    .queue_command
                    .clone()
                    .unwrap_or_else(|| {
                        DEFAULT_QUEUE_COMMAND
                            .iter()
                            .map(|s| s.to_string())
                            .collect()
                    })
                    .into(),
                threshold,
                running: Mutex::new(None),
                last: Mutex::new(None),
            }),
            cert_warning: c.cert_warning.into(),
        })
    }

    /// Run once. The service part (connect, TLS, protocol exchange) is bounded by the check's
    /// timeout and decides pass or fail; the degraded signals (test login, queue depth) each get
    /// their own timeout afterwards and can only add warnings: dovecot delays failed logins by
    /// seconds, and that must not read as a dead service.
    pub async fn run(&self) -> ProbeResult {
        let start = Instant::now();
        let mut step = "connecting";
        let core = tokio::time::timeout(self.timeout, self.exchange(&mut step)).await;
        let latency = start.elapsed();
        let core = match core {
            Err(_) => {
                return ProbeResult {
                    outcome: Outcome::Critical(format!(
                        "no answer within {} ms ({step})",
                        self.timeout.as_millis()
                    )),
                    latency,
                };
            }
            Ok(Err(reason)) => {
                return ProbeResult {
                    outcome: if reason.is_refused() {
                        Outcome::Refused(reason.to_string())
                    } else {
                        Outcome::Critical(reason.to_string())
                    },
                    latency,
                };
            }
            Ok(Ok(core)) => core,
        };
        let mut degraded: Vec<String> = core.warning.into_iter().collect();
        if let Some(expiry) = core.not_after
            && let Some(w) = expiry_warning(expiry, self.cert_warning, unix_now())
        {
            degraded.push(w);
        }
        if let (Some(c), Some((user, file))) = (core.session, &self.login) {
            let login = tokio::time::timeout(self.timeout, self.login(c, user, file)).await;
            match login {
                Ok(Ok(())) => {}
                Ok(Err(e)) => degraded.push(format!("test login as {user} failed: {e}")),
                Err(_) => degraded.push(format!(
                    "test login as {user} failed: no answer within {} ms",
                    self.timeout.as_millis()
                )),
            }
        }
        if let Some(queue) = &self.queue
            && let Some(w) = queue.warning(self.timeout).await
        {
            degraded.push(w);
        }
        ProbeResult {
            outcome: if degraded.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Warning(degraded.join("; "))
            },
            latency,
        }
    }

    /// The service part: pass or fail.
    async fn exchange(&self, step: &mut &'static str) -> Result<Core, ProbeError> {
        if self.kind == CheckKind::Exec {
            *step = "waiting for the plugin";
            let cmd = self
                .command
                .as_ref()
                .ok_or(ProbeError::Unconfigured("no command configured"))?;
            return match run_plugin(cmd).await {
                Outcome::Ok => Ok(Core::default()),
                Outcome::Warning(w) => Ok(Core {
                    warning: Some(w),
                    ..Core::default()
                }),
                Outcome::Critical(c) | Outcome::Refused(c) => Err(ProbeError::Protocol(c)),
            };
        }
        let addr = self
            .addr
            .ok_or(ProbeError::Unconfigured("no port configured"))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::plain(tcp);
        if matches!(
            self.kind,
            CheckKind::Smtps | CheckKind::Imaps | CheckKind::Pop3s
        ) {
            *step = "TLS handshake";
            conn = self.upgrade(conn).await?;
        }
        // A test login follows on the same session (IMAP and POP3 only).
        let keep_open = self.login.is_some()
            && matches!(
                self.kind,
                CheckKind::Imap | CheckKind::Imaps | CheckKind::Pop3 | CheckKind::Pop3s
            );
        match self.kind {
            CheckKind::Smtp | CheckKind::Submission | CheckKind::Smtps | CheckKind::Lmtp => {
                self.smtp(&mut conn, step).await?;
            }
            CheckKind::Imap | CheckKind::Imaps => {
                self.imap(&mut conn, step).await?;
                if !keep_open {
                    *step = "waiting for the LOGOUT reply";
                    conn.imap_command("a9", "LOGOUT").await?;
                }
            }
            CheckKind::Pop3 | CheckKind::Pop3s => {
                self.pop3(&mut conn, step).await?;
                if !keep_open {
                    *step = "waiting for the QUIT reply";
                    conn.send("QUIT").await?;
                    conn.pop3_expect("QUIT").await?;
                }
            }
            CheckKind::Tcp | CheckKind::Exec => {}
        }
        Ok(Core {
            not_after: conn.not_after,
            session: keep_open.then_some(conn),
            warning: None,
        })
    }

    async fn upgrade(&self, conn: Conn) -> Result<Conn, ProbeError> {
        let Some(tls) = &self.tls else {
            return Err(ProbeError::Unconfigured(
                "TLS is not configured for this check",
            ));
        };
        conn.upgrade(tls).await
    }

    /// SMTP, submission, smtps and LMTP: banner, EHLO, optional STARTTLS, NOOP, QUIT.
    async fn smtp(&self, c: &mut Conn, step: &mut &'static str) -> Result<(), ProbeError> {
        let hello = if self.kind == CheckKind::Lmtp {
            "LHLO"
        } else {
            "EHLO"
        };
        *step = "waiting for the banner";
        c.smtp_expect("banner", 220).await?;
        *step = "waiting for the EHLO reply";
        c.send(&format!("{hello} {HELO_NAME}")).await?;
        let caps = c.smtp_expect(hello, 250).await?;
        if self.starttls {
            if !caps
                .iter()
                .any(|l| l.trim().eq_ignore_ascii_case("STARTTLS"))
            {
                return Err("STARTTLS is not offered".into());
            }
            *step = "STARTTLS";
            c.send("STARTTLS").await?;
            c.smtp_expect("STARTTLS", 220).await?;
            let taken = std::mem::replace(c, Conn::closed());
            *c = self.upgrade(taken).await?;
            *step = "waiting for the EHLO reply after STARTTLS";
            c.send(&format!("{hello} {HELO_NAME}")).await?;
            c.smtp_expect(hello, 250).await?;
        }
        *step = "waiting for the NOOP reply";
        c.send("NOOP").await?;
        c.smtp_expect("NOOP", 250).await?;
        *step = "waiting for the QUIT reply";
        c.send("QUIT").await?;
        c.smtp_expect("QUIT", 221).await?;
        Ok(())
    }

    /// IMAP up to the point of login: greeting, CAPABILITY, optional STARTTLS.
    async fn imap(&self, c: &mut Conn, step: &mut &'static str) -> Result<(), ProbeError> {
        *step = "waiting for the greeting";
        let greeting = c.line().await?;
        if !(starts_with_ci(&greeting, "* OK") || starts_with_ci(&greeting, "* PREAUTH")) {
            return Err(format!("greeting: {}", shorten(&greeting)).into());
        }
        *step = "waiting for the CAPABILITY reply";
        let caps = c.imap_command("a1", "CAPABILITY").await?;
        if self.starttls {
            let offered = caps.iter().any(|l| {
                l.to_ascii_uppercase()
                    .split_whitespace()
                    .any(|w| w == "STARTTLS")
            });
            if !offered {
                return Err("STARTTLS is not offered".into());
            }
            *step = "STARTTLS";
            c.imap_command("a2", "STARTTLS").await?;
            let taken = std::mem::replace(c, Conn::closed());
            *c = self.upgrade(taken).await?;
            *step = "waiting for the CAPABILITY reply after STARTTLS";
            c.imap_command("a3", "CAPABILITY").await?;
        }
        Ok(())
    }

    /// POP3 up to the point of login: greeting, optional STLS.
    async fn pop3(&self, c: &mut Conn, step: &mut &'static str) -> Result<(), ProbeError> {
        *step = "waiting for the greeting";
        c.pop3_expect("greeting").await?;
        if self.starttls {
            *step = "STLS";
            c.send("STLS").await?;
            c.pop3_expect("STLS").await?;
            let taken = std::mem::replace(c, Conn::closed());
            *c = self.upgrade(taken).await?;
        }
        Ok(())
    }

    /// The test login on an open IMAP or POP3 session, then a clean goodbye.
    async fn login(
        &self,
        mut c: Conn,
        user: &str,
        file: &std::path::Path,
    ) -> Result<(), ProbeError> {
        let pass = read_password(file)?;
        if matches!(self.kind, CheckKind::Imap | CheckKind::Imaps) {
            let login = format!("LOGIN {} {}", imap_quote(user), imap_quote(&pass));
            c.imap_command("a4", &login).await?;
            c.imap_command("a5", "SELECT INBOX").await?;
            c.imap_command("a9", "LOGOUT").await?;
        } else {
            c.send(&format!("USER {user}")).await?;
            c.pop3_expect("USER").await?;
            c.send(&format!("PASS {pass}")).await?;
            c.pop3_expect("PASS").await?;
            c.send("QUIT").await?;
            c.pop3_expect("QUIT").await?;
        }
        Ok(())
    }
}

/// What the service part of a probe leaves for the degraded checks.
#[derive(Debug, Default)]
struct Core {
    /// Expiry of the TLS certificate seen (unix s).
    not_after: Option<i64>,
    /// The session, still open, when a test login follows.
    session: Option<Conn>,
    /// A plugin's WARNING.
    warning: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A line-oriented connection, plain or TLS.
struct Conn {
    io: Option<BufReader<Box<dyn Io>>>,
    /// Expiry of the certificate seen in the TLS handshake (unix s).
    not_after: Option<i64>,
}

impl Conn {
    fn plain(tcp: TcpStream) -> Conn {
        Conn {
            io: Some(BufReader::new(Box::new(tcp))),
            not_after: None,
        }
    }

    fn closed() -> Conn {
        Conn {
            io: None,
            not_after: None,
        }
    }

    fn io(&mut self) -> Result<&mut BufReader<Box<dyn Io>>, String> {
        self.io
            .as_mut()
            .ok_or_else(|| "connection closed".to_string())
    }

    async fn upgrade(mut self, tls: &TlsClient) -> Result<Conn, ProbeError> {
        let io = self.io.take().ok_or("connection closed")?;
        if !io.buffer().is_empty() {
            // Bytes sent before the handshake would be injected into the TLS session.
            return Err("the service sent data before the TLS handshake".into());
        }
        let stream = tls
            .connector
            .connect(tls.server_name.clone(), io.into_inner())
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let not_after = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(tls::not_after);
        Ok(Conn {
            io: Some(BufReader::new(Box::new(stream))),
            not_after,
        })
    }

    async fn send(&mut self, line: &str) -> Result<(), ProbeError> {
        let io = self.io()?.get_mut();
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        io.write_all(&buf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        io.flush()
            .await
            .map_err(|e| ProbeError::Protocol(format!("write: {e}")))
    }

    /// One line without its CRLF; bounded length.
    async fn line(&mut self) -> Result<String, ProbeError> {
        let io = self.io()?;
        let mut buf = Vec::new();
        let n = (&mut *io)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the service closed the connection".into());
        }
        if !buf.ends_with(b"\n") {
            return Err(if buf.len() > MAX_LINE {
                format!("a line longer than {MAX_LINE} bytes")
            } else {
                "the service closed the connection mid-line".into()
            }
            .into());
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Read a whole SMTP reply (all `NNN-` lines and the final `NNN `); fail unless its code
    /// is `want`. Returns the text of each line.
    async fn smtp_expect(&mut self, what: &str, want: u16) -> Result<Vec<String>, ProbeError> {
        let mut texts = Vec::new();
        for _ in 0..MAX_LINES {
            let l = self.line().await?;
            let b = l.as_bytes();
            let code = l
                .get(..3)
                .filter(|c| c.bytes().all(|d| d.is_ascii_digit()))
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("{what}: malformed reply {:?}", shorten(&l)))?;
            texts.push(l.get(4..).unwrap_or("").to_string());
            match b.get(3) {
                Some(b'-') => continue,
                None | Some(b' ') => {
                    return if code == want {
                        Ok(texts)
                    } else {
                        Err(format!("{what}: {}", shorten(&l)).into())
                    };
                }
                Some(_) => return Err(format!("{what}: malformed reply {:?}", shorten(&l)).into()),
            }
        }
        Err(format!("{what}: reply longer than {MAX_LINES} lines").into())
    }

    /// Send `tag command`, read untagged lines until the tagged answer; fail unless it is OK.
    /// Returns the untagged lines.
    async fn imap_command(&mut self, tag: &str, command: &str) -> Result<Vec<String>, ProbeError> {
        self.send(&format!("{tag} {command}")).await?;
        let verb = command.split_whitespace().next().unwrap_or(command);
        let mut untagged = Vec::new();
        for _ in 0..MAX_LINES {
            let l = self.line().await?;
            if let Some(rest) = l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                return if starts_with_ci(rest, "OK") {
                    Ok(untagged)
                } else {
                    Err(format!("{verb}: {}", shorten(rest)).into())
                };
            }
            untagged.push(l);
        }
        Err(format!("{verb}: no tagged answer within {MAX_LINES} lines").into())
    }

    async fn pop3_expect(&mut self, what: &str) -> Result<String, ProbeError> {
        let l = self.line().await?;
        if starts_with_ci(&l, "+OK") {
            Ok(l)
        } else {
            Err(format!("{what}: {}", shorten(&l)).into())
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// At most 120 characters of a server reply, for reasons.
fn shorten(s: &str) -> String {
    let t = s.trim();
    match t.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

/// An IMAP quoted string.
fn imap_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The test account's password: the first line of the file, which like every secret file must
/// be closed to group and others (`clusterd_fencing::agent::Secret::check_mode`). Errors never
/// contain it.
pub(crate) fn read_password(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?
        .permissions()
        .mode();
    clusterd_fencing::agent::Secret::check_mode(path, mode).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
    let pass = text.lines().next().unwrap_or("").to_string();
    if pass.is_empty() || pass.contains(['\r', '\n']) {
        return Err(format!(
            "password_file {} has no password on its first line",
            path.display()
        ));
    }
    Ok(pass)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A warning when a certificate valid until `not_after` (unix s) expires within `warn` of
/// `now`, or already expired.
pub fn expiry_warning(not_after: i64, warn: Duration, now: i64) -> Option<String> {
    // Saturating: the time comes from a certificate the server chose.
    let left = not_after.saturating_sub(now);
    if left < 0 {
        Some(format!(
            "the certificate expired {} days ago",
            left.unsigned_abs() / 86_400
        ))
    } else if left.unsigned_abs() < warn.as_secs() {
        Some(format!("the certificate expires in {} days", left / 86_400))
    } else {
        None
    }
}

/// Run a plugin with Nagios exit codes: 0 OK, 1 WARNING, 2 CRITICAL, anything else UNKNOWN
/// (counted as critical: a check that cannot tell is not passing). The first line of its
/// output is the reason. It runs in its own process group, killed whole if the probe times out.
async fn run_plugin(cmd: &[String]) -> Outcome {
    let out = match run_bounded(cmd).await {
        Ok(o) => o,
        Err(e) => return Outcome::Critical(e),
    };
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(shorten)
        .unwrap_or_default();
    match out.status.code() {
        Some(0) => Outcome::Ok,
        Some(1) => Outcome::Warning(non_empty(first, "plugin returned WARNING")),
        Some(2) => Outcome::Critical(non_empty(first, "plugin returned CRITICAL")),
        Some(n) => Outcome::Critical(format!("UNKNOWN (exit {n}): {first}")),
        None => Outcome::Critical(format!("plugin killed by a signal: {first}")),
    }
}

fn non_empty(s: String, fallback: &str) -> String {
    if s.is_empty() {
        fallback.to_string()
    } else {
        s
    }
}

/// Output of a bounded child process.
struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
}

/// Run `cmd` (no shell) with stdin closed, stdout captured (bounded), stderr discarded. When
/// the returned future is dropped (the probe timed out) the child's whole process group gets
/// SIGKILL.
async fn run_bounded(cmd: &[String]) -> Result<Output, String> {
    let (program, args) = cmd.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut guard = GroupKill(child.id());
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        (&mut pipe)
            .take(MAX_OUTPUT as u64)
            .read_to_end(&mut stdout)
            .await
            .map_err(|e| format!("reading {program}'s output: {e}"))?;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    // Reaped: its process group id may be reused from now on.
    guard.0 = None;
    Ok(Output { status, stdout })
}

/// Kills a process group when dropped before the child was reaped (set the id to `None` once
/// it was).
pub(crate) struct GroupKill(pub(crate) Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The postfix queue depth of a check, read in the background: a slow `postqueue -j` must
/// neither delay the service verdict (and with it the next probe) nor read as a failure to
/// read the queue. At most one read runs at a time, bounded by [`QUEUE_TIMEOUT`]; a probe waits
/// for it up to the check's timeout and otherwise reports the latest finished reading, leaving
/// the read running for a later probe to collect.
#[derive(Debug)]
struct QueueWatch {
    cmd: Arc<[String]>,
    threshold: u64,
    running: Mutex<Option<tokio::task::JoinHandle<Option<String>>>>,
    /// The warning of the latest finished read (`None`: below the threshold, or none yet).
    last: Mutex<Option<String>>,
}

impl QueueWatch {
    /// The queue warning to report now, waiting up to `wait` for the read in progress (one is
    /// started if none is).
    async fn warning(&self, wait: Duration) -> Option<String> {
        let running = lock(&self.running).take();
        let mut read = running.unwrap_or_else(|| {
            let (cmd, threshold) = (self.cmd.clone(), self.threshold);
            tokio::spawn(async move {
                tokio::time::timeout(QUEUE_TIMEOUT, queue_warning(&cmd, threshold))
                    .await
                    .unwrap_or_else(|_| {
                        Some(format!(
                            "cannot read the postfix queue: {} took longer than {} s",
                            cmd.first().map_or("the queue command", String::as_str),
                            QUEUE_TIMEOUT.as_secs()
                        ))
                    })
            })
        });
        match tokio::time::timeout(wait, &mut read).await {
            Ok(finished) => {
                let w = finished.unwrap_or_else(|e| {
                    Some(format!(
                        "cannot read the postfix queue: the read failed: {e}"
                    ))
                });
                lock(&self.last).clone_from(&w);
                w
            }
            Err(_) => {
                *lock(&self.running) = Some(read);
                lock(&self.last).clone()
            }
        }
    }
}

impl Drop for QueueWatch {
    /// A read still running when its check goes away is ended (its child with it).
    fn drop(&mut self) {
        if let Some(read) = lock(&self.running).take() {
            read.abort();
        }
    }
}

/// A warning when the postfix queue holds more than `threshold` messages (one JSON object per
/// line from `postqueue -j`), or when it cannot be read.
async fn queue_warning(cmd: &[String], threshold: u64) -> Option<String> {
    match run_bounded(cmd).await {
        Err(e) => Some(format!("cannot read the postfix queue: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "cannot read the postfix queue: {} exited with {}",
            cmd[0], out.status
        )),
        Ok(out) => {
            let depth = queue_depth(&out.stdout);
            (depth > threshold)
                .then(|| format!("postfix queue holds {depth} messages (threshold {threshold})"))
        }
    }
}

/// Messages in `postqueue -j` output: one JSON object per non-empty line.
pub fn queue_depth(output: &[u8]) -> u64 {
    output
        .split(|b| *b == b'\n')
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .count() as u64
}
