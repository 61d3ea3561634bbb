//! `bftnet bench --sample-every D`: the cluster over a long window. Every
//! `D` it reads the committed rate since the last point, each node's
//! resident memory and the disk space its data directory takes, so a long
//! run shows whether memory and disk stay flat (with `--retain-blocks`)
//! or grow with the history (without).

use super::memory_megabytes;
use crate::net::layout::{Layout, State};
use crate::net::load::Counters;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One reading.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Seconds since the window opened.
    pub at_s: f64,
    /// Verified receipts per second since the previous point.
    pub tx_per_s: f64,
    /// Median latency of the receipts since the previous point, ms.
    pub p50_ms: f64,
    /// Their 99th percentile, ms: when in a long run the tail happens.
    pub p99_ms: f64,
    /// Each node's resident memory (VmRSS), megabytes; null if unreadable.
    pub rss_mb: Vec<Option<f64>>,
    /// Disk space each node's data directory takes (allocated blocks, not
    /// file lengths), megabytes; null if unreadable.
    pub store_mb: Vec<Option<f64>>,
}

/// Reads a point every `every` from `opened` until `until` (latencies of
/// the receipts that arrived in each interval), printing each
/// on stderr as it is taken (a long run shows its trend while it runs).
pub(super) async fn sample(
    layout: Layout,
    state: State,
    counters: Arc<Counters>,
    opened: Instant,
    every: Duration,
    until: Instant,
) -> Vec<Point> {
    let mut points = Vec::new();
    let mut previous = (opened, counters.receipts.load(Ordering::Relaxed));
    let mut previous_latencies = counters.latencies_now();
    let mut next = opened + every;
    while next <= until {
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        let receipts = counters.receipts.load(Ordering::Relaxed);
        let interval = now.duration_since(previous.0).as_secs_f64().max(1e-9);
        let now_latencies = counters.latencies_now();
        let recent = now_latencies.since(&previous_latencies);
        let point = Point {
            at_s: now.duration_since(opened).as_secs_f64(),
            tx_per_s: receipts.saturating_sub(previous.1) as f64 / interval,
            p50_ms: recent.quantile_ms(0.5),
            p99_ms: recent.quantile_ms(0.99),
            rss_mb: state
                .nodes
                .iter()
                .map(|node| node.pid.and_then(|pid| memory_megabytes(pid, "VmRSS")))
                .collect(),
            store_mb: state
                .nodes
                .iter()
                .map(|node| disk_use(&layout.data_dir(node.id)).map(|b| b as f64 / 1e6))
                .collect(),
        };
        eprintln!("{}", line(&point));
        points.push(point);
        previous = (now, receipts);
        previous_latencies = now_latencies;
        next += every;
    }
    points
}

/// Bytes of disk the files under `dir` take (their allocated blocks, so a
/// sparse or preallocated file counts what it really holds).
pub fn disk_use(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ok()? {
            let entry = entry.ok()?;
            let metadata = entry.metadata().ok()?;
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                // `blocks` counts 512-byte units whatever the file system's
                // block size (stat(2)).
                total = total.saturating_add(metadata.blocks().saturating_mul(512));
            }
        }
    }
    Some(total)
}

fn line(point: &Point) -> String {
    let most = |values: &[Option<f64>]| values.iter().flatten().copied().fold(0.0, f64::max);
    format!(
        "sample {:>6.0} s: {:.0} tx/s, p50 {:.1} ms, p99 {:.1} ms, RSS up to {:.1} MB, store up to {:.1} MB",
        point.at_s,
        point.tx_per_s,
        point.p50_ms,
        point.p99_ms,
        most(&point.rss_mb),
        most(&point.store_mb)
    )
}

/// The points as a table, one row per point, one RSS and one store column
/// per node.
pub(super) fn table(points: &[Point]) -> Vec<Vec<String>> {
    let nodes = points.first().map_or(0, |p| p.rss_mb.len());
    let mut header = vec![
        "at (s)".to_owned(),
        "tx/s".into(),
        "p50 ms".into(),
        "p99 ms".into(),
    ];
    header.extend((0..nodes).map(|id| format!("RSS {id} MB")));
    header.extend((0..nodes).map(|id| format!("store {id} MB")));
    let cell = |value: &Option<f64>| value.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    let mut rows = vec![header];
    for point in points {
        let mut row = vec![
            format!("{:.0}", point.at_s),
            format!("{:.0}", point.tx_per_s),
            format!("{:.1}", point.p50_ms),
            format!("{:.1}", point.p99_ms),
        ];
        row.extend(point.rss_mb.iter().map(cell));
        row.extend(point.store_mb.iter().map(cell));
        rows.push(row);
    }
    rows
}

/// How much the largest node's RSS and store grew from the end of the
/// window's first quarter to its end: near zero when they are flat. `None`
/// with fewer than four points (no first quarter to compare with).
pub fn growth(points: &[Point]) -> Option<(f64, f64)> {
    if points.len() < 4 {
        return None;
    }
    let most = |values: &[Option<f64>]| values.iter().flatten().copied().fold(0.0, f64::max);
    let early = &points[points.len() / 4 - 1];
    let last = points.last()?;
    Some((
        most(&last.rss_mb) - most(&early.rss_mb),
        most(&last.store_mb) - most(&early.store_mb),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_s: f64, rss: f64, store: f64) -> Point {
        Point {
            at_s,
            tx_per_s: 1.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            rss_mb: vec![Some(rss), None],
            store_mb: vec![Some(store / 2.0), Some(store)],
        }
    }

    /// Growth compares the largest node at the end of the first quarter
    /// with the largest at the end, and needs a first quarter.
    #[test]
    fn growth_is_from_the_first_quarter_to_the_end() {
        let points: Vec<Point> = (1..=8)
            .map(|i| point(i as f64, 100.0 + i as f64, 10.0 * i as f64))
            .collect();
        // The quarter ends at the second point (rss 102, store 20).
        assert_eq!(growth(&points), Some((6.0, 60.0)));
        assert_eq!(growth(&points[..3]), None);
    }

    /// Disk use counts allocated blocks of every file below the directory.
    #[test]
    fn disk_use_sums_the_files_below() {
        let dir = std::env::temp_dir().join(format!("bftnet-disk-use-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for (name, len) in [("a", 10_000), ("sub/b", 20_000)] {
            // Synced, so that a file system that allocates lazily has.
            let mut file = std::fs::File::create(dir.join(name)).unwrap();
            std::io::Write::write_all(&mut file, &vec![1u8; len]).unwrap();
            file.sync_all().unwrap();
        }
        let used = disk_use(&dir);
        let missing = disk_use(&dir.join("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
        let used = used.unwrap();
        assert!((30_000..=40_000).contains(&used), "{used}");
        assert_eq!(missing, None);
    }
}
