//! What `bftnet bench` reports: one run's figures, the medians over runs,
//! and the table for people.

use super::{BenchOptions, Pacing};
use crate::net::load::{LoadReport, Percentiles};
use bftd_protocol::RequestMode;
use serde::Serialize;
use std::path::Path;

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
    /// The failures of a load run (sent in its measured part).
    pub(super) fn of(load: &LoadReport) -> Failures {
        let answered = load.committed
            + load.rejected
            + load.timed_out
            + load.disconnected
            + load.invalid_receipts;
        Failures {
            rejected: load.rejected,
            timed_out: load.timed_out,
            disconnected: load.disconnected,
            invalid_receipts: load.invalid_receipts,
            skipped: load.skipped,
            unanswered: load.submitted.saturating_sub(answered),
        }
    }

    fn add(&mut self, other: &Failures) {
        self.rejected += other.rejected;
        self.timed_out += other.timed_out;
        self.disconnected += other.disconnected;
        self.invalid_receipts += other.invalid_receipts;
        self.skipped += other.skipped;
        self.unanswered += other.unanswered;
    }

    pub(super) fn describe(&self) -> String {
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
    pub(super) fn of(nodes: Vec<f64>) -> Memory {
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
    /// Megabytes written to storage over the window (`/proc/PID/io`
    /// `write_bytes`; null where the kernel does not count it).
    pub disk_mb_written: Option<f64>,
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
    /// Latency of requests sent in the window, milliseconds (zeros when
    /// none committed: see `timed`).
    pub latency_ms: Percentiles,
    /// Requests sent in the window that committed: the latency samples.
    pub timed: u64,
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
    /// Bytes a node wrote to storage per byte of committed payload (the
    /// mean over nodes; requests' `--size` bytes, not their signatures or
    /// framing): what the log costs the disk. Null where the kernel does
    /// not count writes per process.
    pub disk_per_payload_byte: Option<f64>,
    /// Peak resident memory.
    pub peak_rss_mb: Memory,
    /// Resident memory after the drain.
    pub rss_end_mb: Memory,
    /// The highest view an honest node reached (views start at 0).
    pub view_changes: u64,
    /// Every node.
    pub nodes: Vec<NodeFigures>,
    /// With `--kill-primary`: the crash and the recovery.
    pub recovery: Option<super::Recovery>,
    /// With `--catch-up`: the node stopped and its height then, until it
    /// is restarted.
    #[serde(skip)]
    pub stopped: Option<(u16, u64)>,
    /// With `--catch-up`: how the stopped node caught up.
    pub catch_up: Option<super::CatchUp>,
    /// With `--sample-every`: the readings through the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub over_time: Vec<super::Point>,
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
    /// The nodes' `retain_blocks`; null: every block kept.
    pub retain_blocks: Option<u64>,
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
    /// Median over runs of the bytes a node wrote per committed payload
    /// byte (null if no run could count them).
    pub disk_per_payload_byte: Option<f64>,
    /// Peak resident memory, the largest over runs.
    pub peak_rss_mb: Memory,
    /// Committed in all windows.
    pub committed: u64,
    /// Failures in all windows.
    pub failures: Failures,
    /// View changes over all runs.
    pub view_changes: u64,
    /// With `--kill-primary`: the median over runs of the seconds from the
    /// kill to the first commit in the new view (null if a run had none).
    pub recovery_s: Option<f64>,
    /// With `--catch-up`: the median over runs of the transactions per
    /// second the restarted node caught up at (null if a run's never did).
    pub catch_up_tx_per_s: Option<f64>,
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

/// "release" or "debug": how this bftnet was built.
pub(super) fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The medians and totals over runs.
pub(super) fn summarize(options: &BenchOptions, bftd: &Path, runs: Vec<RunReport>) -> BenchReport {
    let median_of =
        |figure: fn(&RunReport) -> f64| median(&runs.iter().map(figure).collect::<Vec<_>>());
    // A figure some runs may lack: the median if every run has it.
    let median_of_all = |figure: fn(&RunReport) -> Option<f64>| {
        runs.iter()
            .map(figure)
            .collect::<Option<Vec<f64>>>()
            .filter(|all| !all.is_empty())
            .map(|all| median(&all))
    };
    // Runs in which no request sent in the window committed have no latency.
    let latency_median = |figure: fn(&RunReport) -> f64| {
        let timed: Vec<f64> = runs.iter().filter(|r| r.timed > 0).map(figure).collect();
        median(&timed)
    };
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
        retain_blocks: options.retain_blocks,
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
            p50: latency_median(|r| r.latency_ms.p50),
            p90: latency_median(|r| r.latency_ms.p90),
            p99: latency_median(|r| r.latency_ms.p99),
            max: latency_median(|r| r.latency_ms.max),
        },
        cpu_s_per_1000_tx: median_of(|r| r.cpu_s_per_1000_tx),
        loadgen_cpu_s_per_1000_tx: median_of(|r| r.loadgen_cpu_s_per_1000_tx),
        disk_per_payload_byte: median_of_all(|r| r.disk_per_payload_byte),
        peak_rss_mb: Memory::of(peak),
        committed: runs.iter().map(|r| r.committed).sum(),
        failures,
        view_changes: runs.iter().map(|r| r.view_changes).sum(),
        recovery_s: median_of_all(|r| r.recovery.as_ref().and_then(|c| c.first_commit_s)),
        catch_up_tx_per_s: median_of_all(|r| r.catch_up.as_ref().and_then(|c| c.tx_per_s)),
        runs_detail: runs,
    }
}

