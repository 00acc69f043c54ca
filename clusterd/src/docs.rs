//! Man pages and shell completions for `clusterd` and `clusterctl`, generated from their clap
//! definitions ([`crate::cli::Args`], [`crate::ctl::Cli`]) so they never drift from the flags.
//!
//! Packaging runs `clusterd generate-docs DIR` and ships what it writes: `man/clusterd.8`,
//! `man/clusterctl.1` and one page per clusterctl subcommand (`clusterctl-status.1`, ...),
//! `completions/bash/{clusterd,clusterctl}` and `completions/zsh/_{clusterd,clusterctl}`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// Write every man page and completion file under `dir`; returns the files written.
pub fn generate(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    for (cmd, section) in commands() {
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        man_pages(&cmd, section, &man, &mut written)?;
    }
    for (shell, sub, file) in [(Shell::Bash, "bash", ""), (Shell::Zsh, "zsh", "_")] {
        let out = dir.join("completions").join(sub);
        fs::create_dir_all(&out)?;
        for (mut cmd, _) in commands() {
            let name = cmd.get_name().to_string();
            let path = out.join(format!("{file}{name}"));
            let mut f = fs::File::create(&path)?;
            clap_complete::generate(shell, &mut cmd, &name, &mut f);
            written.push(path);
        }
    }
    Ok(written)
}

/// Both commands with their man section: the daemon is an administration command (8).
fn commands() -> [(clap::Command, &'static str); 2] {
    [
        (crate::cli::Args::command(), "8"),
        (crate::ctl::Cli::command(), "1"),
    ]
}

/// One page for `cmd` and one for each visible subcommand, recursively
/// (`clusterctl-members-add.1`).
fn man_pages(
    cmd: &clap::Command,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, section, dir, written)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("clusterd manual")
        .source(format!("clusterd {}", env!("CARGO_PKG_VERSION")));
    written.push(page.generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_man_pages_for_both_binaries_and_every_clusterctl_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "clusterd.8",
            "clusterd-cleanup.8",
            "clusterctl.1",
            "clusterctl-status.1",
            "clusterctl-check-config.1",
            "clusterctl-members-add.1",
            "clusterd",
            "clusterctl",
            "_clusterd",
            "_clusterctl",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("generate-docs")),
            "hidden subcommand documented: {names:?}"
        );
        let page = fs::read_to_string(dir.path().join("man/clusterctl.1")).unwrap();
        assert!(page.contains(".TH clusterctl 1"), "{page}");
        assert!(page.contains("check\\-config"), "{page}");
        let bash = fs::read_to_string(dir.path().join("completions/bash/clusterctl")).unwrap();
        assert!(
            bash.contains("complete -F") && bash.contains("drain"),
            "{bash}"
        );
    }
}
