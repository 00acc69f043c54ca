//! Client-side mail sessions: IMAP, POP3 and SMTP spoken like a mail client does, from the
//! client namespace, and a prober that repeats them at a fixed rate and records which node
//! greeted and when (the raw material of failover measurements).
//!
//! The session functions use the calling thread's network namespace; [`ServiceProber`] runs its
//! own threads inside the lab's client namespace. Every socket operation has a timeout.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::lab::state::{MAIL_DOMAIN, MAIL_PASSWORD, MAIL_USER};
use crate::lab::{Lab, netns};

/// Why a session failed: the step and what the server said (or the socket error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct ProbeError {
    /// The protocol step that failed (`connect`, `greeting`, `LOGIN`, ...).
    pub step: &'static str,
    /// The server's answer or the socket error.
    pub detail: String,
}

fn fail(step: &'static str, detail: impl std::fmt::Display) -> ProbeError {
    ProbeError {
        step,
        detail: detail.to_string(),
    }
}

/// The mail protocols the prober speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// IMAP on 143: greeting, LOGIN, SELECT INBOX, LOGOUT.
    Imap,
    /// POP3 on 110: greeting, USER/PASS, STAT, QUIT.
    Pop3,
    /// SMTP on 25: banner, EHLO, MAIL/RCPT/DATA, QUIT.
    Smtp,
    /// Submission on 587, same dialogue as SMTP.
    Submission,
}

impl Protocol {
    /// The port the lab's services use.
    pub fn port(self) -> u16 {
        match self {
            Protocol::Imap => 143,
            Protocol::Pop3 => 110,
            Protocol::Smtp => 25,
            Protocol::Submission => 587,
        }
    }
}

/// A line-oriented connection with timeouts.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, ProbeError> {
        let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("connect", e))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| fail("connect", e))?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| fail("connect", e))?;
        let writer = s.try_clone().map_err(|e| fail("connect", e))?;
        Ok(Conn {
            reader: BufReader::new(s),
            writer,
        })
    }

    fn line(&mut self, step: &'static str) -> Result<String, ProbeError> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err(fail(step, "connection closed")),
            Ok(_) => Ok(l.trim_end().to_owned()),
            Err(e) => Err(fail(step, e)),
        }
    }

    fn send(&mut self, step: &'static str, text: &str) -> Result<(), ProbeError> {
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| fail(step, e))
    }

    /// Read an SMTP reply (possibly multi-line); returns the last line, checks the code.
    fn smtp_reply(&mut self, step: &'static str, code: &str) -> Result<String, ProbeError> {
        let mut all = Vec::new();
        loop {
            let l = self.line(step)?;
            let last = l.len() < 4 || l.as_bytes()[3] != b'-';
            all.push(l);
            if last {
                break;
            }
        }
        let first = all.first().cloned().unwrap_or_default();
        if first.starts_with(code) {
            Ok(all.join("\n"))
        } else {
            Err(fail(step, all.join(" | ")))
        }
    }

    /// Read IMAP lines until the tagged response; return untagged lines, check OK.
    fn imap_tagged(&mut self, step: &'static str, tag: &str) -> Result<Vec<String>, ProbeError> {
        let mut untagged = Vec::new();
        for _ in 0..10_000 {
            let l = self.line(step)?;
            if let Some(rest) = l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                return if rest.starts_with("OK") {
                    Ok(untagged)
                } else {
                    Err(fail(step, l))
                };
            }
            untagged.push(l);
        }
        Err(fail(step, "no tagged response"))
    }
}

/// The node a greeting names: the word before `dovecot` or `postfix` (`mx1 dovecot ready`).
pub fn greeting_node(greeting: &str) -> Option<String> {
    let words: Vec<&str> = greeting.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].starts_with("dovecot") || w[1].starts_with("postfix"))
        .map(|w| w[0].to_owned())
}

/// Connect and read the first line the server sends.
pub fn greeting(addr: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    Conn::open(addr, timeout)?.line("greeting")
}

/// What an IMAP session saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapOutcome {
    /// The node named in the greeting.
    pub node: String,
    /// `EXISTS` count of INBOX.
    pub messages: u32,
    /// Sequence numbers matching the subject search, when one was asked for.
    pub matches: Vec<u32>,
}

