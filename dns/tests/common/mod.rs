//! Shared harness of the socket tests: a real server on 127.0.0.1 ephemeral ports, `dig` as a
//! subprocess, and hickory's client over UDP and TCP. Every wait is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clusterd_dns::proto::op::Message;
use clusterd_dns::proto::rr::{DNSClass, Name, RecordType};
use clusterd_dns::{ServeOptions, Snapshot, serve};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long any single query or process may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A running server; shut down and awaited on `stop`, aborted on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), clusterd_dns::ServeError>>>,
}

impl TestServer {
    pub async fn start(snapshot: Snapshot) -> TestServer {
        Self::start_with(snapshot, ServeOptions::default()).await
    }

    /// Binds UDP and TCP on the same ephemeral loopback port (as `dig -p` needs) and serves.
    pub async fn start_with(snapshot: Snapshot, options: ServeOptions) -> TestServer {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp addr");
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(vec![udp], vec![tcp], rx, options, async move {
            let _ = stop_rx.await;
        }));
        TestServer {
            addr,
            snapshots: tx,
            shutdown: Some(stop_tx),
            task: Some(task),
        }
    }

    pub fn send(&self, snapshot: Snapshot) {
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("server stops within the deadline")
                .expect("server task did not panic");
            result.expect("server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp on loopback");
        let addr = udp.local_addr().expect("udp addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP after 50 tries");
}

/// Runs `dig @127.0.0.1 -p PORT ARGS...` and returns its output. Fails (never skips) without dig.
pub async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("dig");
    cmd.arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1", "+norecurse"])
        .args(args)
        .kill_on_drop(true);
    let output = match tokio::time::timeout(DEADLINE, cmd.output()).await {
        Err(_) => panic!("dig {args:?} did not finish within {DEADLINE:?}"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("dig is not installed; install it with: apt-get install -y dnsutils")
        }
        Ok(Err(e)) => panic!("cannot run dig: {e}"),
        Ok(Ok(output)) => output,
    };
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() || text.contains("status:"),
        "dig {args:?} failed: {text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The `status:` of a dig output.
pub fn dig_status(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{out}"))
        .to_string()
}

/// The header flags of a dig output, e.g. `["qr", "aa"]`.
pub fn dig_flags(out: &str) -> Vec<String> {
    let line = out
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("no flags in dig output:\n{out}"));
    let flags = line
        .trim_start_matches(";; flags:")
        .split(';')
        .next()
        .unwrap_or("");
    flags.split_whitespace().map(str::to_string).collect()
}

/// Record lines of one section (`ANSWER`, `AUTHORITY`, `ADDITIONAL`) of a dig output, each split
/// into fields: name, ttl, class, type, data....
pub fn dig_section(out: &str, section: &str) -> Vec<Vec<String>> {
    let header = format!(";; {section} SECTION:");
    let mut lines = out.lines().skip_while(|l| !l.starts_with(&header));
    if lines.next().is_none() {
        return Vec::new();
    }
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A hickory client connected to the test server over `transport`.
pub async fn client(addr: SocketAddr, transport: Transport) -> Client<TokioRuntimeProvider> {
    let provider = TokioRuntimeProvider::default();
    match transport {
        Transport::Udp => {
            let stream = UdpClientStream::builder(addr, provider)
                .with_timeout(Some(DEADLINE))
                .build();
            let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(bg);
            client
        }
        Transport::Tcp => {
            let (connect, sender) = TcpClientStream::new(addr, None, Some(DEADLINE), provider);
            let stream = tokio::time::timeout(DEADLINE, connect)
                .await
                .expect("tcp connect within the deadline")
                .expect("tcp connect");
            let (client, bg) =
                Client::<TokioRuntimeProvider>::with_timeout(stream, sender, DEADLINE);
            tokio::spawn(bg);
            client
        }
    }
}

/// One query with hickory's client; the response message whatever its RCODE.
pub async fn query(
    client: &mut Client<TokioRuntimeProvider>,
    name: &str,
    rtype: RecordType,
) -> Message {
    let name = Name::from_ascii(name).expect("query name");
    let response = tokio::time::timeout(DEADLINE, client.query(name, DNSClass::IN, rtype))
        .await
        .expect("answer within the deadline")
        .unwrap_or_else(|e| panic!("query {rtype} failed: {e}"));
    response.into_message()
}
