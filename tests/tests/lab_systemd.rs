//! clusterd under a service manager, without one: the tests play systemd's side of the notify
//! protocol (a datagram socket named by `$NOTIFY_SOCKET`, `$WATCHDOG_USEC`) and of the
//! journal's native protocol (a datagram socket at `/run/systemd/journal/socket`, set up in a
//! private mount namespace), and check what the real daemon sends. Run as root.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::lab::process::{ProcId, ns_command, spawn_logged, wait_until};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::lab::{LabState, clusterd as lab_clusterd, unprivileged};

/// Notifications received on a socket, in order, with the time they arrived.
struct NotifySocket {
    socket: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(path: &Path) -> Result<NotifySocket> {
        let socket = UnixDatagram::bind(path)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(NotifySocket {
            socket,
            seen: Vec::new(),
        })
    }

    /// Receive until a message satisfies `want` (returned) or `within` passes (error).
    fn wait_for(&mut self, within: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), msg.clone()));
                if want(&msg) {
                    return Ok(msg);
                }
            }
        }
        bail!(
            "nothing matching within {within:?}; received: {:?}",
            self.messages()
        )
    }

    /// Receive everything for `window`.
    fn collect(&mut self, window: Duration) -> Vec<String> {
        let start = self.seen.len();
        let _ = self.wait_for(window, |_| false);
        self.seen[start..].iter().map(|(_, m)| m.clone()).collect()
    }

    fn messages(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, m)| m.as_str()).collect()
    }
}

/// Daemons this test started, terminated by their own pid when it ends.
struct Started(Vec<(ProcId, std::process::Child)>);

impl Drop for Started {
    fn drop(&mut self) {
        for (id, child) in &mut self.0 {
            let _ = id.terminate(Duration::from_secs(5));
            let _ = child.wait();
        }
    }
}

/// Start `name`'s daemon; with `as_unit`, as the systemd unit runs it: this binary, as an
/// unprivileged user with only the unit's ambient capabilities.
fn start_daemon(
    st: &LabState,
    name: &str,
    env: &[(&str, String)],
    as_unit: Option<&Path>,
) -> Result<(ProcId, std::process::Child)> {
    let node = st
        .nodes
        .iter()
        .find(|n| n.name == name)
        .context("no such node")?;
    let bin = st.clusterd_bin.clone().context("clusterd is not built")?;
    let config = node.clusterd_config.clone().context("no config")?;
    let log_path = node.dir.join("clusterd.log");
    // A fresh log: the test reads it for this run's lines only.
    std::fs::File::create(&log_path)?;
    let mut cmd = match as_unit {
        Some(bin) => unprivileged::command(&node.netns, Some(unprivileged::UNIT_CAPS), bin),
        None => ns_command(&node.netns, bin),
    };
    cmd.arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(spawn_logged(
        cmd,
        &log_path,
        &format!("clusterd on {name}"),
    )?)
}

