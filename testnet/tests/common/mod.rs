//! The harness of the real-process tests: testnets in temporary
//! directories driven through the `bftnet` binary, each stopped (every PID
//! it started) even when its test fails, with the logs of a failed test
//! kept.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// One testnet at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn bftnet_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_bftnet"))
}

/// The `bftd` binary (and `bftd-byzantine` next to `bftnet`), from the same sources,
/// profile and target directory as `bftnet`: used as is when up to date
/// (`cargo test --workspace` builds it), otherwise built once here.
pub fn bftd_bin() -> &'static Path {
    static BFTD: OnceLock<PathBuf> = OnceLock::new();
    BFTD.get_or_init(|| {
        if let Some(path) = std::env::var_os("BFTD_BIN") {
            return PathBuf::from(path);
        }
        let profile_dir = bftnet_bin().parent().expect("bftnet has a directory");
        let profile: &[&str] = if profile_dir.ends_with("release") {
            &["--release"]
        } else {
            &["--profile", "test"]
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        let started = Instant::now();
        let bftd =
            bftnet::net::binaries::ensure_bftd(&cargo, workspace, profile_dir, profile, false)
                .unwrap_or_else(|error| panic!("{error}"));
        eprintln!(
            "bftd ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            bftd.display()
        );
        bftd
    })
}

/// Runs a command, killing it if it outlives `timeout`.
pub fn run_bounded(mut command: Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bftnet");
    // Read the pipes on threads so a chatty child never blocks on them.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buffer);
        buffer
    });
    let err = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buffer);
        buffer
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bftnet") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait for bftnet");
            eprintln!("command timed out after {timeout:?}: {command:?}");
            break status;
        }
        // Short: a test may act "right after" a command returns (a submit
        // after `partition`), and must not give the system extra time.
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A testnet in a temporary directory. Dropping it stops every process it
/// started: `bftnet down`, then SIGKILL to any PID still recorded.
pub struct Testnet {
    pub dir: PathBuf,
}

/// A `bftnet` process running in the background (a load), killed on drop.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Background {
    /// Waits for it to finish; returns its stdout.
    pub fn finish(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        }
        out
    }
}

impl Testnet {
    /// `bftnet up --detach --idle` with `extra` flags.
    pub fn up(name: &str, extra: &[&str]) -> Testnet {
        let dir =
            std::env::temp_dir().join(format!("bftnet-scenario-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let net = Testnet { dir };
        let mut args = vec!["--detach", "--idle"];
        args.extend_from_slice(extra);
        let started = Instant::now();
        net.ok("up", &args);
        eprintln!(
            "[{name}] testnet up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        net
    }

    pub fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut command = Command::new(bftnet_bin());
        command
            .arg(subcommand)
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .env("BFTD_BIN", bftd_bin());
        command
    }

    /// Runs a subcommand (bounded to two minutes).
    pub fn run(&self, subcommand: &str, args: &[&str]) -> Output {
        run_bounded(self.command(subcommand, args), Duration::from_secs(120))
    }

    /// Runs a subcommand that must succeed; returns its stdout.
    pub fn ok(&self, subcommand: &str, args: &[&str]) -> String {
        let output = self.run(subcommand, args);
        assert!(
            output.status.success(),
            "bftnet {subcommand} {args:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok("status", &["--json"])).expect("status --json is JSON")
    }

    /// Each node's height, `None` if it does not answer.
    pub fn heights(&self) -> Vec<Option<u64>> {
        self.status()["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|node| node["status"]["height"].as_u64())
            .collect()
    }

    /// The highest height among honest answering nodes.
    pub fn height(&self) -> u64 {
        let status = self.status();
        honest(&status)
            .filter_map(|node| node["status"]["height"].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// The primary most honest nodes follow, and their view.
    pub fn primary(&self) -> (u16, u64) {
        let status = self.status();
        let views: Vec<(u64, u64)> = honest(&status)
            .filter_map(|node| {
                Some((
                    node["status"]["view"].as_u64()?,
                    node["status"]["primary"].as_u64()?,
                ))
            })
            .collect();
        let (view, primary) = views.iter().max().copied().unwrap_or((0, 0));
        (primary as u16, view)
    }

    /// `bftnet load --json`; returns its report.
    pub fn load(&self, rate: u32, seconds: f64) -> Value {
        let out = self.ok(
            "load",
            &[
                "--rate",
                &rate.to_string(),
                "--duration",
                &format!("{seconds}s"),
                "--size",
                "128",
                "--json",
            ],
        );
        serde_json::from_str(&out).expect("load --json is JSON")
    }

    pub fn load_in_background(&self, rate: u32, seconds: f64) -> Background {
        let mut command = self.command(
            "load",
            &[
                "--rate",
                &rate.to_string(),
                "--duration",
                &format!("{seconds}s"),
                "--json",
            ],
        );
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Background(command.spawn().expect("spawn bftnet load"))
    }

    /// `bftnet check`: whether it passed, and what it printed.
    pub fn check(&self) -> (bool, String) {
        let output = self.run("check", &[]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    pub fn assert_check(&self, context: &str) {
        let (ok, text) = self.check();
        assert!(ok, "{context}: bftnet check failed:\n{text}");
    }

    /// Waits until `condition` holds for the heights, or panics after
    /// `timeout` naming `what`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[Option<u64>]) -> bool,
    ) -> Vec<Option<u64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let heights = self.heights();
            if condition(&heights) {
                return heights;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; heights {heights:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn honest(status: &Value) -> impl Iterator<Item = &Value> {
    status["nodes"]
        .as_array()
        .map(|nodes| nodes.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|node| node["behaviour"] == "honest")
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let args: &[&str] = if failed { &[] } else { &["--clean"] };
        let _ = run_bounded(self.command("down", args), Duration::from_secs(30));
        // Whatever `down` missed: SIGKILL every PID still recorded.
        let layout = bftnet::net::layout::Layout::new(&self.dir);
        if let Ok(state) = bftnet::net::layout::State::load(&layout) {
            for pid in state
                .nodes
                .iter()
                .filter_map(|node| node.pid)
                .chain(state.proxy.pid)
            {
                bftnet::net::launch::kill(pid);
            }
        }
        if failed {
            eprintln!("testnet logs kept in {}", self.dir.join("logs").display());
            for id in 0..4 {
                let log = layout.node_log(id);
                eprintln!(
                    "--- {} ---\n{}",
                    log.display(),
                    bftnet::net::launch::log_tail(&log, 12)
                );
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The block at `height` as node `id` serves it, verified.
pub fn block_hash(net: &Testnet, id: u16, height: u64) -> String {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let cluster =
            bftd::config::Cluster::load(&net.dir.join("cluster.toml")).expect("cluster file");
        let key = bftd_crypto::KeyPair::generate(&mut rand::rngs::OsRng);
        let client = bftd::client::Client::connect(&cluster, bftd_protocol::NodeId(id), key)
            .await
            .expect("connect");
        let mut blocks = client
            .subscribe(bftd_protocol::SeqNum(height))
            .await
            .expect("subscribe");
        let block = tokio::time::timeout(Duration::from_secs(10), blocks.next())
            .await
            .expect("a block in time")
            .expect("a valid block")
            .expect("the node keeps the connection");
        block.hash.to_string()
    })
}
