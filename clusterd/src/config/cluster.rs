//! `[cluster]` and `[[peers]]`: who the members are, which of them vote, and the checks of
//! the node's own identity and listeners against them.

use super::*;

/// `[cluster]`: membership settings. Must be identical on every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names of the members that vote in Raft elections: 3 or 5 of them. Default: every member
    /// (this node and all peers). Members left out join as non-voting learners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<Vec<String>>,
    /// Accept a cluster of exactly two voters. With two voters, losing either one stops the
    /// cluster (no quorum); prefer adding a witness. Default false.
    #[serde(default)]
    pub allow_two_voters: bool,
}

/// `[[peers]]`: another member of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's `node.name`.
    pub name: String,
    /// Where the peer's clusterd listens (its `node.advertise`, or `node.listen`), e.g.
    /// "192.0.2.12:7400". Must be a concrete address, not 0.0.0.0 or ::.
    pub address: SocketAddr,
    /// The peer's `node.role`: "mail" or "witness". Default "mail".
    #[serde(default)]
    pub role: Role,
}

/// A member of the cluster as the rest of the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberSpec {
    /// The member's node name.
    pub name: String,
    /// Where its clusterd is reached (this node: `advertise()`; peers: `address`).
    pub address: SocketAddr,
    /// Mail node or witness.
    pub role: Role,
}

impl Config {
    /// This node and all peers, sorted by name.
    pub fn members(&self) -> Vec<MemberSpec> {
        let mut members: Vec<MemberSpec> = std::iter::once(MemberSpec {
            name: self.node.name.clone(),
            address: self.advertise(),
            role: self.node.role,
        })
        .chain(self.peers.iter().map(|p| MemberSpec {
            name: p.name.clone(),
            address: p.address,
            role: p.role,
        }))
        .collect();
        members.sort();
        members
    }

    /// Names of the voting members, sorted: `cluster.voters` if set, else every member.
    pub fn voters(&self) -> Vec<String> {
        let mut voters: Vec<String> = match &self.cluster.voters {
            Some(v) => v.clone(),
            None => self.members().into_iter().map(|m| m.name).collect(),
        };
        voters.sort();
        voters.dedup();
        voters
    }

    /// Whether `name` is a voting member.
    pub fn is_voter(&self, name: &str) -> bool {
        self.voters().iter().any(|v| v == name)
    }

    /// The address peers use to reach this node: `node.advertise`, else `node.listen`.
    pub fn advertise(&self) -> SocketAddr {
        self.node.advertise.unwrap_or(self.node.listen)
    }

