//! Byzantine behaviours, for testing only (cargo feature `byzantine`).
//!
//! A byzantine replica runs the honest core unchanged; an [`Adversary`]
//! rewrites what the core emits before it reaches the network, and signs its
//! lies with the replica's own key. The honest code path has no byzantine
//! branches. The simulator and `bftd --byzantine` use this same module, so
//! what the simulator shows is what the testnet runs.

use crate::certificate::{PreparedCertificate, QuorumCertificate, Vote};
use crate::codec;
use crate::committee::Committee;
use crate::ids::{NodeId, SeqNum, View};
use crate::merkle::MerkleTree;
use crate::message::SignedRequest;
use crate::message::{
    Batch, Checkpoint, Commit, FetchBlocks, PrePrepare, Prepare, Signable, Signed, Status,
    ViewChange, WireMessage,
};
use crate::replica::{ClientReply, Destination, Outgoing, ReplyOutcome};
use crate::verify::Verified;
use bftd_crypto::{Digest, KeyPair, PublicKey, Signature};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// What a byzantine replica does to its honest core's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Sends nothing at all (a crash that keeps its connections).
    Silent,
    /// Sends conflicting pre-prepares (as primary) and conflicting votes to
    /// different halves of its peers.
    Equivocate,
    /// Breaks every signature it sends.
    BadSignature,
    /// Pre-prepares and votes name a wrong digest (validly signed).
    WrongDigest,
    /// Flips bytes of every message after signing.
    Corrupt,
    /// Re-sends old messages to random peers beside its honest traffic.
    Replay,
    /// View-changes carry a prepared certificate it does not have; as new
    /// primary, a new-view whose `O` does not follow from `V`.
    ForgeCertificate,
    /// Delays everything it sends.
    Slow(Duration),
    /// Beside honest traffic, sprays validly signed junk: votes for random
    /// slots and views, checkpoints, view-changes, status, fetches.
    Flood,
    /// Tells its clients wrong heights.
    LieToClients,
    /// Signs checkpoints of a chain it does not have.
    FakeCheckpoint,
    /// A seeded mix: each message gets one of the behaviours above.
    Random,
    /// Leaves one client's requests out of everything it orders or passes on
    /// (the first client whose request it sees).
    Censor,
    /// Lets at most one request per interval into its core, so as primary it
    /// proposes only tiny batches, slowly (`starve:MS`, default 250 ms).
    Starve(Duration),
    /// View-changes claim nothing prepared (validly signed).
    OmitPrepared,
    /// View-changes carry, for each sequence, the lowest-view prepared
    /// certificate it has seen (valid, but stale).
    StalePrepared,
    /// As new primary, builds its new-view from the 2f+1 valid view-changes
    /// that carry the least (fewest and oldest prepared certificates), with
    /// `O` computed correctly from them.
    WorstNewView,
    /// Never answers batch or block fetches.
    Withhold,
    /// As primary, adds to every batch it proposes up to three requests
    /// from earlier batches (most already executed), the same batch to
    /// every peer: honest replicas must skip each as a duplicate, and skip
    /// the same ones, whatever their at-most-once table went through
    /// (restarts, jumps past pruned history).
    Repropose,
    /// Several byzantine replicas fork the log together without talking:
    /// when one of them is primary, each derives the same split of the honest
    /// replicas from view and sequence and shows each half a different batch.
    /// Needs more than f colluders to succeed.
    Collude,
}

impl Behaviour {
    /// The names accepted by [`Behaviour::from_str`].
    pub const NAMES: &'static str = "silent, equivocate, bad-signature, wrong-digest, corrupt, \
        replay, forge-certificate, slow:MS, flood, lie-to-clients, fake-checkpoint, censor, \
        starve[:MS], omit-prepared, stale-prepared, worst-new-view, withhold, repropose, random, \
        collude";

