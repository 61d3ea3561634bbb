//! `bftnet bench`: a fresh cluster of real `bftd` processes talking directly
//! to each other (no fault proxy in the path), a warmed-up, measured load,
//! and what it cost.
//!
//! One run: generate a direct testnet in a new temporary directory, start
//! every node, wait until healthy, offer load (open or closed loop, see
//! [`super::load`]), read CPU times from `/proc` at both ends of the
//! measurement window, drain, read memory and each node's `/status`, stop
//! every process by PID and delete the directory. `--runs K` repeats this
//! with a fresh cluster each time and reports the medians.
//!
//! What counts: throughput is the verified receipts that *arrive* inside
//! the window divided by its length; latency and failures are those of the
//! requests *sent* inside it (whenever they were answered). CPU is utime +
//! stime over the window, summed over the `bftd` processes, and the load
//! generator's own separately (it shares the machine).

use super::binaries::find_bftd;
use super::commands::{reap, start_all, stop_testnet};
use super::error::NetError;
use super::launch::{find_bftnet, log_tail, node_status, shutdown_signal};
use super::layout::{
    assign_behaviours, behaviours, check_size, generate, write_node_files, ByzantineArg, Layout,
    Network, State,
};
use super::load::{self, Load, LoadOptions, Percentiles};
use bftd::config::Cluster;
use bftd_protocol::RequestMode;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the nodes may take to become healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// After the window, how long to wait for the last receipts.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a request may wait for its receipt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: most requests awaiting receipts (beyond, not sent, counted).
const MAX_IN_FLIGHT: usize = 20_000;
/// The progress line's period on a terminal, and in a log (CI).
const PROGRESS_TERMINAL: Duration = Duration::from_secs(1);
const PROGRESS_LOG: Duration = Duration::from_secs(5);

/// How requests are offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// This many requests per second, whatever the answers.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// Each client keeps this many requests outstanding.
    Closed {
        /// Outstanding requests per client.
        window: usize,
    },
}

/// Options of `bftnet bench`.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Nodes (3f + 1).
    pub n: usize,
    /// Client connections, round-robin over the honest nodes.
    pub clients: usize,
    /// Payload bytes per request.
    pub size: usize,
    /// Open or closed loop.
    pub pacing: Pacing,
    /// The measurement window.
    pub duration: Duration,
    /// Load before the window, not counted.
    pub warmup: Duration,
    /// The nodes' `max_batch_requests`; `None` keeps bftd's default.
    pub batch: Option<usize>,
    /// Request authentication.
    pub request_mode: RequestMode,
    /// Byzantine nodes.
    pub byzantine: Vec<ByzantineArg>,
    /// Allow more than f byzantine nodes.
    pub allow_unsafe: bool,
    /// Fresh clusters to measure, one after another.
    pub runs: usize,
    /// Keep each run's directory.
    pub keep: bool,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// Failures among the requests sent in the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Failures {
    /// Refused by a node ("busy", ...).
    pub rejected: u64,
    /// No receipt within the request timeout.
    pub timed_out: u64,
    /// The connection failed.
    pub disconnected: u64,
    /// Receipts that did not verify.
    pub invalid_receipts: u64,
    /// Not sent: too many in flight, or no connected client.
    pub skipped: u64,
    /// Still unanswered when the drain gave up.
    pub unanswered: u64,
}

impl Failures {
    fn add(&mut self, other: &Failures) {
        self.rejected += other.rejected;
        self.timed_out += other.timed_out;
        self.disconnected += other.disconnected;
        self.invalid_receipts += other.invalid_receipts;
        self.skipped += other.skipped;
        self.unanswered += other.unanswered;
    }

    fn describe(&self) -> String {
        format!(
            "{} refused, {} timed out, {} disconnected, {} invalid receipts, {} not sent, {} unanswered",
            self.rejected,
            self.timed_out,
            self.disconnected,
            self.invalid_receipts,
            self.skipped,
            self.unanswered
        )
    }
}

