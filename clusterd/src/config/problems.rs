//! How a bad config is reported: every problem names its field and the fix
//! (`ConfigError`, `Problem`), TOML syntax errors with their line, and the shared checks of
//! names and paths.

use super::*;

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One entry per problem, in the order the file is checked.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub(super) fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                field: field.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a key path like "addresses[1].home" or "checks.imap.port"; for syntax errors the
    /// key path guessed from the file and the line and column.
    pub field: String,
    /// What is wrong, the value seen, and what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Turn a toml/serde error into a problem that names the key and line, with advice.
pub(super) fn toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim_end().to_string();
    let advice = if message.starts_with("unknown field") {
        "; remove the key or correct its spelling"
    } else if message.starts_with("unknown variant") {
        "; use one of the values listed"
    } else if message.starts_with("missing field") {
        "; add it (see the example configurations shipped in examples/)"
    } else if message.starts_with("invalid type") {
        "; write the value in the form expected (strings need double quotes, lists are [..])"
    } else if message.starts_with("duplicate key") || message.contains("duplicate") {
        "; keep only one of them"
    } else if message.contains("; write") {
        // Our own value parsers already said what to write.
        ""
    } else {
        "; fix the TOML syntax here (strings need double quotes, tables are written [name])"
    };
    let field = match err.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            let mut path = key_path(text, line);
            if let Some(missing) = missing_field_name(&message) {
                path = if path.is_empty() {
                    missing.to_string()
                } else {
                    format!("{path}.{missing}")
                };
            }
            if path.is_empty() {
                format!("line {line}, column {column}")
            } else {
                format!("{path} (line {line}, column {column})")
            }
        }
        None => missing_field_name(&message)
            .map(str::to_string)
            .unwrap_or_else(|| "(file)".to_string()),
    };
    ConfigError::single(field, format!("{message}{advice}"))
}

