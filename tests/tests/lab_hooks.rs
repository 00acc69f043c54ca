//! Transition hooks and metrics in the lab: real daemons run a real script on each node, and
//! the node that takes over a killed owner's address runs its `address_acquired` hook.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec};

/// A hook that appends `EVENT NODE ADDRESS REASON EPOCH` per transition to `DIR/<node>.log`.
fn recording_hook(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("record");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$CLUSTERD_EVENT $CLUSTERD_NODE $CLUSTERD_ADDRESS $CLUSTERD_REASON \
             $CLUSTERD_EPOCH\" >> {}/\"$CLUSTERD_SELF\".log\n",
            dir.display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Wait until one of `nodes`' hook logs has a line starting with `prefix`; return that node.
fn wait_for_line(dir: &Path, nodes: &[&str], prefix: &str, within: Duration) -> Result<String> {
    let start = Instant::now();
    while start.elapsed() < within {
        for node in nodes {
            let log = std::fs::read_to_string(dir.join(format!("{node}.log"))).unwrap_or_default();
            if log.lines().any(|l| l.starts_with(prefix)) {
                return Ok(node.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs: Vec<String> = nodes
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
            format!("{n}:\n{log}")
        })
        .collect();
    bail!(
        "no hook line starting with {prefix:?} within {within:?}; hook logs:\n{}",
        logs.join("\n")
    )
}

#[test]
fn killed_owner_makes_the_new_owner_run_its_address_acquired_hook() -> Result<()> {
    let hooks = tempfile::tempdir()?;
    let dir = hooks.path();
    let script = recording_hook(dir)?;
    let mut lab = TestLab::up(LabSpec {
        extra_config: format!("\n[hooks]\nscripts = [\"{}\"]\n", script.display()),
        ..LabSpec::default()
    })?;
    wait_for_line(
        dir,
        &["mx1"],
        "address_acquired mx1 192.0.2.101/24 initial",
        Duration::from_secs(20),
    )?;

    lab.fault("mx1", Fault::Kill)?;
    wait_for_line(
        dir,
        &["mx2"],
        "address_acquired mx2 192.0.2.101/24 lease_expired",
        Duration::from_secs(15),
    )?;
    // The leader among the survivors decided the takeover and saw mx1 go silent.
    let decided_by = wait_for_line(
        dir,
        &["mx2", "w1"],
        "owner_changed mx2 192.0.2.101/24 lease_expired",
        Duration::from_secs(5),
    )?;
    wait_for_line(dir, &[&decided_by], "node_down mx1", Duration::from_secs(5))?;

    // The survivors' metrics count the failover.
    let metrics = lab.clusterctl("mx2", &["metrics"])?;
    if !metrics.contains("clusterd_failovers_total{reason=\"lease_expired\"}") {
        bail!("mx2's metrics do not count the failover:\n{metrics}");
    }
    if !metrics.contains("clusterd_address_configured{address=\"192.0.2.101/24\"} 1") {
        bail!("mx2's metrics do not show 192.0.2.101/24 configured:\n{metrics}");
    }
    lab.down()?;
    Ok(())
}
