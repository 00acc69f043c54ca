//! In-process clusters on 127.0.0.1: several `daemon::run` in one test process, talking real
//! HTTP to each other, with their Raft state in real redb files.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clusterd::api::{AddMemberRequest, MembershipReply, NoteRequest};
use clusterd::auth::ClusterKey;
use clusterd::client::{ApiClient, ClientError, with_retries};
use clusterd::model::{Applied, EventKind, Role};
use common::{
    NodeSpec, agreed_leader, eventually, status, two_addresses, write_configs, write_key,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node running inside the test process.
struct Running {
    spec: NodeSpec,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), clusterd::daemon::RunError>>,
}

impl Running {
    async fn start(spec: &NodeSpec) -> Running {
        let config = clusterd::config::load(&spec.config_path).expect("valid test config");
        let listener = tokio::net::TcpListener::bind(spec.addr)
            .await
            .expect("bind test port");
        let (tx, rx) = oneshot::channel::<()>();
        let name = spec.name.clone();
        let task = tokio::spawn(async move {
            let result = clusterd::daemon::run(config, listener, async {
                let _ = rx.await;
            })
            .await;
            if let Err(e) = &result {
                tracing::error!("{name} stopped with an error: {e}");
            }
            result
        });
        Running {
            spec: spec.clone(),
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("node stops within 10 s")
            .expect("node task")
            .expect("clean shutdown");
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    key: ClusterKey,
    specs: Vec<NodeSpec>,
    nodes: Vec<Option<Running>>,
}

impl Cluster {
    async fn start(names: &[&str], voters: &[&str]) -> Cluster {
        Self::start_with(names, voters, &two_addresses, names).await
    }

    /// Write configs for `names` with `extra` TOML, and start the nodes in `running`.
    async fn start_with(
        names: &[&str],
        voters: &[&str],
        extra: &dyn Fn(&str) -> String,
        running: &[&str],
    ) -> Cluster {
        common::init_logs();
        let dir = tempfile::tempdir().unwrap();
        let key_path = write_key(dir.path());
        let key = ClusterKey::load(&key_path).unwrap();
        let specs = write_configs(dir.path(), &key_path, names, voters, extra);
        let mut nodes = Vec::new();
        for spec in &specs {
            if running.contains(&spec.name.as_str()) {
                nodes.push(Some(Running::start(spec).await));
            } else {
                nodes.push(None);
            }
        }
        Cluster {
            _dir: dir,
            key,
            specs,
            nodes,
        }
    }

    fn index(&self, name: &str) -> usize {
        self.specs.iter().position(|s| s.name == name).unwrap()
    }

    fn addrs_running(&self) -> Vec<SocketAddr> {
        self.nodes.iter().flatten().map(|n| n.spec.addr).collect()
    }

    fn client(&self, name: &str) -> ApiClient {
        ApiClient::new(
            self.specs[self.index(name)].addr.to_string(),
            self.key.clone(),
        )
    }

    async fn leader(&self) -> String {
        agreed_leader(&self.addrs_running(), &self.key, None).await
    }

    async fn stop_node(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(n) = self.nodes[i].take() {
            n.stop().await;
        }
    }

    async fn start_node(&mut self, name: &str) {
        let i = self.index(name);
        assert!(self.nodes[i].is_none());
        self.nodes[i] = Some(Running::start(&self.specs[i]).await);
    }

    async fn stop_all(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.stop().await;
            }
        }
    }
}

