//! Every fuzz target (`fuzz/`, cargo-fuzz with libFuzzer) runs for a bounded time from its seed
//! corpus and finds nothing. The targets cover what clusterd parses from untrusted bytes: DNS
//! queries through the whole answer path, signed API requests and their bodies (a decoded
//! command is applied to a cluster's state), Raft RPC bodies and answers, config files, and
//! what outside programs answer (fence agents and webhooks, `postqueue -j`, certificate
//! expiry).
//!
//! Built on the stable toolchain without a sanitizer (`-s none`: libFuzzer's coverage guidance
//! still works; AddressSanitizer would need nightly, and the code has no `unsafe`).
//! `CLUSTERD_FUZZ_SECONDS` sets the time per target (default 20); longer runs are recorded in
//! BENCHMARKS.md. Needs cargo-fuzz (`.ci/run` installs it). A finding fails the test with the
//! input's bytes in the message; the input is kept in the printed directory.
#![allow(clippy::print_stderr)] // the executions per target are this test's report

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
const TARGETS: [&str; 5] = [
    "dns_query",
    "api_request",
    "raft_bodies",
    "config",
    "agent_output",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Executions reported by libFuzzer's last line ("Done N runs in S second(s)").
fn executions(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("Done "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next_back()
}

#[test]
fn every_fuzz_target_runs_its_budget_without_a_finding() -> Result<()> {
    let version = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    ensure!(
        version.contains(CARGO_FUZZ_VERSION),
        "cargo-fuzz {CARGO_FUZZ_VERSION} is needed (found {:?}); install it: \
         cargo install cargo-fuzz --locked --version {CARGO_FUZZ_VERSION}",
        version.trim()
    );
    let seconds: u64 = std::env::var("CLUSTERD_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = fuzz_dir();
    // One build for every target (a few minutes: the workspace with coverage instrumentation).
    let build = Command::new("timeout")
        .args(["1800", "cargo", "fuzz", "build", "-s", "none"])
        .current_dir(&dir)
        .output()
        .context("running cargo fuzz build")?;
    ensure!(
        build.status.success(),
        "cargo fuzz build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let work = tempfile::tempdir()?;
    let mut report = Vec::new();
    for target in TARGETS {
        // New inputs go to a scratch corpus; the seeds in the repository stay as they are.
        let scratch = work.path().join(target);
        let artifacts = work.path().join(format!("{target}-findings"));
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&artifacts)?;
        let run = Command::new("timeout")
            .arg((seconds + 300).to_string())
            .args(["cargo", "fuzz", "run", "-s", "none", target])
            .arg(&scratch)
            .arg(dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .current_dir(&dir)
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        let log = String::from_utf8_lossy(&run.stderr).into_owned();
        if !run.status.success() {
            let kept = work.keep();
            let mut findings = String::new();
            for f in std::fs::read_dir(kept.join(format!("{target}-findings")))?.flatten() {
                let bytes = std::fs::read(f.path()).unwrap_or_default();
                findings.push_str(&format!(
                    "\n{}: {}",
                    f.path().display(),
                    hex::encode(&bytes[..bytes.len().min(512)])
                ));
            }
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            bail!(
                "fuzz target {target} found a failure (inputs kept in {}):{findings}\n{}",
                kept.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let runs = executions(&log)
            .with_context(|| format!("{target}: no execution count in its output:\n{log}"))?;
        ensure!(runs > 0, "{target} ran no input");
        report.push(format!("{target}: {runs} executions in {seconds} s"));
    }
    eprintln!("{}", report.join("\n"));
    Ok(())
}
