//! Load: requests spread over several clients connected to the honest
//! nodes. A request its client's node leaves unanswered goes to every node
//! (the client library does that after its resend interval), so it still
//! commits if that node died or is cut off. A client whose node stays
//! silent reconnects in the background; its share goes to the others
//! meanwhile.
//!
//! - Open loop (the default): requests leave at a fixed rate whatever the
//!   cluster's answers (a slow cluster does not slow the offered load, so
//!   latency shows queueing honestly).
//! - Closed loop ([`LoadOptions::closed_loop`]): each client keeps a fixed
//!   number of requests outstanding and sends the next as soon as one is
//!   answered, so latency is the cluster's own, without queueing.
//!
//! A warm-up ([`LoadOptions::warmup`]) leaves the first requests out of the
//! figures: only requests sent after it are counted and timed.

use bftd::client::{Client, ClientError};
use bftd::config::Cluster;
use bftd_crypto::KeyPair;
use bftd_protocol::NodeId;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// How to load the cluster.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Requests per second offered.
    pub rate: f64,
    /// How long to offer them, warm-up included; `None` runs until
    /// stopped.
    pub duration: Option<Duration>,
    /// Requests sent this early are load, not measurement: left out of
    /// every figure but [`Counters::receipts`].
    pub warmup: Duration,
    /// Closed loop instead of `rate`: each client keeps this many requests
    /// outstanding (`max_in_flight` is then unused).
    pub closed_loop: Option<usize>,
    /// Payload size in bytes.
    pub size: usize,
    /// Client connections per target node.
    pub clients_per_node: usize,
    /// Requests waiting for receipts at most; beyond, new ones are skipped
    /// (and counted) rather than queued without bound.
    pub max_in_flight: usize,
    /// How long a request may wait for its receipt.
    pub request_timeout: Duration,
    /// After the offering stops, how long to wait for the last receipts.
    pub drain: Duration,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            rate: 100.0,
            duration: Some(Duration::from_secs(10)),
            warmup: Duration::ZERO,
            closed_loop: None,
            size: 128,
            clients_per_node: 2,
            max_in_flight: 20_000,
            request_timeout: Duration::from_secs(15),
            drain: Duration::from_secs(15),
        }
    }
}

/// Latencies with ~1% relative precision in constant memory.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_micros: u64,
}

/// Bucket growth factor.
const GROWTH: f64 = 1.01;

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = latency.as_micros().max(1) as u64;
        let index = ((micros as f64).ln() / GROWTH.ln()) as usize;
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, 0);
        }
        if let Some(bucket) = self.buckets.get_mut(index) {
            *bucket += 1;
        }
        self.count += 1;
        self.max_micros = self.max_micros.max(micros);
    }

    /// Observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket;
            if seen >= rank {
                let micros = GROWTH.powf(index as f64 + 0.5);
                return (micros.min(self.max_micros as f64)) / 1000.0;
            }
        }
        self.max_ms()
    }

    /// The largest, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max_micros as f64 / 1000.0
    }

    /// What was recorded since `earlier`, a copy of this histogram taken
    /// before: the latencies of one window of a running load (`bftnet
    /// scenario`'s `p99_below`). Its maximum is the bucket bound of the
    /// largest latency in the window (the exact one is not kept).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(index, &count)| {
                count.saturating_sub(earlier.buckets.get(index).copied().unwrap_or(0))
            })
            .collect();
        let max_micros = buckets
            .iter()
            .rposition(|&count| count > 0)
            .map_or(0, |index| {
                (GROWTH.powf(index as f64 + 1.0) as u64).min(self.max_micros)
            });
        Histogram {
            count: buckets.iter().sum(),
            buckets,
            max_micros,
        }
    }
}

