//! The chaos campaign's fault schedule: pure, seeded, serialisable.
//!
//! A schedule is a list of bursts. Each burst starts a few faults at random offsets within its
//! first seconds, so that they overlap, and every fault ends (heals) by itself after its own
//! duration. Between bursts the cluster is left alone until it has settled: that quiet point is
//! where the checker demands that every address is served again and every node agrees.
//!
//! Two faults that would undo each other on one node never overlap (a node has one process, one
//! network table, one dovecot, one postfix); operator actions (moves, drains, drills, learner
//! changes) run one at a time. Everything else may overlap: a frozen leader while another node
//! is cut off one way, a drain during a partition, a learner removed while a node restarts.
//!
//! The same seed and shape always give the same schedule; the schedule is written as JSON with
//! every failure, and `lab chaos --replay FILE` runs it again.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::lab::Service;

/// The nodes a schedule is written for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Mail nodes, `mx1`..; the last one is the learner when `learner` is set.
    pub mail_nodes: usize,
    /// Whether the witness `w1` runs (a voter).
    pub witness: bool,
    /// The last mail node is a learner (not a voter), which the schedule removes and adds back.
    pub learner: bool,
    /// Floating addresses (`ip` without prefix) and their home nodes.
    pub addresses: Vec<(String, String)>,
}

impl Shape {
    /// The chaos lab: three mail nodes (mx3 a learner) and the witness.
    pub fn standard() -> Shape {
        Shape {
            mail_nodes: 3,
            witness: true,
            learner: true,
            addresses: (1..=3)
                .map(|i| (format!("192.0.2.{}", 100 + i), format!("mx{i}")))
                .collect(),
        }
    }

    /// Every node's name, mail nodes first.
    pub fn nodes(&self) -> Vec<String> {
        let mut v = self.mail();
        if self.witness {
            v.push("w1".into());
        }
        v
    }

    /// The mail nodes' names.
    pub fn mail(&self) -> Vec<String> {
        (1..=self.mail_nodes).map(|i| format!("mx{i}")).collect()
    }

    /// The voters' names (every node but the learner).
    pub fn voters(&self) -> Vec<String> {
        let learner = self.learner_name();
        self.nodes()
            .into_iter()
            .filter(|n| Some(n) != learner.as_ref())
            .collect()
    }

    /// The learner's name, if the shape has one.
    pub fn learner_name(&self) -> Option<String> {
        (self.learner && self.mail_nodes >= 2).then(|| format!("mx{}", self.mail_nodes))
    }
}

/// One fault (or operator action) of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// `kill -9` the node's clusterd; start it again when the fault ends.
    Kill,
    /// SIGSTOP the node's clusterd; SIGCONT when the fault ends.
    Freeze,
    /// Drop all traffic between the node and its peers (or only `peer`), both ways.
    Partition {
        /// Only this peer.
        peer: Option<String>,
    },
    /// One way: the node hears nothing from its peers (or `peer`) but can still send.
    DeafTo {
        /// Only this peer.
        peer: Option<String>,
    },
    /// One way: nothing the node sends reaches its peers (or `peer`), but it hears them.
    MuteTo {
        /// Only this peer.
        peer: Option<String>,
    },
    /// The node's link goes down at the switch and comes back when the fault ends.
    LinkDown,
    /// Every daemon killed (half of the times SIGTERM, half SIGKILL) and started again.
    RestartAll {
        /// SIGTERM (graceful) rather than SIGKILL.
        graceful: bool,
    },
    /// The node's clusterd gets almost no CPU: busy loops in its namespace, the daemon at the
    /// idle scheduling class.
    Starve,
    /// dovecot or postfix stopped on the node, started again when the fault ends.
    ServiceDown {
        /// Which.
        service: Service,
    },
    /// An operator moves an address to the node (`clusterctl move`).
    Move {
        /// The address (without prefix).
        address: String,
    },
    /// An operator drains the node; undrains it when the fault ends.
    Drain,
    /// An operator runs a failover drill of the node (`clusterctl drill node`).
    Drill,
    /// An operator removes the learner (this node) and adds it back when the fault ends.
    LearnerOut,
}

impl Action {
    /// Which exclusive resource of its node the action occupies (`None`: the cluster's
    /// operator slot).
    pub fn resource(&self) -> Resource {
        match self {
            Action::Kill | Action::Freeze | Action::Starve => Resource::Process,
            Action::RestartAll { .. } => Resource::AllProcesses,
            Action::Partition { .. }
            | Action::DeafTo { .. }
            | Action::MuteTo { .. }
            | Action::LinkDown => Resource::Network,
            Action::ServiceDown { service } => Resource::Service(*service),
            Action::Move { .. } | Action::Drain | Action::Drill | Action::LearnerOut => {
                Resource::Operator
            }
        }
    }