/// What was measured, in one line.
pub(super) fn parameters_line(options: &BenchOptions) -> String {
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
    let byzantine = if options.catch_up {
        format!(
            "{byzantine}, node {} down through the window (--catch-up)",
            options.n - 1
        )
    } else {
        byzantine
    };
    let extras = match options.retain_blocks {
        Some(kept) => format!("{byzantine}, retain_blocks {kept}"),
        None => byzantine,
    };
    format!(
        "n {}, {} client{}, {} B payloads, {pacing}, batch {batch}, {mode} requests{extras}, \
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

/// Seconds with two decimals, or "never".
fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "never".into(), |s| format!("{s:.2}"))
}

/// The table for people.
pub(super) fn render(report: &BenchReport, parameters: &str) -> String {
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
            |r| latency_cell(r, r.latency_ms.p50),
            Some(format!("{:.2}", report.latency_ms.p50)),
        ),
        (
            "latency p90 (ms)",
            |r| latency_cell(r, r.latency_ms.p90),
            Some(format!("{:.2}", report.latency_ms.p90)),
        ),
        (
            "latency p99 (ms)",
            |r| latency_cell(r, r.latency_ms.p99),
            Some(format!("{:.2}", report.latency_ms.p99)),
        ),
        (
            "latency max (ms)",
            |r| latency_cell(r, r.latency_ms.max),
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
            "disk bytes written per payload byte",
            |r| {
                r.disk_per_payload_byte
                    .map_or_else(|| "-".into(), |d| format!("{d:.2}"))
            },
            report.disk_per_payload_byte.map(|d| format!("{d:.2}")),
        ),
        (
            "peak RSS, largest node (MB)",
            |r| format!("{:.1}", r.peak_rss_mb.max),
            Some(format!("{:.1}", report.peak_rss_mb.max)),
        ),
        ("highest view", |r| r.view_changes.to_string(), None),
    ];
    let mut rows = rows;
    if runs.iter().any(|r| r.recovery.is_some()) {
        rows.push((
            "primary killed: new view / first commit (s)",
            |r| match &r.recovery {
                Some(c) => format!("{} / {}", seconds(c.new_view_s), seconds(c.first_commit_s)),
                None => "-".into(),
            },
            report.recovery_s.map(|s| format!("- / {s:.2}")),
        ));
    }
    if runs.iter().any(|r| r.catch_up.is_some()) {
        rows.push((
            "catch-up: tx behind / serving, caught up (s)",
            |r| match &r.catch_up {
                Some(c) => format!(
                    "{}{} / {}, {}",
                    c.behind_tx,
                    if c.jumps > 0 { " after a jump" } else { "" },
                    seconds(c.serving_s),
                    seconds(c.caught_up_s)
                ),
                None => "-".into(),
            },
            None,
        ));
        rows.push((
            "catch-up (tx/s)",
            |r| match r.catch_up.as_ref().and_then(|c| c.tx_per_s) {
                Some(rate) => format!("{rate:.0}"),
                None => "-".into(),
            },
            report.catch_up_tx_per_s.map(|rate| format!("{rate:.0}")),
        ));
    }
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
            "\nrun {}: {} committed in {:.2} s; of the {} requests sent in it, {} committed (the latency samples); failures: {}; {}\n",
            run.run,
            run.committed,
            run.window_s,
            run.submitted,
            run.timed,
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
            "disk MB written".into(),
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
                or_dash(node.disk_mb_written.map(|m| format!("{m:.1}"))),
                or_dash(node.peak_rss_mb.map(|m| format!("{m:.1}"))),
                or_dash(node.rss_mb.map(|m| format!("{m:.1}"))),
            ]);
        }
        out.push_str(&align(&nodes));
        if !run.over_time.is_empty() {
            out.push_str(&format!("\nrun {} over the window:\n", run.run));
            out.push_str(&align(&super::over_time::table(&run.over_time)));
            if let Some((rss, store)) = super::growth(&run.over_time) {
                out.push_str(&format!(
                    "from the end of the first quarter to the end, the largest node's RSS grew {rss:+.1} MB and its store {store:+.1} MB\n"
                ));
            }
        }
    }
    out.push_str(
        "\nThe load generator runs on this machine too: its CPU (above) competes with the nodes'.\n",
    );
    out
}

/// A latency figure of a run, or "-" if none of its measured requests
/// committed.
fn latency_cell(run: &RunReport, milliseconds: f64) -> String {
    if run.timed == 0 {
        "-".into()
    } else {
        format!("{milliseconds:.2}")
    }
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
}
