//! Real-process scenarios: `bftd` nodes on loopback behind bftnet's fault
//! proxy, driven through the `bftnet` binary exactly as a person would, for
//! what the simulator cannot show (QUIC, disks, SIGKILL, restarts); and
//! `bftnet bench`, which starts and stops its own cluster.
//!
//! Each test starts its own testnet in a fresh directory; a guard stops
//! every process it started (by PID) even when the test fails, and keeps the
//! logs of a failed test. Tests take turns (they share the machine's cores,
//! and the throughput figures must not be skewed by a neighbour).
//!
//! The tests need the `bftd` binary next to `bftnet`; unless it is up to
//! date (or `BFTD_BIN` names one), the first test builds it
//! (`cargo build -p bftd -p bftnet` in this test's profile and target
//! directory).

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Offered load in the scenarios (tx/s) and how long each phase lasts.
const RATE: u32 = 300;
const PHASE_SECONDS: f64 = 3.0;
/// Blocks each phase must add, byzantine node or not.
const MIN_GROWTH: u64 = 10;

/// One load phase's figures.
struct Phase {
    achieved: f64,
    p50: f64,
    p99: f64,
    growth: u64,
    failed: u64,
}

fn phase(net: &Testnet) -> Phase {
    let before = net.height();
    let report = net.load(RATE, PHASE_SECONDS);
    let after = net.height();
    let number = |key: &str| report[key].as_u64().unwrap_or(0);
    Phase {
        achieved: report["achieved_rate"].as_f64().unwrap_or(0.0),
        p50: report["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        p99: report["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        growth: after.saturating_sub(before),
        failed: number("rejected")
            + number("timed_out")
            + number("disconnected")
            + number("invalid_receipts"),
    }
}

/// Every byzantine behaviour, run by the node that is primary at the time
/// (the most damaging place for most of them), one after another in one
/// cluster: safety holds (`bftnet check` passes after each phase) and
/// commits continue (at least MIN_GROWTH blocks per 3 s phase of 300 tx/s).
/// Prints each behaviour's throughput relative to the honest phase.
#[test]
fn every_behaviour_on_one_node_keeps_safety_and_progress() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up("behaviours", &[]);
    net.load(RATE, 1.0); // warm up connections and caches
    let honest = phase(&net);
    net.assert_check("honest phase");
    assert!(
        honest.growth >= MIN_GROWTH,
        "honest cluster: only {} blocks",
        honest.growth
    );
    let mut rows = vec![("honest".to_string(), None, honest)];
    let mut liar: Option<u16> = None;
    for behaviour in bftd_protocol::byzantine::Behaviour::all() {
        let name = behaviour.to_string();
        let (primary, _) = net.primary();
        if let Some(previous) = liar.filter(|&previous| previous != primary) {
            net.ok("restart", &[&previous.to_string(), "--honest"]);
        }
        net.ok("restart", &[&primary.to_string(), "--byzantine", &name]);
        liar = Some(primary);
        let result = phase(&net);
        net.assert_check(&format!("{name} on node {primary}"));
        assert!(
            result.growth >= MIN_GROWTH,
            "{name} on node {primary}: only {} blocks committed during a {PHASE_SECONDS} s phase at {RATE} tx/s",
            result.growth
        );
        rows.push((name, Some(primary), result));
    }
    let base = rows.first().map_or(1.0, |(_, _, p)| p.achieved.max(0.001));
    eprintln!("\nthroughput with one byzantine node of 4 (the primary when its phase starts), {RATE} tx/s offered for {PHASE_SECONDS} s, debug build:");
    eprintln!(
        "{:<18} {:>5} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "behaviour", "node", "tx/s", "relative", "p50 ms", "p99 ms", "blocks", "failed"
    );
    for (name, node, p) in &rows {
        eprintln!(
            "{:<18} {:>5} {:>10.1} {:>8.0}% {:>9.1} {:>9.1} {:>7} {:>7}",
            name,
            node.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            p.achieved,
            100.0 * p.achieved / base,
            p.p50,
            p.p99,
            p.growth,
            p.failed
        );
    }
    eprintln!("every behaviour: {:.1} s", started.elapsed().as_secs_f64());
}

