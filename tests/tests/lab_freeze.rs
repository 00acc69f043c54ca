//! Freezes of about one lease, many times over: the owner of a floating address is stopped
//! (SIGSTOP) for a random 0.6-1.0 s and resumed, so it resumes right around the moment the
//! leader takes its address away. The invariant monitors run throughout and must never see two
//! holders, however short: the address sampler, the kernel's address events in every node
//! (exact to the event, with the guard's expiry), the client's ARP prober and an ICMP echo to
//! each node's own MAC every 10 ms. `CLUSTERD_FREEZES` sets the number of freezes (default
//! 40, the slice CI runs; BENCHMARKS.md has the long runs), `CLUSTERD_FREEZE_SEED` the seed;
//! both are printed, so a failing run can be repeated.
// The seed and progress on stderr are part of what this test reports.
#![allow(clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec, Monitors};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FLOATING: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);

/// Freezes per pair of monitors: they stop by themselves after ten minutes.
const FREEZES_PER_WATCH: u32 = 50;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn an_owner_frozen_for_about_a_lease_and_resumed_never_holds_alongside_the_new_owner() -> Result<()>
{
    let freezes = env_u64("CLUSTERD_FREEZES").unwrap_or(40) as u32;
    let seed = env_u64("CLUSTERD_FREEZE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("freezes: {freezes}, seed: {seed} (CLUSTERD_FREEZE_SEED={seed} repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lab = TestLab::up(LabSpec::default())?;
    let ip = IpAddr::V4(FLOATING);
    lab.wait_for_greeter(ip, "mx1", Duration::from_secs(15))
        .context("mx1 never served its home address")?;
    let started = Instant::now();
    let mut unserved = Vec::new();
    let mut done = 0;
    while done < freezes {
        let monitors = Monitors::start(&lab)?;
        for _ in 0..FREEZES_PER_WATCH.min(freezes - done) {
            let owner = greeter_within(&lab, ip, Duration::from_secs(10))
                .with_context(|| format!("freeze {done}: nobody serves {FLOATING}"))?;
            let frozen_for = Duration::from_millis(rng.random_range(600..=1000));
            lab.fault(&owner, Fault::Stop)?;
            std::thread::sleep(frozen_for);
            let resumed = Instant::now();
            lab.fault(&owner, Fault::Cont)?;
            greeter_within(&lab, ip, Duration::from_secs(10)).with_context(|| {
                format!("freeze {done} ({owner} for {frozen_for:?}): {FLOATING} not served again")
            })?;
            unserved.push(resumed.elapsed());
            done += 1;
            // Start the next freeze at another point of the renewal cycle.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=400)));
        }
        let seen = match monitors.finish() {
            Ok(seen) => seen,
            Err(e) => {
                let kept = keep_logs(&lab, seed);
                return Err(anyhow::Error::new(e).context(format!(
                    "seed {seed}, after {done} freezes; the daemons' logs are in {kept}"
                )));
            }
        };
        eprintln!(
            "{done} freezes, no two holders: {} address samples (longest gap {:?}), {} points \
             from kernel events and guard readings, {} ARP rounds, {} ICMP echo rounds; \
             sampler errors: {} {:?}",
            seen.addresses.samples,
            seen.addresses.max_gap,
            seen.events.samples,
            seen.network.timeline.samples,
            seen.network.echo.samples,
            seen.addresses.errors.len(),
            seen.addresses.errors.first()
        );
    }
    unserved.sort();
    ensure!(!unserved.is_empty(), "no freeze ran");
    eprintln!(
        "{freezes} freezes in {:?}; served again after resume: p50 {:?}, max {:?}",
        started.elapsed(),
        unserved[unserved.len() / 2],
        unserved[unserved.len() - 1]
    );
    Ok(())
}

/// Copy every node's clusterd log out of the lab (which is removed on drop) for the report.
fn keep_logs(lab: &TestLab, seed: u64) -> String {
    let dir = std::env::temp_dir().join(format!("clusterd-freeze-{seed}-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return "(nowhere: cannot create a directory for them)".into();
    }
    for node in &lab.state().nodes {
        let _ = std::fs::copy(
            node.dir.join("clusterd.log"),
            dir.join(format!("{}.log", node.name)),
        );
    }
    dir.display().to_string()
}

/// The node the client's IMAP greeting on `ip` names, waiting up to `within` for one.
fn greeter_within(lab: &TestLab, ip: IpAddr, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(node) = lab.imap_greeter(ip) {
            return Some(node);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
