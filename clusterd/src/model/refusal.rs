//! Why the state machine refused a command: one typed reason per rule, the same on every
//! replica. Its text is what an operator reads; its [`RefusalKind`] is what the API turns into
//! a status code. It crosses the wire inside [`Applied`] when a write was forwarded to the
//! leader; a reason in words only (from a node of an earlier build) arrives as
//! [`Refusal::Text`].

use super::*;

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// The node is not a member.
    #[error("{node} is not a member; `clusterctl status` lists the members")]
    NotAMember {
        /// The node named.
        node: String,
    },
    /// A witness (or a node that left) reported health.
    #[error("{node} is not a mail member and runs no checks")]
    RunsNoChecks {
        /// The node named.
        node: String,
    },
    /// An address was given to a node that may not hold one.
    #[error("{node} is not a mail member and cannot hold {ip}")]
    CannotHold {
        /// The node named.
        node: String,
        /// The address.
        ip: String,
    },
    /// A move or handoff to a node that is drained, a witness or unknown.
    #[error(
        "{node} cannot take {ip}: it is not an active mail member (drained, a witness or \
         unknown; see `clusterctl status`)"
    )]
    NotActive {
        /// The node named.
        node: String,
        /// The address.
        ip: String,
    },
    /// A move to a node failing a check of the address's services.
    #[error(
        "{node} cannot take {ip}: its {} {} critical there (see `clusterctl status`); move it \
         once the service passes",
        checks.join(", "),
        if checks.len() == 1 { "check is" } else { "checks are" }
    )]
    ServiceFailing {
        /// The node named.
        node: String,
        /// The address.
        ip: String,
        /// The critical checks.
        checks: Vec<String>,
    },
    /// The address is not one of the cluster's.
    #[error("{ip} is not a floating address of this cluster; `clusterctl status` lists them")]
    UnknownAddress {
        /// The address.
        ip: String,
    },
    /// A decision made at an epoch the address has moved past.
    #[error("{ip} is at epoch {current}, not {epoch}: the decision is stale")]
    Stale {
        /// The address.
        ip: String,
        /// The epoch the decision named.
        epoch: u64,
        /// The address's epoch now.
        current: u64,
    },
    /// A leader's decision written in a term other than the one it was made in.
    #[error(
        "decided in term {decided} but written in term {written}: a leader's plan holds only in \
         the term it was made in"
    )]
    OtherTerm {
        /// The term it was decided in.
        decided: u64,
        /// The term of its log entry.
        written: u64,
    },
    /// A release of an address with no planned move.
    #[error("{ip} has no planned move; nothing to release")]
    NothingToRelease {
        /// The address.
        ip: String,
    },
    /// A planned move of an address nobody holds.
    #[error("{ip} has no owner to hand it over")]
    NoOwner {
        /// The address.
        ip: String,
    },
    /// A drill on a node that holds no addresses.
    #[error("{node} is not a mail member; only mail nodes hold addresses to drill")]
    NoDrillOn {
        /// The node named.
        node: String,
    },
    /// A second drill while one runs.
    #[error(
        "a drill ({kind}) is already running on {node} since {since_ms}; end it first with \
         `clusterctl drill end {node}`"
    )]
    DrillRunning {
        /// Where it runs.
        node: String,
        /// What it simulates.
        kind: String,
        /// Since when (unix ms).
        since_ms: u64,
    },
    /// A drill report over the event limit.
    #[error("the drill report is too long")]
    ReportTooLong,
    /// An operator note without text.
    #[error("the note is empty; write some text")]
    EmptyNote,
    /// An operator note over [`MAX_NOTE_LEN`].
    #[error("the note is {bytes} bytes; keep it under {MAX_NOTE_LEN}")]
    NoteTooLong {
        /// Its length.
        bytes: usize,
    },
    /// An address set that names one address twice.
    #[error("address {ip} is declared twice; declare each address once")]
    DeclaredTwice {
        /// The address.
        ip: String,
    },
    /// A fence result with no fence under way.
    #[error("no fence of {node} is under way (a new leader starts its own); nothing to record")]
    NoFence {
        /// The node named.
        node: String,
    },
    /// A command routed to the fencing rules that is not one of theirs (a defect).
    #[error("not a fencing command")]
    NotFencing,
    /// A reason in words only, from a node of an earlier build.
    #[error("{text}")]
    Text {
        /// The reason.
        text: String,
    },
}

