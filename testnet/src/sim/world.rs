//! The simulated world: replicas, network, clients and the event loop.

use super::check::{self, Violation};
use super::verifier::CachingVerifier;
use super::{ByzantineSpec, SimConfig, SimReport, Twins, Workload};
use bftd::client_api::Receipt;
use bftd_crypto::{Digest, DigestBuilder, Domain, KeyPair};
use bftd_protocol::byzantine::{Adversary, Behaviour, Emission};
use bftd_protocol::merkle::MerkleTree;
use bftd_protocol::{
    codec, verify_message, verify_request, BlockSource, ClientReply, Committee, Destination,
    MemStorage, MessageLimits, NodeId, Record, Replica, ReplicaSetup, ReplyOutcome, Request,
    RequestKey, RequestMode, SeqNum, SignedRequest, Storage, WireMessage,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

const TRACE: Domain = Domain::new("bftnet/sim/trace");
/// Clients re-submit what has not executed anywhere this often.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// A run that processes this many events has run away (a message storm);
/// it stops and reports it.
const MAX_EVENTS: u64 = 3_000_000;
/// Shortest timer step, so a deadline in the past cannot spin the loop.
const MIN_TIMER_STEP: Duration = Duration::from_micros(100);

/// A replica instance. Usually one per identity; a twinned identity has two
/// (same key, separate storage), so slots, not ids, address the network.
type Slot = usize;

#[derive(Debug)]
enum Event {
    Deliver {
        from: Slot,
        to: Slot,
        bytes: Arc<Vec<u8>>,
    },
    Timer {
        slot: Slot,
        generation: u64,
    },
    Submit {
        request: RequestKey,
        slot: Slot,
    },
    Retry,
    Crash(Slot),
    /// The slot's next step stops partway (see [`CrashPoint`]).
    ArmCrash(Slot, CrashPoint),
    /// Every replica at once (a power cut), each restarting on its own.
    CrashAll,
    Restart(Slot),
    Partition(Vec<(Slot, Slot)>),
    EndPartition,
    Heal,
}

/// Where inside a step a crash falls. The shell's order is: write, then send
/// (then answer clients); a crash can cut it anywhere.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// Before the write: the step leaves no trace.
    BeforeWrite,
    /// After the write, with only the first `sent` of the step's messages
    /// out (a fraction, 0 to 1).
    AfterWrite { sent: f64 },
}

#[derive(Debug)]
struct Scheduled {
    at: Duration,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

pub(super) struct SimNode {
    /// The identity this instance runs as.
    pub id: NodeId,
    pub replica: Option<Replica>,
    pub storage: MemStorage,
    pub adversary: Option<Adversary>,
    /// Fresh requests this replica executed (survives crashes: it mirrors
    /// storage).
    pub executed: BTreeSet<RequestKey>,
    /// The height whose at-most-once table was last compared.
    table_checked_at: SeqNum,
    timer_generation: u64,
    timer_at: Option<Duration>,
    crash_point: Option<CrashPoint>,
}

/// What honest replicas executed, recorded as they delivered it: the
/// checkers' record where stores prune.
#[derive(Debug, Default)]
pub(super) struct HonestLog {
    /// Each request's first height.
    pub executed_at: BTreeMap<RequestKey, SeqNum>,
    /// Each height's batch digest.
    pub digests: BTreeMap<SeqNum, Digest>,
}

/// How many honest replicas executed each request, and when the last of
/// them did.
struct HonestTally {
    executions: BTreeMap<RequestKey, usize>,
    /// When every honest replica had executed each request.
    everywhere_at: BTreeMap<RequestKey, Duration>,
    /// Honest replicas.
    honest: usize,
}

impl HonestTally {
    /// One more honest replica executed `key` (or holds it past a jump).
    fn count(&mut self, key: RequestKey, now: Duration) {
        let count = self.executions.entry(key).or_default();
        *count += 1;
        if *count == self.honest {
            self.everywhere_at.insert(key, now);
        }
    }
}

/// What clients were told and what they accepted.
#[derive(Debug, Default)]
pub(super) struct ClientView {
    /// Receipts that verified: request → (height, batch digest).
    pub accepted: BTreeMap<RequestKey, (SeqNum, Digest)>,
    /// Receipts verified.
    pub verified: u64,
    /// Replies refused because their receipt did not verify (a node lied).
    pub refused: u64,
}

pub(super) struct World<'a> {
    pub config: &'a SimConfig,
    rng: ChaCha8Rng,
    now: Duration,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    pub committee: Committee,
    keys: Vec<KeyPair>,
    /// Replica instances: slot `i < n` runs identity `i`; twins follow.
    pub nodes: Vec<SimNode>,
    pub byzantine: BTreeMap<NodeId, Behaviour>,
    /// Byzantine identities run as twins (two honest instances, one key).
    pub twins: bool,
    /// Every request any client signed.
    pub submitted: BTreeMap<RequestKey, SignedRequest>,
    /// The requests clients still want executed: one per transaction (its
    /// newest signed version).
    pub wanted: BTreeSet<RequestKey>,
    /// Versions given up after they expired unexecuted.
    pub abandoned: BTreeSet<RequestKey>,
    /// When each wanted request was first submitted.
    submitted_at: BTreeMap<RequestKey, Duration>,
    /// How many honest replicas executed each request, and when all had.
    honest_tally: HonestTally,
    executed_somewhere: BTreeSet<RequestKey>,
    /// What honest replicas executed, as they delivered it (stores prune):
    /// each request's first height, and each height's batch digest.
    pub honest_log: HonestLog,
    /// Jumps honest replicas made past pruned history.
    jumps: u64,
    /// The fingerprint of the at-most-once table the first honest replica
    /// to end a step at each height held there.
    tables: BTreeMap<SeqNum, (NodeId, Digest)>,
    client_keys: Vec<KeyPair>,
    next_request_id: Vec<u64>,
    pub clients: ClientView,
    drop_probability: f64,
    duplicate_probability: f64,
    blocked: BTreeSet<(Slot, Slot)>,
    healed: bool,
    pub heal_at: Duration,
    pub live_at: Option<Duration>,
    verifier: CachingVerifier,
    trace: DigestBuilder,
    messages: u64,
    failure: Option<Violation>,
}