/// What happened to the requests sent after the warm-up, live.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every verified receipt as it arrives, warm-up included: the
    /// throughput over any interval is the difference of two readings.
    pub receipts: AtomicU64,
    /// Sent.
    pub submitted: AtomicU64,
    /// Committed with a verified receipt.
    pub committed: AtomicU64,
    /// Refused by the node ("busy", ...).
    pub rejected: AtomicU64,
    /// No receipt in time.
    pub timed_out: AtomicU64,
    /// The connection failed.
    pub disconnected: AtomicU64,
    /// Receipts that did not verify (a lying node).
    pub invalid: AtomicU64,
    /// Not sent: too many in flight, or no connected client.
    pub skipped: AtomicU64,
    /// Latencies of committed requests.
    pub latencies: Mutex<Histogram>,
}

impl Counters {
    /// A copy of the latencies so far (a poisoned lock still holds them):
    /// the difference of two copies is one interval's latencies.
    pub fn latencies_now(&self) -> Histogram {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a request's outcome; `measured` says whether it was sent
    /// after the warm-up.
    fn record(&self, measured: bool, result: Result<Duration, ClientError>) {
        if result.is_ok() {
            self.receipts.fetch_add(1, Ordering::Relaxed);
        }
        if !measured {
            return;
        }
        let counter = match result {
            Ok(latency) => {
                self.latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(latency);
                &self.committed
            }
            Err(ClientError::Rejected(_)) => &self.rejected,
            Err(ClientError::Timeout(_)) | Err(ClientError::NoReceipt(_)) => &self.timed_out,
            Err(ClientError::InvalidReceipt(_)) | Err(ClientError::InvalidBlock(_)) => {
                &self.invalid
            }
            Err(_) => &self.disconnected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests that failed (refused, timed out, disconnected, invalid).
    pub fn failed(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
            + self.timed_out.load(Ordering::Relaxed)
            + self.disconnected.load(Ordering::Relaxed)
            + self.invalid.load(Ordering::Relaxed)
    }
}

/// The outcome of a load run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// Rate asked for, per second (0 in closed loop).
    pub offered_rate: f64,
    /// Seconds spent offering.
    pub offered_seconds: f64,
    /// Seconds until the last receipt (or the drain gave up).
    pub elapsed_seconds: f64,
    /// Requests sent.
    pub submitted: u64,
    /// Requests committed (verified receipts).
    pub committed: u64,
    /// Committed per second of `elapsed_seconds`.
    pub achieved_rate: f64,
    /// Refused by a node.
    pub rejected: u64,
    /// No receipt in time.
    pub timed_out: u64,
    /// Connection failures.
    pub disconnected: u64,
    /// Receipts that did not verify.
    pub invalid_receipts: u64,
    /// Not sent (too many in flight or no node reachable).
    pub skipped: u64,
    /// Latency percentiles of committed requests, milliseconds.
    pub latency_ms: Percentiles,
    /// Nodes loaded.
    pub nodes: Vec<u16>,
}

/// Latency percentiles, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl LoadReport {
    /// The closing lines for people.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        format!(
            "offered {:.0} tx/s for {:.1} s: {} submitted, {} committed, achieved {:.1} tx/s\n\
             latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
             failures: {} refused (busy), {} timed out, {} connection errors, {} invalid receipts; {} not sent (too many in flight / no node)",
            self.offered_rate, self.offered_seconds, self.submitted, self.committed, self.achieved_rate,
            l.p50, l.p90, l.p99, l.max,
            self.rejected, self.timed_out, self.disconnected, self.invalid_receipts, self.skipped
        )
    }
}

/// A client whose node does not answer a status query this fast, and has
/// sent nothing else for [`PROBE_SILENCE`], is taken for dead (a SIGKILLed
/// node sends no close; QUIC would only notice after its idle timeout) and
/// replaced.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// ... and has not sent anything else for this long either: an overloaded
/// node answers status late but still sends receipts, and must not be
/// taken for dead. Receipts from the other nodes, for requests that went
/// everywhere, do not count: they say nothing of this node.
const PROBE_SILENCE: Duration = Duration::from_secs(5);
/// How often each connection is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// One client connection slot; `None` while reconnecting. Requests in
/// flight on a client that is given up carry on: its library sends them to
/// the other nodes.
struct Slot {
    node: NodeId,
    client: RwLock<Option<Arc<Client>>>,
    reconnecting: std::sync::atomic::AtomicBool,
}