    /// Every behaviour, with `slow` at 50 ms.
    pub fn all() -> Vec<Behaviour> {
        vec![
            Behaviour::Silent,
            Behaviour::Equivocate,
            Behaviour::BadSignature,
            Behaviour::WrongDigest,
            Behaviour::Corrupt,
            Behaviour::Replay,
            Behaviour::ForgeCertificate,
            Behaviour::Slow(Duration::from_millis(50)),
            Behaviour::Flood,
            Behaviour::LieToClients,
            Behaviour::FakeCheckpoint,
            Behaviour::Censor,
            Behaviour::Starve(DEFAULT_STARVE_PACE),
            Behaviour::OmitPrepared,
            Behaviour::StalePrepared,
            Behaviour::WorstNewView,
            Behaviour::Withhold,
            Behaviour::Repropose,
            Behaviour::Random,
        ]
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Silent => f.write_str("silent"),
            Behaviour::Equivocate => f.write_str("equivocate"),
            Behaviour::BadSignature => f.write_str("bad-signature"),
            Behaviour::WrongDigest => f.write_str("wrong-digest"),
            Behaviour::Corrupt => f.write_str("corrupt"),
            Behaviour::Replay => f.write_str("replay"),
            Behaviour::ForgeCertificate => f.write_str("forge-certificate"),
            Behaviour::Slow(delay) => write!(f, "slow:{}", delay.as_millis()),
            Behaviour::Flood => f.write_str("flood"),
            Behaviour::LieToClients => f.write_str("lie-to-clients"),
            Behaviour::FakeCheckpoint => f.write_str("fake-checkpoint"),
            Behaviour::Censor => f.write_str("censor"),
            Behaviour::Starve(pace) => write!(f, "starve:{}", pace.as_millis()),
            Behaviour::OmitPrepared => f.write_str("omit-prepared"),
            Behaviour::StalePrepared => f.write_str("stale-prepared"),
            Behaviour::WorstNewView => f.write_str("worst-new-view"),
            Behaviour::Withhold => f.write_str("withhold"),
            Behaviour::Repropose => f.write_str("repropose"),
            Behaviour::Random => f.write_str("random"),
            Behaviour::Collude => f.write_str("collude"),
        }
    }
}

/// An unknown behaviour name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown byzantine behaviour; expected one of: {}", Behaviour::NAMES)]
pub struct UnknownBehaviour;

impl FromStr for Behaviour {
    type Err = UnknownBehaviour;
    fn from_str(text: &str) -> Result<Behaviour, UnknownBehaviour> {
        Ok(match text.trim() {
            "silent" => Behaviour::Silent,
            "equivocate" => Behaviour::Equivocate,
            "bad-signature" => Behaviour::BadSignature,
            "wrong-digest" => Behaviour::WrongDigest,
            "corrupt" => Behaviour::Corrupt,
            "replay" => Behaviour::Replay,
            "forge-certificate" => Behaviour::ForgeCertificate,
            "flood" => Behaviour::Flood,
            "lie-to-clients" => Behaviour::LieToClients,
            "fake-checkpoint" => Behaviour::FakeCheckpoint,
            "censor" => Behaviour::Censor,
            "starve" => Behaviour::Starve(DEFAULT_STARVE_PACE),
            "omit-prepared" => Behaviour::OmitPrepared,
            "stale-prepared" => Behaviour::StalePrepared,
            "worst-new-view" => Behaviour::WorstNewView,
            "withhold" => Behaviour::Withhold,
            "repropose" => Behaviour::Repropose,
            "random" => Behaviour::Random,
            "collude" => Behaviour::Collude,
            other => {
                let millis = |prefix: &str| {
                    other
                        .strip_prefix(prefix)
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map(Duration::from_millis)
                };
                if let Some(delay) = millis("slow:") {
                    Behaviour::Slow(delay)
                } else if let Some(pace) = millis("starve:") {
                    Behaviour::Starve(pace)
                } else {
                    return Err(UnknownBehaviour);
                }
            }
        })
    }
}

/// A message ready for the wire, possibly delayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emission {
    /// How long to hold it before sending.
    pub delay: Duration,
    /// Where to.
    pub to: Destination,
    /// The encoded (and possibly mangled) message.
    pub bytes: Vec<u8>,
}

/// SplitMix64: a tiny deterministic generator, so this crate needs no RNG
/// dependency and runs replay exactly.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next() % bound
        }
    }

    fn digest(&mut self) -> Digest {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        Digest(bytes)
    }
}

/// Most old messages kept for replay, and batches remembered for collusion.
const HISTORY: usize = 256;
/// Requests `repropose` picks from: the last few batches' worth.
const RECENT_REQUESTS: usize = 32;
/// `starve` without an interval.
const DEFAULT_STARVE_PACE: Duration = Duration::from_millis(250);
/// Views whose view-changes the view-change adversaries remember.
const VIEWS_REMEMBERED: usize = 4;
/// Junk messages `flood` adds per honest message sent: spam scales with the
/// replica's real traffic, as the network would bound it.
const FLOOD_PER_MESSAGE: usize = 4;

