//! From the client namespace, every mail node serves mail on its own address like a real
//! server: IMAP login and read, POP3 login, SMTP delivery that then shows over IMAP, each with
//! a greeting that names the node. Run as root; see tests/README.md.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::LabSpec;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::probe::{self, Protocol};

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
