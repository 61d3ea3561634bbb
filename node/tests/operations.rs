//! What an operator and a supervisor see of the `bftd` binary: how a store
//! comes to exist, what the operator's binary refuses, and that the
//! metrics endpoint stays responsive.

mod common;

use bftd_protocol::RequestMode;
use common::{bftd, data_dir, TestCluster};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `bftd` process, killed when dropped (even if the test fails).
struct Process {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a `bftd` command ended within its time.
#[derive(Debug)]
enum Outcome {
    /// It exited, with this status and standard error.
    Exited(ExitStatus, String),
    /// It still ran when the time was up (then it was killed), with its
    /// standard error so far.
    StillRunning(String),
}

fn spawn(dir: &Path, args: &[&str], name: &str) -> Process {
    let stderr = dir.join(format!("{name}.stderr"));
    let file = std::fs::File::create(&stderr).unwrap();
    let child = Command::new(bftd())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn bftd");
    Process { child, stderr }
}

/// Runs `bftd ARGS` for at most `time`.
fn run(dir: &Path, args: &[&str], name: &str, time: Duration) -> Outcome {
    let mut process = spawn(dir, args, name);
    let deadline = Instant::now() + time;
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return Outcome::Exited(status, std::fs::read_to_string(&process.stderr).unwrap());
        }
        if Instant::now() >= deadline {
            let _ = process.child.kill();
            let _ = process.child.wait();
            return Outcome::StillRunning(std::fs::read_to_string(&process.stderr).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that `bftd ARGS` fails within 10 s, and returns its standard
/// error.
fn refused(dir: &Path, args: &[&str], name: &str) -> String {
    match run(dir, args, name, Duration::from_secs(10)) {
        Outcome::Exited(status, stderr) if !status.success() => stderr,
        outcome => panic!("`bftd {}` was not refused: {outcome:?}", args.join(" ")),
    }
}

/// A node whose data directory is missing (never created, or an unmounted
/// volume) must not start on a new empty store: it would forget every vote
/// it signed and could sign conflicting ones. `bftd run` refuses and says
/// how to create a store; `bftd init` creates one (once: a second `init`
/// is refused too), after which `run` starts; `run --init` creates a
/// missing store at first start.
#[test]
fn run_refuses_a_missing_store() {
    let cluster = TestCluster::configure(4, RequestMode::ClientSigned, "");
    let dir = cluster.path();
    let config = cluster.node_file(0);
    let config = config.to_str().unwrap();

    let stderr = refused(dir, &["run", "--config", config], "missing");
    assert!(
        stderr.contains("bftd init") && stderr.contains("--init"),
        "the refusal says what to do: {stderr}"
    );
    assert!(
        !data_dir(&cluster, 0).exists(),
        "a refused run leaves nothing behind"
    );

    match run(
        dir,
        &["init", "--config", config],
        "init",
        Duration::from_secs(10),
    ) {
        Outcome::Exited(status, stderr) => assert!(status.success(), "{stderr}"),
        outcome => panic!("bftd init did not finish: {outcome:?}"),
    }
    assert!(data_dir(&cluster, 0).join("bftd.redb").is_file());
    let stderr = refused(dir, &["init", "--config", config], "init-again");
    assert!(stderr.contains("already"), "{stderr}");
    match run(
        dir,
        &["run", "--config", config],
        "run",
        Duration::from_secs(2),
    ) {
        Outcome::StillRunning(stderr) => assert!(!stderr.contains("error"), "{stderr}"),
        outcome => panic!("bftd run on an initialised store stopped: {outcome:?}"),
    }

    // The volume is gone (unmounted, deleted): refused again.
    std::fs::remove_dir_all(data_dir(&cluster, 0)).unwrap();
    let stderr = refused(dir, &["run", "--config", config], "unmounted");
    assert!(stderr.contains("bftd init"), "{stderr}");

    // `run --init` creates the store and runs.
    let config1 = cluster.node_file(1);
    let config1 = config1.to_str().unwrap();
    match run(
        dir,
        &["run", "--init", "--config", config1],
        "run-init",
        Duration::from_secs(2),
    ) {
        Outcome::StillRunning(stderr) => assert!(!stderr.contains("error"), "{stderr}"),
        outcome => panic!("bftd run --init stopped: {outcome:?}"),
    }
    assert!(data_dir(&cluster, 1).join("bftd.redb").is_file());
}

/// The operator's `bftd` cannot lie, whatever its node file says and
/// whatever features cargo unified into the build: a `byzantine` setting
/// is refused with an error naming the setting and the test binary that
/// has them.
#[test]
fn operator_binary_refuses_a_byzantine_setting() {
    let cluster = TestCluster::configure(4, RequestMode::ClientSigned, "");
    let dir = cluster.path();
    let path = cluster.node_file(0);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("byzantine = \"equivocate\"\n{text}")).unwrap();
    let config = path.to_str().unwrap();
    let stderr = refused(dir, &["run", "--init", "--config", config], "byzantine");
    assert!(
        stderr.contains("byzantine") && stderr.contains("bftd-byzantine"),
        "{stderr}"
    );
}

/// Idle connections to the metrics port (opened and never used: a port
/// scanner, a stuck scraper, an attacker) must not keep `/healthz` from
/// answering: a supervisor that gets no answer restarts a healthy node.
#[test]
fn idle_connections_do_not_block_healthz() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let address = cluster.metrics[0];
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).unwrap())
        .collect();
    for attempt in 0..5 {
        let asked = Instant::now();
        let answer = common::http_answer(address, "/healthz");
        assert!(
            answer.is_some(),
            "attempt {attempt}: /healthz unanswered after {:?} with {} idle connections open",
            asked.elapsed(),
            idle.len()
        );
        assert!(asked.elapsed() < Duration::from_secs(2));
    }
    drop(idle);
}

