//! Liveness tests: whole clusters of replicas in one process, on a virtual
//! clock, with a network the test controls message by message. Each test
//! builds one pattern users hit (every node killed at once, a primary that
//! leaves one client out, a replica started before the others) and checks
//! that every request commits within a stated time.

use super::*;
use crate::clients::Lookup;
use crate::message::{Blocks, Request};
use crate::storage::{MemStorage, Storage};
use crate::verify::{verify_message, verify_request, BatchVerifier, RequestMode};

/// What the test network does with a message from `from` to `to`.
type Filter = Box<dyn FnMut(NodeId, NodeId, &WireMessage) -> bool>;

/// What a lying sender puts on the wire instead of a message (re-signed
/// with its own key, so it verifies).
type Rewrite = Box<dyn FnMut(NodeId, NodeId, WireMessage) -> WireMessage>;

struct Cluster {
    keys: Vec<KeyPair>,
    committee: Committee,
    config: Config,
    replicas: Vec<Option<Replica>>,
    storage: Vec<MemStorage>,
    queue: VecDeque<(NodeId, NodeId, WireMessage)>,
    now: Duration,
    /// Answers to local clients, by the replica that gave them.
    replies: Vec<(NodeId, ClientReply)>,
    /// Messages pass if this says so (all of them by default).
    filter: Filter,
    /// Messages are replaced by what this returns (themselves by default).
    rewrite: Rewrite,
    /// Messages that failed verification at their receiver.
    refused: usize,
}

impl Cluster {
    fn new(n: usize, config: Config) -> Cluster {
        Cluster::with_storage(n, config, |_| MemStorage::new())
    }

    /// A cluster whose replica `id` stores in `storage(id)`.
    fn with_storage(n: usize, config: Config, storage: impl Fn(usize) -> MemStorage) -> Cluster {
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 11; 32]))
            .collect();
        let committee =
            Committee::new(&keys.iter().map(KeyPair::public).collect::<Vec<_>>()).unwrap();
        let mut cluster = Cluster {
            keys,
            committee,
            config,
            replicas: (0..n).map(|_| None).collect(),
            storage: (0..n).map(storage).collect(),
            queue: VecDeque::new(),
            now: Duration::from_secs(1),
            replies: Vec::new(),
            filter: Box::new(|_, _, _| true),
            rewrite: Box::new(|_, _, message| message),
            refused: 0,
        };
        for id in 0..n {
            cluster.start(id);
        }
        cluster
    }

    fn n(&self) -> usize {
        self.replicas.len()
    }

    /// Starts (or restarts) replica `id` from its storage.
    fn start(&mut self, id: usize) {
        let setup = ReplicaSetup {
            id: NodeId(id as u16),
            key: self.keys[id].clone(),
            committee: self.committee.clone(),
            config: self.config.clone(),
            blocks: Arc::new(self.storage[id].clone()),
        };
        let recovered = self.storage[id].recover().unwrap();
        self.replicas[id] = Some(Replica::new(setup, recovered, self.now).unwrap());
        self.after_step(id);
    }

    /// Loses replica `id` (its storage stays).
    fn crash(&mut self, id: usize) {
        self.replicas[id] = None;
        self.queue
            .retain(|(from, to, _)| from.index() != id && to.index() != id);
    }

    fn after_step(&mut self, id: usize) {
        let Some(replica) = self.replicas[id].as_mut() else {
            return;
        };
        let actions = replica.drain_actions();
        self.storage[id]
            .apply(&actions.persist, &actions.deliver)
            .unwrap();
        let from = NodeId(id as u16);
        for outgoing in actions.send {
            let targets: Vec<NodeId> = match outgoing.to {
                Destination::To(peer) => vec![peer],
                Destination::AllOthers => (0..self.n() as u16)
                    .map(NodeId)
                    .filter(|&peer| peer != from)
                    .collect(),
            };
            for to in targets {
                let message = (self.rewrite)(from, to, outgoing.message.clone());
                if (self.filter)(from, to, &message) {
                    self.queue.push_back((from, to, message));
                }
            }
        }
        for reply in actions.replies {
            self.replies.push((from, reply));
        }
    }

    /// Delivers every queued message (and what they cause), in order.
    fn deliver_all(&mut self) {
        while let Some((from, to, message)) = self.queue.pop_front() {
            let Some(replica) = self.replicas[to.index()].as_mut() else {
                continue;
            };
            let Ok(verified) = verify_message(
                message,
                &self.committee,
                &crate::verify::MessageLimits::of(&self.config),
                &mut BatchVerifier,
            ) else {
                self.refused += 1;
                continue;
            };
            replica.handle_message(self.now, from, verified);
            self.after_step(to.index());
        }
    }

    /// Runs for `duration` of virtual time: messages arrive at once, timers
    /// fire when due.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            self.deliver_all();
            let next = self
                .replicas
                .iter()
                .flatten()
                .filter_map(Replica::next_deadline)
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    for id in 0..self.n() {
                        let due = self.replicas[id]
                            .as_ref()
                            .and_then(Replica::next_deadline)
                            .is_some_and(|at| at <= self.now);
                        if due {
                            if let Some(replica) = self.replicas[id].as_mut() {
                                replica.handle_timeout(self.now);
                            }
                            self.after_step(id);
                        }
                    }
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Runs until every live replica executed `request` (or `limit` passes);
    /// how long it took.
    fn time_to_execute(&mut self, request: &SignedRequest, limit: Duration) -> Option<Duration> {
        let start = self.now;
        let step = Duration::from_millis(10);
        while self.now < start + limit {
            if self.executed_everywhere(request) {
                return Some(self.now - start);
            }
            self.run_for(step);
        }
        self.executed_everywhere(request).then(|| self.now - start)
    }

    fn executed_everywhere(&self, request: &SignedRequest) -> bool {
        (0..self.n())
            .all(|id| self.replicas[id].is_none() || self.executed(id).contains(&request.key()))
    }

    /// The requests replica `id` executed (not counting duplicates).
    fn executed(&self, id: usize) -> Vec<RequestKey> {
        let storage = &self.storage[id];
        let mut keys = Vec::new();
        for height in storage.first_height().0..=storage.last_height().0 {
            let block = storage.block(SeqNum(height)).unwrap();
            let duplicates = storage.duplicates(SeqNum(height));
            for (index, request) in block.block.batch.requests.iter().enumerate() {
                if !duplicates.contains(&(index as u32)) {
                    keys.push(request.key());
                }
            }
        }
        keys
    }

    fn submit(&mut self, id: usize, request: &SignedRequest) {
        let verified = verify_request(
            request.clone(),
            NodeId(id as u16),
            &self.committee,
            self.config.request_mode,
            &mut BatchVerifier,
        )
        .unwrap();
        if let Some(replica) = self.replicas[id].as_mut() {
            replica.handle_request(self.now, verified, true);
        }
        self.after_step(id);
    }

    fn status(&self, id: usize) -> ReplicaStatus {
        self.replicas[id].as_ref().unwrap().status()
    }
}