/// Rewrites an honest replica's output according to a [`Behaviour`].
pub struct Adversary {
    behaviour: Behaviour,
    id: NodeId,
    key: KeyPair,
    committee: Committee,
    colluders: Vec<NodeId>,
    rng: Rng,
    history: VecDeque<WireMessage>,
    batches: BTreeMap<Digest, Arc<Batch>>,
    /// `censor`'s victim: the first client seen.
    victim: Option<PublicKey>,
    /// `starve`: when the next request may enter the core.
    next_admission: Duration,
    /// The lowest-view prepared certificate seen per sequence (`stale-prepared`).
    old_prepared: BTreeMap<SeqNum, PreparedCertificate>,
    /// View-changes seen, per view and signer (`worst-new-view`).
    view_changes: BTreeMap<View, BTreeMap<NodeId, Signed<ViewChange>>>,
    /// Requests of batches seen (`repropose`), newest last.
    proposed: VecDeque<SignedRequest>,
    /// The pre-prepare sent for each slot (`repropose`): a resend is the
    /// same message, not a second version.
    reproposals: BTreeMap<(View, SeqNum), WireMessage>,
    /// The replica's consensus settings, learnt from its own status
    /// messages, so `flood`'s statuses are not dismissed for them.
    settings: crate::config::ConsensusSettings,
}

impl fmt::Debug for Adversary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Adversary({} as {})", self.behaviour, self.id)
    }
}

impl Adversary {
    /// An adversary for replica `id`, signing with its `key`. `colluders`
    /// lists every replica running [`Behaviour::Collude`] (this one included).
    pub fn new(
        behaviour: Behaviour,
        id: NodeId,
        key: KeyPair,
        committee: Committee,
        colluders: Vec<NodeId>,
        seed: u64,
    ) -> Adversary {
        Adversary {
            behaviour,
            id,
            key,
            committee,
            colluders,
            rng: Rng(seed ^ (u64::from(id.0) << 48) ^ 0xB1F7),
            history: VecDeque::new(),
            batches: BTreeMap::new(),
            victim: None,
            next_admission: Duration::ZERO,
            old_prepared: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            proposed: VecDeque::new(),
            reproposals: BTreeMap::new(),
            settings: crate::config::ConsensusSettings::default(),
        }
    }

    /// The behaviour.
    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    /// Learns from what the replica receives: colluders the batches of
    /// pre-prepares, view-change adversaries the view-changes and prepared
    /// certificates of others.
    pub fn observe(&mut self, message: &WireMessage) {
        match message {
            WireMessage::PrePrepare {
                pre_prepare, batch, ..
            } if self.behaviour == Behaviour::Collude => {
                self.remember_batch(pre_prepare.value.digest, batch.clone());
            }
            WireMessage::PrePrepare { batch, .. }
                if matches!(self.behaviour, Behaviour::Repropose | Behaviour::Random) =>
            {
                self.remember_requests(batch);
            }
            WireMessage::ViewChange(view_change) => self.remember_view_change(view_change),
            WireMessage::NewView(new_view) => {
                for view_change in &new_view.value.view_changes {
                    self.remember_view_change(view_change);
                }
            }
            _ => {}
        }
    }

    fn remember_view_change(&mut self, view_change: &Signed<ViewChange>) {
        if !matches!(
            self.behaviour,
            Behaviour::StalePrepared | Behaviour::WorstNewView | Behaviour::Random
        ) {
            return;
        }
        for prepared in &view_change.value.prepared {
            let keep = self
                .old_prepared
                .get(&prepared.seq())
                .is_none_or(|held| prepared.view() < held.view());
            if keep {
                self.old_prepared.insert(prepared.seq(), prepared.clone());
            }
        }
        while self.old_prepared.len() > HISTORY {
            self.old_prepared.pop_first();
        }
        self.view_changes
            .entry(view_change.value.new_view)
            .or_default()
            .insert(view_change.signer, view_change.clone());
        while self.view_changes.len() > VIEWS_REMEMBERED {
            self.view_changes.pop_first();
        }
    }

    /// What of a verified incoming message reaches the honest core: `censor`
    /// and `starve` drop requests from forwards before the core sees them.
    pub fn admit(
        &mut self,
        now: Duration,
        message: Verified<WireMessage>,
    ) -> Option<Verified<WireMessage>> {
        if !matches!(message.deref(), WireMessage::Forward(_)) {
            return Some(message);
        }
        let message = message.map(|message| match message {
            WireMessage::Forward(mut forward) => {
                let requests = std::mem::take(&mut forward.value.requests);
                forward.value.requests = requests
                    .into_iter()
                    .filter(|request| self.lets_in(now, request))
                    .collect();
                WireMessage::Forward(forward)
            }
            other => other,
        });
        match message.deref() {
            WireMessage::Forward(forward) if forward.value.requests.is_empty() => None,
            _ => Some(message),
        }
    }

