//! `clusterd cleanup`: undo what the address runtime leaves in the kernel when the daemon did
//! not stop cleanly (killed, crashed, watchdog): this node's configured floating addresses and
//! the nftables guard tables. systemd runs it as `ExecStopPost`, so a stopped unit never leaves
//! an address behind for the kernel's lifetime backstop to remove.
//!
//! It runs only after the daemon is gone, so it never races the runtime. It is idempotent:
//! anything already absent is not an error. A `dry_run` node never touched its network, so
//! cleanup leaves it alone too (the addresses may belong to the setup clusterd runs next to).

use super::{NetError, NetOps};
use crate::config::Config;
use crate::model::Role;

/// What a cleanup did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// `ip/prefix on iface` of every address removed.
    pub removed: Vec<String>,
    /// Why nothing was done at all (witness, dry run), if so.
    pub skipped: Option<&'static str>,
}

/// Cleanup could not remove everything; each entry names what and why.
#[derive(Debug, thiserror::Error)]
#[error("cleanup incomplete: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct CleanupError(pub Vec<NetError>);

/// Remove this node's configured floating addresses from their interfaces, then the guard.
pub async fn cleanup<N: NetOps>(config: &Config, net: &N) -> Result<Cleaned, CleanupError> {
    if config.node.role != Role::Mail {
        return Ok(Cleaned {
            skipped: Some("a witness holds no addresses"),
            ..Cleaned::default()
        });
    }
    if config.node.dry_run {
        return Ok(Cleaned {
            skipped: Some("node.dry_run is set: clusterd never touched this node's network"),
            ..Cleaned::default()
        });
    }
    let mut done = Cleaned::default();
    let mut failed = Vec::new();
    for a in &config.addresses {
        // An interface that is gone holds no address: nothing to do there.
        let Ok(present) = net.list(&a.interface).await else {
            continue;
        };
        if !present.contains(&a.ip) {
            continue;
        }
        match net.remove(&a.interface, a.ip).await {
            Ok(()) => done.removed.push(format!("{} on {}", a.ip, a.interface)),
            Err(e) => failed.push(e),
        }
    }
    // After the addresses: a guard without addresses blocks nothing that is still there.
    if let Err(e) = net.guard_teardown().await {
        failed.push(e);
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(CleanupError(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::mem::World;

    /// The shipped example of mail node mx1 (addresses .101 and .102 on eth0), as `role`.
    fn config(role: Role, dry_run: bool) -> Config {
        let mut c: Config = toml::from_str(include_str!(
            "../../../examples/two-mail-nodes-and-witness/mx1.toml"
        ))
        .unwrap();
        c.node.role = role;
        c.node.dry_run = dry_run;
        c
    }

    fn addr(s: &str) -> crate::config::IpPrefix {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn removes_configured_addresses_and_the_guard_and_is_idempotent() {
        let world = World::new();
        let net = world.node("mx1");
        net.guard_setup(&[addr("192.0.2.101/24").addr], &["eth0".to_string()])
            .await
            .unwrap();
        net.guard_allow(
            &[addr("192.0.2.101/24").addr],
            std::time::Instant::now() + std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        net.add("eth0", addr("192.0.2.101/24"), 5).await.unwrap();
        net.add("eth0", addr("192.0.2.11/24"), 5).await.unwrap();
        let cfg = config(Role::Mail, false);

        let first = cleanup(&cfg, &net).await.unwrap();
        assert_eq!(first.removed, vec!["192.0.2.101/24 on eth0".to_string()]);
        assert!(world.holders(addr("192.0.2.101/24").addr).is_empty());
        assert_eq!(
            net.list("eth0").await.unwrap(),
            vec![addr("192.0.2.11/24")],
            "the node's own address is not a floating one and stays"
        );

        let again = cleanup(&cfg, &net).await.unwrap();
        assert_eq!(again, Cleaned::default());
    }

    #[tokio::test]
    async fn dry_run_and_witness_nodes_are_left_alone() {
        let world = World::new();
        let net = world.node("mx1");
        net.add("eth0", addr("192.0.2.101/24"), 5).await.unwrap();
        for cfg in [config(Role::Mail, true), config(Role::Witness, false)] {
            let done = cleanup(&cfg, &net).await.unwrap();
            assert!(done.skipped.is_some() && done.removed.is_empty());
        }
        assert_eq!(world.holders(addr("192.0.2.101/24").addr), vec!["mx1"]);
    }
}