/// Run an nftables script inside `node`'s namespace and return what nft printed.
fn nft(st: &LabState, node: &str, script: &str) -> Result<String> {
    let ns = &st
        .nodes
        .iter()
        .find(|n| n.name == node)
        .context("no such node")?
        .netns;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), script)?;
    let out = ns_command(ns, "nft").arg("-f").arg(file.path()).output()?;
    ensure!(
        out.status.success(),
        "nft -f failed for {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// mx1's daemon runs as the unit runs it: an unprivileged user with only the unit's ambient
/// capabilities, so its readiness (guard and addresses converged) also proves netlink, nftables,
/// announcements and DNS on port 53 work with them.
#[test]
fn notify_ready_only_after_joining_watchdog_only_while_the_daemon_answers_stopping_on_sigterm()
-> Result<()> {
    let lab = TestLab::network_only()?;
    let mut st = lab.state().clone();
    st.clusterd_bin = lab_clusterd::built_binary("clusterd");
    st.clusterctl_bin = lab_clusterd::built_binary("clusterctl");
    lab_clusterd::write_configs(&mut st)?;
    let mx1 = st
        .nodes
        .iter()
        .find(|n| n.name == "mx1")
        .context("mx1")?
        .clone();
    // mx1's state and its own copy of the key belong to the unprivileged user.
    let keep = tempfile::tempdir()?;
    let bin = unprivileged::runnable(
        st.clusterd_bin.as_deref().context("no clusterd")?,
        keep.path(),
    )?;
    let shared_key = lab_clusterd::key_path(&st.run_dir);
    let own_key = mx1.dir.join("cluster.key");
    std::fs::copy(&shared_key, &own_key)?;
    unprivileged::give(&own_key)?;
    unprivileged::give(&mx1.dir.join("clusterd-data"))?;
    let config = mx1.clusterd_config.clone().context("no mx1 config")?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace(&*shared_key.to_string_lossy(), &own_key.to_string_lossy()),
    )?;
    let sockdir = tempfile::tempdir()?;
    let path = sockdir.path().join("notify");
    let mut notify = NotifySocket::bind(&path)?;
    // Reachable by the unprivileged daemon, as systemd's notify socket is.
    std::fs::set_permissions(sockdir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
    let env = [
        ("NOTIFY_SOCKET", path.to_string_lossy().into_owned()),
        ("WATCHDOG_USEC", "2000000".to_string()),
    ];
    let mut started = Started(vec![start_daemon(&st, "mx1", &env, Some(&bin))?]);

    // Alone, mx1 cannot have a leader: it says what it waits for and never READY=1.
    let alone = notify.collect(Duration::from_secs(3));
    ensure!(
        alone
            .iter()
            .any(|m| m.contains("STATUS=waiting for a leader")),
        "no waiting status while alone: {alone:?}; log:\n{}",
        std::fs::read_to_string(mx1.dir.join("clusterd.log")).unwrap_or_default()
    );
    ensure!(
        !alone.iter().any(|m| m.contains("READY=1")),
        "ready without a cluster: {alone:?}"
    );

    started.0.push(start_daemon(&st, "mx2", &[], None)?);
    started.0.push(start_daemon(&st, "w1", &[], None)?);
    let ready = notify.wait_for(Duration::from_secs(30), |m| m.contains("READY=1"))?;
    // At READY the node follows a leader, its address runtime ran (guard installed) ...
    ensure!(
        ready.contains("STATUS=leader "),
        "READY without a status: {ready}"
    );
    let tables = nft(&st, "mx1", "list tables\n")?;
    ensure!(
        tables.contains("clusterd_guard"),
        "ready before the address runtime ran: {tables}"
    );
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", started.0[0].0.pid))?;
    ensure!(
        proc_status.lines().any(|l| l.starts_with("Uid:")
            && l.split_whitespace().nth(2) == Some(&*unprivileged::NOBODY.to_string())),
        "mx1's daemon does not run as the unprivileged user:\n{proc_status}"
    );
    let status = lab_clusterd::status(&st, &mx1)?;
    ensure!(
        status.leader.is_some(),
        "ready, but clusterctl status shows no leader"
    );
    // ... and later status lines follow what it holds: its home address.
    let home = format!("{}/24", mx1.floating.context("mx1 has a home address")?);
    notify.wait_for(Duration::from_secs(15), |m| {
        m.contains("STATUS=") && m.contains(&home)
    })?;
    // With only the unit's capabilities: the address is configured (netlink), the daemon
    // answers DNS on port 53 (bound without root), and announcing raised no error (raw socket).
    let configured = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lab.ip("mx1", &["-o", "addr", "show", "dev", &mx1.iface])
            .is_ok_and(|a| a.contains(&home))
    });
    ensure!(
        configured,
        "{home} never configured on mx1 by the unprivileged daemon"
    );
    let answer = ns_command(&lab.netns_of("client")?, "dig")
        .args(["+short", "+time=1", "+tries=3", &format!("@{}", mx1.ipv4)])
        .arg(format!("imap.{}", lab_clusterd::LAB_ZONE))
        .output()?;
    let answer = String::from_utf8_lossy(&answer.stdout);
    ensure!(
        answer.contains("192.0.2.10"),
        "no DNS answer from mx1 on port 53: {answer:?}"
    );
    let log = std::fs::read_to_string(mx1.dir.join("clusterd.log"))?;
    ensure!(
        !log.contains("announcement failed") && !log.contains("Operation not permitted"),
        "the unprivileged daemon met a permission error:\n{log}"
    );

    // Pinged at about a quarter of the interval while everything answers.
    let pings = notify.collect(Duration::from_secs(3));
    let n = pings.iter().filter(|m| *m == "WATCHDOG=1").count();
    ensure!(
        n >= 3,
        "{n} watchdog pings in 3 s with WATCHDOG_USEC=2s: {pings:?}"
    );

    // The watchdog asks the daemon's own API: when it stops answering (its port blocked for
    // the node itself; peers unaffected), pings stop and the status says why.
    let ip = mx1.ipv4;
    nft(
        &st,
        "mx1",
        &format!(
            "table inet cdtest {{\n chain input {{\n type filter hook input priority 0;\n \
             ip saddr {ip} tcp dport {} drop\n }}\n}}\n",
            clusterd_tests::lab::state::CLUSTERD_PORT
        ),
    )?;
    notify.wait_for(Duration::from_secs(5), |m| {
        m.contains("STATUS=unhealthy: API")
    })?;
    let blocked = notify.collect(Duration::from_secs(2));
    ensure!(
        !blocked.iter().any(|m| *m == "WATCHDOG=1"),
        "pinged while its API did not answer: {blocked:?}"
    );
    nft(&st, "mx1", "delete table inet cdtest\n")?;
    notify.wait_for(Duration::from_secs(5), |m| m == "WATCHDOG=1")?;

    // SIGTERM: STOPPING=1 first, then the process exits.
    let (id, _) = &started.0[0];
    id.signal(nix::sys::signal::Signal::SIGTERM)?;
    notify.wait_for(Duration::from_secs(5), |m| m.starts_with("STOPPING=1"))?;
    ensure!(
        id.wait_gone(Duration::from_secs(10)),
        "mx1 did not exit after SIGTERM"
    );
    Ok(())
}