/// Memory of every node, megabytes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Each node's, by id (0 if unreadable).
    pub nodes: Vec<f64>,
    /// The largest.
    pub max: f64,
}

impl Memory {
    fn of(nodes: Vec<f64>) -> Memory {
        let max = nodes.iter().copied().fold(0.0, f64::max);
        Memory { nodes, max }
    }
}

/// One node at the end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct NodeFigures {
    /// Node id.
    pub id: u16,
    /// Its PID (stopped by now).
    pub pid: Option<u32>,
    /// "honest" or its behaviour.
    pub behaviour: String,
    /// Its height after the drain, if it answered.
    pub height: Option<u64>,
    /// Its view after the drain, if it answered.
    pub view: Option<u64>,
    /// CPU seconds over the window.
    pub cpu_s: Option<f64>,
    /// Peak resident memory (VmHWM), megabytes.
    pub peak_rss_mb: Option<f64>,
    /// Resident memory after the drain (VmRSS), megabytes.
    pub rss_mb: Option<f64>,
}

/// One run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// 1, 2, ...
    pub run: usize,
    /// Its directory (deleted unless `kept`).
    pub dir: String,
    /// Whether the directory was kept.
    pub kept: bool,
    /// The window as measured, seconds.
    pub window_s: f64,
    /// Requests sent in the window.
    pub submitted: u64,
    /// Verified receipts arriving in the window.
    pub committed: u64,
    /// `committed` per second of the window.
    pub throughput_tx_s: f64,
    /// Latency of requests sent in the window, milliseconds.
    pub latency_ms: Percentiles,
    /// Failures among them.
    pub failures: Failures,
    /// CPU seconds of every bftd process over the window.
    pub cpu_s: f64,
    /// ... per 1,000 committed transactions.
    pub cpu_s_per_1000_tx: f64,
    /// CPU seconds of the load generator (this process) over the window.
    pub loadgen_cpu_s: f64,
    /// ... per 1,000 committed transactions.
    pub loadgen_cpu_s_per_1000_tx: f64,
    /// Peak resident memory.
    pub peak_rss_mb: Memory,
    /// Resident memory after the drain.
    pub rss_end_mb: Memory,
    /// The highest view an honest node reached (views start at 0).
    pub view_changes: u64,
    /// Every node.
    pub nodes: Vec<NodeFigures>,
}

/// The whole benchmark (`--json`): the parameters, the medians over runs
/// (a single run's figures when `runs` is 1), and every run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Nodes.
    pub n: usize,
    /// Client connections.
    pub clients: usize,
    /// Payload bytes.
    pub size: usize,
    /// Offered rate, tx/s; null in closed loop.
    pub rate: Option<f64>,
    /// Whether the load was closed loop.
    pub closed_loop: bool,
    /// Closed loop: outstanding requests per client; null in open loop.
    pub window: Option<usize>,
    /// The nodes' `max_batch_requests`; null for bftd's default.
    pub batch: Option<usize>,
    /// Whether requests were client-signed.
    pub signed_requests: bool,
    /// Byzantine nodes, `ID=BEHAVIOUR`.
    pub byzantine: Vec<String>,
    /// The measurement window asked for, seconds.
    pub duration_s: f64,
    /// The warm-up, seconds.
    pub warmup_s: f64,
    /// Runs.
    pub runs: usize,
    /// "release" or "debug" (this bftnet's build).
    pub profile: &'static str,
    /// The bftd binary.
    pub bftd: String,
    /// Median throughput, tx/s.
    pub throughput_tx_s: f64,
    /// Median of each latency percentile, milliseconds.
    pub latency_ms: Percentiles,
    /// Median CPU of the nodes per 1,000 transactions, seconds.
    pub cpu_s_per_1000_tx: f64,
    /// Median CPU of the load generator per 1,000 transactions, seconds.
    pub loadgen_cpu_s_per_1000_tx: f64,
    /// Peak resident memory, the largest over runs.
    pub peak_rss_mb: Memory,
    /// Committed in all windows.
    pub committed: u64,
    /// Failures in all windows.
    pub failures: Failures,
    /// View changes over all runs.
    pub view_changes: u64,
    /// Every run.
    pub runs_detail: Vec<RunReport>,
}

