//! A deterministic simulator: whole clusters of real replicas on a virtual
//! clock, a seeded network that delays, drops, duplicates, reorders and
//! partitions (one-way too), crashes and restarts from storage, and byzantine
//! replicas — then checkers for agreement, validity, certificates and
//! liveness.
//!
//! Everything is driven by one seeded RNG and ordered collections, so a seed
//! replays exactly; the trace hash (over every event processed) proves it.
//! Modelled on TigerBeetle's VOPR.

mod check;
mod verifier;
mod world;

pub use check::Violation;

use bftd_protocol::byzantine::Behaviour;
use bftd_protocol::{Config, NodeId, RequestMode};
use serde::Serialize;
use std::time::Duration;

/// Which network and process faults a run injects before it heals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Drop messages (up to 10%).
    pub drop: bool,
    /// Duplicate messages.
    pub duplicate: bool,
    /// Long random delays, which reorder messages.
    pub reorder: bool,
    /// Partitions, two-way and one-way.
    pub partition: bool,
    /// Crash honest replicas and restart them from storage.
    pub crash: bool,
}

impl Faults {
    /// Every fault.
    pub const ALL: Faults = Faults {
        drop: true,
        duplicate: true,
        reorder: true,
        partition: true,
        crash: true,
    };

    /// No fault: a clean network.
    pub const NONE: Faults = Faults {
        drop: false,
        duplicate: false,
        reorder: false,
        partition: false,
        crash: false,
    };

    /// Parses `all`, `none`, or a comma list of `drop,duplicate,reorder,partition,crash`.
    pub fn parse(text: &str) -> Result<Faults, String> {
        match text.trim() {
            "all" => return Ok(Faults::ALL),
            "none" => return Ok(Faults::NONE),
            _ => {}
        }
        let mut faults = Faults::NONE;
        for name in text.split(',').map(str::trim) {
            match name {
                "drop" => faults.drop = true,
                "duplicate" => faults.duplicate = true,
                "reorder" => faults.reorder = true,
                "partition" => faults.partition = true,
                "crash" => faults.crash = true,
                other => {
                    return Err(format!(
                        "unknown fault `{other}`: use all, none, or a list of drop,duplicate,reorder,partition,crash"
                    ))
                }
            }
        }
        Ok(faults)
    }
}

/// Which replicas are byzantine, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ByzantineSpec {
    /// `count` replicas, chosen by the seed, all with `behaviour`.
    Random {
        /// How many.
        count: usize,
        /// What they do.
        behaviour: Behaviour,
    },
    /// Exactly these.
    Fixed(Vec<(NodeId, Behaviour)>),
}

/// Whether byzantine identities run as twins: two instances of honest code
/// with one key, on different sides of partitions (Bano et al., "Twins:
/// BFT Systems Made Robust", 2021). An equivocator that needs no code of its
/// own: each twin is consistent, together they are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Twins {
    /// Byzantine replicas run their behaviour.
    Never,
    /// Byzantine replicas are twins instead.
    Always,
    /// The seed decides (a quarter of the runs): what `random` does.
    Sometimes,
}

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `clients` clients submit `requests` requests valid for the whole run.
    Steady,
    /// Many clients; requests valid for half of a short lifetime (16
    /// heights), so they expire in long faults and their clients re-sign
    /// them; executed requests leave the replicas' memory and expiry alone
    /// must refuse them; and a replayer re-submits executed requests all
    /// run long.
    Crowd,
}

impl Workload {
    /// Parses `steady` or `crowd`.
    pub fn parse(text: &str) -> Result<Workload, String> {
        match text.trim() {
            "steady" => Ok(Workload::Steady),
            "crowd" => Ok(Workload::Crowd),
            other => Err(format!("unknown workload `{other}`: use steady or crowd")),
        }
    }
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Replicas (3f+1).
    pub n: usize,
    /// The seed: same seed, same run.
    pub seed: u64,
    /// Byzantine replicas.
    pub byzantine: ByzantineSpec,
    /// Faults injected before the heal.
    pub faults: Faults,
    /// Requests the clients submit.
    pub requests: usize,
    /// Clients.
    pub clients: usize,
    /// Virtual time with faults; then everything heals.
    pub fault_phase: Duration,
    /// After the heal, every request must be executed by every honest replica
    /// within this virtual time.
    pub liveness_bound: Duration,
    /// Protocol parameters.
    pub protocol: Config,
    /// Deliberately break the honest replicas' commit rule (2f instead of
    /// 2f+1): to see the checkers catch it.
    pub break_quorum: bool,
    /// Deliberately break the new-view rule (`O` takes the lowest-view
    /// prepared digest, not the highest) on every honest replica: to see the
    /// adversary reach the view change and the agreement checker catch it.
    pub break_new_view: bool,
    /// Deliberately break the table a jump rebuilds (only the checkpoint
    /// block's requests kept) on every honest replica: to see the table
    /// checker catch it.
    pub break_jump_table: bool,
    /// Deliberately make clients believe what a node replies without
    /// verifying its receipt: to see the receipts checker catch
    /// `lie-to-clients`.
    pub break_receipts: bool,
    /// Twins.
    pub twins: Twins,
    /// The clients' workload.
    pub workload: Workload,
    /// Every replica prunes like `[storage] retain_blocks = N` (must exceed
    /// `protocol.request_lifetime`): a replica down long enough then
    /// jumps past what its peers pruned (design notes §47).
    pub retain_blocks: Option<u64>,
}

