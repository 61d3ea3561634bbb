//! `bftnet attack`: each attack of issue 10 against a fresh cluster of real
//! `bftd` processes while honest clients offer load, and whether the
//! honest clients keep their committed rate and latency.
//!
//! One attack: generate a direct testnet (no fault proxy) in a temporary
//! directory and start it (without its last node when the attacker speaks
//! as that node: it holds the node's key, as a byzantine replica would);
//! offer honest open-loop load for a warm-up and a measured window
//! (unattacked); start the attack; offer the same load again (attacked);
//! stop the attack, then check the honest logs (agreement, no request
//! executed twice). Every node's resident memory is sampled throughout
//! (and its `VmHWM` read at the end); the nodes' `/metrics` counters are
//! read before and after the attacked phase and their differences shown.
//!
//! The verdict: the attacked committed rate is at least
//! [`RATE_KEPT`] of the unattacked one, the attacked p99 at most twice
//! the unattacked one or [`AttackOptions::p99_floor_ms`], whichever is
//! larger (on loopback a 5 ms p99 doubling to 11 ms is noise, not harm),
//! no node's peak RSS above [`AttackOptions::max_rss_mb`], the check
//! passes, and the attack itself saw nothing it must not (a request
//! executed twice, honest newcomers refused).
//!
//! Attack code is one file per family under `attack/`, written against the
//! real wire formats with the `bftd` crate's codec, messages, client API
//! and transport.

use super::bench::{median, memory_megabytes, Ephemeral, Progress};
use super::binaries::find_bftd;
use super::check;
use super::commands::{reap, stop_testnet};
use super::error::NetError;
use super::launch::{find_bftnet, http_get, shutdown_signal, start_node, wait_healthy};
use super::layout::{generate, write_node_files, Layout, Network, State};
use super::load::{self, LoadOptions};
use bftd::config::Cluster;
use bftd_protocol::RequestMode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod at_most_once;
mod certificate;
mod client_frames;
mod expensive;
mod forward;
mod peer;
mod preprepare;
mod receipts;
mod slots;

/// The share of the unattacked committed rate honest clients must keep.
pub const RATE_KEPT: f64 = 0.95;
/// How long the nodes may take to become healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most resident memory this process (attacker and honest load) may
/// use: beyond, the attack is abandoned and its cluster stopped, rather
/// than let the machine's OOM killer choose (once it chose bftnet at 23 GB,
/// leaving the nodes running).
const OWN_MEMORY_LIMIT_MB: f64 = 4096.0;
/// How long the nodes may take to accept clients again after an attack.
const RECOVERY: Duration = Duration::from_secs(60);
/// How long an attack may take to wind down after its phase.
const ATTACK_WIND_DOWN: Duration = Duration::from_secs(180);

/// The attacks, in the order of issue 10's items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Item 1.
    ClientFlood,
    /// Items 2 and 3 (what is cheap of them).
    LyingReceipts,
    /// Item 6.
    HugeCertificate,
    /// Item 7.
    FuturePrePrepare,
    /// Item 8, frames.
    ClientFrames,
    /// Item 8, subscribers.
    SlowSubscriber,
    /// Item 9.
    ConnectionSlots,
    /// Item 10.
    ForwardFlood,
    /// Item 11.
    CheapExpensive,
}

impl Attack {
    /// Every attack, in order.
    pub const ALL: [Attack; 9] = [
        Attack::ClientFlood,
        Attack::LyingReceipts,
        Attack::HugeCertificate,
        Attack::FuturePrePrepare,
        Attack::ClientFrames,
        Attack::SlowSubscriber,
        Attack::ConnectionSlots,
        Attack::ForwardFlood,
        Attack::CheapExpensive,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Attack::ClientFlood => "client-flood",
            Attack::LyingReceipts => "lying-receipts",
            Attack::HugeCertificate => "huge-certificate",
            Attack::FuturePrePrepare => "future-preprepare",
            Attack::ClientFrames => "client-frames",
            Attack::SlowSubscriber => "slow-subscriber",
            Attack::ConnectionSlots => "connection-slots",
            Attack::ForwardFlood => "forward-flood",
            Attack::CheapExpensive => "cheap-expensive",
        }
    }

    /// Issue 10's item.
    pub fn item(self) -> &'static str {
        match self {
            Attack::ClientFlood => "1",
            Attack::LyingReceipts => "2, 3",
            Attack::HugeCertificate => "6",
            Attack::FuturePrePrepare => "7",
            Attack::ClientFrames | Attack::SlowSubscriber => "8",
            Attack::ConnectionSlots => "9",
            Attack::ForwardFlood => "10",
            Attack::CheapExpensive => "11",
        }
    }

    /// What it does, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Attack::ClientFlood => "a victim commits a signed request; 100,001 requests from throwaway keys follow; the victim's old request is replayed to every node: it must not execute twice",
            Attack::LyingReceipts => "the last node restarts as bftd-byzantine lie-to-clients; clients of that node submit and must reject every lying receipt, and still commit",
            Attack::HugeCertificate => "as the last node (its key): Blocks whose checkpoint certificate repeats one valid vote until the frame is 60 MB (~800,000 copies), and certificates of many distinct forged votes",
            Attack::FuturePrePrepare => "as the last node: validly signed pre-prepares for its future views, 4 MiB batches of valid requests, and 16 MiB ones, at many sequence numbers",
            Attack::ClientFrames => "client connections send frames of exactly the client frame limit (junk, and requests of max_request_bytes with bad signatures), and 64 MiB frames",
            Attack::SlowSubscriber => "64 client connections subscribe from height 1 and never read",
            Attack::ConnectionSlots => "QUIC handshakes started and never finished, from many ports, and 600 idle client connections from one address; newcomers must still connect",
            Attack::ForwardFlood => "as the last node: Forward frames to the primary, 4 MiB of fresh valid requests each, and 60 MiB ones",
            Attack::CheapExpensive => "resubscribe-from-1 loops, replays of executed requests, and (as the last node) FetchBlocks floods and statuses claiming to be at height 0",
        }
    }

    /// Whether the attacker speaks as the last node (with its key), which
    /// then does not run.
    fn impersonates(self) -> bool {
        matches!(
            self,
            Attack::HugeCertificate
                | Attack::FuturePrePrepare
                | Attack::ForwardFlood
                | Attack::CheapExpensive
        )
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|attack| attack.name() == name)
    }
}