fn client(seed: u8) -> KeyPair {
    KeyPair::from_seed([seed; 32])
}

/// A request valid through height 512 (the default lifetime is 1024).
fn request(client: &KeyPair, id: u64) -> SignedRequest {
    request_valid_until(client, id, 512)
}

fn request_valid_until(client: &KeyPair, id: u64, valid_until: u64) -> SignedRequest {
    let request = Request {
        client: client.public(),
        request_id: id,
        valid_until: SeqNum(valid_until),
        payload: format!("tx {id}").into_bytes(),
    };
    SignedRequest::sign(request, client).unwrap()
}

/// Every node killed at once (a power cut) while the primary's proposal was
/// in flight, then all restarted: a request submitted to the primary alone
/// (no backup waits for anything, so no backup's timer runs) commits. The
/// restarted primary re-sends the pre-prepare it had signed and proposes
/// afresh after it, instead of proposing at a sequence number its signer
/// already used and stalling forever.
#[test]
fn restart_of_every_node_resumes_where_the_primary_stopped() {
    let mut cluster = Cluster::new(4, Config::default());
    let alice = client(1);
    let first = request(&alice, 1);
    cluster.submit(1, &first);
    assert!(cluster
        .time_to_execute(&first, Duration::from_secs(1))
        .is_some());

    // The primary proposes the second request; the power fails before any
    // backup receives it.
    cluster.filter = Box::new(|_, _, _| false);
    let second = request(&alice, 2);
    cluster.submit(0, &second);
    for id in 0..4 {
        cluster.crash(id);
    }
    cluster.filter = Box::new(|_, _, _| true);
    for id in [3, 1, 2, 0] {
        cluster.start(id);
    }
    let third = request(&alice, 3);
    cluster.submit(0, &third);
    let took = cluster.time_to_execute(&third, Duration::from_secs(10));
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(2)),
        "not executed everywhere within 2 s after the restart: {:?}; statuses {:?}",
        took,
        (0..4).map(|id| cluster.status(id)).collect::<Vec<_>>()
    );
    assert!(cluster.executed_everywhere(&second));
}

