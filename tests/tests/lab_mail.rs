//! From the client namespace, every mail node serves mail on its own address like a real
//! server: IMAP login and read, POP3 login, SMTP delivery that then shows over IMAP, each with
//! a greeting that names the node; and the service prober measures what a client sees.
//! Run as root; see tests/README.md.
// Measurements on stderr are part of what these tests report.
#![allow(clippy::print_stderr)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::probe::{self, Protocol};
use clusterd_tests::probe::{ProberSpec, ServiceProber};
use clusterd_tests::{Fault, LabSpec, Service};

const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn client_reads_and_delivers_mail_on_each_nodes_own_address() -> Result<()> {
    let lab = TestLab::up(LabSpec::default())?;
    for node in lab.state().mail_nodes().cloned().collect::<Vec<_>>() {
        let ip = IpAddr::V4(node.ipv4);
        let name = node.name.clone();
        let subject = format!("lab delivery to {name} {}", std::process::id());

        let subj = subject.clone();
        let smtp_node = lab
            .in_client(move || probe::smtp_send(ip, 25, &subj, TIMEOUT))?
            .with_context(|| format!("SMTP to {name}"))?;
        ensure!(
            smtp_node == name,
            "SMTP banner at {ip} named {smtp_node}, not {name}"
        );

        let submission = lab
            .in_client(move || probe::session(Protocol::Submission, ip, TIMEOUT))?
            .with_context(|| format!("submission to {name}"))?;
        ensure!(
            submission == name,
            "submission banner named {submission}, not {name}"
        );

        // Delivery goes postfix -> LMTP -> dovecot; wait (bounded) until IMAP shows it.
        let deadline = Instant::now() + Duration::from_secs(15);
        let seen = loop {
            let subj = subject.clone();
            let outcome = lab
                .in_client(move || probe::imap_session(ip, Some(&subj), TIMEOUT))?
                .with_context(|| format!("IMAP on {name}"))?;
            ensure!(
                outcome.node == name,
                "IMAP greeting named {}, not {name}",
                outcome.node
            );
            if !outcome.matches.is_empty() {
                break outcome;
            }
            if Instant::now() >= deadline {
                bail!("the message sent to {name} never showed over IMAP: {outcome:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(seen.messages >= 1);

        let pop = lab
            .in_client(move || probe::pop3_session(ip, TIMEOUT))?
            .with_context(|| format!("POP3 on {name}"))?;
        ensure!(
            pop.node == name,
            "POP3 greeting named {}, not {name}",
            pop.node
        );
        ensure!(pop.messages >= 1, "POP3 on {name} sees no message");

        // IPv6 too: the services listen on every address.
        let v6 = lab.greeting_from("client", SocketAddr::new(node.ipv6.into(), 143), TIMEOUT)?;
        let v6 = v6.with_context(|| format!("IMAP over IPv6 on {name}"))?;
        ensure!(
            probe::greeting_node(&v6).as_deref() == Some(name.as_str()),
            "{v6}"
        );
    }
    Ok(())
}

#[test]
fn service_prober_names_the_greeter_and_measures_an_outage() -> Result<()> {
    let mut lab = TestLab::up(LabSpec {
        mail_nodes: 1,
        witness: false,
        run_daemons: false,
        ..LabSpec::default()
    })?;
    let ip = IpAddr::V4(lab.node("mx1")?.ipv4);
    let prober = ServiceProber::start(
        &lab,
        ProberSpec {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            max_duration: Duration::from_secs(30),
            ..ProberSpec::new(ip)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    lab.fault("mx1", Fault::ServiceStop(Service::Dovecot))?;
    std::thread::sleep(Duration::from_millis(500));
    lab.fault("mx1", Fault::ServiceStart(Service::Dovecot))?;
    let down_for = stopped.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop();

    for p in [Protocol::Imap, Protocol::Pop3, Protocol::Smtp] {
        let greeters = log.greeters(p);
        ensure!(
            greeters.iter().map(|(_, n)| n.as_str()).eq(["mx1"]),
            "{p:?} greeters: {greeters:?}"
        );
    }
    for p in [Protocol::Imap, Protocol::Pop3] {
        let outage = log.longest_outage(p).context("no outage seen")?;
        eprintln!("{p:?}: outage {outage:?} (dovecot down for about {down_for:?})");
        ensure!(
            outage >= Duration::from_millis(400) && outage <= down_for + Duration::from_secs(1),
            "{p:?} outage {outage:?} does not match dovecot being down for {down_for:?}"
        );
    }
    ensure!(
        log.longest_outage(Protocol::Smtp).is_none(),
        "SMTP failed although postfix kept running"
    );
    let imap = log.of(Protocol::Imap).count();
    ensure!(
        imap >= 20,
        "only {imap} IMAP sessions in 1.5 s at a 50 ms interval"
    );
    Ok(())
}