/// What a refusal says about the request, for the API's status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// It names a node or address the cluster does not have.
    Unknown,
    /// The request itself is malformed, whatever the state.
    Invalid,
    /// The request is sound but the state does not allow it now.
    Conflict,
}

impl Refusal {
    /// What the refusal says about the request.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::NotAMember { .. } | Refusal::UnknownAddress { .. } => RefusalKind::Unknown,
            Refusal::EmptyNote
            | Refusal::NoteTooLong { .. }
            | Refusal::ReportTooLong
            | Refusal::DeclaredTwice { .. } => RefusalKind::Invalid,
            Refusal::RunsNoChecks { .. }
            | Refusal::CannotHold { .. }
            | Refusal::NotActive { .. }
            | Refusal::ServiceFailing { .. }
            | Refusal::Stale { .. }
            | Refusal::OtherTerm { .. }
            | Refusal::NothingToRelease { .. }
            | Refusal::NoOwner { .. }
            | Refusal::NoDrillOn { .. }
            | Refusal::DrillRunning { .. }
            | Refusal::NoFence { .. }
            | Refusal::NotFencing
            | Refusal::Text { .. } => RefusalKind::Conflict,
        }
    }
}

/// A refusal as it arrives: typed, or in words from a node of an earlier build.
#[derive(Deserialize)]
#[serde(untagged)]
enum RefusalWire {
    Typed(Refusal),
    Text(String),
}

/// Read [`Applied::refused`] in either form.
pub(super) fn deserialize_refused<'de, D>(d: D) -> Result<Option<Refusal>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<RefusalWire>::deserialize(d)?.map(|w| match w {
        RefusalWire::Typed(r) => r,
        RefusalWire::Text(text) => Refusal::Text { text },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_crosses_the_wire_typed_and_one_in_words_still_reads() {
        let applied = Applied::refused(Refusal::Stale {
            ip: "192.0.2.101/24".into(),
            epoch: 3,
            current: 4,
        });
        let json = serde_json::to_string(&applied).unwrap();
        assert!(json.contains(r#""refusal":"stale""#), "{json}");
        let back: Applied = serde_json::from_str(&json).unwrap();
        assert_eq!(back, applied);
        assert_eq!(
            back.refused.unwrap().to_string(),
            "192.0.2.101/24 is at epoch 4, not 3: the decision is stale"
        );
        // An earlier build sends the reason as a string.
        let old: Applied =
            serde_json::from_str(r#"{"changed":false,"refused":"mx3 is drained"}"#).unwrap();
        let reason = old.refused.unwrap();
        assert_eq!(reason.to_string(), "mx3 is drained");
        assert_eq!(reason.kind(), RefusalKind::Conflict);
        let fine: Applied = serde_json::from_str(r#"{"changed":true,"refused":null}"#).unwrap();
        assert_eq!(fine.refused, None);
    }

    #[test]
    fn each_refusal_says_what_it_is_about() {
        let one = Refusal::ServiceFailing {
            node: "mx2".into(),
            ip: "192.0.2.101/24".into(),
            checks: vec!["imap".into()],
        };
        assert!(one.to_string().contains("its imap check is critical there"));
        let two = Refusal::ServiceFailing {
            node: "mx2".into(),
            ip: "192.0.2.101/24".into(),
            checks: vec!["imap".into(), "smtp".into()],
        };
        assert!(
            two.to_string()
                .contains("its imap, smtp checks are critical")
        );
        let unknown = Refusal::UnknownAddress { ip: "x".into() };
        assert_eq!(unknown.kind(), RefusalKind::Unknown);
        assert_eq!(Refusal::EmptyNote.kind(), RefusalKind::Invalid);
        assert_eq!(two.kind(), RefusalKind::Conflict);
    }
}