/// SIGKILL of the primary under load: the others change views (view > 0),
/// commits resume, and the restarted node catches up; safety holds.
#[test]
fn primary_crash_view_change_and_recovery() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up("primary-crash", &[]);
    let load = net.load_in_background(RATE, 10.0);
    net.wait_for("first commits", Duration::from_secs(10), |h| {
        h.iter().flatten().any(|&h| h >= 5)
    });
    let (primary, view) = net.primary();
    let at_kill = net.height();
    let out = net.ok("kill", &[&primary.to_string()]);
    assert!(out.contains("killed"), "{out}");
    // The others move to a new view and keep committing.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = net.status();
        let survivors: Vec<&Value> = honest(&status)
            .filter(|node| node["status"].is_object())
            .collect();
        let moved = survivors.len() == 3
            && survivors
                .iter()
                .all(|node| node["status"]["view"].as_u64().unwrap_or(0) > view);
        let height = survivors
            .iter()
            .filter_map(|node| node["status"]["height"].as_u64())
            .max()
            .unwrap_or(0);
        if moved && height >= at_kill + MIN_GROWTH {
            eprintln!(
                "[primary-crash] view {view} -> {}, height {at_kill} -> {height} after killing node {primary}",
                survivors[0]["status"]["view"]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after killing primary {primary}: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report: Value =
        serde_json::from_str(&load.finish(Duration::from_secs(40))).unwrap_or(Value::Null);
    eprintln!("[primary-crash] load during the crash: {}", report);
    net.assert_check("after the primary crash");
    net.ok("restart", &[&primary.to_string()]);
    let target = net.height();
    net.wait_for(
        "the restarted node catches up",
        Duration::from_secs(30),
        |h| {
            h.get(usize::from(primary))
                .copied()
                .flatten()
                .is_some_and(|h| h >= target)
        },
    );
    net.assert_check("after the restart");
    eprintln!("[primary-crash] {:.1} s", started.elapsed().as_secs_f64());
}

/// A 2/2 partition leaves no side a quorum: no commits during it, no
/// divergence, and every node says it has no quorum (`bftnet status`
/// shows it); after `heal`, commits resume and every node catches up.
#[test]
fn partition_two_two_stalls_then_heals() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up("partition", &[]);
    let load = net.load_in_background(100, 14.0);
    net.wait_for("first commits", Duration::from_secs(10), |h| {
        h.iter().flatten().all(|&h| h >= 3)
    });
    net.ok("partition", &["0,1/2,3"]);
    // Blocks already past their commit phase may still land: let them.
    std::thread::sleep(Duration::from_millis(1000));
    let during = net.heights();
    std::thread::sleep(Duration::from_secs(3));
    let later = net.heights();
    assert_eq!(during, later, "commits during a 2/2 partition");
    let status = net.status();
    for node in honest(&status) {
        assert_eq!(
            (&node["status"]["peers_in_touch"], &node["status"]["quorum"]),
            (&Value::from(1), &Value::from(3)),
            "each side of a 2/2 partition hears from one peer: {node}"
        );
    }
    assert!(net.ok("status", &[]).contains("no quorum"));
    net.assert_check("during the partition");
    net.ok("heal", &[]);
    let stalled = later.iter().flatten().copied().max().unwrap_or(0);
    let healed = net.wait_for(
        "progress and catch-up after heal",
        Duration::from_secs(30),
        |h| h.iter().all(|h| h.is_some_and(|h| h >= stalled + 5)),
    );
    eprintln!("[partition] stalled at {later:?}, after heal {healed:?}");
    drop(load);
    net.assert_check("after heal");
    eprintln!("[partition] {:.1} s", started.elapsed().as_secs_f64());
}

