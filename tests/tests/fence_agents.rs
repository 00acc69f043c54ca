//! The fence agents against real counterparts on loopback: the Redfish agent against a Redfish
//! BMC over HTTPS (CA file, pinned certificate, session and basic auth), the exec agent against
//! real scripts in the fence-agents calling convention, the webhook agent against a real HTTPS
//! power API with a bearer token. No root needed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clusterd_fencing::exec::{Exec, ExecConfig, OptionsVia};
use clusterd_fencing::redfish::{Redfish, RedfishAuth, RedfishConfig};
use clusterd_fencing::webhook::{Webhook, WebhookConfig};
use clusterd_fencing::{FenceError, FenceOptions, Fencer, PowerAction, Trust, fence};
use clusterd_tests::bmc::{Bmc, BmcMode, BmcServer, Flag, TestCa};

const PASSWORD: &str = "bmc-pass-7Qx";
const TOKEN: &str = "api-token-k2P";

struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
    bmc: Arc<Bmc>,
    server: BmcServer,
    fingerprint: [u8; 32],
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new().unwrap();
        let cert = ca.issue(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
        let fingerprint = clusterd_fencing::tls::fingerprint(cert.cert.as_ref());
        let bmc = Arc::new(Bmc::new("mx2", PASSWORD, TOKEN, Box::new(Flag)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = BmcServer::start(&cert, vec![(listener, bmc.clone())]).unwrap();
        ca.write_pem(&dir.path().join("ca.pem")).unwrap();
        secret(&dir.path().join("bmc.pass"), PASSWORD);
        secret(&dir.path().join("api.token"), TOKEN);
        Setup {
            dir,
            ca,
            bmc,
            server,
            fingerprint,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addrs[0]
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn redfish(&self, auth: RedfishAuth, trust: Trust) -> Redfish {
        Redfish::new(RedfishConfig {
            url: format!("https://{}", self.addr()),
            system: None,
            username: "clusterd".into(),
            password_file: self.path("bmc.pass"),
            auth,
            trust,
            request_timeout: Duration::from_secs(5),
            poll_every: Duration::from_millis(50),
        })
        .unwrap()
    }

    fn ca_trust(&self) -> Trust {
        Trust::CaFile(self.path("ca.pem"))
    }
}

fn secret(path: &Path, value: &str) {
    std::fs::write(path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn options(power_on_after: bool) -> FenceOptions {
    FenceOptions {
        timeout: Duration::from_secs(10),
        power_on_after,
    }
}

#[tokio::test]
async fn redfish_force_off_over_a_session_is_confirmed_by_power_state() {
    let s = Setup::new();
    let agent = s.redfish(RedfishAuth::Session, s.ca_trust());
    let reply = fence(&agent, &options(false)).await.unwrap();
    assert!(!s.bmc.is_on());
    assert!(
        reply.contains("Reset ForceOff accepted") && reply.contains("PowerState Off"),
        "{reply}"
    );
    let log = s.bmc.log();
    assert_eq!(log.len(), 1);
    assert!(!log[0].on && log[0].via == "redfish");
}

#[tokio::test]
async fn redfish_with_basic_auth_powers_on_again_when_asked() {
    let s = Setup::new();
    let agent = s.redfish(RedfishAuth::Basic, s.ca_trust());
    let reply = fence(&agent, &options(true)).await.unwrap();
    let states: Vec<bool> = s.bmc.log().iter().map(|e| e.on).collect();
    assert_eq!(states, vec![false, true], "{reply}");
    assert!(reply.contains("powered on again"), "{reply}");
}

#[tokio::test]
async fn redfish_on_an_already_off_node_sends_no_reset() {
    let s = Setup::new();
    s.bmc.power(false, "test").unwrap();
    let agent = s.redfish(RedfishAuth::Session, s.ca_trust());
    let reply = agent.power(PowerAction::Off).await.unwrap();
    assert!(reply.contains("already Off"), "{reply}");
    assert_eq!(s.bmc.log().len(), 1, "only the test's own power-off");
}

#[tokio::test]
async fn redfish_with_a_wrong_password_is_refused_and_never_shows_it() {
    let s = Setup::new();
    secret(&s.path("bmc.pass"), "wrong-password-zz");
    for auth in [RedfishAuth::Session, RedfishAuth::Basic] {
        let err = s
            .redfish(auth, s.ca_trust())
            .power(PowerAction::Off)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP 401"), "{err}");
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("wrong-password-zz"), "{err}");
    }
    assert!(s.bmc.is_on());
}

#[tokio::test]
async fn redfish_against_a_failing_bmc_fails_and_switches_nothing() {
    let s = Setup::new();
    s.bmc.set_mode(BmcMode::Failing);
    let err = fence(
        &s.redfish(RedfishAuth::Basic, s.ca_trust()),
        &options(false),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FenceError::Http { status: 500, .. }), "{err}");
    assert!(s.bmc.is_on());
}

#[tokio::test]
async fn redfish_against_an_unreachable_bmc_says_it_did_not_answer() {
    let s = Setup::new();
    s.bmc.set_mode(BmcMode::Unreachable);
    let err = fence(
        &s.redfish(RedfishAuth::Basic, s.ca_trust()),
        &options(false),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FenceError::Unreachable { .. }), "{err}");
    assert!(s.bmc.is_on());
}

#[tokio::test]
async fn a_pinned_certificate_is_trusted_and_any_other_refused() {
    let s = Setup::new();
    let pinned = s.redfish(RedfishAuth::Basic, Trust::PinSha256(s.fingerprint));
    pinned.power(PowerAction::Off).await.unwrap();
    assert!(!s.bmc.is_on());

    let other = s.redfish(RedfishAuth::Basic, Trust::PinSha256([7; 32]));
    let err = other.power(PowerAction::On).await.unwrap_err().to_string();
    assert!(err.contains("not the pinned"), "{err}");
    assert!(!s.bmc.is_on(), "nothing reached the BMC");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_the_system_store_does_not_trust_it() {
    let s = Setup::new();
    let other = TestCa::new().unwrap();
    other.write_pem(&s.path("other-ca.pem")).unwrap();
    let agent = s.redfish(RedfishAuth::Basic, Trust::CaFile(s.path("other-ca.pem")));
    let err = agent.power(PowerAction::Off).await.unwrap_err();
    assert!(matches!(err, FenceError::Unreachable { .. }), "{err}");
    let agent = s.redfish(RedfishAuth::Basic, Trust::System);
    assert!(agent.power(PowerAction::Off).await.is_err());
    assert!(s.bmc.is_on());
    assert_eq!(s.bmc.requests(), 0);
    drop(s.ca);
}

/// A fence-agents style script: logs its stdin, arguments and environment, then exits with
/// `exit_code` after printing `say`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exec_agent(command: Vec<String>, via: OptionsVia, password: Option<PathBuf>) -> Exec {
    Exec::new(ExecConfig {
        node: "mx2".into(),
        command,
        options: [("plug".to_string(), "mx2".to_string())].into(),
        via,
        password_file: password,
    })
}

#[tokio::test]
async fn exec_speaks_the_fence_agents_stdin_convention() {
    let s = Setup::new();
    let log = s.path("stdin.log");
    let prog = script(
        s.dir.path(),
        "fence_test",
        &format!(
            "cat > {}\necho \"node=$CLUSTERD_FENCE_NODE action=$CLUSTERD_FENCE_ACTION\" >> {}\n\
             echo \"Success: Powered OFF (password was {PASSWORD})\"",
            log.display(),
            log.display()
        ),
    );
    let agent = exec_agent(
        vec![prog.display().to_string()],
        OptionsVia::Stdin,
        Some(s.path("bmc.pass")),
    );
    let reply = fence(&agent, &options(false)).await.unwrap();
    let seen = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        seen,
        format!("action=off\nplug=mx2\npassword={PASSWORD}\nnode=mx2 action=off\n")
    );
    assert!(reply.contains("Success: Powered OFF"), "{reply}");
    assert!(!reply.contains(PASSWORD), "the password leaked: {reply}");
}

#[tokio::test]
async fn exec_command_line_form_passes_the_options_as_arguments() {
    let s = Setup::new();
    let log = s.path("args.log");
    let prog = script(
        s.dir.path(),
        "fence_args",
        &format!("echo \"$@\" > {}", log.display()),
    );
    let agent = exec_agent(
        vec![prog.display().to_string(), "--verbose".into()],
        OptionsVia::Args,
        None,
    );
    agent.power(PowerAction::On).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "--verbose --action=on --plug=mx2\n"
    );
}

