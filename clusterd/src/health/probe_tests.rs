//! Probe tests against scripted servers on real loopback sockets (with real TLS). The probes
//! against real dovecot and postfix run in the lab tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::probe::{Probe, expiry_warning, queue_depth};
use super::tracker::Outcome;
use crate::config::{CheckConfig, CheckKind, Millis};

/// One step of a scripted server.
#[derive(Clone, Debug)]
enum Step {
    /// Send these bytes (CRLF added).
    Send(&'static str),
    /// Read one line and require this prefix.
    Expect(&'static str),
    /// Wait, then require that the client sent nothing meanwhile.
    Quiet(u64),
    /// Upgrade to TLS (server side).
    Tls,
    /// Never answer again.
    Hang,
}

struct Cert {
    der: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
    pem: String,
}

fn cert(days_left: i64) -> Cert {
    let mut params = rcgen::CertificateParams::new(vec!["mail.example.com".to_string()]).unwrap();
    let now = time_now();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = now + time::Duration::days(days_left);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert {
        der: cert.der().clone(),
        key: key.serialize_der(),
        pem: cert.pem(),
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serve one connection following `script`; the join handle reports a broken expectation.
async fn scripted(
    script: Vec<Step>,
    cert: Option<&Cert>,
) -> (u16, tokio::task::JoinHandle<Result<(), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = cert.map(|c| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![c.der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(c.key.clone().into()),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tcp));
        for step in script {
            match step {
                Step::Send(s) => {
                    io.get_mut()
                        .write_all(format!("{s}\r\n").as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Step::Expect(prefix) => {
                    let mut line = String::new();
                    io.read_line(&mut line).await.map_err(|e| e.to_string())?;
                    if !line.starts_with(prefix) {
                        return Err(format!("expected {prefix:?}, got {line:?}"));
                    }
                }
                Step::Quiet(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let mut probe = [0u8; 1];
                    let early = tokio::time::timeout(Duration::from_millis(1), async {
                        tokio::io::AsyncReadExt::read(&mut io, &mut probe).await
                    })
                    .await;
                    if let Ok(Ok(n)) = early
                        && n > 0
                    {
                        return Err("the client talked before the banner ended".into());
                    }
                }
                Step::Tls => {
                    let acc = acceptor.clone().ok_or("no certificate")?;
                    let inner = io.into_inner();
                    let tls = acc.accept(inner).await.map_err(|e| e.to_string())?;
                    io = BufReader::new(Box::new(tls));
                }
                Step::Hang => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
        Ok(())
    });
    (port, task)
}

fn check(kind: CheckKind, port: u16) -> CheckConfig {
    let mut c = CheckConfig::new(kind);
    c.port = Some(port);
    c
}

async fn run(c: &CheckConfig) -> Outcome {
    Probe::new(c).unwrap().run().await.outcome
}

fn is_critical(o: &Outcome, needle: &str) -> bool {
    matches!(o, Outcome::Critical(r) if r.contains(needle))
}

const SMTP_OK: [Step; 8] = [
    Step::Expect("EHLO "),
    Step::Send("250-mx1.example.com"),
    Step::Send("250 PIPELINING"),
    Step::Expect("NOOP"),
    Step::Send("250 2.0.0 Ok"),
    Step::Expect("QUIT"),
    Step::Send("221 2.0.0 Bye"),
    Step::Hang,
];

#[tokio::test]
async fn smtp_reads_a_multi_line_banner_to_its_end_before_speaking() {
    let mut script = vec![
        Step::Send("220-mx1.example.com ESMTP"),
        Step::Quiet(150),
        Step::Send("220 mx1.example.com ready"),
    ];
    script.extend(SMTP_OK.iter().take(7).cloned());
    let (port, server) = scripted(script, None).await;
    assert_eq!(run(&check(CheckKind::Smtp, port)).await, Outcome::Ok);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn smtp_with_a_refusing_banner_is_critical_and_names_the_reply() {
    let (port, _server) = scripted(
        vec![Step::Send("554 5.3.2 mx1 not accepting mail"), Step::Hang],
        None,
    )
    .await;
    let o = run(&check(CheckKind::Smtp, port)).await;
    assert!(is_critical(&o, "banner: 554 5.3.2"), "{o:?}");
}

#[tokio::test]
async fn lmtp_says_lhlo() {
    let script = vec![
        Step::Send("220 mx1 LMTP ready"),
        Step::Expect("LHLO "),
        Step::Send("250 mx1"),
        Step::Expect("NOOP"),
        Step::Send("250 ok"),
        Step::Expect("QUIT"),
        Step::Send("221 bye"),
    ];
    let (port, server) = scripted(script, None).await;
    assert_eq!(run(&check(CheckKind::Lmtp, port)).await, Outcome::Ok);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_port_that_hangs_is_critical_after_the_timeout_and_says_where_it_hung() {
    let (port, _server) = scripted(vec![Step::Hang], None).await;
    let mut c = check(CheckKind::Imap, port);
    c.timeout = Millis::from_millis(300);
    let p = Probe::new(&c).unwrap();
    let r = p.run().await;
    assert!(
        is_critical(
            &r.outcome,
            "no answer within 300 ms (waiting for the greeting)"
        ),
        "{r:?}"
    );
    assert!(r.latency >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_closed_port_is_refused_which_is_decisive() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let o = run(&check(CheckKind::Tcp, port)).await;
    assert!(
        matches!(&o, Outcome::Refused(r) if r.starts_with("connect to 127.0.0.1")
            && r.contains("refused")),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_told_apart_from_a_wrong_answer() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let source = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    let refused = super::probe::ProbeError::Connect { addr, source };
    assert!(refused.is_refused(), "{refused}");
    assert!(refused.to_string().starts_with("connect to 127.0.0.1:"));
    let wrong = super::probe::ProbeError::from("greeting: * BYE".to_string());
    assert!(!wrong.is_refused());
    assert_eq!(wrong.to_string(), "greeting: * BYE");
}

#[tokio::test]
async fn smtp_starttls_does_a_real_handshake_and_says_ehlo_again() {
    let c = cert(365);
    let script = vec![
        Step::Send("220 mx1 ESMTP"),
        Step::Expect("EHLO "),
        Step::Send("250-mx1"),
        Step::Send("250 STARTTLS"),
        Step::Expect("STARTTLS"),
        Step::Send("220 2.0.0 Ready to start TLS"),
        Step::Tls,
        Step::Expect("EHLO "),
        Step::Send("250 mx1"),
        Step::Expect("NOOP"),
        Step::Send("250 ok"),
        Step::Expect("QUIT"),
        Step::Send("221 bye"),
    ];
    let (port, server) = scripted(script, Some(&c)).await;
    let mut cfg = check(CheckKind::Submission, port);
    cfg.starttls = true;
    assert_eq!(run(&cfg).await, Outcome::Ok);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn starttls_that_is_not_offered_is_critical() {
    let script = vec![
        Step::Send("220 mx1 ESMTP"),
        Step::Expect("EHLO "),
        Step::Send("250 mx1"),
        Step::Hang,
    ];
    let (port, _server) = scripted(script, None).await;
    let mut cfg = check(CheckKind::Smtp, port);
    cfg.starttls = true;
    let o = run(&cfg).await;
    assert!(is_critical(&o, "STARTTLS is not offered"), "{o:?}");
}

#[tokio::test]
async fn implicit_tls_imap_with_a_certificate_near_expiry_is_a_warning() {
    let c = cert(3);
    let script = vec![
        Step::Tls,
        Step::Send("* OK [CAPABILITY IMAP4rev1] mx1 ready"),
        Step::Expect("a1 CAPABILITY"),
        Step::Send("* CAPABILITY IMAP4rev1 AUTH=PLAIN"),
        Step::Send("a1 OK done"),
        Step::Expect("a9 LOGOUT"),
        Step::Send("* BYE"),
        Step::Send("a9 OK bye"),
    ];
    let (port, server) = scripted(script, Some(&c)).await;
    let o = run(&check(CheckKind::Imaps, port)).await;
    assert!(
        matches!(&o, Outcome::Warning(r) if r.contains("certificate expires in 2 days")
            || r.contains("certificate expires in 3 days")),
        "{o:?}"
    );
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_ca_file_makes_the_probe_verify_the_chain_and_name() {
    let c = cert(365);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &c.pem).unwrap();
    let pop3 = |c: &Cert| {
        let _ = c;
        vec![
            Step::Tls,
            Step::Send("+OK mx1 ready"),
            Step::Expect("QUIT"),
            Step::Send("+OK bye"),
        ]
    };
    // Right name: verified.
    let (port, server) = scripted(pop3(&c), Some(&c)).await;
    let mut cfg = check(CheckKind::Pop3s, port);
    cfg.tls_ca_file = Some(ca.clone());
    cfg.tls_server_name = Some("mail.example.com".into());
    assert_eq!(run(&cfg).await, Outcome::Ok);
    server.await.unwrap().unwrap();
    // Wrong name: the handshake fails.
    let (port, _server) = scripted(pop3(&c), Some(&c)).await;
    let mut cfg = check(CheckKind::Pop3s, port);
    cfg.tls_ca_file = Some(ca);
    cfg.tls_server_name = Some("other.example.com".into());
    let o = run(&cfg).await;
    assert!(is_critical(&o, "TLS handshake"), "{o:?}");
}

#[tokio::test]
async fn a_failed_test_login_is_a_warning_and_the_password_is_not_in_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    write_secret(&pass, "s3cret \"x\"\n");
    let script = vec![
        Step::Send("* OK ready"),
        Step::Expect("a1 CAPABILITY"),
        Step::Send("* CAPABILITY IMAP4rev1"),
        Step::Send("a1 OK done"),
        Step::Expect("a4 LOGIN \"probe\" \"s3cret \\\"x\\\"\""),
        Step::Send("a4 NO [AUTHENTICATIONFAILED] Authentication failed."),
    ];
    let (port, server) = scripted(script, None).await;
    let mut cfg = check(CheckKind::Imap, port);
    cfg.login_user = Some("probe".into());
    cfg.password_file = Some(pass);
    let o = run(&cfg).await;
    match &o {
        Outcome::Warning(r) => {
            assert!(r.contains("test login as probe failed"), "{r}");
            assert!(r.contains("AUTHENTICATIONFAILED"), "{r}");
            assert!(!r.contains("s3cret"), "{r}");
        }
        other => panic!("expected a warning, got {other:?}"),
    }
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_slow_login_failure_is_a_warning_not_a_timeout_of_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    write_secret(&pass, "pw\n");
    // Like dovecot's auth_failure_delay: the NO comes after longer than the probe timeout.
    let script = vec![
        Step::Send("* OK ready"),
        Step::Expect("a1 CAPABILITY"),
        Step::Send("a1 OK done"),
        Step::Expect("a4 LOGIN"),
        Step::Hang,
    ];
    let (port, _server) = scripted(script, None).await;
    let mut cfg = check(CheckKind::Imap, port);
    cfg.timeout = Millis::from_millis(300);
    cfg.login_user = Some("probe".into());
    cfg.password_file = Some(pass);
    let r = Probe::new(&cfg).unwrap().run().await;
    assert_eq!(
        r.outcome,
        Outcome::Warning("test login as probe failed: no answer within 300 ms".into())
    );
    assert!(r.latency < Duration::from_millis(300), "{r:?}");
}

#[tokio::test]
async fn imap_login_and_select_pass() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    write_secret(&pass, "pw\n");
    let script = vec![
        Step::Send("* OK ready"),
        Step::Expect("a1 CAPABILITY"),
        Step::Send("a1 OK done"),
        Step::Expect("a4 LOGIN"),
        Step::Send("a4 OK logged in"),
        Step::Expect("a5 SELECT INBOX"),
        Step::Send("* 3 EXISTS"),
        Step::Send("a5 OK [READ-WRITE] selected"),
        Step::Expect("a9 LOGOUT"),
        Step::Send("* BYE"),
        Step::Send("a9 OK bye"),
    ];
    let (port, server) = scripted(script, None).await;
    let mut cfg = check(CheckKind::Imap, port);
    cfg.login_user = Some("probe".into());
    cfg.password_file = Some(pass);
    assert_eq!(run(&cfg).await, Outcome::Ok);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn imap_bye_greeting_is_critical() {
    let (port, _server) = scripted(vec![Step::Send("* BYE too many connections")], None).await;
    let o = run(&check(CheckKind::Imap, port)).await;
    assert!(is_critical(&o, "greeting: * BYE"), "{o:?}");
}

#[tokio::test]
async fn pop3_user_pass_and_an_err_greeting() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    write_secret(&pass, "pw\n");
    let script = vec![
        Step::Send("+OK Dovecot ready."),
        Step::Expect("USER probe"),
        Step::Send("+OK"),
        Step::Expect("PASS pw"),
        Step::Send("+OK Logged in."),
        Step::Expect("QUIT"),
        Step::Send("+OK Logging out."),
    ];
    let (port, server) = scripted(script, None).await;
    let mut cfg = check(CheckKind::Pop3, port);
    cfg.login_user = Some("probe".into());
    cfg.password_file = Some(pass);
    assert_eq!(run(&cfg).await, Outcome::Ok);
    server.await.unwrap().unwrap();

    let (port, _server) = scripted(vec![Step::Send("-ERR go away")], None).await;
    let o = run(&check(CheckKind::Pop3, port)).await;
    assert!(is_critical(&o, "greeting: -ERR go away"), "{o:?}");
}

#[tokio::test]
async fn an_endless_line_is_refused_without_reading_it_all() {
    let long: &'static str = Box::leak("* OK ".repeat(4000).into_boxed_str());
    let (port, _server) = scripted(vec![Step::Send(long), Step::Hang], None).await;
    let o = run(&check(CheckKind::Imap, port)).await;
    assert!(is_critical(&o, "longer than"), "{o:?}");
}

fn exec_check(script: &str, timeout_ms: u64) -> CheckConfig {
    let mut c = check(CheckKind::Exec, 0);
    c.port = None;
    c.timeout = Millis::from_millis(timeout_ms);
    c.command = Some(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    c
}

#[tokio::test]
async fn exec_follows_nagios_exit_codes_and_keeps_the_first_line() {
    assert_eq!(
        run(&exec_check("echo fine; exit 0", 2000)).await,
        Outcome::Ok
    );
    assert_eq!(
        run(&exec_check(
            "echo 'WARNING - disk 91%'; echo more; exit 1",
            2000
        ))
        .await,
        Outcome::Warning("WARNING - disk 91%".into())
    );
    assert_eq!(
        run(&exec_check("echo 'CRITICAL - down'; exit 2", 2000)).await,
        Outcome::Critical("CRITICAL - down".into())
    );
    assert_eq!(
        run(&exec_check("echo 'what'; exit 3", 2000)).await,
        Outcome::Critical("UNKNOWN (exit 3): what".into())
    );
}

#[tokio::test]
async fn exec_that_runs_too_long_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let marker: PathBuf = dir.path().join("still-running");
    // The plugin starts a child that would write the marker after 1.5 s.
    let script = format!("(sleep 1.5; touch {}) & sleep 5; exit 0", marker.display());
    let o = run(&exec_check(&script, 300)).await;
    assert!(is_critical(&o, "no answer within 300 ms"), "{o:?}");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!marker.exists(), "the plugin's child survived the timeout");
}

#[tokio::test]
async fn a_deep_postfix_queue_is_a_warning() {
    let script = vec![
        Step::Send("220 mx1 ESMTP"),
        Step::Expect("EHLO "),
        Step::Send("250 mx1"),
        Step::Expect("NOOP"),
        Step::Send("250 ok"),
        Step::Expect("QUIT"),
        Step::Send("221 bye"),
    ];
    let (port, server) = scripted(script.clone(), None).await;
    let mut cfg = check(CheckKind::Smtp, port);
    cfg.queue_threshold = Some(2);
    cfg.queue_command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "printf '{\"queue_id\":\"A\"}\\n{\"queue_id\":\"B\"}\\n{\"queue_id\":\"C\"}\\n'".into(),
    ]);
    assert_eq!(
        run(&cfg).await,
        Outcome::Warning("postfix queue holds 3 messages (threshold 2)".into())
    );
    server.await.unwrap().unwrap();
    let (port, _server) = scripted(script, None).await;
    cfg.port = Some(port);
    cfg.queue_threshold = Some(3);
    assert_eq!(run(&cfg).await, Outcome::Ok);
}

#[tokio::test]
async fn a_slow_queue_read_neither_delays_the_verdict_nor_reads_as_unreadable() {
    // A service that accepts every connection (the queue is what is under test).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    let mut cfg = check(CheckKind::Tcp, port);
    cfg.timeout = Millis::from_millis(300);
    cfg.queue_threshold = Some(2);
    // A queue that takes 1.2 s to read (a deep queue on a loaded node).
    cfg.queue_command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "sleep 1.2; printf '{}\\n{}\\n{}\\n'".into(),
    ]);
    let probe = Probe::new(&cfg).unwrap();
    let started = std::time::Instant::now();
    // No reading has finished: the service verdict stands alone, with no false "cannot read"
    // warning, and the probe waits for the read no longer than its timeout.
    assert_eq!(probe.run().await.outcome, Outcome::Ok);
    assert!(started.elapsed() < Duration::from_millis(1000));
    // The read goes on in the background; a later probe collects what it found, and the
    // probe after that keeps reporting it while the next read runs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let deep = Outcome::Warning("postfix queue holds 3 messages (threshold 2)".into());
    assert_eq!(probe.run().await.outcome, deep);
    assert_eq!(probe.run().await.outcome, deep);
    server.abort();
}

#[test]
fn queue_depth_counts_json_lines() {
    assert_eq!(queue_depth(b""), 0);
    assert_eq!(queue_depth(b"{}\n{}\n\n"), 2);
    assert_eq!(queue_depth(b"{}"), 1);
}

#[test]
fn expiry_warnings() {
    let day = 86_400;
    let warn = Duration::from_secs(14 * day as u64);
    assert_eq!(expiry_warning(100 * day, warn, 0), None);
    // Extreme times a hostile certificate could carry (found by fuzzing): no overflow.
    assert!(expiry_warning(i64::MIN, warn, i64::MAX).is_some());
    assert_eq!(expiry_warning(i64::MAX, warn, i64::MIN), None);
    assert_eq!(
        expiry_warning(3 * day, warn, 0).as_deref(),
        Some("the certificate expires in 3 days")
    );
    assert_eq!(
        expiry_warning(0, warn, 2 * day).as_deref(),
        Some("the certificate expired 2 days ago")
    );
}

/// A password file as an operator must write it (mode 0600).
fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_password_file_open_to_group_or_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("probe.pass");
    write_secret(&pass, "pw\n");
    assert_eq!(super::probe::read_password(&pass).as_deref(), Ok("pw"));
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = super::probe::read_password(&pass).unwrap_err();
    assert!(e.contains("chmod 600") && !e.contains("pw\n"), "{e}");
}