/// Stopping every node and starting them again keeps every log: the same
/// heights and the same block hashes (checked from the stores while down,
/// and through the nodes after), and the cluster goes on committing.
#[test]
fn stop_and_restart_all_keeps_logs() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up("restart-all", &[]);
    net.load(RATE, 2.0);
    let settled = net.wait_for(
        "every node at the same height",
        Duration::from_secs(10),
        |h| h.iter().all(|x| x.is_some() && *x == h[0]),
    );
    let height = settled[0].unwrap_or(0);
    assert!(height >= MIN_GROWTH, "only {height} blocks");
    let hashes: Vec<String> = (0..4).map(|id| block_hash(&net, id, height)).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    net.ok("down", &[]);
    net.assert_check("every node down (read from the stores)");
    net.ok("up", &["--detach", "--idle"]);
    let after = net.heights();
    assert!(
        after.iter().all(|h| h.is_some_and(|h| h >= height)),
        "heights before {height}, after {after:?}"
    );
    for id in 0..4 {
        assert_eq!(
            block_hash(&net, id, height),
            hashes[0],
            "node {id} changed block {height}"
        );
    }
    let report = net.load(RATE, 2.0);
    assert!(
        net.height() >= height + MIN_GROWTH,
        "no progress after the restart: {report}"
    );
    net.assert_check("after the restart");
    eprintln!(
        "[restart-all] height {height} kept; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A power cut: every `bftd` SIGKILLed at once while the fault proxy runs
/// on. `bftnet status` then names `bftnet up`, and `up` brings every node
/// back with its data, through the same proxy: earlier blocks are unchanged
/// (same hash at the last height, `bftnet check` from height 1), a new
/// transaction commits with a verified receipt, and only now, with
/// everything running, does `up` refuse, naming `status` and `down`.
#[test]
fn power_cut_then_up_brings_every_node_back() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up("power-cut", &[]);
    net.ok("submit", &["before-1", "before-2", "before-3"]);
    let settled = net.wait_for(
        "every node at the same height",
        Duration::from_secs(10),
        |h| h.iter().all(|x| x.is_some() && *x == h[0]),
    );
    let height = settled[0].unwrap_or(0);
    assert!(height >= 3, "only {height} blocks for three transactions");
    let hash = block_hash(&net, 0, height);
    let layout = bftnet::net::layout::Layout::new(&net.dir);
    let state = bftnet::net::layout::State::load(&layout).expect("state");
    let proxy = state.proxy.pid.expect("the proxy's PID");
    let nodes: Vec<(u32, String)> = state
        .nodes
        .iter()
        .map(|node| {
            let pid = node.pid.expect("a running node's PID");
            (pid, bftnet::net::launch::node_marker(&layout, node.id))
        })
        .collect();
    for (pid, _) in &nodes {
        bftnet::net::launch::kill(*pid);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes
        .iter()
        .any(|(pid, marker)| bftnet::net::launch::alive(*pid, marker))
    {
        assert!(Instant::now() < deadline, "SIGKILLed nodes still run");
        std::thread::sleep(Duration::from_millis(20));
    }
    let proxy_marker = bftnet::net::launch::proxy_marker(&layout);
    assert!(bftnet::net::launch::alive(proxy, &proxy_marker));
    let status = net.ok("status", &[]);
    let dir = net.dir.display();
    assert!(
        status.contains(&format!(
            "every node is down; the fault proxy still runs: `bftnet up --dir {dir}`"
        )),
        "{status}"
    );
    net.ok("up", &["--detach", "--idle"]);
    let state = bftnet::net::layout::State::load(&layout).expect("state");
    assert_eq!(
        state.proxy.pid,
        Some(proxy),
        "the running proxy was replaced"
    );
    let receipt = net.ok("submit", &["after the power cut"]);
    let committed_at: u64 = receipt
        .split("height ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no height in {receipt:?}"));
    assert!(committed_at > height, "{receipt}");
    for id in 0..4 {
        assert_eq!(
            block_hash(&net, id, height),
            hash,
            "node {id} changed block {height}"
        );
    }
    net.assert_check("after the power cut");
    let again = net.run("up", &["--detach", "--idle"]);
    let refusal = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second `up` started something");
    assert!(
        refusal.contains("already runs")
            && refusal.contains(&format!("`bftnet status --dir {dir}`"))
            && refusal.contains(&format!("`bftnet down --dir {dir}`")),
        "{refusal}"
    );
    let status = net.ok("status", &[]);
    assert!(
        status.contains(&format!("every process runs: `bftnet down --dir {dir}`")),
        "{status}"
    );
    eprintln!(
        "[power-cut] height {height} kept, new transaction at {committed_at}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The generation of rules in `faults.json`, and the one the proxy says it
/// has put in force.
fn rule_generations(net: &Testnet) -> (u64, Option<u64>) {
    let layout = bftnet::net::layout::Layout::new(&net.dir);
    (
        bftnet::net::layout::read_faults(&layout).generation,
        bftnet::net::layout::read_applied(&layout),
    )
}

/// `bftnet partition` returns only once the proxy drops datagrams across
/// the cut, on connections already open: a transaction submitted the moment
/// `partition 0,1/2,3` returns (no side has a quorum), by a client already
/// connected, does not commit, and no height moves; `heal` likewise returns
/// once links are open, and then it commits. (Without the wait the submit
/// commits in most runs; the proxy's acknowledgement, read the moment each
/// command returns, catches it in every run.)
#[test]
fn partition_is_in_force_when_the_command_returns() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up("partition-ack", &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let cluster =
            bftd::config::Cluster::load(&net.dir.join("cluster.toml")).expect("cluster file");
        let key = bftd_crypto::KeyPair::generate(&mut rand::rngs::OsRng);
        let client = bftd::client::Client::connect(&cluster, bftd_protocol::NodeId(0), key)
            .await
            .expect("connect");
        // Every node-to-node connection is open (and warm) before the cut.
        client.submit(b"warm".to_vec()).await.expect("commits");
        let before = net.wait_for(
            "every node at the same height",
            Duration::from_secs(10),
            |h| h.iter().all(|x| x.is_some() && *x == h[0]),
        );
        net.ok("partition", &["0,1/2,3"]);
        let (written, applied) = rule_generations(&net);
        let cut = tokio::time::timeout(
            Duration::from_secs(3),
            client.submit(b"across the cut".to_vec()),
        )
        .await;
        assert!(
            cut.is_err(),
            "committed right after `bftnet partition 0,1/2,3` returned: {cut:?}"
        );
        assert_eq!(
            net.heights(),
            before,
            "heights moved during a 2/2 partition"
        );
        assert_eq!(
            applied,
            Some(written),
            "`partition` returned before the proxy acknowledged its rules"
        );
        net.ok("heal", &[]);
        let (written, applied) = rule_generations(&net);
        assert_eq!(
            applied,
            Some(written),
            "`heal` returned before the proxy acknowledged its rules"
        );
        let healed =
            tokio::time::timeout(Duration::from_secs(60), client.submit(b"healed".to_vec())).await;
        assert!(
            matches!(healed, Ok(Ok(_))),
            "nothing committed after heal: {healed:?}"
        );
    });
    net.assert_check("after the partition");
    eprintln!("[partition-ack] {:.1} s", started.elapsed().as_secs_f64());
}