/// The median (the mean of the middle two for an even count; 0 if empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match (sorted.len(), sorted.get(middle)) {
        (_, None) => 0.0,
        (len, Some(&value)) if len % 2 == 1 => value,
        (_, Some(&value)) => (value + sorted.get(middle - 1).copied().unwrap_or(value)) / 2.0,
    }
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`. The
/// command name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14, 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   1234 kB` line of `/proc/PID/status`, in megabytes.
pub fn status_megabytes(status: &str, name: &str) -> Option<f64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
    let mut parts = line.split_whitespace();
    let kilobytes: f64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kilobytes / 1024.0)
}

/// CPU seconds a process has used so far (`None` if it is gone).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let ticks = stat_cpu_ticks(&std::fs::read_to_string(path).ok()?)?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(ticks as f64 / per_second as f64)
}

/// A memory figure of a live process, megabytes.
fn memory_megabytes(pid: u32, name: &str) -> Option<f64> {
    status_megabytes(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        name,
    )
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Refuses nonsense before anything starts.
fn validate(options: &BenchOptions) -> Result<(), NetError> {
    let bad = |flag, value: String, reason: &str| {
        Err(NetError::BadArgument {
            flag,
            value,
            reason: reason.into(),
        })
    };
    check_size(options.n, "")?;
    let behaviours = behaviours(options.n, &options.byzantine, options.allow_unsafe)?;
    if behaviours.iter().all(Option::is_some) {
        return bad(
            "--byzantine",
            format!("{} nodes", behaviours.len()),
            "clients talk to honest nodes only: leave at least one honest",
        );
    }
    if let Pacing::Open { rate } = options.pacing {
        if !(rate > 0.0 && rate <= 10_000_000.0) {
            return bad(
                "--rate",
                rate.to_string(),
                "requests per second: more than 0",
            );
        }
    }
    if !(1..=10_000).contains(&options.clients) {
        return bad("--clients", options.clients.to_string(), "1 to 10000");
    }
    if let Pacing::Closed { window } = options.pacing {
        if !(1..=100_000).contains(&window) {
            return bad("--window", window.to_string(), "1 to 100000");
        }
    }
    let max_request = bftd_protocol::Config::default().max_request_bytes;
    if !(1..=max_request).contains(&options.size) {
        return bad(
            "--size",
            options.size.to_string(),
            &format!("1 to {max_request} bytes (the nodes' max_request_bytes)"),
        );
    }
    // bftd's rules: at most 100,000, and no more than max_pending_requests.
    let max_batch = bftd_protocol::Config::default()
        .max_pending_requests
        .min(100_000);
    if let Some(batch) = options.batch.filter(|b| !(1..=max_batch).contains(b)) {
        return bad(
            "--batch",
            batch.to_string(),
            &format!("1 to {max_batch} requests per block"),
        );
    }
    if options.duration.is_zero() {
        return bad(
            "--duration",
            "0".into(),
            "measure for some time: 10s, 500ms",
        );
    }
    if !(1..=1000).contains(&options.runs) {
        return bad("--runs", options.runs.to_string(), "1 to 1000");
    }
    Ok(())
}

/// `bftnet bench`.
pub async fn bench(options: BenchOptions) -> Result<BenchReport, NetError> {
    validate(&options)?;
    let bftd = find_bftd()?;
    let bftnet = find_bftnet()?;
    let parameters = parameters_line(&options);
    eprintln!("bench: {parameters}");
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; for representative figures: cargo run --release -p bftnet -- bench ...");
    }
    let mut runs = Vec::with_capacity(options.runs);
    for run in 1..=options.runs {
        if options.runs > 1 {
            eprintln!("run {run}/{} ...", options.runs);
        }
        runs.push(run_once(&options, run, &bftd, &bftnet).await?);
    }
    let report = summarize(&options, &bftd, runs);
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report, &parameters));
    }
    let _ = std::io::stdout().flush();
    Ok(report)
}