/// IMAP: greeting, LOGIN, SELECT INBOX, optionally SEARCH SUBJECT, LOGOUT.
pub fn imap_session(
    ip: IpAddr,
    subject: Option<&str>,
    timeout: Duration,
) -> Result<ImapOutcome, ProbeError> {
    let mut c = Conn::open(SocketAddr::new(ip, 143), timeout)?;
    let g = c.line("greeting")?;
    if !g.starts_with("* OK") {
        return Err(fail("greeting", g));
    }
    let node = greeting_node(&g).ok_or_else(|| fail("greeting", format!("no node in {g}")))?;
    c.send(
        "LOGIN",
        &format!("a1 LOGIN {MAIL_USER} \"{MAIL_PASSWORD}\"\r\n"),
    )?;
    c.imap_tagged("LOGIN", "a1")?;
    c.send("SELECT", "a2 SELECT INBOX\r\n")?;
    let lines = c.imap_tagged("SELECT", "a2")?;
    let messages = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("* ")
                .and_then(|r| r.strip_suffix(" EXISTS"))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    let mut matches = Vec::new();
    if let Some(s) = subject {
        c.send("SEARCH", &format!("a3 SEARCH SUBJECT \"{s}\"\r\n"))?;
        for l in c.imap_tagged("SEARCH", "a3")? {
            if let Some(rest) = l.strip_prefix("* SEARCH") {
                matches.extend(
                    rest.split_whitespace()
                        .filter_map(|n| n.parse::<u32>().ok()),
                );
            }
        }
    }
    c.send("LOGOUT", "a4 LOGOUT\r\n")?;
    c.imap_tagged("LOGOUT", "a4")?;
    Ok(ImapOutcome {
        node,
        messages,
        matches,
    })
}

/// What a POP3 session saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Outcome {
    /// The node named in the greeting.
    pub node: String,
    /// Messages in the maildrop (`STAT`).
    pub messages: u32,
}

/// POP3: greeting, USER/PASS, STAT, QUIT.
pub fn pop3_session(ip: IpAddr, timeout: Duration) -> Result<Pop3Outcome, ProbeError> {
    let mut c = Conn::open(SocketAddr::new(ip, 110), timeout)?;
    let g = c.line("greeting")?;
    if !g.starts_with("+OK") {
        return Err(fail("greeting", g));
    }
    let node = greeting_node(&g).ok_or_else(|| fail("greeting", format!("no node in {g}")))?;
    let cmd = |c: &mut Conn, step: &'static str, text: String| -> Result<String, ProbeError> {
        c.send(step, &text)?;
        let l = c.line(step)?;
        if l.starts_with("+OK") {
            Ok(l)
        } else {
            Err(fail(step, l))
        }
    };
    cmd(&mut c, "USER", format!("USER {MAIL_USER}\r\n"))?;
    cmd(&mut c, "PASS", format!("PASS {MAIL_PASSWORD}\r\n"))?;
    let stat = cmd(&mut c, "STAT", "STAT\r\n".into())?;
    let messages = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    cmd(&mut c, "QUIT", "QUIT\r\n".into())?;
    Ok(Pop3Outcome { node, messages })
}

/// SMTP (or submission): banner, EHLO, MAIL/RCPT/DATA with `subject`, QUIT. Returns the node
/// named in the banner. The recipient is the lab's test user.
pub fn smtp_send(
    ip: IpAddr,
    port: u16,
    subject: &str,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let mut c = Conn::open(SocketAddr::new(ip, port), timeout)?;
    let banner = c.smtp_reply("banner", "220")?;
    let node =
        greeting_node(&banner).ok_or_else(|| fail("banner", format!("no node in {banner}")))?;
    c.send("EHLO", "EHLO client.lab.example\r\n")?;
    c.smtp_reply("EHLO", "250")?;
    c.send("MAIL", &format!("MAIL FROM:<prober@{MAIL_DOMAIN}>\r\n"))?;
    c.smtp_reply("MAIL", "250")?;
    c.send("RCPT", &format!("RCPT TO:<{MAIL_USER}@{MAIL_DOMAIN}>\r\n"))?;
    c.smtp_reply("RCPT", "250")?;
    c.send("DATA", "DATA\r\n")?;
    c.smtp_reply("DATA", "354")?;
    c.send(
        "DATA",
        &format!(
            "From: <prober@{MAIL_DOMAIN}>\r\nTo: <{MAIL_USER}@{MAIL_DOMAIN}>\r\n\
             Subject: {subject}\r\n\r\nsent by the clusterd lab prober\r\n.\r\n"
        ),
    )?;
    c.smtp_reply("end of DATA", "250")?;
    c.send("QUIT", "QUIT\r\n")?;
    c.smtp_reply("QUIT", "221")?;
    Ok(node)
}

/// Run one session of `protocol` against `ip`; returns the greeting node.
pub fn session(protocol: Protocol, ip: IpAddr, timeout: Duration) -> Result<String, ProbeError> {
    match protocol {
        Protocol::Imap => imap_session(ip, None, timeout).map(|o| o.node),
        Protocol::Pop3 => pop3_session(ip, timeout).map(|o| o.node),
        Protocol::Smtp | Protocol::Submission => {
            smtp_send(ip, protocol.port(), "clusterd lab probe", timeout)
        }
    }
}

/// One probe attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    /// When the attempt started, since the prober started.
    pub at: Duration,
    /// How long it took.
    pub took: Duration,
    /// The protocol.
    pub protocol: Protocol,
    /// The node that greeted, or why the session failed.
    pub result: Result<String, ProbeError>,
}