/// Beyond f the check must fail: two colluding nodes of four (with
/// --allow-unsafe) show the two honest nodes different batches, both commit,
/// and `bftnet check` exits non-zero naming the divergent height.
#[test]
fn colluding_majority_forks_and_check_reports_it() {
    let _serial = serial();
    let started = Instant::now();
    let net = Testnet::up(
        "collude",
        &[
            "--byzantine",
            "0=collude",
            "--byzantine",
            "1=collude",
            "--allow-unsafe",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Forked requests may never get a receipt: stop the load after its
        // offering time instead of waiting for them.
        let load = net.load_in_background(100, 2.0);
        std::thread::sleep(Duration::from_millis(2500));
        drop(load);
        let (ok, text) = net.check();
        if !ok {
            assert!(
                text.contains("FORK at height"),
                "check failed without naming a fork:\n{text}"
            );
            assert!(
                text.contains("node(s) 2") && text.contains("node(s) 3"),
                "{text}"
            );
            eprintln!(
                "[collude] bftnet check after {:.1} s:\n{text}",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fork within 90 s of collusion; last check:\n{text}"
        );
    }
}

/// `bftnet bench --catch-up` keeps the last node down through the window,
/// restarts it and reports how it caught up: how far behind it was, when
/// it served and when it held the others' height; and it stops the
/// restarted process too.
#[test]
fn bench_catch_up_reports_how_the_stopped_node_caught_up() {
    let _serial = serial();
    let mut command = Command::new(bftnet_bin());
    command
        .args(["bench", "--duration", "2", "--warmup", "1", "--rate", "200"])
        .args(["--catch-up", "--json"])
        .env("BFTD_BIN", bftd_bin());
    let output = run_bounded(command, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bftnet bench --catch-up failed:\n{stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("bench --json is JSON");
    let run = &report["runs_detail"][0];
    let catch_up = &run["catch_up"];
    assert_eq!(catch_up["node"].as_u64(), Some(3), "{report:#}");
    let at_kill = catch_up["height_at_kill"].as_u64().expect("height_at_kill");
    let target = catch_up["target_height"].as_u64().expect("target_height");
    assert!(target > at_kill, "it fell behind: {catch_up:#}");
    assert!(
        catch_up["behind_tx"].as_u64().unwrap_or(0) > 0,
        "{catch_up:#}"
    );
    assert!(catch_up["caught_up_s"].as_f64().is_some(), "{catch_up:#}");
    assert!(
        report["catch_up_tx_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report:#}"
    );
    let dir = PathBuf::from(run["dir"].as_str().expect("the run's directory"));
    let layout = bftnet::net::layout::Layout::new(&dir);
    let pid = catch_up["pid"].as_u64().expect("pid") as u32;
    let marker = bftnet::net::launch::node_marker(&layout, 3);
    assert!(
        !bftnet::net::launch::alive(pid, &marker),
        "the restarted node still runs"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// `bftnet bench` measures a fresh cluster (nodes talking directly, no
/// proxy) and leaves nothing behind: requests commit, the JSON report has
/// its fields, the temporary directory is gone and none of the bftd
/// processes it started still runs.
#[test]
fn bench_measures_and_cleans_up() {
    let _serial = serial();
    let started = Instant::now();
    let mut command = Command::new(bftnet_bin());
    command
        .args(["bench", "--duration", "2", "--warmup", "1", "--rate", "200"])
        .arg("--json")
        .env("BFTD_BIN", bftd_bin());
    let output = run_bounded(command, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bftnet bench failed ({}):\n{stderr}",
        output.status
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("bench --json is JSON");
    for key in [
        "n",
        "clients",
        "size",
        "rate",
        "closed_loop",
        "window",
        "batch",
        "signed_requests",
        "duration_s",
        "runs",
        "throughput_tx_s",
        "latency_ms",
        "cpu_s_per_1000_tx",
        "loadgen_cpu_s_per_1000_tx",
        "peak_rss_mb",
        "committed",
        "failures",
        "view_changes",
        "profile",
        "runs_detail",
    ] {
        assert!(report.get(key).is_some(), "no `{key}` in {report:#}");
    }
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["latency_ms"][key].as_f64().is_some(), "{report:#}");
    }
    assert!(report["committed"].as_u64().unwrap_or(0) > 0, "{report:#}");
    assert!(
        report["throughput_tx_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report:#}"
    );
    assert!(report["cpu_s_per_1000_tx"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(report["rate"].as_f64(), Some(200.0));
    assert_eq!(report["closed_loop"], false);
    let peaks = report["peak_rss_mb"]["nodes"].as_array().expect("per node");
    assert_eq!(peaks.len(), 4);
    assert!(peaks.iter().all(|mb| mb.as_f64().unwrap_or(0.0) > 0.0));
    let run = &report["runs_detail"][0];
    let dir = PathBuf::from(run["dir"].as_str().expect("the run's directory"));
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let layout = bftnet::net::layout::Layout::new(&dir);
    let nodes = run["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 4);
    for node in nodes {
        let id = node["id"].as_u64().expect("id") as u16;
        let pid = node["pid"].as_u64().expect("pid") as u32;
        let marker = bftnet::net::launch::node_marker(&layout, id);
        assert!(
            !bftnet::net::launch::alive(pid, &marker),
            "node {id} (pid {pid}) still runs"
        );
        assert!(node["height"].as_u64().unwrap_or(0) > 0, "{node:#}");
    }
    eprintln!(
        "[bench] {:.0} tx/s, p50 {:.1} ms, in {:.1} s",
        report["throughput_tx_s"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        started.elapsed().as_secs_f64()
    );
}

/// `bftnet up | tee log`, then the reader goes (Ctrl-C killed `tee`, or
/// `| head` had enough): `bftnet up` must not leave the testnet running
/// with nobody watching, nor die half-way on a write to the closed pipe.
/// With its standard output and error both on a pipe that is then closed,
/// it stops every node and the proxy it started, and exits; so it does
/// when Ctrl-C comes with the closed pipe.
#[test]
fn up_stops_everything_when_its_output_pipe_closes() {
    let _serial = serial();
    for interrupt in [false, true] {
        let name = if interrupt { "pipe-sigint" } else { "pipe" };
        let net = Testnet {
            dir: std::env::temp_dir()
                .join(format!("bftnet-scenario-{name}-{}", std::process::id())),
        };
        let _ = std::fs::remove_dir_all(&net.dir);
        let (reader, writer) = std::io::pipe().expect("a pipe");
        let mut up = Background(
            net.command("up", &["--idle"])
                .stdin(std::process::Stdio::null())
                .stdout(writer.try_clone().expect("clone the pipe"))
                .stderr(writer)
                .spawn()
                .expect("spawn bftnet up"),
        );
        // Read until the summary is out, then close the reading end.
        let mut reader = std::io::BufReader::new(reader);
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.contains("Ctrl-C stops every node") {
            let mut line = String::new();
            let read = std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
            assert!(
                read > 0 && Instant::now() < deadline,
                "bftnet up said: {seen}"
            );
            seen.push_str(&line);
        }
        let layout = bftnet::net::layout::Layout::new(&net.dir);
        let state = bftnet::net::layout::State::load(&layout).expect("state");
        let mut procs: Vec<(u32, String)> = state
            .nodes
            .iter()
            .map(|node| {
                let pid = node.pid.expect("node running");
                (pid, bftnet::net::launch::node_marker(&layout, node.id))
            })
            .collect();
        procs.push((
            state.proxy.pid.expect("proxy running"),
            bftnet::net::launch::proxy_marker(&layout),
        ));
        drop(reader);
        if interrupt {
            assert!(Command::new("kill")
                .args(["-INT", &up.0.id().to_string()])
                .status()
                .expect("kill")
                .success());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = up.0.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let running: Vec<u32> = procs
            .iter()
            .filter(|(pid, marker)| bftnet::net::launch::alive(*pid, marker))
            .map(|(pid, _)| *pid)
            .collect();
        assert!(
            status.is_some() && running.is_empty(),
            "[{name}] pipe closed: bftnet up {} and left {running:?} running",
            match status {
                Some(status) => format!("exited ({status})"),
                None => "still runs after 30 s".into(),
            }
        );
        drop(up);
        drop(net);
    }
}
