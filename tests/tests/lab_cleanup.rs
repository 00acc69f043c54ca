//! `clusterd cleanup` (systemd's `ExecStopPost`) in a real network namespace: after a daemon
//! died holding an address, it removes the node's floating addresses and the nftables guard
//! tables, and it does so as the unprivileged user the Debian package runs clusterd as, with
//! only the unit's ambient capabilities, which must reach the `nft` it runs as a child.
//! Run as root; see tests/README.md.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clusterd::config::IpPrefix;
use clusterd::vip::NetOps;
use clusterd::vip::linux::LinuxNet;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::lab::{clusterd as lab_clusterd, netns, unprivileged};

/// Run `clusterd cleanup` inside `ns` as the unprivileged user, with `caps` (or none).
fn cleanup_as_unprivileged(ns: &str, bin: &Path, config: &Path, caps: Option<&str>) -> Output {
    unprivileged::command(ns, caps, bin)
        .args(["cleanup", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .expect("run setpriv (util-linux)")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn cleanup_removes_a_dead_daemons_addresses_and_guard_with_only_the_units_capabilities()
-> Result<()> {
    let lab = TestLab::network_only()?;
    let node = lab.node("mx1")?.clone();
    let floating: Vec<IpPrefix> = lab
        .state()
        .floating
        .iter()
        .map(|f| format!("{}/{}", f.ip, f.prefix_len).parse())
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    let config = node.dir.join("clusterd.toml");
    std::fs::write(&config, lab_clusterd::config_toml(lab.state(), &node))?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    let keep = tempfile::tempdir()?;
    let built = lab_clusterd::built_binary("clusterd")
        .context("clusterd is not built; run `cargo build -p clusterd --bins` first")?;
    let bin = unprivileged::runnable(&built, keep.path())?;

    // What a daemon killed while holding mx1's address leaves behind: the address (with a
    // long lifetime, so it cannot expire during the test) and both guard tables.
    let (iface, ips, held) = (
        node.iface.clone(),
        floating.iter().map(|p| p.addr).collect::<Vec<_>>(),
        floating[0],
    );
    netns::block_on_in(&node.netns, move || async move {
        let net = LinuxNet::new()?;
        net.guard_setup(&ips, std::slice::from_ref(&iface)).await?;
        net.guard_allow(&[held.addr], Instant::now() + Duration::from_secs(600))
            .await?;
        net.add(&iface, held, 600).await?;
        Ok::<(), anyhow::Error>(())
    })??;
    let addresses = || lab.ip("mx1", &["-o", "addr", "show", "dev", &node.iface]);
    let tables = || -> Result<String> {
        let out = lab
            .command("mx1", "nft")?
            .args(["list", "tables"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let held_cidr = held.to_string();
    ensure!(addresses()?.contains(&held_cidr), "setup: no {held_cidr}");
    let before = tables()?;
    ensure!(
        before.contains("table inet clusterd_guard")
            && before.contains("table arp clusterd_guard")
            && before.contains("table netdev clusterd_guard"),
        "setup: guard tables missing: {before}"
    );

    // Without the capabilities the same command fails and changes nothing: the capabilities
    // are what makes it work, not some leftover privilege.
    let refused = cleanup_as_unprivileged(&node.netns, &bin, &config, None);
    ensure!(
        !refused.status.success(),
        "cleanup without capabilities succeeded: {}",
        text(&refused)
    );
    ensure!(
        addresses()?.contains(&held_cidr),
        "cleanup without capabilities removed the address"
    );

    let done = cleanup_as_unprivileged(&node.netns, &bin, &config, Some(unprivileged::UNIT_CAPS));
    ensure!(done.status.success(), "cleanup failed: {}", text(&done));
    ensure!(
        String::from_utf8_lossy(&done.stderr).contains(&format!("{held_cidr} on {}", node.iface)),
        "cleanup did not report the removed address: {}",
        text(&done)
    );
    let left = addresses()?;
    ensure!(
        !left.contains(&held_cidr),
        "address still configured: {left}"
    );
    ensure!(
        left.contains(&format!("{}/24", node.ipv4)),
        "cleanup removed the node's own address: {left}"
    );
    let after = tables()?;
    ensure!(
        !after.contains("clusterd_guard"),
        "guard tables left (nft, run as a child, lacked the ambient capabilities?): {after}"
    );

    // Idempotent: nothing there, still success.
    let again = cleanup_as_unprivileged(&node.netns, &bin, &config, Some(unprivileged::UNIT_CAPS));
    ensure!(
        again.status.success(),
        "second cleanup failed: {}",
        text(&again)
    );
    Ok(())
}