/// A primary that orders everyone's requests but one client's is replaced:
/// the censored request's own wait (not the time since anything executed,
/// which the other clients' traffic keeps resetting) makes the backups
/// relay it, then suspect the primary; the next primary orders it. Bound:
/// two request timeouts, plus the view change.
#[test]
fn a_censoring_primary_is_replaced() {
    let mut cluster = Cluster::new(4, Config::default());
    let censored = client(7);
    let victim = censored.public();
    // The primary (node 0) never sees the censored client's requests: the
    // same, to the backups, as a primary that leaves them out of every batch.
    cluster.filter = Box::new(move |_, to, message| {
        let carries_victim = match message {
            WireMessage::Forward(forward) => forward
                .value
                .requests
                .iter()
                .any(|r| r.request.client == victim),
            _ => false,
        };
        !(to == NodeId(0) && carries_victim)
    });
    let busy = client(8);
    let target = request(&censored, 1);
    cluster.submit(1, &target);
    let start = cluster.now;
    // Others' requests keep committing every 100 ms.
    let mut id = 1;
    while !cluster.executed_everywhere(&target) && cluster.now < start + Duration::from_secs(10) {
        cluster.submit(2, &request(&busy, id));
        id += 1;
        cluster.run_for(Duration::from_millis(100));
    }
    let took = cluster.now - start;
    assert!(
        cluster.executed_everywhere(&target),
        "the censored request never executed in 10 s while {} others did; statuses {:?}",
        id - 1,
        (0..4).map(|id| cluster.status(id)).collect::<Vec<_>>()
    );
    let bound = Config::default().request_timeout * 2 + Duration::from_millis(500);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    assert!(cluster.status(1).view >= View(1), "the view changed");
}

/// A request that expired by the time its block executes (it was valid
/// only through height 1, and reached the primary behind others) is
/// answered as expired and no longer waited for: else its replica would
/// relay it, suspect the primary and change views for a request that can
/// never execute.
#[test]
fn a_request_expired_at_execution_is_answered_and_dropped() {
    let mut cluster = Cluster::new(4, Config::default());
    let alice = client(3);
    for id in 5..=9 {
        cluster.submit(0, &request(&alice, id));
    }
    let late = request_valid_until(&alice, 1, 1);
    cluster.submit(1, &late);
    cluster.run_for(Duration::from_secs(5));
    let answers: Vec<ReplyOutcome> = cluster
        .replies
        .iter()
        .filter(|(node, reply)| *node == NodeId(1) && reply.request_id == 1)
        .map(|(_, reply)| reply.outcome)
        .collect();
    assert_eq!(
        answers,
        vec![ReplyOutcome::Rejected(RejectReason::Expired)],
        "node 1's client is told, once"
    );
    for id in 0..4 {
        let status = cluster.status(id);
        assert_eq!(
            status.pending_requests, 0,
            "node {id} still waits: {status:?}"
        );
        assert_eq!(status.view, View(0), "no view change for it: {status:?}");
        assert!(!cluster.executed(id).contains(&late.key()));
    }
}

/// At most once, whatever clients do: a victim's executed request replayed
/// after a flood of throwaway clients (which used to evict the victim from
/// the deduplication table, so the replay executed again) is a duplicate
/// while it is valid, and refused as expired after; it executes once.
#[test]
fn a_replayed_request_never_executes_twice() {
    let config = Config {
        request_lifetime: 16,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, config);
    let victim = client(9);
    let paid = request_valid_until(&victim, 1, 10);
    cluster.submit(1, &paid);
    assert!(cluster
        .time_to_execute(&paid, Duration::from_secs(2))
        .is_some());
    // Enough throwaway clients, one block each, to pass the victim's
    // validity; the replay goes in both while valid and after.
    for seed in 0..=20u8 {
        let throwaway = client(100 + seed);
        let height = cluster.status(0).last_executed.0;
        let filler = request_valid_until(&throwaway, 1, height + 8);
        cluster.submit(2, &filler);
        assert!(cluster
            .time_to_execute(&filler, Duration::from_secs(2))
            .is_some());
        cluster.submit(3, &paid);
    }
    cluster.run_for(Duration::from_secs(3));
    for id in 0..4 {
        let times = cluster
            .executed(id)
            .iter()
            .filter(|key| **key == paid.key())
            .count();
        assert_eq!(
            times, 1,
            "node {id}: the victim's request executed {times} times"
        );
    }
    let refused = cluster
        .replies
        .iter()
        .any(|(_, reply)| reply.outcome == ReplyOutcome::Rejected(RejectReason::Expired));
    assert!(
        refused,
        "the replay after its validity is refused as expired"
    );
}

/// One replica started before the others (an operator bringing hosts up one
/// at a time) times out on its client's request alone. It suspects the
/// primary, but a suspicion is not a view change: it stays in the view, and
/// once the others are up the whole cluster commits in that view.
#[test]
fn a_replica_that_times_out_alone_stays_with_the_others() {
    let mut cluster = Cluster::new(4, Config::default());
    for id in [2, 3] {
        cluster.crash(id);
    }
    let alice = client(4);
    let early = request(&alice, 1);
    cluster.submit(1, &early);
    cluster.run_for(Duration::from_secs(5));
    assert!(cluster.replicas[1].as_ref().unwrap().metrics().suspicions > 0);
    for id in [2, 3] {
        cluster.start(id);
    }
    let took = cluster.time_to_execute(&early, Duration::from_secs(10));
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(2)),
        "took {took:?}; statuses {:?}",
        (0..4).map(|id| cluster.status(id)).collect::<Vec<_>>()
    );
    for id in 0..4 {
        assert_eq!(cluster.status(id).view, View(0), "node {id}");
        assert!(!cluster.status(id).in_view_change, "node {id}");
    }
}