    /// Whether a request from a client of this replica reaches its core.
    pub fn admit_request(&mut self, now: Duration, request: &SignedRequest) -> bool {
        self.lets_in(now, request)
    }

    fn lets_in(&mut self, now: Duration, request: &SignedRequest) -> bool {
        let censor = match self.behaviour {
            Behaviour::Censor => true,
            // Now and then, so random runs meet a censor too.
            Behaviour::Random => self.rng.below(4) == 0,
            _ => false,
        };
        if censor {
            let victim = *self.victim.get_or_insert(request.request.client);
            return request.request.client != victim;
        }
        if let Behaviour::Starve(pace) = self.behaviour {
            if now < self.next_admission {
                return false;
            }
            self.next_admission = now + pace;
        }
        true
    }

    fn remember_requests(&mut self, batch: &Batch) {
        for request in &batch.requests {
            self.proposed.push_back(request.clone());
        }
        while self.proposed.len() > HISTORY {
            self.proposed.pop_front();
        }
    }

    /// Its own pre-prepare with up to three requests of earlier batches
    /// added (within the batch limits), re-signed; the same one for every
    /// send of the slot.
    fn repropose(&mut self, message: &WireMessage) -> Option<WireMessage> {
        let WireMessage::PrePrepare {
            pre_prepare, batch, ..
        } = message
        else {
            return None;
        };
        let slot = (pre_prepare.value.view, pre_prepare.value.seq);
        if let Some(sent) = self.reproposals.get(&slot) {
            return Some(sent.clone());
        }
        let room = self
            .settings
            .max_batch_requests
            .saturating_sub(batch.requests.len());
        let count = (1 + self.rng.below(3) as usize)
            .min(room)
            .min(self.proposed.len());
        let mut requests = batch.requests.clone();
        // From the most recent batches: requests still inside their
        // lifetime, which only the at-most-once table (not expiry) skips.
        let recent = self.proposed.len().min(RECENT_REQUESTS);
        for _ in 0..count {
            let back = self.rng.below(recent as u64) as usize;
            let index = self.proposed.len() - 1 - back;
            if let Some(old) = self.proposed.get(index) {
                requests.push(old.clone());
            }
        }
        self.remember_requests(batch);
        let reproposed = Batch { requests };
        let digest = MerkleTree::new(&reproposed).root();
        let sent = self.with_digest(message, digest, Some(Arc::new(reproposed)))?;
        self.reproposals.insert(slot, sent.clone());
        while self.reproposals.len() > VIEWS_REMEMBERED * 64 {
            self.reproposals.pop_first();
        }
        Some(sent)
    }

    fn remember_batch(&mut self, digest: Digest, batch: Arc<Batch>) {
        self.batches.insert(digest, batch);
        while self.batches.len() > HISTORY {
            self.batches.pop_first();
        }
    }

    /// Rewrites the messages the honest core wants sent.
    pub fn tamper(&mut self, sends: Vec<Outgoing>) -> Vec<Emission> {
        let mut out = Vec::new();
        let count = sends.len();
        for outgoing in sends {
            if let WireMessage::Status(status) = &outgoing.message {
                self.settings = status.value.settings;
            }
            let behaviour = match &self.behaviour {
                Behaviour::Random => self.pick_random(),
                other => other.clone(),
            };
            self.apply(&behaviour, outgoing, &mut out);
        }
        if self.behaviour == Behaviour::Flood {
            self.flood(count * FLOOD_PER_MESSAGE, &mut out);
        }
        out
    }

    /// Rewrites the replies to local clients.
    pub fn tamper_replies(&mut self, replies: Vec<ClientReply>) -> Vec<ClientReply> {
        match self.behaviour {
            Behaviour::Silent => Vec::new(),
            Behaviour::LieToClients => replies
                .into_iter()
                .map(|mut reply| {
                    reply.outcome = match reply.outcome {
                        ReplyOutcome::Committed { height } => ReplyOutcome::Committed {
                            height: height.plus(1 + self.rng.below(5)),
                        },
                        ReplyOutcome::Rejected(_) => ReplyOutcome::Committed {
                            height: SeqNum(1 + self.rng.below(100)),
                        },
                    };
                    reply
                })
                .collect(),
            _ => replies,
        }
    }