    /// A short name for reports (`kill`, `deaf_to`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Freeze => "freeze",
            Action::Partition { .. } => "partition",
            Action::DeafTo { .. } => "deaf_to",
            Action::MuteTo { .. } => "mute_to",
            Action::LinkDown => "link_down",
            Action::RestartAll { .. } => "restart_all",
            Action::Starve => "starve",
            Action::ServiceDown { .. } => "service_down",
            Action::Move { .. } => "move",
            Action::Drain => "drain",
            Action::Drill => "drill",
            Action::LearnerOut => "learner_out",
        }
    }
}

/// What two overlapping actions must not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// The node's clusterd process.
    Process,
    /// Every node's clusterd process.
    AllProcesses,
    /// The node's network (its partition table, its link).
    Network,
    /// One mail service of the node.
    Service(Service),
    /// The cluster's operator (one planned action at a time).
    Operator,
}

/// One planned fault: on `node`, `at_ms` after its burst started, lasting `for_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Start, in milliseconds from the start of the burst.
    pub at_ms: u64,
    /// Duration until it heals (0: instantaneous, such as a restart of every daemon).
    pub for_ms: u64,
    /// The node it hits (`all` for a restart of every daemon).
    pub node: String,
    /// What happens.
    pub action: Action,
}

impl Step {
    /// When it heals, from the start of the burst.
    pub fn end_ms(&self) -> u64 {
        self.at_ms + self.for_ms
    }

    /// Until when it occupies its resource: an instantaneous action still takes a while to
    /// carry out (restarting every daemon, a move or a drill waiting for its outcome).
    pub fn busy_until_ms(&self) -> u64 {
        let least = match self.action {
            Action::RestartAll { .. } => 3_000,
            Action::Move { .. } => 3_000,
            Action::Drill => 8_000,
            _ => 1,
        };
        self.at_ms + self.for_ms.max(least)
    }
}

/// Faults that overlap, followed by a quiet point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Burst {
    /// Its faults, by start time.
    pub steps: Vec<Step>,
}

impl Burst {
    /// When the last fault of the burst heals.
    pub fn length_ms(&self) -> u64 {
        self.steps
            .iter()
            .map(Step::busy_until_ms)
            .max()
            .unwrap_or(0)
    }
}

/// A whole campaign: the seed it came from, the nodes, the bursts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed that generated it.
    pub seed: u64,
    /// The nodes it was made for.
    pub shape: Shape,
    /// The bursts, in order.
    pub bursts: Vec<Burst>,
}

/// Most faults started in one burst.
pub const MAX_PER_BURST: usize = 4;

/// Latest start of a fault within its burst: faults started within this overlap.
pub const BURST_SPREAD_MS: u64 = 3_000;

impl Schedule {
    /// A schedule of `faults` faults for `shape`, determined by `seed`.
    pub fn generate(seed: u64, faults: usize, shape: &Shape) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut bursts = Vec::new();
        let mut left = faults;
        while left > 0 {
            let want = rng.random_range(1..=MAX_PER_BURST).min(left);
            let burst = burst(&mut rng, shape, want);
            left -= burst.steps.len().max(1).min(left);
            bursts.push(burst);
        }
        Schedule {
            seed,
            shape: shape.clone(),
            bursts,
        }
    }

    /// Number of faults in the schedule.
    pub fn faults(&self) -> usize {
        self.bursts.iter().map(|b| b.steps.len()).sum()
    }

    /// The schedule as text, one fault per line (for reports).
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "seed {}, {} faults in {} bursts\n",
            self.seed,
            self.faults(),
            self.bursts.len()
        );
        for (i, b) in self.bursts.iter().enumerate() {
            for st in &b.steps {
                let _ = writeln!(
                    s,
                    "  burst {i:>4} +{:>5} ms for {:>5} ms  {:<5} {:?}",
                    st.at_ms, st.for_ms, st.node, st.action
                );
            }
        }
        s
    }
}

/// One burst of up to `want` faults that never share a resource while both are active.
fn burst(rng: &mut StdRng, shape: &Shape, want: usize) -> Burst {
    let mut steps: Vec<Step> = Vec::new();
    // A few tries per fault: a draw that collides with the faults already placed is redrawn.
    for _ in 0..want * 8 {
        if steps.len() == want {
            break;
        }
        let step = draw(rng, shape);
        if steps.iter().all(|other| compatible(other, &step)) {
            steps.push(step);
        }
    }
    steps.sort_by_key(|s| s.at_ms);
    Burst { steps }
}

