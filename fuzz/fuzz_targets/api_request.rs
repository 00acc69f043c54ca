//! Any bytes as a signed API request: its signature headers checked as a node checks them, its
//! body decoded as each route's request, and a decoded command applied to a cluster's state.
//! No panic; nothing unsigned passes the signature check.
#![no_main]

use clusterd::auth::{ClusterKey, Presented};
use clusterd::model::{AddressSpec, Command, Member, Role, State};
use libfuzzer_sys::fuzz_target;

fn cluster() -> State {
    let mut s = State::new(50);
    s.set_membership(["mx1", "mx2", "w1"].map(|n| {
        (
            Member {
                name: n.into(),
                addr: format!("{n}:7400"),
                role: if n == "w1" { Role::Witness } else { Role::Mail },
            },
            true,
        )
    }));
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

fuzz_target!(|data: &[u8]| {
    // Six header lines (method, path, time, nonce, target, signature, body hash), then the body.
    let mut parts = data.splitn(8, |b| *b == b'\n');
    let mut line = || {
        parts
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
    };
    let (method, path) = (line().unwrap_or_default(), line().unwrap_or_default());
    let fields: Vec<Option<String>> = (0..5).map(|_| line()).collect();
    let body = parts.next().unwrap_or_default();
    let key = ClusterKey::from_bytes([7; 32]);
    let presented = Presented {
        time: fields[0].as_deref(),
        nonce: fields[1].as_deref(),
        target: fields[2].as_deref(),
        signature: fields[3].as_deref(),
        body: fields[4].as_deref(),
    };
    let verdict = key.verify(&method, &path, presented, 1_700_000_000_000, "mx1");
    assert!(
        verdict.is_err(),
        "a request not signed with the key was accepted"
    );
    if let Some(hash) = fields[4].as_deref() {
        let _ = clusterd::auth::body_matches(hash, body);
    }
    let _ = serde_json::from_slice::<clusterd::client::NoteRequest>(body);
    let _ = serde_json::from_slice::<clusterd::client::AddMemberRequest>(body);
    let _ = serde_json::from_slice::<clusterd::lease::table::LeaseRequest>(body);
    let _ = serde_json::from_slice::<clusterd::client::FenceRequest>(body);
    if let Ok(cmd) = serde_json::from_slice::<Command>(body)
        && cmd.check_size().is_ok()
    {
        let mut s = cluster();
        let before = s.addresses["192.0.2.101/24"].epoch;
        let _ = s.apply(&cmd);
        assert!(s.addresses["192.0.2.101/24"].epoch >= before);
    }
});
