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
use super::load::{self, Load, LoadOptions};
use bftd::config::Cluster;
use bftd_protocol::RequestMode;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod catch_up;
mod crash;
mod over_time;
mod report;
pub use catch_up::CatchUp;
pub use crash::Recovery;
pub use over_time::{disk_use, growth, Point};
pub use report::{median, BenchReport, Failures, Memory, NodeFigures, RunReport};
use report::{parameters_line, render, summarize};

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
    /// SIGKILL the primary this far into the measurement window and time
    /// the recovery.
    pub kill_primary: Option<Duration>,
    /// Keep the last node down through the window, then restart it and
    /// time its catch-up.
    pub catch_up: bool,
    /// The nodes' `[storage] retain_blocks`; `None` keeps every block.
    pub retain_blocks: Option<u64>,
    /// Read the committed rate, each node's memory and its store's disk
    /// use this often through the window.
    pub sample_every: Option<Duration>,
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

/// The `write_bytes:` line of `/proc/PID/io`: bytes the process caused to
/// be written to storage so far (the page cache it dirtied, whenever the
/// kernel writes it back), so it counts what reached the disk, not what
/// was handed to `write(2)` and overwritten in the cache.
pub fn io_write_bytes(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// Bytes a live process has caused to be written to storage so far.
fn disk_written(pid: u32) -> Option<u64> {
    io_write_bytes(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

/// A memory figure of a live process, megabytes.
pub(super) fn memory_megabytes(pid: u32, name: &str) -> Option<f64> {
    status_megabytes(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        name,
    )
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
    let lifetime = bftd_protocol::ConsensusSettings::default().request_lifetime;
    if let Some(kept) = options.retain_blocks.filter(|&kept| kept <= lifetime) {
        return bad(
            "--retain-blocks",
            kept.to_string(),
            &format!(
                "must exceed the cluster's request_lifetime ({lifetime}), the heights at-most-once reads back"
            ),
        );
    }
    if let Some(every) = options.sample_every {
        if every < Duration::from_secs(1) || every > options.duration {
            return bad(
                "--sample-every",
                format!("{every:?}"),
                "at least 1s, and no longer than --duration",
            );
        }
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
    if options.catch_up {
        if options.n < 4 {
            return bad(
                "-n",
                options.n.to_string(),
                "--catch-up stops a node: it needs n >= 4, so that the others are a quorum",
            );
        }
        if !options.byzantine.is_empty() || options.kill_primary.is_some() {
            return bad(
                "--catch-up",
                "with --byzantine or --kill-primary".into(),
                "alone: one node down is the whole fault budget of n = 4",
            );
        }
    }
    if let Some(at) = options.kill_primary {
        if at >= options.duration {
            return bad(
                "--kill-primary",
                format!("{at:?}"),
                "must fall inside the measurement window (below --duration)",
            );
        }
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
pub(super) struct Ephemeral {
    pub(super) layout: Layout,
    pub(super) children: Vec<Child>,
    keep: bool,
}

impl Ephemeral {
    pub(super) fn new(keep: bool) -> Ephemeral {
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
    state.retain_blocks = options.retain_blocks;
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
    let mut report = measure(&layout, &state, options, run).await?;
    if let Some(stopped) = report.stopped.take() {
        report.catch_up = Some(
            catch_up::restart_and_watch(&layout, &mut state, &mut cluster.children, stopped)
                .await?,
        );
    }
    Ok(report)
}

/// The client connections' nodes: `clients` of them, round-robin over the
/// honest nodes.
fn client_targets(state: &State, clients: usize, catch_up: bool) -> Vec<u16> {
    let lagging = catch_up.then(|| catch_up::lagging_node(state));
    state
        .honest_ids()
        .into_iter()
        .filter(|&id| Some(id) != lagging)
        .cycle()
        .take(clients)
        .collect()
}

/// What the window's figures are differences of, read at each end.
struct Sample {
    /// CPU seconds so far of every node (by id).
    cpu: Vec<Option<f64>>,
    /// Bytes every node (by id) has written to storage so far.
    written: Vec<Option<u64>>,
    /// CPU seconds so far of this process (the load generator).
    own_cpu: Option<f64>,
}

fn sample(state: &State) -> Sample {
    Sample {
        cpu: state
            .nodes
            .iter()
            .map(|node| node.pid.and_then(|pid| cpu_seconds(Some(pid))))
            .collect(),
        written: state
            .nodes
            .iter()
            .map(|node| node.pid.and_then(disk_written))
            .collect(),
        own_cpu: cpu_seconds(None),
    }
}

fn difference(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some((after? - before?).max(0.0))
}

/// The load generator's options for `options`: one connection per entry
/// of the client targets, the warm-up left out of the figures.
fn load_options(options: &BenchOptions) -> LoadOptions {
    LoadOptions {
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
    }
}

async fn measure(
    layout: &Layout,
    state: &State,
    options: &BenchOptions,
    run: usize,
) -> Result<RunReport, NetError> {
    let cluster = Cluster::load(&layout.cluster())?;
    let targets = client_targets(state, options.clients, options.catch_up);
    let running = load::start(&cluster, &targets, load_options(options))
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
    let crash = options.kill_primary.map(|after| {
        tokio::spawn(crash::kill_primary_and_watch(
            state.clone(),
            window_start + after,
            window_start,
        ))
    });
    // --catch-up: the last node is down for the whole window (its CPU and
    // disk figures cover the window's start only).
    let stopped = match options.catch_up {
        true => Some(catch_up::stop(state).await?),
        false => None,
    };
    let before = sample(state);
    let receipts_before = running.counters.receipts.load(Ordering::Relaxed);
    let opened = Instant::now();
    let over_time = options.sample_every.map(|every| {
        tokio::spawn(over_time::sample(
            layout.clone(),
            state.clone(),
            running.counters.clone(),
            opened,
            every,
            opened + options.duration,
        ))
    });
    progress
        .until(window_start + options.duration, || {
            window_line(&running, options, opened, receipts_before)
        })
        .await;
    let after = sample(state);
    let over_time = match over_time {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
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
    let recovery = match crash {
        Some(task) => task.await.ok(),
        None => None,
    };
    let failures = Failures::of(&load);
    let nodes = node_figures(state, &before, &after).await;
    if committed == 0 {
        return Err(nothing_committed(layout, &nodes, window_s, &failures));
    }
    let cpu_s: f64 = nodes.iter().filter_map(|node| node.cpu_s).sum();
    let loadgen_cpu_s = difference(before.own_cpu, after.own_cpu).unwrap_or(0.0);
    let per_1000 = |seconds: f64| seconds * 1000.0 / committed as f64;
    let payload_bytes = committed as f64 * options.size as f64;
    let written: Vec<f64> = nodes
        .iter()
        .filter_map(|node| node.disk_mb_written)
        .collect();
    let disk_per_payload_byte = (!written.is_empty())
        .then(|| written.iter().sum::<f64>() * 1e6 / written.len() as f64 / payload_bytes);
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
        timed: load.committed,
        failures,
        cpu_s,
        cpu_s_per_1000_tx: per_1000(cpu_s),
        loadgen_cpu_s,
        loadgen_cpu_s_per_1000_tx: per_1000(loadgen_cpu_s),
        disk_per_payload_byte,
        peak_rss_mb: memory(|n| n.peak_rss_mb),
        rss_end_mb: memory(|n| n.rss_mb),
        view_changes: nodes
            .iter()
            .filter(|node| node.behaviour == "honest")
            .filter_map(|node| node.view)
            .max()
            .unwrap_or(0),
        nodes,
        recovery,
        stopped,
        catch_up: None,
        over_time,
    })
}

/// Every node after the drain: its `/status`, memory, and CPU and disk
/// writes over the window (from the samples taken at its ends).
async fn node_figures(state: &State, before: &Sample, after: &Sample) -> Vec<NodeFigures> {
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
                before.cpu.get(index).copied().flatten(),
                after.cpu.get(index).copied().flatten(),
            ),
            disk_mb_written: match (
                before.written.get(index).copied().flatten(),
                after.written.get(index).copied().flatten(),
            ) {
                (Some(from), Some(to)) => Some(to.saturating_sub(from) as f64 / 1e6),
                _ => None,
            },
            peak_rss_mb: memory("VmHWM"),
            rss_mb: memory("VmRSS"),
        });
    }
    nodes
}

/// The error for a window without a commit: where each node stands, and
/// the end of its log.
fn nothing_committed(
    layout: &Layout,
    nodes: &[NodeFigures],
    window_seconds: f64,
    failures: &Failures,
) -> NetError {
    let or_dash = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let tails = nodes
        .iter()
        .map(|node| {
            format!(
                "  node {} ({}, height {}, view {}):\n{}",
                node.id,
                node.behaviour,
                or_dash(node.height),
                or_dash(node.view),
                log_tail(&layout.node_log(node.id), 5)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    NetError::NothingCommitted {
        window_seconds,
        failures: failures.describe(),
        tails,
    }
}

/// The progress line on stderr: rewritten in place every second on a
/// terminal, a new line every few seconds in a log.
pub(super) struct Progress {
    terminal: bool,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `line()` periodically until `deadline`.
    pub(super) async fn until(&self, deadline: Instant, line: impl Fn() -> String) {
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

    pub(super) fn finish(&self) {
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

    /// Disk writes come from the `write_bytes` line, not `wchar` (what was
    /// handed to `write(2)`) nor `cancelled_write_bytes`.
    #[test]
    fn proc_io_write_bytes() {
        let io = "rchar: 10\nwchar: 999\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 1228800\ncancelled_write_bytes: 8192\n";
        assert_eq!(io_write_bytes(io), Some(1_228_800));
        assert_eq!(io_write_bytes("wchar: 5\n"), None);
        assert_eq!(io_write_bytes("write_bytes: lots\n"), None);
    }

    /// `--sample-every` must fall inside the window and be at least a
    /// second; `--retain-blocks` must exceed request_lifetime (refused
    /// before anything starts, as bftd would refuse the node file).
    #[test]
    fn sampling_period_is_checked() {
        let options = |every: u64| BenchOptions {
            n: 4,
            clients: 4,
            size: 512,
            pacing: Pacing::Open { rate: 1000.0 },
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            batch: None,
            request_mode: RequestMode::ConnectionAuthenticated,
            byzantine: Vec::new(),
            allow_unsafe: false,
            runs: 1,
            keep: false,
            json: false,
            kill_primary: None,
            catch_up: false,
            retain_blocks: Some(1100),
            sample_every: Some(Duration::from_millis(every)),
        };
        assert!(validate(&options(1000)).is_ok());
        assert!(validate(&options(10_000)).is_ok());
        for bad in [0, 500, 10_001] {
            let error = validate(&options(bad)).unwrap_err().to_string();
            assert!(error.contains("--sample-every"), "{error}");
        }
        let retaining = |kept| BenchOptions {
            retain_blocks: Some(kept),
            ..options(1000)
        };
        let lifetime = bftd_protocol::ConsensusSettings::default().request_lifetime;
        let error = validate(&retaining(lifetime)).unwrap_err().to_string();
        assert!(error.contains("--retain-blocks"), "{error}");
        assert!(validate(&retaining(lifetime + 1)).is_ok());
    }

    /// Clients go round-robin over the honest nodes only, and not to the
    /// node `--catch-up` keeps down.
    #[test]
    fn clients_spread_over_honest_nodes() {
        let (layout, mut state) = crate::net::layout::test_testnet(
            "bench-targets",
            RequestMode::ConnectionAuthenticated,
            Network::Direct,
        );
        let dir = layout.dir.clone();
        assign_behaviours(&mut state, &["1=silent".parse().unwrap()], false).unwrap();
        assert_eq!(client_targets(&state, 5, false), vec![0, 2, 3, 0, 2]);
        assert_eq!(client_targets(&state, 1, false), vec![0]);
        assert_eq!(client_targets(&state, 3, true), vec![0, 2, 0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
