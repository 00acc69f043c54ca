//! The kernel guard's allowance is a deadline, not a duration: in a real network namespace, a
//! guard write that reaches the kernel late (the daemon frozen or starved between reading the
//! clock and writing) is refused as a whole and cannot keep the address allowed past the lease
//! deadline; a prompt write is accepted and ends before its deadline. Run as root; see
//! tests/README.md.

use std::net::IpAddr;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clusterd::vip::NetOps;
use clusterd::vip::linux::LinuxNet;
use clusterd_lease::GUARD_WRITE_WINDOW;
use clusterd_tests::lab::netns;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::addresses::parse_nft_time;

/// How long the kernel still allows `ip` in the guard's IPv4 set (`None`: not allowed), read
/// with `nft` in the calling thread's namespace.
fn allowed_for(ip: IpAddr) -> Result<Option<Duration>> {
    let out = Command::new("nft")
        .args(["list", "set", "inet", "clusterd_guard", "held4"])
        .output()
        .context("run nft (apt-get install -y nftables)")?;
    ensure!(out.status.success(), "nft list set: {:?}", out);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text
        .split([' ', ',', '{', '}', '\n', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let Some(at) = words.iter().position(|w| *w == ip.to_string()) else {
        return Ok(None);
    };
    let expires = words[at..]
        .iter()
        .skip_while(|w| **w != "expires")
        .nth(1)
        .with_context(|| format!("no expiry for {ip} in: {text}"))?;
    parse_nft_time(expires)
        .with_context(|| format!("cannot read the expiry {expires:?}"))
        .map(Some)
}

/// What happened inside the namespace, for the assertions outside it.
#[derive(Debug)]
struct Observed {
    /// The prompt write's deadline, as time left when it was read back, and what the kernel
    /// said was left then.
    prompt: (Duration, Option<Duration>),
    /// The delayed write's result.
    delayed: std::result::Result<(), String>,
    /// Right after the delayed write: the first write's time left, and the kernel's.
    after_delayed: (Duration, Option<Duration>),
    /// Whether the kernel still allowed the address just after the first deadline passed.
    after_deadline: Option<Duration>,
    /// Whether a prompt write was accepted again within five tries (a loaded machine may
    /// miss the window once).
    accepted_again: bool,
}

#[test]
fn a_guard_write_that_reaches_the_kernel_late_cannot_stretch_the_allowance() -> Result<()> {
    let lab = TestLab::network_only()?;
    let node = lab.node("mx1")?.clone();
    let floating = lab.state().floating.clone();
    let ip: IpAddr = floating[0].ip;
    let ips: Vec<IpAddr> = floating.iter().map(|f| f.ip).collect();

    let iface = node.iface.clone();
    let observed = netns::block_on_in(&node.netns, move || async move {
        let net = LinuxNet::new()?;
        net.guard_setup(&ips, &[iface]).await?;

        // A prompt write: allowed, and for no longer than until its deadline.
        let first_until = Instant::now() + Duration::from_millis(1500);
        net.guard_allow(&[ip], first_until).await?;
        let prompt = (
            first_until.saturating_duration_since(Instant::now()),
            allowed_for(ip)?,
        );

        // A write armed, then delayed past the window (the daemon frozen between reading
        // the clock and writing), asking for ten more seconds.
        let token = net.guard_arm()?;
        sleep(GUARD_WRITE_WINDOW * 2);
        let delayed = net
            .guard_commit(token, &[ip], Instant::now() + Duration::from_secs(10))
            .map_err(|e| e.to_string());
        let after_delayed = (
            first_until.saturating_duration_since(Instant::now()),
            allowed_for(ip)?,
        );

        // The first deadline passes: nothing is allowed any more.
        tokio::time::sleep_until((first_until + Duration::from_millis(20)).into()).await;
        let after_deadline = allowed_for(ip)?;

        // The guard keeps working: a prompt write is accepted again.
        let mut accepted_again = false;
        for _ in 0..5 {
            let until = Instant::now() + Duration::from_secs(2);
            if net.guard_allow(&[ip], until).await.is_ok() {
                accepted_again = true;
                break;
            }
        }
        net.guard_teardown().await?;
        Ok::<_, anyhow::Error>(Observed {
            prompt,
            delayed,
            after_delayed,
            after_deadline,
            accepted_again,
        })
    })??;

    let (left, kernel) = observed.prompt;
    let kernel = kernel.context("the prompt write did not allow the address")?;
    ensure!(
        kernel <= left,
        "the kernel allows {ip} for {kernel:?}, past its deadline {left:?} away"
    );
    let err = observed
        .delayed
        .as_ref()
        .err()
        .context("a write that reached the kernel after the window was accepted")?;
    ensure!(err.contains("refused"), "unexpected error: {err}");
    let (left, kernel) = observed.after_delayed;
    if let Some(kernel) = kernel {
        ensure!(
            kernel <= left,
            "after the refused write the kernel allows {ip} for {kernel:?}, past the first \
             deadline {left:?} away"
        );
    }
    ensure!(
        observed.after_deadline.is_none(),
        "{ip} still allowed for {:?} after its deadline",
        observed.after_deadline
    );
    ensure!(
        observed.accepted_again,
        "no prompt write was accepted in 5 tries after a refused one"
    );
    Ok(())
}

/// A gratuitous ARP leaves on a packet socket, which no `inet` or `arp` hook sees. A daemon
/// resumed after a freeze can send one it checked against the lease before the freeze: the
/// guard's `netdev` egress chain must drop it once the allowance ended, so no client is pointed
/// at a node that no longer answers for the address.
#[test]
fn a_gratuitous_arp_sent_after_the_allowance_ended_never_leaves_the_node() -> Result<()> {
    let lab = TestLab::network_only()?;
    let node = lab.node("mx1")?.clone();
    let floating = lab.state().floating.clone();
    let ips: Vec<IpAddr> = floating.iter().map(|f| f.ip).collect();
    let IpAddr::V4(ip) = floating[0].ip else {
        anyhow::bail!("the lab's first floating address is not IPv4");
    };
    let prober = clusterd_tests::ArpProber::start(&lab)?;
    let started = Instant::now();
    let iface = node.iface.clone();
    let (allowed_at, late_at, late) = netns::block_on_in(&node.netns, move || async move {
        let net = LinuxNet::new()?;
        net.guard_setup(&ips, std::slice::from_ref(&iface)).await?;
        // While allowed, the announcement goes out.
        net.guard_allow(
            &[IpAddr::V4(ip)],
            Instant::now() + Duration::from_millis(400),
        )
        .await?;
        let allowed_at = Instant::now();
        net.announce(&iface, IpAddr::V4(ip)).await?;
        // The allowance runs out by itself, as it does while a daemon is frozen; then the
        // announcement a resumed daemon would still send.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let late_at = Instant::now();
        let late = net.announce(&iface, IpAddr::V4(ip)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        net.guard_teardown().await?;
        Ok::<_, anyhow::Error>((allowed_at, late_at, late.map_err(|e| e.to_string())))
    })??;
    let seen = prober.stop();
    let at = |i: Instant| i.saturating_duration_since(started);
    let mine: Vec<_> = seen
        .announcements
        .iter()
        .filter(|a| a.ip == ip && a.node == "mx1")
        .collect();
    ensure!(
        mine.iter().any(
            |a| a.at >= at(allowed_at).saturating_sub(Duration::from_millis(50))
                && a.at < at(late_at)
        ),
        "the announcement sent while allowed never reached the client: {mine:?}"
    );
    let stale: Vec<_> = mine.iter().filter(|a| a.at >= at(late_at)).collect();
    ensure!(
        stale.is_empty(),
        "a gratuitous ARP sent after the allowance ended reached the client: {stale:?} \
         (the send said {late:?})"
    );
    Ok(())
}