impl Slot {
    /// The client, unless it is reconnecting.
    fn connected(&self) -> Option<Arc<Client>> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running load: the counters update live; [`Load::finish`] waits for the
/// end and reports.
#[derive(Debug)]
pub struct Load {
    /// Live counters.
    pub counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<LoadReport>,
    started: Instant,
}

impl Load {
    /// Stops offering load now (for runs without a duration).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the run to end and returns its report.
    pub async fn finish(self) -> LoadReport {
        match self.task.await {
            Ok(report) => report,
            Err(_) => report(&Counters::default(), 0.0, 0.0, 0.0, Vec::new()),
        }
    }

    /// Requests that failed so far.
    pub fn failures(&self) -> u64 {
        self.counters.failed()
    }
}

/// Connects the clients and starts offering load to `targets`. Fails if no
/// target accepts a connection.
pub async fn start(
    cluster: &Cluster,
    targets: &[u16],
    options: LoadOptions,
) -> Result<Load, ClientError> {
    let mut slots = Vec::new();
    let mut first_error = None;
    for &id in targets {
        for _ in 0..options.clients_per_node.max(1) {
            let key = KeyPair::generate(&mut rand::rngs::OsRng);
            let client = match Client::connect(cluster, NodeId(id), key).await {
                Ok(mut client) => {
                    client.set_timeout(options.request_timeout);
                    Some(Arc::new(client))
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                    None
                }
            };
            slots.push(Arc::new(Slot {
                node: NodeId(id),
                client: RwLock::new(client),
                reconnecting: false.into(),
            }));
        }
    }
    if slots
        .iter()
        .all(|slot| slot.client.read().map(|c| c.is_none()).unwrap_or(true))
    {
        return Err(first_error.unwrap_or(ClientError::Disconnected));
    }
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(offer(
        cluster.clone(),
        slots,
        options,
        counters.clone(),
        stopped,
        started,
        targets.to_vec(),
    ));
    Ok(Load {
        counters,
        stop,
        task,
        started,
    })
}

/// Reconnects a slot in the background, every half second until it works.
/// Only the connection `failed` is given up: a late failure of an older
/// connection leaves its replacement alone.
fn reconnect(cluster: Cluster, slot: Arc<Slot>, failed: &Arc<Client>, timeout: Duration) {
    {
        let mut current = slot.client.write().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some(client) if Arc::ptr_eq(client, failed) => *current = None,
            _ => return,
        }
    }
    if slot.reconnecting.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let key = KeyPair::generate(&mut rand::rngs::OsRng);
            if let Ok(mut client) = Client::connect(&cluster, slot.node, key).await {
                client.set_timeout(timeout);
                *slot.client.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(client));
                slot.reconnecting.store(false, Ordering::Release);
                return;
            }
        }
    });
}