/// One run's temporary testnet: its processes are stopped by PID, and the
/// directory deleted (unless kept), when it is dropped, whatever happened.
struct Ephemeral {
    layout: Layout,
    children: Vec<Child>,
    keep: bool,
}

impl Ephemeral {
    fn new(keep: bool) -> Ephemeral {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bftnet-bench-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Ephemeral {
            layout: Layout::new(&dir),
            children: Vec::new(),
            keep,
        }
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        // The PIDs are in the state file (start_node records each).
        stop_testnet(&self.layout);
        reap(std::mem::take(&mut self.children));
        if self.keep {
            eprintln!("kept {} (configs, logs/, data/)", self.layout.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.layout.dir);
        }
    }
}

/// Generates, starts, measures and stops one fresh cluster.
async fn run_once(
    options: &BenchOptions,
    run: usize,
    bftd: &Path,
    bftnet: &Path,
) -> Result<RunReport, NetError> {
    let mut cluster = Ephemeral::new(options.keep);
    let outcome = tokio::select! {
        outcome = start_and_measure(&mut cluster, options, run, bftd, bftnet) => outcome,
        _ = shutdown_signal() => Err(NetError::Interrupted),
    };
    drop(cluster);
    outcome
}

async fn start_and_measure(
    cluster: &mut Ephemeral,
    options: &BenchOptions,
    run: usize,
    bftd: &Path,
    bftnet: &Path,
) -> Result<RunReport, NetError> {
    let layout = cluster.layout.clone();
    let mut state = generate(
        &layout,
        options.n,
        options.request_mode,
        Network::Direct,
        bftd,
    )?;
    assign_behaviours(&mut state, &options.byzantine, options.allow_unsafe)?;
    state.max_batch_requests = options.batch;
    write_node_files(&layout, &state)?;
    state.save(&layout)?;
    let started = Instant::now();
    start_all(
        &layout,
        &mut state,
        bftnet,
        &mut cluster.children,
        HEALTHY_TIMEOUT,
    )
    .await?;
    eprintln!(
        "{} nodes healthy in {:.1} s ({})",
        state.n,
        started.elapsed().as_secs_f64(),
        layout.dir.display()
    );
    measure(&layout, &state, options, run).await
}

/// The client connections' nodes: `clients` of them, round-robin over the
/// honest nodes.
fn client_targets(state: &State, clients: usize) -> Vec<u16> {
    let honest: Vec<u16> = state
        .nodes
        .iter()
        .filter(|node| node.honest())
        .map(|node| node.id)
        .collect();
    honest.iter().copied().cycle().take(clients).collect()
}

/// CPU seconds so far of every node (by id) and of this process.
fn cpu_sample(state: &State) -> (Vec<Option<f64>>, Option<f64>) {
    let nodes = state
        .nodes
        .iter()
        .map(|node| node.pid.and_then(|pid| cpu_seconds(Some(pid))))
        .collect();
    (nodes, cpu_seconds(None))
}

fn difference(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some((after? - before?).max(0.0))
}

