//! One lab test at a time, across threads and processes: an exclusive `flock` on a file in the
//! run root, taken with a deadline. Labs do not interfere with each other (separate namespaces
//! and prefixes), but timing-sensitive tests on two cores do.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::{IoContext, LabError, Result};

/// Held while a lab test runs; released on drop.
#[derive(Debug)]
pub struct ExclusiveLab {
    _lock: Flock<File>,
}

/// Wait (up to `timeout`) for the lab lock under `run_root`.
pub fn acquire(run_root: &Path, timeout: Duration) -> Result<ExclusiveLab> {
    std::fs::create_dir_all(run_root).ctx(|| format!("creating {}", run_root.display()))?;
    let path = run_root.join(".lab-tests.lock");
    let deadline = Instant::now() + timeout;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(ExclusiveLab { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(LabError::Timeout {
                    what: format!("the lab test lock {}", path.display()),
                    after: timeout,
                });
            }
            Err((_, e)) => {
                return Err(LabError::Io {
                    context: format!("locking {}", path.display()),
                    source: e.into(),
                });
            }
        }
    }
}