    fn pick_random(&mut self) -> Behaviour {
        let choices = [
            Behaviour::Silent,
            Behaviour::Equivocate,
            Behaviour::BadSignature,
            Behaviour::WrongDigest,
            Behaviour::Corrupt,
            Behaviour::Replay,
            Behaviour::ForgeCertificate,
            Behaviour::Slow(Duration::from_millis(1 + self.rng.below(40))),
            Behaviour::FakeCheckpoint,
            Behaviour::OmitPrepared,
            Behaviour::StalePrepared,
            Behaviour::WorstNewView,
            Behaviour::Withhold,
            Behaviour::Repropose,
            // Honest now and then, so the mix includes well-timed truths.
            Behaviour::LieToClients,
        ];
        let index = self.rng.below(choices.len() as u64) as usize;
        choices.get(index).cloned().unwrap_or(Behaviour::Silent)
    }

    fn emit(
        &mut self,
        out: &mut Vec<Emission>,
        delay: Duration,
        to: Destination,
        message: &WireMessage,
    ) {
        if let Ok(bytes) = codec::encode(message) {
            out.push(Emission { delay, to, bytes });
        }
    }

    fn sign<T: Signable>(&self, value: T) -> Option<Signed<T>> {
        Signed::sign(self.id, value, &self.key).ok()
    }

    /// Peers the message goes to, expanded (for per-peer lies).
    fn targets(&self, to: Destination) -> Vec<NodeId> {
        match to {
            Destination::To(peer) => vec![peer],
            Destination::AllOthers => self.committee.ids().filter(|&p| p != self.id).collect(),
        }
    }

    fn apply(&mut self, behaviour: &Behaviour, outgoing: Outgoing, out: &mut Vec<Emission>) {
        let Outgoing { to, message } = outgoing;
        let now = Duration::ZERO;
        match behaviour {
            Behaviour::Silent => {}
            Behaviour::Slow(delay) => self.emit(out, *delay, to, &message),
            Behaviour::BadSignature => {
                let broken = break_signature(message, &mut self.rng);
                self.emit(out, now, to, &broken);
            }
            Behaviour::Corrupt => {
                if let Ok(mut bytes) = codec::encode(&message) {
                    let flips = 1 + self.rng.below(3);
                    for _ in 0..flips {
                        let index = self.rng.below(bytes.len() as u64) as usize;
                        if let Some(byte) = bytes.get_mut(index) {
                            *byte ^= 1 << self.rng.below(8);
                        }
                    }
                    out.push(Emission {
                        delay: now,
                        to,
                        bytes,
                    });
                }
            }
            Behaviour::WrongDigest => {
                let digest = self.rng.digest();
                let message = self.with_digest(&message, digest, None).unwrap_or(message);
                self.emit(out, now, to, &message);
            }
            Behaviour::Equivocate => self.equivocate(to, message, out),
            Behaviour::Replay => {
                self.emit(out, now, to, &message);
                self.history.push_back(message);
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
                for _ in 0..1 + self.rng.below(3) {
                    let index = self.rng.below(self.history.len() as u64) as usize;
                    if let Some(old) = self.history.get(index).cloned() {
                        let peer = self.random_peer();
                        self.emit(out, now, Destination::To(peer), &old);
                    }
                }
            }
            Behaviour::ForgeCertificate => {
                let forged = self.forge(&message).unwrap_or(message);
                self.emit(out, now, to, &forged);
            }
            Behaviour::FakeCheckpoint => {
                let block_hash = self.rng.digest();
                let message = match &message {
                    WireMessage::Checkpoint(cp) => self
                        .sign(Checkpoint {
                            seq: cp.value.seq,
                            block_hash,
                        })
                        .map(WireMessage::Checkpoint)
                        .unwrap_or(message),
                    _ => message,
                };
                self.emit(out, now, to, &message);
            }
            Behaviour::Collude => self.collude(to, message, out),
            Behaviour::OmitPrepared | Behaviour::StalePrepared => {
                if let WireMessage::ViewChange(view_change) = &message {
                    self.remember_view_change(view_change);
                }
                let message = self
                    .doctor_view_change(behaviour, &message)
                    .unwrap_or(message);
                self.emit(out, now, to, &message);
            }
            Behaviour::WorstNewView => {
                let message = self.worst_new_view(&message).unwrap_or(message);
                self.emit(out, now, to, &message);
            }
            Behaviour::Withhold => {
                if !matches!(message, WireMessage::Batch(_) | WireMessage::Blocks(_)) {
                    self.emit(out, now, to, &message);
                }
            }
            Behaviour::Repropose => {
                let message = self.repropose(&message).unwrap_or(message);
                self.emit(out, now, to, &message);
            }
            Behaviour::Flood
            | Behaviour::LieToClients
            | Behaviour::Random
            | Behaviour::Censor
            | Behaviour::Starve(_) => self.emit(out, now, to, &message),
        }
    }