impl SimConfig {
    /// A sensible run for `n` replicas and `seed`: small batches and short
    /// timeouts so many protocol paths are crossed in little virtual time.
    pub fn new(n: usize, seed: u64) -> SimConfig {
        let protocol = sim_protocol_config();
        SimConfig {
            n,
            seed,
            byzantine: ByzantineSpec::Fixed(Vec::new()),
            faults: Faults::ALL,
            requests: 40,
            clients: 3,
            fault_phase: Duration::from_secs(4),
            liveness_bound: liveness_bound(n, &protocol),
            protocol,
            break_quorum: false,
            break_new_view: false,
            break_jump_table: false,
            break_receipts: false,
            twins: Twins::Never,
            workload: Workload::Steady,
            retain_blocks: None,
        }
    }

    /// Switches to the crowd workload: 200 clients, 400 requests, a
    /// 16-height lifetime.
    pub fn crowd(&mut self) {
        self.workload = Workload::Crowd;
        self.clients = 200;
        self.requests = 400;
        self.protocol.request_lifetime = 16;
    }
}

/// How long after the heal every request may take to be executed by every
/// honest replica. The argument: a replica that restarts at the heal needs
/// up to `request_timeout_max` to catch up (status exchange, state
/// transfer); a request then waits at most another `request_timeout_max`
/// before its replicas suspect the primary; each view change takes at most
/// `view_change_timeout_max` before the next is tried, and among f + 1
/// successive primaries one is honest, which orders the request within a
/// request timeout; plus the clients' retry period.
pub fn liveness_bound(n: usize, protocol: &Config) -> Duration {
    let f = (n.saturating_sub(1) / 3) as u32;
    let view_changes = (f + 1) * (protocol.view_change_timeout_max + protocol.request_timeout_max);
    2 * protocol.request_timeout_max + view_changes + Duration::from_millis(500)
}

/// Protocol parameters for simulation.
pub fn sim_protocol_config() -> Config {
    Config {
        request_mode: RequestMode::ClientSigned,
        checkpoint_interval: 8,
        window: 32,
        pipeline: 4,
        max_batch_requests: 8,
        max_batch_bytes: 64 * 1024,
        batch_delay: Duration::from_millis(2),
        max_request_bytes: 1024,
        max_pending_requests: 1000,
        max_pending_bytes: 1024 * 1024,
        request_timeout: Duration::from_millis(300),
        request_timeout_max: Duration::from_millis(2400),
        view_change_timeout: Duration::from_millis(200),
        view_change_timeout_max: Duration::from_millis(3200),
        status_interval: Duration::from_millis(100),
        new_view_resend: Duration::from_millis(400),
        fetch_max_blocks: 16,
        fetch_timeout: Duration::from_millis(300),
        max_future_messages_per_peer: 256,
        max_future_bytes_per_peer: 1024 * 1024,
        request_lifetime: 1000,
        jump_past_pruned: true,
    }
}

/// What one run found.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Hash over every event processed: equal for equal seeds.
    pub trace_hash: String,
    /// Highest height committed by an honest replica.
    pub height: u64,
    /// Blocks committed, summed over honest replicas.
    pub commits: u64,
    /// Requests submitted.
    pub requests: usize,
    /// Virtual time simulated.
    pub virtual_ms: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Highest view any honest replica reached.
    pub max_view: u64,
    /// Inputs honest replicas dropped as invalid, summed.
    pub dropped: u64,
    /// The byzantine replicas and their behaviours.
    pub byzantine: Vec<String>,
    /// Each replica's final state, one line each.
    pub replicas: Vec<String>,
    /// The liveness bound used.
    pub liveness_bound_ms: u64,
    /// The worst time, after the heal, until every honest replica executed
    /// a request (from the later of its submission and the heal).
    pub worst_time_to_commit_ms: Option<u64>,
    /// Receipts clients verified.
    pub receipts_verified: u64,
    /// Replies clients refused because the receipt did not verify.
    pub lies_refused: u64,
    /// Requests that expired unexecuted and were signed again.
    pub expired_resigned: u64,
    /// Jumps honest replicas made past pruned history.
    pub jumps: u64,
    /// The first violated property, if any.
    pub violation: Option<Violation>,
}