#[tokio::test]
async fn exec_failure_reports_the_exit_code_and_the_output() {
    let s = Setup::new();
    let prog = script(
        s.dir.path(),
        "fence_fail",
        "cat >/dev/null; echo 'Failed: Unable to obtain correct plug status' >&2; exit 1",
    );
    let agent = exec_agent(vec![prog.display().to_string()], OptionsVia::Stdin, None);
    let err = fence(&agent, &options(false))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited with code 1"), "{err}");
    assert!(
        err.contains("Unable to obtain correct plug status"),
        "{err}"
    );
}

#[tokio::test]
async fn exec_past_its_deadline_is_a_timeout_and_the_command_is_ended() {
    let s = Setup::new();
    let pidfile = s.path("pid");
    let prog = script(
        s.dir.path(),
        "fence_hang",
        &format!("echo $$ > {}\nexec sleep 30", pidfile.display()),
    );
    let agent = exec_agent(vec![prog.display().to_string()], OptionsVia::Stdin, None);
    let quick = FenceOptions {
        timeout: Duration::from_millis(500),
        power_on_after: false,
    };
    let err = fence(&agent, &quick).await.unwrap_err();
    assert!(matches!(err, FenceError::Timeout { .. }), "{err}");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let gone = (0..100).any(|_| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie_or_gone = stat.is_empty() || stat.contains(") Z");
        if !zombie_or_gone {
            std::thread::sleep(Duration::from_millis(50));
        }
        zombie_or_gone
    });
    assert!(gone, "the abandoned fence command {pid} still runs");
}