/// Parse datagrams of the journal's native protocol: `KEY=value\n`, or `KEY\n` + 64-bit
/// little-endian length + value + `\n`.
fn journal_fields(mut data: &[u8]) -> Result<BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let end = data
            .iter()
            .position(|b| *b == b'\n' || *b == b'=')
            .context("field without end")?;
        let key = String::from_utf8_lossy(&data[..end]).into_owned();
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let nl = rest
                .iter()
                .position(|b| *b == b'\n')
                .context("no newline")?;
            fields.insert(key, String::from_utf8_lossy(&rest[..nl]).into_owned());
            data = &rest[nl + 1..];
        } else {
            let rest = &data[end + 1..];
            ensure!(rest.len() >= 8, "short length");
            let len = u64::from_le_bytes(rest[..8].try_into()?) as usize;
            ensure!(rest.len() > 8 + len, "short value");
            fields.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            data = &rest[8 + len + 1..];
        }
    }
    Ok(fields)
}

#[test]
fn journal_log_format_sends_structured_fields_to_the_journal_socket() -> Result<()> {
    // A single daemon in a private network and mount namespace, whose /run/systemd/journal
    // socket is this test's socket.
    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&socket_path)?;
    journal.set_read_timeout(Some(Duration::from_millis(200)))?;
    let key = dir.path().join("cluster.key");
    clusterd::auth::ClusterKey::generate().write(&key, false)?;
    let config = dir.path().join("mx1.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"mx1\"\nlisten = \"127.0.0.1:7400\"\ndata_dir = \"{}\"\n\
             key_file = \"{}\"\ndry_run = true\n\n[[peers]]\nname = \"mx2\"\n\
             address = \"127.0.0.2:7400\"\n\n[[peers]]\nname = \"w1\"\n\
             address = \"127.0.0.3:7400\"\nrole = \"witness\"\n",
            dir.path().join("data").display(),
            key.display()
        ),
    )?;
    let bin = lab_clusterd::built_binary("clusterd")
        .context("clusterd is not built; run `cargo build -p clusterd --bins`")?;
    let script = format!(
        "set -e; ip link set lo up; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal; \
         ln -s '{}' /run/systemd/journal/socket; exec '{}' --config '{}' --log-format journal",
        socket_path.display(),
        bin.display(),
        config.display()
    );
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("unshare (util-linux)")?;
    let pid = child.id();
    let result = (|| -> Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Ok(n) = journal.recv(&mut buf) else {
                continue;
            };
            if n == 0 {
                continue; // the layer's connection check
            }
            let fields = journal_fields(&buf[..n])?;
            if fields
                .get("MESSAGE")
                .is_some_and(|m| m.starts_with("listening on"))
            {
                return Ok(fields);
            }
            seen.push(fields);
        }
        bail!("no `listening on` entry in the journal within 15 s; got {seen:?}")
    })();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait()?;
    let fields = result?;
    ensure!(
        status.success(),
        "clusterd exited with {status} after SIGTERM"
    );
    ensure!(
        fields.get("MESSAGE").map(String::as_str) == Some("listening on 127.0.0.1:7400"),
        "{fields:?}"
    );
    ensure!(
        fields.get("PRIORITY").map(String::as_str) == Some("6"),
        "info is priority 6: {fields:?}"
    );
    ensure!(
        fields.get("SYSLOG_IDENTIFIER").map(String::as_str) == Some("clusterd"),
        "{fields:?}"
    );
    ensure!(
        fields.get("NODE").map(String::as_str) == Some("mx1"),
        "the node field: {fields:?}"
    );
    ensure!(
        fields.contains_key("CODE_FILE") && fields.contains_key("TARGET"),
        "{fields:?}"
    );
    Ok(())
}
