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

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_refused, assert_valid, base, peer};
    use super::*;

    #[test]
    fn members_include_this_node_sorted_by_name() {
        let mut c = base();
        c.node.name = "mx3".to_string();
        c.node.advertise = Some("192.0.2.99:7401".parse().expect("addr"));
        let m = c.members();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["mx2", "mx3", "w1"]);
        assert_eq!(m[1].address, "192.0.2.99:7401".parse().expect("addr"));
        assert_eq!(m[1].role, Role::Mail);
        assert_eq!(m[2].role, Role::Witness);
    }

    #[test]
    fn voters_default_to_every_member() {
        let c = base();
        assert_eq!(c.voters(), ["mx1", "mx2", "w1"]);
        assert!(c.is_voter("mx1") && c.is_voter("w1"));
        assert!(!c.is_voter("mx9"));
    }

    #[test]
    fn members_left_out_of_voters_are_learners() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        c.cluster.voters = Some(vec!["w1".into(), "mx2".into(), "mx1".into()]);
        assert_valid(&c);
        assert_eq!(c.voters(), ["mx1", "mx2", "w1"]);
        assert!(!c.is_voter("mx3"));
    }

    #[test]
    fn advertise_falls_back_to_listen() {
        let mut c = base();
        assert_eq!(c.advertise(), c.node.listen);
        let adv: SocketAddr = "198.51.100.1:7400".parse().expect("addr");
        c.node.advertise = Some(adv);
        assert_eq!(c.advertise(), adv);
    }

    #[test]
    fn node_name_outside_charset_refused() {
        for bad in ["MX1", "-mx1", "mx1-", "", "mx_1", "mx.1", &"a".repeat(64)] {
            let mut c = base();
            c.node.name = bad.to_string();
            c.cluster.voters = None;
            assert_refused(&c, "node.name", "1 to 63 characters");
        }
        let mut c = base();
        c.node.name = "a".repeat(63);
        c.addresses[0].home = c.node.name.clone();
        assert_valid(&c);
    }

    #[test]
    fn peer_name_outside_charset_refused() {
        let mut c = base();
        c.peers[0].name = "Mx2".into();
        assert_refused(&c, "peers[0].name", "lowercase");
    }

    #[test]
    fn node_listed_in_peers_refused() {
        let mut c = base();
        c.peers.push(peer("mx1", 14, Role::Mail));
        assert_refused(&c, "peers[2].name", "this node's own name");
    }

    #[test]
    fn duplicate_member_names_refused() {
        let mut c = base();
        c.peers.push(peer("mx2", 14, Role::Mail));
        assert_refused(&c, "peers[2].name", "already used by peers[0].name");
    }

    #[test]
    fn duplicate_member_addresses_refused() {
        let mut c = base();
        c.peers[0].address = c.node.listen;
        assert_refused(&c, "peers[0].address", "already used by node.advertise");
        let mut c = base();
        c.peers[1].address = c.peers[0].address;
        assert_refused(&c, "peers[1].address", "already used by peers[0].address");
    }

    #[test]
    fn unspecified_listen_requires_advertise() {
        let mut c = base();
        c.node.listen = "0.0.0.0:7400".parse().expect("addr");
        assert_refused(&c, "node.advertise", "set advertise");
        c.node.listen = "[::]:7400".parse().expect("addr");
        assert_refused(&c, "node.advertise", "set advertise");
        c.node.advertise = Some("192.0.2.11:7400".parse().expect("addr"));
        assert_valid(&c);
    }

    #[test]
    fn unspecified_advertise_refused() {
        let mut c = base();
        c.node.advertise = Some("0.0.0.0:7400".parse().expect("addr"));
        assert_refused(&c, "node.advertise", "unspecified");
    }

    #[test]
    fn unspecified_peer_address_refused() {
        let mut c = base();
        c.peers[0].address = "0.0.0.0:7400".parse().expect("addr");
        assert_refused(&c, "peers[0].address", "unspecified");
    }

    #[test]
    fn port_zero_refused() {
        let mut c = base();
        c.node.listen = "192.0.2.11:0".parse().expect("addr");
        assert_refused(&c, "node.listen", "port 0");
        let mut c = base();
        c.peers[0].address = "192.0.2.12:0".parse().expect("addr");
        assert_refused(&c, "peers[0].address", "port 0");
    }

    #[test]
    fn relative_data_dir_refused() {
        let mut c = base();
        c.node.data_dir = "var/lib/clusterd".into();
        assert_refused(&c, "node.data_dir", "absolute path");
    }

    #[test]
    fn relative_key_file_refused() {
        let mut c = base();
        c.node.key_file = "cluster.key".into();
        assert_refused(&c, "node.key_file", "absolute path");
    }

    #[test]
    fn two_voters_refused_without_override() {
        let mut c = base();
        c.peers.pop();
        assert_refused(&c, "cluster.voters", "losing either one stops the cluster");
        assert_refused(&c, "cluster.voters", "role = \"witness\"");
        assert_refused(&c, "cluster.voters", "cluster.allow_two_voters = true");
    }

    #[test]
    fn two_voters_accepted_with_override() {
        let mut c = base();
        c.peers.pop();
        c.cluster.allow_two_voters = true;
        assert_valid(&c);
    }

    #[test]
    fn one_voter_refused() {
        let mut c = base();
        c.peers.clear();
        c.addresses.truncate(1);
        assert_refused(&c, "cluster.voters", "3 or 5 voters");
        let mut c = base();
        c.cluster.voters = Some(vec!["mx1".into()]);
        c.peers.pop();
        c.cluster.allow_two_voters = true;
        assert_refused(&c, "cluster.voters", "3 or 5 voters");
    }

    #[test]
    fn four_voters_refused_with_learner_advice() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        assert_refused(&c, "cluster.voters", "leaving it out of cluster.voters");
    }

    #[test]
    fn five_voters_accepted() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        c.peers.push(peer("mx4", 15, Role::Mail));
        assert_valid(&c);
    }

    #[test]
    fn more_than_five_voters_refused() {
        let mut c = base();
        for (i, n) in ["mx3", "mx4", "mx5"].iter().enumerate() {
            c.peers.push(peer(n, 14 + i as u8, Role::Mail));
        }
        assert_refused(&c, "cluster.voters", "Keep 5 voters");
        c.cluster.voters = Some(vec![
            "mx1".into(),
            "mx2".into(),
            "mx3".into(),
            "mx4".into(),
            "w1".into(),
        ]);
        assert_valid(&c);
    }

    #[test]
    fn voter_that_is_not_a_member_refused() {
        let mut c = base();
        c.cluster.voters = Some(vec!["mx1".into(), "mx2".into(), "w2".into()]);
        assert_refused(&c, "cluster.voters[2]", "\"w2\" is not a member");
    }

    #[test]
    fn voter_listed_twice_refused() {
        let mut c = base();
        c.cluster.voters = Some(vec!["mx1".into(), "mx2".into(), "w1".into(), "mx2".into()]);
        assert_refused(&c, "cluster.voters[3]", "listed twice");
    }

    #[test]
    fn witness_must_be_a_voter() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        c.cluster.voters = Some(vec!["mx1".into(), "mx2".into(), "mx3".into()]);
        assert_refused(
            &c,
            "cluster.voters",
            "\"w1\" has role witness but is not a voter",
        );
    }

    #[test]
    fn listeners_sharing_a_port_on_overlapping_addresses_are_refused_naming_both() {
        let with_dns = |listen: &[&str]| {
            let mut c = base();
            c.dns.as_mut().unwrap().listen = listen.iter().map(|l| l.parse().unwrap()).collect();
            c
        };
        // DNS over TCP on the API's own address and port.
        assert_refused(
            &with_dns(&["192.0.2.11:7400"]),
            "dns.listen[0]",
            "overlaps node.listen (192.0.2.11:7400)",
        );
        // All addresses overlaps every address of the family, IPv6's any overlaps IPv4 too.
        assert_refused(&with_dns(&["0.0.0.0:7400"]), "dns.listen[0]", "node.listen");
        assert_refused(&with_dns(&["[::]:7400"]), "dns.listen[0]", "node.listen");
        // Another port, or another address, is fine.
        assert_valid(&with_dns(&[
            "192.0.2.11:53",
            "192.0.2.12:7400",
            "[2001:db8::11]:7400",
        ]));
        // The metrics listener too.
        let mut c = base();
        c.metrics.listen = Some("192.0.2.11:53".parse().unwrap());
        assert_refused(&c, "dns.listen[0]", "overlaps metrics.listen");
    }
}