pub(super) fn missing_field_name(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// 1-based line and column of byte offset `at`.
pub(super) fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Best-effort key path of line `line` (1-based): the enclosing table header (with the index of
/// array tables, e.g. "peers[1]") and the key written on that line.
pub(super) fn key_path(text: &str, line: usize) -> String {
    let mut header = String::new();
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    let mut key = None;
    for (i, raw) in text.lines().enumerate().take(line) {
        let l = raw.trim();
        if let Some(inner) = l.strip_prefix("[[") {
            let name = inner.split("]]").next().unwrap_or("").trim().to_string();
            let n = array_counts.entry(name.clone()).or_insert(0);
            *n += 1;
            header = format!("{name}[{}]", *n - 1);
            key = None;
        } else if let Some(inner) = l.strip_prefix('[') {
            let name = inner.split(']').next().unwrap_or("").trim().to_string();
            // A sub-table of an array table, e.g. [dns.zones.names] after [[dns.zones]].
            header = array_counts
                .iter()
                .filter(|(a, _)| name.starts_with(&format!("{a}.")))
                .max_by_key(|(a, _)| a.len())
                .map(|(a, n)| format!("{a}[{}]{}", n - 1, &name[a.len()..]))
                .unwrap_or(name);
            key = None;
        } else if i + 1 == line {
            key = l
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string());
        }
    }
    match (header.is_empty(), key) {
        (_, None) => header,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{header}.{k}"),
    }
}

pub(super) fn mail_names(members: &[MemberSpec]) -> Vec<&str> {
    members
        .iter()
        .filter(|m| m.role == Role::Mail)
        .map(|m| m.name.as_str())
        .collect()
}

#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

pub(super) fn join_quoted<T: AsRef<str>>(items: impl Iterator<Item = T>) -> String {
    items
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a member name given at run time (e.g. `clusterctl members add`); the error says what
/// to write instead.
pub fn check_member_name(name: &str) -> Result<(), String> {
    check_label(name).map_err(|()| {
        format!(
            "node name {name:?} is not allowed; write 1 to 63 characters of lowercase a-z, \
             0-9 and '-', not starting or ending with '-', e.g. \"mx3\""
        )
    })
}

/// Node and check names: 1-63 of [a-z0-9-], not starting or ending with '-'.
pub(super) fn check_name(v: &mut Problems, field: &str, name: &str, what: &str) {
    if check_label(name).is_err() {
        v.push(
            field,
            format!(
                "{what} {name:?} is not allowed; write 1 to 63 characters of lowercase a-z, \
                 0-9 and '-', not starting or ending with '-', e.g. \"mx1\""
            ),
        );
    }
}

pub(super) fn check_label(label: &str) -> Result<(), ()> {
    let ok = (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok { Ok(()) } else { Err(()) }
}

pub(super) fn check_fqdn(name: &str) -> Result<(), String> {
    let Some(body) = name.strip_suffix('.') else {
        return Err(format!(
            "must be fully qualified and end with '.'; write \"{name}.\""
        ));
    };
    if body.is_empty() {
        return Err(
            "is the root zone, which clusterd does not serve; write the zone's name, e.g. \
             \"mail.example.com.\""
                .to_string(),
        );
    }
    if body.len() > 253 {
        return Err(format!(
            "is {} characters long; a DNS name has at most 253, so shorten it",
            body.len()
        ));
    }
    for label in body.split('.') {
        if check_label(label).is_err() {
            return Err(format!(
                "has the label {label:?}; each label must be 1 to 63 of lowercase a-z, 0-9 and \
                 '-', not starting or ending with '-', e.g. \"mail.example.com.\""
            ));
        }
    }
    Ok(())
}

pub(super) fn check_absolute(v: &mut Problems, field: &str, path: &Path, example: &str) {
    if !path.is_absolute() {
        v.push(
            field,
            format!(
                "{:?} is a relative path, which would depend on the directory clusterd starts \
                 in; write an absolute path, e.g. {example:?}",
                path.display().to_string()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{BASE, base, parse_err};
    use super::*;

    #[test]
    fn unknown_field_lists_allowed_fields_and_line() {
        let p = parse_err(&BASE.replace("name = \"mx1\"", "nmae = \"mx1\""));
        assert_eq!(p.field, "node.nmae (line 3, column 1)");
        assert!(p.message.contains("unknown field `nmae`"), "{p}");
        assert!(
            p.message.contains("`name`") && p.message.contains("`key_file`"),
            "{p}"
        );
        assert!(p.message.contains("correct its spelling"), "{p}");
    }

    #[test]
    fn unknown_field_in_array_table_names_its_index() {
        let p = parse_err(&BASE.replace("role = \"witness\"", "role = \"witness\"\nport = 1"));
        assert!(p.field.starts_with("peers[1].port"), "{p}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let p = parse_err(&BASE.replace("kind = \"smtp\"", "kind = \"smtp\"\nrise = \"two\""));
        assert!(p.field.starts_with("checks.smtp.rise"), "{p}");
        assert!(p.message.contains("invalid type"), "{p}");
    }

    #[test]
    fn unknown_check_kind_lists_kinds() {
        let p = parse_err(&BASE.replace("kind = \"smtp\"", "kind = \"esmtp\""));
        assert!(p.field.starts_with("checks.smtp.kind"), "{p}");
        assert!(
            p.message.contains("`lmtp`") && p.message.contains("`exec`"),
            "{p}"
        );
    }

    #[test]
    fn missing_required_field_is_named() {
        let p = parse_err(&BASE.replace("listen = \"192.0.2.11:7400\"", ""));
        assert!(p.field.starts_with("node.listen"), "{p}");
        assert!(p.message.contains("add it"), "{p}");
        let p = parse_err("");
        assert!(p.field.starts_with("node"), "{p}");
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let p = parse_err(&BASE.replace("name = \"mx1\"", "name = mx1"));
        assert!(p.field.contains("line 3"), "{p}");
        assert!(p.message.contains("TOML syntax"), "{p}");
    }

    #[test]
    fn load_of_missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/clusterd.toml")).expect_err("missing");
        assert_eq!(err.problems[0].field, "/nonexistent/clusterd.toml");
        assert!(err.problems[0].message.contains("cannot read"), "{err}");
    }

    #[test]
    fn load_reads_and_validates_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clusterd.toml");
        std::fs::write(&path, BASE).expect("write");
        assert_eq!(load(&path).expect("valid"), base());
    }

    #[test]
    fn every_problem_is_reported_one_per_line() {
        let mut c = base();
        c.node.name = "MX1".into();
        c.addresses[0].home = "nobody".into();
        c.raft.snapshot_after = 1;
        let err = c.validate().expect_err("invalid");
        assert!(err.problems.len() >= 3, "{err}");
        let text = err.to_string();
        assert_eq!(text.lines().count(), err.problems.len(), "{text}");
        assert!(text.contains("node.name: "), "{text}");
        assert!(text.contains("addresses[0].home: "), "{text}");
        assert!(text.contains("raft.snapshot_after: "), "{text}");
    }
}
