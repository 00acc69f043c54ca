//! Fencing in the lab: every mail node has a Redfish BMC (real HTTPS with a CA made for this
//! run, which the clusterd configs trust through `ca_file`) or a webhook power API, whose
//! power-off really stops the node (every process in its namespace stopped, its link down).
//! The invariant monitors run throughout: no address ever has two holders, and the new owner
//! never serves a fenced node's address before the power-off.
// What the tests saw is part of their report.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::bmc::{Bmc, BmcMode, BmcServer, LabPower, TestCa, bind_in};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::{HolderTimeline, Monitors};
use clusterd_tests::{Fault, LabSpec};
use serde_json::Value;

const PASSWORD: &str = "lab-bmc-password-4Rt";
const TOKEN: &str = "lab-power-api-token-9Kd";
const FLOATING_MX2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 102);

/// The BMC address of mail node `i` (on the lab's switch, like a management port).
fn bmc_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 230 + i)
}

/// A lab whose mail nodes have BMCs. Powers every node back on before tearing down.
struct FencedLab {
    bmcs: BTreeMap<String, Arc<Bmc>>,
    _server: BmcServer,
    lab: TestLab,
    _dir: tempfile::TempDir,
}

impl Drop for FencedLab {
    fn drop(&mut self) {
        for bmc in self.bmcs.values() {
            // Stopped processes could not be ended cleanly by the teardown.
            let _ = bmc.restore();
        }
    }
}

/// Files the fencing sections refer to.
struct Files {
    ca: String,
    password: String,
    token: String,
    fingerprint: String,
}

/// Bring up the default lab (mx1, mx2, w1) with `[fencing.nodes.NAME]` from `agent(node, i,
/// files)` for each mail node.
fn fenced_lab(agent: impl Fn(&str, u8, &Files) -> String) -> Result<FencedLab> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new().map_err(anyhow::Error::msg)?;
    let cert = ca
        .issue(&[IpAddr::V4(bmc_ip(1)), IpAddr::V4(bmc_ip(2))])
        .map_err(anyhow::Error::msg)?;
    let write_secret = |name: &str, value: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path.display().to_string())
    };
    let files = Files {
        ca: {
            let path = dir.path().join("bmc-ca.pem");
            ca.write_pem(&path)?;
            path.display().to_string()
        },
        password: write_secret("bmc.pass", PASSWORD)?,
        token: write_secret("power-api.token", TOKEN)?,
        fingerprint: hex_colons(&clusterd_fencing::tls::fingerprint(cert.cert.as_ref())),
    };
    let mut extra =
        String::from("[fencing]\ntimeout = \"20s\"\nretry_first = \"500ms\"\nretry_max = \"2s\"\n");
    for (i, node) in [(1u8, "mx1"), (2, "mx2")] {
        extra.push_str(&format!(
            "\n[fencing.nodes.{node}]\n{}",
            agent(node, i, &files)
        ));
    }
    let lab = TestLab::up(LabSpec {
        extra_config: extra,
        ..LabSpec::default()
    })?;
    let switch = lab.state().switch_netns.clone();
    let bridge = lab.state().bridge.clone();
    let mut listeners = Vec::new();
    let mut bmcs = BTreeMap::new();
    for (i, node) in [(1u8, "mx1"), (2, "mx2")] {
        let ip = bmc_ip(i);
        run(Command::new("ip").args([
            "-n",
            &switch,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &bridge,
        ]))?;
        let listener = bind_in(&switch, SocketAddr::new(IpAddr::V4(ip), 443))?;
        let power = LabPower::of(&lab, node)?;
        let bmc = Arc::new(Bmc::new(node, PASSWORD, TOKEN, Box::new(power)));
        bmcs.insert(node.to_string(), bmc.clone());
        listeners.push((listener, bmc));
    }
    let server = BmcServer::start(&cert, listeners).map_err(anyhow::Error::msg)?;
    Ok(FencedLab {
        bmcs,
        _server: server,
        lab,
        _dir: dir,
    })
}

