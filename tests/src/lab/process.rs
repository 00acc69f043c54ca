//! Running commands with deadlines, and identifying the processes the lab started.
//!
//! A process is identified by its pid *and* its start time, so a recycled pid is never signalled:
//! the lab only ends processes it started. Commands that must run inside a node are wrapped in
//! `nsenter --net=...` (network namespace only, no mount namespace, nothing to clean up).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::{IoContext, LabError, Result};
use super::netns::netns_path;

/// Default deadline for short administrative commands (`ip`, `nft`, `postfix start`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A process the lab started: pid plus kernel start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    /// Process id.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`; guards against pid reuse.
    pub start_time: u64,
}

impl ProcId {
    /// Identify a running process by pid; `None` if it does not exist (or is a zombie).
    pub fn of(pid: u32) -> Option<ProcId> {
        let (state, start_time) = read_stat(pid)?;
        (state != 'Z' && state != 'X').then_some(ProcId { pid, start_time })
    }

    /// The current process.
    pub fn current() -> Option<ProcId> {
        ProcId::of(std::process::id())
    }

    /// Whether this very process (same pid and start time) is still running and not a zombie.
    /// A killed multi-threaded process whose main thread is already a zombie while its other
    /// threads are still exiting counts as running: until the last one is gone, its files
    /// (a listening socket, a database lock) are still open, and a restart would find them.
    pub fn alive(&self) -> bool {
        match read_stat(self.pid) {
            Some((state, start)) => {
                start == self.start_time
                    && state != 'X'
                    && (state != 'Z' || threads_of(self.pid) > 1)
            }
            None => false,
        }
    }

    /// Whether the process is stopped (SIGSTOP); false if it is gone.
    pub fn stopped(&self) -> bool {
        matches!(read_stat(self.pid), Some((state, start)) if start == self.start_time && state == 'T')
    }

    /// Send a signal, but only if the pid still names the process we started.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if !self.alive() && sig != Signal::SIGCONT {
            return Ok(());
        }
        if read_stat(self.pid).map(|(_, s)| s) != Some(self.start_time) {
            return Ok(());
        }
        signal::kill(Pid::from_raw(self.pid as i32), sig)
            .ctx(|| format!("sending {sig} to pid {}", self.pid))
    }

    /// Wait until the process is gone, up to `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(10), || !self.alive())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait again.
    pub fn terminate(&self, grace: Duration) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        // A stopped process cannot act on SIGTERM until continued.
        let _ = self.signal(Signal::SIGCONT);
        if self.wait_gone(grace) {
            return Ok(());
        }
        self.signal(Signal::SIGKILL)?;
        if self.wait_gone(Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(LabError::Timeout {
                what: format!("pid {} to exit after SIGKILL", self.pid),
                after: grace + Duration::from_secs(5),
            })
        }
    }
}

impl ProcId {
    /// Every live descendant (children, grandchildren, ...) of this process.
    pub fn descendants(&self) -> Vec<ProcId> {
        let mut parent_of = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    && let Some(ppid) = read_ppid(pid)
                {
                    parent_of.push((pid, ppid));
                }
            }
        }
        let mut found: Vec<u32> = vec![self.pid];
        let mut i = 0;
        while i < found.len() {
            let p = found[i];
            found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        found.into_iter().skip(1).filter_map(ProcId::of).collect()
    }

    /// A crash: SIGKILL this process alone, give its children `grace` to notice and exit by
    /// themselves (as a service's workers do when their master dies), then SIGKILL whichever
    /// are left, so no orphan keeps a listening socket open.
    pub fn crash(&self, grace: Duration) -> Result<()> {
        let tree = self.descendants();
        self.signal(Signal::SIGKILL)?;
        wait_until(grace, Duration::from_millis(10), || {
            !self.alive() && tree.iter().all(|p| !p.alive())
        });
        self.kill_rest(&tree, grace)
    }

    /// SIGKILL every process of `tree` still there and wait (5 s at most) until they and this
    /// process are gone; `grace` is what the caller already waited, for the error.
    fn kill_rest(&self, tree: &[ProcId], grace: Duration) -> Result<()> {
        for p in tree {
            p.signal(Signal::SIGKILL)?;
        }
        if wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            !self.alive() && tree.iter().all(|p| !p.alive())
        }) {
            Ok(())
        } else {
            Err(LabError::Timeout {
                what: format!("pid {} and its children to exit", self.pid),
                after: grace + Duration::from_secs(5),
            })
        }
    }

    /// SIGTERM, give the process `grace` to end (with its children), then SIGKILL it and every
    /// descendant still there, so no orphan keeps a listening socket open.
    pub fn terminate_tree(&self, grace: Duration) -> Result<()> {
        let mut tree = self.descendants();
        self.signal(Signal::SIGTERM)?;
        let _ = self.signal(Signal::SIGCONT);
        let gone = self.wait_gone(grace);
        for p in self.descendants() {
            if !tree.contains(&p) {
                tree.push(p);
            }
        }
        if !gone {
            self.signal(Signal::SIGKILL)?;
        }
        self.kill_rest(&tree, grace)
    }
}

fn read_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `(state, start_time)` from `/proc/<pid>/stat`.
fn read_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall; fields[0] here is field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Poll `cond` every `every` until it holds or `timeout` passes. Returns whether it held.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// A command that runs inside network namespace `ns` (and nothing else is unshared).
pub fn ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program);
    cmd
}

/// Describe a command for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command to completion within `timeout`; return its stdout, or an error with its stderr.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("starting `{command}`"))?;
    // Drain the pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take().map(|mut o| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = o.read_to_string(&mut s);
            s
        })
    });
    let mut err = child.stderr.take().map(|mut e| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .ctx(|| format!("waiting for `{command}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Timeout {
                what: format!("`{command}` to finish"),
                after: timeout,
            });
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.take().and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.take().and_then(|h| h.join().ok()).unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(LabError::Command {
            command,
            status: status.to_string(),
            stderr: format!("{}{}", stderr.trim(), stdout.trim()),
        })
    }
}

/// Run a command with the default deadline.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_timeout(cmd, COMMAND_TIMEOUT)
}

/// Run `program args...` with the default deadline.
pub fn run_args(program: &str, args: &[&str]) -> Result<String> {
    run(Command::new(program).args(args))
}

/// Whether an executable exists at `path` or on `PATH`.
pub fn have_program(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(name).is_file())
}

/// Spawn `cmd` (built with [`ns_command`]) as a daemon of ours in its own process group, with
/// stdout and stderr appended to the file `log_path`, and record its identity. `what` names it
/// in errors ("dovecot on mx1").
pub fn spawn_logged(
    mut cmd: Command,
    log_path: &Path,
    what: &str,
) -> Result<(ProcId, std::process::Child)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .ctx(|| format!("opening {}", log_path.display()))?;
    let err = log.try_clone().ctx(|| "cloning a log handle".to_owned())?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().ctx(|| format!("starting {what}"))?;
    let id = ProcId::of(child.id()).ok_or_else(|| {
        LabError::State(format!("{what} exited at once; see {}", log_path.display()))
    })?;
    Ok((id, child))
}

/// Threads of process `pid` still listed (`Threads:` in `/proc/PID/status`; 0 if gone).
fn threads_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}