async fn offer(
    cluster: Cluster,
    slots: Vec<Arc<Slot>>,
    options: LoadOptions,
    counters: Arc<Counters>,
    stopped: watch::Receiver<bool>,
    started: Instant,
    nodes: Vec<u16>,
) -> LoadReport {
    let probes: Vec<_> = slots
        .iter()
        .map(|slot| {
            tokio::spawn(probe(
                cluster.clone(),
                slot.clone(),
                options.request_timeout,
            ))
        })
        .collect();
    let offered_seconds = match options.closed_loop {
        None => offer_open(&cluster, &slots, &options, &counters, stopped, started).await,
        Some(window) => {
            offer_closed(
                &cluster, &slots, &options, window, &counters, stopped, started,
            )
            .await
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    for probe in probes {
        probe.abort();
    }
    let rate = if options.closed_loop.is_some() {
        0.0
    } else {
        options.rate
    };
    report(&counters, rate, offered_seconds, elapsed, nodes)
}

/// Whether the run is over: its duration has passed or it was stopped.
fn over(options: &LoadOptions, started: Instant, stopped: &watch::Receiver<bool>) -> bool {
    options
        .duration
        .is_some_and(|duration| started.elapsed() >= duration)
        || *stopped.borrow()
}

/// Offers `options.rate` requests per second until the run is over, then
/// waits up to `options.drain` for the last receipts. Returns the seconds
/// spent offering.
async fn offer_open(
    cluster: &Cluster,
    slots: &[Arc<Slot>],
    options: &LoadOptions,
    counters: &Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
    started: Instant,
) -> f64 {
    let in_flight = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let mut sent = 0u64;
    let mut next_slot = 0usize;
    let rate = options.rate.max(0.001);
    let tick = Duration::from_millis(2);
    while !over(options, started, &stopped) {
        let elapsed = started.elapsed();
        let measured = elapsed >= options.warmup;
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                if measured {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            // Round robin over connected clients.
            let mut chosen = None;
            for _ in 0..slots.len() {
                let slot = &slots[next_slot % slots.len()];
                next_slot = next_slot.wrapping_add(1);
                if let Some(client) = slot.connected() {
                    chosen = Some((slot.clone(), client));
                    break;
                }
            }
            let Some((slot, client)) = chosen else {
                if measured {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            if measured {
                counters.submitted.fetch_add(1, Ordering::Relaxed);
            }
            let payload = payload(sent, options.size);
            let counters = counters.clone();
            let cluster = cluster.clone();
            let timeout = options.request_timeout;
            tokio::spawn(async move {
                let result = send(&cluster, &slot, &client, payload, timeout).await;
                counters.record(measured, result);
                drop(permit);
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stopped.changed() => {}
        }
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    // Drain: wait for outstanding receipts.
    let all = options.max_in_flight.max(1) as u32;
    let _ = tokio::time::timeout(options.drain, in_flight.acquire_many(all)).await;
    offered_seconds
}

/// Keeps `window` requests outstanding on every client until the run is
/// over, then waits up to `options.drain` for the last answers. Returns the
/// seconds spent offering.
async fn offer_closed(
    cluster: &Cluster,
    slots: &[Arc<Slot>],
    options: &LoadOptions,
    window: usize,
    counters: &Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
    started: Instant,
) -> f64 {
    let numbers = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for slot in slots {
        for _ in 0..window.max(1) {
            workers.spawn(keep_one_outstanding(
                cluster.clone(),
                slot.clone(),
                options.clone(),
                counters.clone(),
                stopped.clone(),
                started,
                numbers.clone(),
            ));
        }
    }
    let until_over = async {
        while !over(options, started, &stopped) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stopped.changed() => {}
            }
        }
    };
    until_over.await;
    let offered_seconds = started.elapsed().as_secs_f64();
    // Drain: each worker finishes the request it has outstanding.
    let _ = tokio::time::timeout(options.drain, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    workers.abort_all();
    offered_seconds
}

/// One closed-loop worker: sends a request, waits for its answer, sends the
/// next, until the run is over.
async fn keep_one_outstanding(
    cluster: Cluster,
    slot: Arc<Slot>,
    options: LoadOptions,
    counters: Arc<Counters>,
    stopped: watch::Receiver<bool>,
    started: Instant,
    numbers: Arc<AtomicU64>,
) {
    while !over(&options, started, &stopped) {
        let Some(client) = slot.connected() else {
            // Reconnecting: the other clients carry on meanwhile.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let measured = started.elapsed() >= options.warmup;
        if measured {
            counters.submitted.fetch_add(1, Ordering::Relaxed);
        }
        let payload = payload(numbers.fetch_add(1, Ordering::Relaxed), options.size);
        let result = send(&cluster, &slot, &client, payload, options.request_timeout).await;
        let failed = result.is_err();
        counters.record(measured, result);
        if failed {
            // A busy node refuses at once: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Submits one request on `slot`'s `client` and returns its latency. A
/// connection that fails is given up and reconnected in the background.
async fn send(
    cluster: &Cluster,
    slot: &Arc<Slot>,
    client: &Arc<Client>,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Duration, ClientError> {
    let start = Instant::now();
    let result = client.submit(payload).await.map(|_| start.elapsed());
    if let Err(ClientError::Disconnected) | Err(ClientError::Transport(_)) = &result {
        reconnect(cluster.clone(), slot.clone(), client, timeout);
    }
    result
}

/// Probes a slot's connection with status queries; a connection that does
/// not answer in time is given up and reconnected.
async fn probe(cluster: Cluster, slot: Arc<Slot>, timeout: Duration) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let client = slot
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(client) = client else { continue };
        let answered = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, client.status()).await,
            Ok(Ok(_))
        );
        if !answered && client.silent_for() >= PROBE_SILENCE {
            reconnect(cluster.clone(), slot.clone(), &client, timeout);
        }
    }
}

/// A payload of `size` bytes, unique per request number.
fn payload(number: u64, size: usize) -> Vec<u8> {
    let mut bytes = format!("bftnet-load-{number:012}-").into_bytes();
    bytes.resize(size.max(1), b'.');
    bytes.truncate(size.max(1));
    bytes
}

fn report(
    counters: &Counters,
    rate: f64,
    offered_seconds: f64,
    elapsed: f64,
    nodes: Vec<u16>,
) -> LoadReport {
    let histogram = counters.latencies.lock().unwrap_or_else(|e| e.into_inner());
    let committed = counters.committed.load(Ordering::Relaxed);
    LoadReport {
        offered_rate: rate,
        offered_seconds,
        elapsed_seconds: elapsed,
        submitted: counters.submitted.load(Ordering::Relaxed),
        committed,
        achieved_rate: if elapsed > 0.0 {
            committed as f64 / elapsed
        } else {
            0.0
        },
        rejected: counters.rejected.load(Ordering::Relaxed),
        timed_out: counters.timed_out.load(Ordering::Relaxed),
        disconnected: counters.disconnected.load(Ordering::Relaxed),
        invalid_receipts: counters.invalid.load(Ordering::Relaxed),
        skipped: counters.skipped.load(Ordering::Relaxed),
        latency_ms: Percentiles {
            p50: histogram.quantile_ms(0.5),
            p90: histogram.quantile_ms(0.9),
            p99: histogram.quantile_ms(0.99),
            max: histogram.max_ms(),
        },
        nodes,
    }
}

/// A progress line from the live counters.
pub fn progress_line(load: &Load, options: &LoadOptions) -> String {
    let c = &load.counters;
    let elapsed = load.started.elapsed().as_secs_f64();
    let committed = c.committed.load(Ordering::Relaxed);
    let submitted = c.submitted.load(Ordering::Relaxed);
    let (p50, p99) = {
        let h = c.latencies.lock().unwrap_or_else(|e| e.into_inner());
        (h.quantile_ms(0.5), h.quantile_ms(0.99))
    };
    let total = options
        .duration
        .map(|d| format!("/{:.0}", d.as_secs_f64()))
        .unwrap_or_default();
    format!(
        "load {elapsed:.1}{total} s: {submitted} sent, {committed} committed ({:.0} tx/s), {} in flight, {} failed, p50 {p50:.1} ms, p99 {p99:.1} ms",
        committed as f64 / elapsed.max(0.001),
        submitted.saturating_sub(committed + c.failed()),
        c.failed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles come within the histogram's precision of the truth.
    #[test]
    fn percentiles() {
        let mut histogram = Histogram::default();
        for ms in 1..=1000u64 {
            histogram.record(Duration::from_millis(ms));
        }
        let near = |got: f64, want: f64| (got - want).abs() / want < 0.02;
        assert!(
            near(histogram.quantile_ms(0.5), 500.0),
            "{}",
            histogram.quantile_ms(0.5)
        );
        assert!(
            near(histogram.quantile_ms(0.99), 990.0),
            "{}",
            histogram.quantile_ms(0.99)
        );
        assert_eq!(histogram.max_ms(), 1000.0);
        assert_eq!(Histogram::default().quantile_ms(0.5), 0.0);
        assert_eq!(payload(7, 40).len(), 40);
        assert_eq!(payload(7, 3).len(), 3);
    }
}
