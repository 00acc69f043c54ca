//! Out-of-band power control for tests: a Redfish BMC per node (and a webhook power API) over
//! real HTTPS, with certificates from a CA made for each run.
//!
//! [`TestCa`] makes a CA and server certificates (rcgen). [`Bmc`] is one node's power switch as
//! a BMC sees it: power state, credentials, sessions, a fault mode (answer 500, or drop every
//! connection) and a log of every power change with its instant. [`BmcServer`] serves a set of
//! BMCs over HTTPS from a listener the caller bound (in the lab: inside the switch namespace),
//! on a runtime thread of its own, so synchronous tests can use it. What "power" does is a
//! [`PowerSwitch`]: in the lab, [`LabPower`] stops every process of the node and takes its link
//! down; elsewhere a plain flag.

use clusterd::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use nix::sys::signal::Signal;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use crate::lab::netns;
use crate::lab::process::{ProcId, run};

/// A certificate authority made for one test run.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key.
#[derive(Debug)]
pub struct ServerCert {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Its private key (PKCS#8 DER).
    pub key: Vec<u8>,
}

impl TestCa {
    /// A new CA ("clusterd test BMC CA").
    pub fn new() -> Result<TestCa, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "clusterd test BMC CA");
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(|e| e.to_string())?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Write the CA certificate (PEM) to `path`.
    pub fn write_pem(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.pem())
    }

    /// A server certificate for `ips` signed by this CA.
    pub fn issue(&self, ips: &[IpAddr]) -> Result<ServerCert, String> {
        let names: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        let mut params = CertificateParams::new(names).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "clusterd test BMC");
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        Ok(ServerCert {
            cert: cert.der().clone(),
            key: key.serialize_der(),
        })
    }
}

/// What powering a node off and on does.
pub trait PowerSwitch: Send + Sync + std::fmt::Debug + 'static {
    /// Switch the node's power; the BMC reports the new state only once this returned Ok.
    fn set(&self, on: bool) -> Result<(), String>;
}

/// A power switch that only remembers its state (for tests outside the lab).
#[derive(Debug, Default)]
pub struct Flag;

impl PowerSwitch for Flag {
    fn set(&self, _on: bool) -> Result<(), String> {
        Ok(())
    }
}

/// A lab node's power: off stops every process in the node's namespace (SIGSTOP) and takes
/// its link down at the switch; on brings the link up and continues the processes.
#[derive(Debug, Clone)]
pub struct LabPower {
    /// The node's namespace.
    pub netns: String,
    /// The switch namespace.
    pub switch_netns: String,
    /// The node's port on the bridge.
    pub bridge_port: String,
}

impl LabPower {
    /// The power of lab node `name`.
    pub fn of(lab: &crate::Lab, name: &str) -> crate::lab::Result<LabPower> {
        let node = lab.node(name)?;
        Ok(LabPower {
            netns: node.netns.clone(),
            switch_netns: lab.state().switch_netns.clone(),
            bridge_port: node.bridge_port.clone(),
        })
    }

