//! The Debian package, built the way an operator builds it (`clusterd/debian/build-deb`:
//! release build, man pages and completions generated from the clap definitions, cargo-deb),
//! installed into a fresh Debian root, and checked there: files and modes, the conffile, the
//! system user and state directory made by the maintainer script, `clusterctl check-config`
//! refusing the shipped example config until `clusterctl keygen` made its key and accepting it
//! then, with no flags, the systemd unit (`systemd-analyze
//! verify` and its hardening score), the man pages and the completions.
//!
//! Why debootstrap and not a root assembled with `dpkg -x`: a minimal Debian root (minbase,
//! about a minute here) is the real install path. apt resolves the package's `Depends` from
//! the archive, dpkg runs `postinst` (which creates the `clusterd` user) and records the
//! conffile, and the binaries run against the target's own libraries. Nothing is started in
//! it and nothing is mounted: it is a plain chroot, removed when the test ends. systemd is
//! installed into the root afterwards only so that `systemd-analyze verify --root` finds the
//! standard units (`sysinit.target`, `network-online.target`) the unit refers to; the host's
//! systemd-analyze reads the unit from the root.
//!
//! Needs root, network access to the Debian archive, cargo-deb 3.8.0, debootstrap, systemd
//! and man-db (`.ci/run` installs them). Takes a few minutes, most of it the release build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::lab::process::{have_program, run_timeout};

const CARGO_DEB_VERSION: &str = "3.8.0";
/// The Debian archive (a package registry reachable from developers' machines and CI).
const MIRROR: &str = "http://deb.debian.org/debian";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn prerequisites() -> Result<()> {
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output();
    let version = cargo_deb
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    ensure!(
        version.contains(CARGO_DEB_VERSION),
        "cargo-deb {CARGO_DEB_VERSION} is needed (found {:?}); install it: \
         cargo install cargo-deb --locked --version {CARGO_DEB_VERSION}",
        version.trim()
    );
    for (program, package) in [
        ("debootstrap", "debootstrap"),
        ("systemd-analyze", "systemd"),
        ("man", "man-db"),
        ("chroot", "coreutils"),
    ] {
        ensure!(
            have_program(program),
            "{program} is missing; install it: apt-get install -y {package}"
        );
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the package test installs into a Debian root with debootstrap: run it as root"
    );
    Ok(())
}

/// The Debian release of this machine (the binaries are built against its libraries).
fn codename() -> Result<String> {
    let os = std::fs::read_to_string("/etc/os-release")?;
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .context("no VERSION_CODENAME in /etc/os-release: not Debian?")
}

/// Run a command inside the root, with a clean environment.
fn chroot(root: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args([
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND=noninteractive",
            "LANG=C.UTF-8",
        ])
        .args(args);
    Ok(run_timeout(&mut cmd, Duration::from_secs(600))?)
}

/// Install a package (a name, or a .deb inside the root) with its dependencies.
fn apt_install(root: &Path, package: &str) -> Result<String> {
    chroot(
        root,
        &[
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            package,
        ],
    )
}

fn build_package(out: &Path) -> Result<PathBuf> {
    let script = workspace().join("clusterd/debian/build-deb");
    let mut cmd = Command::new(&script);
    cmd.arg("--output").arg(out);
    // A release build of the workspace from scratch takes several minutes on 2 cores.
    run_timeout(&mut cmd, Duration::from_secs(45 * 60))?;
    let debs: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!("expected one .deb in {}, found {other:?}", out.display()),
    }
}

fn mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .mode()
        & 0o7777)
}