fn notes(report: &clusterd::status::StatusReport) -> Vec<String> {
    report
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Note { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_exactly_one_leader() {
    let mut c = Cluster::start(&["n1", "n2", "n3"], &["n1", "n2", "n3"]).await;
    let leader = c.leader().await;
    let report = status(c.specs[c.index(&leader)].addr, &c.key)
        .await
        .unwrap();
    assert_eq!(report.nodes.len(), 3);
    let leaders: Vec<_> = report
        .nodes
        .iter()
        .filter(|n| n.raft_state == "leader")
        .collect();
    assert_eq!(leaders.len(), 1, "{:?}", report.nodes);
    assert_eq!(leaders[0].name, leader);
    // The leader records its election and the membership in the replicated history.
    let report = eventually(
        "election event and addresses",
        Duration::from_secs(5),
        || async {
            let r = status(c.specs[0].addr, &c.key).await?;
            let elected = r.events.iter().any(
                |e| matches!(&e.kind, EventKind::LeaderElected { node, .. } if *node == leader),
            );
            (elected && !r.addresses.is_empty()).then_some(r)
        },
    )
    .await;
    assert!(
        report
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::MembershipChanged { .. }))
    );
    // Addresses from config are reconciled into the cluster state.
    let ips: Vec<_> = report.addresses.iter().map(|a| a.ip.as_str()).collect();
    assert_eq!(ips, vec!["192.0.2.101/24", "192.0.2.102/24"]);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_by_a_new_leader_in_a_higher_term() {
    let mut c = Cluster::start(&["n1", "n2", "n3"], &["n1", "n2", "n3"]).await;
    let old = c.leader().await;
    let old_term = status(c.specs[c.index(&old)].addr, &c.key)
        .await
        .unwrap()
        .term;
    c.stop_node(&old).await;
    let new = agreed_leader(&c.addrs_running(), &c.key, Some(&old)).await;
    assert_ne!(new, old);
    let report = status(c.specs[c.index(&new)].addr, &c.key).await.unwrap();
    assert!(report.term > old_term);
    let old_node = report.nodes.iter().find(|n| n.name == old).unwrap();
    eventually(
        "the stopped node shows unreachable",
        Duration::from_secs(5),
        || async {
            let r = status(c.specs[c.index(&new)].addr, &c.key).await?;
            let n = r.nodes.iter().find(|n| n.name == old)?;
            (n.reachable == Some(false)).then_some(())
        },
    )
    .await;
    assert!(old_node.voter);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_reach_every_replica() {
    let mut c = Cluster::start(&["n1", "n2", "n3"], &["n1", "n2", "n3"]).await;
    let leader = c.leader().await;
    let follower = c
        .specs
        .iter()
        .find(|s| s.name != leader)
        .unwrap()
        .name
        .clone();
    let client = c.client(&follower);
    let note = NoteRequest {
        text: "maintenance starts".into(),
    };
    let applied: Applied = with_retries(|| client.post("/v1/note", &note))
        .await
        .unwrap();
    assert!(applied.changed);
    for spec in c.specs.clone() {
        eventually("the note on every node", Duration::from_secs(5), || async {
            let r = status(spec.addr, &c.key).await?;
            notes(&r)
                .contains(&"maintenance starts".to_string())
                .then_some(())
        })
        .await;
    }
    // The model refuses an empty note; the refusal comes back as 409 with the reason.
    let empty = NoteRequest { text: " ".into() };
    let err = with_retries(|| client.post::<_, Applied>("/v1/note", &empty))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Api { status: 409, ref message } if message.contains("empty")),
        "{err}"
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_by_itself_and_membership_changes_at_run_time() {
    // n4 is a mail node outside the voter set: it must join as a learner on its own.
    let mut c = Cluster::start(&["n1", "n2", "n3", "n4"], &["n1", "n2", "n3"]).await;
    let leader = c.leader().await;
    eventually(
        "n4 joined as a learner",
        Duration::from_secs(10),
        || async {
            let r = status(c.specs[c.index(&leader)].addr, &c.key).await?;
            let n4 = r.nodes.iter().find(|n| n.name == "n4")?;
            (!n4.voter).then_some(())
        },
    )
    .await;
    // The learner receives the replicated state.
    eventually("n4 has the address set", Duration::from_secs(5), || async {
        let r = status(c.specs[3].addr, &c.key).await?;
        (r.addresses.len() == 2 && r.leader.is_some()).then_some(())
    })
    .await;

    // Promoting it would make 4 voters: refused without force, with the reason.
    let promote = AddMemberRequest {
        name: "n4".into(),
        addr: c.specs[3].addr.to_string(),
        role: Role::Mail,
        voter: true,
        force: false,
    };
    let n1 = c.client("n1");
    let err = with_retries(|| n1.post::<_, MembershipReply>("/v1/members", &promote))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Api { status: 409, ref message } if message.contains("4 voters")),
        "{err}"
    );

    // Removing the learner works through any node.
    let n2 = c.client("n2");
    let reply: MembershipReply = with_retries(|| n2.delete("/v1/members/n4")).await.unwrap();
    assert_eq!(reply.voters, vec!["n1", "n2", "n3"]);
    assert!(reply.learners.is_empty(), "{reply:?}");
    c.stop_node("n4").await;

    // Adding a voter at run time: remove n3 (down to 2 voters needs force), then add it back
    // as a voter.
    let err = with_retries(|| n1.delete::<MembershipReply>("/v1/members/n3"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 409, .. }), "{err}");
    let client = c.client("n1");
    let reply: MembershipReply = with_retries(|| client.delete("/v1/members/n3?force=true"))
        .await
        .unwrap();
    assert_eq!(reply.voters.len(), 2, "{reply:?}");
    let n3 = AddMemberRequest {
        name: "n3".into(),
        addr: c.specs[2].addr.to_string(),
        role: Role::Mail,
        voter: true,
        force: false,
    };
    // The removed n3 may have been the leader: give the rest a moment to elect another.
    let client = c.client("n1");
    let reply: MembershipReply = with_retries(|| client.post("/v1/members", &n3))
        .await
        .unwrap();
    assert_eq!(reply.voters, vec!["n1", "n2", "n3"], "{reply:?}");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_the_replicated_state() {
    let mut c = Cluster::start(&["n1", "n2", "n3"], &["n1", "n2", "n3"]).await;
    c.leader().await;
    let n1 = c.client("n1");
    let note = NoteRequest {
        text: "before restart".into(),
    };
    let _: Applied = with_retries(|| n1.post("/v1/note", &note)).await.unwrap();
    let before = eventually(
        "note applied everywhere",
        Duration::from_secs(5),
        || async {
            let mut terms = Vec::new();
            for spec in &c.specs {
                let r = status(spec.addr, &c.key).await?;
                if !notes(&r).contains(&"before restart".to_string()) {
                    return None;
                }
                terms.push(r.term);
            }
            terms.into_iter().max()
        },
    )
    .await;
    c.stop_all().await;
    for name in ["n1", "n2", "n3"] {
        c.start_node(name).await;
    }
    let leader = c.leader().await;
    let report = status(c.specs[c.index(&leader)].addr, &c.key)
        .await
        .unwrap();
    // A restarted leader may resume its term from its persisted vote; terms never go back.
    assert!(
        report.term >= before,
        "term {} after restart, {} before",
        report.term,
        before
    );
    for spec in c.specs.clone() {
        eventually(
            "note survives the restart",
            Duration::from_secs(5),
            || async {
                let r = status(spec.addr, &c.key).await?;
                notes(&r)
                    .contains(&"before restart".to_string())
                    .then_some(())
            },
        )
        .await;
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_address_declaration_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = write_key(dir.path());
    let key = ClusterKey::load(&key_path).unwrap();
    let specs = write_configs(
        dir.path(),
        &key_path,
        &["n1", "n2", "n3"],
        &["n1", "n2", "n3"],
        &|node| {
            if node == "n3" {
                "[[addresses]]\nip = \"192.0.2.109/24\"\ninterface = \"eth0\"\nhome = \"n3\"\nservices = []\n".to_string()
            } else {
                two_addresses(node)
            }
        },
    );
    let mut nodes = Vec::new();
    for s in &specs {
        nodes.push(Running::start(s).await);
    }
    let addrs: Vec<_> = specs.iter().map(|s| s.addr).collect();
    agreed_leader(&addrs, &key, None).await;
    eventually(
        "n3's difference is shown",
        Duration::from_secs(10),
        || async {
            let r = status(specs[0].addr, &key).await?;
            let n3 = r.nodes.iter().find(|n| n.name == "n3")?;
            let n1 = r.nodes.iter().find(|n| n.name == "n1")?;
            // Whichever node leads sets the cluster's addresses; the others show how they differ.
            let differs = |d: &str| d != "same" && d != "unreported";
            (differs(&n3.declared) != differs(&n1.declared)).then_some(())
        },
    )
    .await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn two_voter_config_is_refused_with_the_witness_explained() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = write_key(dir.path());
    let specs = write_configs(dir.path(), &key_path, &["n1", "n2"], &["n1", "n2"], &|_| {
        String::new()
    });
    let err = clusterd::config::load(&specs[0].config_path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("witness"), "{err}");
    assert!(err.contains("allow_two_voters"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_learner_catches_up_from_a_snapshot_after_log_compaction() {
    let extra = |n: &str| format!("{}\n[raft]\nsnapshot_after = 10\n", two_addresses(n));
    let mut c = Cluster::start_with(
        &["n1", "n2", "n3", "n4"],
        &["n1", "n2", "n3"],
        &extra,
        &["n1", "n2", "n3"],
    )
    .await;
    let leader = c.leader().await;
    let client = c.client(&leader);
    for i in 0..150 {
        let note = NoteRequest {
            text: format!("note {i}"),
        };
        let _: Applied = with_retries(|| client.post("/v1/note", &note))
            .await
            .unwrap();
    }
    // The leader snapshotted and dropped the start of its log (it keeps 100 entries).
    let report = eventually(
        "log compaction on the leader",
        Duration::from_secs(10),
        || async {
            let r = status(c.specs[c.index(&leader)].addr, &c.key).await?;
            (r.purged_index.unwrap_or(0) > 10).then_some(r)
        },
    )
    .await;
    assert!(report.snapshot_index.unwrap() >= report.purged_index.unwrap());

    // n4 starts with an empty store: the entries it needs are gone, so it must install the
    // snapshot over HTTP, and ends up with the whole history.
    c.start_node("n4").await;
    let n4 = c.specs[3].addr;
    let n4_client = ApiClient::new(n4.to_string(), c.key.clone());
    eventually("n4 has every note", Duration::from_secs(15), || async {
        let events: Vec<clusterd::model::Event> = n4_client.get("/v1/history").await.ok()?;
        let notes: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Note { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect();
        let expected: Vec<String> = (0..150).map(|i| format!("note {i}")).collect();
        (notes == expected).then_some(())
    })
    .await;
    let r = status(n4, &c.key).await.unwrap();
    assert!(r.nodes.iter().any(|n| n.name == "n4" && !n.voter));
    c.stop_all().await;
}

fn owner_of(report: &clusterd::status::StatusReport, ip: &str) -> Option<(String, u64)> {
    let a = report.addresses.iter().find(|a| a.ip == ip)?;
    Some((a.owner.clone()?, a.epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_go_home_and_a_dead_owners_address_moves_after_the_takeover_delay() {
    let mut c = Cluster::start(&["n1", "n2", "n3"], &["n1", "n2", "n3"]).await;
    c.leader().await;
    let n2 = c.specs[1].addr;
    eventually(
        "both addresses at home",
        Duration::from_secs(10),
        || async {
            let r = status(n2, &c.key).await?;
            let home = owner_of(&r, "192.0.2.101/24")?.0 == "n1"
                && owner_of(&r, "192.0.2.102/24")?.0 == "n2";
            home.then_some(())
        },
    )
    .await;
    let before = owner_of(&status(n2, &c.key).await.unwrap(), "192.0.2.101/24").unwrap();

    let stopped = std::time::Instant::now();
    c.stop_node("n1").await;
    let (owner, epoch) = eventually(
        "192.0.2.101 moved off n1",
        Duration::from_secs(15),
        || async {
            let r = status(n2, &c.key).await?;
            let (owner, epoch) = owner_of(&r, "192.0.2.101/24")?;
            (owner != "n1").then_some((owner, epoch))
        },
    )
    .await;
    let took = stopped.elapsed();
    // n2 already holds .102, so the least loaded live node is n3.
    assert_eq!(owner, "n3");
    assert!(epoch > before.1);
    // Never before n1's lease could have ended (takeover delay of the default leases).
    let delay = clusterd_fencing::LeaseTimings::default().takeover_delay();
    assert!(
        took >= delay,
        "moved after {took:?}, before the takeover delay {delay:?}"
    );
    let r = status(n2, &c.key).await.unwrap();
    assert!(r.events.iter().any(|e| matches!(
        &e.kind,
        EventKind::OwnerChanged { ip, reason: clusterd::model::MoveReason::LeaseExpired, .. }
            if ip == "192.0.2.101/24"
    )));
    c.stop_all().await;
}
