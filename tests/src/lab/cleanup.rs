//! Tearing labs down (SIGKILL to everything inside the lab's namespaces, then delete them), sweeping the leftovers of crashed runs, and listing what is left.
//!
//! Only things whose names carry a run prefix are ever touched, and only processes that live in
//! our namespaces (which only the lab starts processes in) or that the state file records by pid
//! and start time are ended. A lab whose owner process still runs, or that `lab up` left running
//! on purpose (no owner), is never swept.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::error::{IoContext, LabError, Result};
use super::netns;
use super::process::{ProcId, run, wait_until};
use super::state::{LabState, run_prefix_of};

/// Stop everything the lab started and remove its namespaces and run directory.
/// Keeps going after errors and reports the first one.
pub fn teardown(state: &LabState) -> Result<()> {
    let mut first: Option<LabError> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r
            && first.is_none()
        {
            first = Some(e);
        }
    };
    // No graceful stops: the namespaces and the run directory are about to go, so nothing a
    // daemon would clean up on SIGTERM matters, and SIGKILL is immediate.
    for node in &state.nodes {
        for p in [node.clusterd, node.dovecot].into_iter().flatten() {
            note(p.signal(Signal::SIGKILL));
        }
    }
    for ns in state.namespaces() {
        note(kill_namespace_processes(&ns));
    }
    for ns in state.namespaces() {
        note(netns::delete(&ns));
    }
    note(remove_run_dir(&state.run_dir, &state.prefix));
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// SIGKILL every process still inside namespace `ns` and wait (bounded) until none is left.
pub fn kill_namespace_processes(ns: &str) -> Result<()> {
    if run_prefix_of(ns).is_none() {
        return Err(LabError::State(format!(
            "refusing to end processes in `{ns}`: not a lab namespace"
        )));
    }
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let pids = netns::pids(ns).unwrap_or_default();
        for pid in &pids {
            if let Some(p) = ProcId::of(*pid) {
                let _ = p.signal(Signal::SIGKILL);
            }
        }
        pids.iter().all(|p| ProcId::of(*p).is_none())
    });
    if gone {
        Ok(())
    } else {
        Err(LabError::Timeout {
            what: format!("processes in namespace {ns} to exit"),
            after: Duration::from_secs(10),
        })
    }
}

fn remove_run_dir(dir: &Path, prefix: &str) -> Result<()> {
    if dir.file_name().and_then(|n| n.to_str()) != Some(prefix) {
        return Err(LabError::State(format!(
            "refusing to remove {}: not named after run {prefix}",
            dir.display()
        )));
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).ctx(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// What the sweeper did.
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    /// Run prefixes that were removed.
    pub removed: Vec<String>,
    /// Run prefixes left alone because their owner runs or they were left up on purpose.
    pub kept: Vec<String>,
}

/// Remove the leftovers of crashed runs under `run_root`: runs whose owner process is gone, and
/// prefixed namespaces with no run directory at all.
pub fn sweep(run_root: &Path) -> Result<SweepReport> {
    let mut prefixes = BTreeSet::new();
    for ns in netns::list()? {
        if let Some(p) = run_prefix_of(&ns) {
            prefixes.insert(p.to_owned());
        }
    }
    if let Ok(entries) = std::fs::read_dir(run_root) {
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str()
                && run_prefix_of(name) == Some(name)
            {
                prefixes.insert(name.to_owned());
            }
        }
    }
    let mut report = SweepReport::default();
    for prefix in prefixes {
        let dir = run_root.join(&prefix);
        match LabState::load(&dir) {
            Ok(state) => {
                let abandoned = state.owner.is_some_and(|o| !o.alive());
                if abandoned {
                    teardown(&state)?;
                    report.removed.push(prefix);
                } else {
                    report.kept.push(prefix);
                }
            }
            Err(_) if dir.join(super::state::STATE_FILE).exists() => {
                // A state file we cannot read: leave it for a human rather than guess.
                report.kept.push(prefix);
            }
            Err(_) => {
                remove_by_prefix(&prefix)?;
                if dir.exists() {
                    remove_run_dir(&dir, &prefix)?;
                }
                report.removed.push(prefix);
            }
        }
    }
    Ok(report)
}

/// Remove every namespace (and the processes inside) named with `prefix`.
fn remove_by_prefix(prefix: &str) -> Result<()> {
    let mut names: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| run_prefix_of(n) == Some(prefix))
        .collect();
    // Switch last, so the bridge goes after its ports.
    names.sort_by_key(|n| n.ends_with("-switch"));
    for ns in &names {
        kill_namespace_processes(ns)?;
    }
    for ns in &names {
        netns::delete(ns)?;
    }
    Ok(())
}

/// Everything that still exists for run `prefix` (empty when a run was removed cleanly):
/// namespaces, host interfaces and mounts named with the prefix, processes inside the run's
/// namespaces or recorded by the state, and the run directory.
pub fn leftovers(state: &LabState) -> Vec<String> {
    let prefix = state.prefix.as_str();
    let mut left = Vec::new();
    for ns in netns::list().unwrap_or_default() {
        if run_prefix_of(&ns) == Some(prefix) {
            left.push(format!("namespace {ns}"));
        }
    }
    if let Ok(out) = run(Command::new("ip").args(["-o", "link", "show"])) {
        for line in out.lines() {
            if let Some(name) = line.split(':').nth(1).map(|s| s.trim()) {
                let name = name.split('@').next().unwrap_or(name);
                if run_prefix_of(name) == Some(prefix) {
                    left.push(format!("host interface {name}"));
                }
            }
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mounts.lines().filter(|l| l.contains(prefix)) {
            left.push(format!("mount {line}"));
        }
    }
    for node in &state.nodes {
        for (what, p) in [("clusterd", node.clusterd), ("dovecot", node.dovecot)] {
            if let Some(p) = p
                && p.alive()
            {
                left.push(format!("{what} of {} (pid {})", node.name, p.pid));
            }
        }
    }
    left.extend(
        processes_in_netns_inodes(&state.netns_inodes)
            .into_iter()
            .map(|pid| format!("process {pid} inside a namespace of run {prefix}")),
    );
    if state.run_dir.exists() {
        left.push(format!("run directory {}", state.run_dir.display()));
    }
    left
}

/// Inode of a named namespace (identifies it even after its name is gone).
pub fn netns_inode(ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(netns::netns_path(ns))
        .ok()
        .map(|m| m.ino())
}

/// Pids of processes whose network namespace has one of `inodes`.
fn processes_in_netns_inodes(inodes: &[u64]) -> Vec<u32> {
    let mut found = Vec::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(link) = std::fs::read_link(e.path().join("ns/net"))
            && let Some(ino) = link
                .to_str()
                .and_then(|s| s.strip_prefix("net:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            && inodes.contains(&ino)
        {
            found.push(pid);
        }
    }
    found
}
