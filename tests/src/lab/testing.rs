//! What every lab test starts with: the prerequisite check (failing loudly with the install
//! command), the one-lab-test-at-a-time lock, and a lab that is torn down when the test ends,
//! pass or fail.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::exclusive::{self, ExclusiveLab};
use super::{Lab, LabSpec, Result, prereq};

/// How long a lab test waits for another one to finish.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// A lab owned by a test, plus the lock that keeps other lab tests out while it lives.
#[derive(Debug)]
pub struct TestLab {
    // Declared first: dropped (torn down) before the lock is released.
    lab: Option<Lab>,
    _exclusive: ExclusiveLab,
}

impl TestLab {
    /// Check prerequisites, take the lock, bring the lab up.
    pub fn up(spec: LabSpec) -> Result<TestLab> {
        prereq::check()?;
        let lock = exclusive::acquire(&spec.run_root, LOCK_TIMEOUT)?;
        let lab = Lab::up(spec)?;
        Ok(TestLab {
            lab: Some(lab),
            _exclusive: lock,
        })
    }

    /// A lab with its network only (two mail nodes and the witness, no dovecot or postfix, no
    /// daemons): for tests that start what they need themselves.
    pub fn network_only() -> Result<TestLab> {
        TestLab::up(LabSpec {
            mail_services: false,
            run_daemons: false,
            ..LabSpec::default()
        })
    }

    /// Tear the lab down now (reporting errors), keeping the lock until this value drops.
    pub fn down(&mut self) -> Result<()> {
        match self.lab.take() {
            Some(lab) => lab.down(),
            None => Ok(()),
        }
    }
}

impl Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab.as_ref().unwrap_or_else(|| unreachable_lab())
    }
}

impl DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().unwrap_or_else(|| unreachable_lab())
    }
}

#[allow(clippy::panic)]
fn unreachable_lab() -> ! {
    panic!("this TestLab was already taken down")
}

/// Take only the lock (for tests that manage labs themselves).
pub fn exclusive(spec: &LabSpec) -> Result<ExclusiveLab> {
    prereq::check()?;
    exclusive::acquire(&spec.run_root, LOCK_TIMEOUT)
}
