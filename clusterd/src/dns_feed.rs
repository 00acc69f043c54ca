//! Maps the replicated cluster state into `clusterd_dns` snapshots and runs the DNS server.
//!
//! The DNS crate knows nothing of Raft: this module decides what "being served" means for DNS.
//! An address counts as passing a service when its owner reported it configured and announced
//! (`serving_since_ms`) for the current epoch and the owner's probes pass that service (passing
//! or warning; a node whose checks have not risen yet passes nothing). The
//! SOA serial is the model's replicated `revision`, so every node answers with the same serial
//! and it never goes backwards across leader changes or restarts.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clusterd_dns::{Address, NameServer, ServeOptions, Snapshot, Zone};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, DnsConfig};
use crate::model::{Role, State};
use crate::node::Shared;
use crate::status::{DnsName, DnsReport};
use crate::vip::parse_key;

/// The DNS snapshot for `state` under `dns` config.
pub fn snapshot(dns: &DnsConfig, state: &State) -> Snapshot {
    let addresses: Vec<Address> = state
        .addresses
        .iter()
        .filter_map(|(key, a)| {
            let ip = parse_key(key)?.addr;
            let serving = a.handoff.is_none() && a.serving_since_ms.is_some();
            let passing: BTreeSet<String> = match a.owner.as_deref() {
                Some(owner) if serving => a
                    .spec
                    .services
                    .iter()
                    .filter(|c| state.check_up(owner, c))
                    .cloned()
                    .collect(),
                _ => BTreeSet::new(),
            };
            Some(Address {
                ip,
                services: a.spec.services.clone(),
                passing,
            })
        })
        .collect();
    let nameservers: Vec<NameServer> = state
        .members
        .iter()
        .filter(|(_, m)| m.role == Role::Mail)
        .filter_map(|(name, m)| {
            let ip: IpAddr = m.addr.parse::<SocketAddr>().ok()?.ip();
            Some(NameServer {
                name: name.clone(),
                addrs: vec![ip],
            })
        })
        .collect();
    let zones = dns
        .zones
        .iter()
        .map(|z| Zone {
            name: z.name.clone(),
            names: z.names.clone(),
            mx: z.mx.clone(),
            srv: z
                .srv
                .iter()
                .map(|r| clusterd_dns::Srv {
                    service: r.service.clone(),
                    target: r.target.clone(),
                    port: r.port,
                    priority: r.priority,
                    weight: r.weight,
                })
                .collect(),
            nameservers: nameservers.clone(),
            addresses: addresses.clone(),
        })
        .collect();
    Snapshot {
        // Serial 0 is avoided: some secondaries treat it specially.
        serial: (state.revision as u32).wrapping_add(1).max(1),
        ttl: dns.ttl,
        fail_open: dns.fail_open,
        zones,
    }
}

/// Serve DNS on every `dns.listen` address until `stop`, following the replica.
/// The server's options from `[dns]`: the per-source rate limit (bursts of twice the rate).
pub fn serve_options(dns: &DnsConfig) -> ServeOptions {
    ServeOptions {
        rate_limit: (dns.rate_limit > 0).then(|| clusterd_dns::RateLimit {
            queries_per_second: dns.rate_limit,
            burst: dns.rate_limit.saturating_mul(2),
        }),
        ..ServeOptions::default()
    }
}