/// `bftnet attack --list`.
pub fn list() -> String {
    let mut out = String::new();
    for attack in Attack::ALL {
        out.push_str(&format!(
            "{:<18} (item {:<4}) {}\n",
            attack.name(),
            attack.item(),
            attack.describe()
        ));
    }
    out
}

/// Options of `bftnet attack`.
#[derive(Clone, Debug)]
pub struct AttackOptions {
    /// The attacks to run, one fresh cluster each.
    pub attacks: Vec<Attack>,
    /// Honest requests per second, offered open loop.
    pub rate: f64,
    /// Each phase's measured window.
    pub duration: Duration,
    /// Each phase's load before its window, not counted.
    pub warmup: Duration,
    /// Nodes.
    pub n: usize,
    /// Honest client connections.
    pub clients: usize,
    /// Honest payload bytes.
    pub size: usize,
    /// Request authentication.
    pub request_mode: RequestMode,
    /// The attacked p99 may always reach this, whatever the unattacked one.
    pub p99_floor_ms: f64,
    /// No node's peak resident memory may exceed this.
    pub max_rss_mb: f64,
    /// The `bftd` binary (`None`: found as `bftnet bench` finds it).
    pub bftd: Option<PathBuf>,
    /// Keep each cluster's directory.
    pub keep: bool,
    /// Print JSON.
    pub json: bool,
    /// Runs of each attack, each on a fresh cluster; with more than one
    /// the verdict is on the medians (see [`median_result`]).
    pub runs: usize,
    /// Print each second's honest p50 and p99 of every phase (stderr).
    pub every_second: bool,
}

/// Honest clients' figures over one phase's window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    /// Verified receipts arriving in the window, per second.
    pub committed_tx_s: f64,
    /// Latency percentiles of the requests sent in the window, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Requests sent in the window.
    pub submitted: u64,
    /// Of those, failed (refused, timed out, disconnected, invalid).
    pub failed: u64,
    /// Not sent (too many in flight, no connected client).
    pub skipped: u64,
}

/// What an attack itself saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Its own counters (what it sent, what it was answered).
    pub counters: Vec<(String, f64)>,
    /// What must not happen and did (fails the verdict).
    pub violations: Vec<String>,
}

impl Outcome {
    fn count(&mut self, name: &str, value: impl Into<f64>) {
        self.counters.push((name.to_owned(), value.into()));
    }
}

/// One attack's result.
#[derive(Clone, Debug, Serialize)]
pub struct AttackResult {
    /// The attack.
    pub attack: Attack,
    /// Issue 10's item.
    pub item: &'static str,
    /// Unattacked.
    pub unattacked: Phase,
    /// Attacked.
    pub attacked: Phase,
    /// Attacked committed rate over unattacked.
    pub rate_kept: f64,
    /// The attacked p99 allowed.
    pub p99_limit_ms: f64,
    /// Every node's peak resident memory (VmHWM, or the highest sample),
    /// MB, by id (`None`: not running).
    pub peak_rss_mb: Vec<Option<f64>>,
    /// The attack's own counters.
    pub attack_counters: BTreeMap<String, f64>,
    /// Node counters (`/metrics`, summed over the running nodes) that
    /// changed during the attacked phase, by how much.
    pub node_counters: BTreeMap<String, f64>,
    /// The honest logs' check.
    pub check: String,
    /// Why it failed (empty: passed).
    pub failures: Vec<String>,
    /// Passed.
    pub pass: bool,
    /// With `--runs` above 1: every run, of which this is the medians.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<AttackResult>,
}

impl AttackResult {
    /// The result of an attack that could not run.
    fn error(attack: Attack, error: String) -> AttackResult {
        AttackResult {
            attack,
            item: attack.item(),
            unattacked: Phase::default(),
            attacked: Phase::default(),
            rate_kept: 0.0,
            p99_limit_ms: 0.0,
            peak_rss_mb: Vec::new(),
            attack_counters: BTreeMap::new(),
            node_counters: BTreeMap::new(),
            check: String::new(),
            failures: vec![format!("could not run: {error}")],
            pass: false,
            runs: Vec::new(),
        }
    }

