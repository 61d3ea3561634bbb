//! The checkers: agreement, validity, certificates, liveness.

use super::world::World;
use bftd_crypto::Digest;
use bftd_protocol::{BlockSource, NodeId, RequestKey, SeqNum};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The first property a run violated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// `agreement`, `validity`, `certificates`, `liveness` or `restart`.
    pub property: &'static str,
    /// What exactly.
    pub detail: String,
}

impl Violation {
    pub(super) fn new(property: &'static str, detail: String) -> Violation {
        Violation { property, detail }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

/// Runs every checker; the first violation found, in order of severity.
pub(super) fn run(world: &World<'_>) -> Option<Violation> {
    agreement(world)
        .or_else(|| certificates(world))
        .or_else(|| validity(world))
        .or_else(|| receipts(world))
        .or_else(|| liveness(world))
}

/// No two honest replicas commit different blocks at one height.
fn agreement(world: &World<'_>) -> Option<Violation> {
    let mut by_height: BTreeMap<SeqNum, BTreeMap<Digest, Vec<NodeId>>> = BTreeMap::new();
    for id in world.honest() {
        let storage = &world.nodes[id.index()].storage;
        for height in storage.first_height().0..=storage.last_height().0 {
            if let Some(block) = storage.block(SeqNum(height)) {
                by_height
                    .entry(SeqNum(height))
                    .or_default()
                    .entry(block.hash())
                    .or_default()
                    .push(id);
            }
        }
    }
    // The same block must also skip the same requests everywhere (its
    // `duplicates`), or the replicas' applications diverge.
    let mut skipped: BTreeMap<SeqNum, (NodeId, Vec<u32>)> = BTreeMap::new();
    for id in world.honest() {
        let storage = &world.nodes[id.index()].storage;
        for height in storage.first_height().0..=storage.last_height().0 {
            let duplicates = storage.duplicates(SeqNum(height));
            match skipped.get(&SeqNum(height)) {
                Some((other, theirs)) if *theirs != duplicates => {
                    return Some(Violation::new(
                        "agreement",
                        format!(
                            "height {height}: {other} skipped positions {theirs:?} as duplicates, {id} skipped {duplicates:?}"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    skipped.insert(SeqNum(height), (id, duplicates));
                }
            }
        }
    }
    for (height, hashes) in by_height {
        if hashes.len() > 1 {
            let sides: Vec<String> = hashes
                .iter()
                .map(|(hash, nodes)| format!("{nodes:?} have {hash:#}"))
                .collect();
            return Some(Violation::new(
                "agreement",
                format!("height {}: {}", height.0, sides.join("; ")),
            ));
        }
    }
    None
}

/// Every committed block chains to its predecessor and its commit
/// certificate verifies (signatures included) against the committee.
fn certificates(world: &World<'_>) -> Option<Violation> {
    let mut verified: BTreeSet<Digest> = BTreeSet::new();
    for id in world.honest() {
        let storage = &world.nodes[id.index()].storage;
        // Below a pruned store's first block, the chain is not held: its
        // first link is taken as stored (the certificate still verifies).
        let first = storage.first_height().0;
        let mut prev = storage
            .block(SeqNum(first))
            .map_or(Digest::ZERO, |block| block.block.prev_hash);
        for height in first..=storage.last_height().0 {
            let Some(block) = storage.block(SeqNum(height)) else {
                return Some(Violation::new(
                    "certificates",
                    format!("{id} has a gap at height {height}"),
                ));
            };
            let hash = block.hash();
            if verified.contains(&hash) && block.block.prev_hash == prev {
                prev = hash;
                continue;
            }
            if let Err(error) = block.verify(&world.committee, prev) {
                return Some(Violation::new("certificates", format!("{id}: {error}")));
            }
            verified.insert(hash);
            prev = hash;
        }
    }
    None
}

/// Every executed request was submitted by a client, and none executed twice.
fn validity(world: &World<'_>) -> Option<Violation> {
    for id in world.honest() {
        let storage = &world.nodes[id.index()].storage;
        let mut seen: BTreeSet<RequestKey> = BTreeSet::new();
        for height in 1..=storage.last_height().0 {
            let Some(block) = storage.block(SeqNum(height)) else {
                continue;
            };
            let duplicates = storage.duplicates(SeqNum(height));
            for (index, request) in block.block.batch.requests.iter().enumerate() {
                if duplicates.contains(&(index as u32)) {
                    continue;
                }
                let key = request.key();
                let valid_until = request.request.valid_until;
                let lifetime = world.config.protocol.request_lifetime;
                if valid_until.0 < height || valid_until.0 > height + lifetime {
                    return Some(Violation::new(
                        "validity",
                        format!(
                            "{id} executed request {} of client {:#} at height {height}, \
                             outside its validity (until {}, lifetime {lifetime})",
                            key.request_id, key.client, valid_until.0
                        ),
                    ));
                }
                if world.abandoned.contains(&key) {
                    return Some(Violation::new(
                        "validity",
                        format!(
                            "{id} executed request {} of client {:#} at height {height} after \
                             an honest replica had passed its validity",
                            key.request_id, key.client
                        ),
                    ));
                }
                // Connection-authenticated: copies differ in the grant only.
                if world.submitted.get(&key).map(|s| &s.request) != Some(&request.request) {
                    return Some(Violation::new(
                        "validity",
                        format!("{id} executed a request no client submitted at height {height}"),
                    ));
                }
                if !seen.insert(key) {
                    return Some(Violation::new(
                        "validity",
                        format!(
                            "{id} executed request {} of client {:#} twice (height {height})",
                            key.request_id, key.client
                        ),
                    ));
                }
            }
        }
    }
    None
}

/// Every receipt a client accepted is true of the honest logs: the block at
/// its height has its batch digest, and the request executed there or
/// earlier (a receipt for a later duplicate copy is true too).
fn receipts(world: &World<'_>) -> Option<Violation> {
    // What honest replicas delivered (their stores may have pruned it),
    // then what their stores hold.
    let mut executed_at: BTreeMap<RequestKey, SeqNum> = world.honest_log.executed_at.clone();
    let mut digests: BTreeMap<SeqNum, Digest> = world.honest_log.digests.clone();
    for id in world.honest() {
        let storage = &world.nodes[id.index()].storage;
        for height in 1..=storage.last_height().0 {
            let Some(block) = storage.block(SeqNum(height)) else {
                continue;
            };
            digests.insert(SeqNum(height), block.block.batch_digest);
            let duplicates = storage.duplicates(SeqNum(height));
            for (index, request) in block.block.batch.requests.iter().enumerate() {
                if !duplicates.contains(&(index as u32)) {
                    executed_at.entry(request.key()).or_insert(SeqNum(height));
                }
            }
        }
    }
    for (key, &(height, digest)) in &world.clients.accepted {
        let true_digest = digests.get(&height);
        let true_height = executed_at.get(key);
        let holds =
            true_height.is_some_and(|&at| at <= height) && true_digest.is_none_or(|&d| d == digest);
        if !holds {
            return Some(Violation::new(
                "receipts",
                format!(
                    "client {:#} accepted request {} as committed at height {} (batch {digest:#}); \
                     the honest replicas executed it at {}",
                    key.client,
                    key.request_id,
                    height.0,
                    true_height.map_or("no height".to_string(), |h| format!("height {}", h.0))
                ),
            ));
        }
    }
    None
}

/// After the heal, every honest replica executed every wanted request
/// within the bound.
fn liveness(world: &World<'_>) -> Option<Violation> {
    let bound = world.config.liveness_bound;
    let late = world.worst_time_to_commit().filter(|&worst| worst > bound);
    if world.live_at.is_some() && late.is_none() {
        return None;
    }
    let wanted = world.wanted.len();
    let lagging: Vec<String> = world
        .honest()
        .filter_map(|id| {
            let node = &world.nodes[id.index()];
            let executed = world
                .wanted
                .iter()
                .filter(|key| node.executed.contains(key))
                .count();
            (executed < wanted).then(|| format!("{id} executed {executed}/{wanted}"))
        })
        .collect();
    Some(Violation::new(
        "liveness",
        match late {
            Some(worst) => format!(
                "a request took {} ms after the heal to execute everywhere; the bound is {} ms",
                worst.as_millis(),
                bound.as_millis()
            ),
            None => format!(
                "{} ms after the heal: {}",
                bound.as_millis(),
                lagging.join(", ")
            ),
        },
    ))
}
