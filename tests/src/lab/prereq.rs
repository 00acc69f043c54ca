//! Prerequisites of a lab run, checked up front so a missing package fails loudly with the
//! command that installs it instead of a confusing error halfway through.

use nix::unistd::Uid;

use super::error::{LabError, Result};
use super::process::have_program;

/// The Debian packages the lab needs (see `.ci/lab-packages.sh`).
pub const APT_PACKAGES: &str =
    "dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix nftables iproute2 dnsutils";

/// The full install command.
pub fn install_command() -> String {
    format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y {APT_PACKAGES} \
         (after: echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections), \
         or run .ci/lab-packages.sh"
    )
}

/// Check that we are root and every tool the lab runs is installed.
pub fn check() -> Result<()> {
    if !Uid::effective().is_root() {
        return Err(LabError::Prerequisite {
            what: "root privileges (network namespaces, veths, nftables)".into(),
            fix: "run the lab and its tests as root (e.g. sudo -E cargo test -p clusterd-tests)"
                .into(),
        });
    }
    let needed = [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("nft", "nftables"),
        ("dig", "dnsutils"),
        ("dovecot", "dovecot-imapd"),
        ("/usr/lib/dovecot/imap", "dovecot-imapd"),
        ("/usr/lib/dovecot/pop3", "dovecot-pop3d"),
        ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ("postfix", "postfix"),
        ("/usr/lib/postfix/sbin/master", "postfix"),
    ];
    let missing: Vec<String> = needed
        .iter()
        .filter(|(prog, _)| !have_program(prog))
        .map(|(prog, pkg)| format!("{prog} (package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Prerequisite {
            what: missing.join(", "),
            fix: install_command(),
        })
    }
}