    /// The one-line result.
    pub fn line(&self) -> String {
        let peak = self
            .peak_rss_mb
            .iter()
            .flatten()
            .copied()
            .fold(0.0, f64::max);
        let counters: Vec<String> = self
            .node_counters
            .iter()
            .map(|(name, value)| format!("{name} +{}", number(*value)))
            .chain(
                self.attack_counters
                    .iter()
                    .map(|(name, value)| format!("{name} {}", number(*value))),
            )
            .collect();
        format!(
            "{:<18} {}  {:.0} tx/s p50 {:.1} p99 {:.1} ms -> {:.0} tx/s ({:.0}%) p50 {:.1} p99 {:.1} ms (limit {:.1})  peak RSS {:.0} MB  [{}]{}",
            self.attack.name(),
            if self.pass { "PASS" } else { "FAIL" },
            self.unattacked.committed_tx_s,
            self.unattacked.p50_ms,
            self.unattacked.p99_ms,
            self.attacked.committed_tx_s,
            self.rate_kept * 100.0,
            self.attacked.p50_ms,
            self.attacked.p99_ms,
            self.p99_limit_ms,
            peak,
            counters.join(", "),
            if self.failures.is_empty() {
                String::new()
            } else {
                format!("\n    FAIL: {}", self.failures.join("; "))
            }
        )
    }
}

/// A counter for people: whole numbers as such, others to one decimal.
fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// What a running attack gets: the cluster and who it may be.
pub(super) struct Context {
    /// The cluster file.
    pub cluster: Cluster,
    /// The testnet's directory.
    pub layout: Layout,
    /// Its state (PIDs of the running nodes).
    pub state: State,
    /// The running honest nodes.
    pub honest: Vec<u16>,
    /// The node the attacker speaks as (the last).
    pub attacker: u16,
    /// The one local endpoint every client connection of the attack uses
    /// (`peer::raw_link`), made on first use, on the attack's runtime: an
    /// endpoint each cost this process gigabytes of receive buffers under
    /// `slow-subscriber` (64 connections), which then could not run twice.
    pub client_endpoint: tokio::sync::OnceCell<bftd::transport::ClientEndpoint>,
}

/// Whether the attack was told to stop.
pub(super) fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Sleeps `period`, or less if told to stop.
pub(super) async fn pause(stop: &mut watch::Receiver<bool>, period: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(period) => {}
        _ = stop.changed() => {}
    }
}

async fn launch(
    attack: Attack,
    context: Arc<Context>,
    stop: watch::Receiver<bool>,
) -> Result<Outcome, String> {
    match attack {
        Attack::ClientFlood => at_most_once::run(context, stop).await,
        Attack::LyingReceipts => receipts::run(context, stop).await,
        Attack::HugeCertificate => certificate::run(context, stop).await,
        Attack::FuturePrePrepare => preprepare::run(context, stop).await,
        Attack::ClientFrames => client_frames::frames(context, stop).await,
        Attack::SlowSubscriber => client_frames::subscribers(context, stop).await,
        Attack::ConnectionSlots => slots::run(context, stop).await,
        Attack::ForwardFlood => forward::run(context, stop).await,
        Attack::CheapExpensive => expensive::run(context, stop).await,
    }
}

/// Refuses nonsense before anything starts.
fn validate(options: &AttackOptions) -> Result<(), NetError> {
    let bad = |flag, value: String, reason: &str| {
        Err(NetError::BadArgument {
            flag,
            value,
            reason: reason.into(),
        })
    };
    super::layout::check_size(options.n, "")?;
    if options.n < 4 {
        return bad("-n", options.n.to_string(), "at least 4 (one node attacks)");
    }
    if !(options.rate > 0.0 && options.rate <= 1_000_000.0) {
        return bad("--rate", options.rate.to_string(), "more than 0");
    }
    if options.duration.is_zero() {
        return bad("--duration", "0".into(), "measure for some time: 30s");
    }
    if !(1..=1000).contains(&options.clients) {
        return bad("--clients", options.clients.to_string(), "1 to 1000");
    }
    if !(1..=64 * 1024).contains(&options.size) {
        return bad("--size", options.size.to_string(), "1 to 65536 bytes");
    }
    if !(1..=100).contains(&options.runs) {
        return bad(
            "--runs",
            options.runs.to_string(),
            "1 to 100 (3 gives medians)",
        );
    }
    Ok(())
}