    fn signal_all(&self, sig: Signal) -> Result<(), String> {
        let me = std::process::id();
        for pid in netns::pids(&self.netns).map_err(|e| e.to_string())? {
            if pid != me
                && !test_equipment(pid, me)
                && let Some(p) = ProcId::of(pid)
            {
                p.signal(sig).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Whether `pid` is the invariant monitor's own `nft` reader (a direct child of this test
/// process inside the node's namespace): test equipment, not part of the node, so a power-off
/// leaves it running.
fn test_equipment(pid: u32, me: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 4 (ppid) follows the parenthesised command name.
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    comm.trim() == "nft" && ppid == Some(me)
}

impl PowerSwitch for LabPower {
    fn set(&self, on: bool) -> Result<(), String> {
        let link = |state: &str| {
            run(Command::new("ip").args([
                "-n",
                &self.switch_netns,
                "link",
                "set",
                &self.bridge_port,
                state,
            ]))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        if on {
            link("up")?;
            self.signal_all(Signal::SIGCONT)
        } else {
            self.signal_all(Signal::SIGSTOP)?;
            link("down")
        }
    }
}

/// How a BMC behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcMode {
    /// Answers and switches power.
    Working,
    /// Answers every request with HTTP 500.
    Failing,
    /// Drops every connection before the TLS handshake (as if unreachable).
    Unreachable,
}

/// One power change a BMC carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerEvent {
    /// When the switch had done it.
    pub at: Instant,
    /// The new state.
    pub on: bool,
    /// How it was asked: `redfish` or `webhook`.
    pub via: &'static str,
}

/// One node's BMC.
#[derive(Debug)]
pub struct Bmc {
    /// The node it powers.
    pub node: String,
    /// User name it accepts.
    pub username: String,
    /// Password it accepts.
    pub password: String,
    /// Bearer token its webhook accepts.
    pub token: String,
    switch: Box<dyn PowerSwitch>,
    on: Mutex<bool>,
    mode: Mutex<BmcMode>,
    sessions: Mutex<BTreeSet<String>>,
    log: Mutex<Vec<PowerEvent>>,
    requests: Mutex<u64>,
}

impl Bmc {
    /// A powered-on BMC for `node` with these credentials.
    pub fn new(node: &str, password: &str, token: &str, switch: Box<dyn PowerSwitch>) -> Bmc {
        Bmc {
            node: node.to_string(),
            username: "clusterd".to_string(),
            password: password.to_string(),
            token: token.to_string(),
            switch,
            on: Mutex::new(true),
            mode: Mutex::new(BmcMode::Working),
            sessions: Mutex::new(BTreeSet::new()),
            log: Mutex::new(Vec::new()),
            requests: Mutex::new(0),
        }
    }

    /// Change how it behaves.
    pub fn set_mode(&self, mode: BmcMode) {
        *lock(&self.mode) = mode;
    }

    fn mode(&self) -> BmcMode {
        *lock(&self.mode)
    }

    /// Whether the node is powered on.
    pub fn is_on(&self) -> bool {
        *lock(&self.on)
    }

    /// Every power change so far.
    pub fn log(&self) -> Vec<PowerEvent> {
        lock(&self.log).clone()
    }

    /// HTTP requests answered (in any mode but unreachable).
    pub fn requests(&self) -> u64 {
        *lock(&self.requests)
    }

    /// Switch the power as asked through `via`; Ok once done.
    pub fn power(&self, on: bool, via: &'static str) -> Result<(), String> {
        let mut state = lock(&self.on);
        if *state != on {
            self.switch.set(on)?;
            *state = on;
            lock(&self.log).push(PowerEvent {
                at: Instant::now(),
                on,
                via,
            });
        }
        Ok(())
    }

    /// Power on again if it is off (for tear-down: stopped processes cannot be ended cleanly).
    pub fn restore(&self) -> Result<(), String> {
        self.power(true, "restore")
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(token) = header("x-auth-token") {
            return lock(&self.sessions).contains(token);
        }
        let Some(basic) = header("authorization").and_then(|a| a.strip_prefix("Basic ")) else {
            return false;
        };
        decode_base64(basic).is_some_and(|d| d == format!("{}:{}", self.username, self.password))
    }
}

fn decode_base64(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The BMCs a server answers for, by node name.
type Bmcs = Arc<BTreeMap<String, Arc<Bmc>>>;

fn redfish_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": "Base.1.0.GeneralError", "message": message } })),
    )
        .into_response()
}

/// The BMC answering on the address the request came to, or the only one.
fn pick(bmcs: &Bmcs, node: Option<&str>) -> Option<Arc<Bmc>> {
    match node {
        Some(n) => bmcs.get(n).cloned(),
        None => bmcs.values().next().cloned(),
    }
}

/// Common checks: fault mode and authentication.
/// The BMC a request is for, if it exists and lets the request in (else the error answer).
fn admitted(
    bmcs: &Bmcs,
    node: Option<&str>,
    headers: &HeaderMap,
) -> Result<Arc<Bmc>, Box<Response>> {
    let bmc =
        pick(bmcs, node).ok_or_else(|| redfish_error(StatusCode::NOT_FOUND, "no such BMC"))?;
    match gate(&bmc, headers) {
        Some(refused) => Err(Box::new(refused)),
        None => Ok(bmc),
    }
}

fn gate(bmc: &Bmc, headers: &HeaderMap) -> Option<Response> {
    *lock(&bmc.requests) += 1;
    if bmc.mode() == BmcMode::Failing {
        return Some(redfish_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal BMC error (failing on purpose)",
        ));
    }
    (!bmc.authorized(headers))
        .then(|| redfish_error(StatusCode::UNAUTHORIZED, "authentication required"))
}

async fn service_root() -> Response {
    axum::Json(json!({
        "@odata.id": "/redfish/v1",
        "RedfishVersion": "1.6.0",
        "Systems": { "@odata.id": "/redfish/v1/Systems" },
        "SessionService": { "@odata.id": "/redfish/v1/SessionService" },
    }))
    .into_response()
}

async fn login(
    State((bmcs, node)): State<(Bmcs, Option<String>)>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let Some(bmc) = pick(&bmcs, node.as_deref()) else {
        return redfish_error(StatusCode::NOT_FOUND, "no such BMC");
    };
    *lock(&bmc.requests) += 1;
    if bmc.mode() == BmcMode::Failing {
        return redfish_error(StatusCode::INTERNAL_SERVER_ERROR, "internal BMC error");
    }
    if body["UserName"].as_str() != Some(&bmc.username)
        || body["Password"].as_str() != Some(&bmc.password)
    {
        return redfish_error(StatusCode::UNAUTHORIZED, "bad user name or password");
    }
    let token = hex::encode(rand::random::<[u8; 16]>());
    let id = lock(&bmc.sessions).len() + 1;
    lock(&bmc.sessions).insert(token.clone());
    (
        StatusCode::CREATED,
        [
            ("X-Auth-Token", token),
            (
                "Location",
                format!("/redfish/v1/SessionService/Sessions/{id}"),
            ),
        ],
        axum::Json(json!({ "Id": id.to_string(), "UserName": bmc.username })),
    )
        .into_response()
}

async fn logout(
    State((bmcs, node)): State<(Bmcs, Option<String>)>,
    headers: HeaderMap,
    UrlPath(_id): UrlPath<String>,
) -> Response {
    let bmc = match admitted(&bmcs, node.as_deref(), &headers) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Some(t) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        lock(&bmc.sessions).remove(t);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn systems(
    State((bmcs, node)): State<(Bmcs, Option<String>)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admitted(&bmcs, node.as_deref(), &headers) {
        return *r;
    }
    axum::Json(json!({
        "@odata.id": "/redfish/v1/Systems",
        "Members@odata.count": 1,
        "Members": [{ "@odata.id": "/redfish/v1/Systems/1" }],
    }))
    .into_response()
}

async fn system(
    State((bmcs, node)): State<(Bmcs, Option<String>)>,
    headers: HeaderMap,
) -> Response {
    let bmc = match admitted(&bmcs, node.as_deref(), &headers) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    axum::Json(json!({
        "@odata.id": "/redfish/v1/Systems/1",
        "Id": "1",
        "HostName": bmc.node,
        "PowerState": if bmc.is_on() { "On" } else { "Off" },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown"],
            }
        },
    }))
    .into_response()
}