async fn measure(
    layout: &Layout,
    state: &State,
    options: &BenchOptions,
    run: usize,
) -> Result<RunReport, NetError> {
    let cluster = Cluster::load(&layout.cluster())?;
    let targets = client_targets(state, options.clients);
    let load_options = LoadOptions {
        rate: match options.pacing {
            Pacing::Open { rate } => rate,
            Pacing::Closed { .. } => 0.0,
        },
        closed_loop: match options.pacing {
            Pacing::Open { .. } => None,
            Pacing::Closed { window } => Some(window),
        },
        duration: Some(options.warmup + options.duration),
        warmup: options.warmup,
        size: options.size,
        clients_per_node: 1,
        max_in_flight: MAX_IN_FLIGHT,
        request_timeout: REQUEST_TIMEOUT,
        drain: DRAIN,
    };
    let running = load::start(&cluster, &targets, load_options)
        .await
        .map_err(|source| NetError::Client {
            id: targets.first().copied().unwrap_or(0),
            source,
        })?;
    let progress = Progress::new();
    let window_start = running.started() + options.warmup;
    progress
        .until(window_start, || warmup_line(&running, options))
        .await;
    let (nodes_before, self_before) = cpu_sample(state);
    let receipts_before = running.counters.receipts.load(Ordering::Relaxed);
    let opened = Instant::now();
    progress
        .until(window_start + options.duration, || {
            window_line(&running, options, opened, receipts_before)
        })
        .await;
    let (nodes_after, self_after) = cpu_sample(state);
    let committed = running
        .counters
        .receipts
        .load(Ordering::Relaxed)
        .saturating_sub(receipts_before);
    let window_s = opened.elapsed().as_secs_f64();
    progress.finish();
    eprintln!(
        "window closed: draining the last receipts (at most {} s) ...",
        DRAIN.as_secs()
    );
    let load = running.finish().await;
    let failures = Failures {
        rejected: load.rejected,
        timed_out: load.timed_out,
        disconnected: load.disconnected,
        invalid_receipts: load.invalid_receipts,
        skipped: load.skipped,
        unanswered: load.submitted.saturating_sub(
            load.committed
                + load.rejected
                + load.timed_out
                + load.disconnected
                + load.invalid_receipts,
        ),
    };
    if committed == 0 {
        let tails = state
            .nodes
            .iter()
            .map(|node| {
                format!(
                    "  node {}:\n{}",
                    node.id,
                    log_tail(&layout.node_log(node.id), 5)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        return Err(NetError::NothingCommitted {
            window_seconds: window_s,
            failures: failures.describe(),
            tails,
        });
    }
    let mut nodes = Vec::with_capacity(state.n);
    for (index, node) in state.nodes.iter().enumerate() {
        let status = node_status(node.metrics, Duration::from_secs(1)).await;
        let memory = |name| node.pid.and_then(|pid| memory_megabytes(pid, name));
        nodes.push(NodeFigures {
            id: node.id,
            pid: node.pid,
            behaviour: node.behaviour.clone().unwrap_or_else(|| "honest".into()),
            height: status.as_ref().map(|s| s.height),
            view: status.as_ref().map(|s| s.view),
            cpu_s: difference(
                nodes_before.get(index).copied().flatten(),
                nodes_after.get(index).copied().flatten(),
            ),
            peak_rss_mb: memory("VmHWM"),
            rss_mb: memory("VmRSS"),
        });
    }
    let cpu_s: f64 = nodes.iter().filter_map(|node| node.cpu_s).sum();
    let loadgen_cpu_s = difference(self_before, self_after).unwrap_or(0.0);
    let per_1000 = |seconds: f64| seconds * 1000.0 / committed as f64;
    let memory = |figure: fn(&NodeFigures) -> Option<f64>| {
        Memory::of(nodes.iter().map(|n| figure(n).unwrap_or(0.0)).collect())
    };
    Ok(RunReport {
        run,
        dir: layout.dir.display().to_string(),
        kept: options.keep,
        window_s,
        submitted: load.submitted,
        committed,
        throughput_tx_s: committed as f64 / window_s.max(1e-9),
        latency_ms: load.latency_ms,
        failures,
        cpu_s,
        cpu_s_per_1000_tx: per_1000(cpu_s),
        loadgen_cpu_s,
        loadgen_cpu_s_per_1000_tx: per_1000(loadgen_cpu_s),
        peak_rss_mb: memory(|n| n.peak_rss_mb),
        rss_end_mb: memory(|n| n.rss_mb),
        view_changes: nodes
            .iter()
            .filter(|node| node.behaviour == "honest")
            .filter_map(|node| node.view)
            .max()
            .unwrap_or(0),
        nodes,
    })
}

/// The progress line on stderr: rewritten in place every second on a
/// terminal, a new line every few seconds in a log.
struct Progress {
    terminal: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `line()` periodically until `deadline`.
    async fn until(&self, deadline: Instant, line: impl Fn() -> String) {
        let period = if self.terminal {
            PROGRESS_TERMINAL
        } else {
            PROGRESS_LOG
        };
        let mut next = Instant::now() + period;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep_until(next.min(deadline).into()).await;
            if Instant::now() >= next {
                if self.terminal {
                    eprint!("\r\x1b[K{}", line());
                } else {
                    eprintln!("{}", line());
                }
                next += period;
            }
        }
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

fn warmup_line(running: &Load, options: &BenchOptions) -> String {
    let receipts = running.counters.receipts.load(Ordering::Relaxed);
    format!(
        "warmup {:.1}/{:.0} s: {receipts} committed",
        running.started().elapsed().as_secs_f64(),
        options.warmup.as_secs_f64()
    )
}

fn window_line(running: &Load, options: &BenchOptions, opened: Instant, before: u64) -> String {
    let elapsed = opened.elapsed().as_secs_f64();
    let committed = running
        .counters
        .receipts
        .load(Ordering::Relaxed)
        .saturating_sub(before);
    let (p50, p99) = {
        let latencies = running
            .counters
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (latencies.quantile_ms(0.5), latencies.quantile_ms(0.99))
    };
    format!(
        "bench {elapsed:.1}/{:.0} s: {committed} committed ({:.0} tx/s), p50 {p50:.1} ms, p99 {p99:.1} ms, {} failed",
        options.duration.as_secs_f64(),
        committed as f64 / elapsed.max(0.001),
        running.failures()
    )
}

/// The medians and totals over runs.
fn summarize(options: &BenchOptions, bftd: &Path, runs: Vec<RunReport>) -> BenchReport {
    let median_of =
        |figure: fn(&RunReport) -> f64| median(&runs.iter().map(figure).collect::<Vec<_>>());
    let mut failures = Failures::default();
    for run in &runs {
        failures.add(&run.failures);
    }
    let mut peak = vec![0.0f64; options.n];
    for run in &runs {
        for (slot, value) in peak.iter_mut().zip(&run.peak_rss_mb.nodes) {
            *slot = slot.max(*value);
        }
    }
    BenchReport {
        n: options.n,
        clients: options.clients,
        size: options.size,
        rate: match options.pacing {
            Pacing::Open { rate } => Some(rate),
            Pacing::Closed { .. } => None,
        },
        closed_loop: matches!(options.pacing, Pacing::Closed { .. }),
        window: match options.pacing {
            Pacing::Open { .. } => None,
            Pacing::Closed { window } => Some(window),
        },
        batch: options.batch,
        signed_requests: options.request_mode == RequestMode::ClientSigned,
        byzantine: options
            .byzantine
            .iter()
            .map(|arg| format!("{}={}", arg.id, arg.behaviour))
            .collect(),
        duration_s: options.duration.as_secs_f64(),
        warmup_s: options.warmup.as_secs_f64(),
        runs: runs.len(),
        profile: profile(),
        bftd: bftd.display().to_string(),
        throughput_tx_s: median_of(|r| r.throughput_tx_s),
        latency_ms: Percentiles {
            p50: median_of(|r| r.latency_ms.p50),
            p90: median_of(|r| r.latency_ms.p90),
            p99: median_of(|r| r.latency_ms.p99),
            max: median_of(|r| r.latency_ms.max),
        },
        cpu_s_per_1000_tx: median_of(|r| r.cpu_s_per_1000_tx),
        loadgen_cpu_s_per_1000_tx: median_of(|r| r.loadgen_cpu_s_per_1000_tx),
        peak_rss_mb: Memory::of(peak),
        committed: runs.iter().map(|r| r.committed).sum(),
        failures,
        view_changes: runs.iter().map(|r| r.view_changes).sum(),
        runs_detail: runs,
    }
}

/// What was measured, in one line.
fn parameters_line(options: &BenchOptions) -> String {
    let pacing = match options.pacing {
        Pacing::Open { rate } => format!("open loop at {rate} tx/s"),
        Pacing::Closed { window } => format!("closed loop, {window} outstanding per client"),
    };
    let batch = options.batch.map_or_else(
        || {
            format!(
                "default ({})",
                bftd_protocol::Config::default().max_batch_requests
            )
        },
        |b| b.to_string(),
    );
    let mode = match options.request_mode {
        RequestMode::ClientSigned => "client-signed",
        RequestMode::ConnectionAuthenticated => "connection-authenticated",
    };
    let byzantine = if options.byzantine.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = options
            .byzantine
            .iter()
            .map(|arg| format!("{}={}", arg.id, arg.behaviour))
            .collect();
        format!(", byzantine {}", list.join(" "))
    };
    format!(
        "n {}, {} client{}, {} B payloads, {pacing}, batch {batch}, {mode} requests{byzantine}, \
         {:.1} s measured after {:.1} s warm-up, {} build, {} run{}",
        options.n,
        options.clients,
        if options.clients == 1 { "" } else { "s" },
        options.size,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        profile(),
        options.runs,
        if options.runs == 1 { "" } else { "s" },
    )
}

/// The table for people.
fn render(report: &BenchReport, parameters: &str) -> String {
    let runs = &report.runs_detail;
    let several = runs.len() > 1;
    let mut header = vec![String::new()];
    header.extend(runs.iter().map(|r| format!("run {}", r.run)));
    if several {
        header.push("median".into());
    }
    type Row = (&'static str, fn(&RunReport) -> String, Option<String>);
    let rows: Vec<Row> = vec![
        (
            "throughput (tx/s)",
            |r| format!("{:.0}", r.throughput_tx_s),
            Some(format!("{:.0}", report.throughput_tx_s)),
        ),
        (
            "latency p50 (ms)",
            |r| format!("{:.2}", r.latency_ms.p50),
            Some(format!("{:.2}", report.latency_ms.p50)),
        ),
        (
            "latency p90 (ms)",
            |r| format!("{:.2}", r.latency_ms.p90),
            Some(format!("{:.2}", report.latency_ms.p90)),
        ),
        (
            "latency p99 (ms)",
            |r| format!("{:.2}", r.latency_ms.p99),
            Some(format!("{:.2}", report.latency_ms.p99)),
        ),
        (
            "latency max (ms)",
            |r| format!("{:.2}", r.latency_ms.max),
            Some(format!("{:.2}", report.latency_ms.max)),
        ),
        ("committed", |r| r.committed.to_string(), None),
        (
            "failed",
            |r| {
                let f = &r.failures;
                (f.rejected + f.timed_out + f.disconnected + f.invalid_receipts).to_string()
            },
            None,
        ),
        (
            "not sent / unanswered",
            |r| format!("{} / {}", r.failures.skipped, r.failures.unanswered),
            None,
        ),
        (
            "bftd CPU s per 1000 tx",
            |r| format!("{:.3}", r.cpu_s_per_1000_tx),
            Some(format!("{:.3}", report.cpu_s_per_1000_tx)),
        ),
        (
            "loadgen CPU s per 1000 tx",
            |r| format!("{:.3}", r.loadgen_cpu_s_per_1000_tx),
            Some(format!("{:.3}", report.loadgen_cpu_s_per_1000_tx)),
        ),
        (
            "peak RSS, largest node (MB)",
            |r| format!("{:.1}", r.peak_rss_mb.max),
            Some(format!("{:.1}", report.peak_rss_mb.max)),
        ),
        ("highest view", |r| r.view_changes.to_string(), None),
    ];
    let mut table = vec![header];
    for (name, figure, median) in rows {
        let mut line = vec![name.to_owned()];
        line.extend(runs.iter().map(figure));
        if several {
            line.push(median.unwrap_or_default());
        }
        table.push(line);
    }
    let mut out = format!("bftnet bench: {parameters}\n\n{}", align(&table));
    for run in runs {
        out.push_str(&format!(
            "\nrun {}: {:.0} committed in {:.2} s; failures: {}; {}\n",
            run.run,
            run.committed,
            run.window_s,
            run.failures.describe(),
            if run.view_changes == 0 {
                "no view change".to_owned()
            } else {
                format!("view changes happened (highest view {})", run.view_changes)
            }
        ));
        let mut nodes = vec![vec![
            "node".to_owned(),
            "behaviour".into(),
            "height".into(),
            "view".into(),
            "CPU s".into(),
            "peak RSS MB".into(),
            "end RSS MB".into(),
        ]];
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        for node in &run.nodes {
            nodes.push(vec![
                node.id.to_string(),
                node.behaviour.clone(),
                or_dash(node.height.map(|h| h.to_string())),
                or_dash(node.view.map(|v| v.to_string())),
                or_dash(node.cpu_s.map(|c| format!("{c:.2}"))),
                or_dash(node.peak_rss_mb.map(|m| format!("{m:.1}"))),
                or_dash(node.rss_mb.map(|m| format!("{m:.1}"))),
            ]);
        }
        out.push_str(&align(&nodes));
    }
    out.push_str(
        "\nThe load generator runs on this machine too: its CPU (above) competes with the nodes'.\n",
    );
    out
}

/// Columns padded to their widest cell; the first left-aligned, the
/// others right-aligned.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if column == 0 {
                line.push_str(&format!("{cell:<width$}"));
            } else {
                line.push_str(&format!("  {cell:>width$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU ticks are read after the last `)`, so a command name holding
    /// spaces and parentheses cannot shift the fields.
    #[test]
    fn proc_stat_with_a_hostile_command_name() {
        let stat = "4242 (bftd (node) 1) S 1 4242 4242 0 -1 4194560 1510 0 0 0 \
                    250 75 0 0 20 0 6 0 123456 1234567 890 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17990 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        let plain = "1 (bftd) R 0 1 1 0 -1 0 0 0 0 0 7 3 0 0";
        assert_eq!(stat_cpu_ticks(plain), Some(10));
        assert_eq!(stat_cpu_ticks("1 (bftd) R 0 1"), None);
        assert_eq!(stat_cpu_ticks("no parentheses here"), None);
    }

    /// Memory lines are read by exact name, in kB, as megabytes.
    #[test]
    fn proc_status_memory() {
        let status =
            "Name:\tbftd\nVmPeak:\t  999999 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_megabytes(status, "VmHWM"), Some(50.0));
        assert_eq!(status_megabytes(status, "VmRSS"), Some(40.0));
        assert_eq!(status_megabytes(status, "VmSwap"), None);
        assert_eq!(status_megabytes("VmHWM:\tlots", "VmHWM"), None);
    }

    /// The median is the middle value, or the mean of the middle two; it
    /// ignores order and non-finite values.
    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0, f64::NAN, 1.0, 3.0]), 3.0);
    }

    /// Clients go round-robin over the honest nodes only.
    #[test]
    fn clients_spread_over_honest_nodes() {
        let dir = std::env::temp_dir().join(format!("bftnet-bench-targets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = Layout::new(&dir);
        let mut state = generate(
            &layout,
            4,
            RequestMode::ConnectionAuthenticated,
            Network::Direct,
            Path::new("bftd"),
        )
        .unwrap();
        assign_behaviours(&mut state, &["1=silent".parse().unwrap()], false).unwrap();
        assert_eq!(client_targets(&state, 5), vec![0, 2, 3, 0, 2]);
        assert_eq!(client_targets(&state, 1), vec![0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