#[test]
fn debian_package_installs_into_a_fresh_debian_root_with_unit_man_pages_and_config() -> Result<()> {
    prerequisites()?;
    let work = tempfile::tempdir()?;
    let deb = build_package(work.path())?;

    let root = work.path().join("root");
    let mut bootstrap = Command::new("debootstrap");
    bootstrap
        .args(["--variant=minbase", &codename()?])
        .arg(&root)
        .arg(MIRROR);
    run_timeout(&mut bootstrap, Duration::from_secs(900)).context("debootstrap")?;
    std::fs::copy(&deb, root.join("tmp/clusterd.deb"))?;
    apt_install(&root, "/tmp/clusterd.deb")
        .context("installing the package with its dependencies")?;

    // Files, where operators and tools expect them.
    for (path, want) in [
        ("usr/sbin/clusterd", 0o755),
        ("usr/bin/clusterctl", 0o755),
        ("etc/clusterd/clusterd.toml", 0o644),
        ("usr/lib/systemd/system/clusterd.service", 0o644),
        ("usr/share/man/man8/clusterd.8.gz", 0o644),
        ("usr/share/man/man8/clusterd-cleanup.8.gz", 0o644),
        ("usr/share/man/man1/clusterctl.1.gz", 0o644),
        ("usr/share/man/man1/clusterctl-status.1.gz", 0o644),
        ("usr/share/man/man1/clusterctl-check-config.1.gz", 0o644),
        ("usr/share/bash-completion/completions/clusterd", 0o644),
        ("usr/share/bash-completion/completions/clusterctl", 0o644),
        ("usr/share/zsh/vendor-completions/_clusterd", 0o644),
        ("usr/share/zsh/vendor-completions/_clusterctl", 0o644),
        ("usr/share/doc/clusterd/README.md", 0o644),
        (
            "usr/share/doc/clusterd/examples/two-mail-nodes-and-witness/w1.toml",
            0o644,
        ),
        (
            "usr/share/doc/clusterd/examples/three-mail-nodes/mx3.toml",
            0o644,
        ),
    ] {
        let got = mode(&root.join(path))?;
        ensure!(got == want, "/{path} has mode {got:o}, want {want:o}");
    }
    let conffiles = chroot(&root, &["dpkg-query", "-W", "-f=${Conffiles}", "clusterd"])?;
    ensure!(
        conffiles.contains("/etc/clusterd/clusterd.toml"),
        "the example config is not a conffile: {conffiles:?}"
    );

    // The system user the unit runs as, owning the state directory.
    let passwd = chroot(&root, &["getent", "passwd", "clusterd"]).context("no clusterd user")?;
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    ensure!(
        fields.len() == 7 && fields[5] == "/var/lib/clusterd" && fields[6].ends_with("nologin"),
        "unexpected clusterd user: {passwd}"
    );
    let uid: u32 = fields[2].parse()?;
    ensure!(uid < 1000, "clusterd is not a system user: {passwd}");
    let state = std::fs::metadata(root.join("var/lib/clusterd"))?;
    ensure!(
        std::os::unix::fs::MetadataExt::uid(&state) == uid,
        "/var/lib/clusterd is not owned by clusterd"
    );

    // clusterctl reads /etc/clusterd/clusterd.toml by default and accepts the shipped example
    // once the cluster key it names exists (check-config refuses what the daemon would).
    let refused = chroot(&root, &["clusterctl", "check-config"]);
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("clusterctl keygen")),
        "check-config without a key file: {refused:?}"
    );
    chroot(&root, &["clusterctl", "keygen"])?;
    let checked = chroot(&root, &["clusterctl", "check-config"])?;
    ensure!(
        checked.contains("/etc/clusterd/clusterd.toml: ok"),
        "check-config said: {checked}"
    );
    let version = chroot(&root, &["clusterd", "--version"])?;
    ensure!(version.starts_with("clusterd "), "{version}");

    // The unit: what it must say, and systemd's own verification and hardening review.
    apt_install(&root, "systemd")?;
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/clusterd.service"))?;
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=clusterd",
        "ExecStart=/usr/sbin/clusterd ",
        "ExecStopPost=/usr/sbin/clusterd cleanup ",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        ensure!(unit.contains(line), "the unit lacks {line:?}");
    }
    let man_path = root.join("usr/share/man");
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("clusterd.service")
        // Documentation=man:... pages are looked up with man(1): in the root's pages.
        .env("MANPATH", &man_path);
    let verified = verify.output()?;
    let said = String::from_utf8_lossy(&verified.stderr).into_owned()
        + &String::from_utf8_lossy(&verified.stdout);
    ensure!(
        verified.status.success() && !said.contains("clusterd"),
        "systemd-analyze verify: {said}"
    );
    let mut security = Command::new("systemd-analyze");
    security
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(format!("--root={}", root.display()))
        .arg("clusterd.service");
    let review = security.output()?;
    ensure!(
        review.status.success(),
        "hardening exposure above 3.0: {}",
        String::from_utf8_lossy(&review.stdout)
            .lines()
            .last()
            .unwrap_or_default()
    );

    // Man pages render without warnings and document the commands.
    for (page, must) in [
        (
            "man8/clusterd.8.gz",
            ["cleanup", "/etc/clusterd/clusterd.toml"],
        ),
        ("man1/clusterctl.1.gz", ["check-config", "EXIT STATUS"]),
    ] {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(man_path.join(page))
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "man {page} failed");
        ensure!(
            out.stderr.is_empty(),
            "man {page} warned: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for m in must {
            ensure!(text.contains(m), "man {page} does not mention {m}:\n{text}");
        }
    }

    // Completions: bash parses them; zsh's start with the #compdef tag.
    for name in ["clusterd", "clusterctl"] {
        let bash = root
            .join("usr/share/bash-completion/completions")
            .join(name);
        let parsed = Command::new("bash").arg("-n").arg(&bash).status()?;
        ensure!(parsed.success(), "{} does not parse", bash.display());
        let zsh = std::fs::read_to_string(
            root.join("usr/share/zsh/vendor-completions")
                .join(format!("_{name}")),
        )?;
        ensure!(
            zsh.starts_with(&format!("#compdef {name}")),
            "zsh completion of {name}"
        );
    }
    Ok(())
}
