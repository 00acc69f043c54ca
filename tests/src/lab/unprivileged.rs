//! Running clusterd the way its systemd unit does: as an unprivileged user holding only the
//! unit's ambient capabilities (`setpriv` from util-linux plays systemd's part), so tests prove
//! the daemon and the `nft` it starts need nothing more.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{IoContext, Result};
use super::process::ns_command;

/// The capabilities clusterd.service grants (`AmbientCapabilities=`), in setpriv's spelling.
pub const UNIT_CAPS: &str = "+net_admin,+net_raw,+net_bind_service";
/// The user and group id used: `nobody`/`nogroup` (any unprivileged id shows the point).
pub const NOBODY: u32 = 65534;

/// `program` inside namespace `ns` as [`NOBODY`], with `caps` as its inheritable, ambient and
/// bounding capabilities (none at all when `None`), and no way to gain privileges.
pub fn command(ns: &str, caps: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = ns_command(ns, "setpriv");
    let id = NOBODY.to_string();
    cmd.args([
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        "--no-new-privs",
    ]);
    match caps {
        Some(caps) => cmd
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(format!("--bounding-set=-all,{caps}")),
        None => cmd.arg("--bounding-set=-all"),
    };
    cmd.arg(program);
    cmd
}

/// `bin` if every directory above it is searchable by others, else a copy of it in `dir`
/// (made world-readable), so that [`NOBODY`] can run it.
pub fn runnable(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let searchable = bin
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if searchable {
        return Ok(bin.to_path_buf());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .ctx(|| format!("opening {} to others", dir.display()))?;
    let copy = dir.join(bin.file_name().unwrap_or_default());
    std::fs::copy(bin, &copy).ctx(|| format!("copying {}", bin.display()))?;
    Ok(copy)
}

/// Give `path` (a file or directory, not recursively) to [`NOBODY`].
pub fn give(path: &Path) -> Result<()> {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
        .ctx(|| format!("chown {}", path.display()))
}
