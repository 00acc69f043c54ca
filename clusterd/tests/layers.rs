//! The daemon's layers, read off its own source: state below, loops above, HTTP on top.
//!
//! Every file of `clusterd/src` is a module with a layer ([`LAYERS`]); a module may use
//! modules of its own layer or below, never above, and no files import each other in a circle.
//! The `clusterctl` side (`ctl`, `drill`, `cli`, `docs`, the binaries) uses only the bottom
//! layer, and nothing in the daemon uses it. A new file must be given a layer here: the test
//! names it. ARCHITECTURE.md draws the same map.
//!
//! Imports are read from the code (`crate::a::b` paths, `use crate::{..}` groups and
//! `super::x`), with comments and each file's `#[cfg(test)] mod tests` left out: tests may
//! reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Largest file, outside its tests.
const MAX_LINES: usize = 1200;

/// Over [`MAX_LINES`] until they are split (none now); the test fails once one is no longer
/// over it, so the list cannot go stale.
const OVERSIZE_PENDING: &[&str] = &[];

/// The layers, bottom first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        // Pure parts and the state each subsystem keeps: no task, no node handle.
        "state",
        &[
            "auth",
            "client",
            "clock",
            "config",
            "config::addresses",
            "config::checks",
            "config::cluster",
            "config::dns",
            "config::fencing",
            "config::leases",
            "config::observe",
            "config::problems",
            "config::raft",
            "config::values",
            "fence::agents",
            "health::probe",
            "health::tls",
            "health::tracker",
            "health::view",
            "hooks::event",
            "hooks::queue",
            "http_server",
            "lease::table",
            "metrics::registry",
            "metrics::text",
            "model",
            "model::command",
            "model::drill",
            "model::event",
            "model::fence",
            "model::health",
            "model::plan",
            "model::refusal",
            "raft",
            "raft::network",
            "raft::store",
            "status",
            "systemd::loops",
            "vip::cleanup",
            "vip::linux",
            "vip::mem",
            "vip::neigh",
            "vip::packet",
            "vip::sockets",
            "wire",
        ],
    ),
    // The node handle: what every task shares.
    ("node", &["node"]),
    // Writing to the log and electing, on the node handle.
    ("raft", &["raft::propose", "raft::prevote"]),
    // The daemon's loops, each on the node handle.
    (
        "tasks",
        &[
            "dns_feed",
            "fence",
            "health",
            "hooks",
            "lease",
            "metrics",
            "placement",
            "status::report",
            "systemd",
            "vip",
        ],
    ),
    // The HTTP API.
    ("api", &["api"]),
    // Wiring: builds the node handle, starts every task, serves the API.
    ("daemon", &["daemon"]),
];

/// The `clusterctl` side: may use only the bottom layer; nothing in the daemon uses it.
const TOOLS: &[&str] = &[
    "ctl",
    "drill",
    "cli",
    "docs",
    "bin::clusterd",
    "bin::clusterctl",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module (`a::b`) and its code without comments and without its tests.
fn modules() -> BTreeMap<String, (String, usize)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("cannot read {}", dir.display());
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src()).unwrap_or(&path).with_extension("");
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .filter(|c| c != "mod")
                .collect();
            let name = parts.join("::");
            if name == "lib" || name.ends_with("tests") {
                continue; // the crate root declares modules only; test files are tests
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let code = without_tests(&text);
            let lines = code.lines().count();
            let code: String = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, (code, lines));
        }
    }
    out
}

/// `text` up to its `#[cfg(test)] mod tests` (of any visibility).
fn without_tests(text: &str) -> &str {
    for (i, _) in text.match_indices("#[cfg(test)]\n") {
        let next = text[i..].lines().nth(1).unwrap_or("");
        if next.trim_end().ends_with("mod tests {") {
            return &text[..i];
        }
    }
    text
}

/// The longest known module that `path` (`a::b::Item`) starts with.
fn resolve(path: &str, known: &BTreeMap<String, (String, usize)>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// Leading `a::b::c` of `s` (lower-case path segments only).
fn path_at(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    loop {
        let seg: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if seg.is_empty() {
            break;
        }
        if !out.is_empty() {
            out.push_str("::");
        }
        out.push_str(&seg);
        rest = &rest[seg.len()..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// What each module imports (other modules, not its own ancestors).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules();
    let mut edges = BTreeMap::new();
    for (m, (code, _)) in &known {
        let mut to = BTreeSet::new();
        let mut add = |target: Option<String>| {
            if let Some(t) = target
                && t != *m
                && !m.starts_with(&format!("{t}::"))
            {
                to.insert(t);
            }
        };
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    add(resolve(&path_at(item.trim()), &known));
                }
            } else {
                add(resolve(&path_at(rest), &known));
            }
        }
        let parent = m.rsplit_once("::").map(|(p, _)| p.to_string());
        for (i, _) in code.match_indices("super::") {
            let rest = path_at(&code[i + "super::".len()..]);
            let full = match &parent {
                Some(p) => format!("{p}::{rest}"),
                None => rest,
            };
            add(resolve(&full, &known));
        }
        edges.insert(m.clone(), to);
    }
    edges
}

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&m))
}