/// Lost votes are re-sent: with every prepare and commit of one slot lost
/// once, the slot still commits (each replica re-sends its own votes while
/// nothing executes), without a view change.
#[test]
fn lost_votes_are_retransmitted() {
    let mut cluster = Cluster::new(4, Config::default());
    let mut dropped = 0;
    cluster.filter = Box::new(move |_, _, message| {
        let vote = matches!(message, WireMessage::Prepare(_) | WireMessage::Commit(_));
        if vote && dropped < 6 {
            dropped += 1;
            return false;
        }
        true
    });
    let alice = client(5);
    let first = request(&alice, 1);
    cluster.submit(0, &first);
    let took = cluster.time_to_execute(&first, Duration::from_secs(5));
    assert!(
        took.is_some_and(|t| t < Config::default().request_timeout),
        "took {took:?}; statuses {:?}",
        (0..4).map(|id| cluster.status(id)).collect::<Vec<_>>()
    );
    for id in 0..4 {
        assert_eq!(cluster.status(id).view, View(0));
    }
}

/// Batch fetches nobody waits for any more are forgotten: the bounded set of
/// wanted batches never fills with digests of executed or discarded slots.
#[test]
fn wanted_batches_are_forgotten_once_not_needed() {
    let mut cluster = Cluster::new(4, Config::default());
    let replica = cluster.replicas[2].as_mut().unwrap();
    for i in 0..super::state_transfer::MAX_WANTED_BATCHES as u32 {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&i.to_le_bytes());
        replica.want_batch(Digest(digest));
    }
    assert_eq!(
        replica.wanted_batches.len(),
        super::state_transfer::MAX_WANTED_BATCHES
    );
    cluster.after_step(2);
    // None of those digests belongs to a slot: a new one is still fetched.
    let alice = client(6);
    let first = request(&alice, 1);
    cluster.submit(1, &first);
    assert!(cluster
        .time_to_execute(&first, Duration::from_secs(2))
        .is_some());
    let replica = cluster.replicas[2].as_mut().unwrap();
    replica.want_batch(Digest([0xee; 32]));
    assert!(
        replica.wanted_batches.len() <= 1,
        "dead digests still held: {}",
        replica.wanted_batches.len()
    );
}

/// Connection-authenticated mode: requests carry their client's grant to
/// the node they were submitted to, which vouches for them; the primary
/// proposes whole vouched forwards. Clients at every node, the primary's
/// own included, get their requests ordered, through a view change too, and
/// no message an honest replica sends is refused.
#[test]
fn vouched_requests_commit_in_connection_authenticated_clusters() {
    let config = Config {
        request_mode: RequestMode::ConnectionAuthenticated,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, config);
    let granted = |client: &KeyPair, id: u64, node: u16| {
        SignedRequest::granted(request(client, id).request, client, NodeId(node))
    };
    let mut submitted = Vec::new();
    for (node, seed) in [(0u16, 1u8), (1, 2), (2, 3), (3, 4)] {
        let client = client(seed);
        for id in 1..=3 {
            let request = granted(&client, id, node);
            cluster.submit(usize::from(node), &request);
            submitted.push(request);
        }
    }
    for request in &submitted {
        assert!(
            cluster
                .time_to_execute(request, Duration::from_secs(2))
                .is_some(),
            "request {} of a client of node {:?} did not execute",
            request.request.request_id,
            request.signature
        );
    }
    // The primary goes silent: its clients' requests, re-submitted to a
    // backup with the grant to that backup, commit in the next view.
    cluster.crash(0);
    let late = granted(&client(1), 9, 2);
    cluster.submit(2, &late);
    assert!(
        cluster
            .time_to_execute(&late, Duration::from_secs(10))
            .is_some(),
        "no view change in connection-authenticated mode"
    );
    assert_eq!(
        cluster.refused, 0,
        "an honest replica's message was refused"
    );
}

/// A request whose grant names another node than the one it was submitted
/// to is refused at that node: a node vouches only for clients that chose
/// it.
#[test]
fn a_node_refuses_requests_granted_to_another() {
    let config = Config {
        request_mode: RequestMode::ConnectionAuthenticated,
        ..Config::default()
    };
    let cluster = Cluster::new(4, config);
    let alice = client(1);
    let to_node_1 = SignedRequest::granted(request(&alice, 1).request, &alice, NodeId(1));
    let refused = verify_request(
        to_node_1,
        NodeId(2),
        &cluster.committee,
        RequestMode::ConnectionAuthenticated,
        &mut BatchVerifier,
    );
    assert!(refused.is_err(), "node 2 accepted a grant to node 1");
}

