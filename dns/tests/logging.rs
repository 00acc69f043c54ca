//! The operator log: one line when a name enters fail-open and one when it leaves it.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterd_dns::example::example_snapshot;
use clusterd_dns::proto::rr::RecordType;
use common::{TestServer, Transport, client, query};

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_containing(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned();
        text.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// Current-thread runtime: the server's tasks run on this thread, under this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn entering_and_leaving_fail_open_is_logged_once_each() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(example_snapshot(1)).await;
    let mut c = client(server.addr, Transport::Udp).await;
    assert_eq!(
        query(&mut c, "imap.mail.example.com.", RecordType::A)
            .await
            .answers
            .len(),
        2
    );
    assert!(captured.lines_containing("listening on udp").len() == 1);

    // Every owner fails imap: imap (and mail, and the apex) go fail-open.
    let mut failing = example_snapshot(2);
    for a in &mut failing.zones[0].addresses {
        a.passing.remove("imap");
    }
    server.send(failing.clone());
    wait_for_serial(&mut c, 2).await;
    // The same state again logs nothing new.
    let mut again = failing.clone();
    again.serial = 3;
    server.send(again);
    wait_for_serial(&mut c, 3).await;
    server.send(example_snapshot(4));
    wait_for_serial(&mut c, 4).await;

    let entered = captured.lines_containing("imap.mail.example.com. entered fail-open");
    let left = captured.lines_containing("imap.mail.example.com. left fail-open");
    assert_eq!(entered.len(), 1, "{entered:?}");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(entered[0].contains("WARN"), "{}", entered[0]);
    assert!(
        captured
            .lines_containing("smtp.mail.example.com. entered")
            .is_empty()
    );
    server.stop().await;
}

async fn wait_for_serial(
    c: &mut hickory_net::client::Client<hickory_net::runtime::TokioRuntimeProvider>,
    serial: u32,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let m = query(c, "mail.example.com.", RecordType::SOA).await;
        let got = m.answers.iter().find_map(|r| match &r.data {
            clusterd_dns::proto::rr::RData::SOA(s) => Some(s.serial),
            _ => None,
        });
        if got == Some(serial) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serial {serial} not served within 2 s (got {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
