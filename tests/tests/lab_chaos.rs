//! The chaos campaign, the slice CI runs: random, overlapping faults and operator actions
//! (kill -9 and restart, freezes of up to 3 s including about one lease, symmetric and one-way
//! partitions, link flaps, every daemon restarted, CPU starvation, dovecot or postfix stopped,
//! planned moves, drains, drills, the learner removed and added back) against three mail nodes
//! (mx3 a learner) and the witness, with every invariant observer running. The run fails on two
//! holders at any moment (four monitors and the client's greetings), an epoch going back, a
//! history losing or changing an entry, DNS naming an address nobody served for longer than a
//! lease outside the faults, nodes disagreeing or an address unserved 10 s after the last heal,
//! or a daemon that crashed.
//!
//! Fixed seeds (`CLUSTERD_CHAOS_SEEDS`, default `1,2`) plus one fresh seed from the clock, each
//! with `CLUSTERD_CHAOS_FAULTS` faults (default 20). Every seed is printed; a failure prints the
//! schedule file for `lab chaos --replay`. BENCHMARKS.md has the long campaigns.
// The seeds and the outcome on stderr are part of what this test reports.
#![allow(clippy::print_stderr)]

use std::path::PathBuf;

use anyhow::{Result, bail};
use clusterd_tests::chaos::{self, Schedule, Shape};
use clusterd_tests::lab::state::DEFAULT_RUN_ROOT;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_overlapping_faults_never_break_a_promise() -> Result<()> {
    let faults = env_u64("CLUSTERD_CHAOS_FAULTS").unwrap_or(20) as usize;
    let mut seeds: Vec<u64> = std::env::var("CLUSTERD_CHAOS_SEEDS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let fresh = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(3, |d| d.as_secs());
    seeds.push(fresh);
    eprintln!("chaos: seeds {seeds:?} ({fresh} is fresh), {faults} faults each");
    let mut failed = Vec::new();
    for seed in seeds {
        let schedule = Schedule::generate(seed, faults, &Shape::standard());
        let out_dir: PathBuf =
            std::env::temp_dir().join(format!("clusterd-chaos-{seed}-{}", std::process::id()));
        let opts = chaos::Options {
            schedule,
            max_duration: None,
            out_dir: out_dir.clone(),
            run_root: PathBuf::from(DEFAULT_RUN_ROOT),
        };
        let outcome = chaos::run::run(&opts, &mut |line| eprintln!("chaos {seed}: {line}"))?;
        eprintln!("chaos {seed}:\n{}", outcome.summary());
        if outcome.faults != faults {
            failed.push(format!(
                "seed {seed}: only {} of {faults} faults ran",
                outcome.faults
            ));
        }
        // Nominally 100 samples and rounds and 150 greetings a second; a fifth of that at
        // least, however loaded the machine.
        let secs = outcome.elapsed.as_secs_f64();
        let rate = |n: u64| n as f64 / secs.max(1.0);
        if rate(outcome.address_samples) < 20.0
            || rate(outcome.arp_rounds) < 20.0
            || rate(outcome.greetings) < 30.0
            || outcome.dns_answers == 0
            || outcome.status_samples == 0
        {
            failed.push(format!(
                "seed {seed}: the observers barely ran:\n{}",
                outcome.summary()
            ));
        }
        if !outcome.violations.is_empty() {
            failed.push(format!(
                "seed {seed}: {} violation(s):\n{}\nreplay: lab chaos --replay {}",
                outcome.violations.len(),
                outcome.violations.join("\n"),
                out_dir.join("schedule.json").display()
            ));
        } else {
            let _ = std::fs::remove_dir_all(&out_dir);
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n\n"));
    }
    Ok(())
}