#[test]
fn every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() {
    let edges = imports();
    let mut wrong = Vec::new();
    for (m, to) in &edges {
        let tool = TOOLS.contains(&m.as_str());
        let Some(mine) = layer_of(m).or(tool.then_some(0)) else {
            wrong.push(format!(
                "{m} has no layer: add it to LAYERS or TOOLS in this test"
            ));
            continue;
        };
        for t in to {
            if TOOLS.contains(&t.as_str()) {
                if !tool {
                    wrong.push(format!("{m} uses {t}, a clusterctl module"));
                }
                continue;
            }
            let theirs = layer_of(t).unwrap_or(usize::MAX);
            if theirs > mine {
                let name = |l: usize| LAYERS.get(l).map_or("none", |(n, _)| n);
                wrong.push(format!(
                    "{m} ({}) uses {t} ({}), a layer above it",
                    if tool { "clusterctl" } else { name(mine) },
                    name(theirs)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let edges = imports();
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_string());
            found.push(circle.join(" -> "));
            return;
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for t in edges.get(m).into_iter().flatten() {
            visit(t, edges, path, done, found);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut found);
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn no_file_is_longer_than_1200_lines_outside_its_tests() {
    let mut wrong = Vec::new();
    for (m, (_, lines)) in modules() {
        let pending = OVERSIZE_PENDING.contains(&m.as_str());
        if lines > MAX_LINES && !pending {
            wrong.push(format!("{m}: {lines} lines"));
        }
        if lines <= MAX_LINES && pending {
            wrong.push(format!("{m}: {lines} lines; take it off OVERSIZE_PENDING"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_imports_in_every_form() {
    let known: BTreeMap<String, (String, usize)> = ["a", "a::b", "c"]
        .iter()
        .map(|m| (m.to_string(), (String::new(), 0)))
        .collect();
    assert_eq!(
        resolve(&path_at("a::b::Item"), &known).as_deref(),
        Some("a::b")
    );
    assert_eq!(resolve(&path_at("a::x::y"), &known).as_deref(), Some("a"));
    assert_eq!(resolve(&path_at("zz::y"), &known), None);
    assert_eq!(path_at("c::{d, e}"), "c");
    let t = "fn a() {}\n#[cfg(test)]\nfn helper() {}\n#[cfg(test)]\npub(crate) mod tests {\n}\n";
    assert_eq!(
        without_tests(t),
        "fn a() {}\n#[cfg(test)]\nfn helper() {}\n"
    );
    // The real tree: the node handle is read, and the daemon is seen to use it.
    let edges = imports();
    assert!(edges.get("daemon").is_some_and(|t| t.contains("node")));
    assert!(
        edges
            .get("api")
            .is_some_and(|t| t.contains("raft::propose"))
    );
}

/// Modules whose code (comments and tests left out) mentions `needle`.
fn modules_using(needle: &str) -> Vec<String> {
    modules()
        .into_iter()
        .filter(|(_, (code, _))| code.contains(needle))
        .map(|(m, _)| m)
        .collect()
}

#[test]
fn quorum_freshness_is_asked_and_the_log_written_in_one_place() {
    // openraft's `millis_since_quorum_ack` reads stale after a freeze: every freshness question
    // goes through `Shared::leading`, and only the leadership check (`lease`) writes what it
    // reads.
    assert_eq!(
        modules_using("millis_since_quorum_ack"),
        Vec::<String>::new()
    );
    assert_eq!(modules_using("leases.confirmed"), vec!["lease", "node"]);
    // Commands reach the log only through `raft::propose`.
    assert_eq!(modules_using("client_write("), vec!["raft::propose"]);
    assert_eq!(
        modules_using("confirmed_age_ms"),
        vec!["lease::table", "node"]
    );
}

#[test]
fn the_leaders_duties_have_one_home() {
    // Recording the leadership, watching the members and planning live in `placement` only.
    for needle in [
        "Command::LeaderElected",
        "Command::SetAddresses",
        "Command::RecordMembership",
        "plan::plan(",
        "HookEvent::node(",
    ] {
        // The model defines and applies the commands; it does not write them.
        let writers: Vec<String> = modules_using(needle)
            .into_iter()
            .filter(|m| m != "model" && !m.starts_with("model::"))
            .collect();
        assert_eq!(writers, vec!["placement"], "{needle}");
    }
}
