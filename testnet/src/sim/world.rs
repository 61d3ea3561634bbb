//! The simulated world: replicas, network, clients and the event loop.

use super::check::{self, Violation};
use super::verifier::CachingVerifier;
use super::{ByzantineSpec, SimConfig, SimReport};
use bftd_crypto::{DigestBuilder, Domain, KeyPair};
use bftd_protocol::byzantine::{Adversary, Behaviour, Emission};
use bftd_protocol::{
    codec, verify_message, verify_request, Committee, Destination, MemStorage, NodeId, Replica,
    ReplicaSetup, Request, RequestKey, SignedRequest, Storage, WireMessage,
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

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Arc<Vec<u8>>,
    },
    Timer {
        node: NodeId,
        generation: u64,
    },
    Submit {
        request: RequestKey,
        node: NodeId,
    },
    Retry,
    Crash(NodeId),
    Restart(NodeId),
    Partition(Vec<(NodeId, NodeId)>),
    EndPartition,
    Heal,
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
    pub replica: Option<Replica>,
    pub storage: MemStorage,
    pub adversary: Option<Adversary>,
    /// Fresh requests this replica executed (survives crashes: it mirrors
    /// storage).
    pub executed: BTreeSet<RequestKey>,
    timer_generation: u64,
    timer_at: Option<Duration>,
}