    fn random_peer(&mut self) -> NodeId {
        let n = self.committee.n() as u64;
        let mut peer = NodeId(self.rng.below(n) as u16);
        if peer == self.id {
            peer = NodeId(((u64::from(peer.0) + 1) % n) as u16);
        }
        peer
    }

    /// The same message with another digest, re-signed (pre-prepares get
    /// `batch` if given, else keep theirs and so mismatch the digest).
    fn with_digest(
        &self,
        message: &WireMessage,
        digest: Digest,
        batch: Option<Arc<Batch>>,
    ) -> Option<WireMessage> {
        Some(match message {
            WireMessage::PrePrepare {
                pre_prepare,
                batch: original,
                vouches,
            } => WireMessage::PrePrepare {
                pre_prepare: self.sign(PrePrepare {
                    digest,
                    ..pre_prepare.value
                })?,
                batch: batch.unwrap_or_else(|| original.clone()),
                // Another batch under the same vouches: refused in
                // connection-authenticated clusters, where no replica
                // vouched for it.
                vouches: vouches.clone(),
            },
            WireMessage::Prepare(p) => {
                WireMessage::Prepare(self.sign(Prepare { digest, ..p.value })?)
            }
            WireMessage::Commit(c) => WireMessage::Commit(self.sign(Commit { digest, ..c.value })?),
            _ => return None,
        })
    }

    /// Conflicting versions to the two halves of the peers.
    fn equivocate(&mut self, to: Destination, message: WireMessage, out: &mut Vec<Emission>) {
        let alternative = match &message {
            WireMessage::PrePrepare { batch, .. } => {
                let other = fork_batch(batch);
                let digest = MerkleTree::new(&other).root();
                self.with_digest(&message, digest, Some(Arc::new(other)))
            }
            WireMessage::Prepare(_) | WireMessage::Commit(_) => {
                let digest = self.rng.digest();
                self.with_digest(&message, digest, None)
            }
            _ => None,
        };
        let Some(alternative) = alternative else {
            self.emit(out, Duration::ZERO, to, &message);
            return;
        };
        for (index, peer) in self.targets(to).into_iter().enumerate() {
            let version = if index % 2 == 0 {
                &message
            } else {
                &alternative
            };
            self.emit(out, Duration::ZERO, Destination::To(peer), version);
        }
    }

    /// A view-change with a prepared certificate this replica does not have
    /// (votes "from" others carrying its own signature), or a new-view whose
    /// re-proposals do not follow from its view-changes.
    fn forge(&mut self, message: &WireMessage) -> Option<WireMessage> {
        match message {
            WireMessage::ViewChange(vc) => {
                let mut value = vc.value.clone();
                let low = value.checkpoint.seq();
                let seq = value.prepared.last().map_or(low.next(), |p| p.seq().next());
                let view = View(value.new_view.0.saturating_sub(1));
                let digest = self.rng.digest();
                let pre_prepare = Signed {
                    signer: self.committee.primary(view),
                    value: PrePrepare { view, seq, digest },
                    signature: self.key.sign(PrePrepare::DOMAIN, &[]),
                };
                let fake = self.key.sign(Prepare::DOMAIN, &[]);
                let votes = self
                    .committee
                    .ids()
                    .filter(|&id| id != pre_prepare.signer)
                    .take(2 * self.committee.f())
                    .map(|signer| Vote {
                        signer,
                        signature: fake,
                    })
                    .collect();
                value.prepared.push(PreparedCertificate {
                    pre_prepare,
                    prepares: QuorumCertificate {
                        value: Prepare { view, seq, digest },
                        votes,
                    },
                });
                Some(WireMessage::ViewChange(self.sign_view_change(value)?))
            }
            WireMessage::NewView(nv) => {
                let mut value = nv.value.clone();
                let first = value.pre_prepares.first_mut()?;
                first.value.digest = self.rng.digest();
                *first = self.sign(first.value)?;
                Some(WireMessage::NewView(self.sign(value)?))
            }
            _ => None,
        }
    }

