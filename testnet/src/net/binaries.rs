//! Finding the `bftd` and `bftd-byzantine` binaries, and building them
//! when bftnet runs from cargo.
//!
//! Honest nodes run the operator's `bftd`, which cannot lie; byzantine
//! nodes run `bftd-byzantine` (a binary of this crate, `src/bin/`).
//! `cargo run -p bftnet` builds bftnet only, not the binaries the testnet
//! runs. So when bftnet was started by cargo (`CARGO` and
//! `CARGO_MANIFEST_DIR` are set), it makes sure both are built from the
//! same sources, in the same target directory and profile: `cargo build -p
//! bftd -p bftnet`, a no-op when up to date.

use super::error::NetError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

/// Environment variable naming the `bftd` binary.
pub const BFTD_ENV: &str = "BFTD_BIN";

/// Environment variable naming the `bftd-byzantine` binary.
pub const BFTD_BYZANTINE_ENV: &str = "BFTD_BYZANTINE_BIN";

fn byzantine_name() -> String {
    format!("bftd-byzantine{}", std::env::consts::EXE_SUFFIX)
}

/// Finds `bftd-byzantine`, the lying node: `$BFTD_BYZANTINE_BIN` if set;
/// else next to this executable (it is built with bftnet), or next to
/// `bftd`.
pub fn find_bftd_byzantine(bftd: &Path) -> Result<PathBuf, NetError> {
    if let Some(path) = std::env::var_os(BFTD_BYZANTINE_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(NetError::BinaryMissing {
                name: "bftd-byzantine",
                env: BFTD_BYZANTINE_ENV,
                searched: vec![path],
            })
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut searched = Vec::new();
    for dir in [exe.parent(), bftd.parent()].into_iter().flatten() {
        searched.push(dir.join(byzantine_name()));
    }
    searched
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or(NetError::BinaryMissing {
            name: "bftd-byzantine",
            env: BFTD_BYZANTINE_ENV,
            searched,
        })
}

fn bftd_name() -> String {
    format!("bftd{}", std::env::consts::EXE_SUFFIX)
}

/// Finds `bftd`: `$BFTD_BIN` if set; else, when run by cargo, the `bftd`
/// next to this executable, built first if missing or stale; else next to
/// this executable or one directory up (`target/*/deps` for tests).
pub fn find_bftd() -> Result<PathBuf, NetError> {
    if let Some(path) = std::env::var_os(BFTD_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(NetError::BinaryMissing {
                name: "bftd",
                env: BFTD_ENV,
                searched: vec![path],
            })
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new(".")).to_owned();
    let cargo = std::env::var_os("CARGO");
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    if let (Some(cargo), Some(workspace)) = (cargo, manifest.as_deref().and_then(Path::parent)) {
        if workspace.join("node").join("Cargo.toml").is_file() {
            let profile: &[&str] = if dir.ends_with("release") {
                &["--release"]
            } else {
                &[]
            };
            return ensure_bftd(&cargo, workspace, &dir, profile, true);
        }
    }
    let mut searched = vec![dir.join(bftd_name())];
    if let Some(up) = dir.parent() {
        searched.push(up.join(bftd_name()));
    }
    searched
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or(NetError::BinaryMissing {
            name: "bftd",
            env: BFTD_ENV,
            searched,
        })
}

/// The `bftd` in `profile_dir`, built with `cargo build -p bftd -p bftnet`
/// (plus `profile`, which builds `bftd-byzantine` next to it) unless both
/// are newer than every source they are built from. `show_progress` lets
/// cargo's output through; otherwise it is returned in the error if the
/// build fails.
pub fn ensure_bftd(
    cargo: &OsString,
    workspace: &Path,
    profile_dir: &Path,
    profile: &[&str],
    show_progress: bool,
) -> Result<PathBuf, NetError> {
    let bftd = profile_dir.join(bftd_name());
    let byzantine = profile_dir.join(byzantine_name());
    if up_to_date(&bftd, workspace) && up_to_date(&byzantine, workspace) {
        return Ok(bftd);
    }
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let mut command = Command::new(cargo);
    command
        .args(["build", "-p", "bftd", "-p", "bftnet"])
        .args(profile)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace);
    // Variables cargo sets for the process running us would change some
    // build scripts' fingerprints (ring watches CARGO_MANIFEST_DIR) and make
    // this build, and the next ordinary one, rebuild half the tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if set_by_cargo {
            command.env_remove(&*name);
        }
    }
    let described = format!(
        "cargo build -p bftd -p bftnet {}--target-dir {}",
        profile.iter().map(|p| format!("{p} ")).collect::<String>(),
        target_dir.display()
    );
    let failed = |detail: String| NetError::Build {
        command: described.clone(),
        detail,
    };
    let output = if show_progress {
        eprintln!("building bftd for the testnet ({described}) ...");
        command
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map(|status| (status, String::new()))
    } else {
        command
            .output()
            .map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned()))
    };
    match output {
        Ok((status, _)) if status.success() && bftd.is_file() && byzantine.is_file() => Ok(bftd),
        Ok((status, stderr)) => Err(failed(format!("{status}\n{stderr}"))),
        Err(error) => Err(failed(error.to_string())),
    }
}

/// Whether `binary` exists and is newer than every source of the crates
/// it may be built from.
fn up_to_date(binary: &Path, workspace: &Path) -> bool {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for file in ["Cargo.toml", "Cargo.lock"] {
        newest = newest.max(modified(&workspace.join(file)));
    }
    for krate in ["crypto", "protocol", "node", "testnet"] {
        newest = newest.max(modified(&workspace.join(krate).join("Cargo.toml")));
        newest = newest.max(newest_in(&workspace.join(krate).join("src")));
    }
    built >= newest
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The newest modification time of any file under `dir`.
fn newest_in(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}