/// `bftnet attack`: runs each attack on its own fresh cluster, prints a
/// line per attack (and JSON if asked), and says whether all passed.
pub async fn attack(options: AttackOptions) -> Result<Vec<AttackResult>, NetError> {
    validate(&options)?;
    let bftd = match &options.bftd {
        Some(path) if path.is_file() => path.clone(),
        Some(path) => {
            return Err(NetError::BinaryMissing {
                name: "bftd",
                env: "--bftd",
                searched: vec![path.clone()],
            })
        }
        None => find_bftd()?,
    };
    let bftnet = find_bftnet()?;
    eprintln!(
        "attack: {} nodes, {} honest tx/s of {} bytes over {} clients, {:.0} s unattacked then {:.0} s attacked (after {:.0} s warm-up each); bftd {}",
        options.n,
        options.rate,
        options.size,
        options.clients,
        options.duration.as_secs_f64(),
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        bftd.display()
    );
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; for representative figures use the release build");
    }
    let mut results = Vec::new();
    let runs = options.runs.max(1);
    for attack in &options.attacks {
        let mut each = Vec::with_capacity(runs);
        for run in 1..=runs {
            if runs > 1 {
                eprintln!(
                    "== {} (issue 10 item {}), run {run} of {runs} ==",
                    attack.name(),
                    attack.item()
                );
            } else {
                eprintln!("== {} (issue 10 item {}) ==", attack.name(), attack.item());
            }
            let result = match run_one(*attack, &options, &bftd, &bftnet).await {
                Ok(result) => result,
                Err(NetError::Interrupted) => return Err(NetError::Interrupted),
                // A run that could not run fails, and the others still run.
                Err(error) => AttackResult::error(*attack, error.to_string()),
            };
            if !options.json {
                let prefix = if runs > 1 {
                    format!("run {run}/{runs} ")
                } else {
                    String::new()
                };
                println!("{prefix}{}", result.line());
                let _ = std::io::stdout().flush();
            }
            each.push(result);
        }
        let result = if runs > 1 {
            let result = median_result(&options, *attack, each);
            if !options.json {
                println!("median of {runs}: {}", result.line());
                let _ = std::io::stdout().flush();
            }
            result
        } else {
            each.remove(0)
        };
        results.push(result);
    }
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        );
    } else if results.len() > 1 {
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| !r.pass)
            .map(|r| r.attack.name())
            .collect();
        println!(
            "{} of {} attacks passed{}",
            results.len() - failed.len(),
            results.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failed.join(", "))
            }
        );
    }
    let _ = std::io::stdout().flush();
    Ok(results)
}

async fn run_one(
    attack: Attack,
    options: &AttackOptions,
    bftd: &Path,
    bftnet: &Path,
) -> Result<AttackResult, NetError> {
    let mut cluster = Ephemeral::new(options.keep);
    let outcome = tokio::select! {
        outcome = start_and_attack(&mut cluster, attack, options, bftd, bftnet) => outcome,
        _ = shutdown_signal() => Err(NetError::Interrupted),
        megabytes = own_memory_above(OWN_MEMORY_LIMIT_MB) => Err(NetError::AttackerMemory {
            megabytes,
            limit: OWN_MEMORY_LIMIT_MB,
        }),
    };
    // Stops every process by PID (also on error and Ctrl-C).
    drop(cluster);
    outcome
}

/// Resolves with this process's resident memory once it exceeds `limit`
/// megabytes (checked every 250 ms).
async fn own_memory_above(limit: f64) -> f64 {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let own = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| super::bench::status_megabytes(&status, "VmRSS"));
        if let Some(megabytes) = own.filter(|&megabytes| megabytes > limit) {
            return megabytes;
        }
    }
}

/// Aborts a task when dropped (an attack left running on an error).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The attacker's own runtime and threads. In the honest clients' runtime,
/// the attack's CPU work (signing floods of requests, dialing hundreds of
/// handshakes: most of a core under `connection-slots`) would run on the
/// worker threads the load generator reads its receipts on, and delay them:
/// the honest latency would measure the harness, not the nodes. On their
/// own threads the operating system shares the cores between attacker,
/// nodes and honest clients, as between processes.
struct AttackerRuntime(Option<tokio::runtime::Runtime>);

impl AttackerRuntime {
    fn start() -> Result<AttackerRuntime, NetError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("attacker")
            .enable_all()
            .build()
            .map(|runtime| AttackerRuntime(Some(runtime)))
            .map_err(NetError::Runtime)
    }

    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