impl<'a> World<'a> {
    pub fn new(config: &'a SimConfig) -> World<'a> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let keys: Vec<KeyPair> = (0..config.n).map(|_| KeyPair::generate(&mut rng)).collect();
        let publics: Vec<_> = keys.iter().map(KeyPair::public).collect();
        let committee = Committee::new(&publics).expect("simulated committees are 3f+1");
        let byzantine = choose_byzantine(&config.byzantine, config.n, &mut rng);
        let twins = !byzantine.is_empty()
            && match config.twins {
                Twins::Never => false,
                Twins::Always => true,
                // `random` mixes twins in: a quarter of the runs.
                Twins::Sometimes => rng.gen_bool(0.25),
            };
        let colluders: Vec<NodeId> = byzantine
            .iter()
            .filter(|(_, b)| **b == Behaviour::Collude)
            .map(|(&id, _)| id)
            .collect();
        let instance = |id: NodeId, adversary: Option<Adversary>| SimNode {
            id,
            replica: None,
            storage: match config.retain_blocks {
                Some(retain) => MemStorage::with_retention(retain),
                None => MemStorage::new(),
            },
            adversary,
            executed: BTreeSet::new(),
            table_checked_at: SeqNum(0),
            timer_generation: 0,
            timer_at: None,
            crash_point: None,
        };
        let mut nodes = Vec::with_capacity(config.n + byzantine.len());
        for (index, key) in keys.iter().enumerate() {
            let id = NodeId(index as u16);
            // Twins run honest code: the lie is that there are two of them.
            let adversary = byzantine.get(&id).filter(|_| !twins).map(|behaviour| {
                Adversary::new(
                    behaviour.clone(),
                    id,
                    key.clone(),
                    committee.clone(),
                    colluders.clone(),
                    config.seed,
                )
            });
            nodes.push(instance(id, adversary));
        }
        if twins {
            for &id in byzantine.keys() {
                nodes.push(instance(id, None));
            }
        }
        let (drop_probability, duplicate_probability) = (
            if config.faults.drop {
                rng.gen_range(0.0..0.1)
            } else {
                0.0
            },
            if config.faults.duplicate {
                rng.gen_range(0.0..0.05)
            } else {
                0.0
            },
        );
        let honest_count = config.n - byzantine.len();
        let client_keys: Vec<KeyPair> = (0..config.clients.max(1))
            .map(|_| KeyPair::generate(&mut rng))
            .collect();
        World {
            config,
            rng,
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            next_order: 0,
            committee,
            keys,
            nodes,
            byzantine,
            twins,
            submitted: BTreeMap::new(),
            wanted: BTreeSet::new(),
            abandoned: BTreeSet::new(),
            submitted_at: BTreeMap::new(),
            honest_tally: HonestTally {
                executions: BTreeMap::new(),
                everywhere_at: BTreeMap::new(),
                honest: honest_count,
            },
            executed_somewhere: BTreeSet::new(),
            honest_log: HonestLog::default(),
            jumps: 0,
            tables: BTreeMap::new(),
            next_request_id: vec![1; client_keys.len()],
            client_keys,
            clients: ClientView::default(),
            drop_probability,
            duplicate_probability,
            blocked: BTreeSet::new(),
            healed: false,
            heal_at: config.fault_phase,
            live_at: None,
            verifier: CachingVerifier::default(),
            trace: DigestBuilder::new(TRACE),
            messages: 0,
            failure: None,
        }
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.next_order += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            order: self.next_order,
            event,
        }));
    }

    pub fn honest(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.config.n)
            .map(|i| NodeId(i as u16))
            .filter(|id| !self.byzantine.contains_key(id))
    }

    fn is_honest(&self, slot: Slot) -> bool {
        !self.byzantine.contains_key(&self.nodes[slot].id)
    }

    fn random_slot(&mut self) -> Slot {
        self.rng.gen_range(0..self.nodes.len())
    }

    fn setup(&self, slot: Slot) -> ReplicaSetup {
        let id = self.nodes[slot].id;
        ReplicaSetup {
            id,
            key: self.keys[id.index()].clone(),
            committee: self.committee.clone(),
            config: self.config.protocol.clone(),
            blocks: Arc::new(self.nodes[slot].storage.clone()),
        }
    }

    fn start(&mut self, slot: Slot) {
        let recovered = self.nodes[slot].storage.recover().unwrap_or_default();
        match Replica::new(self.setup(slot), recovered, self.now) {
            Ok(mut replica) => {
                if self.config.break_quorum {
                    replica.break_commit_quorum_for_testing();
                }
                if self.config.break_new_view {
                    replica.break_new_view_rule_for_testing();
                }
                if self.config.break_jump_table {
                    replica.break_jump_table_for_testing();
                }
                self.nodes[slot].replica = Some(replica);
                self.after_step(slot);
            }
            Err(error) => {
                self.failure.get_or_insert(Violation::new(
                    "restart",
                    format!(
                        "{} could not restart from its storage: {error}",
                        self.nodes[slot].id
                    ),
                ));
            }
        }
    }

    fn stop(&mut self, slot: Slot) {
        let node = &mut self.nodes[slot];
        node.replica = None;
        node.timer_generation += 1;
        node.timer_at = None;
        node.crash_point = None;
    }

    /// Signs a new request for transaction `index`'s client, valid for half a
    /// lifetime past `height` (what a real client does with the height it
    /// last saw).
    fn sign_request(&mut self, index: usize, height: SeqNum) -> RequestKey {
        let client_index = index % self.client_keys.len();
        let client = &self.client_keys[client_index];
        let request_id = self.next_request_id[client_index];
        self.next_request_id[client_index] += 1;
        let lifetime = self.config.protocol.request_lifetime;
        let request = Request {
            client: client.public(),
            request_id,
            valid_until: height.plus(lifetime / 2).max(SeqNum(lifetime.min(1))),
            payload: format!("tx-{index}").into_bytes(),
        };
        let signed = SignedRequest::sign(request, client).expect("small request");
        let key = signed.key();
        self.submitted.insert(key, signed);
        key
    }

    fn schedule_workload(&mut self) {
        let window = self
            .config
            .fault_phase
            .mul_f64(0.8)
            .max(Duration::from_millis(1));
        for index in 0..self.config.requests {
            let height = match self.config.workload {
                // Valid for the whole run: a run never gets near half a
                // lifetime of heights.
                Workload::Steady => SeqNum(self.config.protocol.request_lifetime / 2),
                // Clients that start at height 0: with a short lifetime,
                // requests expire in long faults, are given up and re-signed.
                Workload::Crowd => SeqNum(0),
            };
            let key = self.sign_request(index, height);
            self.wanted.insert(key);
            let at = Duration::from_micros(self.rng.gen_range(0..window.as_micros() as u64));
            self.submitted_at.insert(key, at);
            let slot = self.random_slot();
            self.schedule(at, Event::Submit { request: key, slot });
        }
    }

    /// The slots of a partition's two sides, with each pair of twins split
    /// across them (that is what twins are for: each side sees one).
    fn random_partition(&mut self) -> Vec<(Slot, Slot)> {
        let mut slots: Vec<Slot> = (0..self.nodes.len()).collect();
        slots.shuffle(&mut self.rng);
        let cut = self.rng.gen_range(1..slots.len().max(2)).min(slots.len());
        let mut side: Vec<bool> = vec![false; self.nodes.len()];
        for &slot in &slots[..cut] {
            side[slot] = true;
        }
        for twin in self.config.n..self.nodes.len() {
            let original = self.nodes[twin].id.index();
            if side[twin] == side[original] {
                side[twin] = !side[original];
            }
        }
        let one_way = self.rng.gen_bool(0.3);
        let mut blocked = Vec::new();
        for x in 0..self.nodes.len() {
            for y in 0..self.nodes.len() {
                if side[x] && !side[y] {
                    blocked.push((x, y));
                    if !one_way {
                        blocked.push((y, x));
                    }
                }
            }
        }
        blocked
    }

    fn schedule_faults(&mut self) {
        let phase = self.config.fault_phase.as_micros() as u64;
        if self.config.faults.partition {
            // Twins need partitions to split them: always at least one.
            let least = usize::from(self.twins);
            for _ in 0..self.rng.gen_range(least..3.max(least + 1)) {
                let start = Duration::from_micros(self.rng.gen_range(0..phase));
                let length = Duration::from_millis(self.rng.gen_range(100..1500));
                let blocked = self.random_partition();
                self.schedule(start, Event::Partition(blocked));
                self.schedule(start + length, Event::EndPartition);
            }
        }
        if self.config.faults.crash {
            // Any replica, byzantine ones too, between steps or inside one.
            for _ in 0..self.rng.gen_range(0..5) {
                let victim = self.random_slot();
                let start = Duration::from_micros(self.rng.gen_range(0..phase));
                let down = Duration::from_millis(self.rng.gen_range(50..2000));
                match self.rng.gen_range(0..3) {
                    0 => self.schedule(start, Event::Crash(victim)),
                    1 => self.schedule(start, Event::ArmCrash(victim, CrashPoint::BeforeWrite)),
                    _ => {
                        let sent = self.rng.gen_range(0.0..1.0);
                        self.schedule(
                            start,
                            Event::ArmCrash(victim, CrashPoint::AfterWrite { sent }),
                        );
                    }
                }
                self.schedule(start + down, Event::Restart(victim));
            }
            // Where stores prune, one long outage: most of the fault phase,
            // long enough for the peers to prune what the victim needs next,
            // so that it must jump (design notes §47).
            if self.config.retain_blocks.is_some() {
                let victim = self.random_slot();
                let start = Duration::from_micros(self.rng.gen_range(0..phase / 10));
                let down = Duration::from_micros(self.rng.gen_range(phase / 2..phase * 9 / 10));
                self.schedule(start, Event::Crash(victim));
                self.schedule(start + down, Event::Restart(victim));
            }
            // A power cut in a fifth of the runs.
            if self.rng.gen_bool(0.2) {
                let start = Duration::from_micros(self.rng.gen_range(0..phase));
                self.schedule(start, Event::CrashAll);
            }
        }
        self.schedule(self.config.fault_phase, Event::Heal);
        self.schedule(RETRY_INTERVAL, Event::Retry);
    }

    pub fn run(mut self) -> SimReport {
        self.schedule_workload();
        self.schedule_faults();
        for slot in 0..self.nodes.len() {
            self.start(slot);
        }
        let end = self.config.fault_phase + self.config.liveness_bound;
        let mut events = 0u64;
        while let Some(Reverse(scheduled)) = self.queue.pop() {
            if scheduled.at > end || self.live_at.is_some() || self.failure.is_some() {
                break;
            }
            events += 1;
            if events > MAX_EVENTS {
                self.failure = Some(Violation::new(
                    "runaway",
                    format!(
                        "more than {MAX_EVENTS} events by {:?} of virtual time",
                        scheduled.at
                    ),
                ));
                break;
            }
            self.now = scheduled.at;
            self.trace
                .update(&(scheduled.at.as_micros() as u64).to_le_bytes());
            self.handle(scheduled.event);
        }
        let violation = self.failure.clone().or_else(|| check::run(&self));
        self.report(violation)
    }

    /// The worst time, after the heal, until every honest replica executed
    /// a wanted request: from the later of its submission and the heal.
    pub fn worst_time_to_commit(&self) -> Option<Duration> {
        self.wanted
            .iter()
            .filter_map(|key| {
                let done = self.honest_tally.everywhere_at.get(key)?;
                let from = self.submitted_at.get(key)?.max(&self.heal_at);
                Some(done.saturating_sub(*from))
            })
            .max()
    }

    fn report(&self, violation: Option<Violation>) -> SimReport {
        let honest: Vec<NodeId> = self.honest().collect();
        let heights: Vec<u64> = honest
            .iter()
            .map(|id| bftd_protocol::BlockSource::last_height(&self.nodes[id.index()].storage).0)
            .collect();
        let replicas: Vec<&Replica> = honest
            .iter()
            .filter_map(|id| self.nodes[id.index()].replica.as_ref())
            .collect();
        let replica_lines = (0..self.nodes.len())
            .map(|slot| {
                let node = &self.nodes[slot];
                let role = match self.byzantine.get(&node.id) {
                    None => "honest".to_string(),
                    Some(_) if self.twins => "twin".to_string(),
                    Some(behaviour) => behaviour.to_string(),
                };
                let i = node.id.0;
                match &node.replica {
                    None => format!("n{i} ({role}): down"),
                    Some(r) => {
                        let s = r.status();
                        let drops: Vec<String> = r
                            .metrics()
                            .dropped_by_reason()
                            .filter(|(_, c)| *c > 0)
                            .map(|(reason, c)| format!("{}={c}", reason.name()))
                            .collect();
                        format!(
                            "n{i} ({role}): view {}{} executed {} stable {} pending {} slots {} executed-requests {} dropped [{}]",
                            s.view.0,
                            if s.in_view_change { " (changing)" } else { "" },
                            s.last_executed.0,
                            s.stable_checkpoint.0,
                            s.pending_requests,
                            s.active_slots,
                            node.executed.len(),
                            drops.join(" ")
                        )
                    }
                }
            })
            .collect();
        SimReport {
            replicas: replica_lines,
            max_view: replicas
                .iter()
                .map(|r| r.status().view.0)
                .max()
                .unwrap_or(0),
            dropped: replicas.iter().map(|r| r.metrics().dropped_total()).sum(),
            seed: self.config.seed,
            trace_hash: format!("{}", self.trace.clone().finish()),
            height: heights.iter().copied().max().unwrap_or(0),
            commits: heights.iter().sum(),
            requests: self.submitted.len(),
            virtual_ms: self.now.as_millis() as u64,
            messages: self.messages,
            byzantine: self
                .byzantine
                .iter()
                .map(|(id, b)| {
                    if self.twins {
                        format!("{id}=twins")
                    } else {
                        format!("{id}={b}")
                    }
                })
                .collect(),
            liveness_bound_ms: self.config.liveness_bound.as_millis() as u64,
            worst_time_to_commit_ms: self
                .worst_time_to_commit()
                .map(|worst| worst.as_millis() as u64),
            receipts_verified: self.clients.verified,
            lies_refused: self.clients.refused,
            expired_resigned: self.abandoned.len() as u64,
            jumps: self.jumps,
            violation,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, bytes } => {
                self.trace.update(&[1, from as u8, to as u8]).update(&bytes);
                self.deliver(from, to, &bytes);
            }
            Event::Timer { slot, generation } => {
                let state = &mut self.nodes[slot];
                if state.timer_generation != generation {
                    return;
                }
                state.timer_at = None;
                self.trace.update(&[2, slot as u8]);
                if let Some(replica) = state.replica.as_mut() {
                    replica.handle_timeout(self.now);
                    self.after_step(slot);
                }
            }
            Event::Submit { request, slot } => {
                self.trace.update(&[3, slot as u8]);
                self.submit(request, slot);
            }
            Event::Retry => {
                self.retry();
                self.schedule(self.now + RETRY_INTERVAL, Event::Retry);
            }
            Event::Crash(slot) => {
                self.trace.update(&[4, slot as u8]);
                if !self.healed {
                    self.stop(slot);
                }
            }
            Event::ArmCrash(slot, point) => {
                if !self.healed && self.nodes[slot].replica.is_some() {
                    self.nodes[slot].crash_point = Some(point);
                }
            }
            Event::CrashAll => {
                self.trace.update(&[6]);
                if !self.healed {
                    for slot in 0..self.nodes.len() {
                        self.stop(slot);
                        // Each comes back on its own: restarts in every order.
                        let down = Duration::from_millis(self.rng.gen_range(20..1500));
                        self.schedule(self.now + down, Event::Restart(slot));
                    }
                }
            }
            Event::Restart(slot) => {
                self.trace.update(&[5, slot as u8]);
                if self.nodes[slot].replica.is_none() {
                    self.start(slot);
                }
            }
            Event::Partition(blocked) => {
                if !self.healed {
                    self.blocked = blocked.into_iter().collect();
                }
            }
            Event::EndPartition => self.blocked.clear(),
            Event::Heal => {
                self.healed = true;
                self.blocked.clear();
                self.drop_probability = 0.0;
                self.duplicate_probability = 0.0;
                for slot in 0..self.nodes.len() {
                    self.nodes[slot].crash_point = None;
                    if self.nodes[slot].replica.is_none() {
                        self.start(slot);
                    }
                }
            }
        }
    }

    fn submit(&mut self, key: RequestKey, slot: Slot) {
        let Some(mut request) = self.submitted.get(&key).cloned() else {
            return;
        };
        let mode = self.config.protocol.request_mode;
        let entry = self.nodes[slot].id;
        if mode == RequestMode::ConnectionAuthenticated {
            // The copy for this node: carrying the client's grant to it.
            if let Some(client) = self.client_keys.iter().find(|k| k.public() == key.client) {
                request = SignedRequest::granted(request.request, client, entry);
            }
        }
        let Ok(verified) =
            verify_request(request, entry, &self.committee, mode, &mut self.verifier)
        else {
            return;
        };
        let state = &mut self.nodes[slot];
        if let Some(adversary) = state.adversary.as_mut() {
            if !adversary.admit_request(self.now, &verified) {
                return;
            }
        }
        if let Some(replica) = state.replica.as_mut() {
            replica.handle_request(self.now, verified, true);
            self.after_step(slot);
        }
    }

    /// Clients re-submit wanted requests not yet executed anywhere to a
    /// random replica, as a real client does when no valid receipt arrives;
    /// re-sign those certainly expired; a replayer re-submits old executed
    /// requests; once healed, check liveness.
    fn retry(&mut self) {
        if self.config.workload == Workload::Crowd {
            self.resign_expired();
            self.replay_executed();
        }
        let missing: Vec<RequestKey> = self
            .wanted
            .iter()
            .filter(|key| !self.executed_somewhere.contains(key))
            .copied()
            .collect();
        for key in missing {
            let slot = self.random_slot();
            self.schedule(self.now, Event::Submit { request: key, slot });
        }
        if self.healed && self.live_at.is_none() {
            let everyone = self
                .wanted
                .iter()
                .all(|key| self.honest_tally.everywhere_at.contains_key(key));
            if everyone {
                self.live_at = Some(self.now);
            }
        }
    }

    /// A wanted request that an honest replica passed by (it committed up to
    /// the request's `valid_until` without executing it) can never execute:
    /// agreement puts it nowhere below, expiry nowhere above. Its
    /// client gives it up and signs the transaction again under a new id —
    /// safe only because the request is certainly dead, which is what a
    /// client following the verified block stream knows.
    fn resign_expired(&mut self) {
        let passed_by = |world: &World<'_>, key: &RequestKey| {
            let valid_until = world.submitted[key].request.valid_until;
            world.honest().any(|id| {
                let node = &world.nodes[id.index()];
                bftd_protocol::BlockSource::last_height(&node.storage) >= valid_until
                    && !node.executed.contains(key)
            })
        };
        let dead: Vec<RequestKey> = self
            .wanted
            .iter()
            .filter(|key| !self.executed_somewhere.contains(key) && passed_by(self, key))
            .copied()
            .collect();
        for key in dead {
            let height = self
                .honest()
                .map(|id| bftd_protocol::BlockSource::last_height(&self.nodes[id.index()].storage))
                .max()
                .unwrap_or_default();
            let index = tx_index(&self.submitted[&key]);
            let first = self.submitted_at.get(&key).copied().unwrap_or(self.now);
            let fresh = self.sign_request(index, height);
            self.wanted.remove(&key);
            self.abandoned.insert(key);
            self.wanted.insert(fresh);
            self.submitted_at.insert(fresh, first);
            let slot = self.random_slot();
            self.schedule(
                self.now,
                Event::Submit {
                    request: fresh,
                    slot,
                },
            );
        }
    }

    /// Anyone can resubmit anyone's signed request (they are public in the
    /// blocks): a replayer does, with requests executed long ago and just
    /// now. Each must be answered, never executed again.
    fn replay_executed(&mut self) {
        let executed: Vec<RequestKey> = self.executed_somewhere.iter().copied().collect();
        for _ in 0..executed.len().min(8) {
            let key = executed[self.rng.gen_range(0..executed.len())];
            let slot = self.random_slot();
            self.schedule(self.now, Event::Submit { request: key, slot });
        }
    }

    fn deliver(&mut self, from: Slot, to: Slot, bytes: &[u8]) {
        if self.nodes[to].replica.is_none() {
            return;
        }
        self.messages += 1;
        let Ok(message) = codec::decode::<WireMessage>(bytes) else {
            return;
        };
        let limits = MessageLimits::of(&self.config.protocol);
        let kind = message.kind();
        // After a restart a connection-authenticated primary re-sends its
        // pre-prepares without vouches (they are not persisted): refused,
        // by design. Nothing else an honest replica sends may be.
        let unvouched_resend = matches!(
            &message,
            WireMessage::PrePrepare { batch, vouches, .. }
                if vouches.is_empty() && !batch.requests.is_empty()
        );
        let verified = match verify_message(message, &self.committee, &limits, &mut self.verifier) {
            Ok(verified) => verified,
            Err(error) => {
                // A deliberately broken rule makes honest replicas send what
                // the others rightly refuse (certificates of 2f votes): the
                // checkers for those rules judge such runs.
                let broken = self.config.break_quorum || self.config.break_new_view;
                if self.is_honest(from) && !unvouched_resend && !broken {
                    self.failure.get_or_insert(Violation::new(
                        "honest-refused",
                        format!(
                            "{} refused a {kind:?} from honest {}: {error}",
                            self.nodes[to].id, self.nodes[from].id
                        ),
                    ));
                }
                return;
            }
        };
        let sender = self.nodes[from].id;
        let node = &mut self.nodes[to];
        let verified = match node.adversary.as_mut() {
            Some(adversary) => {
                adversary.observe(&verified);
                match adversary.admit(self.now, verified) {
                    Some(admitted) => admitted,
                    None => return,
                }
            }
            None => verified,
        };
        if let Some(replica) = node.replica.as_mut() {
            replica.handle_message(self.now, sender, verified);
            self.after_step(to);
        }
    }

    /// Honest replicas at one height must hold the same at-most-once
    /// table, however they got there (execution, a restart's rebuild, a
    /// jump past pruned history, §47): a difference would make some later
    /// block's `duplicates` differ. Checked when an honest replica ends a
    /// step at a height it had not been compared at.
    fn compare_table(&mut self, slot: Slot) {
        let node = &mut self.nodes[slot];
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let (height, table) = replica.executed_table();
        if height == node.table_checked_at {
            return;
        }
        node.table_checked_at = height;
        let id = node.id;
        match self.tables.get(&height) {
            Some(&(other, theirs)) if theirs != table => {
                self.failure.get_or_insert(Violation::new(
                    "agreement",
                    format!(
                        "height {}: {other} and {id} hold different at-most-once tables ({theirs:#} and {table:#})",
                        height.0
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.tables.insert(height, (id, table));
            }
        }
    }

    fn after_step(&mut self, slot: Slot) {
        let honest = self.is_honest(slot);
        let node = &mut self.nodes[slot];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let actions = replica.drain_actions();
        let deadline = replica.next_deadline();
        let crash = node.crash_point.take();
        if let Some(CrashPoint::BeforeWrite) = crash {
            self.stop(slot);
            return;
        }
        node.storage
            .apply(&actions.persist, &actions.deliver)
            .expect("memory storage does not fail");
        if honest {
            self.compare_table(slot);
        }
        let node = &mut self.nodes[slot];
        for delivery in &actions.deliver {
            // A tree handed on for receipts must be the batch's: a proof cut
            // from another tree would not verify for the client.
            if let Some(tree) = &delivery.tree {
                if tree.root() != delivery.block.block.batch_digest {
                    self.failure.get_or_insert(Violation::new(
                        "receipts",
                        format!(
                            "{} delivered height {} with another batch's Merkle tree",
                            node.id,
                            delivery.block.height()
                        ),
                    ));
                }
            }
            let height = delivery.block.height();
            if honest {
                self.honest_log
                    .digests
                    .entry(height)
                    .or_insert(delivery.block.block.batch_digest);
            }
            for (index, request) in delivery.block.block.batch.requests.iter().enumerate() {
                if delivery.duplicates.contains(&(index as u32)) {
                    continue;
                }
                let key = request.key();
                if honest {
                    self.honest_log.executed_at.entry(key).or_insert(height);
                }
                if node.executed.insert(key) && honest {
                    self.executed_somewhere.insert(key);
                    self.honest_tally.count(key, self.now);
                }
            }
        }
        // A jump skips blocks: what the honest replicas executed at or
        // below its checkpoint counts as done on this replica (its table
        // holds what matters of it; the liveness check asks no more).
        let jumped_to = actions.persist.iter().find_map(|record| match record {
            Record::Jump(jump) => Some(jump.checkpoint.seq()),
            _ => None,
        });
        if let (Some(to), true) = (jumped_to, honest) {
            self.jumps += 1;
            let skipped: Vec<RequestKey> = self
                .honest_log
                .executed_at
                .iter()
                .filter(|(_, &at)| at <= to)
                .map(|(&key, _)| key)
                .collect();
            let node = &mut self.nodes[slot];
            for key in skipped {
                if node.executed.insert(key) {
                    self.honest_tally.count(key, self.now);
                }
            }
        }
        let node = &mut self.nodes[slot];
        let (emissions, replies): (Vec<Emission>, Vec<ClientReply>) = match node.adversary.as_mut()
        {
            Some(adversary) => {
                let replies = adversary.tamper_replies(actions.replies);
                (adversary.tamper(actions.send), replies)
            }
            None => (
                actions
                    .send
                    .into_iter()
                    .filter_map(|outgoing| {
                        Some(Emission {
                            delay: Duration::ZERO,
                            to: outgoing.to,
                            bytes: codec::encode(&outgoing.message).ok()?,
                        })
                    })
                    .collect(),
                actions.replies,
            ),
        };
        if let Some(CrashPoint::AfterWrite { sent }) = crash {
            let count = (emissions.len() as f64 * sent) as usize;
            for emission in emissions.into_iter().take(count) {
                self.transmit(slot, emission);
            }
            self.stop(slot);
            return;
        }
        for emission in emissions {
            self.transmit(slot, emission);
        }
        for reply in replies {
            self.client_receives(slot, reply);
        }
        if let Some(deadline) = deadline {
            let at = deadline.max(self.now + MIN_TIMER_STEP);
            let node = &mut self.nodes[slot];
            if node.timer_at != Some(at) {
                node.timer_at = Some(at);
                node.timer_generation += 1;
                let generation = node.timer_generation;
                self.schedule(at, Event::Timer { slot, generation });
            }
        }
    }

    /// A client gets a reply from the node it submitted through and, as the
    /// client library does, believes a commit only with a receipt that
    /// verifies: the block the node holds at the height it names, the
    /// request's Merkle proof in it and the certificate.
    fn client_receives(&mut self, slot: Slot, reply: ClientReply) {
        let ReplyOutcome::Committed { height } = reply.outcome else {
            return;
        };
        let key = RequestKey {
            client: reply.client,
            request_id: reply.request_id,
        };
        let Some(request) = self.submitted.get(&key) else {
            return;
        };
        let block = self.nodes[slot].storage.block(height);
        if self.config.break_receipts {
            // A client that takes a node's word for it.
            let digest = block.map_or(Digest::ZERO, |b| b.block.batch_digest);
            self.clients.accepted.entry(key).or_insert((height, digest));
            return;
        }
        let receipt = block.and_then(|block| {
            let index = block
                .block
                .batch
                .requests
                .iter()
                .position(|r| r.request == request.request)?;
            let tree = MerkleTree::new(&block.block.batch);
            let copy = block.block.batch.requests.get(index)?.clone();
            Some((Receipt::new(&block, &tree, index, key.request_id), copy))
        });
        let lifetime = self.config.protocol.request_lifetime;
        // The copy in the block (connection-authenticated: the one granted to
        // whichever node vouched for it) must be this client's request.
        match receipt.map(|(r, copy)| {
            if copy.request != request.request {
                return Err(());
            }
            r.verify(&self.committee, lifetime, &copy).map_err(|_| ())
        }) {
            Some(Ok(committed)) => {
                self.clients.verified += 1;
                self.clients
                    .accepted
                    .entry(key)
                    .or_insert((committed.height, committed.batch_digest));
            }
            _ => self.clients.refused += 1,
        }
    }

    fn transmit(&mut self, from: Slot, emission: Emission) {
        let sender = self.nodes[from].id;
        let targets: Vec<Slot> = (0..self.nodes.len())
            .filter(|&slot| {
                let id = self.nodes[slot].id;
                id != sender
                    && match emission.to {
                        Destination::To(peer) => id == peer,
                        Destination::AllOthers => true,
                    }
            })
            .collect();
        let bytes = Arc::new(emission.bytes);
        for to in targets {
            if self.blocked.contains(&(from, to)) || self.rng.gen_bool(self.drop_probability) {
                continue;
            }
            let copies = if self.rng.gen_bool(self.duplicate_probability) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self.network_delay() + emission.delay;
                self.schedule(
                    self.now + delay,
                    Event::Deliver {
                        from,
                        to,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    fn network_delay(&mut self) -> Duration {
        let base = Duration::from_micros(self.rng.gen_range(200..5_000));
        if self.config.faults.reorder && !self.healed && self.rng.gen_bool(0.1) {
            base + Duration::from_millis(self.rng.gen_range(5..150))
        } else {
            base
        }
    }
}

/// The transaction a request carries (`tx-INDEX`).
fn tx_index(request: &SignedRequest) -> usize {
    std::str::from_utf8(&request.request.payload)
        .ok()
        .and_then(|text| text.strip_prefix("tx-"))
        .and_then(|index| index.parse().ok())
        .unwrap_or(0)
}

fn choose_byzantine(
    spec: &ByzantineSpec,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> BTreeMap<NodeId, Behaviour> {
    match spec {
        ByzantineSpec::Fixed(list) => list.iter().cloned().collect(),
        ByzantineSpec::Random { count, behaviour } => {
            let mut ids: Vec<NodeId> = (0..n).map(|i| NodeId(i as u16)).collect();
            ids.shuffle(rng);
            ids.into_iter()
                .take(*count)
                .map(|id| (id, behaviour.clone()))
                .collect()
        }
    }
}