pub async fn run(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // A node with nothing to serve idles until the daemon stops (the daemon supervises this
    // task and takes an early end for a failure).
    let Some(dns) = s
        .config
        .dns
        .clone()
        .filter(|_| s.config.node.role == Role::Mail)
    else {
        idle_until_stop(&s, &mut stop).await;
        return;
    };
    let mut replica = s.replica.clone();
    let first = snapshot(&dns, &replica.borrow_and_update().state);
    let (tx, rx) = watch::channel(Arc::new(first));
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for addr in &dns.listen {
        match (
            clusterd_dns::bind_udp(*addr, 1),
            clusterd_dns::bind_tcp(*addr),
        ) {
            (Ok(u), Ok(t)) => {
                udp.extend(u);
                tcp.push(t);
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(address = %addr, error = %e, "cannot listen for DNS; not serving it there");
            }
        }
    }
    if udp.is_empty() {
        warn!("no DNS listener could be opened; this node serves no DNS");
        idle_until_stop(&s, &mut stop).await;
        return;
    }
    let mut server_stop = stop.clone();
    let mut server = tokio::spawn(clusterd_dns::serve_counted(
        udp,
        tcp,
        rx,
        serve_options(&dns),
        s.metrics.dns.clone(),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));
    loop {
        s.loops.beat(crate::systemd::loops::DNS);
        tokio::select! {
            changed = replica.changed() => {
                if changed.is_err() {
                    break;
                }
                let next = snapshot(&dns, &replica.borrow_and_update().state);
                if *tx.borrow().as_ref() != next {
                    tx.send_replace(Arc::new(next));
                }
            }
            _ = tokio::time::sleep(BEAT) => {}
            // The server ending on its own ends this task, which the daemon takes for a
            // failure: never serve stale answers, or none, while looking alive.
            ended = &mut server => {
                error!(how = ?ended.map(|r| r.map_err(|e| e.to_string())), "the DNS server ended on its own");
                return;
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Ok(Err(e)) = server.await {
        warn!(error = %e, "DNS server stopped with an error");
    }
    info!("DNS stopped");
}

/// How often the feed beats while nothing changes.
const BEAT: Duration = Duration::from_secs(1);

/// A node that serves no DNS still beats, so that the watchdog and `status` see the task alive.
async fn idle_until_stop(s: &Shared, stop: &mut watch::Receiver<bool>) {
    loop {
        s.loops.beat(crate::systemd::loops::DNS);
        tokio::select! {
            _ = tokio::time::sleep(BEAT) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What `me` answers now for every configured name, or `None` without a `[dns]` section.
pub fn report(me: &str, config: &Config, state: &State) -> Option<DnsReport> {
    let snap = snapshot(config.dns.as_ref()?, state);
    let names = clusterd_dns::name_answers(&snap)
        .into_iter()
        .map(|n| DnsName {
            name: n.name,
            services: n.services,
            addresses: n.addresses.iter().map(|a| a.to_string()).collect(),
            state: match n.state {
                clusterd_dns::NameState::Passing => "passing",
                clusterd_dns::NameState::FailOpen => "fail-open",
                clusterd_dns::NameState::FailClosed => "fail-closed",
            }
            .to_string(),
        })
        .collect();
    Some(DnsReport {
        answered_by: me.to_string(),
        serial: snap.serial,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ZoneConfig;
    use crate::model::{AddressSpec, Command, Health, HealthReport, Member, MoveReason};

    #[test]
    fn the_rate_limit_of_the_config_reaches_the_server_and_zero_turns_it_off() {
        let mut d = dns();
        let limit = serve_options(&d).rate_limit.expect("on by default");
        assert_eq!(limit.queries_per_second, 100);
        assert_eq!(limit.burst, 200);
        d.rate_limit = 0;
        assert!(serve_options(&d).rate_limit.is_none());
    }

    fn dns() -> DnsConfig {
        DnsConfig {
            listen: vec![],
            ttl: 30,
            fail_open: true,
            rate_limit: crate::config::DEFAULT_DNS_RATE_LIMIT,
            zones: vec![ZoneConfig {
                name: "mail.example.com.".into(),
                mx: vec![],
                srv: vec![],
                names: [("imap".to_string(), vec!["imap".to_string()])].into(),
            }],
        }
    }

    fn state() -> State {
        let mut s = State::default();
        s.set_membership([(
            Member {
                name: "mx1".into(),
                addr: "192.0.2.11:7400".into(),
                role: Role::Mail,
            },
            true,
        )]);
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![AddressSpec {
                ip: "192.0.2.101/24".into(),
                interface: "eth0".into(),
                home: "mx1".into(),
                services: vec!["imap".into()],
            }],
            at_ms: 0,
        });
        s
    }

    #[test]
    fn only_addresses_served_by_an_owner_passing_the_service_pass() {
        let mut s = state();
        let snap = snapshot(&dns(), &s);
        assert!(snap.zones[0].addresses[0].passing.is_empty(), "unowned");
        s.apply(&Command::Assign {
            ip: "192.0.2.101/24".into(),
            to: "mx1".into(),
            epoch: 0,
            reason: MoveReason::Initial,
            at_ms: 1,
            term: None,
        });
        assert!(
            snapshot(&dns(), &s).zones[0].addresses[0]
                .passing
                .is_empty(),
            "assigned only"
        );
        s.apply(&Command::Serving {
            ip: "192.0.2.101/24".into(),
            node: "mx1".into(),
            epoch: 1,
            at_ms: 2,
        });
        assert!(
            snapshot(&dns(), &s).zones[0].addresses[0]
                .passing
                .is_empty(),
            "serving, but imap has not risen on mx1"
        );
        let imap = |health| {
            Command::Health(HealthReport {
                node: "mx1".into(),
                check: "imap".into(),
                health,
                reason: String::new(),
                latency_ms: None,
                at_ms: 3,
            })
        };
        s.apply(&imap(Health::Warning));
        let snap = snapshot(&dns(), &s);
        assert!(
            snap.zones[0].addresses[0].passing.contains("imap"),
            "warning counts"
        );
        s.apply(&imap(Health::Critical));
        assert!(
            snapshot(&dns(), &s).zones[0].addresses[0]
                .passing
                .is_empty(),
            "imap critical on the owner"
        );
        s.apply(&imap(Health::Passing));
        let snap = snapshot(&dns(), &s);
        assert!(snap.zones[0].addresses[0].passing.contains("imap"));
        assert_eq!(
            snap.zones[0].nameservers[0].addrs,
            vec!["192.0.2.11".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn serial_follows_the_replicated_revision() {
        let mut s = state();
        let before = snapshot(&dns(), &s).serial;
        s.apply(&Command::Assign {
            ip: "192.0.2.101/24".into(),
            to: "mx1".into(),
            epoch: 0,
            reason: MoveReason::Initial,
            at_ms: 1,
            term: None,
        });
        let after = snapshot(&dns(), &s).serial;
        assert!(after > before);
        assert_eq!(after, s.revision as u32 + 1);
    }
}