fn webhook(s: &Setup, token: Option<PathBuf>) -> Webhook {
    Webhook::new(WebhookConfig {
        node: "mx2".into(),
        url: format!("https://{}/webhook/{{node}}/{{action}}", s.addr()),
        body: clusterd::config::DEFAULT_WEBHOOK_BODY.into(),
        content_type: "application/json".into(),
        token_file: token,
        trust: Trust::PinSha256(s.fingerprint),
        request_timeout: Duration::from_secs(5),
    })
    .unwrap()
}

#[tokio::test]
async fn webhook_posts_the_template_with_the_bearer_token() {
    let s = Setup::new();
    let reply = fence(&webhook(&s, Some(s.path("api.token"))), &options(true))
        .await
        .unwrap();
    let log = s.bmc.log();
    let seen: Vec<(bool, &str)> = log.iter().map(|e| (e.on, e.via)).collect();
    assert_eq!(seen, vec![(false, "webhook"), (true, "webhook")], "{reply}");
    assert!(reply.contains("HTTP 200"), "{reply}");
}

#[tokio::test]
async fn webhook_without_the_right_token_fails_without_showing_it() {
    let s = Setup::new();
    let err = fence(&webhook(&s, None), &options(false))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 401"), "{err}");
    secret(&s.path("wrong.token"), "wrong-token-qq");
    let err = fence(&webhook(&s, Some(s.path("wrong.token"))), &options(false))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 401") && !err.contains("wrong-token-qq"),
        "{err}"
    );
    assert!(s.bmc.is_on());
}