pub(super) struct World<'a> {
    pub config: &'a SimConfig,
    rng: ChaCha8Rng,
    now: Duration,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    pub committee: Committee,
    keys: Vec<KeyPair>,
    pub nodes: Vec<SimNode>,
    pub byzantine: BTreeMap<NodeId, Behaviour>,
    pub submitted: BTreeMap<RequestKey, SignedRequest>,
    executed_somewhere: BTreeSet<RequestKey>,
    drop_probability: f64,
    duplicate_probability: f64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    healed: bool,
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
        let colluders: Vec<NodeId> = byzantine
            .iter()
            .filter(|(_, b)| **b == Behaviour::Collude)
            .map(|(&id, _)| id)
            .collect();
        let mut nodes = Vec::with_capacity(config.n);
        for (index, key) in keys.iter().enumerate() {
            let id = NodeId(index as u16);
            let storage = MemStorage::new();
            let adversary = byzantine.get(&id).map(|behaviour| {
                Adversary::new(
                    behaviour.clone(),
                    id,
                    key.clone(),
                    committee.clone(),
                    colluders.clone(),
                    config.seed,
                )
            });
            nodes.push(SimNode {
                replica: None,
                storage,
                adversary,
                executed: BTreeSet::new(),
                timer_generation: 0,
                timer_at: None,
            });
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
            submitted: BTreeMap::new(),
            executed_somewhere: BTreeSet::new(),
            drop_probability,
            duplicate_probability,
            blocked: BTreeSet::new(),
            healed: false,
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

    fn setup(&self, id: NodeId) -> ReplicaSetup {
        ReplicaSetup {
            id,
            key: self.keys[id.index()].clone(),
            committee: self.committee.clone(),
            config: self.config.protocol.clone(),
            blocks: Arc::new(self.nodes[id.index()].storage.clone()),
        }
    }

    fn start(&mut self, id: NodeId) {
        let recovered = self.nodes[id.index()].storage.recover().unwrap_or_default();
        match Replica::new(self.setup(id), recovered, self.now) {
            Ok(mut replica) => {
                if self.config.break_quorum {
                    replica.break_commit_quorum_for_testing();
                }
                self.nodes[id.index()].replica = Some(replica);
                self.after_step(id);
            }
            Err(error) => {
                self.failure.get_or_insert(Violation::new(
                    "restart",
                    format!("{id} could not restart from its storage: {error}"),
                ));
            }
        }
    }

    fn schedule_workload(&mut self) {
        let clients: Vec<KeyPair> = (0..self.config.clients)
            .map(|_| KeyPair::generate(&mut self.rng))
            .collect();
        let window = self
            .config
            .fault_phase
            .mul_f64(0.8)
            .max(Duration::from_millis(1));
        for index in 0..self.config.requests {
            let client = &clients[index % clients.len()];
            let request = Request {
                client: client.public(),
                request_id: (index / clients.len()) as u64 + 1,
                // Valid for the whole run: a run never gets near this
                // height, and the lifetime allows it from height 0.
                valid_until: bftd_protocol::SeqNum(self.config.protocol.request_lifetime),
                payload: format!("tx-{index}").into_bytes(),
            };
            let signed = SignedRequest::sign(request, client).expect("small request");
            let key = signed.key();
            self.submitted.insert(key, signed);
            let at = Duration::from_micros(self.rng.gen_range(0..window.as_micros() as u64));
            let node = NodeId(self.rng.gen_range(0..self.config.n) as u16);
            self.schedule(at, Event::Submit { request: key, node });
        }
    }

    fn schedule_faults(&mut self) {
        let phase = self.config.fault_phase.as_micros() as u64;
        if self.config.faults.partition {
            for _ in 0..self.rng.gen_range(0..3) {
                let start = Duration::from_micros(self.rng.gen_range(0..phase));
                let length = Duration::from_millis(self.rng.gen_range(100..1500));
                let mut ids: Vec<NodeId> = (0..self.config.n).map(|i| NodeId(i as u16)).collect();
                ids.shuffle(&mut self.rng);
                let cut = self.rng.gen_range(1..self.config.n.max(2));
                let (a, b) = ids.split_at(cut.min(ids.len()));
                let one_way = self.rng.gen_bool(0.3);
                let mut blocked = Vec::new();
                for &x in a {
                    for &y in b {
                        blocked.push((x, y));
                        if !one_way {
                            blocked.push((y, x));
                        }
                    }
                }
                self.schedule(start, Event::Partition(blocked));
                self.schedule(start + length, Event::EndPartition);
            }
        }
        if self.config.faults.crash {
            let honest: Vec<NodeId> = self.honest().collect();
            for _ in 0..self.rng.gen_range(0..4) {
                let Some(&victim) = honest.choose(&mut self.rng) else {
                    break;
                };
                let start = Duration::from_micros(self.rng.gen_range(0..phase));
                let down = Duration::from_millis(self.rng.gen_range(50..2000));
                self.schedule(start, Event::Crash(victim));
                self.schedule(start + down, Event::Restart(victim));
            }
        }
        self.schedule(self.config.fault_phase, Event::Heal);
        self.schedule(RETRY_INTERVAL, Event::Retry);
    }

    pub fn run(mut self) -> SimReport {
        self.schedule_workload();
        self.schedule_faults();
        for index in 0..self.config.n {
            self.start(NodeId(index as u16));
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
        let honest: Vec<NodeId> = self.honest().collect();
        let heights: Vec<u64> = honest
            .iter()
            .map(|id| bftd_protocol::BlockSource::last_height(&self.nodes[id.index()].storage).0)
            .collect();
        let replicas: Vec<&Replica> = honest
            .iter()
            .filter_map(|id| self.nodes[id.index()].replica.as_ref())
            .collect();
        let replica_lines = (0..self.config.n)
            .map(|i| {
                let node = &self.nodes[i];
                let role = self
                    .byzantine
                    .get(&NodeId(i as u16))
                    .map_or("honest".to_string(), |b| b.to_string());
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
                .map(|(id, b)| format!("{id}={b}"))
                .collect(),
            violation,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, bytes } => {
                self.trace
                    .update(&[1, from.0 as u8, to.0 as u8])
                    .update(&bytes);
                self.deliver(from, to, &bytes);
            }
            Event::Timer { node, generation } => {
                let state = &mut self.nodes[node.index()];
                if state.timer_generation != generation {
                    return;
                }
                state.timer_at = None;
                self.trace.update(&[2, node.0 as u8]);
                if let Some(replica) = state.replica.as_mut() {
                    replica.handle_timeout(self.now);
                    self.after_step(node);
                }
            }
            Event::Submit { request, node } => {
                self.trace.update(&[3, node.0 as u8]);
                self.submit(request, node);
            }
            Event::Retry => {
                self.retry();
                self.schedule(self.now + RETRY_INTERVAL, Event::Retry);
            }
            Event::Crash(node) => {
                self.trace.update(&[4, node.0 as u8]);
                if !self.healed {
                    let state = &mut self.nodes[node.index()];
                    state.replica = None;
                    state.timer_generation += 1;
                    state.timer_at = None;
                }
            }
            Event::Restart(node) => {
                self.trace.update(&[5, node.0 as u8]);
                if self.nodes[node.index()].replica.is_none() {
                    self.start(node);
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
                let down: Vec<NodeId> = (0..self.config.n)
                    .map(|i| NodeId(i as u16))
                    .filter(|id| self.nodes[id.index()].replica.is_none())
                    .collect();
                for node in down {
                    self.start(node);
                }
            }
        }
    }

    fn submit(&mut self, key: RequestKey, node: NodeId) {
        let Some(request) = self.submitted.get(&key).cloned() else {
            return;
        };
        let mode = self.config.protocol.request_mode;
        let Ok(verified) = verify_request(request, &self.committee, mode, &mut self.verifier)
        else {
            return;
        };
        let state = &mut self.nodes[node.index()];
        if let Some(adversary) = state.adversary.as_mut() {
            if !adversary.admit_request(self.now, &verified) {
                return;
            }
        }
        if let Some(replica) = state.replica.as_mut() {
            replica.handle_request(self.now, verified, true);
            self.after_step(node);
        }
    }

    /// Clients re-submit requests not yet executed anywhere to a random
    /// replica, as a real client does when no valid receipt arrives; once
    /// healed, also check liveness.
    fn retry(&mut self) {
        let missing: Vec<RequestKey> = self
            .submitted
            .keys()
            .filter(|key| !self.executed_somewhere.contains(key))
            .copied()
            .collect();
        for key in missing {
            let node = NodeId(self.rng.gen_range(0..self.config.n) as u16);
            self.schedule(self.now, Event::Submit { request: key, node });
        }
        if self.healed && self.live_at.is_none() {
            let everyone = self
                .honest()
                .collect::<Vec<_>>()
                .into_iter()
                .all(|id| self.nodes[id.index()].executed.len() >= self.submitted.len());
            if everyone {
                self.live_at = Some(self.now);
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        if self.nodes[to.index()].replica.is_none() {
            return;
        }
        self.messages += 1;
        let Ok(message) = codec::decode::<WireMessage>(bytes) else {
            return;
        };
        let mode = self.config.protocol.request_mode;
        let Ok(verified) = verify_message(message, &self.committee, mode, &mut self.verifier)
        else {
            return;
        };
        let node = &mut self.nodes[to.index()];
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
            replica.handle_message(self.now, from, verified);
            self.after_step(to);
        }
    }

    fn after_step(&mut self, id: NodeId) {
        let honest = !self.byzantine.contains_key(&id);
        let node = &mut self.nodes[id.index()];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let actions = replica.drain_actions();
        let deadline = replica.next_deadline();
        node.storage
            .apply(&actions.persist, &actions.deliver)
            .expect("memory storage does not fail");
        for delivery in &actions.deliver {
            // A tree handed on for receipts must be the batch's: a proof cut
            // from another tree would not verify for the client.
            if let Some(tree) = &delivery.tree {
                if tree.root() != delivery.block.block.batch_digest {
                    self.failure.get_or_insert(Violation::new(
                        "receipts",
                        format!(
                            "{id} delivered height {} with another batch's Merkle tree",
                            delivery.block.height()
                        ),
                    ));
                }
            }
            for (index, request) in delivery.block.block.batch.requests.iter().enumerate() {
                if !delivery.duplicates.contains(&(index as u32)) {
                    node.executed.insert(request.key());
                    if honest {
                        self.executed_somewhere.insert(request.key());
                    }
                }
            }
        }
        let emissions: Vec<Emission> = match node.adversary.as_mut() {
            Some(adversary) => {
                adversary.tamper_replies(actions.replies);
                adversary.tamper(actions.send)
            }
            None => actions
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
        };
        for emission in emissions {
            self.transmit(id, emission);
        }
        if let Some(deadline) = deadline {
            let at = deadline.max(self.now + MIN_TIMER_STEP);
            let node = &mut self.nodes[id.index()];
            if node.timer_at != Some(at) {
                node.timer_at = Some(at);
                node.timer_generation += 1;
                let generation = node.timer_generation;
                self.schedule(
                    at,
                    Event::Timer {
                        node: id,
                        generation,
                    },
                );
            }
        }
    }

    fn transmit(&mut self, from: NodeId, emission: Emission) {
        let targets: Vec<NodeId> = match emission.to {
            Destination::To(peer) => vec![peer],
            Destination::AllOthers => (0..self.config.n)
                .map(|i| NodeId(i as u16))
                .filter(|&peer| peer != from)
                .collect(),
        };
        let bytes = Arc::new(emission.bytes);
        for to in targets {
            if to.index() >= self.config.n || to == from {
                continue;
            }
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