/// Whether two steps may be active at once.
pub fn compatible(a: &Step, b: &Step) -> bool {
    let overlap = a.at_ms < b.busy_until_ms() && b.at_ms < a.busy_until_ms();
    if !overlap {
        return true;
    }
    // A service started again is waited for from the client, which a pulled cable prevents.
    let cable_and_service = |x: &Step, y: &Step| {
        x.node == y.node
            && matches!(x.action, Action::LinkDown)
            && matches!(y.action, Action::ServiceDown { .. })
    };
    if cable_and_service(a, b) || cable_and_service(b, a) {
        return false;
    }
    let (ra, rb) = (a.action.resource(), b.action.resource());
    match (ra, rb) {
        (Resource::Operator, Resource::Operator) => false,
        (Resource::AllProcesses, Resource::Process | Resource::AllProcesses)
        | (Resource::Process, Resource::AllProcesses) => false,
        _ => !(a.node == b.node && ra == rb),
    }
}

/// Draw one fault.
fn draw(rng: &mut StdRng, shape: &Shape) -> Step {
    let nodes = shape.nodes();
    let mail = shape.mail();
    let node = nodes[rng.random_range(0..nodes.len())].clone();
    let mail_node = mail[rng.random_range(0..mail.len())].clone();
    let peer = |rng: &mut StdRng, of: &str| -> Option<String> {
        if rng.random_bool(0.5) {
            return None;
        }
        let others: Vec<&String> = nodes.iter().filter(|n| *n != of).collect();
        others
            .get(rng.random_range(0..others.len()))
            .map(|s| (*s).clone())
    };
    let at_ms = rng.random_range(0..=BURST_SPREAD_MS);
    // Weights: node and network faults are the point; operator actions and whole-cluster
    // restarts are rarer.
    let roll = rng.random_range(0..100u32);
    let (node, action, for_ms) = match roll {
        0..=11 => (node, Action::Kill, rng.random_range(200..=4_000)),
        12..=25 => {
            // A third of the freezes last about one lease (the hardest case for the guard).
            let ms = if rng.random_bool(0.35) {
                rng.random_range(600..=1_100)
            } else {
                rng.random_range(100..=3_000)
            };
            (node, Action::Freeze, ms)
        }
        26..=35 => {
            let p = peer(rng, &node);
            (
                node,
                Action::Partition { peer: p },
                rng.random_range(500..=5_000),
            )
        }
        36..=43 => {
            let p = peer(rng, &node);
            (
                node,
                Action::DeafTo { peer: p },
                rng.random_range(500..=5_000),
            )
        }
        44..=51 => {
            let p = peer(rng, &node);
            (
                node,
                Action::MuteTo { peer: p },
                rng.random_range(500..=5_000),
            )
        }
        52..=59 => {
            // Blips shorter than a lease, flaps of a few hundred ms, outages of seconds.
            let ms = match rng.random_range(0..3) {
                0 => rng.random_range(100..=400),
                1 => rng.random_range(400..=1_200),
                _ => rng.random_range(1_200..=4_000),
            };
            (node, Action::LinkDown, ms)
        }
        60..=63 => (
            "all".into(),
            Action::RestartAll {
                graceful: rng.random_bool(0.5),
            },
            0,
        ),
        64..=71 => (node, Action::Starve, rng.random_range(1_000..=5_000)),
        72..=79 => {
            let service = if rng.random_bool(0.5) {
                Service::Dovecot
            } else {
                Service::Postfix
            };
            (
                mail_node,
                Action::ServiceDown { service },
                rng.random_range(1_000..=5_000),
            )
        }
        80..=87 => {
            let (address, _) = &shape.addresses[rng.random_range(0..shape.addresses.len())];
            (
                mail_node,
                Action::Move {
                    address: address.clone(),
                },
                0,
            )
        }
        88..=92 => (mail_node, Action::Drain, rng.random_range(1_000..=5_000)),
        93..=96 => (mail_node, Action::Drill, 0),
        _ => match shape.learner_name() {
            Some(l) => (l, Action::LearnerOut, rng.random_range(1_000..=5_000)),
            None => (node, Action::Kill, rng.random_range(200..=4_000)),
        },
    };
    Step {
        at_ms,
        for_ms,
        node,
        action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let shape = Shape::standard();
        let a = Schedule::generate(7, 50, &shape);
        assert_eq!(a, Schedule::generate(7, 50, &shape));
        assert_ne!(a, Schedule::generate(8, 50, &shape));
        assert_eq!(a.faults(), 50);
    }

    #[test]
    fn a_schedule_survives_its_json_form() {
        let a = Schedule::generate(11, 40, &Shape::standard());
        let text = serde_json::to_string_pretty(&a).unwrap();
        let back: Schedule = serde_json::from_str(&text).unwrap();
        assert_eq!(a, back);
    }

    #[test]
    fn faults_sharing_a_resource_never_overlap_in_a_burst() {
        let s = Schedule::generate(3, 2_000, &Shape::standard());
        for b in &s.bursts {
            assert!(!b.steps.is_empty() && b.steps.len() <= MAX_PER_BURST);
            for (i, x) in b.steps.iter().enumerate() {
                for y in &b.steps[i + 1..] {
                    assert!(compatible(x, y), "{x:?} overlaps {y:?}");
                }
            }
        }
    }

    #[test]
    fn overlapping_faults_are_common_and_every_kind_occurs() {
        let s = Schedule::generate(5, 1_000, &Shape::standard());
        let overlapping = s
            .bursts
            .iter()
            .filter(|b| {
                b.steps
                    .windows(2)
                    .any(|w| w[1].at_ms < w[0].busy_until_ms())
            })
            .count();
        assert!(overlapping > 100, "only {overlapping} bursts overlap");
        let kinds: std::collections::BTreeSet<&str> = s
            .bursts
            .iter()
            .flat_map(|b| b.steps.iter().map(|st| st.action.name()))
            .collect();
        assert_eq!(kinds.len(), 13, "{kinds:?}");
        let one_way_both = s.bursts.iter().flat_map(|b| &b.steps).any(|st| {
            matches!(st.action, Action::DeafTo { peer: Some(_) })
                || matches!(st.action, Action::MuteTo { peer: Some(_) })
        });
        assert!(one_way_both);
        let lease_freezes = s
            .bursts
            .iter()
            .flat_map(|b| &b.steps)
            .filter(|st| st.action == Action::Freeze && (600..=1_100).contains(&st.for_ms))
            .count();
        assert!(
            lease_freezes > 20,
            "{lease_freezes} freezes of about a lease"
        );
    }

    #[test]
    fn durations_stay_within_their_ranges_and_learner_actions_hit_the_learner() {
        let shape = Shape::standard();
        let s = Schedule::generate(9, 1_000, &shape);
        for st in s.bursts.iter().flat_map(|b| &b.steps) {
            assert!(st.at_ms <= BURST_SPREAD_MS);
            assert!(st.for_ms <= 5_000, "{st:?}");
            match &st.action {
                Action::Freeze => assert!((100..=3_000).contains(&st.for_ms)),
                Action::LearnerOut => assert_eq!(Some(&st.node), shape.learner_name().as_ref()),
                Action::ServiceDown { .. } | Action::Drain | Action::Move { .. } => {
                    assert!(shape.mail().contains(&st.node));
                }
                Action::RestartAll { .. } => assert_eq!(st.node, "all"),
                _ => assert!(shape.nodes().contains(&st.node)),
            }
        }
        assert_eq!(shape.voters(), ["mx1", "mx2", "w1"]);
    }

    #[test]
    fn a_restart_of_every_daemon_excludes_every_process_fault_while_it_runs() {
        let all = Step {
            at_ms: 100,
            for_ms: 0,
            node: "all".into(),
            action: Action::RestartAll { graceful: false },
        };
        let freeze = Step {
            at_ms: 0,
            for_ms: 500,
            node: "mx2".into(),
            action: Action::Freeze,
        };
        let cut = Step {
            at_ms: 0,
            for_ms: 500,
            node: "mx2".into(),
            action: Action::Partition { peer: None },
        };
        assert!(!compatible(&all, &freeze));
        assert!(compatible(&all, &cut));
        // Restarting every daemon takes a while: a freeze right after it still collides.
        let soon = Step {
            at_ms: 600,
            ..freeze.clone()
        };
        assert!(!compatible(&all, &soon));
        let later = Step {
            at_ms: 3_200,
            ..freeze.clone()
        };
        assert!(compatible(&all, &later));
        let two_drains = Step {
            node: "mx1".into(),
            action: Action::Drain,
            ..freeze.clone()
        };
        let a_move = Step {
            node: "mx2".into(),
            action: Action::Move {
                address: "192.0.2.101".into(),
            },
            for_ms: 0,
            at_ms: 200,
        };
        assert!(!compatible(&two_drains, &a_move));
    }
}