/// Connection-authenticated mode: a backup whose forwards never reach the
/// primary relays its client's request to everyone; the other backups pass
/// the relayed forward on to the primary as it was signed (they cannot
/// vouch for another replica's client), and the request commits with no
/// message refused. (Before, they re-signed it into forwards of their own,
/// which the primary refused, with their own clients' requests in them.)
#[test]
fn relayed_vouched_forwards_are_passed_on_as_signed() {
    let config = Config {
        request_mode: RequestMode::ConnectionAuthenticated,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, config);
    cluster.filter = Box::new(|from, to, message| {
        !(from == NodeId(1) && to == NodeId(0) && matches!(message, WireMessage::Forward(_)))
    });
    let alice = client(1);
    let relayed = SignedRequest::granted(request(&alice, 1).request, &alice, NodeId(1));
    cluster.submit(1, &relayed);
    let bob = client(2);
    let own = SignedRequest::granted(request(&bob, 1).request, &bob, NodeId(2));
    cluster.submit(2, &own);
    assert!(
        cluster
            .time_to_execute(&relayed, Duration::from_secs(10))
            .is_some(),
        "the relayed request never executed"
    );
    assert!(cluster
        .time_to_execute(&own, Duration::from_secs(1))
        .is_some());
    assert_eq!(
        cluster.refused, 0,
        "an honest replica's message was refused"
    );
    assert_eq!(cluster.status(0).view, View(0), "a view change was needed");
}

/// Cluster of four in view 1 (node 0 crashed, node 1 the primary), with
/// every replica's queue empty.
fn in_view_one() -> Cluster {
    let mut cluster = Cluster::new(4, Config::default());
    cluster.crash(0);
    let alice = client(9);
    let first = request(&alice, 1);
    cluster.submit(1, &first);
    let took = cluster.time_to_execute(&first, Duration::from_secs(20));
    assert!(took.is_some(), "no view change to view 1");
    assert_eq!(cluster.status(1).view, View(1));
    assert!(!cluster.status(1).in_view_change);
    cluster.deliver_all();
    cluster
}

/// A "behind" status from node 3 (view 0), signed by it, verified.
fn behind_status(cluster: &Cluster) -> Verified<WireMessage> {
    let status = Status {
        view: View(0),
        in_view_change: false,
        last_executed: SeqNum(0),
        stable_checkpoint: SeqNum(0),
        settings: cluster.config.consensus(),
    };
    let signed = Signed::sign(NodeId(3), status, &cluster.keys[3]).unwrap();
    verify_message(
        WireMessage::Status(signed),
        &cluster.committee,
        &crate::verify::MessageLimits::of(&cluster.config),
        &mut BatchVerifier,
    )
    .unwrap()
}

fn new_views_queued_to(cluster: &mut Cluster, to: NodeId) -> usize {
    let count = cluster
        .queue
        .iter()
        .filter(|(_, dest, message)| *dest == to && matches!(message, WireMessage::NewView(_)))
        .count();
    cluster.queue.clear();
    count
}

/// A peer that reports itself behind (in an older view) gets the whole
/// new-view, 2f+1 view-changes with their certificates, at most once per
/// `new_view_resend_ms` however often it says so: a small signed status
/// must not buy a large message and its verification every time. After
/// the interval it gets it again, so a peer that really lost it still
/// catches up.
#[test]
fn behind_statuses_are_answered_with_the_new_view_at_most_once_per_interval() {
    let mut cluster = in_view_one();
    let status = behind_status(&cluster);
    let now = cluster.now;
    for _ in 0..50 {
        let replica = cluster.replicas[1].as_mut().unwrap();
        replica.handle_message(now, NodeId(3), status.clone());
        cluster.after_step(1);
    }
    let sent = new_views_queued_to(&mut cluster, NodeId(3));
    assert_eq!(sent, 1, "new-views sent to node 3 for 50 behind statuses");
    let later = now + cluster.config.new_view_resend;
    let replica = cluster.replicas[1].as_mut().unwrap();
    replica.handle_message(later, NodeId(3), status.clone());
    cluster.after_step(1);
    let sent = new_views_queued_to(&mut cluster, NodeId(3));
    assert_eq!(sent, 1, "the new-view again after the interval");
    assert!(
        cluster.replicas[1]
            .as_ref()
            .unwrap()
            .metrics()
            .new_views_withheld
            >= 49
    );
}