async fn reset(
    State((bmcs, node)): State<(Bmcs, Option<String>)>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let bmc = match admitted(&bmcs, node.as_deref(), &headers) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let on = match body["ResetType"].as_str() {
        Some("On") => true,
        Some("ForceOff") => false,
        other => {
            return redfish_error(
                StatusCode::BAD_REQUEST,
                &format!("ResetType {other:?} is not supported here"),
            );
        }
    };
    // Redfish answers before the state settles; here the switch is done when this returns.
    match bmc.power(on, "redfish") {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => redfish_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn webhook(
    State((bmcs, _)): State<(Bmcs, Option<String>)>,
    headers: HeaderMap,
    UrlPath((node, action)): UrlPath<(String, String)>,
    body: String,
) -> Response {
    let Some(bmc) = bmcs.get(&node).cloned() else {
        return (StatusCode::NOT_FOUND, format!("no machine {node}")).into_response();
    };
    *lock(&bmc.requests) += 1;
    if bmc.mode() == BmcMode::Failing {
        return (StatusCode::SERVICE_UNAVAILABLE, "power API unavailable").into_response();
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "));
    if bearer != Some(bmc.token.as_str()) {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if parsed["node"].as_str() != Some(node.as_str()) || parsed["action"].as_str() != Some(&action)
    {
        return (
            StatusCode::BAD_REQUEST,
            format!("body does not name {node} and {action}: {body}"),
        )
            .into_response();
    }
    let on = match action.as_str() {
        "on" => true,
        "off" => false,
        _ => return (StatusCode::BAD_REQUEST, "action is on or off").into_response(),
    };
    match bmc.power(on, "webhook") {
        Ok(()) => axum::Json(json!({ "node": node, "power": action })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

fn router(bmcs: Bmcs, node: Option<String>) -> Router {
    Router::new()
        .route("/redfish/v1", get(service_root))
        .route("/redfish/v1/SessionService/Sessions", post(login))
        .route("/redfish/v1/SessionService/Sessions/{id}", delete(logout))
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/1", get(system))
        .route(
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .route("/webhook/{node}/{action}", post(webhook))
        .with_state((bmcs, node))
}

/// Accepts TCP, drops it in unreachable mode, completes the TLS handshake otherwise.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    bmc: Option<Arc<Bmc>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if self
                .bmc
                .as_ref()
                .is_some_and(|b| b.mode() == BmcMode::Unreachable)
            {
                drop(tcp);
                continue;
            }
            let handshake = self.tls.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// HTTPS servers for BMCs, on a runtime thread of their own; stopped when dropped.
#[derive(Debug)]
pub struct BmcServer {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    /// Where each listener listens.
    pub addrs: Vec<SocketAddr>,
}

impl BmcServer {
    /// Serve on each `(listener, bmc)`: the listener answers for that BMC's Redfish and for
    /// every BMC's webhook. `listeners` were bound by the caller (e.g. inside a namespace).
    pub fn start(
        cert: &ServerCert,
        listeners: Vec<(std::net::TcpListener, Arc<Bmc>)>,
    ) -> Result<BmcServer, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone())),
            )
            .map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let all: Bmcs = Arc::new(
            listeners
                .iter()
                .map(|(_, b)| (b.node.clone(), b.clone()))
                .collect(),
        );
        let mut addrs = Vec::new();
        for (l, _) in &listeners {
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            addrs.push(l.local_addr().map_err(|e| e.to_string())?);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("bmc-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (l, bmc) in listeners {
                        let tcp = match tokio::net::TcpListener::from_std(l) {
                            Ok(t) => t,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return;
                            }
                        };
                        let listener = TlsListener {
                            tcp,
                            tls: acceptor.clone(),
                            bmc: Some(bmc.clone()),
                        };
                        let app = router(all.clone(), Some(bmc.node.clone()));
                        let mut stop = stop_rx.clone();
                        tasks.push(tokio::spawn(async move {
                            let _ = axum::serve(listener, app)
                                .with_graceful_shutdown(async move {
                                    let _ = stop.wait_for(|s| *s).await;
                                })
                                .await;
                        }));
                    }
                    let _ = ready_tx.send(Ok(()));
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(BmcServer {
                stop: Some(stop_tx),
                thread: Some(thread),
                addrs,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the BMC server did not start within 10 s".into()),
        }
    }
}

impl Drop for BmcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        // Open keep-alive connections end when the runtime drops with the thread; bounded by
        // graceful shutdown, which waits for in-flight requests only.
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Bind a TCP listener on `addr` inside network namespace `ns` (the socket stays there).
pub fn bind_in(ns: &str, addr: SocketAddr) -> crate::lab::Result<std::net::TcpListener> {
    netns::run_in(ns, move || std::net::TcpListener::bind(addr))?
        .map_err(|e| crate::LabError::State(format!("binding {addr} in namespace {ns}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        // "clusterd:pw" in base64.
        assert_eq!(
            decode_base64("Y2x1c3RlcmQ6cHc=").as_deref(),
            Some("clusterd:pw")
        );
        assert_eq!(decode_base64("***"), None);
    }
}