/// Settings of a [`ServiceProber`].
#[derive(Debug, Clone)]
pub struct ProberSpec {
    /// Address to probe (usually a floating address).
    pub target: IpAddr,
    /// Protocols, each probed by its own thread.
    pub protocols: Vec<Protocol>,
    /// Time between session starts.
    pub interval: Duration,
    /// Per-session socket timeout.
    pub timeout: Duration,
    /// The prober stops by itself after this long.
    pub max_duration: Duration,
}

impl ProberSpec {
    /// IMAP, POP3 and SMTP against `target` every 100 ms, 1 s timeout, for at most 5 minutes.
    pub fn new(target: IpAddr) -> ProberSpec {
        ProberSpec {
            target,
            protocols: vec![Protocol::Imap, Protocol::Pop3, Protocol::Smtp],
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            max_duration: Duration::from_secs(300),
        }
    }
}

/// Repeats sessions from the client namespace at a fixed rate until stopped.
#[derive(Debug)]
pub struct ServiceProber {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<ProbeRecord>>>,
}

impl ServiceProber {
    /// Start probing from `lab`'s client namespace.
    pub fn start(lab: &Lab, spec: ProberSpec) -> ServiceProber {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = spec
            .protocols
            .iter()
            .map(|&protocol| {
                let stop = stop.clone();
                let spec = spec.clone();
                let ns = lab.state().client.netns.clone();
                thread::spawn(move || {
                    let mut log = Vec::new();
                    if let Err(e) = netns::enter(&ns) {
                        log.push(ProbeRecord {
                            at: Duration::ZERO,
                            took: Duration::ZERO,
                            protocol,
                            result: Err(fail("enter client namespace", e)),
                        });
                        return log;
                    }
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < spec.max_duration {
                        let t0 = Instant::now();
                        let result = session(protocol, spec.target, spec.timeout);
                        log.push(ProbeRecord {
                            at: t0 - started,
                            took: t0.elapsed(),
                            protocol,
                            result,
                        });
                        next += spec.interval;
                        let now = Instant::now();
                        if next > now {
                            thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                    log
                })
            })
            .collect();
        ServiceProber { stop, threads }
    }

    /// Stop and return every record, ordered by start time.
    pub fn stop(self) -> ProbeLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut records: Vec<ProbeRecord> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        records.sort_by_key(|r| r.at);
        ProbeLog { records }
    }
}

/// Everything a [`ServiceProber`] saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeLog {
    /// All attempts, by start time.
    pub records: Vec<ProbeRecord>,
}

impl ProbeLog {
    /// Attempts of one protocol.
    pub fn of(&self, protocol: Protocol) -> impl Iterator<Item = &ProbeRecord> {
        self.records.iter().filter(move |r| r.protocol == protocol)
    }

    /// The longest stretch between two successful sessions of `protocol` with only failures in
    /// between (the outage a client saw), or `None` if no session failed.
    pub fn longest_outage(&self, protocol: Protocol) -> Option<Duration> {
        let mut last_ok: Option<Duration> = None;
        let mut failed_since_ok = false;
        let mut worst: Option<Duration> = None;
        for r in self.of(protocol) {
            match &r.result {
                Ok(_) => {
                    if failed_since_ok && let Some(ok) = last_ok {
                        let gap = r.at + r.took - ok;
                        worst = Some(worst.map_or(gap, |w| w.max(gap)));
                    }
                    last_ok = Some(r.at + r.took);
                    failed_since_ok = false;
                }
                Err(_) => failed_since_ok = true,
            }
        }
        worst
    }

    /// The sequence of distinct greeting nodes of `protocol`, with when each first greeted.
    pub fn greeters(&self, protocol: Protocol) -> Vec<(Duration, String)> {
        let mut out: Vec<(Duration, String)> = Vec::new();
        for r in self.of(protocol) {
            if let Ok(node) = &r.result
                && out.last().map(|(_, n)| n) != Some(node)
            {
                out.push((r.at, node.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_names_the_node() {
        assert_eq!(
            greeting_node("* OK [CAPABILITY IMAP4rev1] mx2 dovecot ready.").as_deref(),
            Some("mx2")
        );
        assert_eq!(
            greeting_node("220 mx1.lab.example ESMTP mx1 postfix ready").as_deref(),
            Some("mx1")
        );
        assert_eq!(
            greeting_node("+OK mx3 dovecot ready.").as_deref(),
            Some("mx3")
        );
        assert_eq!(greeting_node("220 somewhere ESMTP"), None);
    }

    #[test]
    fn outage_spans_failures_between_successes() {
        let rec = |ms: u64, ok: bool| ProbeRecord {
            at: Duration::from_millis(ms),
            took: Duration::ZERO,
            protocol: Protocol::Imap,
            result: if ok {
                Ok("mx1".into())
            } else {
                Err(fail("connect", "refused"))
            },
        };
        let log = ProbeLog {
            records: vec![
                rec(0, true),
                rec(100, false),
                rec(200, false),
                rec(300, true),
            ],
        };
        assert_eq!(
            log.longest_outage(Protocol::Imap),
            Some(Duration::from_millis(300))
        );
        assert_eq!(log.longest_outage(Protocol::Pop3), None);
    }
}