/// Liveness with the resend limit: a replica whose new-view is lost twice
/// (the primary's broadcast, and the first answer to its "behind" status)
/// still enters the view within `new_view_resend + 2 × status_interval`
/// (plus the step) after the primary did: its first status after the
/// primary entered gets the first (lost) resend, its first status once
/// `new_view_resend` has passed the next. With node 0 down the view needs
/// it.
#[test]
fn a_replica_that_lost_the_new_view_gets_it_within_the_resend_bound() {
    let mut cluster = Cluster::new(4, Config::default());
    let mut dropped = 0;
    cluster.filter = Box::new(move |_, to, message| {
        if to == NodeId(3) && matches!(message, WireMessage::NewView(_)) && dropped < 2 {
            dropped += 1;
            return false;
        }
        true
    });
    cluster.crash(0);
    let alice = client(10);
    let first = request(&alice, 1);
    cluster.submit(1, &first);
    let step = Duration::from_millis(10);
    let limit = cluster.now + Duration::from_secs(30);
    let in_view = |cluster: &Cluster, id: usize| {
        let status = cluster.status(id);
        status.view == View(1) && !status.in_view_change
    };
    while !in_view(&cluster, 1) && cluster.now < limit {
        cluster.run_for(step);
    }
    let primary_entered = cluster.now;
    while !in_view(&cluster, 3) && cluster.now < limit {
        cluster.run_for(step);
    }
    let waited = cluster.now - primary_entered;
    let bound = cluster.config.new_view_resend + 2 * cluster.config.status_interval + step;
    assert!(
        in_view(&cluster, 3) && waited <= bound,
        "node 3 entered view 1 {waited:?} after the primary (bound {bound:?}); statuses {:?}",
        (1..4).map(|id| cluster.status(id)).collect::<Vec<_>>()
    );
    assert!(cluster
        .time_to_execute(&first, Duration::from_secs(5))
        .is_some());
}

/// Settings under which a few dozen blocks prune: a checkpoint every 4
/// heights, requests remembered for 8, peers keeping 10 blocks below their
/// stable checkpoint (more than the lifetime, as the daemon requires).
fn pruning_config(jump_past_pruned: bool) -> Config {
    Config {
        checkpoint_interval: 4,
        window: 8,
        pipeline: 4,
        request_lifetime: 8,
        jump_past_pruned,
        ..Config::default()
    }
}

/// Commits one request of `client` (number `id`, valid 8 heights on)
/// through node 1, in a block of its own.
fn commit_one(cluster: &mut Cluster, client: &KeyPair, id: u64) {
    let height = cluster.status(0).last_executed.0;
    let request = request_valid_until(client, id, height + 8);
    cluster.submit(1, &request);
    assert!(cluster
        .time_to_execute(&request, Duration::from_secs(2))
        .is_some());
}

/// Node 3 holds node 0's height and head.
fn assert_node_3_has_the_head(cluster: &Cluster) {
    let (behind, ahead) = (cluster.status(3), cluster.status(0));
    assert_eq!(
        (behind.last_executed, behind.head_hash),
        (ahead.last_executed, ahead.head_hash),
        "node 3 / node 0: {behind:?} / {ahead:?}"
    );
}

/// Node 3 down while its peers commit 40 blocks and prune all but the last
/// 10 below their checkpoint; `paid` executes near the end. Returns the
/// cluster (node 3 still down), `paid` and its height.
fn down_past_retention(jump_past_pruned: bool) -> (Cluster, SignedRequest, SeqNum) {
    let mut cluster = Cluster::with_storage(4, pruning_config(jump_past_pruned), |_| {
        MemStorage::with_retention(10)
    });
    let alice = client(21);
    let first = request_valid_until(&alice, 1, 8);
    cluster.submit(1, &first);
    assert!(cluster
        .time_to_execute(&first, Duration::from_secs(2))
        .is_some());
    cluster.crash(3);
    for id in 2..=40 {
        commit_one(&mut cluster, &alice, id);
    }
    let height = cluster.status(0).last_executed;
    let paid = request_valid_until(&client(22), 1, height.0 + 8);
    cluster.submit(2, &paid);
    assert!(cluster
        .time_to_execute(&paid, Duration::from_secs(2))
        .is_some());
    let paid_at = cluster.status(0).last_executed;
    // Up to the next checkpoint, made stable, so `paid` is in the window.
    let mut id = 41;
    while cluster.status(0).stable_checkpoint < paid_at {
        commit_one(&mut cluster, &alice, id);
        id += 1;
        cluster.run_for(Duration::from_millis(50));
    }
    assert!(
        cluster.storage[0].first_height() > SeqNum(2),
        "the peers pruned what node 3 needs next: {:?}",
        cluster.status(0)
    );
    (cluster, paid, paid_at)
}