fn hex_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn redfish_agent(node: &str, i: u8, f: &Files) -> String {
    // mx1 logs in with a session, mx2 with basic auth: both ways are exercised.
    let auth = if node == "mx1" { "session" } else { "basic" };
    format!(
        "agent = \"redfish\"\nurl = \"https://{}\"\nusername = \"clusterd\"\n\
         password_file = \"{}\"\nauth = \"{auth}\"\nca_file = \"{}\"\n",
        bmc_ip(i),
        f.password,
        f.ca
    )
}

/// Poll `f` every 100 ms until it gives a value, for at most `within`.
fn wait_for<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    let mut last = String::from("not checked yet");
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("{what} did not happen within {within:?} (last error: {last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which node's IMAP greeting the client gets on `ip`, if any.
fn greeter(lab: &TestLab, ip: Ipv4Addr) -> Option<String> {
    let addr = SocketAddr::new(IpAddr::V4(ip), 143);
    let answer = lab
        .greeting_from("client", addr, Duration::from_millis(300))
        .ok()?;
    clusterd_tests::probe::greeting_node(&answer.ok()?)
}

/// The replicated history as node `via` has it.
fn history(lab: &TestLab, via: &str) -> Result<Vec<Value>> {
    let text = lab.clusterctl(via, &["history", "--json"])?;
    Ok(serde_json::from_str(&text)?)
}

fn seq_of(events: &[Value], pred: impl Fn(&Value) -> bool) -> Option<(u64, u64)> {
    events.iter().find(|e| pred(&e["kind"])).map(|e| {
        (
            e["seq"].as_u64().unwrap_or(0),
            e["at_ms"].as_u64().unwrap_or(0),
        )
    })
}

/// The history must have mx2's fence recorded before the takeover of its address by mx1.
fn assert_fenced_before_takeover(events: &[Value]) -> Result<()> {
    let fenced = seq_of(events, |k| k["type"] == "fenced" && k["node"] == "mx2")
        .context("no `fenced` event for mx2 in the history")?;
    let started = seq_of(events, |k| {
        k["type"] == "fence_started" && k["node"] == "mx2"
    })
    .context("no `fence_started` event for mx2")?;
    let takeover = seq_of(events, |k| {
        k["type"] == "owner_changed" && k["ip"] == "192.0.2.102/24" && k["to"] == "mx1"
    })
    .context("no takeover of 192.0.2.102/24 by mx1 in the history")?;
    ensure!(
        started.0 < fenced.0 && fenced.0 < takeover.0 && fenced.1 <= takeover.1,
        "history order is wrong: fence started #{} at {}, fenced #{} at {}, takeover #{} at {}",
        started.0,
        started.1,
        fenced.0,
        fenced.1,
        takeover.0,
        takeover.1
    );
    Ok(())
}

/// When (since `t0`) the address sampler first saw mx1 holding mx2's floating address.
fn first_held_by_mx1(timeline: &HolderTimeline) -> Option<Duration> {
    let ip = IpAddr::V4(FLOATING_MX2);
    timeline
        .changes
        .iter()
        .find(|(_, holders)| holders.get(&ip).is_some_and(|h| h.contains("mx1")))
        .map(|(at, _)| *at)
}

#[test]
fn frozen_owner_is_fenced_over_redfish_before_its_address_moves() -> Result<()> {
    let mut f = fenced_lab(redfish_agent)?;
    wait_for(
        "mx2 serving its home address",
        Duration::from_secs(20),
        || Ok((greeter(&f.lab, FLOATING_MX2).as_deref() == Some("mx2")).then_some(())),
    )?;
    // Taken before the sampler starts, so `t0 + offset` is never later than the real sample.
    let t0 = Instant::now();
    let monitors = Monitors::start(&f.lab)?;

    f.lab.fault("mx2", Fault::Stop)?;
    let frozen = Instant::now();
    wait_for("mx1 serving 192.0.2.102", Duration::from_secs(40), || {
        Ok((greeter(&f.lab, FLOATING_MX2).as_deref() == Some("mx1")).then_some(()))
    })?;
    eprintln!(
        "mx2 frozen; fenced and replaced by mx1 after {:?}",
        frozen.elapsed()
    );

    let bmc = &f.bmcs["mx2"];
    ensure!(!bmc.is_on(), "mx2's BMC reports it powered on");
    let off = bmc
        .log()
        .iter()
        .find(|e| !e.on && e.via == "redfish")
        .map(|e| e.at)
        .context("mx2's BMC never switched it off")?;
    ensure!(f.bmcs["mx1"].log().is_empty(), "mx1 was powered off too");
    std::thread::sleep(Duration::from_millis(500));
    let timeline = monitors.finish()?.addresses;
    let taken = first_held_by_mx1(&timeline)
        .with_context(|| format!("the sampler never saw mx1 hold .102: {}", timeline.report()))?;
    ensure!(
        t0 + taken > off,
        "mx1 held 192.0.2.102 {:?} before mx2 was powered off",
        off.saturating_duration_since(t0 + taken)
    );
    eprintln!(
        "power-off to first sample of mx1 holding the address: {:?}",
        (t0 + taken).saturating_duration_since(off)
    );
    assert_fenced_before_takeover(&history(&f.lab, "mx1")?)?;
    let status = f.lab.cluster_status("mx1")?;
    ensure!(
        status.addresses.to_string().contains("\"owner\":\"mx1\""),
        "status does not show mx1 owning the address: {}",
        status.addresses
    );
    Ok(())
}

/// mx2's fencing entry in `status --json` on mx1, if any.
fn fencing_of_mx2(f: &FencedLab) -> Result<Option<Value>> {
    let text = f.lab.clusterctl("mx1", &["status", "--json"])?;
    let v: Value = serde_json::from_str(&text)?;
    Ok(v["fencing"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["node"] == "mx2").cloned()))
}

