//! The Python client (clients/python) against a real 4-node cluster: its
//! unit tests on the spec's vectors, then `tests/cluster_check.py`: 1,000
//! transactions with every receipt verified, identical verified block
//! streams from two nodes, two kv_store replicas in the same state, and a
//! `lie-to-clients` node's forged receipt refused with an error naming the
//! failed check.
//!
//! It makes its own virtual environment in a temporary directory and
//! installs the package with pip; it skips, with one line saying why, only
//! when python3 with venv is missing or PyPI cannot be reached.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A venv with the package installed, or why there is none.
struct Venv {
    dir: PathBuf,
}

impl Drop for Venv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Venv {
    fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    /// `Err(reason)` means skip (no python3/venv, or PyPI unreachable); a
    /// package that does not install is a failure.
    fn create() -> Result<Venv, String> {
        let dir = std::env::temp_dir().join(format!("bftd-python-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv"]).arg(&dir);
        let made = run_bounded(venv, Duration::from_secs(60));
        let venv = Venv { dir };
        if !made.status.success() {
            return Err(format!("python3 -m venv failed: {}", text(&made).trim()));
        }
        let pip = |args: &[&str]| {
            let mut command = Command::new(venv.python());
            command
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(args);
            run_bounded(command, Duration::from_secs(240))
        };
        // The dependencies alone first: failing here means no PyPI.
        let deps = pip(&["grpcio>=1.85.1", "protobuf>=7.35.1,<8", "cryptography>=41"]);
        if !deps.status.success() {
            return Err(format!(
                "cannot install grpcio, protobuf and cryptography from PyPI: {}",
                text(&deps).lines().last().unwrap_or("")
            ));
        }
        let package = workspace().join("clients").join("python");
        let installed = pip(&["--no-deps", &package.to_string_lossy()]);
        assert!(
            installed.status.success(),
            "pip install {} failed:\n{}",
            package.display(),
            text(&installed)
        );
        Ok(venv)
    }
}

#[test]
fn python_client_verifies_receipts_and_blocks_and_refuses_a_liar() {
    let started = Instant::now();
    let venv = match Venv::create() {
        Ok(venv) => venv,
        Err(reason) => {
            eprintln!("SKIPPED python_client: {reason}");
            return;
        }
    };
    eprintln!(
        "venv with bftd-client ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut unit = Command::new(venv.python());
    unit.args(["-m", "unittest", "discover", "-s"])
        .arg(workspace().join("clients/python/tests"))
        .env(
            "BFTD_VECTORS",
            workspace().join("docs/client-protocol/vectors.json"),
        );
    let unit = run_bounded(unit, Duration::from_secs(60));
    assert!(
        unit.status.success(),
        "the Python unit tests failed:\n{}",
        text(&unit)
    );

    let _serial = serial();
    let net = Testnet::up("python-client", &["--byzantine", "3=lie-to-clients"]);
    let mut check = Command::new(venv.python());
    check
        .arg(workspace().join("clients/python/tests/cluster_check.py"))
        .arg(net.dir.join("cluster.toml"));
    let checked = run_bounded(check, Duration::from_secs(120));
    let report = text(&checked);
    eprintln!("{report}");
    assert!(
        checked.status.success(),
        "cluster_check.py failed:\n{report}"
    );
    assert!(
        report.contains("receipt refused: Merkle proof"),
        "the liar's receipt must fail its Merkle proof check:\n{report}"
    );
    eprintln!(
        "python_client: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}