/// A replica down longer than every peer keeps blocks (`retain_blocks`)
/// used to wait forever (`needs_snapshot`). Now, refused by f+1 peers, it
/// jumps to their certified checkpoint from the window below it, and
/// then: it reaches its peers' head; its at-most-once table says of every
/// request what theirs says (a replay of `paid`, executed inside the window
/// it never executed itself, is answered with `paid`'s height, not ordered
/// again), also after a restart from its store; and it commits new
/// requests with the others.
#[test]
fn a_replica_down_past_every_peers_retention_jumps_and_agrees() {
    let (mut cluster, paid, paid_at) = down_past_retention(true);
    cluster.start(3);
    cluster.run_for(Duration::from_secs(3));
    assert_node_3_has_the_head(&cluster);
    assert_eq!(cluster.replicas[3].as_ref().unwrap().metrics().jumps, 1);
    assert!(!cluster.status(3).needs_snapshot);

    let tables_agree = |cluster: &Cluster| {
        let next = cluster.status(0).last_executed.next();
        let [ours, theirs] = [3, 0].map(|id| &cluster.replicas[id].as_ref().unwrap().executed);
        assert_eq!(
            ours.len(),
            theirs.len(),
            "same number of requests remembered"
        );
        assert_eq!(
            ours.lookup(&paid.request, next),
            Lookup::Executed { height: paid_at }
        );
        for (key, height) in theirs.entries() {
            assert_eq!(ours.entries().get(key), Some(height), "{key:?}");
        }
    };
    tables_agree(&cluster);
    // A restart rebuilds the same table from what the jump stored.
    cluster.crash(3);
    cluster.start(3);
    tables_agree(&cluster);

    cluster.submit(3, &paid);
    cluster.run_for(Duration::from_secs(1));
    let answer = cluster
        .replies
        .iter()
        .rev()
        .find(|(node, reply)| *node == NodeId(3) && reply.client == paid.request.client)
        .map(|(_, reply)| reply.outcome);
    assert_eq!(
        answer,
        Some(ReplyOutcome::Committed { height: paid_at }),
        "the replay is answered from the table"
    );
    let height = cluster.status(0).last_executed.0;
    let fresh = request_valid_until(&client(23), 1, height + 8);
    cluster.submit(3, &fresh);
    assert!(
        cluster
            .time_to_execute(&fresh, Duration::from_secs(3))
            .is_some(),
        "node 3 commits with the others: {:?}",
        cluster.status(3)
    );
    assert_eq!(cluster.status(3).head_hash, cluster.status(0).head_hash);
    for id in 0..3 {
        assert_eq!(
            cluster
                .executed(id)
                .iter()
                .filter(|k| **k == paid.key())
                .count(),
            1,
            "node {id} executed paid once"
        );
    }
    assert!(
        !cluster.executed(3).contains(&paid.key()),
        "node 3 skipped its block"
    );
}

/// The same outage with jumping turned off (as the daemon does when an
/// application is embedded): the replica stays behind, saying why
/// (`needs_snapshot`), and never installs a checkpoint it did not execute
/// to. What the test above relies on is the jump, not some other path.
#[test]
fn without_jumping_a_replica_down_past_retention_waits() {
    let (mut cluster, _, _) = down_past_retention(false);
    cluster.start(3);
    cluster.run_for(Duration::from_secs(3));
    let status = cluster.status(3);
    assert!(status.needs_snapshot, "{status:?}");
    assert!(status.last_executed < cluster.status(0).last_executed);
    assert_eq!(cluster.replicas[3].as_ref().unwrap().metrics().jumps, 0);
}

/// Node 0's state-transfer answers to node 3, rewritten by `lie` and
/// signed again with node 0's key.
fn lying_blocks(cluster: &Cluster, mut lie: impl FnMut(Blocks) -> Blocks + 'static) -> Rewrite {
    let key = cluster.keys[0].clone();
    Box::new(move |from, to, message| match message {
        WireMessage::Blocks(signed) if from == NodeId(0) && to == NodeId(3) => {
            let value = lie(signed.value);
            WireMessage::Blocks(Signed::sign(NodeId(0), value, &key).unwrap())
        }
        message => message,
    })
}

/// A peer that serves a jump's blocks with another `prev_hash` (which no
/// commit certificate covers) cannot give the jumping replica another head:
/// the top block must hash to the checkpoint 2f+1 signed, so its answers
/// are dropped and the replica ends on its honest peers' head.
#[test]
fn a_peer_lying_about_the_chain_cannot_steer_a_jump() {
    let (mut cluster, _, _) = down_past_retention(true);
    cluster.rewrite = lying_blocks(&cluster, |mut blocks| {
        blocks.blocks = blocks
            .blocks
            .into_iter()
            .map(|block| {
                let mut block = (*block).clone();
                block.block.prev_hash = Digest([9; 32]);
                Arc::new(block)
            })
            .collect();
        blocks
    });
    // The honest peers' first answers with blocks are lost, so the fetch
    // timer takes node 3 to node 0 during the jump.
    let mut lost = 0;
    cluster.filter = Box::new(move |from, to, message| {
        let served = matches!(message, WireMessage::Blocks(b) if !b.value.blocks.is_empty());
        if served && from != NodeId(0) && to == NodeId(3) && lost < 2 {
            lost += 1;
            return false;
        }
        true
    });
    cluster.start(3);
    cluster.run_for(Duration::from_secs(5));
    assert_node_3_has_the_head(&cluster);
    let metrics = cluster.replicas[3].as_ref().unwrap().metrics();
    assert_eq!(metrics.jumps, 1);
    assert!(
        metrics.dropped_for(DropReason::InvalidBlock) > 0,
        "node 0's lie reached node 3 and was refused"
    );
}