impl Drop for AttackerRuntime {
    fn drop(&mut self) {
        // Dropping a runtime would block this (async) thread on its tasks.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn start_and_attack(
    cluster: &mut Ephemeral,
    attack: Attack,
    options: &AttackOptions,
    bftd: &Path,
    bftnet: &Path,
) -> Result<AttackResult, NetError> {
    let _ = bftnet;
    let layout = cluster.layout.clone();
    let mut state = generate(
        &layout,
        options.n,
        options.request_mode,
        Network::Direct,
        bftd,
    )?;
    write_node_files(&layout, &state)?;
    state.save(&layout)?;
    let attacker = (options.n - 1) as u16;
    let ids: Vec<u16> = (0..options.n as u16)
        .filter(|&id| !(attack.impersonates() && id == attacker))
        .collect();
    let started = Instant::now();
    for &id in &ids {
        cluster.children.push(start_node(&layout, &mut state, id)?);
    }
    wait_healthy(&layout, &state, &ids, HEALTHY_TIMEOUT).await?;
    eprintln!(
        "{} of {} nodes healthy in {:.1} s ({}){}",
        ids.len(),
        options.n,
        started.elapsed().as_secs_f64(),
        layout.dir.display(),
        if attack.impersonates() {
            format!("; node {attacker} is the attacker's (its key, not its bftd)")
        } else {
            String::new()
        }
    );
    let sampler = RssSampler::start(&state);
    let cluster_file = Cluster::load(&layout.cluster())?;
    // Honest clients never talk to the node the attacker is or becomes.
    let targets: Vec<u16> = ids
        .iter()
        .copied()
        .filter(|&id| id != attacker)
        .cycle()
        .take(options.clients)
        .collect();

    eprintln!("unattacked phase ...");
    let unattacked = phase(&cluster_file, &targets, options, "unattacked").await?;
    let before = scrape(&state, &ids).await;
    let context = Arc::new(Context {
        cluster: cluster_file.clone(),
        layout: layout.clone(),
        state: state.clone(),
        honest: ids.iter().copied().filter(|&id| id != attacker).collect(),
        attacker,
        client_endpoint: tokio::sync::OnceCell::new(),
    });
    let (stop, stopping) = watch::channel(false);
    eprintln!("attacked phase: {} ...", attack.describe());
    let attacker_threads = AttackerRuntime::start()?;
    let task = attacker_threads.spawn(launch(attack, context, stopping));
    let _abort = AbortOnDrop(task.abort_handle());
    let attacked = phase(&cluster_file, &targets, options, "attacked").await;
    let _ = stop.send(true);
    eprintln!("attack stopping ...");
    let outcome = match tokio::time::timeout(ATTACK_WIND_DOWN, task).await {
        Ok(Ok(Ok(outcome))) => outcome,
        Ok(Ok(Err(error))) => Outcome {
            violations: vec![format!("the attack failed to run: {error}")],
            ..Outcome::default()
        },
        Ok(Err(error)) => Outcome {
            violations: vec![format!("the attack task ended: {error}")],
            ..Outcome::default()
        },
        Err(_) => Outcome {
            violations: vec![format!(
                "the attack did not stop within {} s",
                ATTACK_WIND_DOWN.as_secs()
            )],
            ..Outcome::default()
        },
    };
    let attacked = attacked?;
    let mut outcome = outcome;
    let honest: Vec<u16> = ids.iter().copied().filter(|&id| id != attacker).collect();
    match recovered(&cluster_file, &honest, RECOVERY).await {
        Ok(after) => outcome.count("clients_accepted_again_after_s", after.as_secs_f64()),
        Err(id) => outcome.violations.push(format!(
            "node {id} did not accept a client within {} s of the attack's end",
            RECOVERY.as_secs()
        )),
    }
    // The state as it is now (lying-receipts restarts a node).
    let state = State::load(&layout).unwrap_or(state);
    let after = scrape(&state, &ids).await;
    let peak_rss_mb = sampler.finish(&state);
    // The check reads every honest node's chain. Through the client API a
    // node serves old blocks at its history budget (design notes §40,
    // 8 MiB/s), which after a flood of big requests took minutes; read from
    // the stores of stopped nodes, it takes seconds.
    let stopping_layout = layout.clone();
    let _ = tokio::task::spawn_blocking(move || stop_testnet(&stopping_layout)).await;
    reap(std::mem::take(&mut cluster.children));
    let state = State::load(&layout).unwrap_or(state);
    let mut check_state = state.clone();
    if attack.impersonates() {
        if let Ok(node) = check_state.node_mut(attacker) {
            node.behaviour = Some("attacker".into());
        }
    }
    let check = check::run(&layout, &check_state).await?;
    Ok(verdict(
        attack,
        options,
        unattacked,
        attacked,
        peak_rss_mb,
        outcome,
        difference(&before, &after),
        &check,
    ))
}

#[allow(clippy::too_many_arguments)]
fn verdict(
    attack: Attack,
    options: &AttackOptions,
    unattacked: Phase,
    attacked: Phase,
    peak_rss_mb: Vec<Option<f64>>,
    outcome: Outcome,
    node_counters: BTreeMap<String, f64>,
    check: &check::CheckReport,
) -> AttackResult {
    let (rate_kept, p99_limit_ms, mut failures) =
        judge(options, &unattacked, &attacked, &peak_rss_mb);
    if !check.ok() {
        failures.push(format!("check: {}", check.render().trim()));
    }
    failures.extend(outcome.violations.iter().cloned());
    AttackResult {
        attack,
        item: attack.item(),
        unattacked,
        attacked,
        rate_kept,
        p99_limit_ms,
        peak_rss_mb,
        attack_counters: outcome.counters.into_iter().collect(),
        node_counters,
        check: check.render().lines().next().unwrap_or_default().to_owned(),
        pass: failures.is_empty(),
        failures,
        runs: Vec::new(),
    }
}

/// The goal's three figures: the committed rate kept, the attacked p99
/// allowed, and which of them (and which node's memory) missed.
fn judge(
    options: &AttackOptions,
    unattacked: &Phase,
    attacked: &Phase,
    peak_rss_mb: &[Option<f64>],
) -> (f64, f64, Vec<String>) {
    let rate_kept = attacked.committed_tx_s / unattacked.committed_tx_s.max(1e-9);
    let p99_limit_ms = (2.0 * unattacked.p99_ms).max(options.p99_floor_ms);
    let mut failures = Vec::new();
    if rate_kept < RATE_KEPT {
        failures.push(format!(
            "honest committed rate kept {:.0}% (< {:.0}%)",
            rate_kept * 100.0,
            RATE_KEPT * 100.0
        ));
    }
    if attacked.p99_ms > p99_limit_ms {
        failures.push(format!(
            "honest p99 {:.1} ms > {:.1} ms",
            attacked.p99_ms, p99_limit_ms
        ));
    }
    for (id, peak) in peak_rss_mb.iter().enumerate() {
        if let Some(peak) = peak.filter(|&peak| peak > options.max_rss_mb) {
            failures.push(format!(
                "node {id} peak RSS {peak:.0} MB > {:.0} MB",
                options.max_rss_mb
            ));
        }
    }
    (rate_kept, p99_limit_ms, failures)
}

/// The result of several runs of one attack: the honest figures are the
/// medians over runs (each phase's committed rate, p50 and p99 apart), the
/// p99 limit twice the median unattacked p99, each node's peak memory the
/// largest in any run, and the counters the median run's (the run whose
/// attacked p99 is the median). It fails on the medians' rate and p99, on
/// any run's memory, and on anything that must never happen in any run (a
/// check that failed, a violation, a run that could not run): a tail is
/// judged by its typical value, a broken promise by every run.
pub fn median_result(
    options: &AttackOptions,
    attack: Attack,
    runs: Vec<AttackResult>,
) -> AttackResult {
    let Some(first) = runs.first() else {
        return AttackResult::error(attack, "no run".into());
    };
    let phase = |of: fn(&AttackResult) -> &Phase| Phase {
        committed_tx_s: median(
            &runs
                .iter()
                .map(|r| of(r).committed_tx_s)
                .collect::<Vec<_>>(),
        ),
        p50_ms: median(&runs.iter().map(|r| of(r).p50_ms).collect::<Vec<_>>()),
        p99_ms: median(&runs.iter().map(|r| of(r).p99_ms).collect::<Vec<_>>()),
        submitted: runs.iter().map(|r| of(r).submitted).sum(),
        failed: runs.iter().map(|r| of(r).failed).sum(),
        skipped: runs.iter().map(|r| of(r).skipped).sum(),
    };
    let unattacked = phase(|r| &r.unattacked);
    let attacked = phase(|r| &r.attacked);
    let nodes = runs.iter().map(|r| r.peak_rss_mb.len()).max().unwrap_or(0);
    let peak_rss_mb: Vec<Option<f64>> = (0..nodes)
        .map(|id| {
            runs.iter()
                .filter_map(|r| r.peak_rss_mb.get(id).copied().flatten())
                .reduce(f64::max)
        })
        .collect();
    let (rate_kept, p99_limit_ms, mut failures) =
        judge(options, &unattacked, &attacked, &peak_rss_mb);
    for (index, run) in runs.iter().enumerate() {
        let never = run.failures.iter().filter(|failure| {
            !(failure.starts_with("honest committed rate")
                || failure.starts_with("honest p99")
                || failure.contains(" peak RSS "))
        });
        failures.extend(never.map(|failure| format!("run {}: {failure}", index + 1)));
    }
    let mut by_p99: Vec<&AttackResult> = runs.iter().collect();
    by_p99.sort_by(|a, b| a.attacked.p99_ms.total_cmp(&b.attacked.p99_ms));
    let middle = by_p99.get(by_p99.len() / 2).copied().unwrap_or(first);
    AttackResult {
        attack,
        item: attack.item(),
        unattacked,
        attacked,
        rate_kept,
        p99_limit_ms,
        peak_rss_mb,
        attack_counters: middle.attack_counters.clone(),
        node_counters: middle.node_counters.clone(),
        check: middle.check.clone(),
        pass: failures.is_empty(),
        failures,
        runs,
    }
}

/// Waits until every node in `ids` accepts a new client connection and
/// answers its status (half-open handshakes of an attack time out first);
/// returns how long that took, or the first node that did not in `limit`.
async fn recovered(cluster: &Cluster, ids: &[u16], limit: Duration) -> Result<Duration, u16> {
    let started = Instant::now();
    for &id in ids {
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(3), async {
                let key = bftd_crypto::KeyPair::generate(&mut rand::rngs::OsRng);
                bftd::client::Client::connect(cluster, bftd_protocol::NodeId(id), key).await
            })
            .await;
            if matches!(attempt, Ok(Ok(_))) {
                break;
            }
            if started.elapsed() >= limit {
                return Err(id);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(started.elapsed())
}

/// One phase: honest open-loop load for the warm-up and the window; the
/// figures are those of the window.
async fn phase(
    cluster: &Cluster,
    targets: &[u16],
    options: &AttackOptions,
    name: &str,
) -> Result<Phase, NetError> {
    let load_options = LoadOptions {
        rate: options.rate,
        duration: Some(options.warmup + options.duration),
        warmup: options.warmup,
        closed_loop: None,
        size: options.size,
        clients_per_node: 1,
        max_in_flight: 20_000,
        request_timeout: Duration::from_secs(10),
        drain: Duration::from_secs(5),
    };
    let running = load::start(cluster, targets, load_options)
        .await
        .map_err(|source| NetError::Client {
            id: targets.first().copied().unwrap_or(0),
            source,
        })?;
    let progress = Progress::new();
    let window_start = running.started() + options.warmup;
    progress.until(window_start, String::new).await;
    let receipts_before = running.counters.receipts.load(Ordering::Relaxed);
    let opened = Instant::now();
    let seconds = options.every_second.then(|| {
        AbortOnDrop(
            tokio::spawn(every_second(running.counters.clone(), name.to_string())).abort_handle(),
        )
    });
    progress
        .until(window_start + options.duration, || {
            let elapsed = opened.elapsed().as_secs_f64();
            let committed = running
                .counters
                .receipts
                .load(Ordering::Relaxed)
                .saturating_sub(receipts_before);
            let p99 = running
                .counters
                .latencies
                .lock()
                .map(|h| h.quantile_ms(0.99))
                .unwrap_or(0.0);
            format!(
                "  {name} {elapsed:.0}/{:.0} s: {:.0} tx/s committed, p99 {p99:.1} ms, {} failed",
                options.duration.as_secs_f64(),
                committed as f64 / elapsed.max(0.001),
                running.failures()
            )
        })
        .await;
    let committed = running
        .counters
        .receipts
        .load(Ordering::Relaxed)
        .saturating_sub(receipts_before);
    let window_s = opened.elapsed().as_secs_f64();
    drop(seconds);
    progress.finish();
    let report = running.finish().await;
    Ok(Phase {
        committed_tx_s: committed as f64 / window_s.max(1e-9),
        p50_ms: report.latency_ms.p50,
        p99_ms: report.latency_ms.p99,
        submitted: report.submitted,
        failed: report.rejected + report.timed_out + report.disconnected + report.invalid_receipts,
        skipped: report.skipped,
    })
}

/// Prints, each second, the honest latencies of the receipts that arrived
/// in that second (`--every-second`).
async fn every_second(counters: Arc<load::Counters>, phase: String) {
    // On a terminal, clear the progress line (rewritten in place) first.
    let clear = if std::io::stderr().is_terminal() {
        "\r\x1b[K"
    } else {
        ""
    };
    let mut last = counters.latencies_now();
    for second in 1u64.. {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = counters.latencies_now();
        let window = now.since(&last);
        eprintln!(
            "{clear}    {phase} second {second}: {} receipts, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            window.count(),
            window.quantile_ms(0.5),
            window.quantile_ms(0.99),
            window.max_ms()
        );
        last = now;
    }
}

/// Samples every node's resident memory every 250 ms; the peak is the
/// larger of the highest sample and the kernel's `VmHWM` at the end.
struct RssSampler {
    peaks: Arc<Mutex<Vec<Option<f64>>>>,
    _task: AbortOnDrop,
}

impl RssSampler {
    fn start(state: &State) -> RssSampler {
        let pids: Vec<Option<u32>> = state.nodes.iter().map(|node| node.pid).collect();
        let peaks = Arc::new(Mutex::new(vec![None; pids.len()]));
        let shared = peaks.clone();
        let task = tokio::spawn(async move {
            loop {
                sample(&shared, &pids, "VmRSS");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        RssSampler {
            peaks,
            _task: AbortOnDrop(task.abort_handle()),
        }
    }

    /// The peaks, with `VmHWM` of the processes now recorded in `state`.
    fn finish(self, state: &State) -> Vec<Option<f64>> {
        let pids: Vec<Option<u32>> = state.nodes.iter().map(|node| node.pid).collect();
        sample(&self.peaks, &pids, "VmHWM");
        sample(&self.peaks, &pids, "VmRSS");
        let peaks = self.peaks.lock().map(|p| p.clone()).unwrap_or_default();
        peaks
    }
}

fn sample(peaks: &Mutex<Vec<Option<f64>>>, pids: &[Option<u32>], name: &str) {
    let Ok(mut peaks) = peaks.lock() else { return };
    for (peak, pid) in peaks.iter_mut().zip(pids) {
        if let Some(megabytes) = pid.and_then(|pid| memory_megabytes(pid, name)) {
            *peak = Some(peak.map_or(megabytes, |p: f64| p.max(megabytes)));
        }
    }
}

/// The counters worth comparing: refusals, drops, ended subscriptions,
/// replays, by full name with labels, summed over `ids`.
async fn scrape(state: &State, ids: &[u16]) -> BTreeMap<String, f64> {
    const WATCHED: [&str; 9] = [
        "bftd_rejected_total",
        "bftd_client_rejected_total",
        "bftd_subscriptions_ended_total",
        "bftd_requests_replayed_total",
        "bftd_replies_dropped_total",
        "bftd_view_changes_total",
        "bftd_duplicates_skipped_total",
        "bftd_send_dropped_total",
        "bftd_transport_dropped_queue_full_total",
    ];
    let mut totals = BTreeMap::new();
    for &id in ids {
        let Ok(node) = state.node(id) else { continue };
        let Ok((200, body)) = http_get(node.metrics, "/metrics", Duration::from_secs(2)).await
        else {
            continue;
        };
        for line in body.lines().filter(|line| !line.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if !WATCHED.iter().any(|watched| name.starts_with(watched)) {
                continue;
            }
            if let Ok(value) = value.parse::<f64>() {
                let short = name
                    .strip_prefix("bftd_")
                    .unwrap_or(name)
                    .replace("_total", "");
                *totals.entry(short).or_insert(0.0) += value;
            }
        }
    }
    totals
}

fn difference(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(name, value)| {
            let change = value - before.get(name).copied().unwrap_or(0.0);
            (change > 0.0).then(|| (name.clone(), change))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every attack has a distinct name that parses back.
    #[test]
    fn names_parse_back() {
        for attack in Attack::ALL {
            assert_eq!(Attack::parse(attack.name()), Some(attack));
        }
        assert_eq!(Attack::parse("nonsense"), None);
        assert_eq!(list().lines().count(), Attack::ALL.len());
    }

    /// Only counters that grew are shown, by how much.
    #[test]
    fn counter_differences() {
        let before = BTreeMap::from([("a".to_owned(), 1.0), ("b".to_owned(), 2.0)]);
        let after = BTreeMap::from([
            ("a".to_owned(), 1.0),
            ("b".to_owned(), 5.0),
            ("c".to_owned(), 1.0),
        ]);
        let changed = difference(&before, &after);
        assert_eq!(
            changed,
            BTreeMap::from([("b".to_owned(), 3.0), ("c".to_owned(), 1.0)])
        );
    }

    fn options() -> AttackOptions {
        AttackOptions {
            attacks: vec![Attack::ForwardFlood],
            rate: 1000.0,
            duration: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            n: 4,
            clients: 4,
            size: 128,
            request_mode: RequestMode::ClientSigned,
            p99_floor_ms: 50.0,
            max_rss_mb: 300.0,
            bftd: None,
            keep: false,
            json: false,
            runs: 3,
            every_second: false,
        }
    }

    fn run(unattacked_p99: f64, attacked_p99: f64, rss: f64, failures: &[&str]) -> AttackResult {
        let phase = |p99_ms| Phase {
            committed_tx_s: 1000.0,
            p50_ms: 10.0,
            p99_ms,
            submitted: 100,
            failed: 0,
            skipped: 0,
        };
        AttackResult {
            unattacked: phase(unattacked_p99),
            attacked: phase(attacked_p99),
            peak_rss_mb: vec![Some(rss), None, Some(rss / 2.0)],
            failures: failures.iter().map(|f| f.to_string()).collect(),
            pass: failures.is_empty(),
            ..AttackResult::error(Attack::ForwardFlood, String::new())
        }
    }

    /// Several runs are judged by the medians of their tails, but by every
    /// run for memory and for what must never happen.
    #[test]
    fn several_runs_are_judged_by_their_medians() {
        let options = options();
        // One run's tail is far out; the medians (unattacked 40, attacked
        // 70 against a limit of 80) pass.
        let runs = vec![
            run(40.0, 70.0, 200.0, &[]),
            run(30.0, 900.0, 210.0, &["honest p99 900.0 ms > 60.0 ms"]),
            run(45.0, 60.0, 190.0, &[]),
        ];
        let result = median_result(&options, Attack::ForwardFlood, runs);
        assert_eq!(result.unattacked.p99_ms, 40.0);
        assert_eq!(result.attacked.p99_ms, 70.0);
        assert_eq!(result.p99_limit_ms, 80.0);
        assert!(result.pass, "{:?}", result.failures);
        assert_eq!(result.peak_rss_mb, vec![Some(210.0), None, Some(105.0)]);
        assert_eq!(result.runs.len(), 3);

        // The median tail over the limit fails.
        let runs = vec![
            run(20.0, 70.0, 200.0, &[]),
            run(30.0, 90.0, 200.0, &[]),
            run(25.0, 60.0, 200.0, &[]),
        ];
        let result = median_result(&options, Attack::ForwardFlood, runs);
        assert!(!result.pass);
        assert_eq!(result.failures, vec!["honest p99 70.0 ms > 50.0 ms"]);

        // One run over the memory limit, or with a broken check, fails all.
        let runs = vec![
            run(40.0, 50.0, 200.0, &[]),
            run(40.0, 50.0, 320.0, &["node 0 peak RSS 320 MB > 300 MB"]),
            run(40.0, 50.0, 200.0, &["check: height 7 differs"]),
        ];
        let result = median_result(&options, Attack::ForwardFlood, runs);
        assert!(!result.pass);
        assert_eq!(
            result.failures,
            vec![
                "node 0 peak RSS 320 MB > 300 MB".to_string(),
                "run 3: check: height 7 differs".to_string(),
            ]
        );
        assert_eq!(
            median_result(&options, Attack::ForwardFlood, Vec::new()).failures,
            vec!["could not run: no run".to_string()]
        );
    }
}