    /// The TCP listeners of this node (the API, the metrics listener, DNS over TCP) must not
    /// share a port on overlapping addresses: the daemon would fail to bind one of them and
    /// serve without it.
    pub(super) fn check_listeners(&self, v: &mut Problems) {
        let mut listeners: Vec<(String, SocketAddr)> =
            vec![("node.listen".into(), self.node.listen)];
        if let Some(m) = self.metrics.listen {
            listeners.push(("metrics.listen".into(), m));
        }
        if let Some(dns) = &self.dns {
            listeners.extend(
                dns.listen
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("dns.listen[{i}]"), *l)),
            );
        }
        let overlap = |a: &SocketAddr, b: &SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip()
                    || (a.ip().is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
                    || (b.ip().is_unspecified() && (b.is_ipv6() || a.is_ipv4())))
        };
        for (i, (field_a, a)) in listeners.iter().enumerate() {
            for (field_b, b) in &listeners[i + 1..] {
                // The same DNS address twice is reported by the DNS section itself.
                let both_dns = field_a.starts_with("dns.") && field_b.starts_with("dns.");
                if overlap(a, b) && !(both_dns && a == b) {
                    v.push(
                        field_b.clone(),
                        format!(
                            "{b} overlaps {field_a} ({a}): two listeners cannot share a TCP \
                             port on the same address; give {field_b} another port"
                        ),
                    );
                }
            }
        }
    }

    pub(super) fn check_node(&self, v: &mut Problems) {
        let n = &self.node;
        check_name(v, "node.name", &n.name, "node name");
        if n.listen.ip().is_unspecified() && n.advertise.is_none() {
            v.push(
                "node.advertise",
                format!(
                    "node.listen is {} (all addresses), so peers cannot use it to reach this \
                     node; set advertise to this node's address peers can reach, e.g. \
                     advertise = \"192.0.2.11:{}\"",
                    n.listen,
                    n.listen.port()
                ),
            );
        }
        if let Some(adv) = n.advertise.filter(|a| a.ip().is_unspecified()) {
            v.push(
                "node.advertise",
                format!(
                    "{adv} is the unspecified address, which peers cannot connect to; write \
                     this node's concrete address, e.g. \"192.0.2.11:{}\"",
                    adv.port()
                ),
            );
        }
        if self.advertise().port() == 0 {
            v.push(
                "node.listen",
                format!(
                    "port 0 in {} would pick a random port that peers cannot know; write a \
                     fixed port, e.g. 7400",
                    self.advertise()
                ),
            );
        }
        check_absolute(v, "node.data_dir", &n.data_dir, DEFAULT_DATA_DIR);
        check_absolute(v, "node.key_file", &n.key_file, DEFAULT_KEY_FILE);
    }

    pub(super) fn check_members(&self, v: &mut Problems) {
        let mut names: HashMap<&str, String> = HashMap::new();
        names.insert(&self.node.name, "node.name".to_string());
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        addrs.insert(self.advertise(), "node.advertise".to_string());
        for (i, p) in self.peers.iter().enumerate() {
            let f = format!("peers[{i}]");
            check_name(v, &format!("{f}.name"), &p.name, "peer name");
            if p.name == self.node.name {
                v.push(
                    format!("{f}.name"),
                    format!(
                        "{:?} is this node's own name (node.name); [[peers]] lists only the \
                         other members, so remove this entry",
                        p.name
                    ),
                );
            } else if let Some(first) = names.get(p.name.as_str()) {
                v.push(
                    format!("{f}.name"),
                    format!(
                        "{:?} is already used by {first}; every member needs its own name, so \
                         rename or remove one of them",
                        p.name
                    ),
                );
            } else {
                names.insert(&p.name, format!("{f}.name"));
            }
            if p.address.ip().is_unspecified() {
                v.push(
                    format!("{f}.address"),
                    format!(
                        "{} is the unspecified address, which cannot be connected to; write the \
                         peer's own address, e.g. \"192.0.2.12:{}\"",
                        p.address,
                        p.address.port()
                    ),
                );
            }
            if p.address.port() == 0 {
                v.push(
                    format!("{f}.address"),
                    format!(
                        "port 0 in {} cannot be connected to; write the port the peer listens \
                         on, e.g. 7400",
                        p.address
                    ),
                );
            }
            if let Some(first) = addrs.get(&p.address) {
                v.push(
                    format!("{f}.address"),
                    format!(
                        "{} is already used by {first}; every member listens on its own \
                         address, so correct one of them",
                        p.address
                    ),
                );
            } else {
                addrs.insert(p.address, format!("{f}.address"));
            }
        }
    }

    pub(super) fn check_voters(&self, v: &mut Problems) {
        let members = self.members();
        let member_names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let field = "cluster.voters";
        if let Some(list) = &self.cluster.voters {
            let mut seen = BTreeSet::new();
            for (i, name) in list.iter().enumerate() {
                if !member_names.contains(name.as_str()) {
                    v.push(
                        format!("{field}[{i}]"),
                        format!(
                            "{name:?} is not a member; voters must be node.name or a \
                             [[peers]] name, one of: {}",
                            join_quoted(member_names.iter())
                        ),
                    );
                }
                if !seen.insert(name.as_str()) {
                    v.push(
                        format!("{field}[{i}]"),
                        format!("{name:?} is listed twice; list each voter once"),
                    );
                }
            }
        }
        let voters = self.voters();
        let shown = join_quoted(voters.iter());
        let source = if self.cluster.voters.is_some() {
            "cluster.voters lists"
        } else {
            "cluster.voters is not set, so every member votes:"
        };
        match voters.len() {
            3 | 5 => {}
            2 if self.cluster.allow_two_voters => {}
            2 => v.push(
                field,
                format!(
                    "{source} 2 voters ({shown}). With two voters, losing either one stops the \
                     cluster (no quorum, so addresses are dropped everywhere). Add a third \
                     voter: a small node with role = \"witness\" that only votes, listed in \
                     [[peers]] on every node; or set cluster.allow_two_voters = true to accept \
                     that risk"
                ),
            ),
            0 | 1 => v.push(
                field,
                format!(
                    "{source} {} voter(s) ({shown}); a cluster needs 3 or 5 voters so that it \
                     survives losing one. Add members under [[peers]] (a witness node is \
                     enough for the third)",
                    voters.len()
                ),
            ),
            4 => v.push(
                field,
                format!(
                    "{source} 4 voters ({shown}); 4 voters survive no more failures than 3 \
                     and need one more for quorum. Make one a learner by leaving it out of \
                     cluster.voters, e.g. cluster.voters = [three of them]"
                ),
            ),
            n => v.push(
                field,
                format!(
                    "{source} {n} voters ({shown}); more than 5 voters slow every decision. \
                     Keep 5 voters in cluster.voters; the rest join as learners"
                ),
            ),
        }
        for m in members.iter().filter(|m| m.role == Role::Witness) {
            if !voters.contains(&m.name) {
                v.push(
                    field,
                    format!(
                        "{:?} has role witness but is not a voter; a witness does nothing \
                         but vote, so add it to cluster.voters (or remove it)",
                        m.name
                    ),
                );
            }
        }
    }
}