/// Runs one seed.
pub fn run(config: &SimConfig) -> SimReport {
    world::World::new(config).run()
}

/// A failing seed and what it violated.
#[derive(Clone, Debug, Serialize)]
pub struct SeedFailure {
    /// The seed, to replay with `--seed`.
    pub seed: u64,
    /// The violation.
    pub violation: Violation,
}

/// What a sweep over many seeds found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepSummary {
    /// Seeds run.
    pub seeds: u64,
    /// Runs where two honest replicas committed different blocks at a height.
    pub agreement_violations: u64,
    /// Runs where an honest replica executed an unsubmitted or repeated request.
    pub validity_violations: u64,
    /// Runs where a committed block's certificate or chain did not verify.
    pub certificate_violations: u64,
    /// Runs where a client accepted a receipt the honest logs contradict.
    pub receipt_violations: u64,
    /// Runs where some request was not executed everywhere in time after the
    /// heal.
    pub liveness_failures: u64,
    /// The liveness bound used (the largest, if runs differed).
    pub liveness_bound_ms: u64,
    /// The worst time-to-commit after the heal over all runs, and its seed.
    pub worst_time_to_commit_ms: u64,
    /// The seed of that run.
    pub worst_time_to_commit_seed: u64,
    /// Receipts clients verified, over all runs.
    pub receipts_verified: u64,
    /// Replies clients refused as lies, over all runs.
    pub lies_refused: u64,
    /// Jumps past pruned history by honest replicas, over all runs.
    pub jumps: u64,
    /// Runs that failed otherwise (a replica that could not restart, a
    /// message storm).
    pub other_failures: u64,
    /// Blocks committed, summed over honest replicas and runs.
    pub commits: u64,
    /// Requests submitted, over all runs.
    pub requests: u64,
    /// Virtual seconds simulated.
    pub virtual_seconds: f64,
    /// Wall-clock seconds taken.
    pub wall_seconds: f64,
    /// Simulated commits per wall-clock second.
    pub commits_per_second: f64,
    /// The lowest failing seed, if any.
    pub first_failure: Option<SeedFailure>,
}

impl SweepSummary {
    /// Runs with any violation.
    pub fn failures(&self) -> u64 {
        self.agreement_violations
            + self.validity_violations
            + self.certificate_violations
            + self.receipt_violations
            + self.liveness_failures
            + self.other_failures
    }

    fn add(&mut self, report: &SimReport) {
        self.seeds += 1;
        self.commits += report.commits;
        self.requests += report.requests as u64;
        self.virtual_seconds += report.virtual_ms as f64 / 1000.0;
        self.liveness_bound_ms = self.liveness_bound_ms.max(report.liveness_bound_ms);
        self.receipts_verified += report.receipts_verified;
        self.lies_refused += report.lies_refused;
        self.jumps += report.jumps;
        if let Some(worst) = report.worst_time_to_commit_ms {
            if worst > self.worst_time_to_commit_ms {
                self.worst_time_to_commit_ms = worst;
                self.worst_time_to_commit_seed = report.seed;
            }
        }
        if let Some(violation) = &report.violation {
            match violation.property {
                "agreement" => self.agreement_violations += 1,
                "validity" => self.validity_violations += 1,
                "certificates" => self.certificate_violations += 1,
                "receipts" => self.receipt_violations += 1,
                "liveness" => self.liveness_failures += 1,
                _ => self.other_failures += 1,
            }
            let earlier = self
                .first_failure
                .as_ref()
                .is_none_or(|first| report.seed < first.seed);
            if earlier {
                self.first_failure = Some(SeedFailure {
                    seed: report.seed,
                    violation: violation.clone(),
                });
            }
        }
    }
}

/// Runs `config` for every seed in `seeds` on `threads` threads, calling
/// `progress(done, total, failures)` as runs finish. The summary does not
/// depend on the number of threads (except for wall time).
pub fn sweep(
    config: &SimConfig,
    seeds: std::ops::Range<u64>,
    threads: usize,
    progress: &(dyn Fn(u64, u64, u64) + Sync),
) -> SweepSummary {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    let started = std::time::Instant::now();
    let next = AtomicU64::new(seeds.start);
    let done = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let total = seeds.end.saturating_sub(seeds.start);
    let reports = Mutex::new(Vec::with_capacity(total as usize));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let mut run_config = config.clone();
                run_config.seed = seed;
                let report = run(&run_config);
                if report.violation.is_some() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(finished, total, failures.load(Ordering::Relaxed));
                reports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(report);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(|e| e.into_inner());
    reports.sort_by_key(|report| report.seed);
    let mut summary = SweepSummary::default();
    for report in &reports {
        summary.add(report);
    }
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.commits_per_second = summary.commits as f64 / summary.wall_seconds.max(1e-9);
    summary
}