    fn sign_view_change(&self, value: ViewChange) -> Option<Signed<ViewChange>> {
        self.sign(value)
    }

    /// A view-change that lies by omission, validly signed: no prepared
    /// certificates at all, or for each sequence the oldest one seen.
    fn doctor_view_change(
        &self,
        behaviour: &Behaviour,
        message: &WireMessage,
    ) -> Option<WireMessage> {
        let WireMessage::ViewChange(view_change) = message else {
            return None;
        };
        let mut value = view_change.value.clone();
        match behaviour {
            Behaviour::OmitPrepared => value.prepared.clear(),
            _ => {
                for prepared in &mut value.prepared {
                    if let Some(old) = self.old_prepared.get(&prepared.seq()) {
                        if old.view() < prepared.view() {
                            *prepared = old.clone();
                        }
                    }
                }
            }
        }
        Some(WireMessage::ViewChange(self.sign_view_change(value)?))
    }

    /// As new primary: the new-view built from the 2f+1 valid view-changes
    /// that carry the least, with `O` recomputed from them and every
    /// pre-prepare signed: a valid new-view, chosen to lose as much as the
    /// rules allow.
    fn worst_new_view(&self, message: &WireMessage) -> Option<WireMessage> {
        let WireMessage::NewView(new_view) = message else {
            return None;
        };
        let view = new_view.value.view;
        let mut candidates: BTreeMap<NodeId, Signed<ViewChange>> =
            self.view_changes.get(&view).cloned().unwrap_or_default();
        for view_change in &new_view.value.view_changes {
            candidates
                .entry(view_change.signer)
                .or_insert_with(|| view_change.clone());
        }
        let window = u64::from(u16::MAX);
        let mut valid: Vec<Signed<ViewChange>> = candidates
            .into_values()
            .filter(|vc| {
                vc.value.new_view == view
                    && crate::replica::valid_view_change(&self.committee, window, &vc.value)
            })
            .collect();
        valid.sort_by_key(|vc| {
            let highest = vc.value.prepared.iter().map(|p| p.view()).max();
            (
                vc.value.prepared.len(),
                highest,
                vc.value.checkpoint.seq(),
                vc.signer,
            )
        });
        valid.truncate(self.committee.quorum());
        if valid.len() < self.committee.quorum() {
            return None;
        }
        let (_, reproposals) = crate::replica::compute_reproposals(&valid, false);
        let pre_prepares = reproposals
            .into_iter()
            .map(|(seq, digest)| self.sign(PrePrepare { view, seq, digest }))
            .collect::<Option<Vec<_>>>()?;
        let value = crate::message::NewView {
            view,
            view_changes: valid,
            pre_prepares,
        };
        Some(WireMessage::NewView(self.sign(value)?))
    }

    /// Valid-looking junk, signed with our key.
    fn flood(&mut self, count: usize, out: &mut Vec<Emission>) {
        for _ in 0..count {
            let view = View(self.rng.below(1 << 20));
            let seq = SeqNum(self.rng.below(1 << 20));
            let digest = self.rng.digest();
            let message = match self.rng.below(6) {
                0 => self
                    .sign(Prepare { view, seq, digest })
                    .map(WireMessage::Prepare),
                1 => self
                    .sign(Commit { view, seq, digest })
                    .map(WireMessage::Commit),
                2 => self
                    .sign(Checkpoint {
                        seq: SeqNum(seq.0 * 64),
                        block_hash: digest,
                    })
                    .map(WireMessage::Checkpoint),
                3 => self
                    .sign(ViewChange {
                        new_view: view,
                        checkpoint: crate::certificate::CheckpointCertificate::genesis(),
                        prepared: Vec::new(),
                    })
                    .map(WireMessage::ViewChange),
                4 => self
                    .sign(Status {
                        view,
                        in_view_change: false,
                        last_executed: seq,
                        stable_checkpoint: SeqNum(0),
                        settings: self.settings,
                    })
                    .map(WireMessage::Status),
                _ => self
                    .sign(FetchBlocks {
                        from: SeqNum(1),
                        to: seq,
                    })
                    .map(WireMessage::FetchBlocks),
            };
            if let Some(message) = message {
                let peer = self.random_peer();
                self.emit(out, Duration::ZERO, Destination::To(peer), &message);
            }
        }
    }

