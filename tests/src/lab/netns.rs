//! Network namespaces: create, delete, list, find the processes inside, and run code inside one
//! from a dedicated thread (`setns` affects only the calling thread).
//!
//! Namespaces are the named kind (`ip netns`), bind-mounted under `/run/netns`, so other shells
//! can find them and the sweeper can remove them after a crash.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::thread;

use nix::sched::{CloneFlags, setns};

use super::error::{IoContext, LabError, Result};
use super::process::run;

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of a named network namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Create a named namespace with `lo` up.
pub fn add(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", name]))?;
    run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
    Ok(())
}

/// Delete a named namespace (its interfaces go with it). Missing namespaces are fine.
pub fn delete(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "delete", name]))?;
    Ok(())
}

/// Names of all named network namespaces.
pub fn list() -> Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Pids of the processes whose network namespace is `name`.
pub fn pids(name: &str) -> Result<Vec<u32>> {
    if !netns_path(name).exists() {
        return Ok(Vec::new());
    }
    let out = run(Command::new("ip").args(["netns", "pids", name]))?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Move the calling thread into network namespace `name`. Use only on threads you own.
pub fn enter(name: &str) -> Result<()> {
    let path = netns_path(name);
    let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET).ctx(|| format!("entering network namespace {name}"))
}

/// Run `f` on a fresh thread inside network namespace `name` and return its result.
pub fn run_in<R, F>(name: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let name = name.to_owned();
    let handle = thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<R> {
            enter(&name)?;
            Ok(f())
        })
        .ctx(|| "spawning a namespace thread".to_owned())?;
    handle
        .join()
        .map_err(|_| LabError::State("a thread inside a lab namespace panicked".into()))?
}

/// [`run_in`] for async work: the future `f` makes runs to completion on a current-thread
/// tokio runtime inside the namespace (netlink sockets and child processes opened there
/// belong to it).
pub fn block_on_in<R, F, Fut>(name: &str, f: F) -> Result<R>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R>,
    R: Send + 'static,
{
    run_in(name, move || -> Result<R> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ctx(|| "building a runtime inside a lab namespace".to_owned())?;
        Ok(rt.block_on(f()))
    })?
}