fn owner_of_mx2_address(f: &FencedLab) -> Result<String> {
    let status = f.lab.cluster_status("mx1")?;
    let owner = status
        .addresses
        .as_array()
        .and_then(|a| a.iter().find(|x| x["ip"] == "192.0.2.102/24"))
        .and_then(|a| a["owner"].as_str())
        .unwrap_or("nobody")
        .to_string();
    Ok(owner)
}

#[test]
fn failed_fence_blocks_the_takeover_until_the_bmc_works_again() -> Result<()> {
    let mut f = fenced_lab(redfish_agent)?;
    wait_for(
        "mx2 serving its home address",
        Duration::from_secs(20),
        || Ok((greeter(&f.lab, FLOATING_MX2).as_deref() == Some("mx2")).then_some(())),
    )?;
    let monitors = Monitors::start(&f.lab)?;
    let bmc = f.bmcs["mx2"].clone();
    bmc.set_mode(BmcMode::Failing);
    f.lab.fault("mx2", Fault::Stop)?;

    // The BMC answers 500: the fence fails, is retried, and the address stays with mx2.
    let failed = wait_for("two failed fences of mx2", Duration::from_secs(40), || {
        Ok(fencing_of_mx2(&f)?
            .filter(|r| r["state"] == "failed" && r["attempt"].as_u64() >= Some(2)))
    })?;
    ensure!(
        failed["detail"].as_str().unwrap_or("").contains("HTTP 500"),
        "the failure does not carry the BMC's answer: {failed}"
    );
    ensure!(
        failed["blocked_addresses"] == serde_json::json!(["192.0.2.102/24"]),
        "status does not say which address is blocked: {failed}"
    );
    let table = f.lab.clusterctl("mx1", &["status"])?;
    ensure!(
        table.contains("FENCING OF mx2 FAILED") && table.contains("BLOCKED"),
        "the status table does not show the failed fence loudly:\n{table}"
    );
    ensure!(
        owner_of_mx2_address(&f)? == "mx2",
        "the address moved without a fence"
    );

    // Unreachable now: still blocked, and the error says so.
    bmc.set_mode(BmcMode::Unreachable);
    wait_for(
        "a fence failing as unreachable",
        Duration::from_secs(30),
        || {
            Ok(fencing_of_mx2(&f)?.filter(|r| {
                r["state"] == "failed"
                    && r["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains("did not answer")
            }))
        },
    )?;
    ensure!(
        bmc.is_on() && bmc.log().is_empty(),
        "mx2 was switched while its BMC failed"
    );
    ensure!(
        owner_of_mx2_address(&f)? == "mx2",
        "the address moved without a fence"
    );
    ensure!(
        greeter(&f.lab, FLOATING_MX2).as_deref() != Some("mx1"),
        "mx1 serves the address without a fence of mx2"
    );

    // The BMC works again: the next retry fences, and only then does mx1 take over.
    bmc.set_mode(BmcMode::Working);
    let fixed = Instant::now();
    wait_for("mx1 serving 192.0.2.102", Duration::from_secs(40), || {
        Ok((greeter(&f.lab, FLOATING_MX2).as_deref() == Some("mx1")).then_some(()))
    })?;
    eprintln!(
        "BMC fixed; mx1 serves mx2's address after {:?}",
        fixed.elapsed()
    );
    ensure!(!bmc.is_on(), "mx2 is not powered off");
    std::thread::sleep(Duration::from_millis(500));
    monitors.finish()?;
    let events = history(&f.lab, "mx1")?;
    assert_fenced_before_takeover(&events)?;
    let failures = events
        .iter()
        .filter(|e| e["kind"]["type"] == "fence_failed" && e["kind"]["node"] == "mx2")
        .count();
    ensure!(failures >= 3, "only {failures} failed fences recorded");
    Ok(())
}

#[test]
fn webhook_agent_fences_a_frozen_owner_before_its_address_moves() -> Result<()> {
    // mx2: the webhook power API (pinned certificate, bearer token); mx1: Redfish.
    let mut f = fenced_lab(|node, i, files| {
        if node == "mx2" {
            format!(
                "agent = \"webhook\"\nurl = \"https://{}/webhook/{{node}}/{{action}}\"\n\
                 token_file = \"{}\"\npin_sha256 = \"{}\"\n",
                bmc_ip(i),
                files.token,
                files.fingerprint
            )
        } else {
            redfish_agent(node, i, files)
        }
    })?;
    wait_for(
        "mx2 serving its home address",
        Duration::from_secs(20),
        || Ok((greeter(&f.lab, FLOATING_MX2).as_deref() == Some("mx2")).then_some(())),
    )?;
    let monitors = Monitors::start(&f.lab)?;
    f.lab.fault("mx2", Fault::Stop)?;
    wait_for("mx1 serving 192.0.2.102", Duration::from_secs(40), || {
        Ok((greeter(&f.lab, FLOATING_MX2).as_deref() == Some("mx1")).then_some(()))
    })?;
    let log = f.bmcs["mx2"].log();
    ensure!(
        log.first().is_some_and(|e| !e.on && e.via == "webhook"),
        "mx2 was not powered off through the webhook: {log:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    monitors.finish()?;
    let events = history(&f.lab, "mx1")?;
    assert_fenced_before_takeover(&events)?;
    let reply = events
        .iter()
        .find(|e| e["kind"]["type"] == "fenced")
        .map(|e| e["kind"]["reply"].to_string())
        .unwrap_or_default();
    ensure!(
        reply.contains("HTTP 200"),
        "the webhook's answer is not recorded: {reply}"
    );
    Ok(())
}