    /// Fork together: see [`Behaviour::Collude`].
    fn collude(&mut self, to: Destination, message: WireMessage, out: &mut Vec<Emission>) {
        let slot = match &message {
            WireMessage::PrePrepare {
                pre_prepare, batch, ..
            } => {
                self.remember_batch(pre_prepare.value.digest, batch.clone());
                Some((
                    pre_prepare.value.view,
                    pre_prepare.value.seq,
                    pre_prepare.value.digest,
                ))
            }
            WireMessage::Prepare(p) => Some((p.value.view, p.value.seq, p.value.digest)),
            WireMessage::Commit(c) => Some((c.value.view, c.value.seq, c.value.digest)),
            _ => None,
        };
        let Some((view, seq, digest)) = slot else {
            self.emit(out, Duration::ZERO, to, &message);
            return;
        };
        if !self.colluders.contains(&self.committee.primary(view)) {
            // An honest primary: starve its view so the view moves on to
            // one of ours.
            return;
        }
        let fork = self
            .batches
            .get(&digest)
            .map(|batch| fork_batch(batch))
            .filter(|fork| !fork.requests.is_empty() || digest != MerkleTree::new(fork).root());
        let Some(fork) = fork else {
            self.emit(out, Duration::ZERO, to, &message);
            return;
        };
        let fork_digest = MerkleTree::new(&fork).root();
        let Some(forked) = self.with_digest(&message, fork_digest, Some(Arc::new(fork))) else {
            self.emit(out, Duration::ZERO, to, &message);
            return;
        };
        let second_half = self.second_half(view, seq);
        for peer in self.targets(to) {
            let version = if second_half.contains(&peer) {
                &forked
            } else {
                &message
            };
            self.emit(out, Duration::ZERO, Destination::To(peer), version);
        }
    }

    /// The honest replicas that see the forked batch at `(view, seq)`: every
    /// colluder computes the same set.
    fn second_half(&self, view: View, seq: SeqNum) -> Vec<NodeId> {
        let honest: Vec<NodeId> = self
            .committee
            .ids()
            .filter(|id| !self.colluders.contains(id))
            .collect();
        if honest.len() < 2 {
            return Vec::new();
        }
        let rotation = ((view.0 ^ seq.0) % honest.len() as u64) as usize;
        let half = honest.len().div_ceil(2);
        honest
            .iter()
            .cycle()
            .skip(rotation)
            .take(honest.len())
            .skip(half)
            .copied()
            .collect()
    }
}

/// Another valid batch from `batch`: without its first request, or, for an
/// empty batch, the same (no fork possible).
fn fork_batch(batch: &Batch) -> Batch {
    Batch {
        requests: batch.requests.iter().skip(1).cloned().collect(),
    }
}

/// The message with its outer signature broken.
fn break_signature(mut message: WireMessage, rng: &mut Rng) -> WireMessage {
    let flip = |signature: &mut Signature, rng: &mut Rng| {
        let index = rng.below(64) as usize;
        if let Some(byte) = signature.0.get_mut(index) {
            *byte ^= 0x20;
        }
    };
    match &mut message {
        WireMessage::PrePrepare { pre_prepare, .. } => flip(&mut pre_prepare.signature, rng),
        WireMessage::Prepare(m) => flip(&mut m.signature, rng),
        WireMessage::Commit(m) => flip(&mut m.signature, rng),
        WireMessage::Checkpoint(m) => flip(&mut m.signature, rng),
        WireMessage::ViewChange(m) => flip(&mut m.signature, rng),
        WireMessage::NewView(m) => flip(&mut m.signature, rng),
        WireMessage::Status(m) => flip(&mut m.signature, rng),
        WireMessage::Forward(m) => flip(&mut m.signature, rng),
        WireMessage::FetchBlocks(m) => flip(&mut m.signature, rng),
        WireMessage::Blocks(m) => flip(&mut m.signature, rng),
        WireMessage::FetchBatch(m) => flip(&mut m.signature, rng),
        WireMessage::Batch(m) => flip(&mut m.signature, rng),
        WireMessage::Suspect(m) => flip(&mut m.signature, rng),
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every behaviour's name parses back to it.
    #[test]
    fn names_round_trip() {
        for behaviour in Behaviour::all().into_iter().chain([Behaviour::Collude]) {
            assert_eq!(behaviour.to_string().parse::<Behaviour>(), Ok(behaviour));
        }
        assert!("bogus".parse::<Behaviour>().is_err());
        assert!("slow:x".parse::<Behaviour>().is_err());
    }
}
