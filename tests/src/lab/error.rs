//! The lab's error type: what failed and, where it helps, what to do about it.

use std::time::Duration;

/// Everything that can go wrong while building, driving or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A tool or package the lab needs is not installed, or we are not root.
    #[error("lab prerequisite missing: {what}. Fix: {fix}")]
    Prerequisite {
        /// What is missing.
        what: String,
        /// The command that would fix it.
        fix: String,
    },
    /// An external command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status description.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A filesystem or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// A node name that is not part of this lab.
    #[error("no node named `{0}` in this lab (see `lab status`)")]
    UnknownNode(String),
    /// The lab's state is not what the operation needs.
    #[error("{0}")]
    State(String),
}

/// Result alias for the lab library.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Attach a context string to IO errors.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| LabError::Io {
            context: context(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| LabError::Io {
            context: context(),
            source: std::io::Error::from(errno),
        })
    }
}