/// An embedded application that panics is a failed node, not one that
/// goes on committing while its application silently receives nothing:
/// `NodeHandle::wait` returns the panic (and `bftd run` exits non-zero on
/// any task's panic the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_application_fails_the_node() {
    struct Panics;
    impl bftd::Application for Panics {
        fn deliver(&mut self, _block: &bftd_protocol::CommittedBlock, _duplicates: &[u32]) {
            panic!("application bug");
        }
    }
    let cluster = TestCluster::configure(1, RequestMode::ClientSigned, "");
    let config = bftd::config::NodeConfig::load(&cluster.node_file(0)).unwrap();
    bftd::init(&config).unwrap();
    let application: Box<dyn bftd::Application> = Box::new(Panics);
    let mut node = bftd::start(config, Some((application, bftd_protocol::SeqNum(1))))
        .await
        .unwrap();
    let client = cluster.client(0).await;
    client.submit(b"tx".to_vec()).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), node.wait()).await;
    let error = match stopped {
        Ok(Err(error)) => error.to_string(),
        other => panic!("a panicking application: wait gave {other:?}"),
    };
    assert!(
        error.contains("application") && error.contains("application bug"),
        "{error}"
    );
    node.shutdown().await;
}

/// `bftd submit --json` and `bftd tail --json` print one JSON object per
/// line with every field, for pipelines and other languages: the payload
/// comes back byte for byte (base64), at the height the receipt gave, in a
/// block whose hash chains to the one before it. A reader that stops early
/// (`| head -1`) ends `tail` cleanly, not with a panic.
#[test]
fn submit_and_tail_speak_json() {
    use base64::Engine as _;
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let cluster_file = cluster.path().join("cluster.toml");
    let cluster_arg = cluster_file.to_str().unwrap();
    let bftd_json = |args: &[&str]| {
        let output = Command::new(bftd())
            .args(args)
            .args(["--cluster", cluster_arg, "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("run bftd");
        assert!(
            output.status.success(),
            "bftd {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect(line))
            .collect::<Vec<_>>()
    };
    let receipts = bftd_json(&["submit", "--node", "1", "first \u{1F980}", "second"]);
    assert_eq!(receipts.len(), 2);
    let base64 = base64::engine::general_purpose::STANDARD;
    let first = &receipts[0];
    assert_eq!(
        base64.decode(first["payload"].as_str().unwrap()).unwrap(),
        "first \u{1F980}".as_bytes()
    );
    let height = receipts[1]["height"].as_u64().unwrap();
    let count = height.to_string();
    let blocks = bftd_json(&["tail", "--node", "2", "--from", "1", "--count", &count]);
    assert_eq!(blocks.len() as u64, height);
    for pair in blocks.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "hash chain");
    }
    for receipt in &receipts {
        let block = &blocks[receipt["height"].as_u64().unwrap() as usize - 1];
        assert_eq!(block["batch_digest"], receipt["batch_digest"]);
        let found = block["requests"].as_array().unwrap().iter().any(|request| {
            request["payload"] == receipt["payload"]
                && request["request_id"] == receipt["request_id"]
                && request["executes"] == true
        });
        assert!(found, "{receipt} not in {block}");
        assert!(block["certificate"]["votes"].as_array().unwrap().len() >= 3);
    }

    // A pipe closed by its reader: tail ends without a panic.
    let mut tail = Command::new(bftd())
        .args(["tail", "--cluster", cluster_arg, "--json", "--from", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bftd tail");
    let mut stdout = tail.stdout.take().unwrap();
    let mut first_byte = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first_byte).unwrap();
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = None;
    while Instant::now() < deadline {
        if let Some(status) = tail.try_wait().unwrap() {
            client = Some(status);
            break;
        }
        // Blocks keep committing, so tail writes again and sees the pipe
        // closed.
        let _ = Command::new(bftd())
            .args(["submit", "--cluster", cluster_arg, "more"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let status = client.unwrap_or_else(|| {
        let _ = tail.kill();
        let _ = tail.wait();
        panic!("tail still ran 20 s after its reader went away")
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "tail ended with {status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Start-up errors name the node file and the field to fix: a QUIC port
/// another process holds (`listen`), a metrics port in use (`metrics`);
/// `bftd health` asks /healthz as a container health check would (no
/// quorum with one node of four: not healthy, with the node's reason).
#[test]
fn start_up_errors_name_the_file_and_field() {
    let cluster = TestCluster::configure(4, RequestMode::ClientSigned, "");
    let dir = cluster.path();
    let path = cluster.node_file(0);
    let config = path.to_str().unwrap();
    cluster.init(0);

    let address = cluster.cluster.addresses[0];
    let holder = std::net::UdpSocket::bind(address).unwrap();
    let stderr = refused(dir, &["run", "--config", config], "quic-in-use");
    assert!(
        stderr.contains("node0.toml: listen = \"127.0.0.1:")
            && stderr.contains("already in use")
            && stderr.contains("already running"),
        "{stderr}"
    );
    drop(holder);

    let metrics = cluster.metrics[0];
    let holder = std::net::TcpListener::bind(metrics).unwrap();
    let stderr = refused(dir, &["run", "--config", config], "metrics-in-use");
    assert!(
        stderr.contains(&format!("node0.toml: metrics = \"{metrics}\"")),
        "{stderr}"
    );
    drop(holder);

    let _node = spawn(dir, &["run", "--config", config], "alone");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stderr = loop {
        let outcome = run(
            dir,
            &["health", "--config", config],
            "health",
            Duration::from_secs(5),
        );
        match outcome {
            Outcome::Exited(status, stderr)
                if !status.success() && stderr.contains("not healthy") =>
            {
                break stderr
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            outcome => panic!("bftd health: {outcome:?}"),
        }
    };
    assert!(
        stderr.contains(&format!("http://{metrics}/healthz")),
        "{stderr}"
    );
}

/// `bftd tail` follows a node through a crash and restart: it says on
/// stderr that the node went away and that it resumed, and prints every
/// height once, in order, each block chained to the one before across the
/// restart. (It used to end with "the node closed the connection".)
#[tokio::test]
async fn tail_follows_a_node_through_its_restart() {
    let mut cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let cluster_file = cluster.path().join("cluster.toml");
    let mut tail = Command::new(bftd())
        .args(["tail", "--node", "3", "--from", "1", "--json", "--cluster"])
        .arg(&cluster_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bftd tail");
    let stdout = tail.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            if lines
                .send(serde_json::from_str(&line).expect(&line))
                .is_err()
            {
                return;
            }
        }
    });
    let mut blocks: Vec<serde_json::Value> = Vec::new();
    let wait_for = |height: u64, blocks: &mut Vec<serde_json::Value>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while blocks.last().and_then(|b| b["height"].as_u64()) < Some(height) {
            let left = deadline.saturating_duration_since(Instant::now());
            match printed.recv_timeout(left) {
                Ok(block) => blocks.push(block),
                Err(_) => panic!("tail never printed height {height}"),
            }
        }
    };

    let client = cluster.client(0).await;
    let before = client.submit(b"before".to_vec()).await.unwrap().height.0;
    wait_for(before, &mut blocks);
    cluster.kill(3);
    cluster.start_node(3);
    let after = client.submit(b"after".to_vec()).await.unwrap().height.0;
    wait_for(after, &mut blocks);
    let _ = tail.kill();
    let _ = tail.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut stderr).unwrap();

    for (index, block) in blocks.iter().enumerate() {
        assert_eq!(block["height"].as_u64(), Some(index as u64 + 1), "{stderr}");
    }
    for pair in blocks.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "hash chain");
    }
    assert!(
        stderr.contains("node 3 closed the connection") && stderr.contains("reconnected to node 3"),
        "{stderr}"
    );
}

/// `bftd check` reads a stopped node's store back and verifies it: it
/// reports the blocks, requests and the batch log of a node killed under
/// load; it refuses a store a running node holds; and a byte flipped in a
/// batch log segment is named with its file and "checksum", exit status 1.
#[test]
fn check_verifies_a_stopped_nodes_store() {
    let mut cluster = TestCluster::start(4, RequestMode::ConnectionAuthenticated, "");
    let cluster_file = cluster.path().join("cluster.toml");
    // A 40 KB request: its batch is larger than one chunk, so it goes to the
    // batch log.
    let big = "x".repeat(40_000);
    let output = Command::new(bftd())
        .args(["submit", "--cluster", cluster_file.to_str().unwrap()])
        .args(["small", &big])
        .stdin(Stdio::null())
        .output()
        .expect("run bftd submit");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = cluster.path().to_path_buf();
    let node_file = cluster.node_file(1);
    let config = node_file.to_str().unwrap();
    let stderr = refused(&dir, &["check", "--config", config], "check-running");
    assert!(stderr.contains("locked"), "{stderr}");

    cluster.kill(1);
    let output = Command::new(bftd())
        .args(["check", "--config", config])
        .stdin(Stdio::null())
        .output()
        .expect("run bftd check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(": OK"), "{stdout}");
    assert!(stdout.contains("in 1 segment\n"), "{stdout}");

    let segment = data_dir(&cluster, 1).join("bftd.redb.batches/0000000000000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let stderr = refused(&dir, &["check", "--config", config], "check-damaged");
    assert!(
        stderr.contains("0000000000000000.seg") && stderr.contains("checksum"),
        "{stderr}"
    );
}