/// One peer that refuses every fetch as pruned (a liar with a real
/// certified checkpoint) does not make a replica jump while its other
/// peers keep the blocks: a jump needs f+1 refusals, so the replica
/// catches up block by block and keeps its whole history.
#[test]
fn one_refusing_liar_does_not_make_a_replica_jump() {
    let mut cluster = Cluster::new(4, pruning_config(true));
    let alice = client(24);
    cluster.crash(3);
    for id in 1..=40 {
        commit_one(&mut cluster, &alice, id);
    }
    cluster.rewrite = lying_blocks(&cluster, |mut blocks| {
        blocks.blocks.clear();
        blocks
    });
    cluster.start(3);
    cluster.run_for(Duration::from_secs(5));
    assert_node_3_has_the_head(&cluster);
    let metrics = cluster.replicas[3].as_ref().unwrap().metrics();
    assert_eq!(metrics.jumps, 0, "no jump on one refusal");
    assert!(
        metrics.fetches_refused_pruned > 0,
        "node 0 was asked and refused"
    );
    assert_eq!(cluster.storage[3].first_height(), SeqNum(1));
    assert_eq!(cluster.executed(3), cluster.executed(0));
}

/// A replica behind by less than two request lifetimes can admit a request
/// that its peers then execute inside the window it later jumps over. The
/// jump settles it: its client is told the height it executed at, not
/// that it expired (which it would be told if it were left pending until
/// its validity passed).
#[test]
fn a_request_the_jump_skipped_is_answered_as_executed() {
    let mut cluster =
        Cluster::with_storage(4, pruning_config(true), |_| MemStorage::with_retention(10));
    let alice = client(25);
    let mut id = 0;
    let mut filler = |cluster: &mut Cluster| {
        id += 1;
        commit_one(cluster, &alice, id);
    };
    while cluster.status(0).last_executed < SeqNum(30) {
        filler(&mut cluster);
    }
    cluster.crash(3);
    let down_at = cluster.status(0).last_executed;
    while cluster.status(0).last_executed < down_at.plus(6) {
        filler(&mut cluster);
    }
    // Valid through 9 heights above node 3's: node 3 will admit it.
    let skipped = request_valid_until(&client(26), 1, down_at.0 + 9);
    cluster.submit(1, &skipped);
    assert!(cluster
        .time_to_execute(&skipped, Duration::from_secs(2))
        .is_some());
    let executed_at = cluster.status(0).last_executed;
    while cluster.status(0).stable_checkpoint < executed_at.plus(4) {
        filler(&mut cluster);
        cluster.run_for(Duration::from_millis(50));
    }
    assert!(cluster.storage[0].first_height() > down_at.next());

    cluster.start(3);
    cluster.submit(3, &skipped);
    assert!(
        cluster.status(3).pending_requests > 0,
        "node 3 admitted it before jumping"
    );
    cluster.run_for(Duration::from_secs(3));
    assert_eq!(cluster.replicas[3].as_ref().unwrap().metrics().jumps, 1);
    let answers: Vec<ReplyOutcome> = cluster
        .replies
        .iter()
        .filter(|(node, reply)| *node == NodeId(3) && reply.client == skipped.request.client)
        .map(|(_, reply)| reply.outcome)
        .collect();
    assert_eq!(
        answers,
        vec![ReplyOutcome::Committed {
            height: executed_at
        }]
    );
    assert_eq!(cluster.status(3).pending_requests, 0);
}

/// A replica starting from an empty store joins peers that pruned their
/// early history: it cannot fetch from height 1, so it jumps like a
/// replica that was down, and orders with them. (Here node 3 signed
/// nothing since height 1; an operator recreating a store for a key that
/// did sign must mind design notes §22: the old store held what it
/// signed.)
#[test]
fn a_new_replica_joins_peers_that_pruned() {
    let (mut cluster, paid, paid_at) = down_past_retention(true);
    cluster.storage[3] = MemStorage::with_retention(10);
    cluster.start(3);
    cluster.run_for(Duration::from_secs(3));
    assert_node_3_has_the_head(&cluster);
    let replica = cluster.replicas[3].as_ref().unwrap();
    assert_eq!(replica.metrics().jumps, 1);
    let next = cluster.status(0).last_executed.next();
    assert_eq!(
        replica.executed.lookup(&paid.request, next),
        Lookup::Executed { height: paid_at }
    );
    let height = cluster.status(0).last_executed.0;
    let fresh = request_valid_until(&client(27), 1, height + 8);
    cluster.submit(3, &fresh);
    assert!(cluster
        .time_to_execute(&fresh, Duration::from_secs(3))
        .is_some());
}
